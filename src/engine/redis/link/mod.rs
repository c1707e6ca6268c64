//! The node's pub/sub link: follows local interest, and after any loss reconnects with jittered backoff,
//! re-subscribes and gap-fills every subscribed topic from its stream. One loop for one Redis (or the
//! primary Sentinel names) and for a Cluster's sharded pub/sub: what differs is behind
//! [`PubSub`] (`pubsub::Plain`, `sharded::Sharded`).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, Instant};

use super::connection::Shared;
use super::functions::{last_ids, load_functions, FunctionSettings};
use super::keys::Keys;
use super::migrate;
use super::primary::Primary;
use super::pubsub::{Message, Plain, PubSub, Push};
use super::sharded::Sharded;
use crate::domain::{EventId, TopicName};
use crate::engine::{EngineError, EngineEvents, PageBound};
use crate::event::Event;
use crate::sse;
use crate::telemetry::{LogEvery, Metrics};

mod backoff;
mod everything;
mod fill;
mod fills;
mod inflight;
mod receive;
mod silence;

pub(super) use backoff::backoff;
use inflight::InFlight;
pub(super) use silence::end_streams_when_silent;

/// Reconnect delays double from the first to the last, each with up to 50 % jitter off. The cap keeps
/// recovery within a second of Redis answering again.
pub(super) const BACKOFF_FIRST: Duration = Duration::from_millis(50);
pub(super) const BACKOFF_CAP: Duration = Duration::from_millis(500);

/// Messages handed to the hub in one run at most, so one busy topic cannot hold the link for long.
pub(super) const MAX_BATCH: usize = 256;

/// Why one life of the link ended; it reconnects after any of them.
#[derive(Debug, thiserror::Error)]
pub(super) enum LinkError {
    #[error("connecting timed out")]
    ConnectTimeout,
    #[error("Redis did not answer in time")]
    Timeout,
    #[error("the connection closed")]
    Closed,
    #[error("ping failed: {0}")]
    Ping(Box<LinkError>),
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("checking a message against its stream: {0}")]
    Check(EngineError),
    #[error("the primary moved (a failover)")]
    Failover,
}

impl LinkError {
    /// Whether Redis went silent (a timeout, no route, no name) rather than answering "no" (a refused or
    /// closed connection: Redis restarting, with its host up): only silence makes the node refuse at once
    /// and, after the grace, end its streams.
    fn is_silence(&self) -> bool {
        match self {
            LinkError::ConnectTimeout | LinkError::Timeout => true,
            LinkError::Ping(e) => e.is_silence(),
            LinkError::Redis(e) => e.is_timeout() || (e.is_io_error() && !e.is_connection_dropped()),
            LinkError::Check(EngineError::Unknown(_)) => true,
            LinkError::Closed | LinkError::Check(_) | LinkError::Failover => false,
        }
    }
}

pub(super) enum Command {
    /// Make sure the link is subscribed to the topic; answered once Redis confirmed it.
    Subscribe(TopicName, oneshot::Sender<Result<(), EngineError>>),
    /// Make sure the link receives every topic (for pattern subscriptions); answered once confirmed.
    SubscribeAll(oneshot::Sender<Result<(), EngineError>>),
}

/// What a link is built from (`RedisEngine::start`).
pub(super) struct LinkConfig {
    pub(super) shared: Arc<Shared>,
    pub(super) keys: Keys,
    /// This node, told of every event (the hub).
    pub(super) node: Arc<dyn EngineEvents>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ready: watch::Sender<bool>,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) idle: mpsc::UnboundedReceiver<TopicName>,
    pub(super) function_settings: FunctionSettings,
    /// One read of a gap-fill: bounded like any history page, so a reconnect holds a page at a time.
    pub(super) gap_fill_bound: PageBound,
    pub(super) command_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) ping_interval: Duration,
    /// A ping unanswered this long ends the link's life (and counts as silence).
    pub(super) link_timeout: Duration,
    pub(super) max_topic_len: usize,
    /// What a stored-event frame must keep to (the publish rules), or it is dropped.
    pub(super) frame_rules: sse::FrameRules,
    pub(super) url: String,
}

/// The node's pub/sub connection and everything it delivers to the hub.
pub(super) struct Link {
    shared: Arc<Shared>,
    keys: Keys,
    node: Arc<dyn EngineEvents>,
    metrics: Arc<Metrics>,
    ready: watch::Sender<bool>,
    commands: mpsc::UnboundedReceiver<Command>,
    idle: mpsc::UnboundedReceiver<TopicName>,
    subscribed: HashSet<TopicName>,
    /// Per subscribed topic, the newest id Redis had when the link last (re)subscribed, read from Redis
    /// itself: a stored event at or below it was handed over by that resume's gap-fill, so it is a
    /// duplicate.
    floors: HashMap<TopicName, EventId>,
    /// Per topic, the newest stored id handed to the hub (or Redis' newest when the link subscribed to
    /// it). Redis sends one connection's messages in execution order, which is id order, so the next one
    /// is newer; one that is not (or that claims a time far ahead) is checked against the topic's stream
    /// before it is trusted. Per topic, so one bad message cannot hold back other topics.
    cursors: HashMap<TopicName, EventId>,
    /// Every topic's stored channel is received too (`everything`).
    everything: bool,
    /// The topic and id of the last stored event taken from its channel's own subscription: its
    /// pattern copy, right behind it, is a duplicate.
    last_plain: Option<(TopicName, EventId)>,
    function_settings: FunctionSettings,
    gap_fill_bound: PageBound,
    command_timeout: Duration,
    connect_timeout: Duration,
    ping_interval: Duration,
    link_timeout: Duration,
    max_topic_len: usize,
    frame_rules: sse::FrameRules,
    /// Dropped frames are counted each, and logged once per interval (a forger could flood the logs).
    refused_log: LogEvery,
    url: String,
}

impl Link {
    pub(super) fn new(c: LinkConfig) -> Self {
        Link {
            shared: c.shared,
            keys: c.keys,
            node: c.node,
            metrics: c.metrics,
            ready: c.ready,
            commands: c.commands,
            idle: c.idle,
            subscribed: HashSet::new(),
            floors: HashMap::new(),
            cursors: HashMap::new(),
            everything: false,
            last_plain: None,
            function_settings: c.function_settings,
            gap_fill_bound: c.gap_fill_bound,
            command_timeout: c.command_timeout,
            connect_timeout: c.connect_timeout,
            ping_interval: c.ping_interval,
            link_timeout: c.link_timeout,
            max_topic_len: c.max_topic_len,
            frame_rules: c.frame_rules,
            refused_log: LogEvery::new(Duration::from_secs(10)),
            url: c.url,
        }
    }

    pub(super) async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let error = self.serve().await;
            // Whatever cut the link (Redis restarted, went silent, the network) likely cut the shared
            // command connection too: the next command connects afresh.
            self.shared.retire(None);
            let was_ready = self.ready.send_replace(false);
            let silent = error.is_silence();
            self.shared
                .silent
                .send_if_modified(|s| std::mem::replace(s, silent) != silent);
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
                        Some(Command::Subscribe(_, reply)) | Some(Command::SubscribeAll(reply)) => {
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
    async fn serve(&mut self) -> LinkError {
        let primary = Arc::clone(&self.shared.primary);
        if let Primary::Cluster(seeds) = &*primary {
            let (keys, max_topic_len) = (self.keys.clone(), self.max_topic_len);
            return match Sharded::connect(
                seeds,
                self.command_timeout,
                self.connect_timeout,
                keys,
                max_topic_len,
            )
            .await
            {
                Ok(sharded) => self.serve_on(sharded, None, "Redis Cluster").await,
                Err(e) => e,
            };
        }
        // A failover seen by the command connections (`-READONLY`, `+switch-master`) ends this life.
        let mut failovers = self.shared.failovers.subscribe();
        failovers.borrow_and_update();
        match Plain::connect(&self.shared, self.connect_timeout).await {
            Ok(plain) => self.serve_on(plain, Some(failovers), "Redis").await,
            Err(e) => e,
        }
    }

    /// Delivers from `pubsub` until something fails: messages in runs, subscribe commands, idle topics,
    /// pings, and (with `failovers`) the primary moving.
    async fn serve_on<P: PubSub>(
        &mut self,
        mut pubsub: P,
        mut failovers: Option<watch::Receiver<u64>>,
        what: &str,
    ) -> LinkError {
        if let Err(e) = self.resume(&mut pubsub).await {
            return e;
        }
        self.shared
            .silent
            .send_if_modified(|s| std::mem::replace(s, false));
        self.ready.send_replace(true);
        tracing::info!("{what} pub/sub link to {} is up", self.url);
        let mut flight = InFlight::default();
        let mut filling = fills::Filling::default();
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let moved = async {
                match failovers.as_mut() {
                    Some(failovers) => {
                        let _ = failovers.changed().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                biased;
                push = pubsub.next() => {
                    // Take everything already received, and hand it to the hub as one run.
                    let mut batch = Vec::new();
                    let mut next = Some(push);
                    while let Some(push) = next.take() {
                        if let Err(e) = self.on_push(&mut pubsub, &mut filling, &mut batch, push).await {
                            self.node.dispatch_all(&batch);
                            return e;
                        }
                        if batch.len() >= MAX_BATCH {
                            break;
                        }
                        next = pubsub.ready();
                    }
                    self.node.dispatch_all(&batch);
                }
                Some(command) = self.commands.recv() => match command {
                    Command::Subscribe(topic, reply) => {
                        if let Some(e) = self.on_subscribe(&mut pubsub, &mut flight, topic, reply).await {
                            return e;
                        }
                    }
                    Command::SubscribeAll(reply) => {
                        if let Some(e) = self.on_subscribe_all(&mut pubsub, reply).await {
                            return e;
                        }
                    }
                },
                Some(topic) = self.idle.recv() => {
                    if let Err(e) = self.on_idle(&mut pubsub, &mut flight, topic).await {
                        return e;
                    }
                }
                landed = flight.next() => self.landed(&mut pubsub, &mut flight, landed).await,
                raised = filling.next() => {
                    if let Err(e) = self.finish_fill(&mut pubsub, &mut filling, raised).await {
                        return e;
                    }
                }
                () = moved => return LinkError::Failover,
                _ = ping.tick() => {
                    let answered = match timeout(self.link_timeout, pubsub.ping()).await {
                        Ok(answer) => answer.map_err(LinkError::from),
                        Err(_) => Err(LinkError::Timeout),
                    };
                    if let Err(e) = answered {
                        return LinkError::Ping(Box::new(e));
                    }
                    if let Err(e) = self.release_everything(&mut pubsub).await {
                        return e;
                    }
                }
            }
        }
    }

    /// One push: a message joins the run; on a Cluster, a (re)subscription is gap-filled and a dropped
    /// subscription (the slot moved) is made again.
    async fn on_push<P: PubSub>(
        &mut self,
        pubsub: &mut P,
        filling: &mut fills::Filling,
        batch: &mut Vec<Arc<Event>>,
        push: Push<P::Message>,
    ) -> Result<(), LinkError> {
        match push {
            Push::Message(m) => {
                // A topic whose fill is out keeps its messages back until the fill has gone out.
                let held = !filling.is_empty()
                    && self
                        .keys
                        .topic_of_channel(m.channel(), self.max_topic_len)
                        .is_some_and(|(topic, _)| {
                            filling.hold(&topic, m.channel(), m.payload(), m.by_pattern())
                        });
                if held {
                    return Ok(());
                }
                self.take(batch, m.channel(), m.payload(), m.by_pattern()).await
            }
            Push::Subscribed(topic) if self.subscribed.contains(&topic) => {
                // The fill goes out once its floor is read (beside the loop, `fills`), after this run.
                let commands = pubsub.commands(&self.shared).await?;
                self.start_fill(filling, commands, topic);
                Ok(())
            }
            Push::Dropped(topic) if self.subscribed.contains(&topic) => {
                tracing::info!(%topic, "the topic's slot moved to another shard; subscribing there");
                // Answered once the new owner confirms; its confirmation push then fills the gap.
                self.call(pubsub.subscribe(&self.keys, std::slice::from_ref(&topic)))
                    .await
            }
            Push::Disconnected => Err(LinkError::Closed),
            Push::ShardLost => {
                tracing::warn!(
                    "a Redis Cluster shard's connection dropped; the other shards keep delivering, and its \
                     topics are subscribed again (and gap-filled) once the Cluster answers for them"
                );
                self.metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                pubsub.resubscribe(&self.keys, self.subscribed.iter().cloned().collect());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Whether an idle topic is to be unsubscribed now (no local subscriber left); forgets its cursor and
    /// floor.
    fn release(&mut self, topic: &TopicName) -> bool {
        if self.node.has_subscribers(topic) || !self.subscribed.remove(topic) {
            return false;
        }
        self.cursors.remove(topic);
        self.floors.remove(topic);
        true
    }

    /// Runs one pub/sub call with the command timeout.
    async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, LinkError> {
        match timeout(self.command_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(LinkError::Timeout),
        }
    }

    async fn ensure_subscribed<P: PubSub>(
        &mut self,
        pubsub: &mut P,
        topic: &TopicName,
    ) -> Result<(), LinkError> {
        if self.subscribed.contains(topic) || !self.node.has_subscribers(topic) {
            return Ok(());
        }
        self.call(pubsub.subscribe(&self.keys, std::slice::from_ref(topic)))
            .await?;
        self.subscribed.insert(topic.clone());
        self.start_at_newest(topic).await
    }

    /// Where a newly subscribed topic stands: a resume gap-fills from there if nothing arrives before.
    async fn start_at_newest(&mut self, topic: &TopicName) -> Result<(), LinkError> {
        let newest = self
            .shared
            .run(|conn| {
                let (keys, settings) = (&self.keys, &self.function_settings);
                async move { last_ids(&conn, keys, std::slice::from_ref(topic), settings).await }
            })
            .await
            .map_err(LinkError::Check)?;
        if let Some(newest) = newest.first() {
            self.cursors.entry(topic.clone()).or_insert(*newest);
        }
        Ok(())
    }

    /// After (re)connecting: reload the functions (Redis may have restarted empty; on a Cluster, on
    /// every primary), upgrade an older key layout (one Redis: it may be back from an older backup),
    /// subscribe to every topic with local subscribers, record them, forget the floors of topics no
    /// longer received, and hand the hub what each topic missed, in id order. A failure here ends
    /// `serve`, and `run` then retires the shared connection it used.
    async fn resume<P: PubSub>(&mut self, pubsub: &mut P) -> Result<(), LinkError> {
        let mut conn = pubsub.commands(&self.shared).await?;
        load_functions(&mut conn, &self.function_settings).await?;
        if P::UPGRADES_LAYOUT {
            migrate::upgrade(&mut conn, &self.keys).await?;
        }
        let topics = self.node.topics();
        self.call(pubsub.subscribe(&self.keys, &topics)).await?;
        self.subscribed = topics.iter().cloned().collect();
        let subscribed = &self.subscribed;
        self.floors.retain(|topic, _| subscribed.contains(topic));
        self.resume_everything(pubsub).await?;
        self.fill(&mut conn, &topics).await
    }
}
