//! Engines store each topic's history and carry published events to every node (through [`EngineEvents`]).
//!
//! Delivery guarantee, for every engine: `publish` answers an id only once the event is stored in history;
//! each node's hub receives the events of the topics it has interest in once each, in each topic's id
//! order; ids are ordered per topic (an engine may order them across topics too, but nothing relies on
//! it), so history plus live delivery, per topic, resumes any connection without gap or duplicate.

pub mod memory;
pub mod presence;
pub mod redis;

use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::domain::{EventId, EventName, IdempotencyKey, TopicName};
use crate::event::{Event, Stored};
use crate::selector::Pattern;

/// One page of a topic's history after some id.
#[derive(Debug, Default)]
pub struct HistoryPage {
    /// Events with ids greater than the one asked for, oldest first.
    pub events: Vec<Stored>,
    /// True when events after the id asked for may already be gone (older than retention).
    pub truncated: bool,
    /// The oldest id still retained for the topic, if any.
    pub first_retained: Option<EventId>,
    /// True when the read stopped at its count or byte bound: events after the last one may follow.
    pub more: bool,
}

/// Topics a pattern selects, as far as an engine lists them, and whether that is all of them.
pub(crate) type Selected = (Vec<TopicName>, bool);

/// The first `limit` of `found`, and whether that was all of them.
pub(crate) fn at_most(found: impl Iterator<Item = TopicName>, limit: usize) -> Selected {
    let mut taken: Vec<TopicName> = found.take(limit.saturating_add(1)).collect();
    let all = taken.len() <= limit;
    taken.truncate(limit);
    (taken, all)
}

/// How much one history read may gather: at most `count` events and, past the first, at most `bytes`
/// of event data, so no request makes a node hold more than about that.
#[derive(Debug, Clone, Copy)]
pub struct PageBound {
    pub count: usize,
    pub bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine could not be reached, or refused for now: the event was not stored; retrying helps.
    #[error("the message store is unavailable ({0}); nothing was stored, retry in a moment")]
    Unavailable(Cause),
    /// Fewer replicas are connected than `redis.min_replicas` asks for: refused before anything was
    /// written; retrying helps once a replica is back.
    #[error("not enough replicas ({0}); nothing was stored, retry once a replica is back")]
    NotEnoughReplicas(Cause),
    /// The engine stopped answering mid-call: the event may or may not have been stored.
    #[error("the message store did not answer in time; the event may or may not be stored ({0})")]
    Unknown(Cause),
    /// The engine refused the operation for good (a script error, a bad argument, a missing permission,
    /// a reply Herald cannot read): retrying cannot help; the log has the details.
    #[error("the message store refused the operation ({0}); retrying will not help")]
    Failed(Cause),
}

impl EngineError {
    /// The store's own words (a Redis error text), for the log only: clients get Herald's.
    pub fn raw(&self) -> Option<&str> {
        match self {
            EngineError::Unavailable(c)
            | EngineError::NotEnoughReplicas(c)
            | EngineError::Unknown(c)
            | EngineError::Failed(c) => c.raw.as_deref(),
        }
    }
}

/// Why an engine call failed: in Herald's words (what a client is told), and the store's own text, if
/// any, which may name internals and goes to the log only.
#[derive(Debug, Clone)]
pub struct Cause {
    pub said: String,
    pub raw: Option<String>,
}

impl Cause {
    pub fn with_raw(said: impl Into<String>, raw: impl Into<String>) -> Self {
        Cause {
            said: said.into(),
            raw: Some(raw.into()),
        }
    }
}

impl From<String> for Cause {
    fn from(said: String) -> Self {
        Cause { said, raw: None }
    }
}

impl From<&str> for Cause {
    fn from(said: &str) -> Self {
        said.to_string().into()
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.said)
    }
}

/// One message to publish.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    pub topic: &'a TopicName,
    pub event: Option<&'a EventName>,
    pub data: &'a str,
    /// A retry with the same key (per topic, within the idempotency window) answers the first id and
    /// stores nothing.
    pub idempotency_key: Option<&'a IdempotencyKey>,
}

/// How an engine reports to the node it serves (the hub implements it): the few calls it makes, and
/// nothing else of the hub. Centrifuge's `BrokerEventHandler` is the model.
pub trait EngineEvents: Send + Sync + 'static {
    /// Hands over a run of events in id order (live-only ones, without ids, in arrival order).
    fn dispatch_all(&self, events: &[Arc<Event>]);

    /// Whether this node has a local subscriber of `topic` now.
    fn has_subscribers(&self, topic: &TopicName) -> bool;

    /// Every topic with a local subscriber now.
    fn topics(&self) -> Vec<TopicName>;

    /// Whether a local stream selects topics by pattern (the engine must then hand over every topic).
    fn has_patterns(&self) -> bool;

    /// Delivery of every topic was interrupted (the link to the store was lost): streams that select
    /// by pattern are ended, since no gap-fill reaches the topics they never named.
    fn patterns_interrupted(&self);

    /// The store has been silent for the grace (`redis.link_lost_grace_ms`): end every local stream, so
    /// its client reconnects to a node that has the store and resumes there.
    fn store_lost(&self);
}

/// What each engine implements. Futures are boxed so the hub and routes hold one `Arc<dyn Engine>`.
pub trait Engine: Send + Sync + 'static {
    /// Stores the event, then hands it to every interested node; answers its id once stored.
    /// An [`EngineError::Unavailable`] means it was not stored; [`EngineError::Unknown`] that it may be.
    fn publish<'a>(&'a self, message: Publish<'a>) -> BoxFuture<'a, Result<EventId, EngineError>>;

    /// Events of `topic` with ids greater than `after`, oldest first, within `bound`.
    fn history<'a>(
        &'a self,
        topic: &'a TopicName,
        after: EventId,
        bound: PageBound,
    ) -> BoxFuture<'a, Result<HistoryPage, EngineError>>;

    /// The newest id assigned so far on each of `topics` (in their order; `0-0` for none): every later
    /// event of each reaches interested hubs live.
    fn last_ids<'a>(&'a self, topics: &'a [TopicName]) -> BoxFuture<'a, Result<Vec<EventId>, EngineError>>;

    /// Where a Mercure update's id `key` sits in `topic`: its event id while the history may still hold
    /// it, `None` when the topic has no such update (or it is long gone).
    fn find<'a>(
        &'a self,
        topic: &'a TopicName,
        key: &'a IdempotencyKey,
    ) -> BoxFuture<'a, Result<Option<EventId>, EngineError>>;

    /// Makes sure this node receives `topic` live; resolves once that is confirmed.
    fn subscribe<'a>(&'a self, topic: &'a TopicName) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Makes sure this node receives every topic's events live (for pattern subscriptions); resolves
    /// once that is confirmed. [`EngineError::Failed`] where the engine cannot (a Cluster).
    fn subscribe_all(&self) -> BoxFuture<'_, Result<(), EngineError>>;

    /// The topics with history that `pattern` selects, at most `limit`, and whether that is all of them:
    /// a pattern stream's replay names them. `None` where the engine keeps no list of its topics (a
    /// Cluster: no key all its topics could share).
    fn topics_selected<'a>(
        &'a self,
        pattern: &'a Pattern,
        limit: usize,
    ) -> BoxFuture<'a, Result<Option<Selected>, EngineError>>;

    /// Topics and bytes of history this process holds, for engines that hold it in memory.
    fn retained(&self) -> Option<(u64, u64)> {
        None
    }

    /// Whether publishes and subscriptions can succeed now (`/readyz`).
    fn is_ready(&self) -> bool;

    /// A short name for logs: `memory` or `redis`.
    fn name(&self) -> &'static str;

    /// Where this engine keeps who is subscribed (`[presence]`).
    fn presence(&self) -> Arc<dyn presence::PresenceStore>;
}

/// Stores a Mercure update (`line`: its fields as JSON, then `data`) once per topic, the canonical one
/// first, each copy keyed by the update's id (`key`): a repeat of the id is stored once, and a resume
/// finds where it sits. If a copy after the first fails, the copies before it stay (each is a whole,
/// valid event) and the error says the update may be partly stored.
pub(crate) async fn store_update(
    engine: &dyn Engine,
    topics: &[TopicName],
    line: &str,
    key: &IdempotencyKey,
    data: &str,
) -> Result<(), EngineError> {
    let stored = format!("{line}\n{data}");
    let name = EventName::mercure();
    for (n, topic) in topics.iter().enumerate() {
        let message = Publish {
            topic,
            event: Some(&name),
            data: &stored,
            idempotency_key: Some(key),
        };
        match engine.publish(message).await {
            Ok(_) => {}
            Err(EngineError::Unavailable(cause)) if n > 0 => return Err(EngineError::Unknown(cause)),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
