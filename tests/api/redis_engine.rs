//! Several real nodes on one real `redis-server` each test: fan-out, node loss, Redis restart, pub/sub
//! kill, redis-cli publishing, interest tracking, start-up errors.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{
    assert_exact, fan_out_is_exact, id_key, spawn_redis_node, Outcome, Subscriber, TestApp, PATIENCE,
};
use crate::redis_server::RedisServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_deliver_every_message_to_every_subscriber_once_in_order() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        spawn_redis_node(&redis).await,
        spawn_redis_node(&redis).await,
        spawn_redis_node(&redis).await,
    );
    // 3 topics, 4 publishers spread over the nodes, 15 subscribers spread over the nodes.
    fan_out_is_exact(&[&a, &b, &c], 15, 300, 4).await;
}

/// Publishes `data` with a short timeout; never panics on an error status (the tests judge those).
async fn try_publish(node: &TestApp, topic: &str, data: String) -> Outcome {
    let response = node
        .client
        .post(node.url(&format!("/topics/{topic}")))
        .timeout(Duration::from_secs(5))
        .body(data.clone())
        .send()
        .await;
    let outcome = Outcome::from_response(data, response).await;
    assert_ne!(outcome.status, 0, "publish request failed outright");
    outcome
}

/// Reads from every subscriber until each has every acknowledged message (plus any unknown-outcome ones
/// that arrive), then a quiet spell to catch duplicates.
async fn collect(subs: &mut [Subscriber], outcomes: &[Outcome]) -> Vec<Vec<eventsource_stream::Event>> {
    let acked = outcomes.iter().filter(|o| o.status == 200).count();
    let mut all = Vec::new();
    for sub in subs.iter_mut() {
        let mut got = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        while got
            .iter()
            .filter(|e: &&eventsource_stream::Event| {
                outcomes.iter().any(|o| o.status == 200 && o.data == e.data)
            })
            .count()
            < acked
        {
            assert!(
                Instant::now() < deadline,
                "acknowledged messages did not all arrive"
            );
            got.push(sub.next().await);
        }
        sub.assert_silent(Duration::from_millis(300)).await;
        all.push(got);
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_node_shuts_down_resumes_on_another_node_without_loss_or_duplicate() {
    let redis = RedisServer::start();
    let (a, b, c) = (
        spawn_redis_node(&redis).await,
        spawn_redis_node(&redis).await,
        spawn_redis_node(&redis).await,
    );
    let mut sub = a.subscribe(&["t"], None).await;
    let publishing = async {
        let mut outcomes = Vec::new();
        for n in 0..150 {
            outcomes.push(try_publish(&b, "t", format!("m{n}")).await);
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        outcomes
    };
    let subscribing = async {
        let mut received = sub.take(30).await;
        a.shutdown.run().await;
        received.extend(sub.until_end().await);
        let last = received.last().expect("received some").id.clone();
        (received, c.subscribe(&["t"], Some(&last)).await)
    };
    let (outcomes, (mut received, mut resumed)) = tokio::join!(publishing, subscribing);
    assert!(outcomes.iter().all(|o| o.status == 200), "node B kept publishing");
    let rest = outcomes.len() - received.len();
    received.extend(resumed.take(rest).await);
    resumed.assert_silent(Duration::from_millis(300)).await;
    assert_exact("resumed client", &received, &outcomes, &["t"], "t");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart_loses_nothing_acknowledged_and_streams_stay_open() {
    let mut redis = RedisServer::start_with_aof();
    let (a, b) = (spawn_redis_node(&redis).await, spawn_redis_node(&redis).await);
    let mut subs = vec![
        a.subscribe(&["t"], None).await,
        b.subscribe(&["t"], None).await,
        b.subscribe(&["t", "other"], None).await,
    ];
    let port = redis.port;
    let down = Arc::new(AtomicBool::new(false));
    let back_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let publishing = {
        let (down, a, b, back_at) = (Arc::clone(&down), &a, &b, Arc::clone(&back_at));
        async move {
            let mut outcomes = Vec::new();
            let mut during_outage = Vec::new();
            let mut recovered_after = None;
            let mut unready_seen = false;
            let mut n = 0;
            // 60 before the crash, then on through the outage until 60 more succeed after Redis is back.
            while outcomes.iter().filter(|o: &&Outcome| o.status == 200).count() < 120 {
                assert!(n < 5000, "publishing never recovered");
                let node = if n % 2 == 0 { a } else { b };
                let sent_at = Instant::now();
                let outcome = try_publish(node, "t", format!("m{n}")).await;
                n += 1;
                if down.load(Ordering::Acquire) {
                    during_outage.push(outcome.status);
                    if outcome.status == 503 {
                        let ready = node
                            .client
                            .get(node.url("/readyz"))
                            .send()
                            .await
                            .unwrap()
                            .status();
                        // Unless Redis came back meanwhile, a node that cannot store is not ready.
                        if down.load(Ordering::Acquire) {
                            assert_eq!(ready, 503, "/readyz while Redis is down");
                            unready_seen = true;
                        }
                    }
                }
                // From Redis answering again to the first acknowledged publish sent after that.
                let back = *back_at.lock().unwrap();
                if let (Some(at), None, 200) = (back, recovered_after, outcome.status) {
                    if sent_at >= at {
                        recovered_after = Some(at.elapsed());
                    }
                }
                outcomes.push(outcome);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(unready_seen, "/readyz was checked during the outage");
            (outcomes, during_outage, recovered_after)
        }
    };
    let crashing = async {
        while redis
            .cli(&["XLEN", "herald:{t}"])
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
            < 60
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        down.store(true, Ordering::Release);
        redis.kill();
        tokio::time::sleep(Duration::from_millis(800)).await;
        redis.restart();
        *back_at.lock().unwrap() = Some(Instant::now());
        down.store(false, Ordering::Release);
    };
    let ((outcomes, during_outage, recovered_after), ()) = tokio::join!(publishing, crashing);
    assert_eq!(redis.port, port);
    assert!(
        !during_outage.is_empty(),
        "some publishes ran while Redis was down"
    );
    assert!(
        during_outage.contains(&503),
        "publishes during the outage got 503: {during_outage:?}"
    );
    assert!(
        during_outage.iter().all(|&s| matches!(s, 200 | 503 | 504)),
        "{during_outage:?}"
    );
    eprintln!(
        "redis restart: {} publishes during the outage, publishing succeeded again {:?} after Redis was back",
        during_outage.len(),
        recovered_after
    );
    let received = collect(&mut subs, &outcomes).await;
    for (i, (events, topics)) in received
        .iter()
        .zip([&["t"][..], &["t"], &["t", "other"]])
        .enumerate()
    {
        assert_exact(&format!("subscriber {i}"), events, &outcomes, topics, "t");
    }
    assert!(a.metric("herald_redis_reconnects_total").await >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_pubsub_connections_loses_nothing_and_needs_no_reconnect_by_clients() {
    let redis = RedisServer::start();
    let (a, b) = (spawn_redis_node(&redis).await, spawn_redis_node(&redis).await);
    let mut subs = vec![a.subscribe(&["t"], None).await, b.subscribe(&["t"], None).await];
    let publishing = async {
        let mut outcomes = Vec::new();
        for n in 0..200 {
            let node = if n % 2 == 0 { &a } else { &b };
            outcomes.push(try_publish(node, "t", format!("m{n}")).await);
            if n == 60 || n == 120 {
                let killed = redis
                    .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
                    .expect("CLIENT KILL answers");
                assert_eq!(killed, "2", "both nodes' links were killed");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        outcomes
    };
    let outcomes = publishing.await;
    assert!(
        outcomes.iter().all(|o| o.status == 200),
        "publishing does not need the pub/sub link"
    );
    let received = collect(&mut subs, &outcomes).await;
    for (i, events) in received.iter().enumerate() {
        assert_exact(&format!("subscriber {i}"), events, &outcomes, &["t"], "t");
    }
    assert_eq!(a.metric("herald_redis_reconnects_total").await, 2);
}

#[tokio::test]
async fn redis_cli_publishes_like_http_and_plain_publish_is_live_only() {
    let redis = RedisServer::start();
    let node = spawn_redis_node(&redis).await;
    let mut sub = node.subscribe(&["t"], None).await;
    let http_id = node.publish("t", "multi\nline").await;
    let cli_id = redis
        .cli(&[
            "FCALL",
            "herald_publish",
            "1",
            "herald:{t}",
            "from\nredis-cli",
            "greeting",
        ])
        .expect("FCALL answers the id");
    assert!(id_key(&cli_id) > id_key(&http_id));
    let retry_id = redis
        .cli(&["FCALL", "herald_publish", "1", "herald:{t}", "once", "", "key-1"])
        .expect("FCALL with an idempotency key");
    let again = redis
        .cli(&["FCALL", "herald_publish", "1", "herald:{t}", "once", "", "key-1"])
        .unwrap();
    assert_eq!(retry_id, again, "the same idempotency key answers the first id");
    assert_eq!(
        redis.cli(&["PUBLISH", "herald:{t}:live", "just live"]).as_deref(),
        Some("1")
    );
    let refused = redis.cli(&["FCALL", "herald_publish", "1", "herald:{t}", "x", "bad\nevent"]);
    assert!(refused.is_some_and(|e| e.contains("control character")));

    let events = sub.take(4).await;
    assert_eq!(
        (events[0].id.as_str(), events[0].data.as_str()),
        (http_id.as_str(), "multi\nline")
    );
    assert_eq!(events[1].id, cli_id);
    assert_eq!(
        (events[1].event.as_str(), events[1].data.as_str()),
        ("greeting", "from\nredis-cli")
    );
    assert_eq!(
        (events[2].id.as_str(), events[2].data.as_str()),
        (retry_id.as_str(), "once")
    );
    // A plain PUBLISH carries no id: the client's last id stays where it was.
    assert_eq!(
        (events[3].id.as_str(), events[3].data.as_str()),
        (retry_id.as_str(), "just live")
    );
    sub.assert_silent(Duration::from_millis(200)).await;

    // Stored ones replay; the plain PUBLISH does not.
    let mut replay = node.subscribe(&["t"], Some("0-0")).await;
    let replayed: Vec<String> = replay.take(3).await.into_iter().map(|e| e.data).collect();
    assert_eq!(replayed, vec!["multi\nline", "from\nredis-cli", "once"]);
    replay.assert_silent(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_publish_redis_did_not_confirm_is_504_and_a_retry_with_its_key_stores_it_once() {
    let redis = RedisServer::start();
    let url = redis.url();
    let node = crate::helpers::spawn_app_with(move |s| {
        s.redis.url = url;
        s.redis.command_timeout_ms = Duration::from_millis(300);
    })
    .await;
    let mut sub = node.subscribe(&["t"], None).await;
    let send = || {
        node.client
            .post(node.url("/topics/t"))
            .header("Idempotency-Key", "retry-me")
            .body("maybe stored")
            .send()
    };
    // Redis holds write commands (our publish) but still answers reads such as the pool's PING: the
    // publish runs only after the node stopped waiting for it.
    assert_eq!(
        redis.cli(&["CLIENT", "PAUSE", "1500", "WRITE"]).as_deref(),
        Some("OK")
    );
    let unknown = crate::helpers::assert_problem(send().await.unwrap(), 504, "outcome-unknown").await;
    assert!(unknown["detail"].as_str().unwrap().contains("may or may not"));
    let event = sub.next().await;
    assert_eq!(event.data, "maybe stored", "it was stored after all");
    let retry: serde_json::Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(
        retry["id"].as_str(),
        Some(event.id.as_str()),
        "the retry answers the stored id"
    );
    sub.assert_silent(Duration::from_millis(300)).await;
    assert_eq!(redis.cli(&["XLEN", "herald:{t}"]).as_deref(), Some("1"));
}

#[tokio::test]
async fn a_node_subscribes_only_to_topics_with_local_subscribers() {
    let redis = RedisServer::start();
    let node = spawn_redis_node(&redis).await;
    let numsub = |topic: &str| {
        let out = redis
            .cli(&["PUBSUB", "NUMSUB", &format!("herald:{{{topic}}}:live")])
            .unwrap();
        out.lines().nth(1).unwrap().trim().to_string()
    };
    node.publish("b", "nobody listens").await;
    let sub = node.subscribe(&["a"], None).await;
    assert_eq!(numsub("a"), "1");
    assert_eq!(numsub("b"), "0");
    drop(sub);
    node.wait_connections("a", 0).await;
    let deadline = Instant::now() + PATIENCE;
    while numsub("a") != "0" {
        assert!(
            Instant::now() < deadline,
            "the node kept its subscription to a topic nobody listens to"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn idempotency_key_stores_once_on_both_engines() {
    let redis = RedisServer::start();
    for node in [crate::helpers::spawn_app().await, spawn_redis_node(&redis).await] {
        let send = |key: &'static str| {
            node.client
                .post(node.url("/topics/t"))
                .header("Idempotency-Key", key)
                .body("pay once")
                .send()
        };
        let first: serde_json::Value = send("order-42").await.unwrap().json().await.unwrap();
        let second: serde_json::Value = send("order-42").await.unwrap().json().await.unwrap();
        assert_eq!(first["id"], second["id"]);
        let history = node.get_json("/topics/t/history").await;
        assert_eq!(history["events"].as_array().unwrap().len(), 1);
        crate::helpers::assert_problem(send("bad key with spaces").await.unwrap(), 400, "bad-request").await;
    }
}

#[tokio::test]
async fn starting_against_an_unreachable_redis_fails_clearly() {
    // A port with nothing listening: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}");
    let started = Instant::now();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--port", "0", "--redis-url", &url])
        .env("HERALD__REDIS__STARTUP_WAIT_SECS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, out)
        .await
        .expect("gives up after the bounded wait")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach Redis at {url}")),
        "{stderr}"
    );
    assert!(stderr.contains("start redis-server"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "it waited the configured time"
    );
}

/// A raw `PUBLISH` (documented for live-only messages) once went to browsers verbatim: it could inject
/// an id and an event type, and a future id made every node drop every stored event after it. Whatever
/// arrives on a topic's live channel is now data only, and the stored-event channel takes only
/// well-formed frames whose ids its stream confirms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_sent_to_a_topic_channel_can_inject_fields_or_silence_a_node() {
    let redis = RedisServer::start();
    let (a, b) = (spawn_redis_node(&redis).await, spawn_redis_node(&redis).await);
    let mut subs = [
        a.subscribe(&["x", "y"], None).await,
        b.subscribe(&["x", "y"], None).await,
        b.subscribe(&["y", "x"], None).await,
    ];
    let first = a.publish("x", "before").await;
    let topics = [["x", "y"], ["x", "y"], ["y", "x"]];
    let mut first_ids = Vec::new();
    for (sub, topics) in subs.iter_mut().zip(&topics) {
        let id = sub.next().await.id;
        assert_eq!(crate::helpers::id_in(&id, topics, "x"), first);
        first_ids.push(id);
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let mut publish = |channel: &str, payload: &[u8]| {
        let receivers: i64 = redis::cmd("PUBLISH")
            .arg(channel)
            .arg(payload)
            .query(&mut conn)
            .unwrap();
        assert_eq!(receivers, 2, "both nodes listen on {channel}");
    };
    let fake = b"id: 9999999999999-0\nevent: fake\ndata: x\n\n";
    let bytes = b"\0\xff\r\nretry: 1\n\n:id: 1-1";
    publish("herald:{x}:live", fake);
    publish("herald:{y}:live", bytes);
    // Forged stored events: a future id, an old id, and bytes that are no frame at all.
    publish("herald:{x}:stored", b"id: 9999999999999-0\ndata: forged\n\n");
    publish("herald:{x}:stored", b"id: 1-0\ndata: old\n\n");
    publish("herald:{y}:stored", b"garbage\xff");
    // Frames a publish could not have made, with plausible ids: they are checked like a publish.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let forged: Vec<Vec<u8>> = vec![
        format!("id: {}-0\ndata: half a minute ahead\n\n", now + 30_000).into_bytes(),
        format!("id: {now}-7\nevent: herald.gap\ndata: {{}}\n\n").into_bytes(),
        format!("id: {now}-8\nevent: {}\ndata: x\n\n", "e".repeat(5000)).into_bytes(),
        format!("id: {now}-9\ndata: {}\n\n", "d".repeat(70_000)).into_bytes(),
    ];
    for frame in &forged {
        publish("herald:{x}:stored", frame);
    }
    let p1 = a.publish("x", "after on x").await;
    // No forged id moved the topic's clock.
    let p1_ms: u64 = p1
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(p1_ms < now + 30_000, "{p1}");
    let p2 = b.publish("y", "after on y").await;
    for (i, sub) in subs.iter_mut().enumerate() {
        let events = sub.take(4).await;
        let id_of = |e: &eventsource_stream::Event, topic| crate::helpers::id_in(&e.id, &topics[i], topic);
        let seen: Vec<(String, &str, &str)> = vec![
            (
                events[0].id.clone(),
                events[0].event.as_str(),
                events[0].data.as_str(),
            ),
            (
                events[1].id.clone(),
                events[1].event.as_str(),
                events[1].data.as_str(),
            ),
            (
                id_of(&events[2], "x"),
                events[2].event.as_str(),
                events[2].data.as_str(),
            ),
            (
                id_of(&events[3], "y"),
                events[3].event.as_str(),
                events[3].data.as_str(),
            ),
        ];
        // Live-only messages carry no id: the stream's last id stays the first event's.
        assert_eq!(
            seen,
            vec![
                (
                    first_ids[i].clone(),
                    "message",
                    "id: 9999999999999-0\nevent: fake\ndata: x\n\n"
                ),
                (
                    first_ids[i].clone(),
                    "message",
                    "\0\u{FFFD}\nretry: 1\n\n:id: 1-1"
                ),
                (p1.clone(), "message", "after on x"),
                (p2.clone(), "message", "after on y"),
            ],
            "subscriber {i}"
        );
        sub.assert_silent(Duration::from_millis(200)).await;
    }
    for node in [&a, &b] {
        assert_eq!(node.metric("herald_redis_refused_messages_total").await, 7);
    }
}

/// Redis functions apply the HTTP API's one rule for event names; `redis-cli` publishes follow the
/// node's settings, which travel in the library the node loaded (no settings key: a Cluster allows a
/// function only its call's slot), so a FLUSHALL cannot lose them.
#[tokio::test]
async fn redis_cli_event_names_follow_the_http_rule_and_settings_survive_flushall() {
    let redis = RedisServer::start();
    let url = redis.url();
    let node = crate::helpers::spawn_app_with(move |s| {
        s.redis.url = url;
        s.redis.ping_interval_ms = Duration::from_millis(100);
        s.history.max_len = 7;
        s.limits.max_event_name_len = 20;
    })
    .await;
    let fcall = |event: &str| redis.cli(&["FCALL", "herald_publish", "1", "herald:{t}", "d", event]);
    let c1 = "bad\u{85}name";
    for (event, why) in [
        (&"e".repeat(21)[..], "at most 20"),
        (c1, "control characters"),
        ("herald.reserved", "reserved"),
    ] {
        let answer = fcall(event).unwrap_or_default();
        assert!(answer.contains(why), "{event:?}: {answer}");
    }
    assert!(
        fcall(&"é".repeat(20)).is_some_and(|id| id.contains('-')),
        "20 characters, 40 bytes"
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    // Trimming runs once more than max_len + 100 are stored (the 108th here), and keeps exactly
    // max_len: the node's 7, not the built-in 1000.
    let mut fill = |topic: &str| {
        for n in 0..108 {
            let _: String = redis::cmd("FCALL")
                .arg("herald_publish")
                .arg(1)
                .arg(format!("herald:{{{topic}}}"))
                .arg(format!("m{n}"))
                .query(&mut conn)
                .expect("FCALL without settings");
        }
        redis.cli(&["XLEN", &format!("herald:{{{topic}}}")])
    };
    assert_eq!(fill("u").as_deref(), Some("7"));
    let keys = redis.cli(&["KEYS", "herald:*"]).unwrap_or_default();
    assert!(!keys.contains("config"), "no settings key: {keys}");
    assert_eq!(redis.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
    assert_eq!(fill("v").as_deref(), Some("7"), "settings survive FLUSHALL");
    node.publish("t", "still works").await;
}

/// An ACL user: nodes authenticate every connection (commands and the pub/sub link) with
/// `redis.username` / `redis.password`; a wrong password stops start-up with a message that says so and
/// never shows the password.
#[tokio::test]
async fn an_acl_user_is_used_for_every_connection_and_a_wrong_password_is_named() {
    let redis = RedisServer::start();
    assert_eq!(
        redis
            .cli(&["ACL", "SETUSER", "hub", "on", ">s3cret-pass", "~*", "&*", "+@all"])
            .as_deref(),
        Some("OK")
    );
    let url = redis.url();
    let node = crate::helpers::spawn_app_with({
        let url = url.clone();
        move |s| {
            s.redis.url = url;
            s.redis.username = "hub".into();
            s.redis.password = "s3cret-pass".into();
        }
    })
    .await;
    let mut sub = node.subscribe(&["acl"], None).await;
    let id = node.publish("acl", "through an ACL user").await;
    assert_eq!(sub.next().await.id, id);
    let clients = redis.cli(&["CLIENT", "LIST"]).unwrap();
    let as_hub = clients.lines().filter(|l| l.contains("user=hub")).count();
    assert!(
        as_hub >= 2,
        "the command connection and the link log in as hub:\n{clients}"
    );

    let mut settings = herald::config::Settings::defaults().unwrap();
    settings.server.port = 0;
    settings.redis.url = url;
    settings.redis.username = "hub".into();
    settings.redis.password = "wrong-pass-123".into();
    settings.redis.startup_wait_secs = Duration::from_secs(1);
    let error = match herald::startup::Application::build(settings).await {
        Ok(_) => panic!("a node with a wrong password started"),
        Err(e) => e.to_string(),
    };
    assert!(error.contains("redis.password"), "{error}");
    assert!(!error.contains("wrong-pass-123"), "{error}");
}

/// TLS to Redis (`rediss://`) with a CA the test makes: a node that trusts it publishes and subscribes
/// (the command connection and the pub/sub link both over TLS); one that trusts another CA, or asks for
/// another host name, stops with a message naming the host and the reason; with mutual TLS, a node
/// without a client certificate is refused and one with it works.
#[tokio::test]
async fn redis_over_tls_and_mutual_tls_with_a_ca_the_test_made() {
    let certs = tempfile::tempdir().unwrap();
    crate::redis_server::make_certificates(certs.path());
    let file = |name: &str| certs.path().join(name).display().to_string();
    let start = |url: String, ca: &str, client: bool| {
        let mut s = herald::config::Settings::defaults().unwrap();
        s.server.port = 0;
        s.server.workers = 1;
        s.redis.url = url;
        s.redis.startup_wait_secs = Duration::from_secs(1);
        s.redis.tls_ca_file = file(ca);
        if client {
            s.redis.tls_cert_file = file("client.crt");
            s.redis.tls_key_file = file("client.key");
        }
        s
    };
    let failure = |settings: herald::config::Settings| async move {
        match herald::startup::Application::build(settings).await {
            Ok(_) => panic!("the node started"),
            Err(e) => {
                eprintln!("refused as it should be: {e}");
                e.to_string()
            }
        }
    };

    let (_tls, port) = RedisServer::start_tls(certs.path(), false);
    let url = format!("rediss://localhost:{port}");
    let trusted = start(url.clone(), "ca.crt", false);
    let node = crate::helpers::spawn_app_with(move |s| *s = trusted).await;
    let mut sub = node.subscribe(&["tls"], None).await;
    let id = node.publish("tls", "over TLS").await;
    assert_eq!(sub.next().await.id, id);

    let error = failure(start(url.clone(), "other-ca.crt", false)).await;
    assert!(error.contains(&format!("localhost:{port}")), "{error}");
    assert!(
        error.contains("UnknownIssuer") || error.contains("certificate"),
        "{error}"
    );
    // The certificate is for the name localhost, not for the address.
    let error = failure(start(format!("rediss://127.0.0.1:{port}"), "ca.crt", false)).await;
    assert!(error.contains("127.0.0.1"), "{error}");
    assert!(
        error.contains("NotValidForName") || error.contains("certificate"),
        "{error}"
    );

    let (_mutual, port) = RedisServer::start_tls(certs.path(), true);
    let url = format!("rediss://localhost:{port}");
    let error = failure(start(url.clone(), "ca.crt", false)).await;
    assert!(error.contains(&format!("localhost:{port}")), "{error}");
    let with_cert = start(url, "ca.crt", true);
    let node = crate::helpers::spawn_app_with(move |s| *s = with_cert).await;
    let mut sub = node.subscribe(&["mtls"], None).await;
    let id = node.publish("mtls", "over mutual TLS").await;
    assert_eq!(sub.next().await.id, id);
}

#[tokio::test]
async fn iri_topics_round_trip_on_both_engines_and_redis_cli_uses_the_documented_key_mapping() {
    use crate::helpers::pct;
    let redis = RedisServer::start();
    let topics = [
        "https://example.com/books/1?lang=fr#p2",
        "a{b}%c:d ü",
        "%7B",
        "{",
        "news",
    ];
    for node in [crate::helpers::spawn_app().await, spawn_redis_node(&redis).await] {
        let query: Vec<String> = topics.iter().map(|t| format!("topic={}", pct(t))).collect();
        let mut sub = node.subscribe_query(&query.join("&"), None).await;
        let mut ids = Vec::new();
        for t in topics {
            ids.push(node.publish(&pct(t), &format!("to {t}")).await);
        }
        let events = sub.take(topics.len()).await;
        for ((event, t), id) in events.iter().zip(topics).zip(&ids) {
            let id_in = crate::helpers::id_in(&event.id, &topics, t);
            assert_eq!((event.data.as_str(), &id_in), (format!("to {t}").as_str(), id));
        }
        for t in topics {
            let history = node.get_json(&format!("/topics/{}/history", pct(t))).await;
            assert_eq!(history["topic"], t, "{history}");
            let events = history["events"].as_array().expect("events");
            assert_eq!(events.len(), 1, "{t}: {history}");
            assert_eq!(events[0]["data"], format!("to {t}"));
        }
        // A control character is refused, as problem+json that says so.
        let refused = node.post(&pct("a\nb"), "text/plain", "x").await;
        let problem = crate::helpers::assert_problem(refused, 400, "invalid-topic").await;
        assert!(
            problem["detail"]
                .as_str()
                .unwrap_or("")
                .contains("control character"),
            "{problem}"
        );
    }

    // redis-cli: `%`, `{` and `}` are written %25, %7B and %7D; any other form is refused, so one topic has one key.
    let node = spawn_redis_node(&redis).await;
    let mut sub = node
        .subscribe_query(&format!("topic={}&topic={}", pct("a{b}%c:d ü"), pct("{")), None)
        .await;
    let cli_id = redis
        .cli(&[
            "FCALL",
            "herald_publish",
            "1",
            "herald:{a%7Bb%7D%25c:d ü}",
            "from redis-cli",
        ])
        .expect("FCALL answers");
    let brace_id = redis
        .cli(&["FCALL", "herald_publish", "1", "herald:{%7B}", "brace"])
        .expect("FCALL");
    for bad in [
        "herald:{a{b}",
        "herald:{%41}",
        "herald:{a%7b}",
        "herald:{a%}",
        "herald:{a%2}",
        "herald:{a\tb}",
    ] {
        let refused = redis.cli(&["FCALL", "herald_publish", "1", bad, "x"]);
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("%25, %7B and %7D")),
            "{bad}: {refused:?}"
        );
    }
    let events = sub.take(2).await;
    let pair = ["a{b}%c:d ü", "{"];
    let got: Vec<(String, &str)> = events
        .iter()
        .zip(pair)
        .map(|(e, t)| (crate::helpers::id_in(&e.id, &pair, t), e.data.as_str()))
        .collect();
    assert_eq!(got, vec![(cli_id, "from redis-cli"), (brace_id, "brace")]);
    sub.assert_silent(Duration::from_millis(200)).await;
}

/// Data written by release 6 (one clock `herald:seq` for all topics, logs in `herald:{T}:log`, trim
/// markers in `herald:{T}:trimmed`), loaded with that release's own functions library: after the
/// upgrade, ids clients took before resume exactly (single- and multi-topic streams, gap included), new
/// ids stay above the old clock, and the node's start moved every log to `herald:{T}` once (the
/// migration of `migrations/`, recorded in `herald:layout`), so no publish looks for old keys.
#[tokio::test]
async fn ids_from_release_6_keep_resuming_after_the_upgrade() {
    let redis = RedisServer::start();
    let old = include_str!("../../migrations/history/herald-v6.lua");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(old)
        .query(&mut conn)
        .expect("the release-6 library loads");
    // max_len 2: the 103rd publish trims, so `a` has a trim marker.
    let mut publish = |topic: &str, data: &str| -> String {
        redis::cmd("FCALL")
            .arg("herald_publish")
            .arg(1)
            .arg(format!("herald:{{{topic}}}"))
            .arg(data)
            .arg("")
            .arg("")
            .arg(2)
            .arg(86_400_000)
            .arg(600_000)
            .arg(64)
            .query(&mut conn)
            .expect("a release-6 publish")
    };
    let mut ids = Vec::new();
    for n in 0..103 {
        ids.push(publish("a", &format!("a{n}")));
    }
    let b1 = publish("b", "b1");
    let b2 = publish("b", "b2");
    let a_end = publish("a", "a103");
    assert!(redis
        .cli(&["GET", "herald:{a}:trimmed"])
        .is_some_and(|t| t.contains('-')));
    // The old clock ran ahead of time (as a lost primary's may have): new ids must still pass it.
    let ahead = format!("{}-0", id_key(&a_end).0 + 600_000);
    assert_eq!(redis.cli(&["SET", "herald:seq", &ahead]).as_deref(), Some("OK"));

    // An idempotency key whose name ends like an old log is no topic's log: the upgrade leaves it.
    assert_eq!(
        redis.cli(&["SET", "herald:{b}:idem:x:log", "1-1"]).as_deref(),
        Some("OK")
    );
    assert_eq!(redis.cli(&["GET", "herald:layout"]).unwrap_or_default(), "");

    let url = redis.url();
    let node = crate::helpers::spawn_app_with(move |s| s.redis.url = url).await;
    // Moved at start, before anything was published: the logs, the trim marker with them.
    assert_eq!(redis.cli(&["GET", "herald:layout"]).as_deref(), Some("7"));
    for gone in ["herald:{a}:log", "herald:{b}:log", "herald:{a}:trimmed"] {
        assert_eq!(redis.cli(&["EXISTS", gone]).as_deref(), Some("0"), "{gone}");
    }
    assert_eq!(redis.cli(&["XLEN", "herald:{b}"]).as_deref(), Some("2"));
    assert_eq!(
        redis.cli(&["GET", "herald:{b}:idem:x:log"]).as_deref(),
        Some("1-1")
    );
    // A single-topic stream resumes from an old id: exactly what follows, then live.
    let mut single = node.subscribe(&["b"], Some(&b1)).await;
    let got = single.next().await;
    assert_eq!((got.id.as_str(), got.data.as_str()), (b2.as_str(), "b2"));
    // A multi-topic stream resumes from an old (plain) id: each topic from it.
    let mut multi = node.subscribe(&["a", "b"], Some(&b1)).await;
    let got = multi.take(2).await;
    assert_eq!(
        got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["b2", "a103"],
        "every event after the id, in every topic"
    );
    // From before the old trim: the gap is announced.
    let mut from_trimmed = node.subscribe(&["a"], Some(&ids[0])).await;
    assert_eq!(from_trimmed.next().await.event, "herald.gap");

    let new_a = node.publish("a", "new a").await;
    assert!(
        id_key(&new_a) > id_key(&ahead),
        "{new_a} passes the old clock {ahead}"
    );
    let new_b = node.publish("b", "new b").await;
    assert!(
        id_key(&new_b) > id_key(&ahead),
        "{new_b} passes the old clock {ahead}"
    );
    assert_eq!(single.next().await.id, new_b);
    let live: Vec<String> = multi.take(2).await.into_iter().map(|e| e.data).collect();
    assert_eq!(live, ["new a", "new b"]);
    let mut after_move = node.subscribe(&["a"], Some(&ids[0])).await;
    assert_eq!(after_move.next().await.event, "herald.gap");
    let resumed: Vec<String> = after_move.take(4).await.into_iter().map(|e| e.data).collect();
    assert_eq!(
        resumed,
        ["a101", "a102", "a103", "new a"],
        "the 2 the trim kept, what came after it, then the new event"
    );
    let mut from_old_b = node.subscribe(&["b"], Some(&b2)).await;
    assert_eq!(from_old_b.next().await.data, "new b");
}

/// The functions check every key and argument, as the HTTP API does: a redis-cli user (or anyone with
/// FCALL rights) cannot write another topic's idempotency key, block a topic's clock with a far-future
/// floor or store with settings that make no sense; each refusal says what to send instead.
#[tokio::test]
async fn the_redis_functions_refuse_bad_keys_and_arguments_with_clear_errors() {
    let redis = RedisServer::start();
    let node = spawn_redis_node(&redis).await;
    let refusals: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "another topic's idempotency key",
            vec![
                "FCALL",
                "herald_publish",
                "2",
                "herald:{t}",
                "herald:{u}:idem:k",
                "x",
                "",
                "k",
            ],
            "the second key must be herald:{t}:idem:k",
        ),
        (
            "a second key without an idempotency key",
            vec![
                "FCALL",
                "herald_publish",
                "2",
                "herald:{t}",
                "herald:{t}:idem:k",
                "x",
            ],
            "the second key must be",
        ),
        (
            "three keys",
            vec!["FCALL", "herald_publish", "3", "herald:{t}", "a", "b", "x"],
            "usage: FCALL herald_publish 1",
        ),
        (
            "no key",
            vec!["FCALL", "herald_last", "0"],
            "usage: FCALL_RO herald_last 1",
        ),
        (
            "an idempotency key with a space",
            vec!["FCALL", "herald_publish", "1", "herald:{t}", "x", "", "a b"],
            "1 to 128 visible ASCII",
        ),
        (
            "max_len 0",
            vec!["FCALL", "herald_publish", "1", "herald:{t}", "x", "", "", "0"],
            "max_len (ARGV 4) must be a whole number from 1",
        ),
        (
            "max_len not a number",
            vec!["FCALL", "herald_publish", "1", "herald:{t}", "x", "", "", "ten"],
            "max_len (ARGV 4)",
        ),
        (
            "a negative max age",
            vec![
                "FCALL",
                "herald_publish",
                "1",
                "herald:{t}",
                "x",
                "",
                "",
                "10",
                "-1",
            ],
            "max_age_ms (ARGV 5)",
        ),
        (
            "idempotency window 0",
            vec![
                "FCALL",
                "herald_publish",
                "1",
                "herald:{t}",
                "x",
                "",
                "",
                "10",
                "0",
                "0",
            ],
            "idem_ttl_ms (ARGV 6)",
        ),
        (
            "a floor at u64::MAX",
            vec![
                "FCALL",
                "herald_floor",
                "1",
                "herald:{t}",
                "18446744073709551615-0",
            ],
            "more than an hour past Redis's clock",
        ),
        (
            "a publish floor far ahead",
            vec![
                "FCALL",
                "herald_publish",
                "1",
                "herald:{t}",
                "x",
                "",
                "",
                "10",
                "0",
                "1000",
                "64",
                "99999999999999-0",
            ],
            "the floor (ARGV 8)",
        ),
        (
            "a history from no id",
            vec!["FCALL_RO", "herald_history", "1", "herald:{t}", "yesterday", "10"],
            "the after-id (ARGV 1) must be an id",
        ),
        (
            "a history of -1 events",
            vec!["FCALL_RO", "herald_history", "1", "herald:{t}", "0-0", "-1"],
            "the count (ARGV 2)",
        ),
    ];
    for (what, args, expected) in &refusals {
        let answer = redis.cli(args).unwrap_or_default();
        assert!(answer.contains(expected), "{what}: {answer:?}");
        assert!(
            answer.contains("herald: "),
            "{what}: Herald's own words: {answer:?}"
        );
    }
    // Nothing was written: no topic, no idempotency key, no clock moved.
    for key in ["herald:{t}", "herald:{u}:idem:k", "herald:{t}:idem:k"] {
        assert_eq!(redis.cli(&["EXISTS", key]).as_deref(), Some("0"), "{key}");
    }
    // The topic still takes publishes, with ids from Redis's clock.
    let id = node.publish("t", "fine").await;
    let ms: u64 = id
        .split('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(u64::MAX);
    assert!(ms < 99_999_999_999_999, "{id}");
    // A floor within the hour is still taken (a failover's clock may lag a little).
    let near = format!("{}-5", ms + 1000);
    let raised = redis
        .cli(&["FCALL", "herald_floor", "1", "herald:{t}", &near])
        .unwrap_or_default();
    assert!(raised.contains(&near), "{raised}");
}

/// A publish Redis refuses for good (here the topic's key holds a string, so the function's XADD fails)
/// is answered 500 `store-error`, without `Retry-After` (retrying cannot help), in Herald's words; Redis's
/// own text goes to the log, under the request id the answer carries. A store that is merely down is
/// still 503 with `Retry-After`.
#[tokio::test]
async fn a_permanent_store_error_is_500_in_heralds_words_and_its_details_are_logged() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let redis = RedisServer::start();
    assert_eq!(
        redis.cli(&["SET", "herald:{wrong}", "a string"]).as_deref(),
        Some("OK")
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["--port", "0", "--redis-url", &redis.url()])
        .env("HERALD__LOG__FORMAT", "json")
        .env("RUST_LOG", "warn,herald=info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the herald binary runs");
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let stderr = child.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    let next_line = || lines.recv_timeout(PATIENCE).expect("a log line");
    let url = loop {
        let line = next_line();
        if let Some(at) = line.find("listening on http://") {
            let rest = &line[at + "listening on ".len()..];
            break rest.split(' ').next().unwrap_or_default().to_string();
        }
    };
    let client = reqwest::Client::new();
    let answer = client
        .post(format!("{url}/topics/wrong"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert!(
        answer.headers().get("retry-after").is_none(),
        "{:?}",
        answer.headers()
    );
    let problem = crate::helpers::assert_problem(answer, 500, "store-error").await;
    let detail = problem["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("retrying will not help"), "{problem}");
    for internal in ["WRONGTYPE", "ERR ", "user_function", "herald.lua"] {
        assert!(
            !detail.contains(internal),
            "Redis's words in the detail: {problem}"
        );
    }
    let id = problem["request_id"].as_str().expect("a request id").to_string();
    let logged = loop {
        let line = next_line();
        if line.contains(&id) {
            break line;
        }
    };
    let logged: serde_json::Value = serde_json::from_str(&logged).unwrap();
    assert_eq!(logged["level"], "WARN", "{logged}");
    assert!(
        logged["fields"]["store_said"]
            .as_str()
            .unwrap_or_default()
            .contains("WRONGTYPE"),
        "{logged}"
    );
    // The same node with its Redis gone: 503 with Retry-After, and no Redis text either.
    drop(redis);
    let deadline = std::time::Instant::now() + PATIENCE;
    let down = loop {
        let answer = client
            .post(format!("{url}/topics/ok"))
            .body("x")
            .send()
            .await
            .unwrap();
        if answer.status() == 503 || std::time::Instant::now() > deadline {
            break answer;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(down.headers().get("retry-after").is_some());
    let problem = crate::helpers::assert_problem(down, 503, "store-unavailable").await;
    assert!(problem["request_id"].is_string(), "{problem}");
    assert!(
        !problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("os error"),
        "{problem}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// `herald migrate --check` (the binary) says what a Redis holds and changes nothing: a release-6
/// dataset's old topics before a node starts, the recorded layout and this binary's library after; a
/// layout newer than this binary's is refused with exit status 1.
#[tokio::test]
async fn migrate_check_reports_the_layout_and_changes_nothing() {
    let redis = RedisServer::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let _: String = redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg(include_str!("../../migrations/history/herald-v6.lua"))
        .query(&mut conn)
        .expect("the release-6 library loads");
    for topic in ["a", "b"] {
        let _: String = redis::cmd("FCALL")
            .arg("herald_publish")
            .arg(1)
            .arg(format!("herald:{{{topic}}}"))
            .arg("old")
            .query(&mut conn)
            .expect("a release-6 publish");
    }
    let check = |url: String| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["migrate", "--check", "--redis-url", &url])
            .env("RUST_BACKTRACE", "0")
            .output()
            .expect("herald runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, before) = check(redis.url());
    assert_eq!(code, Some(0), "{before}");
    assert!(
        before.contains("2 topics in release-6 keys") && before.contains("none recorded"),
        "{before}"
    );
    assert!(before.contains("this binary can serve it"), "{before}");
    assert_eq!(
        redis.cli(&["EXISTS", "herald:{a}:log"]).as_deref(),
        Some("1"),
        "unchanged"
    );

    let url = redis.url();
    let node = crate::helpers::spawn_app_with(move |s| s.redis.url = url).await;
    let (code, after) = check(redis.url());
    assert_eq!(code, Some(0), "{after}");
    assert!(after.contains("layout:    7 (recorded)"), "{after}");
    assert!(after.contains("loaded (this binary's)"), "{after}");
    drop(node);

    assert_eq!(redis.cli(&["SET", "herald:layout", "8"]).as_deref(), Some("OK"));
    let (code, newer) = check(redis.url());
    assert_eq!(code, Some(1), "{newer}");
    assert!(newer.contains("newer than this binary's 7"), "{newer}");
}
