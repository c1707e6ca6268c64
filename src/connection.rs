//! One SSE connection's body: `retry:`, then the replay after `Last-Event-ID` merged across topics in id
//! order, then live events from the hub, heartbeats while idle, and a closing comment when it ends.
//!
//! A single-topic stream sends each event's shared frame as it is. A multi-topic stream keeps its position
//! in each topic and sends each event with the composite of those positions as its `id:` ([`cursor`]),
//! since ids are ordered per topic only.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use tokio::time::{interval_at, Instant, Interval, MissedTickBehavior, Sleep};

use crate::auth::{self, Auth, Grant};
use crate::cursor::Positions;
use crate::domain::{EventId, TopicName};
use crate::engine::{Engine, EngineError, PageBound};
use crate::event::{Event, Shape, Stored};
use crate::hub::{CloseReason, Membership, Take};
use crate::limits::Slot;
use crate::sse;
use crate::telemetry::Metrics;

mod notices;
mod streams;

pub use streams::Streams;

use notices::{gap_notice, pattern_gap_notice, store_lost_goodbye};

const HEARTBEAT: &[u8] = b":\n\n";

/// Where a resuming connection starts, per topic (in the membership's order): events after `after`, up to
/// and including `until` (the engine's newest id once this connection had joined the hub); everything
/// newer arrives live.
#[derive(Debug, Clone)]
struct Resume {
    after: Vec<EventId>,
    until: Vec<EventId>,
}

pub struct Connection {
    engine: Arc<dyn Engine>,
    auth: Arc<Auth>,
    metrics: Arc<Metrics>,
    membership: Membership,
    /// The client IP's connection slot, given back when the stream ends.
    _slot: Slot,
    /// When the subscriber's token expires: the stream ends then, and the client must come back with a
    /// fresh token. Boxed, and only for tokens that expire: an idle stream's future stays small.
    expiry: Option<Pin<Box<Sleep>>>,
    heartbeat: Interval,
    retry_ms: u64,
    page: PageBound,
    phase: Phase,
    /// A single-topic stream's live events with ids up to this one were (or will be) sent by the replay:
    /// skipped, never twice.
    skip_through: Option<EventId>,
    /// A multi-topic stream's position per topic (boxed: most streams have one topic).
    positions: Option<Box<Positions>>,
    /// What the stream sends of each event: native frames (maybe enveloped) or Mercure's.
    shape: Shape,
    /// The subscriber's verified token, if any: private Mercure updates need one allowing them.
    grant: Option<Box<Grant>>,
    /// The stream resumes from a `Last-Event-ID`.
    resumed: bool,
    /// Every topic its patterns select was named for its replay (the memory engine lists them).
    patterns_replayed: bool,
    /// `poll=1`: end the stream once the replay is sent (for scripts catching up, not browsers).
    poll: bool,
    /// Its subscriptions as presence lists them (`[presence]` on): they end when the stream is dropped.
    _presence: Option<crate::presence::Guard>,
}

enum Phase {
    Hello(Option<Resume>),
    Replay(Vec<Cursor>),
    Live,
    Done,
}

/// One topic's read position in a replay.
struct Cursor {
    topic: TopicName,
    after: EventId,
    until: EventId,
    buf: VecDeque<Stored>,
    started: bool,
    exhausted: bool,
}

impl Connection {
    /// `after` is where a resuming stream starts in each topic, and `newest` the engine's newest id of
    /// each topic when the stream joined (what its replay sends up to; read for resuming and multi-topic
    /// streams only), both in the membership's order.
    pub fn new(
        streams: &Streams,
        membership: Membership,
        after: Option<Vec<EventId>>,
        newest: Vec<EventId>,
        slot: Slot,
        grant: Option<Grant>,
        shape: Shape,
    ) -> Self {
        let token_expires_at = grant.as_ref().and_then(Grant::expires_at);
        let topics = membership.conn().topics();
        let positions =
            (topics.len() > 1).then(|| Box::new(Positions::new(topics, after.as_deref(), &newest)));
        let resumed = after.is_some();
        let resume = after.map(|after| Resume { after, until: newest });
        let period = streams.heartbeat;
        let mut heartbeat = interval_at(Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let expires = token_expires_at.and_then(|at| {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            // An `exp` too far ahead to represent (2^64-1, say) means no expiry, not a panic.
            Instant::now().checked_add(Duration::from_secs(at.saturating_sub(now)))
        });
        Connection {
            engine: Arc::clone(&streams.engine),
            auth: Arc::clone(&streams.auth),
            metrics: Arc::clone(&streams.metrics),
            membership,
            _slot: slot,
            expiry: expires.map(|at| Box::pin(tokio::time::sleep_until(at))),
            heartbeat,
            retry_ms: streams.retry_ms,
            page: streams.page,
            skip_through: resume.as_ref().and_then(|r| r.until.first().copied()),
            positions,
            phase: Phase::Hello(resume),
            shape,
            grant: grant.map(Box::new),
            resumed,
            patterns_replayed: false,
            poll: false,
            _presence: None,
        }
    }

    /// Holds the stream's presence guard for as long as it lives.
    pub(crate) fn hold_presence(&mut self, guard: crate::presence::Guard) {
        self._presence = Some(guard);
    }

    /// Its patterns' topics are all in its replay: no notice that they are not.
    pub fn patterns_replayed(&mut self) {
        self.patterns_replayed = true;
    }

    /// Ends the stream after the replay instead of going live (`poll=1`).
    pub fn poll_only(&mut self) {
        self.poll = true;
    }

    /// The body stream; dropping it (client gone) drops the membership and frees the queue.
    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, Infallible>> {
        futures_util::stream::unfold(self, |mut conn| async move {
            let chunk = conn.next_chunk().await?;
            Some((Ok(chunk), conn))
        })
    }

    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            match &mut self.phase {
                Phase::Hello(resume) => {
                    self.phase = match resume.take() {
                        Some(r) => Phase::Replay(
                            self.membership
                                .conn()
                                .topics()
                                .iter()
                                .enumerate()
                                .map(|(i, topic)| {
                                    let after = r.after.get(i).copied().unwrap_or(EventId::ZERO);
                                    let until = r.until.get(i).copied().unwrap_or(EventId::ZERO);
                                    Cursor {
                                        topic: topic.clone(),
                                        after,
                                        until,
                                        buf: VecDeque::new(),
                                        started: false,
                                        // A topic with nothing stored (its keys may have expired)
                                        // is still read once: the engine says if events are gone.
                                        exhausted: after >= until && until != EventId::ZERO,
                                    }
                                })
                                .collect(),
                        ),
                        None => Phase::Live,
                    };
                    // Sent at once so the response head and first bytes reach the client immediately.
                    let mut hello = BytesMut::from(&sse::retry(self.retry_ms)[..]);
                    if self.resumed && self.membership.conn().has_patterns() && !self.patterns_replayed {
                        hello.extend_from_slice(&pattern_gap_notice());
                    }
                    return Some(hello.freeze());
                }
                Phase::Replay(cursors) => {
                    let mut cursors = std::mem::take(cursors);
                    // Boxed: a replay is short, and its reads should not size every idle stream.
                    match Box::pin(self.replay_step(&mut cursors)).await {
                        Ok(chunk) => {
                            let finished = cursors.iter().all(|c| c.exhausted && c.buf.is_empty());
                            if let (true, Some(positions)) = (finished, &mut self.positions) {
                                positions.replayed();
                            }
                            self.phase = if finished && self.poll {
                                Phase::Done
                            } else if finished {
                                Phase::Live
                            } else {
                                Phase::Replay(cursors)
                            };
                            if !chunk.is_empty() {
                                return Some(chunk);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "replay failed; ending the stream so the client retries");
                            self.phase = Phase::Done;
                            return Some(sse::comment(
                                "herald: history is unavailable; reconnect to resume",
                            ));
                        }
                    }
                }
                Phase::Live => return Some(self.live_step().await),
                Phase::Done => return None,
            }
        }
    }

    /// Reads what is needed and sends events from every topic in id order, as far as all topics are known.
    async fn replay_step(&mut self, cursors: &mut [Cursor]) -> Result<Bytes, EngineError> {
        let mut out = BytesMut::new();
        for c in cursors.iter_mut().filter(|c| c.buf.is_empty() && !c.exhausted) {
            let page = self.engine.history(&c.topic, c.after, self.page).await?;
            if !c.started {
                c.started = true;
                if page.truncated {
                    self.metrics.gaps.fetch_add(1, Ordering::Relaxed);
                    out.extend_from_slice(&gap_notice(&c.topic, c.after, page.first_retained));
                }
            }
            c.exhausted = !page.more;
            for event in page.events {
                if event.id > c.until {
                    c.exhausted = true;
                    break;
                }
                c.after = event.id;
                c.buf.push_back(event);
            }
            // Reaching the bound ends this topic's replay without one more read to find it empty.
            c.exhausted |= c.after >= c.until;
        }
        let mut sent = 0u64;
        // Merge while every topic that may still have events has one buffered to compare.
        while cursors.iter().all(|c| !c.buf.is_empty() || c.exhausted) {
            let next = cursors
                .iter_mut()
                .filter(|c| !c.buf.is_empty())
                .min_by_key(|c| c.buf.front().map(|e| e.id));
            let Some(event) = next.and_then(|c| c.buf.pop_front()) else {
                break;
            };
            let visible = self.visible(&event.event);
            if let Some(positions) = &mut self.positions {
                positions.replayed_one(event.topic(), event.id);
            }
            if !visible {
                continue;
            }
            let frame = event.event.frame_in(self.shape);
            match (&mut self.positions, self.shape) {
                (Some(positions), Shape::Native { .. }) => positions.write_frame(frame, &mut out),
                _ => out.extend_from_slice(frame),
            }
            sent += 1;
        }
        self.metrics.replayed.fetch_add(sent, Ordering::Relaxed);
        self.metrics.delivered.fetch_add(sent, Ordering::Relaxed);
        Ok(out.freeze())
    }

    /// Whether this stream sends `event` at all: a Mercure update once (the copy of the first of its
    /// topics the stream subscribes to), and a private one only with a token allowing one of its topics.
    fn visible(&self, event: &Event) -> bool {
        let conn = self.membership.conn();
        // A topic selected by pattern only was not authorized with the stream: the read rule, now.
        if conn.has_patterns()
            && !conn.topics().contains(&event.topic)
            && !self.auth.may_read(self.grant.as_deref(), &event.topic)
        {
            return false;
        }
        let Some(update) = &event.update else {
            return true;
        };
        update.sent_via(&event.topic, |t| conn.wants(t))
            && (!update.private || auth::may_receive(self.grant.as_deref(), &update.topics))
    }

    /// A live event the replay covered (stored, with an id up to the replay's bound).
    fn already_sent(&self, event: &Event) -> bool {
        event
            .id
            .is_some_and(|id| self.skip_through.is_some_and(|s| id <= s))
            && self.named(event)
    }

    /// Whether `event`'s topic is one the stream names (not only selects by pattern): only those have
    /// positions and a replay.
    fn named(&self, event: &Event) -> bool {
        let conn = self.membership.conn();
        !conn.has_patterns() || conn.topics().contains(&event.topic)
    }

    /// Everything queued since the last write, in one chunk; or a heartbeat; or the closing comment.
    async fn live_step(&mut self) -> Bytes {
        loop {
            match self.membership.conn().take(&self.metrics) {
                Take::Events(events) => {
                    // The common case at low rates: one event, sent as its shared frame, uncopied.
                    if let ([event], None) = (events.as_slices().0, &self.positions) {
                        if events.len() == 1 && !self.already_sent(event) && self.visible(event) {
                            self.metrics.delivered.fetch_add(1, Ordering::Relaxed);
                            return event.frame_in(self.shape).clone();
                        }
                    }
                    let mut out = BytesMut::new();
                    let mut sent = 0u64;
                    for event in events {
                        if !self.visible(&event) {
                            continue;
                        }
                        let named = self.named(&event);
                        let frame = event.frame_in(self.shape);
                        match (&mut self.positions, event.id) {
                            // A topic selected by pattern only: no position, no replay to skip.
                            _ if !named => out.extend_from_slice(frame),
                            (Some(positions), Some(id)) => {
                                if !positions.advance(&event.topic, id) {
                                    continue;
                                }
                                match self.shape {
                                    Shape::Native { .. } => positions.write_frame(frame, &mut out),
                                    // Mercure ids are the updates' own: no composite.
                                    Shape::Mercure => out.extend_from_slice(frame),
                                }
                            }
                            // A live-only message has no id: it moves no position.
                            (Some(_), None) => out.extend_from_slice(frame),
                            (None, Some(id)) if self.skip_through.is_some_and(|s| id <= s) => continue,
                            (None, _) => out.extend_from_slice(frame),
                        }
                        sent += 1;
                    }
                    self.metrics.delivered.fetch_add(sent, Ordering::Relaxed);
                    if !out.is_empty() {
                        return out.freeze();
                    }
                }
                Take::Closed(reason) => {
                    self.phase = Phase::Done;
                    return match reason {
                        CloseReason::Lagged => sse::comment(
                            "herald: closed because this connection fell behind; reconnect with Last-Event-ID to resume",
                        ),
                        CloseReason::Shutdown => {
                            sse::comment("herald: this node is shutting down; reconnect to resume")
                        }
                        CloseReason::StoreLost => store_lost_goodbye(),
                    };
                }
                Take::Empty => {
                    let Connection {
                        membership,
                        heartbeat,
                        expiry,
                        ..
                    } = &mut *self;
                    let woke = tokio::select! {
                        _ = membership.conn().changed() => Woke::Changed,
                        _ = heartbeat.tick() => Woke::Heartbeat,
                        _ = until(expiry) => Woke::Expired,
                    };
                    match woke {
                        Woke::Changed => {
                            // Let the other connections on this thread run (twice) first: events that
                            // arrive meanwhile go out in the same write, so fewer writes per delivery
                            // under load (BENCHMARKS.md). Making this conditional on a busy stream was
                            // measured: more CPU, and no better p99 at 1k msg/s.
                            tokio::task::yield_now().await;
                            tokio::task::yield_now().await;
                        }
                        Woke::Heartbeat => return Bytes::from_static(HEARTBEAT),
                        Woke::Expired => {
                            self.phase = Phase::Done;
                            return sse::comment("herald: the token expired; reconnect with a fresh one");
                        }
                    }
                }
            }
        }
    }
}

/// What ended an idle stream's wait.
enum Woke {
    Changed,
    Heartbeat,
    Expired,
}

/// Resolves when the token expires; never without an expiry.
async fn until(expiry: &mut Option<Pin<Box<Sleep>>>) {
    match expiry {
        Some(sleep) => sleep.as_mut().await,
        None => std::future::pending().await,
    }
}
