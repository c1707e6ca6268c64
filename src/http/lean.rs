//! The lean SSE path of plain-HTTP listeners: a stream request the front door read is opened through
//! `subscribe` and served here, written frame by frame with no read or write buffer kept per connection;
//! the read side is watched, so a client that closes or resets is dropped at once.
//!
//! Which requests it serves is a table ([`ROUTES`]): a path, the protocol's request parser and the
//! answer's headers. Everything else (and every request with a body or an upgrade) goes to actix-web.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use actix_web::http::Uri;
use actix_web::rt::net::TcpStream;
use actix_web::ResponseError;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::time::timeout;

use super::cors;
use super::request::query_pairs;
use crate::error::ApiError;
use crate::node::{Node, RequestHead};
use crate::subscribe::{open, Open, StreamRequest};

/// What a client may send into its open stream (a pipelined request, a stray body) before the stream is
/// closed: an SSE client sends nothing after its request, and reading without end would be free CPU
/// for a hostile one.
const STREAM_INPUT_LIMIT: usize = 64 * 1024;
/// A stream being closed gets this long to take its closing comment, then the socket is dropped anyway.
pub(super) const CLOSING_WRITE: Duration = Duration::from_secs(1);

/// A stream route the lean path serves.
pub(super) struct LeanRoute {
    /// The exact path (the query is the parser's).
    pub path: &'static str,
    /// The protocol's reading of the request: what `subscribe::open` is asked.
    pub parse: fn(&Node, &RequestHead<'_>) -> Result<StreamRequest, ApiError>,
    /// The answer's headers after the status line (the same as the actix route's).
    pub headers: &'static str,
}

/// Every route the lean path serves; a GET of any other path goes to actix-web.
pub(super) static ROUTES: &[LeanRoute] = &[
    LeanRoute {
        path: "/events",
        parse: super::subscribe::stream_request,
        headers: STREAM_HEADERS,
    },
    LeanRoute {
        path: super::mercure::HUB_PATH,
        parse: super::mercure::subscribe::stream_request,
        headers: STREAM_HEADERS,
    },
];

/// What the stream logic reads of a head, copied out of the head buffer (which is then freed).
pub(super) struct OwnedHead {
    /// The lean route the head asked for.
    route: &'static LeanRoute,
    query: String,
    authorization: Option<String>,
    cookies: Vec<String>,
    origin: Option<String>,
    referer: Option<String>,
    host: Option<String>,
    last_event_id: Option<Option<String>>,
    forwarded_for: Option<String>,
    http10: bool,
    /// Whether the client keeps the connection for another request (HTTP/1.1 unless `close`; HTTP/1.0
    /// only with `keep-alive`).
    keep_alive: bool,
}

impl OwnedHead {
    /// The head of a plain `GET` of a lean route (origin or absolute form) the lean path can serve; `None` for
    /// anything else, which actix-web then serves or refuses. `uri` is the target as actix-web reads it
    /// (`http::Uri`): both paths see one path and one query (a `#fragment` is no part of either).
    pub(super) fn for_stream(req: &httparse::Request<'_, '_>, uri: &Uri) -> Option<Self> {
        if req.method != Some("GET") {
            return None;
        }
        let route = ROUTES.iter().find(|r| r.path == uri.path())?;
        let headers = req.headers.iter();
        let mut head = OwnedHead {
            route,
            query: uri.query().unwrap_or("").to_string(),
            authorization: None,
            cookies: Vec::new(),
            origin: None,
            referer: None,
            host: None,
            last_event_id: None,
            forwarded_for: None,
            http10: req.version == Some(0),
            keep_alive: req.version != Some(0),
        };
        for header in headers {
            // Read as actix reads a header value: text only when it is all visible ASCII (or tab).
            let text = std::str::from_utf8(header.value)
                .ok()
                .filter(|v| v.bytes().all(|b| b == b'\t' || (32..127).contains(&b)))
                .map(|v| v.trim_matches([' ', '\t']).to_string());
            let name = header.name;
            let first = |slot: &mut Option<String>| {
                if slot.is_none() {
                    *slot = text.clone();
                }
            };
            if name.eq_ignore_ascii_case("authorization") {
                if head.authorization.is_none() {
                    head.authorization = Some(text.clone().unwrap_or_default());
                }
            } else if name.eq_ignore_ascii_case("cookie") {
                head.cookies.extend(text.clone());
            } else if name.eq_ignore_ascii_case("origin") {
                first(&mut head.origin);
            } else if name.eq_ignore_ascii_case("referer") {
                first(&mut head.referer);
            } else if name.eq_ignore_ascii_case("host") {
                first(&mut head.host);
            } else if name.eq_ignore_ascii_case("last-event-id") {
                if head.last_event_id.is_none() {
                    head.last_event_id = Some(text.clone());
                }
            } else if name.eq_ignore_ascii_case("x-forwarded-for") {
                first(&mut head.forwarded_for);
            } else if name.eq_ignore_ascii_case("connection") {
                for option in text.as_deref().unwrap_or("").split(',').map(str::trim) {
                    if option.eq_ignore_ascii_case("close") {
                        head.keep_alive = false;
                    } else if option.eq_ignore_ascii_case("keep-alive") {
                        head.keep_alive = true;
                    }
                }
            } else if name.eq_ignore_ascii_case("upgrade")
                || name.eq_ignore_ascii_case("expect")
                || name.eq_ignore_ascii_case("transfer-encoding")
                || (name.eq_ignore_ascii_case("content-length") && text.as_deref() != Some("0"))
            {
                // A GET with a body, or asking to switch protocols: not a plain stream request.
                return None;
            }
        }
        Some(head)
    }
}

/// Opens and runs a stream on the lean path, or answers why not; gives the connection back when another
/// request may follow on it (after a refusal, as actix-web keeps a connection alive after an error).
pub(super) async fn lean_stream(
    mut io: TcpStream,
    owned: Box<OwnedHead>,
    peer: Option<SocketAddr>,
    node: &Node,
) -> Option<TcpStream> {
    let allowed_origin = owned
        .origin
        .clone()
        .filter(|o| cors::allowed(&node.settings, o.as_bytes()));
    let mut starts_at = None;
    let opened = match query_pairs(&owned.query) {
        Ok(query) => {
            let head = RequestHead {
                query: &query,
                authorization: owned.authorization.as_deref(),
                cookies: owned.cookies.iter().map(String::as_str).collect(),
                origin: owned.origin.as_deref(),
                referer: owned.referer.as_deref(),
                host: owned.host.as_deref(),
                last_event_id: owned.last_event_id.as_ref().map(Option::as_deref),
                peer: peer.map(|p| p.ip()),
                forwarded_for: owned.forwarded_for.as_deref(),
            };
            match (owned.route.parse)(node, &head) {
                Ok(request) => {
                    starts_at = request.starts_at();
                    Box::pin(open(node, &head, request, Open::Stream)).await
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    };
    let connection = match opened {
        Ok(Some(connection)) => connection,
        // `Open::Stream` always opens one.
        Ok(None) => return None,
        Err(e) => {
            let keep_alive = node.settings.server.keep_alive_secs;
            let cors = allowed_origin
                .as_deref()
                .map(|o| cors::headers_for(&node.settings, o))
                .unwrap_or_default();
            let answer = Box::pin(refusal(e, &owned, &cors, keep_alive)).await;
            if !write(&mut io, answer).await {
                return None;
            }
            // Any next request on the connection is actix-web's.
            return owned.keep_alive.then_some(io);
        }
    };
    let mut response = String::with_capacity(256);
    // HTTP/1.0 closes after the answer by default: no `connection` header, as actix-web answers it.
    response.push_str(if owned.http10 {
        "HTTP/1.0 200 OK\r\n"
    } else {
        "HTTP/1.1 200 OK\r\nconnection: close\r\n"
    });
    response.push_str(owned.route.headers);
    if let Some(start) = starts_at {
        let value = start.header_value();
        for name in ["last-event-id: ", "mercure-last-event-id: "] {
            response.push_str(name);
            response.push_str(&value);
            response.push_str("\r\n");
        }
    }
    if let Some(origin) = &allowed_origin {
        for (name, value) in cors::headers_for(&node.settings, origin) {
            response.push_str(name);
            response.push_str(": ");
            response.push_str(&value);
            response.push_str("\r\n");
        }
    }
    response.push_str("date: ");
    response.push_str(&httpdate::fmt_http_date(SystemTime::now()));
    response.push_str("\r\n\r\n");
    // What the head said is not needed any more while the stream runs.
    drop(owned);
    drop(allowed_origin);
    let stream = connection.into_stream();
    tokio::pin!(stream);
    if !write(&mut io, Bytes::from(response)).await {
        return None;
    }
    // A client sends nothing more on a stream: a read that ends (FIN) or fails (RST) means it is gone,
    // and anything else it sends (a pipelined request) is dropped, as the response says `close`, up to
    // `STREAM_INPUT_LIMIT` bytes; past that, the stream is closed.
    let mut received = 0;
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            ready = io.readable() => {
                match ready.map(|()| drain(&io)) {
                    Ok(Some(n)) if received + n <= STREAM_INPUT_LIMIT => {
                        received += n;
                        continue;
                    }
                    _ => return None,
                }
            }
        };
        let Some(Ok(chunk)) = next else {
            let _ = timeout(CLOSING_WRITE, io.shutdown()).await;
            return None;
        };
        if !write(&mut io, chunk).await {
            return None;
        }
    }
}

/// Reads and drops what a stream's client sent, in large chunks through a buffer on the stack of this
/// call; how many bytes, or `None` when the client closed or reset.
fn drain(io: &TcpStream) -> Option<usize> {
    let mut stack = [0u8; 8192];
    let mut total = 0;
    loop {
        match io.try_read(&mut stack) {
            Ok(0) => return None,
            Ok(n) => total += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(total),
            Err(_) => return None,
        }
        if total > STREAM_INPUT_LIMIT {
            return Some(total);
        }
    }
}

/// The headers of every SSE answer, after the status line; the route's (`http::subscribe`) are the same.
const STREAM_HEADERS: &str =
    "content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n";

/// A refused stream request's answer, as actix-web answers it: the error's one rendering
/// (`ApiError::error_response`), with the CORS headers and the connection handling of every answer.
async fn refusal(
    error: ApiError,
    owned: &OwnedHead,
    cors: &[(&'static str, String)],
    keep_alive: Duration,
) -> Bytes {
    let response = error.error_response();
    let status = response.status();
    let mut head = format!(
        "{} {} {}\r\n",
        if owned.http10 { "HTTP/1.0" } else { "HTTP/1.1" },
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    for (name, value) in response.headers() {
        head.push_str(name.as_str());
        head.push_str(": ");
        head.push_str(&String::from_utf8_lossy(value.as_bytes()));
        head.push_str("\r\n");
    }
    for (name, value) in cors {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    match (owned.http10, owned.keep_alive) {
        (false, false) => head.push_str("connection: close\r\n"),
        (true, true) => head.push_str("connection: keep-alive\r\n"),
        // As actix-web answers it (see `startup`): an HTTP/1.1 connection kept says for how long.
        (false, true) => head.push_str(&format!("keep-alive: timeout={}\r\n", keep_alive.as_secs())),
        (true, false) => {}
    }
    let body = actix_web::body::to_bytes(response.into_body())
        .await
        .unwrap_or_default();
    head.push_str(&format!(
        "content-length: {}\r\ndate: {}\r\n\r\n",
        body.len(),
        httpdate::fmt_http_date(SystemTime::now())
    ));
    let mut answer = head.into_bytes();
    answer.extend_from_slice(&body);
    Bytes::from(answer)
}

/// Writes one chunk; false when the client is gone. The deadline is the kernel's: every client socket
/// has `TCP_USER_TIMEOUT` = `server.write_timeout_secs` (set on the listener, see `startup`), so a client
/// that takes nothing for that long fails the write (a timer here would cost every idle stream memory).
async fn write(io: &mut TcpStream, chunk: Bytes) -> bool {
    io.write_all(&chunk).await.is_ok()
}
