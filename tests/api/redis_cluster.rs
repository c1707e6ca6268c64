//! Herald on a real Redis Cluster (6 `redis-server --cluster-enabled yes`, 3 primaries with a replica
//! each) started by every test: topics on all three shards, sharded pub/sub, a primary killed, a slot
//! moved while it is busy.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::helpers::{assert_exact, pct, spawn_app_with, Outcome, Subscriber, TestApp};
use crate::redis_server::{key_slot, ClusterSetup};

async fn cluster_node(setup: &ClusterSetup, min_replicas: u32) -> TestApp {
    let urls = setup.urls();
    spawn_app_with(move |s| {
        s.redis.cluster_nodes = urls;
        s.redis.min_replicas = min_replicas;
        s.redis.startup_wait_secs = Duration::from_secs(20);
        s.redis.command_timeout_ms = Duration::from_millis(1500);
        s.redis.ping_interval_ms = Duration::from_millis(200);
    })
    .await
}

/// `per_shard` topics on each of the 3 shards (the first candidates that land there), the IRI first
/// wherever it lands.
fn spread_topics(setup: &ClusterSetup, per_shard: usize) -> Vec<String> {
    let primaries = setup.primaries();
    let mut by_shard: HashMap<u16, Vec<String>> = HashMap::new();
    let candidates =
        std::iter::once("https://example.com/books/1".to_string()).chain((0..200).map(|n| format!("c{n}")));
    for topic in candidates {
        let owner = setup.owner(key_slot(&format!("herald:{{{topic}}}")));
        let on = by_shard.entry(owner).or_default();
        if on.len() < per_shard {
            on.push(topic);
        }
    }
    let mut topics = Vec::new();
    for port in primaries {
        topics.extend(by_shard.remove(&port).unwrap_or_default());
    }
    assert_eq!(topics.len(), 3 * per_shard, "topics on every shard: {topics:?}");
    topics
}

async fn subscribe_all(node: &TestApp, topics: &[String]) -> Subscriber {
    let query: Vec<String> = topics.iter().map(|t| format!("topic={}", pct(t))).collect();
    node.subscribe_query(&query.join("&"), None).await
}

async fn publish(node: &TestApp, topic: &str, data: String) -> Outcome {
    let response = node
        .client
        .post(node.url(&format!("/topics/{}", pct(topic))))
        .body(data.clone())
        .send()
        .await;
    Outcome::from_response(data, response).await
}

/// Checks a multi-topic stream's events per topic: `outcomes[t]` are the publishes to `topics[t]`.
fn assert_exact_per_topic(
    who: &str,
    received: &[eventsource_stream::Event],
    outcomes: &[Vec<Outcome>],
    topics: &[String],
) {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    for (t, topic) in topics.iter().enumerate() {
        let mine: Vec<eventsource_stream::Event> = received
            .iter()
            .filter(|e| outcomes[t].iter().any(|o| o.data == e.data))
            .cloned()
            .collect();
        assert_exact(
            &format!("{who}, topic {topic}"),
            &mine,
            &outcomes[t],
            &names,
            topic,
        );
    }
}

/// Reads a stream as it comes (a client that stops reading is cut off as a slow consumer), until
/// `done` is set and it has been quiet for 2 s since; each event with when it arrived.
fn collect(
    mut sub: Subscriber,
    done: Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(eventsource_stream::Event, Instant)>> {
    tokio::spawn(async move {
        let mut got = Vec::new();
        let mut quiet_since = Instant::now();
        loop {
            match tokio::time::timeout(Duration::from_millis(200), sub.next_or_end()).await {
                Ok(Some(event)) => {
                    got.push((event, Instant::now()));
                    quiet_since = Instant::now();
                }
                Ok(None) => return got,
                Err(_) => {
                    let finished = done.load(std::sync::atomic::Ordering::Acquire);
                    if finished && quiet_since.elapsed() > Duration::from_secs(2) {
                        return got;
                    }
                }
            }
        }
    })
}

/// Two nodes on a 3-shard Cluster; single-topic streams of 6 topics (an IRI among them) spread over the
/// shards on both nodes, and 6-topic streams; publishes through both nodes and through `redis-cli -c`:
/// every stream gets exactly what was published. A 6-topic stream cut off mid-run and resumed on the
/// other node with its last (composite) id gets exactly the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_delivers_exactly_over_all_shards_and_resumes_a_six_topic_stream() {
    let setup = ClusterSetup::start();
    let (a, b) = (cluster_node(&setup, 0).await, cluster_node(&setup, 0).await);
    let topics = spread_topics(&setup, 2);
    let mut singles = Vec::new();
    for topic in &topics {
        for node in [&a, &b] {
            let sub = node.subscribe_query(&format!("topic={}", pct(topic)), None).await;
            singles.push((topic.clone(), sub));
        }
    }
    let mut whole = subscribe_all(&a, &topics).await;
    let mut cut = Some(subscribe_all(&b, &topics).await);

    let mut outcomes: Vec<Vec<Outcome>> = vec![Vec::new(); topics.len()];
    let mut cut_at = None;
    for i in 0..240usize {
        let t = i % topics.len();
        let data = format!("m{i}");
        let outcome = match i % 3 {
            0 => publish(&a, &topics[t], data).await,
            1 => publish(&b, &topics[t], data).await,
            _ => {
                let key = format!("herald:{{{}}}", topics[t]);
                let id = setup.cli_c(&["FCALL", "herald_publish", "1", &key, &data]);
                assert!(
                    id.as_ref().is_some_and(|id| id.contains('-')),
                    "redis-cli -c FCALL: {id:?}"
                );
                Outcome {
                    data,
                    status: 200,
                    id,
                }
            }
        };
        assert_eq!(outcome.status, 200, "publish {i}");
        outcomes[t].push(outcome);
        if i == 119 {
            let mut stream = cut.take().expect("the stream to cut");
            let got = stream.take(120).await;
            assert_exact_per_topic("the stream cut off", &got, &outcomes, &topics);
            cut_at = got.last().map(|e| e.id.clone());
        }
    }

    for (topic, sub) in &mut singles {
        let t = topics.iter().position(|x| x == topic).unwrap_or_default();
        let got = sub.take(outcomes[t].len()).await;
        assert_exact(
            &format!("single {topic}"),
            &got,
            &outcomes[t],
            &[topic.as_str()],
            topic,
        );
        sub.assert_silent(Duration::from_millis(100)).await;
    }
    let got = whole.take(240).await;
    assert_exact_per_topic("6-topic stream", &got, &outcomes, &topics);

    // Resumed on the other node from the composite id: exactly the second half, per topic.
    let last = cut_at.expect("the cut stream's last id");
    assert!(last.contains('.'), "a composite id: {last}");
    let query: Vec<String> = topics.iter().map(|t| format!("topic={}", pct(t))).collect();
    let mut resumed = a.subscribe_query(&query.join("&"), Some(&last)).await;
    let rest = resumed.take(120).await;
    let second_half: Vec<Vec<Outcome>> = outcomes.iter().map(|o| o[20..].to_vec()).collect();
    assert_exact_per_topic("resumed 6-topic stream", &rest, &second_half, &topics);
    resumed.assert_silent(Duration::from_millis(300)).await;

    // A primary without the library (as one that joined later): the first publish there loads it on
    // every primary and is stored once.
    let owner = setup.owner(key_slot(&format!("herald:{{{}}}", topics[0])));
    assert_eq!(
        setup.node(owner).cli(&["FUNCTION", "FLUSH"]).as_deref(),
        Some("OK")
    );
    let outcome = publish(&b, &topics[0], "after the flush".into()).await;
    assert_eq!(outcome.status, 200, "published on a primary that had no library");
    assert_eq!(
        setup
            .node(owner)
            .cli(&["FCALL", "herald_version", "0"])
            .as_deref(),
        include_str!("../../migrations/herald.lua")
            .lines()
            .find_map(|l| l.strip_prefix("local VERSION = '")?.strip_suffix('\''))
    );
    assert_eq!(resumed.next().await.data, "after the flush");
}

/// Publishes 200/s for 8 s over both nodes to 6 topics on the 3 shards, each publish `min_replicas = 1`;
/// at 2 s the primary of the first topic's shard is killed with SIGKILL, and at 4 s started again (it
/// comes back as the replica of the node that took over). Every stream (single-topic and 6-topic, on
/// both nodes) gets every acknowledged event exactly once, in order, nothing twice (not even a publish
/// answered 504 or 503); publishes to that shard are acknowledged again once it has a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_cluster_primary_loses_nothing_acknowledged_with_min_replicas() {
    let mut setup = ClusterSetup::start();
    let nodes = Arc::new([cluster_node(&setup, 1).await, cluster_node(&setup, 1).await]);
    let topics = Arc::new(spread_topics(&setup, 2));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for topic in topics.iter() {
            let sub = node.subscribe_query(&format!("topic={}", pct(topic)), None).await;
            streams.push((
                format!("node {n}, {topic}"),
                vec![topic.clone()],
                collect(sub, Arc::clone(&done)),
            ));
        }
        let sub = subscribe_all(node, &topics).await;
        streams.push((
            format!("node {n}, 6 topics"),
            topics.to_vec(),
            collect(sub, Arc::clone(&done)),
        ));
    }
    let victim = setup.owner(key_slot(&format!("herald:{{{}}}", topics[0])));
    let healthy: Vec<String> = topics
        .iter()
        .filter(|t| setup.owner(key_slot(&format!("herald:{{{t}}}"))) != victim)
        .cloned()
        .collect();
    let start = Instant::now();
    let publisher = {
        let (nodes, topics) = (Arc::clone(&nodes), Arc::clone(&topics));
        tokio::spawn(async move {
            let mut sends = Vec::new();
            for i in 0..1600usize {
                tokio::time::sleep_until((start + Duration::from_millis(5 * i as u64)).into()).await;
                let (nodes, topics) = (Arc::clone(&nodes), Arc::clone(&topics));
                sends.push(tokio::spawn(async move {
                    let t = i % topics.len();
                    let at = start.elapsed();
                    let outcome = publish(&nodes[i % 2], &topics[t], format!("m{i}")).await;
                    (t, at, start.elapsed() - at, outcome)
                }));
            }
            let mut outcomes: Vec<Vec<(Duration, Outcome)>> = vec![Vec::new(); topics.len()];
            let mut took = Vec::new();
            for send in sends {
                let (t, at, answered_in, outcome) = send.await.expect("publish task");
                took.push((t, at, answered_in));
                outcomes[t].push((at, outcome));
            }
            (outcomes, took)
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    setup.node_mut(victim).kill();
    let killed = start.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    setup.node_mut(victim).restart();
    let back = start.elapsed();
    let (mut timed, took) = publisher.await.expect("publisher");
    // The shard takes publishes again once its new primary has a replica (the old one, back): publish
    // there until one is acknowledged (it must reach every stream too).
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0.. {
        let outcome = publish(&nodes[n % 2], &topics[0], format!("recovered {n}")).await;
        let acknowledged = outcome.status == 200;
        timed[0].push((start.elapsed(), outcome));
        if acknowledged {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead primary's shard never acknowledged again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let outcomes: Vec<Vec<Outcome>> = timed
        .iter()
        .map(|o| o.iter().map(|(_, o)| o.clone()).collect())
        .collect();
    let count = |status: u16| outcomes.iter().flatten().filter(|o| o.status == status).count();
    println!(
        "killed primary {victim} at {killed:?}, back at {back:?}: {} acknowledged, {} unknown (504), {} refused (503), {} no answer",
        count(200),
        count(504),
        count(503),
        count(0)
    );
    for (t, sent) in timed.iter().enumerate() {
        let unknown: Vec<_> = sent
            .iter()
            .filter(|(_, o)| o.status != 200)
            .map(|(at, _)| at)
            .collect();
        println!(
            "{}: {} not acknowledged, from {:?} to {:?}",
            topics[t],
            unknown.len(),
            unknown.first(),
            unknown.last()
        );
    }
    assert!(
        timed[0].iter().any(|(at, o)| *at > back && o.status == 200),
        "publishes to the dead primary's shard were acknowledged again after the failover"
    );
    // Delivery delay of the other shards' topics (publish sent to event received) while the dead
    // primary's shard could not deliver: most of what they published in the 3 s after the kill must
    // arrive within a second, before that shard delivers again (the whole link starting over paused
    // them all for 3.3 s).
    let sent_at: HashMap<&str, Duration> = timed
        .iter()
        .flatten()
        .filter(|(_, o)| o.status == 200)
        .map(|(at, o)| (o.data.as_str(), *at))
        .collect();
    let mut received = Vec::new();
    for (who, mine, stream) in streams {
        received.push((who, mine, stream.await.expect("reader")));
    }
    // Single-topic streams: each is on one shard.
    let single = |mine: &[String]| match mine {
        [topic] => Some(healthy.contains(topic)),
        _ => None,
    };
    let dead_shard_back = received
        .iter()
        .filter(|(_, mine, _)| single(mine) == Some(false))
        .flat_map(|(_, _, got)| got)
        .filter(|(event, _)| {
            sent_at
                .get(event.data.as_str())
                .is_some_and(|sent| *sent > killed)
        })
        .map(|(_, arrived)| arrived.duration_since(start))
        .min()
        .expect("the dead primary's shard delivered again");
    let (mut before, mut during) = (Vec::new(), Vec::new());
    for (who, mine, got) in &received {
        if single(mine) != Some(true) {
            continue;
        }
        let (mut sent_during, mut prompt) = (0, 0);
        for (event, arrived) in got {
            let Some(sent) = sent_at.get(event.data.as_str()) else {
                continue;
            };
            let arrived = arrived.duration_since(start);
            let delay = arrived.saturating_sub(*sent);
            if *sent < killed {
                before.push(delay);
            } else if *sent < killed + Duration::from_secs(3) {
                during.push(delay);
                sent_during += 1;
                if delay < Duration::from_secs(1) && arrived < dead_shard_back {
                    prompt += 1;
                }
            }
        }
        assert!(
            prompt * 2 > sent_during,
            "{who}: its shard is healthy, yet only {prompt} of the {sent_during} events published in the 3 s \
             after the kill arrived within a second, while the other shard failed over"
        );
    }
    let quantiles = |mut d: Vec<Duration>| {
        d.sort();
        let at = |q: f64| {
            d.get(((d.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or_default()
        };
        format!(
            "{} events, p50 {:?}, p99 {:?}, max {:?}",
            d.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        )
    };
    let answered_in = |from: Duration, to: Duration| {
        let healthy_topic = |t: usize| healthy.contains(&topics[t]);
        quantiles(
            took.iter()
                .filter(|(t, at, _)| healthy_topic(*t) && *at >= from && *at < to)
                .map(|(_, _, d)| *d)
                .collect(),
        )
    };
    println!(
        "other shards' delivery delay (publish sent to event received), single-topic streams: before the kill {}; first 3 s after it {}; the dead shard's topics delivered again at {dead_shard_back:?}",
        quantiles(before),
        quantiles(during)
    );
    println!(
        "other shards' publishes answered in: before the kill {}; first 3 s after it {}",
        answered_in(Duration::ZERO, killed),
        answered_in(killed, killed + Duration::from_secs(3))
    );
    let mut results = Vec::new();
    for (who, mine, got) in received {
        let got: Vec<_> = got.into_iter().map(|(e, _)| e).collect();
        let missing: Vec<&str> = mine
            .iter()
            .flat_map(|topic| {
                let t = topics.iter().position(|x| x == topic).unwrap_or_default();
                outcomes[t]
                    .iter()
                    .filter(|o| o.status == 200)
                    .map(|o| o.data.as_str())
            })
            .filter(|data| !got.iter().any(|e| e.data == *data))
            .collect();
        println!("{who}: {} received, missing acknowledged {missing:?}", got.len());
        results.push((who, mine, got));
    }
    for (who, mine, got) in results {
        let picked: Vec<Vec<Outcome>> = mine
            .iter()
            .map(|topic| {
                let t = topics.iter().position(|x| x == topic).unwrap_or_default();
                outcomes[t].clone()
            })
            .collect();
        assert_exact_per_topic(&who, &got, &picked, &mine);
    }
}

/// A topic whose slot is the first of a primary's slots (what `redis-cli --cluster reshard` moves first
/// from that primary), and that primary's port.
fn topic_on_first_slot(setup: &ClusterSetup) -> (String, u16, u16) {
    let mut ranges = setup.slot_ranges();
    ranges.sort();
    let (first, _, port) = ranges[0];
    let topic = (0..2_000_000)
        .map(|n| format!("busy-{n}"))
        .find(|t| key_slot(&format!("herald:{{{t}}}")) == first)
        .expect("a topic on the slot");
    (topic, first, port)
}

/// `redis-cli --cluster reshard` moves a busy topic's slot to another shard while both nodes publish to
/// it 300 times a second (half of them with an Idempotency-Key, so the slot holds several keys and is
/// moved in several batches): every stream gets every acknowledged event exactly once, in order, and
/// the topic is published to and read on its new shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_a_busy_topics_slot_loses_and_repeats_nothing() {
    let setup = ClusterSetup::start();
    let nodes = Arc::new([cluster_node(&setup, 0).await, cluster_node(&setup, 0).await]);
    let (busy, slot, from) = topic_on_first_slot(&setup);
    let to = setup
        .primaries()
        .into_iter()
        .find(|p| *p != from)
        .expect("another primary");
    let others = spread_topics(&setup, 1);
    let mut topics = vec![busy.clone()];
    topics.extend(others);
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        let sub = node.subscribe_query(&format!("topic={busy}"), None).await;
        streams.push((
            format!("node {n}, {busy}"),
            vec![busy.clone()],
            collect(sub, Arc::clone(&done)),
        ));
        let sub = subscribe_all(node, &topics).await;
        streams.push((
            format!("node {n}, 4 topics"),
            topics.clone(),
            collect(sub, Arc::clone(&done)),
        ));
    }
    let start = Instant::now();
    let publisher = {
        let (nodes, busy) = (Arc::clone(&nodes), busy.clone());
        tokio::spawn(async move {
            let mut sends = Vec::new();
            for i in 0..1500usize {
                tokio::time::sleep_until((start + Duration::from_millis(10 * i as u64 / 3)).into()).await;
                let (nodes, busy) = (Arc::clone(&nodes), busy.clone());
                sends.push(tokio::spawn(async move {
                    let node = &nodes[i % 2];
                    let data = format!("m{i}");
                    let mut request = node
                        .client
                        .post(node.url(&format!("/topics/{busy}")))
                        .body(data.clone());
                    if i % 2 == 0 {
                        request = request.header("Idempotency-Key", format!("k{i}"));
                    }
                    (
                        start.elapsed(),
                        Outcome::from_response(data, request.send().await).await,
                    )
                }));
            }
            let mut outcomes = Vec::new();
            for send in sends {
                outcomes.push(send.await.expect("publish task"));
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (from_id, to_id) = (setup.id_of(from), setup.id_of(to));
    let seed = format!("127.0.0.1:{from}");
    let moved_at = start.elapsed();
    let reshard = tokio::task::spawn_blocking(move || {
        std::process::Command::new("redis-cli")
            .args([
                "--cluster",
                "reshard",
                &seed,
                "--cluster-from",
                &from_id,
                "--cluster-to",
                &to_id,
            ])
            .args(["--cluster-slots", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli runs")
    })
    .await
    .expect("reshard");
    let moved = start.elapsed();
    assert!(
        reshard.status.success(),
        "redis-cli --cluster reshard: {}{}",
        String::from_utf8_lossy(&reshard.stdout),
        String::from_utf8_lossy(&reshard.stderr)
    );
    let timed = publisher.await.expect("publisher");
    done.store(true, std::sync::atomic::Ordering::Release);
    assert_eq!(setup.owner(slot), to, "the busy topic's slot {slot} moved");
    assert_eq!(
        setup
            .node(to)
            .cli(&["EXISTS", &format!("herald:{{{busy}}}")])
            .as_deref(),
        Some("1")
    );
    let outcomes: Vec<Outcome> = timed.iter().map(|(_, o)| o.clone()).collect();
    let count = |status: u16| outcomes.iter().filter(|o| o.status == status).count();
    println!(
        "moved slot {slot} from {from} to {to} between {moved_at:?} and {moved:?}: {} acknowledged, {} \
         unknown (504), {} refused (503)",
        count(200),
        count(504),
        count(503)
    );
    assert!(
        timed.iter().any(|(at, o)| *at > moved && o.status == 200),
        "publishes were acknowledged after the move"
    );
    let mut all: Vec<Vec<Outcome>> = vec![outcomes];
    all.extend(topics[1..].iter().map(|_| Vec::new()));
    for (who, mine, stream) in streams {
        let got: Vec<_> = stream
            .await
            .expect("reader")
            .into_iter()
            .map(|(e, _)| e)
            .collect();
        let picked: Vec<Vec<Outcome>> = mine
            .iter()
            .map(|topic| all[topics.iter().position(|x| x == topic).unwrap_or_default()].clone())
            .collect();
        assert_exact_per_topic(&who, &got, &picked, &mine);
    }
}

/// Mercure on a Cluster: an update of two topics on two shards reaches a subscriber of both once, and a
/// resume from its id on the other node replays exactly what followed in each; pattern selectors,
/// which sharded channels cannot serve, are refused with a sentence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_mercure_and_resumes_from_a_publishers_id_on_every_shard() {
    let setup = ClusterSetup::start();
    let (a, b) = (cluster_node(&setup, 0).await, cluster_node(&setup, 0).await);
    let topics = spread_topics(&setup, 1);
    let (t0, t1) = (&topics[0], &topics[1]);
    let hub = |topics: &[&String]| -> String {
        let query: Vec<String> = topics.iter().map(|t| format!("topic={}", pct(t))).collect();
        format!("/.well-known/mercure?{}", query.join("&"))
    };
    let publish = |node: &TestApp, form: String| {
        node.client
            .post(node.url("/.well-known/mercure"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
    };
    let mut live = b.subscribe_at(&hub(&[t0, t1]), None).await;
    let both = format!("topic={}&topic={}&data=both&id=c-1", pct(t0), pct(t1));
    for form in [
        both,
        format!("topic={}&data=two&id=c-2", pct(t0)),
        format!("topic={}&data=three&id=c-3", pct(t1)),
    ] {
        let response = publish(&a, form).await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let ids = |events: Vec<eventsource_stream::Event>| -> Vec<String> {
        events.into_iter().map(|e| e.id).collect()
    };
    let mut got = ids(live.take(3).await);
    assert_eq!(got.remove(0), "c-1");
    got.sort();
    assert_eq!(got, ["c-2", "c-3"]);
    live.assert_silent(Duration::from_millis(400)).await;

    let mut resumed = a
        .subscribe_at(&format!("{}&lastEventID=c-1", hub(&[t0, t1])), None)
        .await;
    let mut got = ids(resumed.take(2).await);
    got.sort();
    assert_eq!(got, ["c-2", "c-3"]);
    resumed.assert_silent(Duration::from_millis(400)).await;

    let refused = a
        .client
        .get(a.url("/.well-known/mercure?topic=*"))
        .send()
        .await
        .unwrap();
    let problem = crate::helpers::assert_problem(refused, 400, "bad-request").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("Cluster"),
        "{problem}"
    );
}

/// Presence on a Cluster: each topic's subscriptions live on its own shard and the list of all on one;
/// two nodes list 3 + 2 subscribers of a topic as 5 from either, count them on 2 nodes, and drop one
/// that leaves and a gracefully stopped node's at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_lists_who_is_subscribed_on_every_shard_from_either_node() {
    const SECRET: &str = "cluster-presence-secret-cluster-presence-secret";
    let setup = ClusterSetup::start();
    let node = || {
        let urls = setup.urls();
        spawn_app_with(move |s| {
            s.redis.cluster_nodes = urls;
            s.redis.startup_wait_secs = Duration::from_secs(20);
            s.presence.enabled = true;
            s.auth.hs_secret = SECRET.into();
        })
    };
    let (a, b) = (node().await, node().await);
    let claims = herald::auth::claims(
        vec![],
        vec!["/.well-known/mercure/subscriptions{/topic}{/subscriber}".into()],
        600,
        None,
    );
    let admin = herald::auth::mint(SECRET, &claims).unwrap();
    let topics = spread_topics(&setup, 1);
    let of = |topic: &str| format!("/.well-known/mercure/subscriptions/{}", pct(topic));
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for topic in &topics[..3] {
        for _ in 0..3 {
            on_a.push(
                a.subscribe_at(&format!("/.well-known/mercure?topic={}", pct(topic)), None)
                    .await,
            );
        }
        for _ in 0..2 {
            on_b.push(
                b.subscribe_at(&format!("/.well-known/mercure?topic={}", pct(topic)), None)
                    .await,
            );
        }
    }
    for topic in &topics[..3] {
        wait_listed(&a, &admin, &of(topic), 5).await;
        wait_listed(&b, &admin, &of(topic), 5).await;
    }
    wait_listed(&a, &admin, "/.well-known/mercure/subscriptions", 15).await;
    let count: serde_json::Value = a
        .client
        .get(a.url(&format!("/topics/{}/presence", pct(&topics[0]))))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(count["subscribers"], 5, "{count}");
    assert_eq!(count["nodes"], 2, "{count}");
    drop(on_a.remove(0));
    wait_listed(&b, &admin, &of(&topics[0]), 4).await;
    a.shutdown.run().await;
    drop(on_a);
    for topic in &topics[..3] {
        assert_eq!(listed(&b, &admin, &of(topic)).await, 2, "{topic}");
    }
}

async fn listed(app: &TestApp, token: &str, path: &str) -> usize {
    let response = app
        .client
        .get(app.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: serde_json::Value = response.json().await.unwrap();
    body["subscriptions"].as_array().unwrap().len()
}

/// Polls until `path` lists `n` subscriptions (the writes follow a stream's start by a moment).
async fn wait_listed(app: &TestApp, token: &str, path: &str, n: usize) {
    let deadline = Instant::now() + crate::helpers::PATIENCE;
    loop {
        let got = listed(app, token, path).await;
        if got == n {
            return;
        }
        assert!(Instant::now() < deadline, "{path}: {got} listed, not {n}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
