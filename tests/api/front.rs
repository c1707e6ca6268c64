//! The front door of plain-HTTP listeners (`http::front`): heads refused before any route are answered
//! with problem+json, odd but valid stream heads are served, the lean stream path and actix-web's answer
//! byte for byte alike, and random heads never hang or crash the SSE path.

use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{read_until, spawn_app_with, TestApp, PATIENCE};
use crate::redis_server::RedisServer;

/// Sends `request` on a new connection and reads until the node closes it, or until `quiet` passes
/// without a byte (a stream that stays open).
async fn exchange(port: u16, request: &[u8], quiet: Duration) -> Vec<u8> {
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connects");
    let _ = socket.write_all(request).await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(quiet, socket.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => answer.extend_from_slice(&buf[..n]),
            _ => return answer,
        }
    }
}

/// An answer with its `date` header lines taken out (they differ by the second).
fn without_dates(answer: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(answer);
    text.split_inclusive("\r\n")
        .filter(|line| !line.to_ascii_lowercase().starts_with("date: "))
        .collect::<String>()
        .into_bytes()
}

/// Status, headers (lower-cased names, sorted, without `date`) and body of one HTTP/1.x answer.
fn split(answer: &[u8]) -> (String, Vec<String>, Vec<u8>) {
    let at = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("a whole head in {:?}", String::from_utf8_lossy(answer)));
    let head = String::from_utf8_lossy(&answer[..at]).to_string();
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("").to_string();
    let mut headers: Vec<String> = lines
        .map(|l| {
            let (name, value) = l.split_once(':').unwrap_or((l, ""));
            format!("{}: {}", name.to_ascii_lowercase(), value.trim())
        })
        .filter(|h| !h.starts_with("date: "))
        .collect();
    headers.sort();
    (status, headers, answer[at + 4..].to_vec())
}

/// Checks that `answer` is a problem+json answer with this status and code, and returns its detail.
fn assert_problem_answer(answer: &[u8], status: u16, code: &str, what: &str) -> String {
    let (status_line, headers, body) = split(answer);
    assert!(
        status_line.starts_with(&format!("HTTP/1.1 {status} ")),
        "{what}: {status_line}"
    );
    assert!(
        headers.contains(&"content-type: application/problem+json".to_string()),
        "{what}: {headers:?}"
    );
    let problem: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{what}: a JSON body ({e}): {:?}", String::from_utf8_lossy(&body)));
    assert_eq!(problem["status"], status, "{what}");
    assert_eq!(problem["code"], code, "{what}");
    let detail = problem["detail"].as_str().unwrap_or("").to_string();
    assert!(detail.len() > 20, "{what}: a sentence, not {detail:?}");
    detail
}

#[tokio::test]
async fn every_head_refused_before_routing_gets_a_problem_json() {
    let app = spawn_app_with(|s| s.server.request_head_timeout_ms = Duration::from_millis(300)).await;
    let long = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(40 * 1024)
    );
    let many: String = (0..100).map(|n| format!("X-{n}: y\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("a header line without a colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n".to_vec(), 400, "malformed-request"),
        ("a method with a bad byte", b"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "malformed-request"),
        ("a space inside the target", b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "malformed-request"),
        ("a target that is no URI", b"GET http://[::1/events HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "bad-target"),
        ("an asterisk target", b"GET * HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "bad-target"),
        ("an authority target", b"CONNECT example.com:443 HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), 400, "bad-target"),
        ("HTTP/2.0 in the request line", b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n".to_vec(), 505, "http-version-not-supported"),
        ("the HTTP/2 preface on a plain listener", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), 505, "http-version-not-supported"),
        ("a head over 32 KiB", long.into_bytes(), 431, "headers-too-large"),
        ("100 header fields", many.into_bytes(), 431, "headers-too-large"),
        ("HTTP/1.1 without Host", b"GET /events?topic=t HTTP/1.1\r\n\r\n".to_vec(), 400, "missing-host"),
        ("two Host headers", b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_vec(), 400, "bad-host"),
        ("a signed Content-Length", b"POST /topics/t HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx".to_vec(), 400, "bad-content-length"),
        ("two Content-Lengths", b"POST /topics/t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx".to_vec(), 400, "bad-content-length"),
        ("Content-Length and chunked", b"POST /topics/t HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n".to_vec(), 400, "bad-transfer-encoding"),
        ("an unknown transfer coding", b"POST /topics/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 400, "bad-transfer-encoding"),
        ("an HTTP/1.0 POST without length", b"POST /topics/t HTTP/1.0\r\n\r\nx".to_vec(), 411, "length-required"),
        ("Transfer-Encoding: identity", b"POST /topics/t HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n".to_vec(), 400, "bad-transfer-encoding"),
        ("a TLS handshake", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), 400, "plain-http-port"),
        ("a head that stops half-way", b"GET /events?topic=t HTTP/1.1\r\nHost: x\r\n".to_vec(), 408, "request-timeout"),
    ];
    for (what, request, status, code) in cases {
        let answer = exchange(app.port, &request, PATIENCE).await;
        let detail = assert_problem_answer(&answer, status, code, what);
        println!("{what}: {status} {detail}");
    }
    // A connection that sends nothing at all is closed without an answer at the head timeout.
    let started = std::time::Instant::now();
    assert!(exchange(app.port, b"", PATIENCE).await.is_empty());
    assert!(started.elapsed() < PATIENCE);
    // Nothing was published or opened, and the node still serves.
    assert_eq!(app.metric("herald_published_total").await, 0);
    assert_eq!(app.metric("herald_connections").await, 0);
}

/// Stream requests in odd but valid forms, answered alike by the lean path and by actix-web: two nodes
/// on one Redis (so the same events have the same ids), one of each; every answer compared whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_but_valid_stream_heads_are_served_alike_by_both_paths() {
    let redis = RedisServer::start();
    let node = |lean: bool| {
        let url = redis.url();
        spawn_app_with(move |s| {
            s.redis.url = url;
            s.redis.startup_wait_secs = Duration::from_secs(5);
            s.server.lean_streams = lean;
            s.cors.allowed_origins = vec!["https://app.example".into()];
        })
    };
    let lean = node(true).await;
    let actix = node(false).await;
    let first = lean.publish("odd", "one").await;
    lean.publish("odd", "two\nlines").await;
    lean.post("odd?event=named", "text/plain", "three").await;
    actix.publish("other", "four").await;
    let cases: Vec<(&str, String)> = vec![
        ("plain", "GET /events?topic=odd&lastEventId=0-0&poll=1 HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("header case and spaces", format!("GET /events?topic=odd&poll=1 HTTP/1.1\r\nhOsT:x\r\nLAST-event-ID:   {first}  \r\n\r\n")),
        ("keep-alive asked", "GET /events?topic=odd&since=all&poll=1 HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n".into()),
        ("absolute form", "GET http://x/events?topic=odd&topic=other&lastEventId=0-0&poll=1 HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("HTTP/1.0", "GET /events?topic=odd&lastEventId=0-0&poll=1 HTTP/1.0\r\n\r\n".into()),
        ("an allowed origin", "GET /events?topic=odd&lastEventId=0-0&poll=1&envelope=json HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\n\r\n".into()),
        ("another origin", "GET /events?topic=odd&lastEventId=0-0&poll=1 HTTP/1.1\r\nHost: x\r\nOrigin: https://evil.example\r\n\r\n".into()),
        ("an id older than history", "GET /events?topic=odd&lastEventId=1-0&poll=1 HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        // One parser of the target for both paths: a fragment is not part of the query, and a path that
        // merely ends in `/events` is not the stream route.
        ("a fragment", "GET /events?topic=odd&lastEventId=0-0&poll=1#frag&topic=other HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("unrouted: a scheme-like path", "GET /x://y/events?topic=odd&poll=1 HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("unrouted: a longer path", "GET /v1/events?topic=odd&poll=1 HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("refused: no topic", "GET /events HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("refused: bad id", "GET /events?topic=odd HTTP/1.1\r\nHost: x\r\nLast-Event-ID: nope\r\n\r\n".into()),
        ("refused: bad topic", "GET /events?topic=a%01b HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("refused: close asked", "GET /events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()),
        ("refused: HTTP/1.0", "GET /events HTTP/1.0\r\n\r\n".into()),
        ("refused: from an allowed origin", "GET /events?topic=odd HTTP/1.1\r\nHost: x\r\nOrigin: https://app.example\r\nLast-Event-ID: nope\r\n\r\n".into()),
        ("refused: then another request", "GET /events HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into()),
        ("refused: HTTP/1.0 keep-alive, then another", "GET /events HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /healthz HTTP/1.0\r\n\r\n".into()),
    ];
    for (what, request) in &cases {
        // Streams here end (poll=1) and refusals keep the connection alive: a quiet second ends the read.
        let quiet = Duration::from_millis(1500);
        let from_lean = without_dates(&exchange(lean.port, request.as_bytes(), quiet).await);
        let from_actix = without_dates(&exchange(actix.port, request.as_bytes(), quiet).await);
        let (lean_status, lean_headers, lean_body) = split(&from_lean);
        let (actix_status, actix_headers, actix_body) = split(&from_actix);
        assert_eq!(lean_status, actix_status, "{what}");
        assert_eq!(
            lean_headers,
            actix_headers,
            "{what}: lean {:?} actix {:?}",
            String::from_utf8_lossy(&from_lean),
            String::from_utf8_lossy(&from_actix)
        );
        assert_eq!(
            String::from_utf8_lossy(&lean_body),
            String::from_utf8_lossy(&actix_body),
            "{what}"
        );
        println!("{what}: {lean_status}, {} body bytes", lean_body.len());
        if what.starts_with("unrouted") {
            assert!(lean_status.contains(" 404 "), "{what}: {lean_status}");
        } else if what.starts_with("refused") {
            assert!(lean_status.contains(" 400 "), "{what}: {lean_status}");
            if what.contains("another") {
                let rest = String::from_utf8_lossy(&lean_body).to_string();
                assert!(
                    rest.contains(" 200 OK\r\n") && rest.ends_with("{\"status\":\"ok\"}"),
                    "{what}: {rest}"
                );
            }
        } else {
            assert!(lean_status.ends_with(" 200 OK"), "{what}: {lean_status}");
            assert!(!lean_headers.iter().any(|h| h.contains("chunked")), "{what}");
        }
    }
    // A request pipelined behind a stream is not answered: the stream's answer said `close`. (actix-web
    // answers it after the stream, inside what the client reads as the stream's body; harmless to an
    // SSE parser, which ignores lines it does not know.)
    let pipelined = exchange(
        lean.port,
        b"GET /events?topic=odd&lastEventId=0-0&poll=1 HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        PATIENCE,
    )
    .await;
    let (status, _, body) = split(&pipelined);
    assert!(status.ends_with("200 OK"));
    let body = String::from_utf8_lossy(&body);
    assert!(body.ends_with("data: three\n\n"), "{body}");

    // A live stream on each: the same frames, heartbeats and closing comment.
    let mut sockets = Vec::new();
    for node in [&lean, &actix] {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", node.port))
            .await
            .unwrap();
        socket
            .write_all(b"GET /events?topic=live&topic=odd HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // The stream has joined (and read each topic's position) once its first bytes arrive: only then
        // may the events be published, or one node would start after them.
        let mut answer = Vec::new();
        read_until(&mut socket, &mut answer, "retry: ").await;
        sockets.push((socket, answer));
    }
    lean.publish("live", "five").await;
    actix.publish("odd", "six").await;
    lean.shutdown.run().await;
    actix.shutdown.run().await;
    let mut answers = Vec::new();
    for (mut socket, mut answer) in sockets {
        tokio::time::timeout(PATIENCE, socket.read_to_end(&mut answer))
            .await
            .expect("the stream ends at shutdown")
            .unwrap();
        answers.push(split(&answer));
    }
    assert_eq!(answers[0], answers[1]);
    let body = String::from_utf8_lossy(&answers[0].2).to_string();
    assert!(
        body.contains("data: five\n") && body.contains("data: six\n"),
        "{body}"
    );
    assert!(body.ends_with("shutting down; reconnect to resume\n\n"), "{body}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    /// Random request heads aimed at the stream path: each is answered (a stream, or an error as
    /// problem+json) or closed within the head timeout; nothing hangs, and the node keeps serving.
    #[test]
    fn random_heads_on_the_stream_path_are_answered_or_closed(
        method in prop_oneof![Just("GET".to_string()), Just("HEAD".to_string()), Just("POST".to_string()), Just("get".to_string()), "[A-Z]{1,8}"],
        target in prop_oneof![
            Just("/events?topic=f&poll=1&since=all".to_string()),
            "/events\\?[ -~]{0,40}",
            "/[ -~]{0,20}",
            "\\PC{0,30}",
        ],
        version in prop_oneof![Just("HTTP/1.1".to_string()), Just("HTTP/1.0".to_string()), "HTTP/[0-9]\\.[0-9]", "[ -~]{0,10}"],
        headers in proptest::collection::vec(("[!-9;-~]{0,12}", "(?s).{0,40}"), 0..6),
        eol in prop_oneof![Just("\r\n"), Just("\n"), Just("\r")],
        cut in proptest::option::of(0usize..200),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let app: TestApp = spawn_app_with(|s| s.server.request_head_timeout_ms = Duration::from_millis(200)).await;
            let mut head = format!("{method} {target} {version}{eol}Host: x{eol}");
            for (name, value) in &headers {
                head.push_str(&format!("{name}: {value}{eol}"));
            }
            head.push_str(eol);
            let mut bytes = head.into_bytes();
            if let Some(cut) = cut {
                bytes.truncate(cut.min(bytes.len()));
            }
            let answer = exchange(app.port, &bytes, Duration::from_secs(3)).await;
            if !answer.is_empty() {
                let text = String::from_utf8_lossy(&answer);
                assert!(text.starts_with("HTTP/1."), "{text:?} for {bytes:?}");
                let (status, headers, _) = split(&answer);
                let code: u16 = status.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
                assert!((200..600).contains(&code), "{status}");
                if code >= 400 {
                    assert!(headers.iter().any(|h| h == "content-type: application/problem+json"), "{status} {headers:?} for {bytes:?}");
                }
                assert!(code < 500 || code == 505, "{status} for {bytes:?}");
            }
            // The node still streams.
            let normal = exchange(app.port, b"GET /events?topic=f&poll=1&since=all HTTP/1.1\r\nHost: x\r\n\r\n", PATIENCE).await;
            assert!(String::from_utf8_lossy(&normal).starts_with("HTTP/1.1 200 OK"));
            app.shutdown.run().await;
        });
    }
}

/// The first head's limit is exact, on both paths: 32,768 bytes up to and including the blank line
/// are read, 32,769 are answered 431.
#[tokio::test]
async fn the_head_limit_is_exact_on_both_paths() {
    let app = spawn_app_with(|_| {}).await;
    for target in ["/healthz", "/events?topic=limit&poll=1&since=all"] {
        let head = |len: usize| {
            let start = format!("GET {target} HTTP/1.1\r\nHost: x\r\nX-Pad: ");
            let pad = len - start.len() - "\r\n\r\n".len();
            format!("{start}{}\r\n\r\n", "a".repeat(pad)).into_bytes()
        };
        let at_limit = head(32 * 1024);
        assert_eq!(at_limit.len(), 32_768);
        let answer = exchange(app.port, &at_limit, Duration::from_millis(1500)).await;
        let (status, _, _) = split(&answer);
        assert!(status.ends_with(" 200 OK"), "{target}, 32,768 bytes: {status}");
        let over = head(32 * 1024 + 1);
        let answer = exchange(app.port, &over, PATIENCE).await;
        assert_problem_answer(
            &answer,
            431,
            "headers-too-large",
            &format!("{target}, 32,769 bytes"),
        );
    }
}

/// Connections of one address that have not finished their head are capped
/// (`server.max_pending_heads_per_ip`): one more is answered 429 at once, and a slot frees as soon as a
/// head is complete.
#[tokio::test]
async fn unfinished_heads_are_capped_per_address() {
    let app = spawn_app_with(|s| {
        s.server.max_pending_heads_per_ip = 3;
        s.server.request_head_timeout_ms = Duration::from_secs(20);
    })
    .await;
    let pooled = reqwest::Client::new();
    let metrics = || async {
        let answer = pooled.get(app.url("/metrics")).send().await.unwrap();
        answer.text().await.unwrap()
    };
    let before = metrics().await;
    assert!(
        before.lines().any(|l| l == "herald_unfinished_heads 0"),
        "{before}"
    );
    let mut waiting = Vec::new();
    for _ in 0..3 {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
            .await
            .unwrap();
        socket
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        waiting.push(socket);
    }
    // Accepted asynchronously: the node counts them once it waits for their heads. Asked on a connection
    // made before them (a new one would be refused: its head would be the fourth).
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = metrics().await;
        if text.lines().any(|l| l == "herald_unfinished_heads 3") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the node never counted 3 unfinished heads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let refused = loop {
        let answer = exchange(
            app.port,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            PATIENCE,
        )
        .await;
        if !String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200") {
            break answer;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a fourth unfinished head was never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let detail = assert_problem_answer(&refused, 429, "too-many-pending-heads", "a fourth head");
    assert!(detail.contains('3'), "{detail}");
    // One head finished: it is answered, and its slot is free for a new connection.
    let mut first = waiting.remove(0);
    first.write_all(b"Connection: close\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, first.read_to_end(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"));
    let answer = exchange(
        app.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        PATIENCE,
    )
    .await;
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200 OK"),
        "{answer:?}"
    );
    drop(waiting);
}

/// A client that keeps writing into its open stream is closed once it has sent 64 KiB; a few stray
/// bytes (a pipelined request) are dropped and the stream goes on.
#[tokio::test]
async fn a_stream_that_is_sent_too_much_is_closed() {
    let app = spawn_app_with(|_| {}).await;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    socket
        .write_all(
            b"GET /events?topic=chatty HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        )
        .await
        .unwrap();
    app.wait_metric("herald_connections", 1).await;
    app.publish("chatty", "still here").await;
    // A small pipelined request is dropped, and the stream goes on.
    let mut seen = Vec::new();
    read_until(&mut socket, &mut seen, "data: still here").await;
    let mut buf = [0u8; 4096];
    // 80 KiB more: the node closes the stream (a write may then fail on the reset; either way it ends).
    let _ = socket.write_all(&vec![b'x'; 80 * 1024]).await;
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the stream stayed open after 80 KiB of input");
    app.wait_metric("herald_connections", 0).await;
}

/// An HTTP/1.1 keep-alive answer says how long the connection may idle (`server.keep_alive_secs`), and
/// the connection outlives actix-web's 5 s default: a request sent 6 s after the first is answered on it.
#[tokio::test]
async fn keep_alive_answers_say_their_timeout_and_the_connection_outlives_five_seconds() {
    let app = spawn_app_with(|_| {}).await;
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    socket.write_all(request).await.unwrap();
    let mut first = Vec::new();
    read_until(&mut socket, &mut first, "\r\n\r\n").await;
    let head = String::from_utf8_lossy(&first).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("\r\nkeep-alive: timeout=120\r\n"), "{head}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    socket.write_all(request).await.unwrap();
    let mut second = Vec::new();
    read_until(&mut socket, &mut second, "\r\n\r\n").await;
    let second = String::from_utf8_lossy(&second).to_ascii_lowercase();
    assert!(second.contains("http/1.1 200"), "{second}");
    // HTTP/1.0 without keep-alive closes, and is not told a timeout.
    let old = exchange(app.port, b"GET /healthz HTTP/1.0\r\n\r\n", Duration::from_secs(2)).await;
    let old = String::from_utf8_lossy(&old).to_ascii_lowercase();
    assert!(
        old.starts_with("http/1.0 200") && !old.contains("keep-alive: timeout"),
        "{old}"
    );
}
