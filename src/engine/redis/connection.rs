//! The Redis I/O thread and the one multiplexed connection every command shares.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncConnectionConfig, RedisError, RetryMethod};
use tokio::runtime::Handle;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use super::error::classify;
use super::functions::Seen;
use super::primary::{Conn, Primary};
use super::replicas;
use crate::domain::{EventId, TopicName};
use crate::engine::{Cause, EngineError};
use crate::telemetry::Metrics;

/// A thread of its own for every Redis socket (the shared connection, the pub/sub link and their
/// readers): on an HTTP worker they would wait behind hundreds of SSE writes for each reply, which
/// slowed every publish and, under load, broke fan-out into one write per delivery (BENCHMARKS.md).
pub(super) struct IoThread {
    pub(super) handle: Handle,
    pub(super) _stop: oneshot::Sender<()>,
}

impl IoThread {
    pub(super) fn start() -> Result<Self, std::io::Error> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("herald-redis".into())
            .spawn(move || {
                // Runs until the engine drops its sender; dropping the runtime then ends the link.
                let _ = runtime.block_on(stopped);
            })?;
        Ok(IoThread { handle, _stop: stop })
    }
}

/// Which connection a call uses.
#[derive(Clone, Copy)]
pub(super) enum Lane {
    /// Every call but replica-acknowledged publishes.
    Commands = 0,
    /// Publishes followed by `WAIT` (with `redis.min_replicas`): WAIT holds back every later command on
    /// its connection until the replicas answer, which must not stall history reads and gap-fills. On a
    /// Cluster every publish takes it, and its client never retries by itself: the cluster client would
    /// also repeat a publish whose connection broke after Redis ran it (a primary dying), storing and
    /// delivering the event twice; `Shared::run_write` retries only what Redis refused before running.
    Publishes = 1,
}

/// The connections every call shares: one per [`Lane`]. Redis runs commands one at a time, so one
/// pipelined (multiplexed) socket serves any number of concurrent publishes and reads without a pool, and
/// with no health-check round trip per call; a connection that failed is dropped and the next call
/// reconnects.
pub(super) struct Shared {
    pub(super) primary: Arc<Primary>,
    pub(super) io: Handle,
    lanes: [Slot; 2],
    /// The newest id this node has seen: the floor of Redis' id clock.
    pub(super) seen: Seen,
    metrics: Arc<Metrics>,
    /// Redis as shown in logs (redacted).
    url: String,
    /// Bumped when the primary moved (`-READONLY`, or a sentinel's `+switch-master`): the link reconnects.
    pub(super) failovers: watch::Sender<u64>,
    /// The primary's connected replicas (kept fresh with `redis.min_replicas` only).
    pub(super) replicas: replicas::Replicas,
    /// True while Redis is silent to this node: the link's last life ended in a timeout or with no route
    /// or name to reach it (not a refusal: that is Redis restarting). Calls are refused at once meanwhile,
    /// instead of each waiting a timeout; the link clears it when it is up again.
    pub(super) silent: watch::Sender<bool>,
}

struct Slot {
    config: AsyncConnectionConfig,
    /// The same as `config`'s, for Cluster clients (built otherwise).
    response_timeout: Duration,
    /// For Cluster clients: how often the client may retry a call by itself (None: its default).
    retries: Option<u32>,
    current: std::sync::Mutex<Option<(u64, Conn)>>,
    /// Held while connecting, so concurrent callers wait for one attempt instead of each making one.
    connecting: tokio::sync::Mutex<Attempts>,
}

#[derive(Default)]
struct Attempts {
    /// Connections made so far; numbers them, so a failure retires only the one it happened on.
    made: u64,
    /// When the last attempt failed, and why: callers that waited for it fail with it, instead of
    /// queueing one connect timeout each behind an unreachable Redis.
    failed: Option<(Instant, String)>,
}

impl Slot {
    fn current(&self) -> std::sync::MutexGuard<'_, Option<(u64, Conn)>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Shared {
    /// `configs`: the timeouts of the command and the publish connection.
    pub(super) fn new(
        primary: Arc<Primary>,
        configs: [(AsyncConnectionConfig, Duration, Option<u32>); 2],
        io: Handle,
        metrics: Arc<Metrics>,
        url: String,
    ) -> Self {
        Shared {
            primary,
            io,
            lanes: configs.map(|(config, response_timeout, retries)| Slot {
                config,
                response_timeout,
                retries,
                current: std::sync::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(Attempts::default()),
            }),
            seen: Seen::default(),
            metrics,
            url,
            failovers: watch::channel(0).0,
            replicas: Default::default(),
            silent: watch::channel(false).0,
        }
    }

    /// Refuses at once while Redis is silent to this node (see `silent`): nothing is sent, so nothing is
    /// stored, and the client can retry on another node.
    pub(super) fn refuse_if_silent(&self) -> Result<(), EngineError> {
        match *self.silent.borrow() {
            true => Err(EngineError::Unavailable(
                "Redis has stopped answering this node (its link is down); retry, on another node if there is one"
                    .into(),
            )),
            false => Ok(()),
        }
    }

    pub(super) async fn get(&self) -> Result<(u64, Conn), RedisError> {
        self.get_on(Lane::Commands).await
    }

    async fn get_on(&self, lane: Lane) -> Result<(u64, Conn), RedisError> {
        let slot = &self.lanes[lane as usize];
        if let Some(current) = slot.current().clone() {
            return Ok(current);
        }
        let asked = Instant::now();
        let mut attempts = slot.connecting.lock().await;
        if let Some(current) = slot.current().clone() {
            return Ok(current);
        }
        if let Some((at, why)) = &attempts.failed {
            if *at >= asked {
                return Err(std::io::Error::other(why.clone()).into());
            }
        }
        let (primary, config) = (Arc::clone(&self.primary), slot.config.clone());
        let (response_timeout, retries) = (slot.response_timeout, slot.retries);
        // Made on the I/O thread, so the connection's reader task lives there too.
        let made = self
            .io
            .spawn(async move { primary.connect(&config, response_timeout, retries).await })
            .await
            .map_err(|e| std::io::Error::other(format!("the Redis I/O thread stopped: {e}")).into())
            .and_then(|made| made);
        let conn = match made {
            Ok(conn) => conn,
            Err(e) => {
                attempts.failed = Some((Instant::now(), e.to_string()));
                return Err(e);
            }
        };
        attempts.made += 1;
        attempts.failed = None;
        let current = (attempts.made, conn);
        *slot.current() = Some(current.clone());
        Ok(current)
    }

    /// Runs `f` on the command connection; see [`Shared::run_on`].
    pub(super) async fn run<T, F, Fut>(&self, f: F) -> Result<T, EngineError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        self.run_on(Lane::Commands, f).await
    }

    /// Runs `f` on the lane's connection; a broken connection is retired at once. A timeout alone keeps
    /// it (Redis may be slow, or holding writes, and may still run the call): a connection that went
    /// silent is retired when the link's ping notices (`Link::run`).
    pub(super) async fn run_on<T, F, Fut>(&self, lane: Lane, f: F) -> Result<T, EngineError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let (generation, conn) = self.get_on(lane).await.map_err(|e| {
            EngineError::Unavailable(Cause::with_raw("no connection to Redis", e.to_string()))
        })?;
        let result = self.unless_silenced(f(conn)).await?;
        if let Err(e) = &result {
            if broken(e) {
                self.retire_on(lane, generation);
            }
            if e.code() == Some("READONLY") {
                // The node we write to was demoted (a failover): find the new primary, link included.
                tracing::warn!("Redis answered READONLY: the primary moved; following it");
                self.retire(None);
                self.failovers.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        result.map_err(classify)
    }

    /// Runs a write on a Cluster: again while Redis answers that it did not run it (MOVED, ASK, TRYAGAIN,
    /// CLUSTERDOWN, READONLY, no connection to the slot's node: a failover or a slot move under way),
    /// with growing pauses until `deadline`, on a fresh connection (a fresh slot map) when the answer says
    /// the map is stale. Anything else, a broken connection above all, is answered as `run_on` does.
    pub(super) async fn run_write<T, F, Fut>(
        &self,
        lane: Lane,
        deadline: Instant,
        f: F,
    ) -> Result<T, EngineError>
    where
        F: Fn(Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let mut pause = Duration::from_millis(10);
        loop {
            let last_try = || Instant::now() + pause >= deadline;
            match self.get_on(lane).await {
                Err(e) if last_try() => {
                    return Err(EngineError::Unavailable(Cause::with_raw(
                        "no connection to Redis",
                        e.to_string(),
                    )));
                }
                Err(_) => {}
                Ok((generation, conn)) => {
                    let result = self.unless_silenced(f(conn)).await?;
                    let Err(e) = &result else {
                        return result.map_err(classify);
                    };
                    let method = e.retry_method();
                    let stale = matches!(
                        method,
                        RetryMethod::MovedRedirect
                            | RetryMethod::RefreshSlotsAndRetry
                            | RetryMethod::ReconnectFromInitialConnections
                    );
                    if stale || broken(e) {
                        self.retire_on(lane, generation);
                    }
                    let unrun =
                        stale || matches!(method, RetryMethod::AskRedirect | RetryMethod::WaitAndRetry);
                    if !unrun || last_try() {
                        return result.map_err(classify);
                    }
                }
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Runs a call, unless Redis goes silent to this node while it runs (the link's ping went
    /// unanswered): the caller is then answered at once that the outcome is unknown, instead of waiting
    /// out its own timeout behind a network that no longer carries anything.
    async fn unless_silenced<T>(&self, call: impl std::future::Future<Output = T>) -> Result<T, EngineError> {
        // Marks the present as seen: only a silence that begins during the call ends it.
        let mut silent = self.silent.subscribe();
        let silenced = async {
            while silent.changed().await.is_ok() {
                if *silent.borrow_and_update() {
                    return;
                }
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            result = call => Ok(result),
            () = silenced => Err(EngineError::Unknown(
                "Redis stopped answering this node during the call; it may or may not have run".into(),
            )),
        }
    }

    /// Keeps `replicas` fresh for as long as the engine lives (with `redis.min_replicas`).
    pub(super) fn watch_replicas(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        self.io.spawn(async move {
            let mut tick = tokio::time::interval(replicas::EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                match shared.run(replicas::ask).await {
                    Ok(n) => shared.replicas.set(n),
                    Err(_) => shared.replicas.forget(),
                }
            }
        });
    }

    /// Logs and counts a loss of data this node found: Redis was behind the newest id it had seen of
    /// `topic`, and raised the topic's clock above it.
    pub(super) fn report_loss(&self, topic: &TopicName, newest: EventId) {
        self.metrics.redis_data_lost.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            %topic,
            "Redis at {} lost writes (a failover, a restart without persistence, or a FLUSHALL): events of \
             the topic up to {newest} may be gone. New ids continue above it, and readers resuming from \
             before it are sent herald.gap",
            self.url
        );
    }

    fn retire_on(&self, lane: Lane, generation: u64) {
        // A new connection may reach another primary, with other replicas.
        self.replicas.forget();
        let mut current = self.lanes[lane as usize].current();
        if current.as_ref().is_some_and(|(g, _)| *g == generation) {
            *current = None;
        }
    }

    /// Drops command connection `generation`, or with `None` every connection; the next call makes a new one.
    pub(super) fn retire(&self, generation: Option<u64>) {
        match generation {
            Some(generation) => self.retire_on(Lane::Commands, generation),
            None => {
                self.replicas.forget();
                for slot in &self.lanes {
                    *slot.current() = None;
                }
            }
        }
    }
}

/// Whether the connection a call failed on is broken, so the next call makes a new one. A timeout reads
/// as an I/O error too, but it leaves the connection usable.
fn broken(e: &RedisError) -> bool {
    (e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error()) && !e.is_timeout()
}
