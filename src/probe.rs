//! `herald check`: a dependency-free HTTP probe, so a container health check needs no curl in the image.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("{0} is not an http://host:port/path URL")]
    BadUrl(String),
    #[error("cannot reach {0}: {1}")]
    Unreachable(String, std::io::Error),
    #[error("{0} answered something that is not HTTP")]
    NotHttp(String),
}

/// GETs `url` (plain `http://` only) and returns the status code.
pub fn status(url: &str, timeout: Duration) -> Result<u16, ProbeError> {
    let bad = || ProbeError::BadUrl(url.to_string());
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(at) => (&rest[..at], &rest[at..]),
        None => (rest, "/"),
    };
    let addr = authority
        .to_socket_addrs()
        .map_err(|e| ProbeError::Unreachable(url.to_string(), e))?
        .next()
        .ok_or_else(bad)?;
    let unreachable = |e| ProbeError::Unreachable(url.to_string(), e);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    stream.set_write_timeout(Some(timeout)).map_err(unreachable)?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").map_err(unreachable)?;
    let mut head = [0u8; 32];
    let n = stream.read(&mut head).map_err(unreachable)?;
    let line = std::str::from_utf8(&head[..n]).unwrap_or("");
    line.strip_prefix("HTTP/1.")
        .and_then(|l| l.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| ProbeError::NotHttp(url.to_string()))
}
