//! What a node's requests share ([`Node`]), what the request logic reads of a request ([`RequestHead`],
//! free of any HTTP stack's types), and the one gate every topic route passes: token, cookie origin,
//! access rule.

use std::net::IpAddr;
use std::sync::Arc;

use crate::auth::{Access, Auth, AuthError, Grant};
use crate::config::Settings;
use crate::connection::Streams;
use crate::domain::TopicName;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::limits::{self, PerIp};
use crate::telemetry::{Metrics, Recent};

/// What the request logic reads of a request; the HTTP layer fills it from its own types.
pub(crate) struct RequestHead<'a> {
    /// The query string's pairs in order, repeated keys kept (the gate reads `authorization=` of it).
    pub query: &'a [(String, String)],
    /// `Authorization` (an unreadable value is read as empty, which is refused as not `Bearer`).
    pub authorization: Option<&'a str>,
    /// Every `Cookie` header.
    pub cookies: Vec<&'a str>,
    pub origin: Option<&'a str>,
    pub referer: Option<&'a str>,
    pub host: Option<&'a str>,
    /// `Last-Event-ID`: `Some(None)` when the header is there but not visible ASCII.
    pub last_event_id: Option<Option<&'a str>>,
    /// The TCP peer, and `X-Forwarded-For` (believed only from `server.trusted_proxies`).
    pub peer: Option<IpAddr>,
    pub forwarded_for: Option<&'a str>,
}

/// What every request of a node shares, whatever HTTP stack carried it.
pub struct Node {
    pub engine: Arc<dyn Engine>,
    /// What every SSE stream of this node shares.
    pub streams: Streams,
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    /// The one access rule (shared with the streams, which apply it to topics a pattern selects).
    pub auth: Arc<Auth>,
    pub per_ip: PerIp,
    pub trusted_proxies: Vec<IpAddr>,
    /// Counts of the last minute, for the status page.
    pub recent: Arc<Recent>,
    /// This node among others: the host name (a container's id under Docker) and the process id.
    pub node_id: String,
    /// Who is subscribed (`[presence]`), when it is on.
    pub(crate) presence: Option<Arc<crate::presence::Presence>>,
}

impl Node {
    /// The client's address for per-IP limits (see `server.trusted_proxies`).
    pub(crate) fn client_ip(&self, head: &RequestHead<'_>) -> IpAddr {
        limits::client_ip(head.peer, head.forwarded_for, &self.trusted_proxies)
            .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
    }

    /// The one gate of every route that reads or writes topics: finds the request's token, refuses a
    /// cookie token sent from a foreign page (CSRF), then applies the access rule of [`Auth::authorize`].
    pub(crate) fn authorize(
        &self,
        head: &RequestHead<'_>,
        access: Access,
        topics: &[TopicName],
    ) -> Result<Option<Grant>, ApiError> {
        let token = self.token(head)?;
        if let Some(Token {
            from_cookie: true, ..
        }) = &token
        {
            self.check_cookie_origin(head, access)?;
        }
        Ok(self
            .auth
            .authorize(access, token.as_ref().map(|t| t.value.as_str()), topics)?)
    }

    /// A browser sends a site's cookie with requests that any other page makes, so a cookie token counts
    /// only when the request says it comes from an allowed page: its `Origin` (else the origin of its
    /// `Referer`) is this hub's own or listed in `cors.allowed_origins`. A write with neither is refused
    /// (the Mercure spec's rule); a read with neither is a same-origin `EventSource`, which sends no
    /// `Origin` on GET.
    fn check_cookie_origin(&self, head: &RequestHead<'_>, access: Access) -> Result<(), ApiError> {
        let origin = head.origin.map(str::to_string).or_else(|| {
            head.referer.and_then(|r| {
                let (scheme, rest) = r.split_once("://")?;
                let authority = rest.split(['/', '?', '#']).next()?;
                Some(format!("{scheme}://{authority}"))
            })
        });
        let allowed = match &origin {
            None => access != Access::Write,
            Some(origin) => {
                let own = origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| Some(authority) == head.host);
                own || self
                    .settings
                    .cors
                    .allowed_origins
                    .iter()
                    .any(|o| o == "*" || o == origin)
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(ApiError::ForeignOrigin(origin.unwrap_or_else(|| "none".into())))
        }
    }

    /// The token sent with the request: `Authorization: Bearer`, else the `authorization` (or
    /// `access_token`) query parameter, else an auth cookie (Mercure's order).
    fn token(&self, head: &RequestHead<'_>) -> Result<Option<Token>, ApiError> {
        if let Some(value) = head.authorization {
            let token = value
                .get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .map(|_| value[7..].trim())
                .ok_or_else(|| {
                    AuthError::Invalid("the Authorization header must be `Bearer <jwt>`".into())
                })?;
            return Ok(Some(Token::new(token, false)));
        }
        // The last `authorization=` (or RFC 6750's `access_token=`) of the query, as every query value
        // is read (`http::request`): before any cookie, since a cookie rides along with every request.
        let param = head
            .query
            .iter()
            .rev()
            .find(|(k, v)| (k == "authorization" || k == "access_token") && !v.is_empty());
        if let Some((_, token)) = param {
            return Ok(Some(Token::new(token, false)));
        }
        for pair in head.cookies.iter().flat_map(|v| v.split(';')) {
            if let Some((name, value)) = pair.trim().split_once('=') {
                let known = name == self.auth.cookie_name || MERCURE_COOKIES.contains(&name);
                if known && !value.is_empty() {
                    return Ok(Some(Token::new(value.trim_matches('"'), true)));
                }
            }
        }
        Ok(None)
    }
}

/// The cookies Mercure's clients set: `mercureAuthorization` (0.x, Symfony's `SetCookieSubscriber`),
/// `__Secure-mercure_access_token` (1.0) and `mercureAccessToken` (the newest draft); read next to
/// `auth.cookie_name`, under the same origin rule.
const MERCURE_COOKIES: [&str; 3] = [
    "mercureAuthorization",
    "__Secure-mercure_access_token",
    "mercureAccessToken",
];

/// A token as sent, and whether it came from the cookie (which any page's requests carry).
struct Token {
    value: String,
    from_cookie: bool,
}

impl Token {
    fn new(value: &str, from_cookie: bool) -> Self {
        Token {
            value: value.to_string(),
            from_cookie,
        }
    }
}
