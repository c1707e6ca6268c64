//! The embedded engine: history in this process's memory, delivery to this node's hub only.
//!
//! For a single node. Everything is lost when the process stops; run on Redis to keep history across
//! restarts and to scale out.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{self, BoxFuture, FutureExt};

use super::{Engine, EngineError, EngineEvents, HistoryPage, PageBound, Publish};
use crate::domain::{now_ms, EventId, EventName, IdempotencyKey, TopicName};
use crate::event::{mercure_key, Stored};
use crate::selector::Pattern;

mod presence;

pub use presence::MemoryPresence;

pub struct MemoryEngine {
    /// One lock over the clock, the logs and the hand-off to the hub, so the hub sees events in id order
    /// and a reader of `last_id` knows every later event is still to be dispatched.
    state: Mutex<State>,
    /// This node: the memory engine serves one.
    node: Arc<dyn EngineEvents>,
    max_len: usize,
    /// 0 keeps events until `max_len` pushes them out.
    max_age_ms: u64,
    idempotency_window_ms: u64,
    /// All topics' retained events, their logs and the remembered idempotency keys together stay within
    /// this (0: no bound); past it the oldest of them go first, events and keys alike, down to 90 % of
    /// it: readers after a dropped event get the gap notice, and a retry whose key was dropped early is
    /// stored again.
    max_total_bytes: usize,
    presence: Arc<MemoryPresence>,
}

/// What a retained event costs beyond its frame: its `Arc<Event>`, id, topic handle and deque slot.
const EVENT_OVERHEAD: usize = 96;
/// What a topic's log costs beyond its events: its map slot, its name's allocation and its deque's
/// buffer (measured with `herald-bench --scenarios keys`: BENCHMARKS.md run 11).
const TOPIC_OVERHEAD: usize = 440;
/// What a remembered `Idempotency-Key` costs beyond its topic's and its own length: its map slot (with
/// the map's spare capacity), its expiry queue slot and the key's allocation (measured as above).
const KEY_OVERHEAD: usize = 250;

fn cost(event: &Stored) -> usize {
    event.frame().len() + EVENT_OVERHEAD
}

fn key_cost(topic: &TopicName, key: &IdempotencyKey) -> usize {
    topic.as_str().len() + key.as_str().len() + KEY_OVERHEAD
}

#[derive(Default)]
struct State {
    clock: EventId,
    logs: HashMap<TopicName, TopicLog>,
    /// What the retained events, their logs and the remembered keys cost now (see [`cost`],
    /// [`TOPIC_OVERHEAD`], [`key_cost`]).
    bytes: usize,
    /// The newest id of any topic whose log was dropped whole (it emptied): a reader of a topic with no
    /// log, after an older id, may have missed events, and a log made anew starts from it.
    swept_through: Option<EventId>,
    /// (topic, Idempotency-Key) → the id first answered; forgotten in the order they were remembered
    /// (`key_order`, with the millisecond of each), when the window ends or the byte bound needs room.
    seen_keys: HashMap<(TopicName, IdempotencyKey), EventId>,
    key_order: VecDeque<(u64, TopicName, IdempotencyKey)>,
}

#[derive(Default)]
struct TopicLog {
    events: VecDeque<Stored>,
    /// The newest id dropped by retention: a reader asking for events after an older id has missed some.
    trimmed_through: Option<EventId>,
}

impl TopicLog {
    /// Drops what retention no longer keeps; answers the bytes freed.
    fn trim(&mut self, max_len: usize, oldest_ms: u64) -> usize {
        let mut freed = 0;
        while self.events.len() > max_len || self.events.front().is_some_and(|e| e.id.ms < oldest_ms) {
            match self.events.pop_front() {
                Some(e) => {
                    freed += cost(&e);
                    self.trimmed_through = Some(e.id);
                }
                None => break,
            }
        }
        freed
    }
}

impl State {
    /// Forgets the oldest remembered key.
    fn forget_oldest_key(&mut self) {
        if let Some((_, topic, key)) = self.key_order.pop_front() {
            self.bytes = self.bytes.saturating_sub(key_cost(&topic, &key));
            self.seen_keys.remove(&(topic, key));
        }
    }

    /// Forgets the keys remembered at or before `before` (ms).
    fn expire_keys(&mut self, before: u64) {
        while self.key_order.front().is_some_and(|(at, _, _)| *at <= before) {
            self.forget_oldest_key();
        }
    }

    /// Drops the node's oldest events (whatever their topic) and remembered keys, oldest first, until
    /// the total is at most `target`.
    fn evict_to(&mut self, target: usize) {
        let mut fronts: BinaryHeap<Reverse<(EventId, TopicName)>> = self
            .logs
            .iter()
            .filter_map(|(t, log)| log.events.front().map(|e| Reverse((e.id, t.clone()))))
            .collect();
        while self.bytes > target {
            let oldest_event = fronts.peek().map(|Reverse((id, _))| id.ms);
            match self.key_order.front().map(|(at, _, _)| *at) {
                Some(key) if oldest_event.is_none_or(|event| key <= event) => {
                    self.forget_oldest_key();
                    continue;
                }
                _ => {}
            }
            let Some(Reverse((_, topic))) = fronts.pop() else {
                break;
            };
            let Some(log) = self.logs.get_mut(&topic) else {
                continue;
            };
            if let Some(e) = log.events.pop_front() {
                self.bytes = self.bytes.saturating_sub(cost(&e));
                log.trimmed_through = Some(e.id);
            }
            if let Some(next) = log.events.front() {
                fronts.push(Reverse((next.id, topic)));
            }
        }
        self.drop_empty_logs();
    }

    /// Forgets logs that hold no event, keeping only the newest id they had dropped.
    fn drop_empty_logs(&mut self) {
        let swept = &mut self.swept_through;
        let before = self.logs.len();
        self.logs.retain(|_, log| {
            let keep = !log.events.is_empty();
            if !keep {
                *swept = (*swept).max(log.trimmed_through);
            }
            keep
        });
        let dropped = before - self.logs.len();
        self.bytes = self.bytes.saturating_sub(dropped * TOPIC_OVERHEAD);
    }
}

impl MemoryEngine {
    pub fn new(
        node: Arc<dyn EngineEvents>,
        max_len: usize,
        max_age: Duration,
        idempotency_window: Duration,
    ) -> Self {
        MemoryEngine {
            state: Mutex::new(State::default()),
            node,
            max_len,
            max_age_ms: u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX),
            idempotency_window_ms: u64::try_from(idempotency_window.as_millis()).unwrap_or(u64::MAX),
            max_total_bytes: 0,
            presence: Arc::default(),
        }
    }

    /// Bounds all topics' history together (see `history.max_total_bytes`).
    pub fn with_max_total_bytes(mut self, bytes: usize) -> Self {
        self.max_total_bytes = bytes;
        self
    }

    /// Sweeps expired events and emptied topics every `every`, for as long as the engine lives: without
    /// it, a topic nobody publishes to or reads again would keep its expired events for ever.
    pub fn start_sweeper(self: &Arc<Self>, every: Duration) {
        let engine = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Some(engine) = engine.upgrade() else {
                    return;
                };
                engine.sweep();
            }
        });
    }

    fn sweep(&self) {
        self.sweep_at(now_ms());
    }

    fn sweep_at(&self, now: u64) {
        let oldest = self.oldest_kept_ms(now);
        let mut state = self.lock();
        let state = &mut *state;
        let mut freed = 0;
        for log in state.logs.values_mut() {
            freed += log.trim(self.max_len, oldest);
        }
        state.bytes = state.bytes.saturating_sub(freed);
        state.drop_empty_logs();
        state.expire_keys(now.saturating_sub(self.idempotency_window_ms));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn oldest_kept_ms(&self, now: u64) -> u64 {
        if self.max_age_ms == 0 {
            0
        } else {
            now.saturating_sub(self.max_age_ms)
        }
    }

    fn publish_now(&self, m: Publish<'_>) -> EventId {
        let now = now_ms();
        let mut guard = self.lock();
        let state = &mut *guard;
        state.expire_keys(now.saturating_sub(self.idempotency_window_ms));
        if let Some(key) = m.idempotency_key {
            if let Some(id) = state.seen_keys.get(&(m.topic.clone(), key.clone())) {
                return *id;
            }
        }
        let topic = m.topic;
        let id = state.clock.next_at(now);
        state.clock = id;
        let mut added = 0;
        if let Some(key) = m.idempotency_key {
            state.seen_keys.insert((topic.clone(), key.clone()), id);
            state.key_order.push_back((now, topic.clone(), key.clone()));
            added += key_cost(topic, key);
        }
        let event = Stored::new(id, topic.clone(), m.event.map(EventName::as_str), m.data);
        let swept = state.swept_through;
        let log = state.logs.entry(topic.clone()).or_insert_with(|| {
            added += TOPIC_OVERHEAD;
            TopicLog {
                events: VecDeque::new(),
                trimmed_through: swept,
            }
        });
        log.events.push_back(event.clone());
        let freed = log.trim(self.max_len, self.oldest_kept_ms(now));
        state.bytes = (state.bytes + added + cost(&event)).saturating_sub(freed);
        if self.max_total_bytes > 0 && state.bytes > self.max_total_bytes {
            state.evict_to(self.max_total_bytes / 10 * 9);
        }
        self.node.dispatch_all(std::slice::from_ref(&event.event));
        id
    }

    fn history_now(&self, topic: &TopicName, after: EventId, bound: PageBound) -> HistoryPage {
        let oldest = self.oldest_kept_ms(now_ms());
        let mut guard = self.lock();
        let state = &mut *guard;
        let Some(log) = state.logs.get_mut(topic) else {
            return HistoryPage {
                truncated: state.swept_through.is_some_and(|s| after < s),
                ..HistoryPage::default()
            };
        };
        let freed = log.trim(self.max_len, oldest);
        state.bytes = state.bytes.saturating_sub(freed);
        let start = log.events.partition_point(|e| e.id <= after);
        let (events, more) = bounded(log.events.range(start..), bound);
        HistoryPage {
            events,
            truncated: log.trimmed_through.is_some_and(|t| after < t),
            first_retained: log.events.front().map(|e| e.id),
            more,
        }
    }
}

/// The events `bound` allows from `events`, and whether any were left behind.
fn bounded<'a>(events: impl Iterator<Item = &'a Stored>, bound: PageBound) -> (Vec<Stored>, bool) {
    let mut taken = Vec::new();
    let mut bytes = 0usize;
    for event in events {
        if taken.len() == bound.count || (!taken.is_empty() && bytes + event.frame().len() > bound.bytes) {
            return (taken, true);
        }
        bytes += event.frame().len();
        taken.push(event.clone());
    }
    (taken, false)
}

impl Engine for MemoryEngine {
    fn publish<'a>(&'a self, message: Publish<'a>) -> BoxFuture<'a, Result<EventId, EngineError>> {
        future::ready(Ok(self.publish_now(message))).boxed()
    }

    fn history<'a>(
        &'a self,
        topic: &'a TopicName,
        after: EventId,
        bound: PageBound,
    ) -> BoxFuture<'a, Result<HistoryPage, EngineError>> {
        future::ready(Ok(self.history_now(topic, after, bound))).boxed()
    }

    fn last_ids<'a>(&'a self, topics: &'a [TopicName]) -> BoxFuture<'a, Result<Vec<EventId>, EngineError>> {
        // One clock serves every topic here: its value bounds each topic's newest id.
        let clock = self.lock().clock;
        future::ready(Ok(vec![clock; topics.len()])).boxed()
    }

    fn find<'a>(
        &'a self,
        topic: &'a TopicName,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<EventId>, EngineError>> {
        // The log itself is the index (at most history.max_len events to look through, on a resume
        // only), so it expires with the history; the earliest occurrence of a repeated id wins.
        let state = self.lock();
        let found = state.logs.get(topic).and_then(|log| {
            log.events
                .iter()
                .find(|e| {
                    e.event
                        .update
                        .as_ref()
                        .is_some_and(|u| mercure_key(&u.id) == key.as_str())
                })
                .map(|e| e.id)
        });
        future::ready(Ok(found)).boxed()
    }

    fn subscribe<'a>(&'a self, _topic: &'a TopicName) -> BoxFuture<'a, Result<(), EngineError>> {
        future::ready(Ok(())).boxed()
    }

    fn subscribe_all(&self) -> BoxFuture<'_, Result<(), EngineError>> {
        // Every event is published here, and handed to the hub whoever selects it.
        future::ready(Ok(())).boxed()
    }

    fn topics_selected<'a>(
        &'a self,
        pattern: &'a Pattern,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<super::Selected>, EngineError>> {
        let state = self.lock();
        let found = state.logs.keys().filter(|t| pattern.matches(t.as_str())).cloned();
        future::ready(Ok(Some(super::at_most(found, limit)))).boxed()
    }

    fn retained(&self) -> Option<(u64, u64)> {
        let state = self.lock();
        Some((state.logs.len() as u64, state.bytes as u64))
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn presence(&self) -> Arc<dyn crate::engine::presence::PresenceStore> {
        self.presence.clone()
    }
}

#[cfg(test)]
mod tests;
