//! The Redis engine: history in one stream per topic, live delivery over pub/sub, shared by any number of
//! nodes. The Lua functions in `migrations/herald.lua` do each publish in one atomic call (id from the shared
//! clock, XADD, trim, PUBLISH of the encoded frame), so every node receives events in id order.
//!
//! One dedicated pub/sub connection per node (the link) follows local interest: it subscribes to a topic's
//! channel while the hub has a local subscriber of it. When the link drops, it reconnects with jittered
//! backoff, re-subscribes, and gap-fills every subscribed topic from its stream after the last id it
//! delivered, so connected clients lose nothing and see nothing twice.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use futures_util::StreamExt;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSubSink};
use redis::{AsyncConnectionConfig, RedisError};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep, timeout, Instant};

use super::{Engine, EngineError, EngineEvents, HistoryPage, PageBound, Publish};
use crate::config::Settings;
use crate::domain::{EventId, TopicName};
use crate::event::{Event, Stored};
use crate::sse;
use crate::telemetry::Metrics;

/// The Lua library, versioned; loaded with `FUNCTION LOAD REPLACE` at start-up and after Redis comes back.
const FUNCTIONS: &str = include_str!("../../migrations/herald.lua");

/// Reconnect delays double from the first to the last, each with up to 50 % jitter off. The cap keeps
/// recovery within a second of Redis answering again.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_millis(500);

/// Messages handed to the hub in one run at most, so one busy topic cannot hold the link for long.
const MAX_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    #[error("redis.url {url} is not a Redis URL: {source}")]
    BadUrl { url: String, source: RedisError },
    #[error(
        "cannot reach Redis at {url} after {waited_secs} s ({last_error}); start redis-server, or fix \
         redis.url (HERALD__REDIS__URL / --redis-url), or raise redis.startup_wait_secs"
    )]
    Unreachable {
        url: String,
        waited_secs: u64,
        last_error: String,
    },
    #[error(
        "Redis at {url} is version {version}; Herald needs Redis 7.0 or newer (it uses Redis Functions)"
    )]
    TooOld { url: String, version: String },
    #[error("Redis at {url} refused the Herald functions library: {source}")]
    Functions { url: String, source: RedisError },
    #[error("cannot start the Redis I/O thread: {0}")]
    Thread(std::io::Error),
}

enum Command {
    /// Make sure the link is subscribed to the topic; answered once Redis confirmed it.
    Subscribe(TopicName, oneshot::Sender<Result<(), EngineError>>),
}

pub struct RedisEngine {
    shared: Arc<Shared>,
    keys: Keys,
    function_settings: FunctionSettings,
    ready: Arc<AtomicBool>,
    commands: mpsc::UnboundedSender<Command>,
    command_timeout: Duration,
    /// Stops the I/O thread (and with it the link) when the engine is dropped.
    _io: IoThread,
}

/// A thread of its own for every Redis socket (the shared connection, the pub/sub link and their
/// readers): on an HTTP worker they would wait behind hundreds of SSE writes for each reply, which
/// slowed every publish and, under load, broke fan-out into one write per delivery (BENCHMARKS.md).
struct IoThread {
    handle: Handle,
    _stop: oneshot::Sender<()>,
}

impl IoThread {
    fn start() -> Result<Self, std::io::Error> {
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

/// The one connection every command shares. Redis runs commands one at a time, so one pipelined
/// (multiplexed) socket serves any number of concurrent publishes and reads without a pool, and with no
/// health-check round trip per call; a connection that failed is dropped and the next call reconnects.
struct Shared {
    client: redis::Client,
    config: AsyncConnectionConfig,
    io: Handle,
    current: std::sync::Mutex<Option<(u64, MultiplexedConnection)>>,
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

impl Shared {
    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(u64, MultiplexedConnection)>> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn get(&self) -> Result<(u64, MultiplexedConnection), RedisError> {
        if let Some(current) = self.slot().clone() {
            return Ok(current);
        }
        let asked = Instant::now();
        let mut attempts = self.connecting.lock().await;
        if let Some(current) = self.slot().clone() {
            return Ok(current);
        }
        if let Some((at, why)) = &attempts.failed {
            if *at >= asked {
                return Err(std::io::Error::other(why.clone()).into());
            }
        }
        let (client, config) = (self.client.clone(), self.config.clone());
        // Made on the I/O thread, so the connection's reader task lives there too.
        let made = self
            .io
            .spawn(async move { client.get_multiplexed_async_connection_with_config(&config).await })
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
        *self.slot() = Some(current.clone());
        Ok(current)
    }

    /// Runs `f` on the shared connection; a broken connection is retired at once. A timeout alone keeps
    /// it (Redis may be slow, or holding writes, and may still run the call): a connection that went
    /// silent is retired when the link's ping notices (`Link::run`).
    async fn run<T, F, Fut>(&self, f: F) -> Result<T, EngineError>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = Result<T, RedisError>>,
    {
        let (generation, conn) = self
            .get()
            .await
            .map_err(|e| EngineError::Unavailable(format!("no Redis connection: {e}")))?;
        let result = f(conn).await;
        if let Err(e) = &result {
            // A timeout reads as an I/O error too, but it leaves the connection usable.
            let broken = e.is_connection_dropped() || e.is_io_error() || e.is_unrecoverable_error();
            if broken && !e.is_timeout() {
                self.retire(Some(generation));
            }
        }
        result.map_err(classify)
    }

    /// Drops connection `generation` (any, if `None`) if it is still the current one; the next call
    /// makes a new one.
    fn retire(&self, generation: Option<u64>) {
        let mut current = self.slot();
        if current
            .as_ref()
            .is_some_and(|(g, _)| generation.is_none_or(|want| *g == want))
        {
            *current = None;
        }
    }
}

/// Key and channel names under the configured prefix.
#[derive(Clone)]
struct Keys {
    prefix: Arc<str>,
}

impl Keys {
    /// `P:{T}`: the key the functions take; the hash tag keeps a topic's keys in one Cluster slot.
    fn topic(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}", self.prefix, topic)
    }

    /// Where the publish function announces each stored event (its SSE frame).
    fn stored_channel(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}:stored", self.prefix, topic)
    }

    /// Where `redis-cli PUBLISH` sends live-only messages: framed by the node as data only.
    fn live_channel(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}:live", self.prefix, topic)
    }

    /// Both channels of a topic: a node subscribes to them together.
    fn channels(&self, topic: &TopicName) -> [String; 2] {
        [self.stored_channel(topic), self.live_channel(topic)]
    }

    fn log(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}:log", self.prefix, topic)
    }

    fn seq(&self) -> String {
        format!("{}:seq", self.prefix)
    }

    fn config(&self) -> String {
        format!("{}:config", self.prefix)
    }

    /// The topic of a `P:{T}:stored` or `P:{T}:live` channel, and whether it is the stored one.
    fn topic_of_channel(&self, channel: &str, max_len: usize) -> Option<(TopicName, bool)> {
        let inner = channel.strip_prefix(&*self.prefix)?.strip_prefix(":{")?;
        let (inner, stored) = match inner.strip_suffix("}:stored") {
            Some(inner) => (inner, true),
            None => (inner.strip_suffix("}:live")?, false),
        };
        Some((TopicName::parse(inner, max_len).ok()?, stored))
    }
}

/// Shown in logs and errors without any password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// `UNAVAILABLE` when the call surely did not run; `UNKNOWN` when Redis may have run it.
fn classify(e: RedisError) -> EngineError {
    if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() {
        EngineError::Unknown(e.to_string())
    } else {
        EngineError::Unavailable(e.to_string())
    }
}

/// The settings the publish function needs, passed with every call from a node (so a FLUSHALL or
/// another hub's settings cannot change them) and kept in `P:config` for `redis-cli` publishers.
#[derive(Clone)]
struct FunctionSettings {
    /// max_len, max_age_ms, idem_ttl_ms, max_event_len: the order `herald.lua` reads them in.
    args: [String; 4],
}

impl FunctionSettings {
    const NAMES: [&'static str; 4] = ["max_len", "max_age_ms", "idem_ttl_ms", "max_event_len"];

    fn new(s: &Settings) -> Self {
        FunctionSettings {
            args: [
                s.history.max_len.to_string(),
                s.history.max_age_secs.saturating_mul(1000).to_string(),
                s.limits.idempotency_window_secs.saturating_mul(1000).to_string(),
                s.limits.max_event_name_len.to_string(),
            ],
        }
    }

    fn max_age_ms(&self) -> &str {
        &self.args[1]
    }

    /// Writes `P:config` for `redis-cli` publishers.
    async fn store(&self, conn: &mut impl ConnectionLike, keys: &Keys) -> Result<(), RedisError> {
        let mut cmd = redis::cmd("HSET");
        cmd.arg(keys.config());
        for (name, value) in Self::NAMES.iter().zip(&self.args) {
            cmd.arg(name).arg(value);
        }
        cmd.query_async(conn).await
    }
}

fn is_missing_function(e: &RedisError) -> bool {
    e.to_string().contains("Function not found")
}

impl RedisEngine {
    /// Connects (waiting up to `startup_wait_secs` for Redis), loads the functions, starts the link and
    /// waits until it is subscribed and ready.
    pub async fn start(
        all: &Settings,
        node: Arc<dyn EngineEvents>,
        idle: mpsc::UnboundedReceiver<TopicName>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, RedisStartError> {
        let settings = &all.redis;
        let max_topic_len = all.limits.max_topic_len;
        let function_settings = FunctionSettings::new(all);
        let url = redact(&settings.url);
        let client =
            redis::Client::open(settings.url.as_str()).map_err(|source| RedisStartError::BadUrl {
                url: url.clone(),
                source,
            })?;
        let command_timeout = Duration::from_millis(settings.command_timeout_ms);
        let connect_timeout = Duration::from_millis(settings.connect_timeout_ms);
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(command_timeout));
        let io = IoThread::start().map_err(RedisStartError::Thread)?;
        let shared = Arc::new(Shared {
            client: client.clone(),
            config,
            io: io.handle.clone(),
            current: std::sync::Mutex::new(None),
            connecting: tokio::sync::Mutex::new(Attempts::default()),
        });

        let deadline = Instant::now() + Duration::from_secs(settings.startup_wait_secs);
        let (_, mut conn) = loop {
            let last_error = match shared.get().await {
                Ok(conn) => break conn,
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(RedisStartError::Unreachable {
                    url,
                    waited_secs: settings.startup_wait_secs,
                    last_error,
                });
            }
            tracing::warn!("waiting for Redis at {url}: {last_error}");
            sleep(Duration::from_millis(250)).await;
        };
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await
            .map_err(|source| RedisStartError::Functions {
                url: url.clone(),
                source,
            })?;
        let version = info
            .lines()
            .find_map(|l| l.strip_prefix("redis_version:"))
            .unwrap_or("unknown")
            .trim()
            .to_string();
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .unwrap_or(0);
        if major < 7 {
            return Err(RedisStartError::TooOld { url, version });
        }

        let keys = Keys {
            prefix: Arc::from(settings.key_prefix.as_str()),
        };
        load_functions(&mut conn)
            .await
            .map_err(|source| RedisStartError::Functions {
                url: url.clone(),
                source,
            })?;
        function_settings
            .store(&mut conn, &keys)
            .await
            .map_err(|source| RedisStartError::Functions {
                url: url.clone(),
                source,
            })?;
        drop(conn);

        let ready = Arc::new(AtomicBool::new(false));
        let (commands, command_rx) = mpsc::unbounded_channel();
        let link = Link {
            client,
            shared: Arc::clone(&shared),
            keys: keys.clone(),
            node,
            metrics,
            ready: Arc::clone(&ready),
            commands: command_rx,
            idle,
            subscribed: HashSet::new(),
            floor: None,
            cursors: HashMap::new(),
            function_settings: function_settings.clone(),
            gap_fill_bound: PageBound {
                count: all.history.page_size,
                bytes: all.history.max_page_bytes,
            },
            command_timeout,
            connect_timeout,
            ping_interval: Duration::from_millis(settings.ping_interval_ms),
            max_topic_len,
            url: url.clone(),
        };
        io.handle.spawn(link.run());
        let engine = Arc::new(RedisEngine {
            shared,
            keys,
            function_settings,
            ready: Arc::clone(&ready),
            commands,
            command_timeout,
            _io: io,
        });
        while !ready.load(Ordering::Acquire) {
            if Instant::now() >= deadline {
                return Err(RedisStartError::Unreachable {
                    url,
                    waited_secs: settings.startup_wait_secs,
                    last_error: "the pub/sub connection did not come up".into(),
                });
            }
            sleep(Duration::from_millis(10)).await;
        }
        Ok(engine)
    }
}

async fn load_functions(conn: &mut impl ConnectionLike) -> Result<(), RedisError> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(FUNCTIONS)
        .query_async::<String>(conn)
        .await
        .map(drop)
}

/// Runs `FCALL`/`FCALL_RO`; if Redis lost the library (restarted without persistence), loads it and
/// retries once: a missing function ran nothing, so the retry cannot store twice.
async fn fcall<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    cmd: redis::Cmd,
) -> Result<T, RedisError> {
    match cmd.query_async(conn).await {
        Err(e) if is_missing_function(&e) => {
            tracing::warn!("the Herald functions were missing in Redis; loading them again");
            load_functions(conn).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

/// Reads one page of a topic's history with the `herald_history` function.
async fn read_history(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    topic: &TopicName,
    after: EventId,
    bound: PageBound,
    max_age_ms: &str,
) -> Result<HistoryPage, RedisError> {
    let mut cmd = redis::cmd("FCALL_RO");
    cmd.arg("herald_history")
        .arg(1)
        .arg(keys.topic(topic))
        .arg(after.to_string())
        .arg(bound.count)
        .arg(bound.bytes)
        .arg(max_age_ms);
    let flat: Vec<Vec<u8>> = fcall(conn, cmd).await?;
    let parse_id = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<EventId>().ok())
    };
    // The newest id retention removed (empty when none was): a reader after an older id missed events.
    let trimmed = flat.first().and_then(|b| parse_id(b));
    let first_retained = flat.get(1).and_then(|b| parse_id(b));
    let more = flat.get(2).is_some_and(|b| !b.is_empty());
    let mut events = Vec::new();
    for entry in flat.get(3..).unwrap_or_default().chunks_exact(3) {
        let Some(id) = parse_id(&entry[0]) else {
            continue;
        };
        let data = String::from_utf8_lossy(&entry[1]);
        let event = String::from_utf8_lossy(&entry[2]);
        let event = (!event.is_empty()).then_some(&*event);
        events.push(Stored::new(id, topic.clone(), event, &data));
    }
    Ok(HistoryPage {
        events,
        truncated: trimmed.is_some_and(|t| after < t),
        first_retained,
        more,
    })
}

impl Engine for RedisEngine {
    fn publish<'a>(&'a self, m: Publish<'a>) -> BoxFuture<'a, Result<EventId, EngineError>> {
        async move {
            let mut cmd = redis::cmd("FCALL");
            cmd.arg("herald_publish")
                .arg(1)
                .arg(self.keys.topic(m.topic))
                .arg(m.data)
                .arg(m.event.map_or("", |e| e.as_str()))
                .arg(m.idempotency_key.map_or("", |k| k.as_str()))
                .arg(&self.function_settings.args[..]);
            let id: String = self
                .shared
                .run(|mut conn| async move { fcall(&mut conn, cmd).await })
                .await?;
            id.parse()
                .map_err(|_| EngineError::Unavailable(format!("Redis answered a malformed id `{id}`")))
        }
        .boxed()
    }

    fn history<'a>(
        &'a self,
        topic: &'a TopicName,
        after: EventId,
        bound: PageBound,
    ) -> BoxFuture<'a, Result<HistoryPage, EngineError>> {
        async move {
            self.shared
                .run(|mut conn| async move {
                    read_history(
                        &mut conn,
                        &self.keys,
                        topic,
                        after,
                        bound,
                        self.function_settings.max_age_ms(),
                    )
                    .await
                })
                .await
        }
        .boxed()
    }

    fn last_id(&self) -> BoxFuture<'_, Result<EventId, EngineError>> {
        async move {
            self.shared
                .run(|mut conn| async move { last_id(&mut conn, &self.keys).await })
                .await
        }
        .boxed()
    }

    fn subscribe<'a>(&'a self, topic: &'a TopicName) -> BoxFuture<'a, Result<(), EngineError>> {
        async move {
            let (tx, rx) = oneshot::channel();
            let gone = || EngineError::Unavailable("the Redis link has stopped".into());
            self.commands
                .send(Command::Subscribe(topic.clone(), tx))
                .map_err(|_| gone())?;
            match timeout(self.command_timeout, rx).await {
                Ok(answer) => answer.map_err(|_| gone())?,
                Err(_) => Err(EngineError::Unavailable(
                    "Redis did not confirm the subscription in time".into(),
                )),
            }
        }
        .boxed()
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

async fn last_id(conn: &mut MultiplexedConnection, keys: &Keys) -> Result<EventId, RedisError> {
    let raw: Option<String> = redis::cmd("GET").arg(keys.seq()).query_async(conn).await?;
    Ok(raw.and_then(|s| s.parse().ok()).unwrap_or(EventId::ZERO))
}

/// The node's pub/sub connection and everything it delivers to the hub.
struct Link {
    client: redis::Client,
    shared: Arc<Shared>,
    keys: Keys,
    /// This node, told of every event (the hub).
    node: Arc<dyn EngineEvents>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    commands: mpsc::UnboundedReceiver<Command>,
    idle: mpsc::UnboundedReceiver<TopicName>,
    subscribed: HashSet<TopicName>,
    /// The newest id Redis had when the link last (re)subscribed, read from Redis itself: a stored event
    /// at or below it was handed over by that resume's gap-fill, so it is a duplicate.
    floor: Option<EventId>,
    /// Per topic, the newest stored id handed to the hub. Redis sends one connection's messages in
    /// execution order, which is id order, so the next one is newer; one that is not (or that claims a
    /// time far ahead) is checked against the topic's stream before it is trusted. Per topic, so one bad
    /// message cannot hold back other topics.
    cursors: HashMap<TopicName, EventId>,
    function_settings: FunctionSettings,
    /// One read of a gap-fill: bounded like any history page, so a reconnect holds a page at a time.
    gap_fill_bound: PageBound,
    command_timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
    max_topic_len: usize,
    url: String,
}

impl Link {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let error = self.serve().await;
            // Whatever cut the link (Redis restarted, went silent, the network) likely cut the shared
            // command connection too: the next command connects afresh.
            self.shared.retire(None);
            let was_ready = self.ready.swap(false, Ordering::AcqRel);
            self.subscribed.clear();
            if was_ready {
                failures = 0;
                self.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    "lost the Redis pub/sub link to {}: {error}; reconnecting",
                    self.url
                );
            } else {
                tracing::debug!("Redis pub/sub link to {} not up: {error}", self.url);
            }
            let delay = backoff(failures);
            failures = failures.saturating_add(1);
            // While down, subscriptions are refused at once (the client gets 503 and retries).
            let wake = Instant::now() + delay;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(wake) => break,
                    command = self.commands.recv() => match command {
                        Some(Command::Subscribe(_, reply)) => {
                            let _ = reply.send(Err(EngineError::Unavailable("Redis is unreachable".into())));
                        }
                        None => return,
                    },
                    // Idle topics need nothing while down: the next connection subscribes from hub state.
                    Some(_) = self.idle.recv() => {}
                }
            }
        }
    }

    /// One life of the link: connect, subscribe, gap-fill, then deliver until something fails.
    async fn serve(&mut self) -> String {
        let pubsub = match timeout(self.connect_timeout, self.client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return e.to_string(),
            Err(_) => return "connect timed out".into(),
        };
        let (mut sink, mut stream) = pubsub.split();
        if let Err(e) = self.resume(&mut sink).await {
            return e;
        }
        self.ready.store(true, Ordering::Release);
        tracing::info!("Redis pub/sub link to {} is up", self.url);
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                message = stream.next() => match message {
                    Some(message) => {
                        // Take everything already received, and hand it to the hub as one run.
                        let mut batch = Vec::new();
                        let mut next = Some(message);
                        while let Some(m) = next.take() {
                            match self.decode(m.get_channel_name(), m.get_payload_bytes()) {
                                Decoded::Event(event) => batch.push(event),
                                Decoded::Skip => {}
                                Decoded::Check(event) => {
                                    // Rare (a forged or replayed message): keep order, then ask the stream.
                                    self.node.dispatch_all(&batch);
                                    batch.clear();
                                    match self.in_stream(&event).await {
                                        Ok(true) => {
                                            self.cursors.insert(event.topic().clone(), event.id);
                                            batch.push(event.event);
                                        }
                                        Ok(false) => self.refuse(event.topic(), "its id is not in the topic's stream"),
                                        Err(e) => return format!("checking a message against its stream: {e}"),
                                    }
                                }
                            }
                            if batch.len() >= MAX_BATCH {
                                break;
                            }
                            match stream.next().now_or_never() {
                                Some(Some(m)) => next = Some(m),
                                Some(None) => {
                                    self.node.dispatch_all(&batch);
                                    return "the connection closed".into();
                                }
                                None => break,
                            }
                        }
                        self.node.dispatch_all(&batch);
                    }
                    None => return "the connection closed".into(),
                },
                Some(command) = self.commands.recv() => match command {
                    Command::Subscribe(topic, reply) => {
                        let result = self.ensure_subscribed(&mut sink, &topic).await;
                        let failed = result.as_ref().err().map(ToString::to_string);
                        let _ = reply.send(result.map_err(|e| EngineError::Unavailable(e.to_string())));
                        if let Some(e) = failed {
                            return e;
                        }
                    }
                },
                Some(topic) = self.idle.recv() => {
                    if !self.node.has_subscribers(&topic) && self.subscribed.remove(&topic) {
                        self.cursors.remove(&topic);
                        if let Err(e) = self.call(sink.unsubscribe(self.keys.channels(&topic).to_vec())).await {
                            return e;
                        }
                    }
                }
                _ = ping.tick() => {
                    if let Err(e) = self.call(sink.ping::<redis::Value>()).await {
                        return format!("ping failed: {e}");
                    }
                    self.restore_config().await;
                }
            }
        }
    }

    /// Runs one pub/sub call with the command timeout.
    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, String> {
        match timeout(self.command_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("Redis did not answer in time".into()),
        }
    }

    async fn ensure_subscribed(&mut self, sink: &mut PubSubSink, topic: &TopicName) -> Result<(), String> {
        if self.subscribed.contains(topic) || !self.node.has_subscribers(topic) {
            return Ok(());
        }
        self.call(sink.subscribe(self.keys.channels(topic).to_vec()))
            .await?;
        self.subscribed.insert(topic.clone());
        Ok(())
    }

    /// After (re)connecting: reload the functions (Redis may have restarted empty), subscribe to every
    /// topic with local subscribers, and hand the hub what it missed, in id order.
    /// A failure here ends `serve`, and `run` then retires the shared connection it used.
    async fn resume(&mut self, sink: &mut PubSubSink) -> Result<(), String> {
        let (_, mut conn) = self.shared.get().await.map_err(|e| e.to_string())?;
        load_functions(&mut conn).await.map_err(|e| e.to_string())?;
        let topics = self.node.topics();
        if !topics.is_empty() {
            let channels: Vec<String> = topics.iter().flat_map(|t| self.keys.channels(t)).collect();
            self.call(sink.subscribe(channels)).await?;
        }
        self.subscribed = topics.iter().cloned().collect();
        // Everything above `until` arrives on the new subscription; up to it comes from the streams.
        let until = last_id(&mut conn, &self.keys).await.map_err(|e| e.to_string())?;
        let Some(floor) = self.floor else {
            self.floor = Some(until);
            return Ok(());
        };
        let mut missed = Vec::new();
        for topic in &topics {
            // A topic's own cursor, unless it is beyond what Redis has (a bad message moved it).
            let mut after = match self.cursors.get(topic) {
                Some(cursor) if *cursor <= until => (*cursor).max(floor),
                _ => floor,
            };
            loop {
                let max_age_ms = self.function_settings.max_age_ms();
                let page = read_history(
                    &mut conn,
                    &self.keys,
                    topic,
                    after,
                    self.gap_fill_bound,
                    max_age_ms,
                )
                .await
                .map_err(|e| e.to_string())?;
                let mut done = !page.more;
                for event in page.events {
                    if event.id > until {
                        done = true;
                        break;
                    }
                    after = event.id;
                    missed.push(event);
                }
                if done {
                    break;
                }
            }
            self.cursors.remove(topic);
        }
        missed.sort_by_key(|e| e.id);
        self.metrics
            .gap_filled
            .fetch_add(missed.len() as u64, Ordering::Relaxed);
        if !missed.is_empty() {
            tracing::info!(
                "gap-filled {} events missed while the link was down",
                missed.len()
            );
        }
        let missed: Vec<Arc<Event>> = missed.into_iter().map(|s| s.event).collect();
        self.node.dispatch_all(&missed);
        self.floor = Some(until.max(floor));
        Ok(())
    }

    /// Turns one pub/sub message into an event for the hub; never waits.
    fn decode(&mut self, channel: &str, payload: &[u8]) -> Decoded {
        let Some((topic, stored)) = self.keys.topic_of_channel(channel, self.max_topic_len) else {
            return Decoded::Skip;
        };
        if !stored {
            // A plain `PUBLISH` to the live channel: data only, framed by us, whatever it contains.
            let data = String::from_utf8_lossy(payload);
            return Decoded::Event(Arc::new(Event::live(topic, &data)));
        }
        let Some(id) = sse::stored_frame_id(payload) else {
            self.refuse(&topic, "it is not one well-formed event frame");
            return Decoded::Skip;
        };
        if self.floor.is_some_and(|floor| id <= floor) {
            return Decoded::Skip;
        }
        let expected = self.cursors.get(&topic).is_none_or(|cursor| id > *cursor)
            && id.ms <= now_ms().saturating_add(FUTURE_TOLERANCE_MS);
        let event = Stored::from_frame(id, topic, bytes::Bytes::copy_from_slice(payload));
        if expected {
            self.cursors.insert(event.topic().clone(), id);
            Decoded::Event(event.event)
        } else {
            Decoded::Check(event)
        }
    }

    /// Whether the topic's stream holds an entry with this event's id.
    async fn in_stream(&self, event: &Stored) -> Result<bool, EngineError> {
        let (log, id) = (self.keys.log(event.topic()), event.id.to_string());
        self.shared
            .run(|mut conn| async move {
                let found: Vec<redis::Value> = redis::cmd("XRANGE")
                    .arg(log)
                    .arg(&id)
                    .arg(&id)
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                Ok(!found.is_empty())
            })
            .await
    }

    fn refuse(&self, topic: &TopicName, why: &str) {
        self.metrics.redis_refused.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%topic, "dropped a message on the topic's stored-event channel: {why}");
    }

    /// Writes `P:config` again if it is gone (a FLUSHALL), for `redis-cli` publishers; best effort.
    async fn restore_config(&self) {
        let (keys, settings) = (&self.keys, &self.function_settings);
        let restored = self
            .shared
            .run(|mut conn| async move {
                let exists: bool = redis::cmd("EXISTS")
                    .arg(keys.config())
                    .query_async(&mut conn)
                    .await?;
                if !exists {
                    settings.store(&mut conn, keys).await?;
                }
                Ok(!exists)
            })
            .await;
        if let Ok(true) = restored {
            tracing::info!("restored {} (it was gone, as after a FLUSHALL)", keys.config());
        }
    }
}

/// What one pub/sub message becomes.
enum Decoded {
    Event(Arc<Event>),
    /// A duplicate, or refused.
    Skip,
    /// A stored event whose id is not newer than its topic's cursor, or lies in the future: handed over
    /// only if the topic's stream has it.
    Check(Stored),
}

/// How far ahead of this node's clock an id's time may be before it is checked against the stream.
const FUTURE_TOLERANCE_MS: u64 = 60_000;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn backoff(failures: u32) -> Duration {
    let full = BACKOFF_FIRST
        .saturating_mul(1 << failures.min(8))
        .min(BACKOFF_CAP);
    let jitter = RandomState::new().hash_one(failures) % 50;
    full - full * jitter as u32 / 100
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        let keys = Keys {
            prefix: Arc::from("hub:a"),
        };
        let t = TopicName::parse("news.eu", 64).unwrap();
        assert_eq!(keys.live_channel(&t), "hub:a:{news.eu}:live");
        assert_eq!(
            keys.topic_of_channel(&keys.live_channel(&t), 64),
            Some((t.clone(), false))
        );
        assert_eq!(
            keys.topic_of_channel(&keys.stored_channel(&t), 64),
            Some((t, true))
        );
        assert_eq!(keys.topic_of_channel("other:{x}:live", 64), None);
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("redis://user:secret@host:6379/0"),
            "redis://***@host:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn backoff_is_capped_and_jittered() {
        for failures in 0..20 {
            let d = backoff(failures);
            assert!(d <= BACKOFF_CAP && d >= BACKOFF_FIRST / 2, "{d:?}");
        }
    }
}
