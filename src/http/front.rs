//! The front door of a plain-HTTP listener. It reads each connection's first request head (woken only
//! when bytes arrive, into one buffer that grows with them and is scanned once for the head's end), and
//! then:
//! - answers a malformed, oversized or slow head itself, with problem+json (actix would answer a bare
//!   400/408/431);
//! - serves an SSE `GET /events` itself on the lean path: after the response head, the connection holds
//!   no read or write buffer, only the stream's state, and a client that closes or resets is noticed at
//!   once because the read side is watched;
//! - hands every other connection to actix-web, the bytes already read first ([`Prefixed`]), and a
//!   connection on which a refused stream request is followed by another request.

use std::future::poll_fn;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use actix_http::Protocol;
use actix_service::Service;
use actix_web::http::{StatusCode, Uri};
use actix_web::rt::net::TcpStream;
use actix_web::{web, ResponseError};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{timeout, timeout_at, Instant};

use super::cors;
use super::error::problem_body;
use crate::error::ApiError;
use crate::limits::Slots;
use crate::node::{query_pairs, Node, RequestHead};
use crate::subscribe::{open, Open};
use crate::telemetry::LogEvery;

/// The largest first request head accepted, in bytes up to and including its blank line; a longer one
/// is answered 431.
pub(crate) const MAX_HEAD: usize = 32 * 1024;
/// Bytes taken off the socket per read of a head, through a buffer on the stack of one poll: the head
/// buffer then grows by what arrived, not by a read's room.
const READ_CHUNK: usize = 4096;
/// What a client may send into its open stream (a pipelined request, a stray body) before the stream is
/// closed: an SSE client sends nothing after its request, and reading without end would be free CPU
/// for a hostile one.
const STREAM_INPUT_LIMIT: usize = 64 * 1024;
/// Headers per request (as actix-http's own limit); more are answered 431.
const MAX_HEADERS: usize = 96;
/// A stream being closed gets this long to take its closing comment, then the socket is dropped anyway.
const CLOSING_WRITE: Duration = Duration::from_secs(1);

/// What the front door needs of the node, shared by every connection of every worker.
pub(crate) struct Front {
    pub node: web::Data<Node>,
    /// `server.lean_streams`: serve SSE GETs here (true) or pass them to actix-web like everything else.
    pub lean: bool,
    /// `server.request_head_timeout_ms`: a head that is not complete by then is answered 408.
    pub head_timeout: Duration,
    /// Connections open now, for the graceful stop (see `startup::Shutdown`).
    pub open: Arc<AtomicUsize>,
    /// `server.max_pending_heads_per_ip`: connections of one client address whose first head is not
    /// complete yet (the trusted proxies' are not counted).
    pub pending: Slots,
    /// `server.trusted_proxies`: their connections carry many clients, so they take no pending slot.
    pub trusted_proxies: Vec<IpAddr>,
}

/// Counts a connection in `herald_unfinished_heads` while its first head is on its way.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a AtomicU64) -> Self {
        gauge.fetch_add(1, Ordering::Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts a connection while it is open.
pub(crate) struct OpenConnection(Arc<AtomicUsize>);

impl OpenConnection {
    pub(crate) fn new(open: &Arc<AtomicUsize>) -> Self {
        open.fetch_add(1, Ordering::AcqRel);
        OpenConnection(Arc::clone(open))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How a connection's first head reads.
enum First {
    /// Anything for actix-web.
    Pass,
    /// A `GET /events` for the lean path: the head's length and what the stream logic reads of it.
    Stream(usize, Box<OwnedHead>),
    /// A head no route will see: answered here, then the connection is closed.
    Refuse(StatusCode, &'static str, String),
    /// The client left, or sent nothing before the head timeout.
    Gone,
}

/// One plain-HTTP connection, from accept to close.
pub(crate) async fn serve<S>(io: TcpStream, http: Rc<S>, front: Arc<Front>) -> Result<(), ()>
where
    S: Service<(Prefixed, Protocol, Option<SocketAddr>), Response = ()>,
{
    let _open = OpenConnection::new(&front.open);
    // Each event goes out as soon as it is written: Nagle's algorithm would hold a frame until the
    // previous one is acknowledged (events are already coalesced per write).
    let _ = io.set_nodelay(true);
    let peer = io.peer_addr().ok();
    let pending = match peer.map(|p| p.ip()) {
        // With the cap off (0), no address is counted: no lock taken per connection.
        Some(ip) if front.pending.max() > 0 && !front.trusted_proxies.contains(&ip) => {
            match front.pending.take(ip) {
                Some(slot) => Some(slot),
                None => {
                    let detail = format!(
                    "your address has {} connections open that have not finished sending their request head; finish or close those first",
                    front.pending.max()
                );
                    Box::pin(refuse(
                        io,
                        StatusCode::TOO_MANY_REQUESTS,
                        "too-many-pending-heads",
                        &detail,
                    ))
                    .await;
                    return Ok(());
                }
            }
        }
        _ => None,
    };
    // The short-lived steps are boxed, so that they do not size the future a lean stream lives in (a
    // future is as large as its largest state): reading the head, opening, refusing.
    let waiting = Waiting::new(&front.node.metrics.unfinished_heads);
    let (first, read) = Box::pin(first_head(&io, front.head_timeout, front.lean)).await;
    drop((pending, waiting));
    match first {
        First::Gone => Ok(()),
        First::Refuse(status, code, detail) => {
            Box::pin(refuse(io, status, code, &detail)).await;
            Ok(())
        }
        First::Stream(len, head) => match lean_stream(io, head, peer, &front).await {
            // Anything the client sent after the head is the next request's.
            Some(io) => pass(&*http, Prefixed::new(io, read, len), peer).await,
            None => Ok(()),
        },
        First::Pass => pass(&*http, Prefixed::new(io, read, 0), peer).await,
    }
}

/// Hands a connection to actix-web. Its connection state is boxed, so that it does not size this whole
/// future: a lean stream's task then stays as small as the stream itself.
async fn pass<S>(http: &S, io: Prefixed, peer: Option<SocketAddr>) -> Result<(), ()>
where
    S: Service<(Prefixed, Protocol, Option<SocketAddr>), Response = ()>,
{
    Box::pin(http.call((io, Protocol::Http1, peer)))
        .await
        .map_err(|_| ())
}

/// Reads until the first head is complete (or is refused); gives back what it read. The task sleeps
/// until bytes arrive (a read that finds none clears the socket's readiness), each byte is scanned once
/// for the head's end, and the head is parsed once, when its blank line is there.
async fn first_head(io: &TcpStream, limit: Duration, lean: bool) -> (First, Vec<u8>) {
    let deadline = Instant::now() + limit;
    // Empty until the first byte arrives: in a connection storm, a connection whose head is still on
    // its way holds no buffer.
    let mut buf = Vec::new();
    let mut scanned = 0;
    loop {
        match timeout_at(deadline, poll_fn(|cx| read_some(io, cx, &mut buf))).await {
            Err(_) if buf.is_empty() => return (First::Gone, buf),
            Err(_) => {
                let detail = format!(
                    "the request head did not arrive within {} ms; send it whole, then wait for the answer",
                    limit.as_millis()
                );
                return (
                    First::Refuse(StatusCode::REQUEST_TIMEOUT, "request-timeout", detail),
                    buf,
                );
            }
            Ok(Err(_)) | Ok(Ok(0)) => return (First::Gone, buf),
            Ok(Ok(_)) => {}
        }
        // A TLS handshake (a record of type 22, handshake): the client meant the HTTPS port. Answered at
        // once rather than after the head timeout; a curl user sees the hint with `--http1.1 http://`.
        if buf.first() == Some(&0x16) {
            return (
                First::Refuse(
                    StatusCode::BAD_REQUEST,
                    "plain-http-port",
                    "this port speaks plain HTTP, and a TLS handshake arrived: use http:// here, or the HTTPS listener (server.tls_cert_file)".into(),
                ),
                buf,
            );
        }
        // Empty lines before the request line are ignored (RFC 9112 § 2.2), and not kept.
        let blank = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
        if blank > 0 {
            buf.drain(..blank);
            scanned = 0;
        }
        if let Some(end) = head_end(&buf, scanned) {
            if end > MAX_HEAD {
                return (head_too_large(), buf);
            }
            if let Some(first) = read_head(&buf[..end], lean) {
                return (first, buf);
            }
        }
        if buf.len() > MAX_HEAD {
            return (head_too_large(), buf);
        }
        scanned = buf.len();
    }
}

/// Takes what arrived off the socket into `buf` (at most `MAX_HEAD` + 1 bytes in all), through a stack
/// buffer that exists within one poll; `Ok(0)` when the client closed.
fn read_some(io: &TcpStream, cx: &mut Context<'_>, buf: &mut Vec<u8>) -> Poll<std::io::Result<usize>> {
    let mut stack = [0u8; READ_CHUNK];
    let want = (MAX_HEAD + 1 - buf.len().min(MAX_HEAD)).min(stack.len());
    loop {
        match io.try_read(&mut stack[..want]) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::task::ready!(io.poll_read_ready(cx))?;
            }
            Ok(n) => {
                buf.extend_from_slice(&stack[..n]);
                return Poll::Ready(Ok(n));
            }
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Where the head in `buf` ends (just after its blank line), looking only at what came after `scanned`
/// (and the three bytes before it, which may start the blank line). A line ends in LF or CRLF, as
/// httparse reads it.
fn head_end(buf: &[u8], scanned: usize) -> Option<usize> {
    let mut at = scanned.saturating_sub(3);
    while let Some(lf) = buf[at..].iter().position(|&b| b == b'\n').map(|p| at + p) {
        match &buf[lf + 1..] {
            [b'\n', ..] => return Some(lf + 2),
            [b'\r', b'\n', ..] => return Some(lf + 3),
            _ => at = lf + 1,
        }
    }
    None
}

/// What a complete (or broken) head says, or `None` if httparse still finds it incomplete. Not async:
/// the parser's header array (3 KiB) lives on the stack for the call only, never in a connection's
/// future.
fn read_head(bytes: &[u8], lean: bool) -> Option<First> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    Some(match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => match check_framing(&req) {
            Err(refusal) => refusal,
            Ok(uri) => match lean.then(|| OwnedHead::for_stream(&req, &uri)).flatten() {
                Some(head) => First::Stream(len, Box::new(head)),
                None => First::Pass,
            },
        },
        Ok(httparse::Status::Partial) => return None,
        Err(httparse::Error::TooManyHeaders) => First::Refuse(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers-too-large",
            format!("the request has more than {MAX_HEADERS} header fields; send fewer"),
        ),
        Err(httparse::Error::Version) if !names_another_version(bytes) => {
            malformed("the request line must be: method, one space, target, one space, HTTP/1.1")
        }
        Err(httparse::Error::Version) => First::Refuse(
            StatusCode::HTTP_VERSION_NOT_SUPPORTED,
            "http-version-not-supported",
            "this listener speaks HTTP/1.0 and HTTP/1.1 (HTTP/2 is offered over HTTPS, by ALPN)".into(),
        ),
        Err(e) => malformed(&format!("{e}; check the request line and header syntax")),
    })
}

/// The checks actix-web's parser makes of a complete head, which it would answer with a bare 400: a bad
/// target, a missing or repeated `Host`, and message framing a request could be smuggled through.
fn check_framing(req: &httparse::Request<'_, '_>) -> Result<Uri, First> {
    let bad = |code: &'static str, detail: &str| {
        Err(First::Refuse(StatusCode::BAD_REQUEST, code, detail.to_string()))
    };
    let target = req.path.unwrap_or("");
    let Ok(uri) = Uri::try_from(target) else {
        return bad(
            "bad-target",
            "the request target is not a valid URI; percent-encode reserved characters (a topic in a path as %2F for /)",
        );
    };
    // Asterisk and authority forms (`OPTIONS *`, `CONNECT host:443`) name no resource here: actix would
    // answer them a bare 404.
    if !target.starts_with('/') && uri.scheme().is_none() {
        return bad(
            "bad-target",
            "the request target must be a path such as /events?topic=news (or an absolute URI); this hub serves no `*` or host:port targets",
        );
    }
    let http11 = req.version == Some(1);
    let count = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    match count("host") {
        0 if http11 => return bad("missing-host", "an HTTP/1.1 request must carry a Host header"),
        0 | 1 => {}
        _ => return bad("bad-host", "the request has more than one Host header; send one"),
    }
    let value = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).trim().to_string())
    };
    let content_length = value("content-length");
    if count("content-length") > 1
        || content_length
            .as_deref()
            .is_some_and(|v| v.starts_with('+') || v.parse::<u64>().is_err())
    {
        return bad(
            "bad-content-length",
            "Content-Length must appear once, as a decimal number of bytes",
        );
    }
    if let Some(coding) = value("transfer-encoding") {
        if !http11 {
            return bad(
                "bad-transfer-encoding",
                "HTTP/1.0 has no Transfer-Encoding; send Content-Length",
            );
        }
        // `identity` is no transfer coding (RFC 9112 dropped it); actix-http would answer it a bare 400.
        if count("transfer-encoding") > 1 || !coding.eq_ignore_ascii_case("chunked") {
            return bad(
                "bad-transfer-encoding",
                "Transfer-Encoding must appear once, as chunked (identity is no transfer coding); or send Content-Length instead",
            );
        }
        if content_length.is_some() {
            return bad(
                "bad-transfer-encoding",
                "send Content-Length or Transfer-Encoding, not both",
            );
        }
    }
    if !http11 && req.method == Some("POST") && content_length.is_none() {
        return Err(First::Refuse(
            StatusCode::LENGTH_REQUIRED,
            "length-required",
            "an HTTP/1.0 POST must say its body's length in Content-Length".into(),
        ));
    }
    Ok(uri)
}

fn malformed(why: &str) -> First {
    First::Refuse(
        StatusCode::BAD_REQUEST,
        "malformed-request",
        format!("the request head is not valid HTTP/1.1: {why}"),
    )
}

/// Whether a request line is well formed but for its version (`GET / HTTP/2.0`): that is 505, while a
/// line that merely fails to end in a version (a space in the target) is malformed.
fn names_another_version(head: &[u8]) -> bool {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or(&[]);
    let parts: Vec<&[u8]> = line.split(|&b| b == b' ').collect();
    match parts.as_slice() {
        [_, _, version] => version
            .strip_prefix(b"HTTP/")
            .is_some_and(|v| !v.is_empty() && v.iter().all(|b| b.is_ascii_digit() || *b == b'.')),
        _ => false,
    }
}

fn head_too_large() -> First {
    First::Refuse(
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        "headers-too-large",
        format!(
            "the request head is over {} KiB; send shorter headers (a long token belongs in a cookie or the body, not in many headers)",
            MAX_HEAD / 1024
        ),
    )
}

/// Refusals of heads are logged at WARN, once per this long (a scanner sends thousands).
static REFUSALS: std::sync::LazyLock<LogEvery> =
    std::sync::LazyLock::new(|| LogEvery::new(Duration::from_secs(10)));

/// Answers a refused head and closes the connection.
async fn refuse(mut io: TcpStream, status: StatusCode, code: &str, detail: &str) {
    if let Some(held_back) = REFUSALS.ready() {
        let peer = io.peer_addr().ok();
        tracing::warn!(
            ?peer,
            code,
            held_back,
            "refused a request head: {detail} (one line per 10 s)"
        );
    }
    let body = problem_body(status, code, detail);
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\nconnection: close\r\ndate: {}\r\n\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error"),
        super::error::PROBLEM_JSON,
        body.len(),
        httpdate::fmt_http_date(SystemTime::now()),
    );
    let answer = async {
        io.write_all(head.as_bytes()).await?;
        io.write_all(body.as_bytes()).await?;
        io.shutdown().await?;
        // Closing with unread bytes would reset the connection, and a reset can destroy the answer before
        // the client reads it: take (and drop) what the client still sends, for a moment.
        let mut sink = [0u8; 1024];
        while io.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = timeout(CLOSING_WRITE, answer).await;
}

/// What the stream logic reads of a head, copied out of the head buffer (which is then freed).
struct OwnedHead {
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
    /// The head of a plain `GET /events` (origin or absolute form) the lean path can serve; `None` for
    /// anything else, which actix-web then serves or refuses. `uri` is the target as actix-web reads it
    /// (`http::Uri`): both paths see one path and one query (a `#fragment` is no part of either).
    fn for_stream(req: &httparse::Request<'_, '_>, uri: &Uri) -> Option<Self> {
        if req.method != Some("GET") || uri.path() != "/events" {
            return None;
        }
        let headers = req.headers.iter();
        let mut head = OwnedHead {
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
async fn lean_stream(
    mut io: TcpStream,
    owned: Box<OwnedHead>,
    peer: Option<SocketAddr>,
    front: &Front,
) -> Option<TcpStream> {
    let node = &front.node;
    let allowed_origin = owned
        .origin
        .clone()
        .filter(|o| cors::allowed(&node.settings, o.as_bytes()));
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
            Box::pin(open(node, &head, Open::Stream)).await
        }
        Err(e) => Err(e),
    };
    let connection = match opened {
        Ok(Some(connection)) => connection,
        // `Open::Stream` always opens one.
        Ok(None) => return None,
        Err(e) => {
            let answer = Box::pin(refusal(e, &owned, allowed_origin.as_deref())).await;
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
    response.push_str(STREAM_HEADERS);
    if let Some(origin) = &allowed_origin {
        response.push_str("access-control-allow-origin: ");
        response.push_str(origin);
        response.push_str("\r\nvary: Origin\r\n");
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

/// A connection handed to actix-web: the bytes the front door already read of it come first (freed once
/// taken), then the socket.
pub(crate) struct Prefixed {
    io: TcpStream,
    read: Vec<u8>,
    at: usize,
}

impl Prefixed {
    fn new(io: TcpStream, read: Vec<u8>, at: usize) -> Self {
        let read = if at < read.len() { read } else { Vec::new() };
        Prefixed { io, read, at }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.read.len() {
            let n = (this.read.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.read[this.at..this.at + n]);
            this.at += n;
            if this.at == this.read.len() {
                this.read = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The headers of every SSE answer, after the status line; the route's (`http::subscribe`) are the same.
const STREAM_HEADERS: &str =
    "content-type: text/event-stream\r\ncache-control: no-cache\r\nx-accel-buffering: no\r\n";

/// A refused stream request's answer, as actix-web answers it: the error's one rendering
/// (`ApiError::error_response`), with the CORS headers and the connection handling of every answer.
async fn refusal(error: ApiError, owned: &OwnedHead, allowed_origin: Option<&str>) -> Bytes {
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
    if let Some(origin) = allowed_origin {
        head.push_str("access-control-allow-origin: ");
        head.push_str(origin);
        head.push_str("\r\nvary: Origin\r\n");
    }
    match (owned.http10, owned.keep_alive) {
        (false, false) => head.push_str("connection: close\r\n"),
        (true, true) => head.push_str("connection: keep-alive\r\n"),
        _ => {}
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
