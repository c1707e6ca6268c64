//! The node's pub/sub link: follows local interest, and after any loss reconnects with jittered backoff,
//! re-subscribes and gap-fills every subscribed topic from its stream.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::{try_join_all, FutureExt};
use futures_util::StreamExt;
use redis::aio::PubSubSink;
use redis::RedisError;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{timeout, Instant};

use super::connection::Shared;
use super::functions::{last_ids, load_functions, raise_floor, read_history, FunctionSettings};
use super::keys::Keys;
use super::migrate;
use super::primary::Conn;
use super::primary::Primary;
use crate::domain::{now_ms, EventId, TopicName};
use crate::engine::{Cause, EngineError, EngineEvents, PageBound};
use crate::event::{Event, Stored};
use crate::sse;
use crate::telemetry::{LogEvery, Metrics};

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

pub(super) enum Command {
    /// Make sure the link is subscribed to the topic; answered once Redis confirmed it.
    Subscribe(TopicName, oneshot::Sender<Result<(), EngineError>>),
}

/// The node's pub/sub connection and everything it delivers to the hub.
pub(super) struct Link {
    pub(super) shared: Arc<Shared>,
    pub(super) keys: Keys,
    /// This node, told of every event (the hub).
    pub(super) node: Arc<dyn EngineEvents>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) ready: watch::Sender<bool>,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
    pub(super) idle: mpsc::UnboundedReceiver<TopicName>,
    pub(super) subscribed: HashSet<TopicName>,
    /// Per subscribed topic, the newest id Redis had when the link last (re)subscribed, read from Redis
    /// itself: a stored event at or below it was handed over by that resume's gap-fill, so it is a
    /// duplicate.
    pub(super) floors: HashMap<TopicName, EventId>,
    /// Per topic, the newest stored id handed to the hub (or Redis' newest when the link subscribed to it).
    /// Redis sends one connection's messages in
    /// execution order, which is id order, so the next one is newer; one that is not (or that claims a
    /// time far ahead) is checked against the topic's stream before it is trusted. Per topic, so one bad
    /// message cannot hold back other topics.
    pub(super) cursors: HashMap<TopicName, EventId>,
    pub(super) function_settings: FunctionSettings,
    /// One read of a gap-fill: bounded like any history page, so a reconnect holds a page at a time.
    pub(super) gap_fill_bound: PageBound,
    pub(super) command_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) ping_interval: Duration,
    pub(super) max_topic_len: usize,
    /// What a stored-event frame must keep to (the publish rules), or it is dropped.
    pub(super) frame_rules: sse::FrameRules,
    /// Dropped frames are counted each, and logged once per interval (a forger could flood the logs).
    pub(super) refused_log: LogEvery,
    pub(super) url: String,
}

impl Link {
    pub(super) async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            let error = self.serve().await;
            // Whatever cut the link (Redis restarted, went silent, the network) likely cut the shared
            // command connection too: the next command connects afresh.
            self.shared.retire(None);
            let was_ready = self.ready.send_replace(false);
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
    pub(super) async fn serve(&mut self) -> LinkError {
        let primary = Arc::clone(&self.shared.primary);
        if let Primary::Cluster(seeds) = &*primary {
            return self.serve_sharded(seeds).await;
        }
        let mut failovers = self.shared.failovers.subscribe();
        failovers.borrow_and_update();
        let client = match self.shared.primary.client().await {
            Ok(client) => client,
            Err(e) => return e.into(),
        };
        let pubsub = match timeout(self.connect_timeout, client.get_async_pubsub()).await {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => return e.into(),
            Err(_) => return LinkError::ConnectTimeout,
        };
        let (mut sink, mut stream) = pubsub.split();
        if let Err(e) = self.resume(&mut sink).await {
            return e;
        }
        self.ready.send_replace(true);
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
                            if let Err(e) = self.take(&mut batch, m.get_channel_name(), m.get_payload_bytes()).await {
                                return e;
                            }
                            if batch.len() >= MAX_BATCH {
                                break;
                            }
                            match stream.next().now_or_never() {
                                Some(Some(m)) => next = Some(m),
                                Some(None) => {
                                    self.node.dispatch_all(&batch);
                                    return LinkError::Closed;
                                }
                                None => break,
                            }
                        }
                        self.node.dispatch_all(&batch);
                    }
                    None => return LinkError::Closed,
                },
                Some(command) = self.commands.recv() => match command {
                    Command::Subscribe(topic, reply) => {
                        if let Some(e) = answer(reply, self.ensure_subscribed(&mut sink, &topic).await) {
                            return e;
                        }
                    }
                },
                Some(topic) = self.idle.recv() => {
                    if self.release(&topic) {
                        if let Err(e) = self.call(sink.unsubscribe(self.keys.channels(&topic).to_vec())).await {
                            return e;
                        }
                    }
                }
                _ = failovers.changed() => return LinkError::Failover,
                _ = ping.tick() => {
                    if let Err(e) = self.call(sink.ping::<redis::Value>()).await {
                        return LinkError::Ping(Box::new(e));
                    }
                }
            }
        }
    }

    /// Whether an idle topic is to be unsubscribed now (no local subscriber left); forgets its cursor and
    /// floor.
    pub(super) fn release(&mut self, topic: &TopicName) -> bool {
        if self.node.has_subscribers(topic) || !self.subscribed.remove(topic) {
            return false;
        }
        self.cursors.remove(topic);
        self.floors.remove(topic);
        true
    }

    /// Runs one pub/sub call with the command timeout.
    pub(super) async fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, RedisError>>,
    ) -> Result<T, LinkError> {
        match timeout(self.command_timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(LinkError::Timeout),
        }
    }

    pub(super) async fn ensure_subscribed(
        &mut self,
        sink: &mut PubSubSink,
        topic: &TopicName,
    ) -> Result<(), LinkError> {
        if self.subscribed.contains(topic) || !self.node.has_subscribers(topic) {
            return Ok(());
        }
        self.call(sink.subscribe(self.keys.channels(topic).to_vec()))
            .await?;
        self.subscribed.insert(topic.clone());
        self.start_at_newest(topic).await
    }

    /// Where a newly subscribed topic stands: a resume gap-fills from there if nothing arrives before.
    pub(super) async fn start_at_newest(&mut self, topic: &TopicName) -> Result<(), LinkError> {
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

    /// After (re)connecting: reload the functions (Redis may have restarted empty), subscribe to every
    /// topic with local subscribers, and hand the hub what it missed, in id order.
    /// A failure here ends `serve`, and `run` then retires the shared connection it used.
    pub(super) async fn resume(&mut self, sink: &mut PubSubSink) -> Result<(), LinkError> {
        let (_, mut conn) = self.shared.get().await?;
        load_functions(&mut conn, &self.function_settings).await?;
        // Redis may be back from an older backup: its layout is upgraded before any topic is read.
        migrate::upgrade(&mut conn, &self.keys).await?;
        let topics = self.node.topics();
        if !topics.is_empty() {
            let channels: Vec<String> = topics.iter().flat_map(|t| self.keys.channels(t)).collect();
            self.call(sink.subscribe(channels)).await?;
        }
        self.resubscribed(&mut conn, topics).await
    }

    /// Once every topic with local subscribers is subscribed again: records them, forgets the floors of
    /// topics no longer received, and fills what each topic missed.
    pub(super) async fn resubscribed(
        &mut self,
        conn: &mut Conn,
        topics: Vec<TopicName>,
    ) -> Result<(), LinkError> {
        self.subscribed = topics.iter().cloned().collect();
        let subscribed = &self.subscribed;
        self.floors.retain(|topic, _| subscribed.contains(topic));
        self.fill(conn, &topics).await
    }

    /// Once the topics' channels are subscribed (again): hands the hub what it missed of each, from the
    /// topic's stream, after the last id it delivered up to Redis' newest (which the topic's floor then
    /// holds, so live copies of those events are skipped). A topic the link never received before (its
    /// first life) needs nothing filled.
    pub(super) async fn fill(&mut self, conn: &mut Conn, topics: &[TopicName]) -> Result<(), LinkError> {
        let mut filled = 0usize;
        // Everything above a topic's `until` arrives on the new subscription; up to it comes from the
        // stream. Each topic's clock is first raised to what this node has seen, in case Redis lost
        // writes: all topics at once (one pipelined round trip on one Redis, one per shard on a Cluster).
        let raised = {
            let (keys, seen, settings) = (&self.keys, &self.shared.seen, &self.function_settings);
            try_join_all(topics.iter().map(|topic| {
                let mut conn = conn.clone();
                async move { raise_floor(&mut conn, keys, topic, seen, settings).await }
            }))
            .await?
        };
        for (topic, (until, lost)) in topics.iter().zip(raised) {
            if lost {
                self.shared.report_loss(topic, until);
            }
            // The topic's own cursor, unless it is beyond what Redis has (a bad message moved it).
            let floor = self.floors.get(topic).copied();
            let mut after = match (self.cursors.get(topic).copied(), floor) {
                (Some(cursor), floor) if cursor <= until => cursor.max(floor.unwrap_or(EventId::ZERO)),
                (_, Some(floor)) => floor,
                (_, None) => until,
            };
            if after >= until {
                // Nothing missed (or never received before: the link's first life).
                self.floors.insert(topic.clone(), until);
                self.cursors.remove(topic);
                continue;
            }
            loop {
                let page = read_history(
                    conn,
                    &self.keys,
                    topic,
                    after,
                    self.gap_fill_bound,
                    &self.function_settings,
                )
                .await?;
                let mut done = !page.more;
                let mut run = Vec::with_capacity(page.events.len());
                for event in page.events {
                    if event.id > until {
                        done = true;
                        break;
                    }
                    after = event.id;
                    run.push(event.event);
                }
                // Handed over page by page, the cursor with it: if a later read fails, the next
                // resume goes on from here (nothing read is dropped, nothing handed over twice).
                filled += run.len();
                self.node.dispatch_all(&run);
                self.cursors.insert(topic.clone(), after);
                if done {
                    break;
                }
            }
            self.floors.insert(topic.clone(), until);
            self.cursors.remove(topic);
        }
        self.metrics
            .gap_filled
            .fetch_add(filled as u64, Ordering::Relaxed);
        if filled > 0 {
            tracing::info!("gap-filled {filled} events missed while the link was down");
        }
        Ok(())
    }

    /// Adds one pub/sub message to the run for the hub (or drops it); waits only for the rare message
    /// that must be checked against its stream.
    pub(super) async fn take(
        &mut self,
        batch: &mut Vec<Arc<Event>>,
        channel: &str,
        payload: &[u8],
    ) -> Result<(), LinkError> {
        match self.decode(channel, payload) {
            Decoded::Event(event) => batch.push(event),
            Decoded::Skip => {}
            Decoded::Check(event) => {
                // Rare (a forged or replayed message): keep order, then ask the stream.
                self.node.dispatch_all(batch);
                batch.clear();
                match self.in_stream(&event).await {
                    Ok(true) => {
                        self.shared.seen.saw(event.topic(), event.id);
                        self.cursors.insert(event.topic().clone(), event.id);
                        batch.push(event.event);
                    }
                    Ok(false) => self.refuse(event.topic(), "its id is not in the topic's stream"),
                    Err(e) => return Err(LinkError::Check(e)),
                }
            }
        }
        Ok(())
    }

    /// Turns one pub/sub message into an event for the hub; never waits.
    pub(super) fn decode(&mut self, channel: &str, payload: &[u8]) -> Decoded {
        let Some((topic, stored)) = self.keys.topic_of_channel(channel, self.max_topic_len) else {
            return Decoded::Skip;
        };
        if !stored {
            // A plain `PUBLISH` to the live channel: data only, framed by us, whatever it contains.
            let data = String::from_utf8_lossy(payload);
            return Decoded::Event(Arc::new(Event::live(topic, &data)));
        }
        let id = match sse::stored_frame(payload, self.frame_rules) {
            Ok(id) => id,
            Err(why) => {
                self.refuse(&topic, &why.to_string());
                return Decoded::Skip;
            }
        };
        if self.floors.get(&topic).is_some_and(|floor| id <= *floor) {
            return Decoded::Skip;
        }
        let expected = self.cursors.get(&topic).is_none_or(|cursor| id > *cursor)
            && id.ms <= now_ms().saturating_add(FUTURE_TOLERANCE_MS);
        let event = Stored::from_frame(id, topic, bytes::Bytes::copy_from_slice(payload));
        if expected {
            self.shared.seen.saw(event.topic(), id);
            self.cursors.insert(event.topic().clone(), id);
            Decoded::Event(event.event)
        } else {
            Decoded::Check(event)
        }
    }

    /// Whether the topic's stream holds an entry with this event's id.
    pub(super) async fn in_stream(&self, event: &Stored) -> Result<bool, EngineError> {
        let (log, id) = (self.keys.topic(event.topic()), event.id.to_string());
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

    pub(super) fn refuse(&self, topic: &TopicName, why: &str) {
        self.metrics.redis_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(held_back) = self.refused_log.ready() {
            tracing::warn!(
                %topic,
                held_back,
                "dropped a message on the topic's stored-event channel: {why} (herald_redis_refused_messages_total counts them all; one line per 10 s)"
            );
        }
    }
}

/// Answers a subscribe command; returns the error that must end this life of the link.
pub(super) fn answer(
    reply: oneshot::Sender<Result<(), EngineError>>,
    result: Result<(), LinkError>,
) -> Option<LinkError> {
    match result {
        Ok(()) => {
            let _ = reply.send(Ok(()));
            None
        }
        Err(e) => {
            let _ = reply.send(Err(EngineError::Unavailable(Cause::with_raw(
                "the Redis link failed",
                e.to_string(),
            ))));
            Some(e)
        }
    }
}

/// What one pub/sub message becomes.
pub(super) enum Decoded {
    Event(Arc<Event>),
    /// A duplicate, or refused.
    Skip,
    /// A stored event whose id is not newer than its topic's cursor, or lies in the future: handed over
    /// only if the topic's stream has it.
    Check(Stored),
}

/// How far ahead of this node's clock an id's time may be before it is checked against the stream: ids
/// come from Redis's clock, so only the skew between the two hosts' clocks (NTP keeps it far below
/// this); a forged id further ahead would otherwise move the topic's clock and fake a loss.
pub(super) const FUTURE_TOLERANCE_MS: u64 = 2_000;

pub(super) fn backoff(failures: u32) -> Duration {
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
    fn backoff_is_capped_and_jittered() {
        for failures in 0..20 {
            let d = backoff(failures);
            assert!(d <= BACKOFF_CAP && d >= BACKOFF_FIRST / 2, "{d:?}");
        }
    }
}
