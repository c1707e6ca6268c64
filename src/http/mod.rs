//! HTTP routes, one file each; this module only wires them.

mod cors;
mod demo;
pub mod error;
mod health;
mod history;
mod publish;
mod subscribe;

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, HttpRequest};

use std::net::IpAddr;

use crate::auth::{Access, Auth, AuthError, Grant};
use crate::config::Settings;
use crate::connection::Streams;
use crate::domain::TopicName;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::limits::{self, PerIp};
use crate::telemetry::Metrics;
use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub engine: Arc<dyn Engine>,
    /// What every SSE stream of this node shares.
    pub streams: Streams,
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    pub per_ip: PerIp,
    pub trusted_proxies: Vec<IpAddr>,
}

impl AppState {
    /// The client's address for per-IP limits (see `server.trusted_proxies`).
    fn client_ip(&self, req: &HttpRequest) -> IpAddr {
        let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
        limits::client_ip(req.peer_addr().map(|a| a.ip()), forwarded, &self.trusted_proxies)
            .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
    }

    /// The one gate of every route that reads or writes topics: finds the request's token, refuses a
    /// cookie token sent from a foreign page (CSRF), then applies the access rule of [`Auth::authorize`].
    fn authorize(
        &self,
        req: &HttpRequest,
        pairs: &[(String, String)],
        access: Access,
        topics: &[TopicName],
    ) -> Result<Option<Grant>, ApiError> {
        let token = self.token(req, pairs)?;
        if let Some(Token {
            from_cookie: true, ..
        }) = &token
        {
            self.check_cookie_origin(req, access)?;
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
    fn check_cookie_origin(&self, req: &HttpRequest, access: Access) -> Result<(), ApiError> {
        let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        let origin = header(header::ORIGIN).map(str::to_string).or_else(|| {
            header(header::REFERER).and_then(|r| {
                let (scheme, rest) = r.split_once("://")?;
                let authority = rest.split(['/', '?', '#']).next()?;
                Some(format!("{scheme}://{authority}"))
            })
        });
        let allowed = match &origin {
            None => access == Access::Read,
            Some(origin) => {
                let own = origin
                    .split_once("://")
                    .is_some_and(|(_, authority)| Some(authority) == header(header::HOST));
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

    /// The token sent with the request: `Authorization: Bearer`, else the auth cookie, else the
    /// `authorization` query parameter.
    fn token(&self, req: &HttpRequest, pairs: &[(String, String)]) -> Result<Option<Token>, ApiError> {
        if let Some(value) = req.headers().get(header::AUTHORIZATION) {
            let value = value.to_str().unwrap_or("");
            let token = value
                .get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .map(|_| value[7..].trim())
                .ok_or_else(|| {
                    AuthError::Invalid("the Authorization header must be `Bearer <jwt>`".into())
                })?;
            return Ok(Some(Token::new(token, false)));
        }
        let cookies = req
            .headers()
            .get_all(header::COOKIE)
            .filter_map(|v| v.to_str().ok());
        for pair in cookies.flat_map(|v| v.split(';')) {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == self.auth.cookie_name && !value.is_empty() {
                    return Ok(Some(Token::new(value.trim_matches('"'), true)));
                }
            }
        }
        Ok(query_value(pairs, "authorization")
            .filter(|t| !t.is_empty())
            .map(|t| Token::new(t, false)))
    }
}

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

/// Registers every route and the middleware that applies to all of them.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("")
            .wrap(from_fn(cors::cors))
            .wrap(ErrorHandlers::new().default_handler(error::problem_fallback))
            .service(get("/", demo::page))
            .service(get("/healthz", health::healthz))
            .service(get("/readyz", health::readyz))
            .service(get("/metrics", health::metrics))
            .service(get("/openapi.yaml", demo::openapi))
            .service(get("/events", subscribe::subscribe))
            .service(resource("/topics/{topic}", "POST").route(web::post().to(publish::publish)))
            .service(get("/topics/{topic}/history", history::history)),
    );
}

/// A resource that answers 405 problem+json (with `Allow: allow`) to methods it has no route for.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        let mut response = error::problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            &format!("{} is not accepted at {}", req.method(), req.path()),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        response
    }))
}

/// A GET resource that answers HEAD too (the same status and headers, no body; RFC 9110 § 9.3.2).
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    resource(path, "GET, HEAD")
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
}

/// Query-string pairs in order, repeated keys kept (`topic=a&topic=b`).
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::BadRequest(format!("the query string is not valid form encoding: {e}")))
}

/// The single value of `key` in the query, if given.
fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
