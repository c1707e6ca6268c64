use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, PATIENCE};

const CAPACITY: usize = 8;
const MESSAGE: usize = 64 * 1024;
/// Enough 64 KiB messages to fill any loopback socket buffers several times over.
const MAX_PUBLISHES: usize = 2000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_and_others_are_unaffected() {
    let app = spawn_app_with(|s| {
        s.sse.queue_capacity = CAPACITY;
        s.limits.max_body_bytes = 2 * MESSAGE;
        s.history.max_len = 10;
    })
    .await;

    // The stalled client: sends its request, reads the response head, then stops reading.
    let mut stalled = TcpStream::connect(("127.0.0.1", app.port)).await.unwrap();
    stalled
        .write_all(b"GET /events?topic=t HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut byte = [0u8; 256];
        let n = tokio::time::timeout(PATIENCE, stalled.read(&mut byte))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "connection closed before the head");
        head.extend_from_slice(&byte[..n]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));

    // The healthy client reads everything as it comes.
    let mut healthy = app.subscribe(&["t"], None).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let event = healthy.next().await;
            if tx.send(event).is_err() {
                break;
            }
        }
    });

    let payload = "x".repeat(MESSAGE - 10);
    let mut published = Vec::new();
    while app.metric("herald_closed_for_lag_total").await == 0 {
        assert!(
            published.len() < MAX_PUBLISHES,
            "the stalled client was never closed"
        );
        let n = published.len();
        published.push(app.publish("t", &format!("{n:09}{payload}")).await);
        // The hub holds at most CAPACITY events for the stalled client, plus what the healthy one has not read.
        assert!(app.metric("herald_queued_events").await <= 2 * CAPACITY as u64);
    }
    // The stalled connection holds nothing more in the hub.
    app.wait_metric("herald_subscriptions", 1).await;
    app.wait_metric("herald_queued_events", 0).await;

    // Publishing goes on, and the healthy client gets every event in order.
    for _ in 0..20 {
        let n = published.len();
        published.push(app.publish("t", &format!("{n:09}{payload}")).await);
    }
    for (n, id) in published.iter().enumerate() {
        let event = tokio::time::timeout(PATIENCE, rx.recv()).await.unwrap().unwrap();
        assert_eq!(&event.id, id);
        assert_eq!(event.data[..9].parse::<usize>().unwrap(), n);
    }

    // When the stalled client reads again it finds the closing notice and the end of the stream.
    let mut rest = Vec::new();
    tokio::time::timeout(PATIENCE, stalled.read_to_end(&mut rest))
        .await
        .expect("the node closes the stalled connection")
        .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.contains(": herald: closed because this connection fell behind"),
        "no closing notice"
    );
    // Only the healthy client is left (it is still reading: the node frees a client that leaves).
    app.wait_metric("herald_connections", 1).await;
    reader.abort();
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// A client that stops reading for good: once its socket buffers are full, nothing more it was sent is
/// taken, and the node's writes to it stop at their deadline (`server.write_timeout_secs`). Its stream
/// is dropped, its connection slot and descriptor freed, instead of held for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_again_is_dropped_at_the_write_deadline() {
    let app = spawn_app_with(|s| {
        s.sse.queue_capacity = CAPACITY;
        s.limits.max_body_bytes = 2 * MESSAGE;
        s.history.max_len = 10;
        s.server.write_timeout_secs = Duration::from_secs(2);
    })
    .await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stalled = socket
        .connect(format!("127.0.0.1:{}", app.port).parse().unwrap())
        .await
        .unwrap();
    stalled
        .write_all(b"GET /events?topic=t HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = tokio::time::timeout(PATIENCE, stalled.read(&mut head))
        .await
        .unwrap()
        .unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));
    app.wait_metric("herald_connections", 1).await;

    let payload = "x".repeat(MESSAGE - 10);
    let mut published = 0;
    while app.metric("herald_closed_for_lag_total").await == 0 {
        assert!(published < MAX_PUBLISHES, "the stalled client was never closed");
        app.publish("t", &payload).await;
        published += 1;
    }
    // Closed for lag, but its closing write cannot finish: the deadline ends it.
    let deadline = std::time::Instant::now() + PATIENCE;
    while app.metric("herald_connections").await != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "a client that never reads held its connection past the write deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node reset the connection: what the client reads now ends in an error or EOF, never a hang.
    let mut sink = vec![0u8; 1 << 20];
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stalled connection was left open");
}
