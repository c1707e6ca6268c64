//! Failure isolation: a node cut off from Redis (a proxy the test controls goes silent, as a network
//! partition does) says so, refuses at once, ends its streams after the grace, and its clients resume
//! on a node that still reaches Redis with nothing lost or doubled.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::helpers::{assert_exact, read_until, spawn_app_with, Outcome, TestApp, PATIENCE};
use crate::redis_server::RedisServer;

/// A TCP proxy on a free loopback port in front of `upstream`. While cut, it forwards nothing either
/// way and answers nothing (no FIN, no RST): what a node sees when the network between it and Redis
/// goes away. New connections are accepted and then left waiting, like a SYN into a black hole.
struct CutProxy {
    port: u16,
    cut: Arc<AtomicBool>,
}

impl CutProxy {
    async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let port = listener.local_addr().expect("proxy address").port();
        let cut = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&cut);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let cut = Arc::clone(&flag);
                tokio::spawn(async move {
                    wait_healed(&cut).await;
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, Arc::clone(&cut)));
                    tokio::spawn(pump(server_read, client_write, cut));
                });
            }
        });
        CutProxy { port, cut }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::Release);
    }
}

async fn wait_healed(cut: &AtomicBool) {
    while cut.load(Ordering::Acquire) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Copies one direction; what arrives while cut is held until the cut heals.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        wait_healed(&cut).await;
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        wait_healed(&cut).await;
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A node on Redis, through `url`, with a command timeout long enough that a refusal that waited for it
/// cannot pass for a fast one.
async fn node(url: String) -> TestApp {
    spawn_app_with(move |s| {
        s.redis.url = url;
        s.redis.startup_wait_secs = Duration::from_secs(5);
        s.redis.command_timeout_ms = Duration::from_secs(5);
    })
    .await
}

/// Everything a subscriber gets until publishing is done and then nothing more comes for a while.
async fn read_until_done(
    sub: &mut crate::helpers::Subscriber,
    done: &AtomicBool,
) -> Vec<(eventsource_stream::Event, Instant)> {
    let mut got = Vec::new();
    loop {
        got.extend(sub.until_end_or_quiet(Duration::from_millis(1000)).await);
        if done.load(Ordering::Acquire) {
            return got;
        }
    }
}

async fn ready(node: &TestApp) -> u16 {
    match node.client.get(node.url("/readyz")).send().await {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// One publish with its data as Idempotency-Key, so a retry elsewhere of an unknown outcome stores it once.
async fn publish(node: &TestApp, data: &str) -> (Outcome, Duration) {
    let started = Instant::now();
    let response = node
        .client
        .post(node.url("/topics/iso"))
        .header("content-type", "text/plain")
        .header("idempotency-key", data)
        .body(data.to_string())
        .send()
        .await;
    let outcome = Outcome::from_response(data.to_string(), response).await;
    (outcome, started.elapsed())
}

/// Node `a` reaches Redis through a proxy that goes silent for 6 s; node `b` reaches it directly. `a`'s
/// subscribers must see their streams end (with a `retry:`), resume on `b` with their Last-Event-ID and
/// end up with every acknowledged event exactly once; `a` must turn unready and refuse publishes without
/// waiting for its 5 s command timeout while it is cut off; `b`'s subscriber sees no interruption.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_redis_hands_its_subscribers_to_another_node() {
    let redis = RedisServer::start();
    let proxy = CutProxy::start(redis.port).await;
    let a = node(proxy.url()).await;
    let b = node(redis.url()).await;

    // Raw, to see the stream's last frames; and three that follow the stream to `b` when it ends.
    let mut raw = TcpStream::connect(("127.0.0.1", a.port))
        .await
        .expect("connect to a");
    raw.write_all(b"GET /events?topic=iso HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .expect("request");
    let mut raw_seen = Vec::new();
    read_until(&mut raw, &mut raw_seen, "retry:").await;
    let mut movers = Vec::new();
    for _ in 0..3 {
        movers.push(a.subscribe(&["iso"], None).await);
    }
    let mut control = b.subscribe(&["iso"], None).await;

    let cut_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let healed = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));

    let publishing = {
        let (a, b, cut_at, done) = (&a, &b, Arc::clone(&cut_at), Arc::clone(&done));
        async move {
            let mut outcomes: Vec<(Outcome, Instant)> = Vec::new();
            let mut fast_refusals = Vec::new();
            let mut n = 0u32;
            while !done.load(Ordering::Acquire) {
                let data = format!("m{n}");
                // Alternating between the nodes; what one refuses (or leaves unknown) goes to the other.
                let (first, second) = if n.is_multiple_of(2) { (a, b) } else { (b, a) };
                let (mut outcome, took) = publish(first, &data).await;
                if outcome.status != 200 {
                    if std::ptr::eq(first, a) && outcome.status == 503 && cut_at.lock().unwrap().is_some() {
                        fast_refusals.push(took);
                    }
                    outcome = publish(second, &data).await.0;
                    if outcome.status != 200 {
                        outcome = publish(b, &data).await.0;
                    }
                }
                outcomes.push((outcome, Instant::now()));
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (outcomes, fast_refusals)
        }
    };

    let cutting = {
        let (a, proxy, cut_at, healed, done) = (
            &a,
            &proxy,
            Arc::clone(&cut_at),
            Arc::clone(&healed),
            Arc::clone(&done),
        );
        async move {
            tokio::time::sleep(Duration::from_millis(800)).await;
            proxy.set_cut(true);
            let at = Instant::now();
            *cut_at.lock().unwrap() = Some(at);
            let mut unready_after = None;
            while at.elapsed() < Duration::from_secs(6) {
                if unready_after.is_none() && ready(a).await == 503 {
                    unready_after = Some(at.elapsed());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            proxy.set_cut(false);
            healed.store(true, Ordering::Release);
            let deadline = Instant::now() + PATIENCE;
            while ready(a).await != 200 {
                assert!(
                    Instant::now() < deadline,
                    "node a never became ready again after the heal"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let ready_again_after = at.elapsed();
            tokio::time::sleep(Duration::from_millis(500)).await;
            done.store(true, Ordering::Release);
            (unready_after, ready_again_after)
        }
    };

    // Each mover reads `a` until its stream ends, then resumes on `b` from its last id.
    let moving = {
        let (b, cut_at, done) = (&b, Arc::clone(&cut_at), Arc::clone(&done));
        futures_util::future::join_all(movers.into_iter().map(move |mut sub| {
            let (cut_at, done) = (Arc::clone(&cut_at), Arc::clone(&done));
            async move {
                let mut got: Vec<(eventsource_stream::Event, Instant)> = Vec::new();
                let reading = async {
                    while let Some(event) = sub.next_or_end().await {
                        got.push((event, Instant::now()));
                    }
                };
                let ended = tokio::time::timeout(Duration::from_secs(15), reading).await;
                let ended_after = match ended {
                    Ok(()) => cut_at.lock().unwrap().map(|at| at.elapsed()),
                    Err(_) => None,
                };
                let last = got.last().map(|(e, _)| e.id.clone());
                let mut resumed = b.subscribe(&["iso"], last.as_deref()).await;
                got.extend(read_until_done(&mut resumed, &done).await);
                (got, ended_after)
            }
        }))
    };
    let raw_ending = async {
        // The node writes its goodbye and closes: read to the end.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(15), raw.read_to_end(&mut rest)).await;
        raw_seen.extend(rest);
        String::from_utf8_lossy(&raw_seen).into_owned()
    };
    let controlled = async {
        let got = read_until_done(&mut control, &done).await;
        got.into_iter().map(|(e, _)| e).collect::<Vec<_>>()
    };

    let ((outcomes, fast_refusals), (unready_after, ready_again_after), moved, raw_text, control_got) =
        tokio::join!(publishing, cutting, moving, raw_ending, controlled);
    let cut_at = cut_at.lock().unwrap().expect("the cut happened");

    let acknowledged: Vec<&(Outcome, Instant)> = outcomes.iter().filter(|(o, _)| o.status == 200).collect();
    assert!(
        outcomes.iter().all(|(o, _)| o.status == 200),
        "every publish was stored on one node or the other: {:?}",
        outcomes
            .iter()
            .filter(|(o, _)| o.status != 200)
            .map(|(o, _)| o)
            .collect::<Vec<_>>()
    );
    let plain: Vec<Outcome> = outcomes.iter().map(|(o, _)| o.clone()).collect();
    let unready_after = unready_after.expect("/readyz on the cut node turned 503 during the cut");
    assert!(
        !fast_refusals.is_empty(),
        "the cut node refused publishes while it was cut off"
    );
    let slowest_refusal = fast_refusals.iter().max().copied().unwrap_or_default();
    let known_down_refusals: Vec<&Duration> = fast_refusals
        .iter()
        .filter(|d| **d < Duration::from_secs(1))
        .collect();
    assert!(
        known_down_refusals.len() * 2 > fast_refusals.len(),
        "most refusals came at once, not after the 5 s command timeout: {fast_refusals:?}"
    );
    // The goodbye: a retry hint and why, then the end of the stream.
    let tail = raw_text.rsplit("\n\n").take(4).collect::<Vec<_>>().join(" | ");
    assert!(
        raw_text.contains("cannot reach its message store") && raw_text.matches("retry:").count() >= 2,
        "the stream ended with a retry hint and a reason: …{tail}"
    );

    let mut worst_delay = Duration::ZERO;
    let mut ends = Vec::new();
    for (i, (got, ended_after)) in moved.iter().enumerate() {
        let ended_after = ended_after.expect("the stream on the cut node ended within 15 s of the cut");
        ends.push(ended_after);
        assert!(
            ended_after < Duration::from_secs(6),
            "mover {i}: the cut node ended its stream before the cut healed (after {ended_after:?})"
        );
        let events: Vec<eventsource_stream::Event> = got.iter().map(|(e, _)| e.clone()).collect();
        println!(
            "mover {i}: ended {ended_after:?} after the cut; {} events, first {:?}, last {:?}",
            events.len(),
            events.first().map(|e| (&e.id, &e.data)),
            events.last().map(|e| (&e.id, &e.data))
        );
        assert_exact(&format!("mover {i}"), &events, &plain, &["iso"], "iso");
        for (outcome, acked) in &acknowledged {
            let received = got
                .iter()
                .find(|(e, _)| e.data == outcome.data)
                .map(|(_, at)| *at);
            let Some(received) = received else {
                panic!("mover {i}: lost acknowledged {:?}", outcome.data);
            };
            if *acked >= cut_at {
                worst_delay = worst_delay.max(received.saturating_duration_since(*acked));
            }
        }
    }
    assert_exact("the subscriber on b", &control_got, &plain, &["iso"], "iso");
    println!(
        "cut node: /readyz 503 {unready_after:?} after the cut; streams ended {ends:?} after it; publishes \
         refused in at most {slowest_refusal:?} ({} refusals); ready again {ready_again_after:?} after the cut \
         (healed at 6 s); {} acknowledged, movers' worst delay for an event acknowledged during the cut {worst_delay:?}",
        fast_refusals.len(),
        acknowledged.len()
    );
}
