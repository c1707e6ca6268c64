//! Logs (`tracing`, filtered by `RUST_LOG`) and the counters behind `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Installs the log subscriber once; `RUST_LOG` filters (default `info`). Logs go to stderr: as text
/// (coloured only when stderr is a terminal, so files and pipes get no escape codes), or with `json` one
/// JSON object per line (timestamp, level, target, fields) for log shippers.
pub fn init_logs(json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // A second call (tests) keeps the first subscriber: ignoring that error is the intent.
    let _ = if json {
        logs.json().try_init()
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// Process-wide counters. Relaxed atomics: each is read alone, never used to order other memory.
#[derive(Debug, Default)]
pub struct Metrics {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub closed_for_lag: AtomicU64,
    pub replayed: AtomicU64,
    pub gaps: AtomicU64,
    pub rejected_connections: AtomicU64,
    /// Times the Redis pub/sub link was lost and had to reconnect.
    pub reconnects: AtomicU64,
    /// Events read from Redis streams after a reconnect because the link missed them.
    pub gap_filled: AtomicU64,
    /// Messages on a stored-event channel that were malformed or named an id the stream does not have.
    pub redis_refused: AtomicU64,
    /// Times this node found Redis behind the newest id it had seen (writes lost) and raised its clock.
    pub redis_data_lost: AtomicU64,
    /// Events sitting in connection queues now (added per fan-out, removed per batch written).
    pub queued: AtomicU64,
}

/// Gauges the hub computes when asked.
pub struct Gauges {
    pub connections: u64,
    pub subscriptions: u64,
    pub topics: u64,
    pub ready: bool,
    /// Topics and bytes of history held in this process (memory engine only).
    pub history: Option<(u64, u64)>,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Prometheus text exposition format, version 0.0.4.
    pub fn render(&self, g: &Gauges) -> String {
        let rows: [(&str, &str, &str, u64); 15] = [
            (
                "herald_connections",
                "gauge",
                "SSE connections open now",
                g.connections,
            ),
            (
                "herald_subscriptions",
                "gauge",
                "connection-topic pairs now",
                g.subscriptions,
            ),
            (
                "herald_topics",
                "gauge",
                "topics with at least one local subscriber",
                g.topics,
            ),
            (
                "herald_ready",
                "gauge",
                "1 when the engine is reachable",
                u64::from(g.ready),
            ),
            (
                "herald_queued_events",
                "gauge",
                "events waiting in connection queues",
                self.queued.load(Relaxed),
            ),
            (
                "herald_published_total",
                "counter",
                "events accepted by this node",
                self.published.load(Relaxed),
            ),
            (
                "herald_delivered_total",
                "counter",
                "events written to SSE streams (live and replayed)",
                self.delivered.load(Relaxed),
            ),
            (
                "herald_closed_for_lag_total",
                "counter",
                "connections closed because their queue was full",
                self.closed_for_lag.load(Relaxed),
            ),
            (
                "herald_replayed_total",
                "counter",
                "events sent from history after Last-Event-ID",
                self.replayed.load(Relaxed),
            ),
            (
                "herald_gaps_total",
                "counter",
                "gap notices sent for ids older than retained history",
                self.gaps.load(Relaxed),
            ),
            (
                "herald_rejected_connections_total",
                "counter",
                "SSE connections refused at the connection limit",
                self.rejected_connections.load(Relaxed),
            ),
            (
                "herald_redis_reconnects_total",
                "counter",
                "times the Redis pub/sub link was re-established",
                self.reconnects.load(Relaxed),
            ),
            (
                "herald_redis_gap_filled_total",
                "counter",
                "events recovered from Redis streams after a link loss",
                self.gap_filled.load(Relaxed),
            ),
            (
                "herald_redis_refused_messages_total",
                "counter",
                "stored-event channel messages dropped as malformed or not in the topic's stream",
                self.redis_refused.load(Relaxed),
            ),
            (
                "herald_redis_data_lost_total",
                "counter",
                "times Redis was found behind the newest id this node had seen (a failover or restart lost writes)",
                self.redis_data_lost.load(Relaxed),
            ),
        ];
        let history = g.history.map(|(topics, bytes)| {
            [
                (
                    "herald_history_topics",
                    "gauge",
                    "topics with retained history in this process",
                    topics,
                ),
                (
                    "herald_history_bytes",
                    "gauge",
                    "bytes of retained history in this process",
                    bytes,
                ),
            ]
        });
        let mut out = String::with_capacity(2048);
        for (name, kind, help, value) in rows.into_iter().chain(history.into_iter().flatten()) {
            // Writing to a String cannot fail.
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        }
        out
    }
}
