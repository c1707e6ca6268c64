//! The hub: one per node, fanning each event out to the local connections of its topic.
//!
//! Frames are encoded once (by the engine) and shared. Each connection has a bounded queue; a push to a full
//! queue closes that connection (counted in `herald_closed_for_lag_total`) so the browser reconnects and
//! replays from history, instead of the hub dropping events silently or letting memory grow.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use tokio::sync::{mpsc, Notify};

use crate::domain::TopicName;
use crate::engine::EngineEvents;
use crate::event::Event;
use crate::selector::Pattern;
use crate::telemetry::{Gauges, Metrics};

mod patterns;

/// Topic → the local connections subscribed to it.
///
/// `std` `RwLock`: fan-out only reads and never awaits while holding it; joins and leaves write briefly.
type TopicMap = HashMap<TopicName, Vec<Arc<Conn>>>;

pub struct Hub {
    topics: RwLock<TopicMap>,
    /// Connections that select topics by pattern (Mercure's `*`, URI templates, URL patterns).
    patterns: patterns::Patterns,
    connections: AtomicUsize,
    next_conn: AtomicU64,
    shutting_down: AtomicBool,
    queue_capacity: usize,
    max_connections: usize,
    /// Told the name of each topic that loses its last local subscriber (the Redis engine unsubscribes).
    idle_tx: Option<mpsc::UnboundedSender<TopicName>>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The queue was full: the client reads slower than events arrive.
    Lagged,
    /// The node is shutting down.
    Shutdown,
    /// The node lost its store for longer than `redis.link_lost_grace_ms`: the client is told to come
    /// back soon, through the load balancer to a node that has it.
    StoreLost,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinError {
    #[error("this node already holds its maximum of {0} connections")]
    Full(usize),
    #[error("this node is shutting down")]
    ShuttingDown,
}

/// One SSE connection as the hub sees it.
pub struct Conn {
    id: u64,
    topics: Vec<TopicName>,
    /// Patterns it selects topics by, each with its text (the hub groups connections by it).
    patterns: Vec<(Arc<str>, Arc<Pattern>)>,
    state: Mutex<ConnState>,
    /// Woken once when the queue goes from empty to non-empty, or on close: one wake-up per batch.
    notify: Notify,
    detached: AtomicBool,
}

#[derive(Default)]
struct ConnState {
    queue: VecDeque<Arc<Event>>,
    closed: Option<CloseReason>,
}

/// What a connection finds when it looks at its queue.
pub enum Take {
    /// Every event queued since the last look, oldest first.
    Events(VecDeque<Arc<Event>>),
    /// Nothing left to send and the connection is closed.
    Closed(CloseReason),
    Empty,
}

enum Push {
    Queued(u64),
    Lagged,
    Closed,
}

impl Conn {
    pub fn topics(&self) -> &[TopicName] {
        &self.topics
    }

    /// Whether it selects `topic`, by name or by pattern.
    pub fn wants(&self, topic: &TopicName) -> bool {
        self.topics.contains(topic) || self.patterns.iter().any(|(_, p)| p.matches(topic.as_str()))
    }

    /// Whether it selects topics by pattern too.
    pub fn has_patterns(&self) -> bool {
        !self.patterns.is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, events: &[Arc<Event>], capacity: usize, metrics: &Metrics) -> Push {
        let mut state = self.lock();
        if state.closed.is_some() {
            return Push::Closed;
        }
        if state.queue.len() + events.len() > capacity {
            let dropped = std::mem::take(&mut state.queue).len() as u64;
            state.closed = Some(CloseReason::Lagged);
            drop(state);
            metrics.queued.fetch_sub(dropped, Ordering::Relaxed);
            self.notify.notify_one();
            return Push::Lagged;
        }
        let woke = state.queue.is_empty();
        state.queue.extend(events.iter().cloned());
        drop(state);
        if woke {
            self.notify.notify_one();
        }
        Push::Queued(events.len() as u64)
    }

    fn close(&self, reason: CloseReason) {
        let mut state = self.lock();
        if state.closed.is_none() {
            state.closed = Some(reason);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Takes everything queued; the caller writes it in one go.
    pub fn take(&self, metrics: &Metrics) -> Take {
        let mut state = self.lock();
        if !state.queue.is_empty() {
            let events = std::mem::take(&mut state.queue);
            drop(state);
            metrics.queued.fetch_sub(events.len() as u64, Ordering::Relaxed);
            return Take::Events(events);
        }
        match state.closed {
            Some(reason) => Take::Closed(reason),
            None => Take::Empty,
        }
    }

    /// Resolves after the next push or close (immediately if one happened since the last wait).
    pub async fn changed(&self) {
        self.notify.notified().await
    }
}

impl Hub {
    pub fn new(queue_capacity: usize, max_connections: usize, metrics: Arc<Metrics>) -> Self {
        Hub {
            topics: RwLock::new(HashMap::new()),
            patterns: patterns::Patterns::default(),
            connections: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            shutting_down: AtomicBool::new(false),
            queue_capacity,
            max_connections,
            idle_tx: None,
            metrics,
        }
    }

    /// Where to report topics that lose their last local subscriber (the Redis engine unsubscribes).
    pub fn with_idle_reports(mut self, tx: mpsc::UnboundedSender<TopicName>) -> Self {
        self.idle_tx = Some(tx);
        self
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, TopicMap> {
        self.topics.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, TopicMap> {
        self.topics.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a connection for `topics` and `patterns` (`(text, pattern)`); it receives every event
    /// dispatched after this returns of a topic it names or a pattern selects, once.
    pub fn join(
        self: &Arc<Self>,
        topics: Vec<TopicName>,
        patterns: Vec<(Arc<str>, Arc<Pattern>)>,
    ) -> Result<Membership, JoinError> {
        if self.shutting_down.load(Ordering::Acquire) {
            return Err(JoinError::ShuttingDown);
        }
        let held = self.connections.fetch_add(1, Ordering::AcqRel);
        if held >= self.max_connections {
            self.connections.fetch_sub(1, Ordering::AcqRel);
            self.metrics.rejected_connections.fetch_add(1, Ordering::Relaxed);
            return Err(JoinError::Full(self.max_connections));
        }
        let conn = Arc::new(Conn {
            id: self.next_conn.fetch_add(1, Ordering::Relaxed),
            topics,
            patterns,
            state: Mutex::new(ConnState::default()),
            notify: Notify::new(),
            detached: AtomicBool::new(false),
        });
        {
            let mut map = self.write();
            for topic in &conn.topics {
                map.entry(topic.clone()).or_default().push(Arc::clone(&conn));
            }
        }
        if conn.has_patterns() {
            self.patterns.add(&conn);
        }
        // A shutdown that started while we joined must still reach this connection.
        if self.shutting_down.load(Ordering::Acquire) {
            conn.close(CloseReason::Shutdown);
        }
        Ok(Membership {
            hub: Arc::clone(self),
            conn,
        })
    }

    /// Queues a run of events (in id order), each connection locked and woken once for all of its
    /// topic's events in the run: under load, one wake-up and one write carry many events.
    pub fn dispatch_all(&self, events: &[Arc<Event>]) {
        let mut lagged = Vec::new();
        let mut queued = 0u64;
        {
            let map = self.read();
            let mut start = 0;
            // Consecutive events of the same topic go to the same connections together.
            while start < events.len() {
                let topic = &events[start].topic;
                let end = start + events[start..].iter().take_while(|e| &e.topic == topic).count();
                let mut push = |conn: &Arc<Conn>| {
                    match conn.push(&events[start..end], self.queue_capacity, &self.metrics) {
                        Push::Queued(n) => queued += n,
                        // Once: a lagged connection is closed, so later pushes answer `Closed`.
                        Push::Lagged => lagged.push(Arc::clone(conn)),
                        Push::Closed => {}
                    }
                };
                let exact = map.get(topic);
                for conn in exact.into_iter().flatten() {
                    push(conn);
                }
                if !self.patterns.is_empty() {
                    self.patterns.for_each_match(topic, &mut push);
                }
                start = end;
            }
        }
        self.metrics.queued.fetch_add(queued, Ordering::Relaxed);
        for conn in lagged {
            tracing::info!(conn = conn.id, "closing a connection whose queue is full");
            self.metrics.closed_for_lag.fetch_add(1, Ordering::Relaxed);
            self.detach(&conn);
        }
    }

    /// Removes a connection from every topic; idempotent. Reports topics left without subscribers.
    fn detach(&self, conn: &Conn) {
        if conn.detached.swap(true, Ordering::AcqRel) {
            return;
        }
        if conn.has_patterns() {
            self.patterns.remove(conn);
        }
        let mut idle = Vec::new();
        {
            let mut map = self.write();
            for topic in &conn.topics {
                if let Some(conns) = map.get_mut(topic) {
                    conns.retain(|c| c.id != conn.id);
                    if conns.is_empty() {
                        map.remove(topic);
                        idle.push(topic.clone());
                    }
                }
            }
        }
        if let Some(tx) = &self.idle_tx {
            for topic in idle {
                // The receiver only goes away when the engine stops; nothing left to tell then.
                let _ = tx.send(topic);
            }
        }
    }

    /// Ends every stream (each sends what it has queued first) and refuses new connections.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
        self.close_all(CloseReason::Shutdown);
    }

    /// Ends every stream for `reason`, each after what it has queued.
    fn close_all(&self, reason: CloseReason) {
        for conns in self.read().values() {
            for conn in conns {
                conn.close(reason);
            }
        }
        for conn in self.patterns.all() {
            conn.close(reason);
        }
    }

    /// Whether some local connection selects topics by pattern (the Redis engine then receives every
    /// topic's events).
    pub fn has_patterns(&self) -> bool {
        !self.patterns.is_empty()
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Whether any local connection listens to `topic`.
    pub fn has_subscribers(&self, topic: &TopicName) -> bool {
        self.read().contains_key(topic)
    }

    /// Every topic with at least one local subscriber.
    pub fn topics(&self) -> Vec<TopicName> {
        self.read().keys().cloned().collect()
    }

    /// The `n` topics with the most local subscribers among those `shown` lets through, busiest first
    /// (ties by name), and how many topics `shown` left out.
    pub fn busiest(&self, n: usize, shown: impl Fn(&TopicName) -> bool) -> (Vec<(TopicName, usize)>, usize) {
        let map = self.read();
        let mut all: Vec<(&TopicName, usize)> = map
            .iter()
            .filter(|(t, _)| shown(t))
            .map(|(t, c)| (t, c.len()))
            .collect();
        let hidden = map.len() - all.len();
        let order =
            |a: &(&TopicName, usize), b: &(&TopicName, usize)| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0));
        if all.len() > n {
            all.select_nth_unstable_by(n, order);
            all.truncate(n);
        }
        all.sort_by(order);
        (all.into_iter().map(|(t, c)| (t.clone(), c)).collect(), hidden)
    }

    pub fn gauges(&self, ready: bool) -> Gauges {
        let map = self.read();
        Gauges {
            connections: self.connections.load(Ordering::Acquire) as u64,
            subscriptions: map.values().map(|c| c.len() as u64).sum::<u64>() + self.patterns.count(),
            topics: map.len() as u64,
            ready,
            history: None,
        }
    }
}

impl EngineEvents for Hub {
    fn dispatch_all(&self, events: &[Arc<Event>]) {
        Hub::dispatch_all(self, events);
    }

    fn has_subscribers(&self, topic: &TopicName) -> bool {
        Hub::has_subscribers(self, topic)
    }

    fn topics(&self) -> Vec<TopicName> {
        Hub::topics(self)
    }

    fn has_patterns(&self) -> bool {
        Hub::has_patterns(self)
    }

    fn patterns_interrupted(&self) {
        for conn in self.patterns.all() {
            conn.close(CloseReason::StoreLost);
        }
    }

    fn store_lost(&self) {
        self.close_all(CloseReason::StoreLost);
    }
}

/// A connection's place in the hub; dropping it (the client went away) frees everything it held.
pub struct Membership {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
}

impl Membership {
    pub fn conn(&self) -> &Conn {
        &self.conn
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.hub.detach(&self.conn);
        let left = std::mem::take(&mut self.conn.lock().queue).len() as u64;
        self.hub.metrics.queued.fetch_sub(left, Ordering::Relaxed);
        self.hub.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests;
