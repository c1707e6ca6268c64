//! Logs (`tracing`, filtered by `RUST_LOG`) and the counters behind `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Installs the log subscriber once; `RUST_LOG` filters (default `info`). Logs go to stderr: as text
/// (coloured only when stderr is a terminal, so files and pipes get no escape codes), or with `json` one
/// JSON object per line (timestamp, level, target, fields) for log shippers.
pub fn init_logs(json: bool) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        // actix-http logs each malformed later keep-alive request at ERROR: a client's fault, which a
        // scanner repeats at will (the front door's own refusals are logged at WARN, rate-limited).
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,actix_http::h1::dispatcher=off"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr closed, a full or broken pipe) is dropped. Reporting
        // it would go to stderr with `eprintln!`, which panics there: that panic killed the task that
        // handles SIGTERM, and the node no longer stopped.
        .log_internal_errors(false);
    // A second call (tests) keeps the first subscriber: ignoring that error is the intent.
    let _ = if json {
        logs.json().try_init()
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).try_init()
    };
}

/// Lets one log line through per interval, and counts the ones held back: what a hostile or broken
/// peer can repeat (a forged Redis message, a scanner's bad request) must not flood the logs.
#[derive(Debug)]
pub struct LogEvery {
    every: std::time::Duration,
    /// When a line last went out, and how many were held back since.
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogEvery {
    pub fn new(every: std::time::Duration) -> Self {
        LogEvery {
            every,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(held back since the last line)` when a line may go out now, else `None` (counted).
    pub fn ready(&self) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if state.0.is_some_and(|last| now.duration_since(last) < self.every) {
            state.1 += 1;
            return None;
        }
        let held = state.1;
        *state = (Some(now), 0);
        Some(held)
    }
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
    /// Plain-HTTP connections whose first request head is not complete yet (a gauge).
    pub unfinished_heads: AtomicU64,
    /// Times this node found Redis behind the newest id it had seen (writes lost) and raised its clock.
    pub redis_data_lost: AtomicU64,
    /// Events sitting in connection queues now (added per fan-out, removed per batch written).
    pub queued: AtomicU64,
}

/// The counters the status page shows as rates and recent counts.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Counts {
    pub published: u64,
    pub delivered: u64,
    pub reconnects: u64,
    pub gaps: u64,
    pub lag_closes: u64,
    pub rejected_connections: u64,
}

impl Metrics {
    pub fn counts(&self) -> Counts {
        Counts {
            published: self.published.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
            gaps: self.gaps.load(Relaxed),
            lag_closes: self.closed_for_lag.load(Relaxed),
            rejected_connections: self.rejected_connections.load(Relaxed),
        }
    }
}

/// Samples of [`Counts`] over the last minute, for rates: one every [`Recent::EVERY`], so a status
/// request costs no more than reading them.
#[derive(Debug)]
pub struct Recent {
    samples: std::sync::Mutex<std::collections::VecDeque<(std::time::Instant, Counts)>>,
    pub started: std::time::Instant,
}

impl Recent {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    /// 60 s of samples plus the one the window starts from.
    const KEEP: usize = 13;

    pub fn new() -> Self {
        Recent {
            samples: Default::default(),
            started: std::time::Instant::now(),
        }
    }

    pub fn sample(&self, counts: Counts) {
        let mut samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        samples.push_back((std::time::Instant::now(), counts));
        while samples.len() > Self::KEEP {
            samples.pop_front();
        }
    }

    /// How much each count grew from the oldest sample (at most about a minute old) to `now`, and over
    /// how many seconds.
    pub fn since_oldest(&self, now: Counts) -> (f64, Counts) {
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some((at, then)) = samples.front().copied() else {
            return (0.0, Counts::default());
        };
        let grew = |a: u64, b: u64| a.saturating_sub(b);
        (
            at.elapsed().as_secs_f64(),
            Counts {
                published: grew(now.published, then.published),
                delivered: grew(now.delivered, then.delivered),
                reconnects: grew(now.reconnects, then.reconnects),
                gaps: grew(now.gaps, then.gaps),
                lag_closes: grew(now.lag_closes, then.lag_closes),
                rejected_connections: grew(now.rejected_connections, then.rejected_connections),
            },
        )
    }

    /// Samples `metrics` every [`Recent::EVERY`] until `recent` is dropped.
    pub fn start(recent: &std::sync::Arc<Recent>, metrics: std::sync::Arc<Metrics>) {
        let recent = std::sync::Arc::downgrade(recent);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Self::EVERY);
            loop {
                tick.tick().await;
                let Some(recent) = recent.upgrade() else {
                    return;
                };
                recent.sample(metrics.counts());
            }
        });
    }
}

impl Default for Recent {
    fn default() -> Self {
        Self::new()
    }
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
        let rows: [(&str, &str, &str, u64); 16] = [
            (
                "herald_connections",
                "gauge",
                "SSE connections open now",
                g.connections,
            ),
            (
                "herald_unfinished_heads",
                "gauge",
                "plain-HTTP connections still sending their first request head",
                self.unfinished_heads.load(Relaxed),
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

#[cfg(test)]
mod log_every_tests {
    use super::LogEvery;
    use std::time::Duration;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let log = LogEvery::new(Duration::from_secs(3600));
        assert_eq!(log.ready(), Some(0));
        assert_eq!((0..5).filter_map(|_| log.ready()).count(), 0);
        let fast = LogEvery::new(Duration::ZERO);
        assert_eq!(fast.ready(), Some(0));
        assert_eq!(fast.ready(), Some(0));
    }
}
