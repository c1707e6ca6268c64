//! Presence (`[presence]`): the subscriptions API, subscription events and counts, on one node and
//! across two nodes on one real Redis, with a graceful shutdown and a SIGKILLed node.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use herald::auth::{self, Claims, MercureClaim};
use serde_json::{json, Value};

use crate::helpers::{
    pct, spawn_app_with, spawn_redis_node_with, start_binary, Subscriber, TestApp, PATIENCE,
};
use crate::redis_server::RedisServer;

const SECRET: &str = "presence-test-secret-presence-test-secret";
const ROOM: &str = "https://example.com/rooms/1";
const WATCH_ALL: &str = "/.well-known/mercure/subscriptions{/topic}{/subscriber}";

fn token(subscribe: &[&str], payload: Option<Value>) -> String {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = Claims {
        mercure: MercureClaim {
            publish: vec![],
            subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            payload,
        },
        exp: Some(exp),
        aud: None,
    };
    auth::mint(SECRET, &claims).unwrap()
}

fn settings(s: &mut herald::config::Settings) {
    s.presence.enabled = true;
    s.auth.hs_secret = SECRET.into();
}

/// A Mercure subscriber of `selector`, with `token` in the Authorization header if given.
async fn join(app: &TestApp, selector: &str, token: Option<&str>) -> Subscriber {
    use eventsource_stream::Eventsource;
    let mut request = app
        .client
        .get(app.url(&format!("/.well-known/mercure?topic={}", pct(selector))));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("subscribe request");
    assert_eq!(response.status(), 200);
    Subscriber::from_events(Box::pin(response.bytes_stream().eventsource()))
}

async fn get(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.expect("request")
}

/// The subscriptions of `topic` as `app` lists them, every page followed.
async fn listed(app: &TestApp, topic: &str, token: &str) -> Vec<Value> {
    let mut path = format!("/.well-known/mercure/subscriptions/{}", pct(topic));
    let mut all = Vec::new();
    loop {
        let response = get(app, &path, Some(token)).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/ld+json");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["type"], "Subscriptions");
        assert_eq!(body["@context"], "https://mercure.rocks/");
        all.extend(body["subscriptions"].as_array().unwrap().iter().cloned());
        match body["next"].as_str() {
            Some(next) => path = next.to_string(),
            None => return all,
        }
    }
}

/// Polls until `app` lists `n` subscriptions of `topic` (writes reach the store a moment after the
/// stream opens); fails past `within`.
async fn wait_listed(app: &TestApp, topic: &str, token: &str, n: usize, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    loop {
        let list = listed(app, topic, token).await;
        if list.len() == n {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "{} subscriptions listed, not {n}: {list:?}",
            list.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next subscription event a watcher gets (its data, parsed).
async fn next_change(watcher: &mut Subscriber) -> Value {
    let event = watcher.next().await;
    serde_json::from_str(&event.data).unwrap_or_else(|e| panic!("{e}: {}", event.data))
}

#[tokio::test]
async fn one_node_lists_its_subscriptions_announces_each_change_and_counts_them() {
    let app = spawn_app_with(settings).await;
    let admin = token(&[WATCH_ALL], None);
    let mut watcher = join(&app, WATCH_ALL, Some(&admin)).await;
    // The watcher's own subscription is announced first.
    let own = next_change(&mut watcher).await;
    assert_eq!(own["topic"], WATCH_ALL);

    let ada = token(&[ROOM], Some(json!({ "name": "Ada" })));
    let first = join(&app, ROOM, Some(&ada)).await;
    let joined = next_change(&mut watcher).await;
    assert_eq!(joined["type"], "Subscription");
    assert_eq!(joined["topic"], ROOM);
    assert_eq!(joined["active"], true);
    assert_eq!(joined["payload"], json!({ "name": "Ada" }));
    let subscriber = joined["subscriber"].as_str().unwrap().to_string();
    assert!(subscriber.starts_with("urn:uuid:"), "{subscriber}");
    // A room subscription's IRI: its event topic, its id and its path in the API.
    let one_path = |subscriber: &str| {
        format!(
            "/.well-known/mercure/subscriptions/{}/{}",
            pct(ROOM),
            pct(subscriber)
        )
    };
    assert_eq!(joined["id"], one_path(&subscriber));
    let _second = join(&app, ROOM, None).await;
    assert_eq!(next_change(&mut watcher).await["active"], true);

    let list = wait_listed(&app, ROOM, &admin, 2, PATIENCE).await;
    assert!(list.iter().any(|s| s["subscriber"] == subscriber.as_str()));
    let one = get(&app, &one_path(&subscriber), Some(&admin)).await;
    assert_eq!(one.status(), 200);
    let one: Value = one.json().await.unwrap();
    assert_eq!(one["subscriber"], subscriber.as_str());
    assert_eq!(one["active"], true);
    let count: Value = get(&app, &format!("/topics/{}/presence", pct(ROOM)), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(count, json!({ "topic": ROOM, "subscribers": 2, "nodes": 1 }));

    // Leaving is announced within 2 s, and the list shrinks.
    let started = Instant::now();
    drop(first);
    let left = next_change(&mut watcher).await;
    assert_eq!(left["active"], false);
    assert_eq!(left["subscriber"], subscriber.as_str());
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    wait_listed(&app, ROOM, &admin, 1, PATIENCE).await;
    let gone = get(&app, &one_path(&subscriber), Some(&admin)).await;
    assert_eq!(gone.status(), 404);
    assert_eq!(gone.headers()["content-type"], "application/problem+json");

    // Anonymous callers, and tokens that do not match the path, may not see who is subscribed.
    let anonymous = get(&app, "/.well-known/mercure/subscriptions", None).await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(anonymous.headers()["content-type"], "application/problem+json");
    let other = get(&app, "/.well-known/mercure/subscriptions", Some(&ada)).await;
    assert_eq!(other.status(), 403);
    // An anonymous subscriber of the events sees none of them: they are private.
    let mut anonymous_watcher = join(&app, WATCH_ALL, None).await;
    let _third = join(&app, ROOM, None).await;
    assert_eq!(next_change(&mut watcher).await["active"], true);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), anonymous_watcher.next_or_end())
            .await
            .is_err(),
        "an anonymous subscriber received a subscription event"
    );
}

#[tokio::test]
async fn presence_is_off_by_default_and_says_how_to_turn_it_on() {
    let app = spawn_app_with(|s| s.auth.hs_secret = SECRET.into()).await;
    let admin = token(&[WATCH_ALL], None);
    let response = get(&app, "/.well-known/mercure/subscriptions", Some(&admin)).await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("presence.enabled"),
        "{body}"
    );
}

/// Two nodes on one Redis: 3 + 2 subscribers listed as 5 from either node, a leave announced within
/// 2 s, a graceful shutdown's subscriptions gone at once, a SIGKILLed node's gone within its ttl and
/// announced once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_redis_list_everyone_and_clean_up_after_a_node_that_stops_or_dies() {
    let redis = RedisServer::start();
    let quick = |s: &mut herald::config::Settings| {
        settings(s);
        s.presence.heartbeat_secs = Duration::from_secs(1);
        s.presence.ttl_secs = Duration::from_secs(3);
    };
    let a = spawn_redis_node_with(&redis, quick).await;
    let b = spawn_redis_node_with(&redis, quick).await;
    let admin = token(&[WATCH_ALL], None);
    let mut watcher = join(
        &b,
        &format!("/.well-known/mercure/subscriptions/{}{{/subscriber}}", pct(ROOM)),
        Some(&admin),
    )
    .await;
    let mut on_a = Vec::new();
    for _ in 0..3 {
        on_a.push(join(&a, ROOM, None).await);
    }
    let mut on_b = Vec::new();
    for _ in 0..2 {
        on_b.push(join(&b, ROOM, None).await);
    }
    for _ in 0..5 {
        assert_eq!(next_change(&mut watcher).await["active"], true);
    }
    for node in [&a, &b] {
        wait_listed(node, ROOM, &admin, 5, PATIENCE).await;
    }
    let count: Value = get(&a, &format!("/topics/{}/presence", pct(ROOM)), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(count, json!({ "topic": ROOM, "subscribers": 5, "nodes": 2 }));
    // The status page names the topic with this node's 2 and every node's 5.
    let status: Value = get(&b, "/status.json", None).await.json().await.unwrap();
    let room = status["busiest_topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == ROOM)
        .cloned()
        .unwrap_or_else(|| panic!("{status}"));
    assert_eq!(room["subscribers"], 2, "{room}");
    assert_eq!(room["subscribers_all_nodes"], 5, "{room}");
    assert_eq!(room["nodes"], 2, "{room}");

    let started = Instant::now();
    drop(on_a.pop());
    assert_eq!(next_change(&mut watcher).await["active"], false);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    wait_listed(&b, ROOM, &admin, 4, PATIENCE).await;

    // A graceful shutdown removes the node's subscriptions before it ends.
    a.shutdown.run().await;
    drop(on_a);
    assert_eq!(listed(&b, ROOM, &admin).await.len(), 2);
    for _ in 0..2 {
        assert_eq!(next_change(&mut watcher).await["active"], false);
    }

    // A node that dies silently: its subscriptions go within its ttl, each announced once.
    let (mut child, address, _log) = start_binary(&[
        ("HERALD__REDIS__URL", redis.url()),
        ("HERALD__PRESENCE__ENABLED", "true".into()),
        ("HERALD__PRESENCE__HEARTBEAT_SECS", "1".into()),
        ("HERALD__PRESENCE__TTL_SECS", "3".into()),
        ("HERALD__AUTH__HS_SECRET", SECRET.into()),
    ])
    .await;
    let doomed = TestApp {
        port: 0,
        address: address.clone(),
        client: reqwest::Client::new(),
        shutdown: b.shutdown.clone(),
    };
    let _held = [join(&doomed, ROOM, None).await, join(&doomed, ROOM, None).await];
    for _ in 0..2 {
        assert_eq!(next_change(&mut watcher).await["active"], true);
    }
    wait_listed(&b, ROOM, &admin, 4, PATIENCE).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let killed = Instant::now();
    // b's reaper claims the dead node once its 3 s ttl has passed (b looks every second).
    let left = [next_change(&mut watcher).await, next_change(&mut watcher).await];
    assert!(left.iter().all(|c| c["active"] == false), "{left:?}");
    eprintln!(
        "a SIGKILLed node's subscriptions were announced gone {:?} after",
        killed.elapsed()
    );
    assert_eq!(listed(&b, ROOM, &admin).await.len(), 2);
    // Announced once: nothing more comes.
    assert!(
        tokio::time::timeout(Duration::from_secs(1), watcher.next_or_end())
            .await
            .is_err(),
        "a subscription's end was announced twice"
    );
}

/// Subscriptions made with Mercure 1.0's parameters take 1.0's shape: their events' topics and
/// documents name the matcher type and the matcher (`…/subscriptions/{matchType}/{match}/{subscriber}`),
/// and the API lists them under those paths; counts take both dialects.
#[tokio::test]
async fn subscriptions_made_in_the_1_0_dialect_are_shown_in_its_shape() {
    let app = spawn_app_with(settings).await;
    let watch = "/.well-known/mercure/subscriptions{/kind}{/match}{/subscriber}";
    let admin = token(&[watch, WATCH_ALL], None);
    let mut watcher = join(&app, watch, Some(&admin)).await;
    assert_eq!(next_change(&mut watcher).await["topic"], watch);
    let pattern = "https://example.com/rooms/:id";
    let _by_pattern = app
        .subscribe_at(
            &format!("/.well-known/mercure?matchURLPattern={}", pct(pattern)),
            None,
        )
        .await;
    let change = next_change(&mut watcher).await;
    assert_eq!(change["matchType"], "URLPattern", "{change}");
    assert_eq!(change["match"], pattern, "{change}");
    assert!(change.get("topic").is_none(), "{change}");
    let subscriber = change["subscriber"].as_str().unwrap();
    assert_eq!(
        change["id"],
        format!(
            "/.well-known/mercure/subscriptions/URLPattern/{}/{}",
            pct(pattern),
            pct(subscriber)
        )
    );
    let _exact = app
        .subscribe_at(&format!("/.well-known/mercure?match={}", pct(ROOM)), None)
        .await;
    assert_eq!(next_change(&mut watcher).await["matchType"], "Exact");
    let _legacy = join(&app, ROOM, None).await;
    assert!(next_change(&mut watcher).await.get("matchType").is_none());

    let list = |path: String| {
        let admin = admin.clone();
        let app = &app;
        async move {
            let body: Value = get(app, &path, Some(&admin)).await.json().await.unwrap();
            body["subscriptions"].as_array().unwrap().clone()
        }
    };
    let by_pattern = list(format!(
        "/.well-known/mercure/subscriptions/URLPattern/{}",
        pct(pattern)
    ))
    .await;
    assert_eq!(by_pattern.len(), 1);
    assert_eq!(by_pattern[0]["match"], pattern);
    assert_eq!(
        list(format!("/.well-known/mercure/subscriptions/Exact/{}", pct(ROOM)))
            .await
            .len(),
        1
    );
    // 0.x's path for the same topic lists its own subscription only.
    let legacy = list(format!("/.well-known/mercure/subscriptions/{}", pct(ROOM))).await;
    assert_eq!(legacy.len(), 1);
    assert_eq!(legacy[0]["topic"], ROOM);
    let one = get(
        &app,
        &format!(
            "/.well-known/mercure/subscriptions/URLPattern/{}/{}",
            pct(pattern),
            pct(subscriber)
        ),
        Some(&admin),
    )
    .await;
    assert_eq!(one.status(), 200);
    let count: Value = get(&app, &format!("/topics/{}/presence", pct(ROOM)), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(count["subscribers"], 2, "{count}");
}

/// A 1.0 token's payload for a subscription is that of its first subscribe detail whose topics match
/// the subscription's own matcher (read as a topic); a detail listing `*` serves as the default.
#[tokio::test]
async fn each_subscription_shows_the_payload_of_the_first_detail_that_matches_it() {
    let app = spawn_app_with(settings).await;
    let exp = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() + 600;
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("at+jwt".into());
    let detail = |topics: Value, payload: Value| json!({ "type": "mercure", "actions": ["subscribe"], "topics": topics, "payload": payload });
    let claims = json!({ "exp": exp, "authorization_details": [
        detail(json!([{ "match": ROOM }]), json!({ "for": "the room" })),
        detail(json!([{ "match": "https://example.com/rooms/:id", "matchType": "URLPattern" }]), json!({ "for": "rooms" })),
        detail(json!([{ "match": "*" }]), json!({ "for": "the rest" })),
    ]});
    let subscriber = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let admin = token(
        &[
            WATCH_ALL,
            "/.well-known/mercure/subscriptions{/kind}{/match}{/subscriber}",
        ],
        None,
    );
    let query = format!(
        "/.well-known/mercure?match={}&matchURLPattern={}&match={}",
        pct(ROOM),
        pct("https://example.com/rooms/:id"),
        pct("https://example.com/lobby")
    );
    let response = app
        .client
        .get(app.url(&query))
        .bearer_auth(&subscriber)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut payloads = std::collections::HashMap::new();
    let deadline = Instant::now() + PATIENCE;
    while payloads.len() < 3 {
        assert!(Instant::now() < deadline, "{payloads:?}");
        let body: Value = get(&app, "/.well-known/mercure/subscriptions", Some(&admin))
            .await
            .json()
            .await
            .unwrap();
        for s in body["subscriptions"].as_array().unwrap() {
            payloads.insert(
                s["match"].as_str().unwrap().to_string(),
                s["payload"]["for"].clone(),
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(payloads[ROOM], "the room");
    assert_eq!(payloads["https://example.com/rooms/:id"], "rooms");
    assert_eq!(payloads["https://example.com/lobby"], "the rest");
    drop(response);
}

/// Redis stops answering (SIGSTOP) while a subscriber leaves: the leave, refused, is written and
/// announced once Redis answers again, and the events replay from `earliest`: the join, then the leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leave_during_a_redis_outage_is_written_and_announced_once_redis_is_back() {
    let redis = RedisServer::start();
    let node = spawn_redis_node_with(&redis, |s| {
        settings(s);
        s.presence.heartbeat_secs = Duration::from_secs(1);
        s.presence.ttl_secs = Duration::from_secs(30);
        s.redis.command_timeout_ms = Duration::from_millis(300);
    })
    .await;
    let admin = token(&[WATCH_ALL], None);
    let leaving = join(&node, ROOM, None).await;
    wait_listed(&node, ROOM, &admin, 1, PATIENCE).await;
    redis.signal("STOP");
    drop(leaving);
    tokio::time::sleep(Duration::from_secs(2)).await;
    redis.signal("CONT");
    wait_listed(&node, ROOM, &admin, 0, PATIENCE).await;
    let path = format!(
        "/.well-known/mercure?topic={}&lastEventID=earliest",
        pct(&format!(
            "/.well-known/mercure/subscriptions/{}{{/subscriber}}",
            pct(ROOM)
        ))
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut watcher = {
            use eventsource_stream::Eventsource;
            let response = node
                .client
                .get(node.url(&path))
                .bearer_auth(&admin)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            Subscriber::from_events(Box::pin(response.bytes_stream().eventsource()))
        };
        let first = next_change(&mut watcher).await;
        assert_eq!(first["active"], true, "{first}");
        // The leave may still be on its way (the heartbeat writes it): look again until it is stored.
        match tokio::time::timeout(Duration::from_millis(500), watcher.next_or_end()).await {
            Ok(Some(event)) => {
                let left: Value = serde_json::from_str(&event.data).unwrap();
                assert_eq!(left["active"], false, "{left}");
                assert_eq!(left["subscriber"], first["subscriber"]);
                break;
            }
            _ => assert!(Instant::now() < deadline, "the leave was never announced"),
        }
    }
}
