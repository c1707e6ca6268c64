//! Noticing that a subscriber went away while its stream is idle. actix reads nothing from a connection
//! while it streams a response, so a closed or reset socket would show only at the next write (a
//! heartbeat, up to `sse.heartbeat_secs` later), holding the client's slot, queue and Redis interest
//! until then. Each plain-TCP connection keeps a second handle to its socket (one more file descriptor)
//! that an SSE stream watches for the peer's FIN or RST, without reading anything.

use std::any::Any;
use std::cell::Cell;
use std::os::fd::{AsFd, OwnedFd};

use actix_web::dev::Extensions;
use actix_web::rt::net::TcpStream;
use actix_web::HttpRequest;
use futures_util::future::{BoxFuture, FutureExt};
use tokio::io::Interest;

/// The second handle, taken by the first stream on the connection that watches it.
struct PeerSocket(Cell<Option<OwnedFd>>);

/// Keeps a handle to a plain-TCP connection's socket (TLS connections are not watched: over HTTP/2 the
/// protocol layer reads all the time and notices by itself).
pub(crate) fn on_connect(conn: &dyn Any, data: &mut Extensions) {
    if let Some(tcp) = conn.downcast_ref::<TcpStream>() {
        if let Ok(handle) = tcp.as_fd().try_clone_to_owned() {
            data.insert(PeerSocket(Cell::new(Some(handle))));
        }
    }
}

/// Resolves once the peer of `req`'s connection has closed or reset it; `None` when it cannot be
/// watched. Never reads: bytes the client sends are left to actix.
pub(crate) fn gone(req: &HttpRequest) -> Option<BoxFuture<'static, ()>> {
    let handle = req.conn_data::<PeerSocket>()?.0.take()?;
    let socket = std::net::TcpStream::from(handle);
    socket.set_nonblocking(true).ok()?;
    let socket = tokio::net::TcpStream::from_std(socket).ok()?;
    Some(
        async move {
            loop {
                let Ok(ready) = socket.ready(Interest::READABLE).await else {
                    return std::future::pending().await;
                };
                if ready.is_read_closed() {
                    return;
                }
                // Bytes to read (not ours): forget this readiness, without reading, and wait for the
                // next change of state.
                let _ = socket.try_io(Interest::READABLE, || {
                    Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
                });
            }
        }
        .boxed(),
    )
}
