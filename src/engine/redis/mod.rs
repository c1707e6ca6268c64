//! The Redis engine: history in one stream per topic, live delivery over pub/sub, shared by any number of
//! nodes. The Lua functions in `migrations/herald.lua` do each publish in one atomic call (id from the shared
//! clock, XADD, trim, PUBLISH of the encoded frame), so every node receives events in id order.
//!
//! One dedicated pub/sub connection per node (the link) follows local interest: it subscribes to a topic's
//! channel while the hub has a local subscriber of it. When the link drops, it reconnects with jittered
//! backoff, re-subscribes, and gap-fills every subscribed topic from its stream after the last id it
//! delivered, so connected clients lose nothing and see nothing twice.

//!
//! # Layout
//! - this file: the engine and its start-up handshake (connect, version check, functions, link up);
//! - [`error`]: what start-up can fail with, and how a Redis error maps onto an [`EngineError`];
//! - [`connection`]: the I/O thread and the one multiplexed command connection every call shares;
//! - [`keys`]: key and channel names;
//! - [`functions`]: the library (`migrations/herald.lua`) and the Rust wrappers of its functions;
//! - [`migrate`]: the one-time key-layout upgrades of `migrations/`, run at start and when Redis comes back;
//! - [`link`]: the pub/sub link that follows local interest, re-subscribes and gap-fills;
//! - [`primary`]: where the primary is (one URL, asked of the sentinels for every new connection, or the
//!   Cluster's node for each key's slot), and the connection (`Conn`) it opens there;
//! - [`pubsub`]: what the link's one loop needs of a pub/sub connection, and one Redis's side of it;
//! - [`sharded`]: the Cluster's side (sharded pub/sub, re-subscribed after failovers and slot moves).

mod connection;
mod error;
mod functions;
mod keys;
mod link;
mod migrate;
mod presence;
mod primary;
mod pubsub;
mod replicas;
mod sharded;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use redis::AsyncConnectionConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep, timeout, Instant};

use super::{Cause, Engine, EngineError, EngineEvents, HistoryPage, PageBound, Publish};
use crate::config::Settings;
use crate::domain::{EventId, IdempotencyKey, TopicName, MERCURE_EVENT};
use crate::selector::Pattern;
use crate::telemetry::Metrics;
use connection::{IoThread, Lane, Shared};
pub use error::RedisStartError;
use functions::{
    fcall, fcall_replicated, last_ids, legacy_clock, load_functions, read_history, FunctionSettings,
};
use keys::Keys;
use link::{Command, Link, LinkConfig};
pub(crate) use migrate::check;
use primary::{server_info, Conn, Primary};

/// Topics a pattern stream's resume reads from `P:topics` at most (newest first); past them it is told
/// its patterns are not all replayed.
const CATALOGUE_READ: usize = 4096;

pub struct RedisEngine {
    shared: Arc<Shared>,
    keys: Keys,
    function_settings: FunctionSettings,
    /// True while the pub/sub link is up (the link sends, `/readyz` and start-up read).
    ready: watch::Receiver<bool>,
    commands: mpsc::UnboundedSender<Command>,
    command_timeout: Duration,
    /// Replicas a publish must reach before it is acknowledged (`WAIT`).
    min_replicas: u32,
    /// The one clock of a release-6 dataset, read at start-up (empty when none): new ids stay above it.
    legacy_clock: String,
    /// On a Redis Cluster: publishes take the publish lane, whose client does not retry by itself.
    sharded: bool,
    max_topic_len: usize,
    presence: Arc<presence::RedisPresence>,
    /// Stops the I/O thread (and with it the link) when the engine is dropped.
    _io: IoThread,
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
        // The hub's own topics (subscription events) may be longer than a publisher's.
        let max_topic_len = all.limits.max_topic_len.max(crate::domain::MAX_HUB_TOPIC_LEN);
        let function_settings = FunctionSettings::new(all, !settings.cluster_nodes.is_empty());
        let command_timeout = settings.command_timeout_ms;
        let connect_timeout = settings.connect_timeout_ms;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(command_timeout));
        let primary = Arc::new(Primary::new(settings, config.clone())?);
        let url = primary.shown(&settings.url);
        let sentinel = !settings.sentinels.is_empty();
        let unreachable = |last_error: String| {
            let waited_secs = settings.startup_wait_secs.as_secs();
            if sentinel {
                RedisStartError::NoPrimary {
                    url: url.clone(),
                    waited_secs,
                    last_error,
                }
            } else {
                RedisStartError::Unreachable {
                    url: url.clone(),
                    waited_secs,
                    last_error,
                }
            }
        };
        let io = IoThread::start().map_err(RedisStartError::Thread)?;
        // A publish with WAIT may take the command timeout twice: once to run, once for the replicas.
        let publish_config = config
            .clone()
            .set_response_timeout(Some(command_timeout.saturating_mul(2)));
        let shared = Arc::new(Shared::new(
            Arc::clone(&primary),
            [
                (config, command_timeout, None),
                (publish_config, command_timeout.saturating_mul(2), Some(0)),
            ],
            io.handle.clone(),
            Arc::clone(&metrics),
            url.clone(),
        ));

        let deadline = Instant::now() + settings.startup_wait_secs;
        let (_, mut conn) = loop {
            let (last_error, refused) = match shared.get().await {
                Ok(conn) => break conn,
                Err(e) => (e.to_string(), e.kind() == redis::ErrorKind::AuthenticationFailed),
            };
            if Instant::now() >= deadline {
                if refused {
                    // Kept waiting like any other failure: an ACL user may be created after Redis starts.
                    return Err(RedisStartError::Credentials {
                        url,
                        waited_secs: settings.startup_wait_secs.as_secs(),
                    });
                }
                return Err(unreachable(last_error));
            }
            tracing::warn!("waiting for Redis at {url}: {last_error}");
            sleep(Duration::from_millis(250)).await;
        };
        let info = server_info(&mut conn)
            .await
            .map_err(|source| RedisStartError::Functions {
                url: url.clone(),
                source,
            })?;
        let (version, major) = primary::redis_version(&info);
        if major < 7 {
            return Err(RedisStartError::TooOld { url, version });
        }

        let keys = Keys {
            prefix: Arc::from(settings.key_prefix.as_str()),
        };
        load_functions(&mut conn, &function_settings)
            .await
            .map_err(|source| RedisStartError::Functions {
                url: url.clone(),
                source,
            })?;
        let legacy_clock = match !settings.cluster_nodes.is_empty() {
            true => None,
            false => {
                let migrated = async {
                    migrate::upgrade(&mut conn, &keys).await?;
                    legacy_clock(&mut conn, &keys).await
                };
                migrated.await.map_err(|source| RedisStartError::Functions {
                    url: url.clone(),
                    source,
                })?
            }
        };
        drop(conn);

        let (ready_tx, mut ready) = watch::channel(false);
        let (commands, command_rx) = mpsc::unbounded_channel();
        let node_events = Arc::clone(&node);
        let link = Link::new(LinkConfig {
            shared: Arc::clone(&shared),
            keys: keys.clone(),
            node,
            metrics,
            ready: ready_tx,
            commands: command_rx,
            idle,
            function_settings: function_settings.clone(),
            gap_fill_bound: PageBound {
                count: all.history.page_size,
                bytes: all.history.max_page_bytes,
            },
            command_timeout,
            connect_timeout,
            ping_interval: settings.ping_interval_ms,
            link_timeout: settings.link_timeout_ms,
            max_topic_len,
            frame_rules: crate::sse::FrameRules {
                max_event_len: all.limits.max_event_name_len,
                max_data_bytes: all.limits.max_body_bytes,
            },
            url: url.clone(),
        });
        io.handle.spawn(link.run());
        io.handle
            .spawn(Arc::clone(&primary).watch_switches(shared.failovers.clone()));
        let wait = deadline.saturating_duration_since(Instant::now());
        let up = matches!(timeout(wait, ready.wait_for(|up| *up)).await, Ok(Ok(_)));
        if !up {
            return Err(unreachable("the pub/sub connection did not come up".into()));
        }
        if settings.min_replicas > 0 && settings.cluster_nodes.is_empty() {
            shared.watch_replicas();
        }
        if !settings.link_lost_grace_ms.is_zero() {
            io.handle.spawn(link::end_streams_when_silent(
                shared.silent.subscribe(),
                settings.link_lost_grace_ms,
                node_events,
            ));
        }
        let presence = Arc::new(presence::RedisPresence {
            shared: shared.clone(),
            prefix: keys.prefix.clone(),
            sharded: !settings.cluster_nodes.is_empty(),
        });
        Ok(Arc::new(RedisEngine {
            shared,
            keys,
            presence,
            function_settings,
            ready,
            commands,
            command_timeout,
            min_replicas: settings.min_replicas,
            legacy_clock: legacy_clock.map(|id| id.to_string()).unwrap_or_default(),
            sharded: !settings.cluster_nodes.is_empty(),
            max_topic_len,
            _io: io,
        }))
    }
}

impl RedisEngine {
    /// Sends the link a (subscribe) command and waits for Redis's confirmation, at most the command
    /// timeout.
    async fn ask_link(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), EngineError>>) -> Command,
    ) -> Result<(), EngineError> {
        // The link answers only between its attempts to connect: while down, say so at once.
        if !self.is_ready() {
            return Err(EngineError::Unavailable(
                "this node's link to Redis is down; retry in a moment".into(),
            ));
        }
        let (tx, rx) = oneshot::channel();
        let gone = || EngineError::Unavailable("the Redis link has stopped".into());
        self.commands.send(command(tx)).map_err(|_| gone())?;
        match timeout(self.command_timeout, rx).await {
            Ok(answer) => answer.map_err(|_| gone())?,
            Err(_) => Err(EngineError::Unavailable(
                "Redis did not confirm the subscription in time".into(),
            )),
        }
    }
}

impl Engine for RedisEngine {
    fn publish<'a>(&'a self, m: Publish<'a>) -> BoxFuture<'a, Result<EventId, EngineError>> {
        async move {
            self.shared.refuse_if_silent()?;
            let mut cmd = redis::cmd("FCALL");
            cmd.arg("herald_publish");
            // A Mercure update's key is its id: kept in the topic's id hash (`P:{T}:ids`) while the
            // stream holds the update, rather than as an idempotency key that outlives it.
            let mercure = m.event.is_some_and(|e| e.as_str() == MERCURE_EVENT);
            let (idem, update_id) = match (m.idempotency_key, mercure) {
                (Some(key), true) => (None, Some(key.as_str())),
                (key, _) => (key.map(IdempotencyKey::as_str), None),
            };
            match (idem, update_id) {
                // Declared, so a Cluster moving the topic holds the call until both keys are on one node.
                (Some(key), _) => cmd
                    .arg(2)
                    .arg(self.keys.topic(m.topic))
                    .arg(self.keys.idempotency(m.topic, key)),
                (None, Some(_)) => cmd
                    .arg(2)
                    .arg(self.keys.topic(m.topic))
                    .arg(self.keys.update_ids(m.topic)),
                (None, None) => cmd.arg(1).arg(self.keys.topic(m.topic)),
            };
            cmd.arg(m.data)
                .arg(m.event.map_or("", |e| e.as_str()))
                .arg(idem.unwrap_or(""))
                .arg(&self.function_settings.args[..])
                .arg(self.shared.seen.floor_arg(m.topic))
                .arg(self.legacy_clock.as_str())
                .arg("1")
                .arg(&self.function_settings.max_data_bytes)
                .arg(update_id.unwrap_or(""));
            let deadline = Instant::now() + self.command_timeout;
            let settings = &self.function_settings;
            let (id, lost): (String, String) = match (self.min_replicas, self.sharded) {
                (0, false) => {
                    self.shared
                        .run(|mut conn| async move { fcall(&mut conn, cmd, settings).await })
                        .await?
                }
                (0, true) => {
                    self.shared
                        .run_write(Lane::Publishes, deadline, |mut conn| {
                            let cmd = cmd.clone();
                            async move { fcall(&mut conn, cmd, settings).await }
                        })
                        .await?
                }
                (replicas, sharded) => {
                    if !sharded {
                        // Refused before anything is written or fanned out: WAIT could only time out.
                        let connected = match self.shared.replicas.get() {
                            Some(n) => n,
                            None => match self.shared.run(replicas::ask).await {
                                Ok(n) => {
                                    self.shared.replicas.set(n);
                                    n
                                }
                                // An ACL user without ROLE: WAIT alone decides, as before.
                                Err(EngineError::Failed(_)) => replicas,
                                Err(e) => return Err(e),
                            },
                        };
                        if connected < replicas {
                            return Err(EngineError::NotEnoughReplicas(Cause::from(format!(
                                "the primary has {connected} replicas connected and redis.min_replicas asks \
                                 for {replicas}"
                            ))));
                        }
                    }
                    let wait_ms = self.command_timeout.as_millis() as u64;
                    let call = |mut conn: Conn| {
                        let cmd = cmd.clone();
                        async move { fcall_replicated(&mut conn, cmd, replicas, wait_ms, settings).await }
                    };
                    let ((id, lost), confirmed) = if sharded {
                        self.shared.run_write(Lane::Publishes, deadline, call).await?
                    } else {
                        self.shared.run_on(Lane::Publishes, call).await?
                    };
                    if confirmed < replicas {
                        // Stored on the primary, maybe not on any replica: a failover could lose it.
                        return Err(EngineError::Unknown(Cause::from(format!(
                            "event {id} is on the primary, but only {confirmed} of the {replicas} replicas \
                             redis.min_replicas asks for confirmed it within {wait_ms} ms"
                        ))));
                    }
                    (id, lost)
                }
            };
            let id = id
                .parse()
                .map_err(|_| EngineError::Failed(format!("Redis answered a malformed id `{id}`").into()))?;
            if !lost.is_empty() {
                self.shared.report_loss(m.topic, id);
            }
            self.shared.seen.saw(m.topic, id);
            Ok(id)
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
            self.shared.refuse_if_silent()?;
            self.shared
                .run(|mut conn| async move {
                    read_history(
                        &mut conn,
                        &self.keys,
                        topic,
                        after,
                        bound,
                        &self.function_settings,
                    )
                    .await
                })
                .await
        }
        .boxed()
    }

    fn last_ids<'a>(&'a self, topics: &'a [TopicName]) -> BoxFuture<'a, Result<Vec<EventId>, EngineError>> {
        async move {
            self.shared.refuse_if_silent()?;
            let ids = self
                .shared
                .run(|conn| async move { last_ids(&conn, &self.keys, topics, &self.function_settings).await })
                .await?;
            for (topic, id) in topics.iter().zip(&ids) {
                self.shared.seen.saw(topic, *id);
            }
            Ok(ids)
        }
        .boxed()
    }

    fn find<'a>(
        &'a self,
        topic: &'a TopicName,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<EventId>, EngineError>> {
        async move {
            self.shared.refuse_if_silent()?;
            // The topic's id hash holds the updates its stream holds (`publish`).
            let name = self.keys.update_ids(topic);
            let found: Option<String> = self
                .shared
                .run(|mut conn| async move {
                    redis::cmd("HGET")
                        .arg(name)
                        .arg(key.as_str())
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            Ok(found.and_then(|id| id.parse().ok()))
        }
        .boxed()
    }

    fn topics_selected<'a>(
        &'a self,
        pattern: &'a Pattern,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<super::Selected>, EngineError>> {
        async move {
            if self.sharded {
                return Ok(None);
            }
            self.shared.refuse_if_silent()?;
            // The most recently published topics first (`P:topics`, kept by the publish function), at
            // most CATALOGUE_READ of them: a bound on what one resume reads and holds.
            let name = self.keys.catalogue();
            let written: Vec<String> = self
                .shared
                .run(|mut conn| async move {
                    redis::cmd("ZREVRANGE")
                        .arg(name)
                        .arg(0)
                        .arg(CATALOGUE_READ - 1)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let seen_all = written.len() < CATALOGUE_READ;
            let found = written
                .iter()
                .filter_map(|w| TopicName::parse(&keys::unescape(w)?, self.max_topic_len).ok())
                .filter(|t| pattern.matches(t.as_str()));
            let (topics, all) = super::at_most(found, limit);
            Ok(Some((topics, all && seen_all)))
        }
        .boxed()
    }

    fn subscribe<'a>(&'a self, topic: &'a TopicName) -> BoxFuture<'a, Result<(), EngineError>> {
        self.ask_link(move |reply| Command::Subscribe(topic.clone(), reply))
            .boxed()
    }

    fn subscribe_all(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        self.ask_link(Command::SubscribeAll).boxed()
    }

    fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn presence(&self) -> Arc<dyn super::presence::PresenceStore> {
        self.presence.clone()
    }
}
