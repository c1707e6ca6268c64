//! `herald-bench`: runs each scenario against each system in the same run, over loopback, and prints a
//! table, JSON lines and herald/peer ratios; `--out BENCHMARKS.md` saves the table with the machine and
//! how to reproduce. The generator is one thread and reports its own CPU.

mod client;
mod procfs;
mod systems;

use std::cell::RefCell;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Parser;
use serde_json::json;

use client::{SharedTally, Subscription, Tally};
use systems::{Kind, System};

#[derive(Parser, Debug)]
#[command(about = "Side-by-side load tests: Herald, nchan and the tutorial Express server")]
struct Args {
    /// A few hundred deliveries against herald-memory only: checks the tool works (CI).
    #[arg(long)]
    smoke: bool,
    /// Systems, comma-separated (default: all but the last four): herald-memory, herald-redis,
    /// herald-redis-3nodes, nchan-memory, nchan-redis, express, herald-redis-replica (a primary and a
    /// replica, min_replicas 0), herald-redis-wait1 (the same with min_replicas 1), herald-memory-actix and
    /// herald-redis-actix (streams served through actix-web instead of the lean path), herald-redis-cluster
    /// (a 3-shard Redis Cluster).
    #[arg(long, value_delimiter = ',')]
    systems: Vec<String>,
    /// Scenarios, comma-separated (default: all): fanout, multi (1k Herald streams of 3 topics each),
    /// latency, idle, replay, growth (CPU per
    /// delivery at 100 / 1,000 / 10,000 subscribers, and 10,000 topics), rss (idle memory at 1k-18k),
    /// publish (publish round trip and CPU per publish, 1 and 4 in flight), spread (publishes/s and CPU
    /// per publish over 96 topics, 16 in flight: one Redis against herald-redis-cluster), heads (3,000
    /// connections that send 30 KB of a request head and wait: CPU and RSS while they wait), keys (what
    /// the memory engine holds for idempotency keys and topics, against what it reports), publish-load
    /// (16 connections, 1,000 topics, no subscribers, with Redis's own time per FCALL), mercure (Herald
    /// only: fan-out and publish load through /.well-known/mercure next to the native API, and 10,000
    /// URI-template subscribers, of one template and of 10,000).
    #[arg(long, value_delimiter = ',')]
    scenarios: Vec<String>,
    /// Publishes kept in flight by the fan-out and growth scenarios (the issue's "a few"). Herald writes
    /// every event queued for a connection in one write, so its CPU per delivery falls as more
    /// events arrive during one fan-out round; nchan writes each message on its own.
    #[arg(long, default_value_t = 4)]
    in_flight: usize,
    /// The herald binary (default: target/release/herald).
    #[arg(long)]
    herald: Option<PathBuf>,
    /// Save the table (with machine and reproduction notes) to this Markdown file.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Debug, Clone, Default)]
struct Row {
    scenario: String,
    system: &'static str,
    subscribers: usize,
    topics: usize,
    deliveries: u64,
    secs: f64,
    server_cpu_us: f64,
    bench_cpu_us: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    lost: u64,
    duplicated: u64,
    out_of_order: u64,
    failed_publishes: usize,
    rss_per_conn: Option<f64>,
    replay_ms: Option<f64>,
    /// Publish round trips (request sent to answer read), µs.
    publish_p50_us: u32,
    publish_p99_us: u32,
    /// What went wrong, when the system could not do the whole scenario.
    note: Option<String>,
}

impl Row {
    fn rate(&self) -> f64 {
        if self.secs > 0.0 {
            self.deliveries as f64 / self.secs
        } else {
            0.0
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[at]) / 1000.0
}

fn self_cpu() -> f64 {
    procfs::cpu_secs(std::process::id())
}

static TOPIC: AtomicUsize = AtomicUsize::new(0);

fn fresh_topic(prefix: &str) -> String {
    format!(
        "{prefix}{}x{}",
        std::process::id(),
        TOPIC.fetch_add(1, Ordering::Relaxed)
    )
}

async fn wait_ready<T>(
    ready: &AtomicUsize,
    want: usize,
    what: &str,
    tasks: &mut Vec<tokio::task::JoinHandle<Result<T>>>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while ready.load(Ordering::Relaxed) < want {
        if let Some(at) = tasks.iter().position(|t| t.is_finished()) {
            // Taken out of the list: a finished handle must not be awaited twice.
            let why = match tasks.swap_remove(at).await {
                Ok(Ok(_)) => "it ended early".to_string(),
                Ok(Err(e)) => format!("{e:#}"),
                Err(e) => e.to_string(),
            };
            bail!(
                "{what}: a subscriber failed before all connected ({} of {want}): {why}",
                ready.load(Ordering::Relaxed)
            );
        }
        if Instant::now() > deadline {
            bail!(
                "{what}: only {} of {want} subscribers connected",
                ready.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// How the fan-out scenario's subscribers pick their topics.
#[derive(Clone, Copy, PartialEq)]
enum Streams {
    /// Each subscriber reads one topic: `per_topic` subscribers per topic.
    OneTopic,
    /// Each of `per_topic` subscribers reads every topic in one stream (Herald only: composite ids).
    AllTopics,
    /// As `OneTopic`, through Herald's Mercure dialect: streams of `/.well-known/mercure?topic=<t>`,
    /// publishes as forms to `/.well-known/mercure` (`short_ids`: each with an id of Herald's length,
    /// instead of the 45-byte `urn:uuid:` the hub makes).
    Mercure { short_ids: bool },
    /// Through Mercure, each subscriber selecting its topic by a URI template: all by the same one
    /// (the hub matches it once per event), or each by its own (`distinct`: one match per subscriber).
    Template { distinct: bool },
}

/// The Mercure stream path selecting `topic` (an IRI under https://bench.test/b/) by template.
fn template_path(i: usize, distinct: bool) -> String {
    // `{?x<i>}` is an optional query: each template differs, and each matches the topic.
    let extra = if distinct {
        format!("%7B%3Fx{i}%7D")
    } else {
        String::new()
    };
    format!("/.well-known/mercure?topic=https://bench.test/b/%7Bid%7D{extra}")
}

/// `topics` topics with `per_topic` subscribers each (spread over the system's nodes); `messages` per
/// topic published by `in_flight` keep-alive publishers (or one, paced at `pace`).
#[allow(clippy::too_many_arguments)]
async fn fanout(
    sys: &System,
    scenario: &str,
    topics: usize,
    per_topic: usize,
    messages: usize,
    in_flight: usize,
    pace: Option<Duration>,
    streams: Streams,
) -> Result<Row> {
    let names: Vec<String> = (0..topics)
        .map(|_| match streams {
            Streams::Template { .. } => fresh_topic("https://bench.test/b/f"),
            _ => fresh_topic("f"),
        })
        .collect();
    let total = topics * messages;
    let subscribers = match streams {
        Streams::AllTopics => per_topic,
        _ => topics * per_topic,
    };
    let tally: SharedTally = Rc::new(RefCell::new(Tally::default()));
    let ready = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut tasks = Vec::new();
    for i in 0..subscribers {
        let port = sys.sub_ports[i % sys.sub_ports.len()];
        let (path, expect) = match streams {
            Streams::OneTopic => (sys.sub_path(&names[i % topics]), messages),
            Streams::AllTopics => (format!("/events?topic={}", names.join("&topic=")), total),
            Streams::Mercure { .. } => (
                format!("/.well-known/mercure?topic={}", names[i % topics]),
                messages,
            ),
            Streams::Template { distinct } => (template_path(i, distinct), total),
        };
        let sub = Subscription {
            port,
            path,
            last_event_id: None,
            expect,
            messages: total,
            deadline,
        };
        tasks.push(tokio::task::spawn_local(client::subscribe(
            sub,
            Rc::clone(&tally),
            Arc::clone(&ready),
        )));
        if i % 500 == 499 {
            tokio::task::yield_now().await;
        }
    }
    wait_ready(&ready, subscribers, scenario, &mut tasks).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = sys.pids();
    let per_pid0: Vec<f64> = pids.iter().map(|&p| procfs::cpu_secs(p)).collect();
    let (cpu0, bench0, t0) = (procfs::total_cpu(&pids), self_cpu(), Instant::now());
    let paths: Vec<String> = names
        .iter()
        .map(|t| match streams {
            Streams::Mercure { short_ids: true } => format!("mercure-id:{t}"),
            Streams::Mercure { .. } | Streams::Template { .. } => format!("mercure:{t}"),
            _ => sys.pub_path(t),
        })
        .collect();
    let published = publish_all(sys.pub_port, &paths, in_flight, total, pace).await?;
    let (failed, pct) = (published.failed, |q| published.round_trip_us(q));
    // How fast the server accepts publishes under this load: it sets how many events meet in a queue.
    eprintln!(
        "   {scenario} on {}: publish round trip p50 {} µs, p99 {} µs",
        sys.kind.name(),
        pct(0.5),
        pct(0.99)
    );
    for t in tasks {
        t.await??;
    }
    let (cpu1, bench1, secs) = (procfs::total_cpu(&pids), self_cpu(), t0.elapsed().as_secs_f64());
    let split: Vec<String> = pids
        .iter()
        .zip(per_pid0)
        .map(|(&p, c0)| format!("{} {:.2}s", procfs::name(p), procfs::cpu_secs(p) - c0))
        .collect();
    eprintln!(
        "   {scenario} on {}: server CPU by process: {}",
        sys.kind.name(),
        split.join(", ")
    );
    let mut t = tally.borrow_mut();
    t.latencies_us.sort_unstable();
    let deliveries = t.delivered;
    let expected = (subscribers * messages) as u64;
    let per = |cpu: f64| {
        if deliveries > 0 {
            cpu * 1e6 / deliveries as f64
        } else {
            0.0
        }
    };
    Ok(Row {
        scenario: scenario.into(),
        system: sys.kind.name(),
        subscribers,
        topics,
        deliveries,
        secs,
        server_cpu_us: per(cpu1 - cpu0),
        bench_cpu_us: per(bench1 - bench0),
        p50_ms: percentile(&t.latencies_us, 0.5),
        p99_ms: percentile(&t.latencies_us, 0.99),
        p999_ms: percentile(&t.latencies_us, 0.999),
        lost: expected.saturating_sub(deliveries - t.duplicated),
        duplicated: t.duplicated,
        out_of_order: t.out_of_order,
        failed_publishes: failed,
        publish_p50_us: pct(0.5),
        publish_p99_us: pct(0.99),
        ..Row::default()
    })
}

/// What `publish_all` did: the publishes that failed and every round trip (µs), sorted.
struct Published {
    failed: usize,
    round_trips: Vec<u32>,
}

impl Published {
    /// The round trip at quantile `q` (0 when none was measured).
    fn round_trip_us(&self, q: f64) -> u32 {
        self.round_trips
            .get(((self.round_trips.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0)
    }
}

/// Sends `count` publishes over `paths` through `conns` keep-alive connections (each waits for its
/// answer before the next; `pace` spaces them), and waits for them all.
async fn publish_all(
    port: u16,
    paths: &[String],
    conns: usize,
    count: usize,
    pace: Option<Duration>,
) -> Result<Published> {
    let next = Arc::new(AtomicUsize::new(0));
    let publishers: Vec<_> = (0..conns)
        .map(|_| {
            let (paths, next) = (paths.to_vec(), Arc::clone(&next));
            tokio::task::spawn_local(
                async move { client::publisher(port, paths, next, count, pace, false).await },
            )
        })
        .collect();
    let mut published = Published {
        failed: 0,
        round_trips: Vec::new(),
    };
    for p in publishers {
        let (failed, rtts) = p.await??;
        published.failed += failed;
        published.round_trips.extend(rtts);
    }
    published.round_trips.sort_unstable();
    Ok(published)
}

/// Publishes through `in_flight` keep-alive connections to one topic with 10 subscribers: what one
/// publish costs. In the row, p50/p99 are publish round trips and server CPU is per publish.
async fn publish_cost(sys: &System, in_flight: usize) -> Result<Row> {
    let (subscribers, messages) = (10, 5000);
    let scenario = format!("publish {in_flight} in flight: p50/p99 = publish round trip, CPU per publish");
    let mut row = fanout(
        sys,
        &scenario,
        1,
        subscribers,
        messages,
        in_flight,
        None,
        Streams::OneTopic,
    )
    .await?;
    row.server_cpu_us *= subscribers as f64;
    row.bench_cpu_us *= subscribers as f64;
    row.p50_ms = f64::from(row.publish_p50_us) / 1000.0;
    row.p99_ms = f64::from(row.publish_p99_us) / 1000.0;
    row.p999_ms = 0.0;
    Ok(row)
}

/// Publishes through `conns` keep-alive connections, closed loop, spread over `topics` topics nobody
/// subscribes to: what the publish path alone costs. In the row, deliveries/s are publishes/s, server CPU
/// is the server's processes (not Redis) per publish, p50/p99 are publish round trips. On one Redis,
/// Redis's own time per `FCALL` (`INFO commandstats`) is printed next to the commands the call ran.
async fn publish_load(sys: &System, conns: usize, topics: usize, count: usize, mercure: bool) -> Result<Row> {
    let via = if mercure { " (Mercure forms)" } else { "" };
    let scenario = format!("publish load{via}: {conns} conns, {topics} topics, no subscribers");
    let paths: Vec<String> = (0..topics)
        .map(|_| {
            let topic = fresh_topic("p");
            if mercure {
                format!("mercure:{topic}")
            } else {
                sys.pub_path(&topic)
            }
        })
        .collect();
    if let Some(port) = sys.redis_port {
        redis_cli(port, &["CONFIG", "RESETSTAT"])?;
    }
    let (servers, all) = (sys.server_pids(), sys.pids());
    let (cpu0, all0, bench0) = (procfs::total_cpu(&servers), procfs::total_cpu(&all), self_cpu());
    let t0 = Instant::now();
    let published = publish_all(sys.pub_port, &paths, conns, count, None).await?;
    let secs = t0.elapsed().as_secs_f64();
    let (cpu1, all1, bench1) = (procfs::total_cpu(&servers), procfs::total_cpu(&all), self_cpu());
    let (failed, pct) = (published.failed, |q| published.round_trip_us(q));
    let done = count.saturating_sub(failed) as u64;
    let per = |cpu: f64| if done > 0 { cpu * 1e6 / done as f64 } else { 0.0 };
    eprintln!(
        "   {scenario} on {}: {:.0} publishes/s, server {:.1} µs/publish, server + Redis {:.1} µs/publish",
        sys.kind.name(),
        done as f64 / secs,
        per(cpu1 - cpu0),
        per(all1 - all0),
    );
    if let Some(port) = sys.redis_port {
        let stats = redis_cli(port, &["INFO", "commandstats"])?;
        let (mut fcall, mut inner) = ((0u64, 0u64), 0u64);
        for line in stats.lines() {
            let Some((name, fields)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else {
                continue;
            };
            let field = |key: &str| {
                fields
                    .split(',')
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('=')?.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            match name {
                "fcall" => fcall = (field("calls"), field("usec")),
                "ping" | "info" | "role" | "config|resetstat" | "config|get" => {}
                _ => inner += field("usec"),
            }
        }
        if fcall.0 > 0 {
            eprintln!(
                "   {scenario} on {}: Redis cmdstat_fcall {:.1} µs per call; the commands it ran {:.1} µs per call",
                sys.kind.name(),
                fcall.1 as f64 / fcall.0 as f64,
                inner as f64 / fcall.0 as f64,
            );
        }
    }
    Ok(Row {
        scenario,
        system: sys.kind.name(),
        topics,
        deliveries: done,
        secs,
        server_cpu_us: per(cpu1 - cpu0),
        bench_cpu_us: per(bench1 - bench0),
        p50_ms: f64::from(pct(0.5)) / 1000.0,
        p99_ms: f64::from(pct(0.99)) / 1000.0,
        failed_publishes: failed,
        publish_p50_us: pct(0.5),
        publish_p99_us: pct(0.99),
        ..Row::default()
    })
}

/// Runs `redis-cli -p port args…` and returns what it printed.
fn redis_cli(port: u16, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new("redis-cli")
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `conns` idle subscribers over `topics` topics: server memory per connection.
async fn idle(sys: &System, scenario: &str, conns: usize, topics: usize) -> Result<Row> {
    let names: Vec<String> = (0..topics).map(|_| fresh_topic("i")).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = procfs::total_rss(&sys.server_pids());
    let ready = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..conns {
        let port = sys.sub_ports[i % sys.sub_ports.len()];
        tasks.push(tokio::task::spawn_local(client::hold(
            port,
            sys.sub_path(&names[i % topics]),
            Arc::clone(&ready),
            stop_rx.clone(),
        )));
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    // A system that cannot hold them all is reported, not fatal: the row says how many it held.
    let note = wait_ready(&ready, conns, scenario, &mut tasks)
        .await
        .err()
        .map(|e| e.to_string());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procfs::total_rss(&sys.server_pids());
    let held = ready.load(Ordering::Relaxed).max(1);
    let _ = stop_tx.send(true);
    // Subscribers still connecting (a server that could not take them all) are aborted, not awaited.
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    // Let the server release them before the next scenario.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(Row {
        scenario: scenario.into(),
        system: sys.kind.name(),
        subscribers: conns,
        topics,
        rss_per_conn: Some(after.saturating_sub(before) as f64 / held as f64),
        note,
        ..Row::default()
    })
}

/// `conns` connections from `sources` addresses that each send `bytes` of a request head and then wait
/// (an attacker's cheap hold): the server's CPU while they wait, the RSS they add, and how fast a
/// `GET /` from elsewhere is answered meanwhile (p50/p99 columns, over 20 requests).
async fn heads(sys: &System, scenario: &str, conns: usize, sources: u8, bytes: usize) -> Result<Row> {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = sys.server_pids();
    let before = procfs::total_rss(&pids);
    let sent = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut tasks = Vec::new();
    for i in 0..conns {
        tasks.push(tokio::task::spawn_local(client::unfinished_head(
            sys.pub_port,
            (i % usize::from(sources)) as u8,
            bytes,
            Arc::clone(&sent),
            stop_rx.clone(),
        )));
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while sent.load(Ordering::Relaxed) < conns && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The server's head timeout (5 s) bounds the window: measure well inside it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (cpu0, t0) = (procfs::total_cpu(&pids), Instant::now());
    let mut gets = Vec::new();
    for _ in 0..20 {
        gets.push(client::one_get(sys.pub_port, "/").await?.0);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = (procfs::total_cpu(&pids) - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    let rss = procfs::total_rss(&pids).saturating_sub(before) as f64 / 1e6;
    let _ = stop_tx.send(true);
    let mut held = 0;
    for t in tasks {
        held += usize::from(matches!(t.await, Ok(Ok(true))));
    }
    gets.sort_unstable();
    let note = format!(
        "{held} of {conns} still waiting, the rest answered; CPU {cpu:.1} % of a core, RSS +{rss:.1} MB"
    );
    eprintln!("   {scenario} on {}: {note}", sys.kind.name());
    tokio::time::sleep(Duration::from_secs(1)).await;
    Ok(Row {
        scenario: scenario.into(),
        system: sys.kind.name(),
        subscribers: conns,
        rss_per_conn: (held > 0).then(|| rss * 1e6 / held as f64),
        p50_ms: percentile(&gets, 0.5),
        p99_ms: percentile(&gets, 0.99),
        note: Some(note),
        ..Row::default()
    })
}

/// What a node reports in `herald_history_bytes` (the memory engine's estimate of what it retains).
async fn history_bytes(sys: &System) -> Result<f64> {
    let (_, answer) = client::one_get(sys.pub_port, "/metrics").await?;
    let text = String::from_utf8_lossy(&answer);
    text.lines()
        .find_map(|l| l.strip_prefix("herald_history_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no herald_history_bytes in /metrics"))
}

/// `count` publishes, over `topics` topics, each with its own `Idempotency-Key` if `keyed`: the RSS they
/// add against what the node reports retaining (`herald_history_bytes`), per publish.
async fn retained(sys: &System, scenario: &str, count: usize, topics: usize, keyed: bool) -> Result<Row> {
    let paths: Vec<String> = (0..topics).map(|_| sys.pub_path(&fresh_topic("k"))).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pids = sys.server_pids();
    let (rss0, reported0) = (procfs::total_rss(&pids), history_bytes(sys).await?);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut publishers = Vec::new();
    for _ in 0..4 {
        let (paths, next) = (paths.clone(), Arc::clone(&next));
        publishers.push(tokio::task::spawn_local(client::publisher(
            sys.pub_port,
            paths,
            next,
            count,
            None,
            keyed,
        )));
    }
    let mut failed = 0;
    for p in publishers {
        failed += p.await??.0;
    }
    let secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let real = procfs::total_rss(&pids).saturating_sub(rss0) as f64;
    let reported = history_bytes(sys).await? - reported0;
    let note = format!(
        "RSS +{:.1} MB, {:.0} B a publish; reported +{:.1} MB, {:.0} B a publish",
        real / 1e6,
        real / count as f64,
        reported / 1e6,
        reported / count as f64
    );
    eprintln!("   {scenario} on {}: {note}", sys.kind.name());
    Ok(Row {
        scenario: scenario.into(),
        system: sys.kind.name(),
        topics,
        deliveries: count as u64,
        secs,
        failed_publishes: failed,
        note: Some(note),
        ..Row::default()
    })
}

/// Idle memory on a freshly started system: RSS a process keeps from earlier scenarios (allocator
/// caches, buffers) would otherwise hide or inflate what connections cost.
async fn idle_fresh(
    kind: Kind,
    herald: &std::path::Path,
    repo: &std::path::Path,
    scenario: &str,
    conns: usize,
) -> Result<Row> {
    let fresh = System::start(kind, herald, repo).await?;
    let row = idle(&fresh, scenario, conns, 100).await;
    drop(fresh);
    tokio::time::sleep(Duration::from_millis(500)).await;
    row
}

/// A connect storm of `conns` subscribers (one topic) on a fresh node, presence on or off: connects/s,
/// server CPU per connect (until presence has recorded them all), the time until the presence count
/// shows them all, Redis bytes per subscription (`used_memory`), then the heartbeat's cost over 10 s
/// at `conns` held (Redis `EVAL` µs per node and second, node CPU), and how long the leaves take.
async fn presence_storm(
    kind: Kind,
    herald: &std::path::Path,
    repo: &std::path::Path,
    conns: usize,
    on: bool,
) -> Result<Row> {
    let env = [
        ("HERALD__PRESENCE__ENABLED", on.to_string()),
        ("HERALD__PRESENCE__HEARTBEAT_SECS", "1".to_string()),
        ("HERALD__PRESENCE__TTL_SECS", "30".to_string()),
    ];
    let sys = System::start_with(kind, herald, repo, &env).await?;
    let scenario = format!(
        "presence {}: storm of {conns} subscribers",
        if on { "on" } else { "off" }
    );
    let topic = fresh_topic("w");
    let memory = |port| -> Result<u64> {
        let info = redis_cli(port, &["INFO", "memory"])?;
        Ok(info
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:")?.trim().parse().ok())
            .unwrap_or(0))
    };
    let count = |body: &[u8]| -> Option<usize> {
        let text = String::from_utf8_lossy(body);
        let json = text.split("\r\n\r\n").nth(1)?;
        let v: serde_json::Value = serde_json::from_str(json).ok()?;
        v["subscribers"].as_u64().map(|n| n as usize)
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let used0 = sys.redis_port.map(memory).transpose()?.unwrap_or(0);
    let (servers, all) = (sys.server_pids(), sys.pids());
    let (cpu0, all0) = (procfs::total_cpu(&servers), procfs::total_cpu(&all));
    let ready = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..conns {
        let port = sys.sub_ports[i % sys.sub_ports.len()];
        tasks.push(tokio::task::spawn_local(client::hold(
            port,
            sys.sub_path(&topic),
            Arc::clone(&ready),
            stop_rx.clone(),
        )));
        if i % 200 == 199 {
            tokio::task::yield_now().await;
        }
    }
    wait_ready(&ready, conns, &scenario, &mut tasks).await?;
    let connected = t0.elapsed().as_secs_f64();
    let path = format!("/topics/{topic}/presence");
    let mut listed_after = None;
    if on {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let (_, body) = client::one_get(sys.pub_port, &path).await?;
            if count(&body) == Some(conns) {
                listed_after = Some(t0.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let (cpu1, all1) = (procfs::total_cpu(&servers), procfs::total_cpu(&all));
    let used1 = sys.redis_port.map(memory).transpose()?.unwrap_or(0);
    // The heartbeat at `conns` held: 10 s of nothing but heartbeats (and SSE keep-alives).
    if let Some(port) = sys.redis_port {
        redis_cli(port, &["CONFIG", "RESETSTAT"])?;
    }
    let idle0 = procfs::total_cpu(&servers);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_cpu = (procfs::total_cpu(&servers) - idle0) / 10.0;
    let eval_us = match sys.redis_port {
        Some(port) => {
            let stats = redis_cli(port, &["INFO", "commandstats"])?;
            stats
                .lines()
                .find_map(|l| l.strip_prefix("cmdstat_eval:"))
                .and_then(|f| {
                    f.split(',')
                        .find_map(|x| x.strip_prefix("usec=")?.parse::<f64>().ok())
                })
                .unwrap_or(0.0)
                / 10.0
                / sys.sub_ports.len() as f64
        }
        None => 0.0,
    };
    let t1 = Instant::now();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    let mut left_after = None;
    if on {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let (_, body) = client::one_get(sys.pub_port, &path).await?;
            if count(&body) == Some(0) {
                left_after = Some(t1.elapsed().as_secs_f64());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let per = |cpu: f64| cpu * 1e6 / conns as f64;
    let bytes = used1.saturating_sub(used0) as f64 / conns as f64;
    let note = format!(
        "{:.0} connects/s; server {:.1} µs/connect, server + Redis {:.1} µs/connect; listed all after {}; \
         Redis {:.0} B/subscription; heartbeat: Redis EVAL {:.1} µs per node per s, node CPU {:.2} ms/s held; \
         all left after {}",
        conns as f64 / connected,
        per(cpu1 - cpu0),
        per(all1 - all0),
        listed_after.map_or("-".into(), |t| format!("{t:.2} s")),
        bytes,
        eval_us,
        idle_cpu * 1000.0,
        left_after.map_or("-".into(), |t| format!("{t:.2} s")),
    );
    eprintln!("   {scenario} on {}: {note}", kind.name());
    drop(sys);
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(Row {
        scenario,
        system: kind.name(),
        subscribers: conns,
        topics: 1,
        secs: connected,
        server_cpu_us: per(cpu1 - cpu0),
        note: Some(note),
        ..Row::default()
    })
}

/// Reconnect with `Last-Event-ID` after `missed` messages: time until all of them arrived.
async fn replay(sys: &System, missed: usize) -> Result<Row> {
    let topic = fresh_topic("r");
    let ready = Arc::new(AtomicUsize::new(0));
    let first: SharedTally = Rc::new(RefCell::new(Tally::default()));
    let deadline = Instant::now() + Duration::from_secs(60);
    let first_sub = Subscription {
        port: sys.sub_ports[0],
        path: sys.sub_path(&topic),
        last_event_id: None,
        expect: 1,
        messages: missed + 1,
        deadline,
    };
    let mut subs = vec![tokio::task::spawn_local(client::subscribe(
        first_sub,
        Rc::clone(&first),
        Arc::clone(&ready),
    ))];
    wait_ready(&ready, 1, "replay", &mut subs).await?;
    let paths = vec![sys.pub_path(&topic)];
    client::publisher(
        sys.pub_port,
        paths.clone(),
        Arc::new(AtomicUsize::new(0)),
        1,
        None,
        false,
    )
    .await?;
    for sub in subs {
        sub.await??;
    }
    let last = first.borrow().last_ids.first().cloned().unwrap_or_default();
    // The messages it misses; seq 0 was the one it saw.
    let next = Arc::new(AtomicUsize::new(1));
    let mut publishers = Vec::new();
    for _ in 0..4 {
        publishers.push(tokio::task::spawn_local(client::publisher(
            sys.pub_port,
            paths.clone(),
            Arc::clone(&next),
            missed + 1,
            None,
            false,
        )));
    }
    for p in publishers {
        p.await??;
    }
    let tally: SharedTally = Rc::new(RefCell::new(Tally::default()));
    let t0 = Instant::now();
    let resume = Subscription {
        port: sys.sub_ports[sys.sub_ports.len() - 1],
        path: sys.sub_path(&topic),
        last_event_id: Some(last),
        expect: missed,
        messages: missed + 1,
        deadline: Instant::now() + Duration::from_secs(30),
    };
    let got = client::subscribe(resume, Rc::clone(&tally), Arc::new(AtomicUsize::new(0))).await?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    let t = tally.borrow();
    Ok(Row {
        scenario: format!("replay {missed} missed"),
        system: sys.kind.name(),
        subscribers: 1,
        topics: 1,
        deliveries: got as u64,
        lost: (missed as u64).saturating_sub(got as u64 - t.duplicated),
        duplicated: t.duplicated,
        out_of_order: t.out_of_order,
        replay_ms: Some(ms),
        ..Row::default()
    })
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str(
        "| scenario | system | subs | topics | deliveries/s | server CPU µs/delivery | bench CPU µs/delivery | p50 ms | p99 ms | p99.9 ms | lost | dup | out of order | RSS/conn | replay ms |\n",
    );
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("–".to_string(), f);
        // Zero means the scenario does not measure it (idle, replay).
        let measured = |v: f64| if v > 0.0 { format!("{v:.2}") } else { "–".into() };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.scenario,
            match &r.note {
                Some(note) => format!("{} ({note})", r.system),
                None => r.system.to_string(),
            },
            r.subscribers,
            r.topics,
            if r.deliveries > 0 && r.secs > 0.0 {
                format!("{:.0}", r.rate())
            } else {
                "–".into()
            },
            measured(r.server_cpu_us),
            measured(r.bench_cpu_us),
            measured(r.p50_ms),
            measured(r.p99_ms),
            measured(r.p999_ms),
            r.lost,
            r.duplicated,
            r.out_of_order,
            opt(r.rss_per_conn, &|b| format!("{:.1} KB", b / 1024.0)),
            opt(r.replay_ms, &|ms| format!("{ms:.1}")),
        );
    }
    out
}

/// herald/peer for the measures the targets name, per scenario, where both ran.
fn ratios(rows: &[Row]) -> String {
    let mut out = String::new();
    let find =
        |scenario: &str, system: &str| rows.iter().find(|r| r.scenario == scenario && r.system == system);
    let mut scenarios: Vec<&str> = rows.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.dedup();
    for scenario in scenarios {
        for (herald, peer) in [
            ("herald-memory", "nchan-memory"),
            ("herald-redis", "nchan-redis"),
            ("herald-memory", "express"),
            ("herald-memory", "herald-memory-actix"),
            ("herald-redis", "herald-redis-actix"),
        ] {
            let (Some(h), Some(p)) = (find(scenario, herald), find(scenario, peer)) else {
                continue;
            };
            let mut parts = Vec::new();
            if h.server_cpu_us > 0.0 && p.server_cpu_us > 0.0 {
                parts.push(format!("CPU/delivery {:.2}×", h.server_cpu_us / p.server_cpu_us));
            }
            if h.p99_ms > 0.0 && p.p99_ms > 0.0 {
                parts.push(format!("p99 {:.2}×", h.p99_ms / p.p99_ms));
            }
            if let (Some(a), Some(b)) = (h.rss_per_conn, p.rss_per_conn) {
                if b > 0.0 {
                    parts.push(format!("RSS/conn {:.2}×", a / b));
                }
            }
            if let (Some(a), Some(b)) = (h.replay_ms, p.replay_ms) {
                parts.push(format!("replay time {:.2}×", a / b));
            }
            if !parts.is_empty() {
                let _ = writeln!(out, "- {scenario}: {herald} / {peer}: {}", parts.join(", "));
            }
        }
    }
    out
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

async fn run(args: Args) -> Result<()> {
    raise_fd_limit();
    let repo = systems::repo_root();
    let herald = args
        .herald
        .clone()
        .unwrap_or_else(|| repo.join("target/release/herald"));
    if !herald.exists() {
        bail!(
            "{} is missing: cargo build --release (or pass --herald)",
            herald.display()
        );
    }
    let kinds: Vec<Kind> = if args.smoke {
        vec![Kind::HeraldMemory]
    } else if args.systems.is_empty() {
        Kind::ALL.to_vec()
    } else {
        args.systems
            .iter()
            .map(|s| Kind::parse(s).ok_or_else(|| anyhow::anyhow!("unknown system {s}")))
            .collect::<Result<_>>()?
    };
    let all = [
        "fanout",
        "multi",
        "latency",
        "idle",
        "replay",
        "growth",
        "rss",
        "publish",
        "publish-load",
        "mercure",
        "heads",
        "keys",
        "presence",
    ];
    let scenarios: Vec<String> = if args.smoke {
        vec!["fanout".into(), "replay".into()]
    } else if args.scenarios.is_empty() {
        all.iter().map(|s| s.to_string()).collect()
    } else {
        args.scenarios.clone()
    };
    let mut rows = Vec::new();
    let mut versions = Vec::new();
    for kind in kinds {
        eprintln!("== {}", kind.name());
        let sys = System::start(kind, &herald, &repo).await?;
        versions.push(format!("{}: {}", kind.name(), sys.version()));
        for scenario in &scenarios {
            let started = Instant::now();
            let new: Vec<Row> = match scenario.as_str() {
                "fanout" if args.smoke => {
                    vec![fanout(&sys, "fanout smoke", 1, 20, 20, 2, None, Streams::OneTopic).await?]
                }
                "fanout" => vec![
                    fanout(
                        &sys,
                        "fanout 1k×2k",
                        1,
                        1000,
                        2000,
                        args.in_flight,
                        None,
                        Streams::OneTopic,
                    )
                    .await?,
                ],
                // 1,000 streams of 3 topics each (composite ids), 2,000 events over the 3: Herald only.
                "multi" if kind.is_herald() => vec![
                    fanout(
                        &sys,
                        "fanout 1k streams × 3 topics",
                        3,
                        1000,
                        667,
                        args.in_flight,
                        None,
                        Streams::AllTopics,
                    )
                    .await?,
                ],
                "multi" => vec![],
                "latency" => vec![
                    fanout(
                        &sys,
                        "latency 100 subs, 1k msg/s",
                        1,
                        100,
                        10_000,
                        1,
                        Some(Duration::from_millis(1)),
                        Streams::OneTopic,
                    )
                    .await?,
                ],
                "idle" => vec![idle_fresh(kind, &herald, &repo, "idle 10k conns", 10_000).await?],
                "replay" if args.smoke => {
                    if kind.replays() {
                        vec![replay(&sys, 50).await?]
                    } else {
                        vec![]
                    }
                }
                "replay" => {
                    if kind.replays() {
                        vec![replay(&sys, 1000).await?]
                    } else {
                        vec![]
                    }
                }
                "growth" => {
                    let mut v = Vec::new();
                    for (subs, msgs) in [(100, 2000), (1000, 2000), (10_000, 200)] {
                        v.push(
                            fanout(
                                &sys,
                                &format!("growth {subs} subs"),
                                1,
                                subs,
                                msgs,
                                args.in_flight,
                                None,
                                Streams::OneTopic,
                            )
                            .await?,
                        );
                    }
                    v.push(
                        fanout(
                            &sys,
                            "growth 10k topics × 1 sub",
                            10_000,
                            1,
                            3,
                            args.in_flight,
                            None,
                            Streams::OneTopic,
                        )
                        .await?,
                    );
                    v
                }
                "rss" => {
                    let mut v = Vec::new();
                    for conns in [1000, 5000, 10_000, 18_000] {
                        v.push(
                            idle_fresh(kind, &herald, &repo, &format!("growth RSS {conns} conns"), conns)
                                .await?,
                        );
                    }
                    v
                }
                "publish" => vec![publish_cost(&sys, 1).await?, publish_cost(&sys, 4).await?],
                "publish-load" => vec![publish_load(&sys, 16, 1000, 40_000, false).await?],
                // Herald's Mercure dialect next to its native API in the same run: fan-out CPU per
                // delivery, publish cost, and matching 10,000 URI-template subscribers (one template
                // shared, then 10,000 distinct ones).
                "mercure" if kind.is_herald() => {
                    let mut v = Vec::new();
                    for (name, streams) in [
                        ("native", Streams::OneTopic),
                        ("Mercure", Streams::Mercure { short_ids: false }),
                        (
                            "Mercure, 13-byte publisher ids",
                            Streams::Mercure { short_ids: true },
                        ),
                    ] {
                        let scenario = format!("mercure: fanout 1k×2k, {name}");
                        v.push(fanout(&sys, &scenario, 1, 1000, 2000, args.in_flight, None, streams).await?);
                    }
                    // At a fixed rate (one publisher, one event per ms), so that both sides batch alike.
                    for (name, streams) in [
                        ("native", Streams::OneTopic),
                        ("Mercure", Streams::Mercure { short_ids: false }),
                    ] {
                        let scenario = format!("mercure: fanout 1k subs, 1k msg/s paced, {name}");
                        let pace = Some(Duration::from_millis(1));
                        v.push(fanout(&sys, &scenario, 1, 1000, 3000, 1, pace, streams).await?);
                    }
                    v.push(publish_load(&sys, 16, 1000, 40_000, false).await?);
                    v.push(publish_load(&sys, 16, 1000, 40_000, true).await?);
                    for distinct in [false, true] {
                        let which = if distinct {
                            "10k distinct templates"
                        } else {
                            "one template"
                        };
                        let scenario = format!("mercure: 10k template subscribers ({which}), 200 msgs");
                        let streams = Streams::Template { distinct };
                        v.push(fanout(&sys, &scenario, 1, 10_000, 200, args.in_flight, None, streams).await?);
                    }
                    v
                }
                "mercure" => vec![],
                // What the memory engine retains against what it reports: distinct idempotency keys on
                // one topic, many topics of one event, and keys past a 4 MiB bound (fresh nodes).
                "keys" if kind == Kind::HeraldMemory => {
                    let mut v = Vec::new();
                    let fresh = System::start(kind, &herald, &repo).await?;
                    v.push(
                        retained(
                            &fresh,
                            "keys: 30k publishes, distinct Idempotency-Keys, 1 topic",
                            30_000,
                            1,
                            true,
                        )
                        .await?,
                    );
                    drop(fresh);
                    let fresh = System::start(kind, &herald, &repo).await?;
                    v.push(
                        retained(
                            &fresh,
                            "keys: 30k publishes to 30k topics, no keys",
                            30_000,
                            30_000,
                            false,
                        )
                        .await?,
                    );
                    drop(fresh);
                    let env = [("HERALD__HISTORY__MAX_TOTAL_BYTES", (4 << 20).to_string())];
                    let bounded = System::start_with(kind, &herald, &repo, &env).await?;
                    let scenario = "keys: 100k publishes, distinct keys, max_total_bytes 4 MiB";
                    v.push(retained(&bounded, scenario, 100_000, 1, true).await?);
                    v
                }
                "keys" => vec![],
                // Presence on and off, each on a fresh node: a 10,000-subscriber connect storm (Herald).
                "presence" if kind.is_herald() => vec![
                    presence_storm(kind, &herald, &repo, 10_000, false).await?,
                    presence_storm(kind, &herald, &repo, 10_000, true).await?,
                ],
                "presence" => vec![],
                // Unfinished heads: from 16 addresses with the shipped settings, and from one address
                // against production's per-address cap (Herald only, on a fresh node).
                "heads" => {
                    let mut v = vec![heads(&sys, "heads 3k × 30 KB, 16 addresses", 3000, 16, 30_000).await?];
                    if kind.is_herald() {
                        let env = [("HERALD__SERVER__MAX_PENDING_HEADS_PER_IP", "64".to_string())];
                        let capped = System::start_with(kind, &herald, &repo, &env).await?;
                        let scenario = "heads 3k × 30 KB, 1 address, max_pending_heads_per_ip 64";
                        v.push(heads(&capped, scenario, 3000, 1, 30_000).await?);
                    }
                    v
                }
                // Publish capacity with the load spread over many topics (so over a Cluster's shards):
                // one subscriber per topic, so CPU per delivery is CPU per publish.
                "spread" => vec![
                    fanout(
                        &sys,
                        "spread: 96 topics × 1 sub, 16 publishes in flight (CPU per publish)",
                        96,
                        1,
                        200,
                        16,
                        None,
                        Streams::OneTopic,
                    )
                    .await?,
                ],
                other => bail!("unknown scenario {other}"),
            };
            for r in &new {
                println!(
                    "{}",
                    json!({
                        "scenario": r.scenario, "system": r.system, "subscribers": r.subscribers, "topics": r.topics,
                        "deliveries": r.deliveries, "secs": r.secs, "deliveries_per_sec": r.rate(),
                        "server_cpu_us_per_delivery": r.server_cpu_us, "bench_cpu_us_per_delivery": r.bench_cpu_us,
                        "p50_ms": r.p50_ms, "p99_ms": r.p99_ms, "p999_ms": r.p999_ms,
                        "lost": r.lost, "duplicated": r.duplicated, "out_of_order": r.out_of_order,
                        "failed_publishes": r.failed_publishes, "rss_per_conn_bytes": r.rss_per_conn, "replay_ms": r.replay_ms,
                        "note": r.note,
                    })
                );
            }
            eprintln!("   {scenario}: {:.1}s", started.elapsed().as_secs_f64());
            rows.extend(new);
        }
        drop(sys);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    rows.sort_by(|a, b| a.scenario.cmp(&b.scenario));
    let text = format!(
        "{}\nRatios (herald / peer; lower is better):\n{}",
        table(&rows),
        ratios(&rows)
    );
    eprintln!("\n{text}");
    let bad: Vec<&Row> = rows
        .iter()
        .filter(|r| r.lost + r.duplicated + r.out_of_order > 0 || r.failed_publishes > 0)
        .collect();
    if let Some(out) = &args.out {
        let doc = format!(
            "# Benchmarks\n\nMachine: {}. Same run for every system, loopback only; the load generator is one thread \
             on the same machine (its CPU is reported). Server CPU counts every server process (Redis and nginx \
             workers included) from the first publish to the last delivery. Fan-out and growth keep {} \
             publishes in flight.\n\nVersions: {}.\n\nReproduce: \
             `cargo build --release && cargo run --release -p herald-bench -- --out BENCHMARKS.md` (needs \
             `apt-get install redis-server nginx libnginx-mod-nchan nodejs npm`).\n\n{text}",
            machine(),
            args.in_flight,
            versions.join("; ")
        );
        std::fs::write(out, doc)?;
    }
    if !bad.is_empty() {
        for r in bad {
            eprintln!(
                "NOT EXACT: {} {}: lost {} dup {} ooo {} failed publishes {}",
                r.scenario, r.system, r.lost, r.duplicated, r.out_of_order, r.failed_publishes
            );
        }
        bail!("some system lost, duplicated or reordered messages");
    }
    Ok(())
}

fn main() -> Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(args))
}
