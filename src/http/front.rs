//! The front door of a plain-HTTP listener. It reads each connection's first request head (woken only
//! when bytes arrive, into one buffer that grows with them and is scanned once for the head's end), and
//! then:
//! - answers a malformed, oversized or slow head itself, with problem+json (actix would answer a bare
//!   400/408/431; what a complete head says is `framing`'s);
//! - hands a stream request of a lean route (`GET /events`, `GET /.well-known/mercure`, see
//!   `lean::ROUTES`) to the lean path (`lean`), which holds no read or write buffer per stream;
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
use actix_web::http::StatusCode;
use actix_web::rt::net::TcpStream;
use actix_web::web;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{timeout, timeout_at, Instant};

use super::error::problem_body;
use super::framing::{head_too_large, read_head, First, MAX_HEAD};
use super::lean::{lean_stream, CLOSING_WRITE};
use crate::limits::Slots;
use crate::node::Node;
use crate::telemetry::LogEvery;

/// Bytes taken off the socket per read of a head, through a buffer on the stack of one poll: the head
/// buffer then grows by what arrived, not by a read's room.
const READ_CHUNK: usize = 4096;

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
        First::Stream(len, head) => match lean_stream(io, head, peer, &front.node).await {
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
