//! Redis as it runs in production: data lost by a failover or a restart, Sentinel, replica-acknowledged
//! publishes. Every test runs real `redis-server` (and `redis-sentinel`) processes on free loopback ports.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{id_key, spawn_app_with, Outcome, TestApp, PATIENCE};
use crate::redis_server::{RedisServer, SentinelSetup};

async fn node_on(url: String) -> TestApp {
    spawn_app_with(move |s| {
        s.redis.url = url;
        s.redis.startup_wait_secs = Duration::from_secs(5);
        s.redis.ping_interval_ms = Duration::from_millis(100);
    })
    .await
}

/// Publishes until the node accepts again (its link reconnects after Redis came back).
async fn publish_when_ready(node: &TestApp, topic: &str, data: &str) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let response = node
            .client
            .post(node.url(&format!("/topics/{topic}")))
            .body(data.to_string())
            .send()
            .await
            .expect("publish request");
        if response.status() == 200 {
            let body: serde_json::Value = response.json().await.expect("json answer");
            return body["id"].as_str().expect("an id").to_string();
        }
        assert!(Instant::now() < deadline, "publishing never worked again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the node's `/readyz` says 200 (its pub/sub link is up again).
async fn wait_ready(node: &TestApp) {
    let deadline = Instant::now() + PATIENCE;
    while node
        .client
        .get(node.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "/readyz never said 200 again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A Redis that comes back empty, with a clock behind the ids already handed out (here: the lost
/// primary's clock for the topic ran 10 minutes ahead): new ids still go up, on every node that knows the
/// topic's newest id (node b only heard of it through its pub/sub link), connected streams go on, and a
/// reader resuming from before the newest lost id is told with `herald.gap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_never_go_backwards_and_lost_history_is_announced_after_redis_comes_back_behind() {
    let mut redis = RedisServer::start();
    let (a, b) = (node_on(redis.url()).await, node_on(redis.url()).await);
    let before = a.publish("t", "before").await;
    let ahead = format!("{}-0", id_key(&before).0 + 600_000);
    assert_eq!(
        redis.cli(&["XSETID", "herald:{t}", &ahead]).as_deref(),
        Some("OK")
    );
    let mut connected = a.subscribe(&["t"], None).await;
    let mut on_b = b.subscribe(&["t"], None).await;
    let lost = a.publish("t", "lost").await;
    assert!(id_key(&lost) > id_key(&ahead), "{lost} follows the clock");
    assert_eq!(connected.next().await.data, "lost");
    assert_eq!(on_b.next().await.id, lost, "node b heard of it through Redis");

    redis.restart(); // no persistence: it comes back empty, its clock 10 minutes behind `lost`
    let after = publish_when_ready(&b, "t", "after").await;
    assert!(
        id_key(&after) > id_key(&lost),
        "after the loss, node b handed out {after}, not above {lost} which a client already holds"
    );
    let from_a = publish_when_ready(&a, "t", "after, from a").await;
    assert!(id_key(&from_a) > id_key(&after), "{from_a} > {after}");
    let got = connected.take(2).await;
    assert_eq!(
        got.iter().map(|e| e.data.as_str()).collect::<Vec<_>>(),
        ["after", "after, from a"],
        "the connected stream goes on, in order"
    );

    // A reader that last saw `before` missed `lost`, which Redis no longer has: it is told.
    wait_ready(&b).await;
    let mut resumed = b.subscribe(&["t"], Some(&before)).await;
    let gap = resumed.next().await;
    assert_eq!(gap.event, "herald.gap", "{gap:?}");
    assert_eq!(resumed.next().await.data, "after");
    // A reader that saw `lost` missed nothing: no gap.
    let mut current = b.subscribe(&["t"], Some(&lost)).await;
    assert_eq!(current.next().await.data, "after");
    assert!(
        a.metric("herald_redis_data_lost_total").await + b.metric("herald_redis_data_lost_total").await >= 1
    );
    assert!(b.metric("herald_gaps_total").await >= 1);
}

/// FLUSHALL wipes the streams and the clock: the loss is announced the same way.
#[tokio::test]
async fn a_flushall_is_announced_to_readers_who_resume_across_it() {
    let redis = RedisServer::start();
    let node = node_on(redis.url()).await;
    let first = node.publish("t", "first").await;
    let second = node.publish("t", "second").await;
    assert_eq!(redis.cli(&["FLUSHALL"]).as_deref(), Some("OK"));
    let third = node.publish("t", "third").await;
    assert!(id_key(&third) > id_key(&second));
    let mut resumed = node.subscribe(&["t"], Some(&first)).await;
    assert_eq!(resumed.next().await.event, "herald.gap");
    assert_eq!(resumed.next().await.data, "third");
    let deadline = Instant::now() + PATIENCE;
    while node.metric("herald_redis_data_lost_total").await == 0 {
        assert!(Instant::now() < deadline, "the loss was never counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn sentinel_node(setup: &SentinelSetup, min_replicas: u32) -> TestApp {
    let urls = setup.urls();
    spawn_app_with(move |s| {
        s.redis.sentinels = urls;
        s.redis.sentinel_master = "herald".into();
        s.redis.min_replicas = min_replicas;
        s.redis.startup_wait_secs = Duration::from_secs(10);
        s.redis.command_timeout_ms = Duration::from_millis(1000);
        s.redis.ping_interval_ms = Duration::from_millis(200);
    })
    .await
}

/// One publish of the failover run.
#[derive(Debug, Clone)]
struct Sent {
    topic: usize,
    data: String,
    at: Instant,
    done: Instant,
    status: u16,
    id: Option<(u64, u64)>,
}

const TOPICS: usize = 4;

/// What a subscriber received: (id, data) per event, or a gap notice as id (0, 0) and data "herald.gap".
type Received = Arc<Mutex<Vec<((u64, u64), String)>>>;

fn collect_into(mut sub: crate::helpers::Subscriber, into: Received) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let event = sub.next_or_end().await;
            let Some(event) = event else { return };
            let entry = if event.event == "herald.gap" {
                ((0, 0), "herald.gap".to_string())
            } else {
                (id_key(&event.id), event.data)
            };
            into.lock().expect("lock").push(entry);
        }
    })
}

/// Two nodes on a primary with replicas and three sentinels; 100 subscribers over both nodes; 200
/// publishes/s over both nodes for 10 s; at 4 s the primary loses its replicas' links and, 100 ms later,
/// is killed with SIGKILL, so whatever it acknowledged in between reached no replica.
async fn failover_run(replicas: usize, min_replicas: u32) {
    let mut setup = SentinelSetup::start(replicas);
    let old_port = setup.primary.port;
    let nodes = Arc::new([
        sentinel_node(&setup, min_replicas).await,
        sentinel_node(&setup, min_replicas).await,
    ]);
    let mut received = Vec::new();
    let mut readers = Vec::new();
    for i in 0..100 {
        let topic = format!("f{}", i % TOPICS);
        let sub = nodes[i % 2].subscribe(&[&topic], None).await;
        let into: Received = Arc::default();
        readers.push(collect_into(sub, Arc::clone(&into)));
        received.push((i % TOPICS, into));
    }

    let start = Instant::now();
    let publisher = {
        let nodes = Arc::clone(&nodes);
        tokio::spawn(async move {
            let mut sends = Vec::new();
            for i in 0..2000usize {
                tokio::time::sleep_until((start + Duration::from_millis(5 * i as u64)).into()).await;
                let nodes = Arc::clone(&nodes);
                sends.push(tokio::spawn(async move {
                    let node = &nodes[i % 2];
                    let (topic, data) = (i % TOPICS, format!("m{i}"));
                    let at = Instant::now();
                    let response = node
                        .client
                        .post(node.url(&format!("/topics/f{topic}")))
                        .timeout(Duration::from_secs(5))
                        .body(data.clone())
                        .send()
                        .await;
                    let outcome = Outcome::from_response(data.clone(), response).await;
                    Sent {
                        topic,
                        data,
                        at,
                        done: Instant::now(),
                        status: outcome.status,
                        id: outcome.id.as_deref().map(id_key),
                    }
                }));
            }
            let mut all = Vec::new();
            for send in sends {
                all.push(send.await.expect("publish task"));
            }
            all
        })
    };

    tokio::time::sleep_until((start + Duration::from_secs(4)).into()).await;
    let cut = Instant::now();
    setup.cut_replicas();
    tokio::time::sleep(Duration::from_millis(100)).await;
    setup.primary.kill();
    let killed = Instant::now();
    let promoted = loop {
        if setup.primary_port().is_some_and(|port| port != old_port) {
            break Instant::now();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the sentinels never promoted a replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let sent = publisher.await.expect("publisher");

    let acked: Vec<&Sent> = sent.iter().filter(|s| s.status == 200).collect();
    let count = |status: u16| sent.iter().filter(|s| s.status == status).count();
    assert_eq!(count(0), 0, "every publish was answered");
    let first_after = acked
        .iter()
        .filter(|s| s.done > promoted)
        .map(|s| s.done)
        .min()
        .expect("publishes were accepted after the failover");
    let back_after = first_after.saturating_duration_since(promoted);
    println!(
        "failover (min_replicas = {min_replicas}, {replicas} replicas): promoted {:.2} s after the kill; \
         publishes accepted again {:.0} ms after the promotion; {} acknowledged, {} refused (503), {} \
         outcome unknown (504)",
        promoted.duration_since(killed).as_secs_f64(),
        back_after.as_secs_f64() * 1000.0,
        acked.len(),
        count(503),
        count(504),
    );
    assert!(
        back_after < Duration::from_secs(5),
        "publishing took {back_after:?} to come back"
    );

    // Ids strictly increase across the failover: everything handed out after the promotion is above
    // everything handed out before the kill.
    let before = acked
        .iter()
        .filter(|s| s.done < killed)
        .filter_map(|s| s.id)
        .max();
    let after = acked
        .iter()
        .filter(|s| s.at > promoted)
        .filter_map(|s| s.id)
        .min();
    if let (Some(before), Some(after)) = (before, after) {
        assert!(after > before, "ids went back: {after:?} after {before:?}");
    }

    // Every connected stream stayed open and got events in id order, never twice; with min_replicas,
    // every acknowledged event.
    let mut lost_live = 0;
    for (i, (topic, got)) in received.iter().enumerate() {
        let want: Vec<&&Sent> = acked.iter().filter(|s| s.topic == *topic).collect();
        let deadline = Instant::now() + PATIENCE;
        loop {
            let complete = {
                let got = got.lock().expect("lock");
                want.iter().all(|s| got.iter().any(|(_, d)| *d == s.data))
            };
            if complete || Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = got.lock().expect("lock").clone();
        let ids: Vec<(u64, u64)> = got
            .iter()
            .filter(|(id, _)| *id != (0, 0))
            .map(|(id, _)| *id)
            .collect();
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "subscriber {i}: ids not strictly increasing"
        );
        let missing = want
            .iter()
            .filter(|s| !got.iter().any(|(_, d)| *d == s.data))
            .count();
        if min_replicas > 0 {
            assert_eq!(missing, 0, "subscriber {i} lost {missing} acknowledged events");
        }
        lost_live += missing;
        assert!(
            got.iter().any(|(id, _)| after.is_some_and(|a| *id >= a)),
            "subscriber {i}'s stream did not go on after the failover"
        );
    }

    // A reader resuming from the last event the replicas surely had (acknowledged before their links
    // were cut) gets every acknowledged event after it, or is told it may have missed some.
    for node in nodes.iter() {
        wait_ready(node).await;
    }
    let mut announced = 0;
    let mut lost_history = 0;
    for topic in 0..TOPICS {
        let from = acked
            .iter()
            .filter(|s| s.topic == topic && s.done < cut - Duration::from_millis(50))
            .filter_map(|s| s.id)
            .max()
            .expect("events before the failover");
        let node = &nodes[topic % 2];
        let mut resumed = node
            .subscribe(&[&format!("f{topic}")], Some(&format!("{}-{}", from.0, from.1)))
            .await;
        let want: Vec<&&Sent> = acked
            .iter()
            .filter(|s| s.topic == topic && s.id.is_some_and(|id| id > from))
            .collect();
        let mut got = Vec::new();
        let mut gap = false;
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(500), resumed.next_or_end()).await
        {
            if event.event == "herald.gap" {
                gap = true;
            } else {
                got.push(event.data);
            }
        }
        let missing = want.iter().filter(|s| !got.contains(&s.data)).count();
        lost_history += missing;
        announced += usize::from(gap);
        assert!(
            missing == 0 || gap,
            "topic f{topic}: {missing} acknowledged events vanished without herald.gap"
        );
        if min_replicas > 0 {
            assert_eq!(missing, 0, "topic f{topic}: {missing} acknowledged events lost");
        }
    }
    println!(
        "  acknowledged but lost: {lost_history} from history (announced by herald.gap on {announced} of \
         {TOPICS} resumed topics), {lost_live} missed by connected subscribers"
    );
    for reader in readers {
        reader.abort();
    }
}

/// `min_replicas = 1`: nothing acknowledged is lost, duplicated or reordered across a failover in which the
/// primary's last writes reached no replica; streams stay open; publishing resumes on the new primary.
/// Two replicas, so that the new primary has one left to confirm publishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_with_min_replicas_loses_nothing_acknowledged() {
    failover_run(2, 1).await;
}

/// `min_replicas = 0`: the primary's last acknowledged writes die with it; every one is delivered or
/// announced with herald.gap to readers who resume across it, and ids keep increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_without_min_replicas_announces_what_it_lost() {
    failover_run(1, 0).await;
}

/// A failover the sentinels are asked for (`SENTINEL FAILOVER`): the old primary stays up (a replica,
/// once Sentinel converts it), so nodes must follow `+switch-master` or `-READONLY`, not a lost
/// connection. Streams stay open and nothing acknowledged after the node followed is lost. (A publish
/// racing the switch may still land on the old primary and be lost when it is converted: with
/// `min_replicas` it is answered 504 instead, as the old primary then has no replica.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_follow_a_failover_in_which_the_old_primary_stays_up() {
    let setup = SentinelSetup::start(1);
    let old_port = setup.primary.port;
    let node = sentinel_node(&setup, 0).await;
    let mut sub = node.subscribe(&["t"], None).await;
    let mut acked = vec![node.publish("t", "before").await];
    assert_eq!(
        setup.sentinels[0]
            .cli(&["SENTINEL", "FAILOVER", "herald"])
            .as_deref(),
        Some("OK")
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.primary_port() == Some(old_port) {
        assert!(Instant::now() < deadline, "the sentinels did not fail over");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let switched = Instant::now();
    while node.metric("herald_redis_reconnects_total").await == 0 {
        assert!(Instant::now() < deadline, "the node did not follow the failover");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "the node followed {:?} after the sentinel named the new primary",
        switched.elapsed()
    );
    for i in 0..5 {
        acked.push(publish_when_ready(&node, "t", &format!("after {i}")).await);
    }
    let got = sub.take(acked.len()).await;
    assert_eq!(
        got.iter().map(|e| e.id.clone()).collect::<Vec<_>>(),
        acked,
        "every acknowledged event, once, in order, on the same stream"
    );
    sub.assert_silent(Duration::from_millis(300)).await;
    let on_new: Option<String> = setup.replicas[0].cli(&["XLEN", "herald:{t}"]);
    assert_eq!(on_new.as_deref(), Some("6"), "publishes went to the new primary");
}

/// All sentinels down at start-up: a clear error naming the settings, after `startup_wait_secs`.
#[tokio::test]
async fn all_sentinels_down_at_start_up_is_a_clear_error() {
    let mut settings = herald::config::Settings::defaults().expect("defaults");
    settings.server.port = 0;
    settings.redis.sentinels = vec![
        format!("redis://127.0.0.1:{}", crate::helpers::free_port()),
        format!("redis://127.0.0.1:{}", crate::helpers::free_port()),
    ];
    settings.redis.sentinel_master = "herald".into();
    settings.redis.startup_wait_secs = Duration::from_secs(1);
    let started = Instant::now();
    let Err(error) = herald::startup::Application::build(settings).await else {
        panic!("a node started without any sentinel");
    };
    let message = error.to_string();
    assert!(started.elapsed() >= Duration::from_secs(1), "{message}");
    for part in [
        "no sentinel named the primary of `herald`",
        "redis.sentinels",
        "redis.sentinel_master",
    ] {
        assert!(message.contains(part), "`{part}` missing from: {message}");
    }
}

/// Sentinels that require a password: `redis.sentinel_password` is used to ask them; without it,
/// start-up stops with an error that names the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinels_that_require_a_password_get_sentinel_password() {
    let setup = SentinelSetup::start_with(0, Some("s3ntinel-pa55"));
    let settings = |password: &str| {
        let mut s = herald::config::Settings::defaults().expect("defaults");
        s.server.port = 0;
        s.redis.sentinels = setup.urls();
        s.redis.sentinel_master = "herald".into();
        s.redis.sentinel_password = password.into();
        s.redis.startup_wait_secs = Duration::from_secs(1);
        s
    };
    let Err(error) = herald::startup::Application::build(settings("")).await else {
        panic!("a node asked password-protected sentinels without a password");
    };
    let message = error.to_string();
    // The sentinel's own reason, and the setting to fix.
    assert!(message.contains("Authentication required"), "{message}");
    assert!(message.contains("redis.sentinel_password"), "{message}");
    assert!(!message.contains("s3ntinel-pa55"), "{message}");
    let urls = setup.urls();
    let node = spawn_app_with(move |s| {
        s.redis.sentinels = urls;
        s.redis.sentinel_master = "herald".into();
        s.redis.sentinel_password = "s3ntinel-pa55".into();
    })
    .await;
    node.publish("t", "through the sentinels").await;
}

/// Behind Sentinel, the ACL user and password apply to every connection to the data nodes (commands and
/// the pub/sub link), and a wrong password is named as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_sentinel_data_nodes_are_reached_as_the_acl_user() {
    let setup = SentinelSetup::start(0);
    let node_as = |password: &str| {
        let mut s = herald::config::Settings::defaults().expect("defaults");
        s.server.port = 0;
        s.redis.sentinels = setup.urls();
        s.redis.sentinel_master = "herald".into();
        s.redis.username = "hub".into();
        s.redis.password = password.into();
        s.redis.startup_wait_secs = Duration::from_secs(1);
        s
    };
    let Err(error) = herald::startup::Application::build(node_as("wrong")).await else {
        panic!("a node started with a wrong password");
    };
    let message = error.to_string();
    assert!(message.contains("refused the credentials"), "{message}");
    assert!(
        !message.contains("wrong"),
        "the password is never shown: {message}"
    );
    let urls = setup.urls();
    let node = spawn_app_with(move |s| {
        s.redis.sentinels = urls;
        s.redis.sentinel_master = "herald".into();
        s.redis.username = "hub".into();
        s.redis.password = "hubpass".into();
    })
    .await;
    let mut sub = node.subscribe(&["t"], None).await;
    let id = node.publish("t", "as hub").await;
    assert_eq!(sub.next().await.id, id);
    let clients = setup.primary.cli(&["CLIENT", "LIST"]).unwrap_or_default();
    let as_hub = clients.lines().filter(|l| l.contains(" user=hub ")).count();
    assert!(
        as_hub >= 2,
        "commands and the pub/sub link log in as hub:\n{clients}"
    );
}

/// Sentinels up, primary down and no replica to promote: publishes are refused with 503 and `/readyz`
/// says 503 until the primary is back; then the node recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_that_is_down_is_503_until_it_returns() {
    let mut setup = SentinelSetup::start(0);
    let node = sentinel_node(&setup, 0).await;
    node.publish("t", "first").await;
    setup.primary.kill();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let ready = node.client.get(node.url("/readyz")).send().await.expect("readyz");
        if ready.status() == 503 {
            break;
        }
        assert!(Instant::now() < deadline, "/readyz stayed {}", ready.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = node
        .client
        .post(node.url("/topics/t"))
        .body("while down")
        .send()
        .await
        .expect("publish");
    crate::helpers::assert_problem(refused, 503, "store-unavailable").await;
    setup.primary.restart();
    publish_when_ready(&node, "t", "back").await;
    let deadline = Instant::now() + PATIENCE;
    while node
        .client
        .get(node.url("/readyz"))
        .send()
        .await
        .expect("readyz")
        .status()
        != 200
    {
        assert!(Instant::now() < deadline, "/readyz never said 200 again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `min_replicas = 1`: a 200 means a replica has the event; with the replica stalled (connected, but not
/// answering), a publish is 504 (outcome unknown) after `command_timeout_ms`, and its retry with the
/// same Idempotency-Key, once the replica is back, answers the same id and stores nothing twice. With
/// the replica cut off (the primary knows it is gone), a publish is refused 503 and nothing is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_acknowledged_only_once_a_replica_has_it() {
    let setup = SentinelSetup::start(1);
    let url = setup.primary.url();
    let node = spawn_app_with(move |s| {
        s.redis.url = url;
        s.redis.min_replicas = 1;
        s.redis.command_timeout_ms = Duration::from_millis(500);
    })
    .await;
    let replica = &setup.replicas[0];
    for i in 0..20 {
        node.publish("t", &format!("m{i}")).await;
        // Acknowledged means replicated: the replica has it the moment the 200 arrives.
        assert_eq!(replica.cli(&["XLEN", "herald:{t}"]), Some((i + 1).to_string()));
    }
    replica.signal("STOP");
    let publish = || {
        node.client
            .post(node.url("/topics/t"))
            .header("Idempotency-Key", "k-1")
            .body("while cut off")
            .send()
    };
    let started = Instant::now();
    let unknown = publish().await.expect("publish");
    let problem = crate::helpers::assert_problem(unknown, 504, "outcome-unknown").await;
    assert!(started.elapsed() >= Duration::from_millis(500), "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("replicas"),
        "{problem}"
    );
    replica.signal("CONT");
    let deadline = Instant::now() + PATIENCE;
    let retried = loop {
        let response = publish().await.expect("publish");
        if response.status() == 200 {
            break response.json::<serde_json::Value>().await.expect("json");
        }
        assert!(Instant::now() < deadline, "the retry never succeeded");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(retried["id"].is_string(), "{retried}");
    assert_eq!(
        replica.cli(&["XLEN", "herald:{t}"]).as_deref(),
        Some("21"),
        "stored once"
    );
    // Cut off: the primary drops the replica, and the node refuses at once, writing nothing.
    setup.cut_replicas();
    let deadline = Instant::now() + PATIENCE;
    let refused = loop {
        let response = node
            .client
            .post(node.url("/topics/t"))
            .body("no replica")
            .send()
            .await
            .expect("publish");
        if response.status() == 503 {
            break response;
        }
        assert_ne!(response.status(), 200, "acknowledged with no replica connected");
        assert!(
            Instant::now() < deadline,
            "never refused with the replica cut off"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    crate::helpers::assert_problem(refused, 503, "not-enough-replicas").await;
    let before = setup.primary.cli(&["XLEN", "herald:{t}"]);
    node.client
        .post(node.url("/topics/t"))
        .body("no replica")
        .send()
        .await
        .expect("publish");
    assert_eq!(
        setup.primary.cli(&["XLEN", "herald:{t}"]),
        before,
        "a refused publish wrote nothing"
    );
}

/// `min_replicas = 1` with one replica: once a failover has promoted it, the new primary has no replica
/// left. Every publish is then refused at once (503 `not-enough-replicas`, well inside 100 ms, not after
/// `command_timeout_ms`), before anything is written, and none of them reaches a subscriber.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_too_few_replicas_a_publish_is_refused_at_once_and_never_delivered() {
    let mut setup = SentinelSetup::start(1);
    let old_port = setup.primary.port;
    let node = sentinel_node(&setup, 1).await;
    let mut sub = node.subscribe(&["r"], None).await;
    publish_when_ready(&node, "r", "before").await;
    assert_eq!(sub.next().await.data, "before");
    setup.primary.kill();
    let deadline = Instant::now() + Duration::from_secs(30);
    while setup.primary_port().is_none_or(|port| port == old_port) {
        assert!(
            Instant::now() < deadline,
            "the sentinels never promoted the replica"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Wait until the node talks to the new primary (its publishes stop failing for the dead one).
    let mut refused = 0;
    let mut slowest = Duration::ZERO;
    let mut other = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    while refused < 50 && Instant::now() < until {
        let started = Instant::now();
        let answer = node
            .client
            .post(node.url("/topics/r"))
            .body(format!("refused {refused}"))
            .send()
            .await
            .expect("publish");
        let took = started.elapsed();
        let status = answer.status().as_u16();
        let problem: serde_json::Value = answer.json().await.unwrap_or_default();
        if problem["code"] == "not-enough-replicas" {
            assert_eq!(status, 503, "{problem}");
            assert!(
                problem["detail"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("0 replicas"),
                "{problem}"
            );
            refused += 1;
            slowest = slowest.max(took);
        } else {
            assert_ne!(
                status, 200,
                "a publish was acknowledged with no replica to confirm it: {problem}"
            );
            other.push((status, problem["code"].clone()));
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    println!("refused {refused} at once (slowest {slowest:?}); before that, while the node moved: {other:?}");
    assert_eq!(
        refused, 50,
        "publishes were not refused as not-enough-replicas: {other:?}"
    );
    assert!(slowest < Duration::from_millis(100), "a refusal took {slowest:?}");
    // None of the refused publishes (nor any answered otherwise) reached the subscriber.
    sub.assert_silent(Duration::from_millis(500)).await;
    let stored = setup.primary_port().and_then(|port| {
        setup
            .replicas
            .iter()
            .find(|r| r.port == port)
            .and_then(|r| r.cli(&["XLEN", "herald:{r}"]))
    });
    assert_eq!(stored.as_deref(), Some("1"), "only the first event is stored");
}
