//! Every limit at its edge and every bad input: the status and the problem body a user sees.

use crate::helpers::{assert_problem, spawn_app, spawn_app_with};

#[tokio::test]
async fn body_size_limit_edge() {
    let app = spawn_app_with(|s| s.limits.max_body_bytes = 100).await;
    let ok = app.post("t", "text/plain", "x".repeat(100)).await;
    assert_eq!(ok.status(), 200);
    let body = assert_problem(
        app.post("t", "text/plain", "x".repeat(101)).await,
        413,
        "body-too-large",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("100 bytes"));
    // Without a Content-Length (chunked), the limit holds while reading.
    let stream = futures_util::stream::iter((0..11).map(|_| Ok::<_, std::io::Error>("0123456789")));
    let chunked = app
        .post("t", "text/plain", reqwest::Body::wrap_stream(stream))
        .await;
    assert_problem(chunked, 413, "body-too-large").await;
}

#[tokio::test]
async fn topic_name_rules() {
    let app = spawn_app_with(|s| s.limits.max_topic_len = 10).await;
    assert_eq!(app.post(&"t".repeat(10), "text/plain", "x").await.status(), 200);
    assert_problem(
        app.post(&"t".repeat(11), "text/plain", "x").await,
        400,
        "invalid-topic",
    )
    .await;
    // Bytes are counted, not characters: five `é` fit in 10 bytes, and one more byte does not.
    assert_eq!(
        app.post(&"%C3%A9".repeat(5), "text/plain", "x").await.status(),
        200
    );
    assert_problem(
        app.post(&format!("{}x", "%C3%A9".repeat(5)), "text/plain", "x")
            .await,
        400,
        "invalid-topic",
    )
    .await;
    for good in ["a%20b", "caf%C3%A9", "a%7Bb%7D", "a%2Fb%3Fc", "%25"] {
        assert_eq!(app.post(good, "text/plain", "x").await.status(), 200, "{good}");
    }
    for bad in ["a%0Ab", "a%00b", "a%09b", "a%7F", "a%C2%85b", "a%0Db"] {
        assert_problem(app.post(bad, "text/plain", "x").await, 400, "invalid-topic").await;
        let sub = app
            .client
            .get(app.url(&format!("/events?topic={bad}")))
            .send()
            .await
            .unwrap();
        assert_problem(sub, 400, "invalid-topic").await;
    }
}

#[tokio::test]
async fn topics_per_connection_edge() {
    let app = spawn_app_with(|s| s.limits.max_topics_per_connection = 3).await;
    let ok = app
        .client
        .get(app.url("/events?topic=a&topic=b&topic=c&topic=a"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200, "duplicates count once");
    drop(ok);
    let response = app
        .client
        .get(app.url("/events?topic=a&topic=b&topic=c&topic=d"))
        .send()
        .await
        .unwrap();
    let body = assert_problem(response, 400, "bad-request").await;
    assert!(body["detail"].as_str().unwrap().contains("at most 3 topics"));
    let none = app.client.get(app.url("/events")).send().await.unwrap();
    assert_problem(none, 400, "bad-request").await;
}

#[tokio::test]
async fn connections_per_node_edge() {
    let app = spawn_app_with(|s| s.limits.max_connections = 2).await;
    let first = app.subscribe(&["t"], None).await;
    let _second = app.subscribe(&["t"], None).await;
    let third = app.client.get(app.url("/events?topic=t")).send().await.unwrap();
    assert_eq!(third.headers()["retry-after"], "1");
    assert_problem(third, 503, "too-many-connections").await;
    assert_eq!(app.metric("herald_rejected_connections_total").await, 1);
    drop(first);
    app.wait_connections("t", 1).await;
    assert_eq!(
        app.client
            .get(app.url("/events?topic=t"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn non_utf8_body_is_refused() {
    let app = spawn_app().await;
    let body = assert_problem(
        app.post("t", "text/plain", vec![b'o', b'k', 0xff, 0xfe]).await,
        400,
        "body-not-utf8",
    )
    .await;
    assert!(body["detail"].as_str().unwrap().contains("byte 2"));
}

#[tokio::test]
async fn malformed_json_is_refused_only_under_a_json_content_type() {
    let app = spawn_app().await;
    assert_problem(
        app.post("t", "application/json", "{\"a\":").await,
        400,
        "body-not-json",
    )
    .await;
    assert_problem(
        app.post("t", "application/merge-patch+json; charset=utf-8", "nope")
            .await,
        400,
        "body-not-json",
    )
    .await;
    assert_eq!(app.post("t", "application/json", "{\"a\":1}").await.status(), 200);
    assert_eq!(app.post("t", "text/plain", "{\"a\":").await.status(), 200);
}

#[tokio::test]
async fn malformed_last_event_id_is_refused() {
    let app = spawn_app().await;
    for bad in ["abc", "12", "1-2-3", "-1-0", "99999999999999999999999-0"] {
        let by_header = app
            .client
            .get(app.url("/events?topic=t"))
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_problem(by_header, 400, "invalid-last-event-id").await;
        let by_query = app
            .client
            .get(app.url(&format!("/events?topic=t&lastEventId={bad}")))
            .send()
            .await
            .unwrap();
        assert_problem(by_query, 400, "invalid-last-event-id").await;
    }
    // An empty header means "no id", as a browser that never saw one would send.
    let empty = app
        .client
        .get(app.url("/events?topic=t"))
        .header("Last-Event-ID", "")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.status(), 200);
}

#[tokio::test]
async fn event_names_cannot_inject_fields() {
    let app = spawn_app().await;
    for bad in ["a%0Aid%3A%201", "a%0Db", "a%00b", "herald.gap", ""] {
        let response = app
            .client
            .post(app.url(&format!("/topics/t?event={bad}")))
            .body("x")
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, "invalid-event-name").await;
    }
}

#[tokio::test]
async fn history_paging_parameters_are_checked() {
    let app = spawn_app_with(|s| s.history.page_size = 50).await;
    for query in ["limit=0", "limit=51", "limit=-1", "limit=x", "after=nope"] {
        let response = app
            .client
            .get(app.url(&format!("/topics/t/history?{query}")))
            .send()
            .await
            .unwrap();
        assert_problem(response, 400, "bad-request").await;
    }
    let ok = app
        .client
        .get(app.url("/topics/t/history?limit=50"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_problems() {
    let app = spawn_app().await;
    assert_problem(
        app.client.get(app.url("/nope")).send().await.unwrap(),
        404,
        "not-found",
    )
    .await;
    let wrong_method = app.client.delete(app.url("/topics/t")).send().await.unwrap();
    assert_problem(wrong_method, 405, "method-not-allowed").await;
}

#[tokio::test]
async fn cors_allows_configured_origins_only() {
    let app = spawn_app_with(|s| s.cors.allowed_origins = vec!["http://allowed.test:3000".into()]).await;
    let allowed = app
        .client
        .post(app.url("/topics/t"))
        .header("Origin", "http://allowed.test:3000")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://allowed.test:3000"
    );
    // A listed origin may send its cookies, and reads what Mercure clients resume and discover with.
    assert_eq!(allowed.headers()["access-control-allow-credentials"], "true");
    assert_eq!(
        allowed.headers()["access-control-expose-headers"],
        "Last-Event-ID, Mercure-Last-Event-ID, Link"
    );
    // So does a Mercure stream, on both stream paths (the lean one and actix's).
    for path in ["/events?topic=t", "/.well-known/mercure?topic=t"] {
        let stream = app
            .client
            .get(app.url(path))
            .header("Origin", "http://allowed.test:3000")
            .send()
            .await
            .unwrap();
        assert_eq!(
            stream.headers()["access-control-allow-credentials"],
            "true",
            "{path}"
        );
        assert!(stream.headers()["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("Mercure-Last-Event-ID"));
    }
    // Any origin allowed by `*` is answered `*`, never its own name: no credentialed read.
    let any = spawn_app_with(|s| s.cors.allowed_origins = vec!["*".into()]).await;
    let wild = any
        .client
        .get(any.url("/.well-known/mercure?topic=t"))
        .header("Origin", "http://anyone.test")
        .send()
        .await
        .unwrap();
    assert_eq!(wild.headers()["access-control-allow-origin"], "*");
    assert!(wild.headers().get("access-control-allow-credentials").is_none());
    let other = app
        .client
        .get(app.url("/healthz"))
        .header("Origin", "http://evil.test")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/topics/t"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type")
            .send()
    };
    let ok = preflight("http://allowed.test:3000").await.unwrap();
    assert_eq!(ok.status(), 204);
    assert!(ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("POST"));
    assert_problem(
        preflight("http://evil.test").await.unwrap(),
        403,
        "origin-not-allowed",
    )
    .await;

    // The default allows no other origin, while same-origin pages (which also send Origin) still work.
    let default = spawn_app().await;
    let same_origin = default
        .client
        .post(default.url("/topics/t"))
        .header("Origin", default.address.clone())
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(same_origin.status(), 200);
    assert!(same_origin.headers().get("access-control-allow-origin").is_none());
}

/// The memory engine once kept expired events (and empty topics) until their topic was touched again:
/// 30k topics stayed at 48 MB for ever. A sweeper frees them, and a reader resuming from before them
/// still gets the gap notice.
#[tokio::test]
async fn expired_history_is_swept_from_memory_and_still_announced() {
    let app =
        crate::helpers::spawn_app_with(|s| s.history.max_age_secs = std::time::Duration::from_secs(4)).await;
    let mut first = None;
    for i in 0..1000 {
        let id = app.publish(&format!("t{i}"), &"x".repeat(1000)).await;
        first.get_or_insert(id);
    }
    assert_eq!(app.metric("herald_history_topics").await, 1000);
    assert!(app.metric("herald_history_bytes").await >= 1000 * 1000);
    app.wait_metric("herald_history_topics", 0).await;
    app.wait_metric("herald_history_bytes", 0).await;
    let mut sub = app.subscribe(&["t7"], first.as_deref()).await;
    assert_eq!(sub.next().await.event, "herald.gap");
}

/// All topics' history together stays within `history.max_total_bytes`: the node's oldest events go
/// first, and their readers are told.
#[tokio::test]
async fn memory_history_has_a_global_byte_bound() {
    let app = crate::helpers::spawn_app_with(|s| s.history.max_total_bytes = 1024 * 1024).await;
    let mut ids = Vec::new();
    for i in 0..400 {
        ids.push(app.publish(&format!("t{}", i % 5), &"y".repeat(10_000)).await);
    }
    let bytes = app.metric("herald_history_bytes").await;
    assert!(bytes <= 1024 * 1024, "{bytes} bytes retained");
    assert!(
        bytes >= 512 * 1024,
        "{bytes} bytes retained: evicted far below the bound"
    );
    // The newest survive, the oldest are gone and announced.
    let newest = app.get_json("/topics/t4/history").await;
    assert_eq!(
        newest["events"].as_array().unwrap().last().unwrap()["id"],
        ids[399].as_str()
    );
    let mut sub = app.subscribe(&["t0"], Some(&ids[0])).await;
    assert_eq!(sub.next().await.event, "herald.gap");
}

/// On Redis, a topic's keys expire `max_age` after its last publish, and a reader resuming from before
/// that gets the gap notice rather than silence.
#[tokio::test]
async fn redis_keys_of_idle_topics_expire_and_the_loss_is_announced() {
    let redis = crate::redis_server::RedisServer::start();
    let url = redis.url();
    let app = crate::helpers::spawn_app_with(move |s| {
        s.redis.url = url;
        s.history.max_age_secs = std::time::Duration::from_secs(1);
    })
    .await;
    let id = app.publish("idle", "soon gone").await;
    app.publish("idle", "gone too").await;
    let ttl: i64 = redis.cli(&["PTTL", "herald:{idle}"]).unwrap().parse().unwrap();
    assert!((1..=61_000).contains(&ttl), "the log's TTL is {ttl} ms");
    // As if the TTL had run out.
    redis.cli(&["DEL", "herald:{idle}"]).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let mut sub = app.subscribe(&["idle"], Some(&id)).await;
    assert_eq!(sub.next().await.event, "herald.gap");
}

/// HEAD is answered like GET without a body (it was 405), and an HTTP/1.0 client gets its stream without
/// chunked encoding, which HTTP/1.0 does not have (the stream ends when the connection does).
#[tokio::test]
async fn head_requests_and_http_1_0_streams_are_answered_properly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz", "/events?topic=t", "/topics/t/history"] {
        let response = app.client.head(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "HEAD {path}");
        assert_eq!(
            response.bytes().await.unwrap().len(),
            0,
            "HEAD {path} has no body"
        );
    }
    let head = app.client.head(app.url("/events?topic=t")).send().await.unwrap();
    assert_eq!(head.headers()["content-type"], "text/event-stream");
    assert_eq!(
        app.metric("herald_connections").await,
        0,
        "a HEAD opens no stream"
    );
    let bad = app.client.head(app.url("/events")).send().await.unwrap();
    assert_eq!(bad.status(), 400, "HEAD answers the status GET would");
    let not_allowed = app.client.put(app.url("/healthz")).send().await.unwrap();
    assert_eq!(not_allowed.headers()["allow"], "GET, HEAD");
    assert_problem(not_allowed, 405, "method-not-allowed").await;

    let mut old = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    old.write_all(b"GET /events?topic=t HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    app.wait_metric("herald_connections", 1).await;
    let id = app.publish("t", "for an old client").await;
    app.shutdown.run().await;
    let mut raw = Vec::new();
    tokio::time::timeout(crate::helpers::PATIENCE, old.read_to_end(&mut raw))
        .await
        .expect("the stream ends when the node stops")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_lowercase();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("http/1.") && head.contains(" 200 "), "{head}");
    assert!(!head.contains("chunked"), "{head}");
    assert!(
        body.starts_with(&format!("retry: 2000\n\nid: {id}\ndata: for an old client\n\n")),
        "{body:?}"
    );
}
