use std::time::Duration;

use crate::helpers::{spawn_app, spawn_app_with, PATIENCE};

#[tokio::test]
async fn publish_reaches_every_subscriber_of_its_topic_and_no_other() {
    let app = spawn_app().await;
    let mut a1 = app.subscribe(&["a"], None).await;
    let mut a2 = app.subscribe(&["a"], None).await;
    let mut b = app.subscribe(&["b"], None).await;

    let id_a = app.publish("a", "for a").await;
    let id_b = app.publish("b", "for b").await;

    for sub in [&mut a1, &mut a2] {
        let event = sub.next().await;
        assert_eq!((event.id.as_str(), event.data.as_str()), (id_a.as_str(), "for a"));
    }
    let event = b.next().await;
    assert_eq!((event.id.as_str(), event.data.as_str()), (id_b.as_str(), "for b"));
    a1.assert_silent(Duration::from_millis(200)).await;
    b.assert_silent(Duration::from_millis(50)).await;
}

#[tokio::test]
async fn data_arrives_byte_exact() {
    let app = spawn_app().await;
    let mut sub = app.subscribe(&["t"], None).await;
    let cases = [
        "one line",
        "two\nlines",
        "\nleading and trailing empty lines\n\n",
        "",
        "\n",
        "ünïcödé ✓ 😀 — 日本語",
        "data: looks like a field\nid: 99-0\nevent: nope",
        ": looks like a comment",
        "  leading spaces kept",
    ];
    for data in cases {
        app.publish("t", data).await;
    }
    for data in cases {
        assert_eq!(sub.next().await.data, data);
    }
}

#[tokio::test]
async fn json_round_trips_and_event_type_is_set() {
    let app = spawn_app().await;
    let mut sub = app.subscribe(&["t"], None).await;
    let value = serde_json::json!({"title": "hi", "nested": {"list": [1, 2.5, null, "x\ny"]}, "emoji": "🎉"});
    let response = app
        .client
        .post(app.url("/topics/t?event=price-update"))
        .json(&value)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let answer: serde_json::Value = response.json().await.unwrap();
    assert_eq!(answer["topic"], "t");

    let event = sub.next().await;
    assert_eq!(event.event, "price-update");
    assert_eq!(event.id, answer["id"].as_str().unwrap());
    let parsed: serde_json::Value = serde_json::from_str(&event.data).unwrap();
    assert_eq!(parsed, value);
}

#[tokio::test]
async fn stream_headers_and_retry_are_sent_at_once() {
    let app = spawn_app_with(|s| s.sse.retry_ms = 1234).await;
    // The response head must arrive with no event published yet.
    let response = tokio::time::timeout(PATIENCE, app.client.get(app.url("/events?topic=t")).send())
        .await
        .expect("head arrives at once")
        .unwrap();
    let headers = response.headers();
    assert_eq!(headers["content-type"], "text/event-stream");
    assert_eq!(headers["cache-control"], "no-cache");
    assert_eq!(headers["x-accel-buffering"], "no");
    let mut body = response.bytes_stream();
    use futures_util::StreamExt;
    let first = tokio::time::timeout(PATIENCE, body.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"retry: 1234\n\n");
}

#[tokio::test]
async fn idle_streams_get_comment_heartbeats() {
    let app = spawn_app_with(|s| s.sse.heartbeat_secs = std::time::Duration::from_secs(1)).await;
    let response = app.client.get(app.url("/events?topic=t")).send().await.unwrap();
    let mut body = response.bytes_stream();
    use futures_util::StreamExt;
    let mut seen = Vec::new();
    while !seen.ends_with(b":\n\n") {
        let chunk = tokio::time::timeout(PATIENCE, body.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.extend_from_slice(&chunk);
    }
    assert!(seen.starts_with(b"retry: "));
}

#[tokio::test]
async fn a_client_that_goes_away_frees_what_it_held() {
    let app = spawn_app().await;
    let sub = app.subscribe(&["a", "b"], None).await;
    app.wait_metric("herald_connections", 1).await;
    app.wait_metric("herald_subscriptions", 2).await;
    drop(sub);
    app.wait_connections("a", 0).await;
    app.wait_metric("herald_subscriptions", 0).await;
    app.wait_metric("herald_topics", 0).await;
}

#[tokio::test]
async fn health_readiness_and_metrics() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.get_json("/readyz").await;
    assert_eq!(ready["engine"], "memory");
    let mut sub = app.subscribe(&["t"], None).await;
    app.publish("t", "x").await;
    sub.next().await;
    assert_eq!(app.metric("herald_published_total").await, 1);
    app.wait_metric("herald_delivered_total", 1).await;
    assert_eq!(app.metric("herald_ready").await, 1);
}

#[tokio::test]
async fn demo_page_is_served() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let page = response.text().await.unwrap();
    assert!(
        page.contains("new EventSource("),
        "the page subscribes with EventSource"
    );
}

/// `envelope=json`: one stream on several topics says which topic each event is from, live and in
/// replay, on both engines; the id and event type stay; other streams of the same topics are unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_says_which_topic_each_event_is_from_on_both_engines() {
    let redis = crate::redis_server::RedisServer::start();
    for app in [spawn_app().await, crate::helpers::spawn_redis_node(&redis).await] {
        let mut both = app.subscribe_query("topic=a&topic=b&envelope=json", None).await;
        let mut plain = app.subscribe(&["a"], None).await;
        let first = app
            .client
            .post(app.url("/topics/a?event=price"))
            .body("line 1\nline 2")
            .send()
            .await
            .expect("publish");
        let first: serde_json::Value = first.json().await.expect("json");
        let second = app.publish("b", "{\"x\":1}").await;

        let got = both.take(2).await;
        let id_of = |e: &eventsource_stream::Event, topic| crate::helpers::id_in(&e.id, &["a", "b"], topic);
        assert_eq!(id_of(&got[0], "a"), first["id"].as_str().expect("id"));
        assert_eq!(got[0].event, "price");
        let envelope: serde_json::Value = serde_json::from_str(&got[0].data).expect("JSON data");
        assert_eq!(
            envelope,
            serde_json::json!({"topic": "a", "id": first["id"], "data": "line 1\nline 2"})
        );
        assert_eq!(id_of(&got[1], "b"), second);
        assert_eq!(got[1].event, "message");
        let envelope: serde_json::Value = serde_json::from_str(&got[1].data).expect("JSON data");
        assert_eq!(
            envelope,
            serde_json::json!({"topic": "b", "id": second, "data": "{\"x\":1}"})
        );
        assert_eq!(
            plain.next().await.data,
            "line 1\nline 2",
            "other streams get the data as published"
        );

        // Replay is wrapped the same way.
        let mut resumed = app
            .subscribe_query("topic=a&topic=b&envelope=json", Some("0-0"))
            .await;
        let replayed = resumed.take(2).await;
        assert_eq!(
            replayed
                .iter()
                .zip(["a", "b"])
                .map(|(e, t)| (id_of(e, t), e.data.clone()))
                .collect::<Vec<_>>(),
            got.iter()
                .zip(["a", "b"])
                .map(|(e, t)| (id_of(e, t), e.data.clone()))
                .collect::<Vec<_>>()
        );
        let refused = app
            .client
            .get(app.url("/events?topic=a&envelope=xml"))
            .send()
            .await
            .expect("get");
        let problem = crate::helpers::assert_problem(refused, 400, "bad-request").await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or_default()
                .contains("envelope=json"),
            "{problem}"
        );
    }
}

/// `/status.json`: node, version, engine, connections, the busiest topics by subscribers, and counts.
#[tokio::test]
async fn the_status_json_shows_connections_busiest_topics_and_counts() {
    let app = spawn_app().await;
    let mut busy = Vec::new();
    for _ in 0..3 {
        busy.push(app.subscribe(&["busy"], None).await);
    }
    let _quiet = app.subscribe(&["quiet", "busy"], None).await;
    for i in 0..5 {
        app.publish("busy", &format!("m{i}")).await;
    }
    for sub in &mut busy {
        sub.take(5).await;
    }
    let status = app.get_json("/status.json").await;
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(status["engine"], "memory");
    assert_eq!(status["engine_ready"], true);
    assert!(
        status["node"].as_str().is_some_and(|n| n.contains('/')),
        "{status}"
    );
    assert_eq!(status["connections"], 4);
    assert_eq!(status["subscriptions"], 5);
    assert_eq!(
        status["busiest_topics"],
        serde_json::json!([{"topic": "busy", "subscribers": 4}, {"topic": "quiet", "subscribers": 1}])
    );
    assert_eq!(status["totals"]["published"], 5);
    assert_eq!(status["last_minute"]["published"], 5, "{status}");
    assert!(status["totals"]["delivered"].as_u64() >= Some(15), "{status}");
}

/// A client that closes (FIN) or resets (RST) its connection on an idle stream is freed without waiting
/// for the next write: the heartbeat here is 60 s, the test gives up after 10 s, and nothing is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_or_resets_an_idle_stream_is_freed_without_a_write() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app =
        crate::helpers::spawn_app_with(|s| s.sse.heartbeat_secs = std::time::Duration::from_secs(60)).await;
    for reset in [false, true] {
        let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
            .await
            .unwrap();
        socket
            .write_all(b"GET /events?topic=idle HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .unwrap();
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains("retry:") {
            let mut buf = [0u8; 1024];
            let n = socket.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream opened");
            seen.extend_from_slice(&buf[..n]);
        }
        assert_eq!(app.metric("herald_connections").await, 1);
        if reset {
            socket2::SockRef::from(&socket)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
        }
        let closed = std::time::Instant::now();
        drop(socket);
        while app.metric("herald_connections").await != 0 {
            assert!(
                closed.elapsed() < crate::helpers::PATIENCE,
                "the gone client was never freed"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(app.metric("herald_subscriptions").await, 0);
        println!(
            "freed {:?} after the client's {}",
            closed.elapsed(),
            if reset { "RST" } else { "FIN" }
        );
    }
}
