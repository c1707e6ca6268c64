//! A cheap load client on one thread: raw HTTP/1.1 over loopback, hand-rolled chunked decoding and SSE
//! parsing, so the generator spends as little of the shared CPU as it can.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Spreads client connections over 127.0.0.1-16 so tens of thousands of short connections (and their
/// TIME_WAIT leftovers) do not exhaust one address's ephemeral ports.
async fn connect(port: u16) -> Result<TcpStream> {
    use std::sync::atomic::AtomicU8;
    static NEXT: AtomicU8 = AtomicU8::new(0);
    connect_from(port, NEXT.fetch_add(1, Ordering::Relaxed) % 16).await
}

/// A connection from source address 127.0.0.(1 + `source`).
pub async fn connect_from(port: u16, source: u8) -> Result<TcpStream> {
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + source);
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind((source, 0).into())?;
    let stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .context("connect")?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Message payloads are `<seq> <sent-µs> <padding>`, this many bytes.
pub const MESSAGE_BYTES: usize = 100;

thread_local! {
    static EPOCH: Instant = Instant::now();
}

pub fn now_us() -> u64 {
    EPOCH.with(|e| e.elapsed().as_micros() as u64)
}

pub fn payload(seq: usize) -> String {
    let mut s = format!("{seq} {} ", now_us());
    while s.len() < MESSAGE_BYTES {
        s.push('x');
    }
    s
}

/// What all subscribers of a run saw.
#[derive(Default)]
pub struct Tally {
    pub delivered: u64,
    pub duplicated: u64,
    pub out_of_order: u64,
    pub latencies_us: Vec<u32>,
    pub last_ids: Vec<String>,
}

pub type SharedTally = Rc<RefCell<Tally>>;

/// A response head, and the bytes that followed it in the same reads.
struct Head {
    rest: Vec<u8>,
    status: u16,
    chunked: bool,
    length: Option<usize>,
    /// The server closes the connection after this response.
    close: bool,
}

/// Reads one response head.
async fn read_head(stream: &mut TcpStream) -> Result<Head> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed before the response head");
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            return Ok(Head {
                rest: buf[end + 4..].to_vec(),
                status: head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0),
                chunked: head.contains("transfer-encoding: chunked"),
                length: head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok()),
                close: head.contains("connection: close"),
            });
        }
    }
}

/// De-chunks a response body as bytes arrive.
struct Dechunk {
    left: usize,
    skip_crlf: bool,
}

impl Dechunk {
    /// Moves the payload bytes of `raw` into `out`, keeping any incomplete chunk header in `raw`.
    fn feed(&mut self, raw: &mut Vec<u8>, out: &mut Vec<u8>) {
        let mut at = 0;
        loop {
            if self.skip_crlf {
                if raw.len() - at < 2 {
                    break;
                }
                at += 2;
                self.skip_crlf = false;
            }
            if self.left == 0 {
                let Some(end) = raw[at..].windows(2).position(|w| w == b"\r\n") else {
                    break;
                };
                let size = std::str::from_utf8(&raw[at..at + end])
                    .ok()
                    .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
                    .unwrap_or(0);
                at += end + 2;
                if size == 0 {
                    break;
                }
                self.left = size;
            }
            let take = self.left.min(raw.len() - at);
            if take == 0 {
                break;
            }
            out.extend_from_slice(&raw[at..at + take]);
            at += take;
            self.left -= take;
            if self.left == 0 {
                self.skip_crlf = true;
            }
        }
        raw.drain(..at);
    }
}

/// Compares server ids of any shape (`1-2`, `17:0`, `42`) by their digit runs.
/// An id as numbers: `[ms, seq]`, or for Herald's composite `<tag>.<ms>-<seq>.…` (base 36) each
/// position's `[ms, seq]` in turn.
fn id_key(id: &str) -> Vec<u64> {
    if let Some((_tag, positions)) = id.split_once('.') {
        return positions
            .split(['.', '-'])
            .map(|p| u64::from_str_radix(p, 36).unwrap_or(0))
            .collect();
    }
    id.split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty())
        .map(|p| p.parse().unwrap_or(0))
        .collect()
}

/// Whether `next` follows `prev`: a plain id is greater; a composite has no position behind and one ahead.
fn follows(prev: &[u64], next: &[u64]) -> bool {
    if prev.len() <= 2 || prev.len() != next.len() {
        return next > prev;
    }
    let pairs = |k: &[u64]| {
        k.chunks(2)
            .map(|p| (p[0], p.get(1).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
    };
    let (a, b) = (pairs(prev), pairs(next));
    a.iter().zip(&b).all(|(x, y)| y >= x) && a != b
}

/// One subscriber to run: where, from which id, and how many events to wait for.
pub struct Subscription {
    pub port: u16,
    pub path: String,
    pub last_event_id: Option<String>,
    /// Events to read before hanging up.
    pub expect: usize,
    /// Sequence numbers in the whole run (sizes the duplicate check).
    pub messages: usize,
    pub deadline: Instant,
}

/// Opens an SSE subscription and reads until `expect` events arrived (or the deadline), counting into
/// `tally`. `ready` is bumped once the response head is in.
pub async fn subscribe(sub: Subscription, tally: SharedTally, ready: Arc<AtomicUsize>) -> Result<usize> {
    let Subscription {
        port,
        path,
        last_event_id,
        expect,
        messages,
        deadline,
    } = sub;
    let mut stream = connect(port).await?;
    let resume = last_event_id
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n{resume}\r\n");
    stream.write_all(request.as_bytes()).await?;
    let Head {
        rest: mut raw,
        chunked,
        status,
        ..
    } = read_head(&mut stream).await?;
    if status != 200 {
        bail!("subscribe answered {status}");
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let mut dechunk = Dechunk {
        left: 0,
        skip_crlf: false,
    };
    let mut body = Vec::with_capacity(8192);
    let mut seen = vec![0u64; messages / 64 + 1];
    let mut got = 0usize;
    let mut last_id: Vec<u64> = Vec::new();
    let mut last_id_text = String::new();
    let mut data_seq: Option<(usize, u64)> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    while got < expect {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let n = match tokio::time::timeout(remaining, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(e.into()),
        };
        if chunked {
            raw.extend_from_slice(&chunk[..n]);
            dechunk.feed(&mut raw, &mut body);
        } else {
            if !raw.is_empty() {
                body.append(&mut raw);
            }
            body.extend_from_slice(&chunk[..n]);
        }
        let mut start = 0;
        let now = now_us();
        let mut t = tally.borrow_mut();
        while let Some(nl) = body[start..].iter().position(|&b| b == b'\n') {
            let line = &body[start..start + nl];
            start += nl + 1;
            if line.is_empty() {
                if let Some((seq, sent)) = data_seq.take() {
                    got += 1;
                    t.delivered += 1;
                    t.latencies_us
                        .push(now.saturating_sub(sent).min(u64::from(u32::MAX)) as u32);
                    let (word, bit) = (seq / 64, 1u64 << (seq % 64));
                    if let Some(w) = seen.get_mut(word) {
                        if *w & bit != 0 {
                            t.duplicated += 1;
                        }
                        *w |= bit;
                    }
                }
            } else if let Some(data) = line
                .strip_prefix(b"data: ")
                .or_else(|| line.strip_prefix(b"data:"))
            {
                let text = std::str::from_utf8(data).unwrap_or("");
                let mut parts = text.split(' ');
                let seq = parts.next().and_then(|p| p.parse().ok());
                let sent = parts.next().and_then(|p| p.parse().ok());
                if let (Some(seq), Some(sent)) = (seq, sent) {
                    data_seq = Some((seq, sent));
                }
            } else if let Some(id) = line.strip_prefix(b"id: ").or_else(|| line.strip_prefix(b"id:")) {
                let text = std::str::from_utf8(id).unwrap_or("").to_string();
                // Mercure streams carry the updates' own ids (UUID URNs, or `b<seq>` from publishers
                // that send one), whose order says nothing: only loss and duplicates are counted there.
                if text.starts_with("urn:") || (text.starts_with('b') && !text.contains('.')) {
                    continue;
                }
                let key = id_key(&text);
                if !last_id.is_empty() && !follows(&last_id, &key) {
                    t.out_of_order += 1;
                }
                last_id = key;
                last_id_text = text;
            }
        }
        body.drain(..start);
    }
    tally.borrow_mut().last_ids.push(last_id_text);
    Ok(got)
}

/// Holds an idle subscription open until `stop` resolves.
pub async fn hold(
    port: u16,
    path: String,
    ready: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<()> {
    // From one of 16 source addresses, as every subscriber: 18,000 connections from 127.0.0.1 alone leave
    // few free ports (28,232 in Linux's default range, less those in TIME_WAIT from the previous row),
    // and each connect() then searches so long that the first connections wait seconds for their
    // request, and a server's head timeout closes them.
    let mut stream = connect(port).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n\r\n").as_bytes(),
        )
        .await?;
    let status = read_head(&mut stream).await?.status;
    if status != 200 {
        bail!("subscribe answered {status}");
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let mut stop = stop;
    let mut sink = [0u8; 1024];
    loop {
        tokio::select! {
            _ = stop.changed() => return Ok(()),
            n = stream.read(&mut sink) => if matches!(n, Ok(0) | Err(_)) { return Ok(()) },
        }
    }
}

/// One keep-alive publisher connection: sends `POST paths[seq % len]` for each sequence number it takes
/// from `next` until `count`, waiting for each answer. Returns the publishes that failed.
pub async fn publisher(
    port: u16,
    paths: Vec<String>,
    next: Arc<AtomicUsize>,
    count: usize,
    pace: Option<Duration>,
    keyed: bool,
) -> Result<(usize, Vec<u32>)> {
    let mut stream = connect(port).await?;
    let mut failed = 0;
    // Microseconds from sending each request to reading its whole answer.
    let mut round_trips = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    let mut ticker = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        t
    });
    loop {
        if let Some(t) = ticker.as_mut() {
            t.tick().await;
        }
        let seq = next.fetch_add(1, Ordering::Relaxed);
        if seq >= count {
            return Ok((failed, round_trips));
        }
        let sent = std::time::Instant::now();
        let data = payload(seq);
        let path = &paths[seq % paths.len()];
        // A distinct Idempotency-Key per publish, when asked (what the keys scenario measures).
        let key = if keyed {
            format!("Idempotency-Key: bench-{seq:08}\r\n")
        } else {
            String::new()
        };
        // `mercure:<topic>` publishes through Herald's Mercure dialect: a form to /.well-known/mercure
        // (`mercure-id:<topic>`: with an id of its own as short as Herald's, `b<seq>`).
        let (path, kind, data) = match (path.strip_prefix("mercure:"), path.strip_prefix("mercure-id:")) {
            (Some(topic), _) => (
                "/.well-known/mercure",
                "application/x-www-form-urlencoded",
                format!("topic={topic}&data={}", data.replace(' ', "+")),
            ),
            (_, Some(topic)) => (
                "/.well-known/mercure",
                "application/x-www-form-urlencoded",
                format!("topic={topic}&data={}&id=b{seq:012}", data.replace(' ', "+")),
            ),
            _ => (path.as_str(), "text/plain", data),
        };
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: {kind}\r\n{key}Content-Length: {}\r\n\r\n{data}",
            data.len()
        );
        stream.write_all(request.as_bytes()).await?;
        // Read the whole answer: head, then Content-Length bytes or chunks up to the last one.
        let Head {
            rest: mut body,
            status,
            chunked,
            length,
            close,
        } = read_head(&mut stream).await?;
        loop {
            let complete = match (length, chunked) {
                (Some(len), _) => body.len() >= len,
                (None, true) => body.ends_with(b"0\r\n\r\n"),
                (None, false) => true,
            };
            if complete {
                break;
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                bail!("publisher connection closed mid-answer");
            }
            body.extend_from_slice(&buf[..n]);
        }
        round_trips.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
        if !(200..300).contains(&status) {
            failed += 1;
        }
        if close {
            stream = connect(port).await?;
        }
    }
}

/// Sends `bytes` of a request head that never ends, then waits until `stop` resolves or the server
/// answers or closes; true if it was still waiting when told to stop.
pub async fn unfinished_head(
    port: u16,
    source: u8,
    bytes: usize,
    sent: Arc<AtomicUsize>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<bool> {
    let mut stream = connect_from(port, source).await?;
    let start = "GET / HTTP/1.1\r\nHost: bench\r\nX-Pad: ";
    let mut head = start.as_bytes().to_vec();
    head.resize(bytes.max(start.len()), b'a');
    let wrote = stream.write_all(&head).await;
    sent.fetch_add(1, Ordering::Relaxed);
    if wrote.is_err() {
        return Ok(false);
    }
    let mut stop = stop;
    let mut sink = [0u8; 1024];
    tokio::select! {
        _ = stop.changed() => Ok(true),
        _ = stream.read(&mut sink) => Ok(false),
    }
}

/// One `GET path` on a new connection from source address 127.0.0.1: µs until the whole answer (also
/// given back) is read.
pub async fn one_get(port: u16, path: &str) -> Result<(u32, Vec<u8>)> {
    let started = Instant::now();
    let mut stream = connect_from(port, 0).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    if !answer.starts_with(b"HTTP/1.1 ") {
        bail!("GET {path} was not answered");
    }
    Ok((
        u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX),
        answer,
    ))
}
