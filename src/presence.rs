//! Presence (`[presence]`): who is subscribed, across every node. Each stream holds a [`Guard`] for its
//! selectors; one task per node writes joins and leaves to the engine's presence store in batches, says
//! the node is alive, removes the subscriptions of nodes that died, and announces every start and end
//! as a private Mercure update on `/.well-known/mercure/subscriptions/{topic}/{subscriber}`, stored and
//! replayable like any other.
//!
//! The channel to the task is unbounded by design, yet bounded: it carries at most one join and one
//! leave per open stream (a guard's drop cannot wait), and the node bounds its streams.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{interval, MissedTickBehavior};

use crate::config::PresenceSettings;
use crate::domain::{IdempotencyKey, TopicName};
use crate::engine::presence::{Entry, PresenceStore};
use crate::engine::{store_update, Engine};
use crate::event::{mercure_key, UpdateFields};

/// Where subscription events and the subscriptions API live.
pub(crate) const SUBSCRIPTIONS_PATH: &str = "/.well-known/mercure/subscriptions";
pub(crate) use crate::domain::MAX_HUB_TOPIC_LEN as MAX_EVENT_TOPIC_LEN;
/// Changes written per batch, and entries of a dead node removed per round.
const BATCH: usize = 256;
/// Leaves kept for a store that refused them; past this many (a long outage with churn) the node
/// instead rebuilds its entries once the store answers, so what it keeps stays bounded.
const MAX_UNWRITTEN: usize = 10_000;

enum Change {
    Join(u64, Vec<Entry>),
    Leave(u64),
    /// A graceful shutdown: remove this node's entries now, and answer when done.
    Depart(oneshot::Sender<()>),
}

pub(crate) struct Presence {
    tx: mpsc::UnboundedSender<Change>,
    pub(crate) store: Arc<dyn PresenceStore>,
    next: AtomicU64,
}

/// Held by a stream: its subscriptions end when it is dropped.
pub(crate) struct Guard {
    id: u64,
    tx: mpsc::UnboundedSender<Change>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        // The task is gone only when the node is: nothing is left to remove then.
        let _ = self.tx.send(Change::Leave(self.id));
    }
}

impl Presence {
    /// Starts the node's presence task (on the current runtime).
    pub(crate) fn start(engine: Arc<dyn Engine>, node: String, settings: &PresenceSettings) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = engine.presence();
        let task = Task {
            engine,
            store: store.clone(),
            node,
            ttl: settings.ttl_secs,
            held: HashMap::new(),
            unwritten_leaves: Vec::new(),
            resync: false,
            rebuild: false,
            unannounced: Vec::new(),
        };
        tokio::spawn(task.run(rx, settings.heartbeat_secs));
        Arc::new(Presence {
            tx,
            store,
            next: AtomicU64::new(0),
        })
    }

    /// Records one subscription per selector for a new stream, with a subscriber id of its own.
    /// `selectors`: each as written, with its 1.0 matcher type (if a 1.0 parameter named it) and the
    /// token's payload for it.
    pub(crate) fn hold(
        &self,
        selectors: impl IntoIterator<Item = (String, Option<&'static str>, Option<Value>)>,
    ) -> Guard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let subscriber = urn();
        let entries = selectors
            .into_iter()
            .map(|(topic, match_type, payload)| Entry {
                topic,
                match_type: match_type.map(String::from),
                subscriber: subscriber.clone(),
                payload,
                joined: urn(),
            })
            .collect();
        let _ = self.tx.send(Change::Join(id, entries));
        Guard {
            id,
            tx: self.tx.clone(),
        }
    }

    /// Removes this node's subscriptions and announces their end (a graceful shutdown), within `grace`.
    pub(crate) async fn depart(&self, grace: Duration) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Change::Depart(done)).is_ok() && tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!("presence: this node's subscriptions were not all removed in time; they expire");
        }
    }
}

fn urn() -> String {
    format!("urn:uuid:{}", uuid::Uuid::new_v4())
}

/// `s` with every byte but RFC 3986's unreserved ones percent-encoded (one path segment).
pub(crate) fn segment(s: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The IRI of a subscription: its event topic and its `id`. 0.x: `…/subscriptions/{topic}/{subscriber}`;
/// 1.0: `…/subscriptions/{matchType}/{match}/{subscriber}`.
pub(crate) fn subscription_iri(entry: &Entry) -> String {
    let kind = entry
        .match_type
        .as_deref()
        .map_or(String::new(), |t| format!("/{t}"));
    format!(
        "{SUBSCRIPTIONS_PATH}{kind}/{}/{}",
        segment(&entry.topic),
        segment(&entry.subscriber)
    )
}

/// A subscription as Mercure's subscriptions API and events show it, in its dialect's shape.
pub(crate) fn document(entry: &Entry, active: bool) -> Value {
    let mut doc = json!({
        "id": subscription_iri(entry),
        "type": "Subscription",
        "subscriber": entry.subscriber,
        "active": active,
        "payload": entry.payload,
    });
    match &entry.match_type {
        Some(kind) => {
            doc["matchType"] = json!(kind);
            doc["match"] = json!(entry.topic);
        }
        None => doc["topic"] = json!(entry.topic),
    }
    doc
}

struct Task {
    engine: Arc<dyn Engine>,
    store: Arc<dyn PresenceStore>,
    node: String,
    ttl: Duration,
    /// This node's streams' subscriptions, by stream.
    held: HashMap<u64, Vec<Entry>>,
    /// Leaves the store refused (it was down): written again on the next heartbeat.
    unwritten_leaves: Vec<Entry>,
    /// A write failed: record every held entry again on the next heartbeat.
    resync: bool,
    /// Leaves were dropped (past `MAX_UNWRITTEN`): remove everything the store holds for this node, then
    /// record what it holds now.
    rebuild: bool,
    /// Announcements the store refused (at most `MAX_UNWRITTEN`), with whether each is a start.
    unannounced: Vec<(Entry, bool)>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Change>, every: Duration) {
        let mut tick = interval(every);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                change = rx.recv() => {
                    let Some(first) = change else { return };
                    let mut batch = vec![first];
                    while batch.len() < BATCH {
                        match rx.try_recv() {
                            Ok(change) => batch.push(change),
                            Err(_) => break,
                        }
                    }
                    self.apply(batch).await;
                }
                _ = tick.tick() => self.beat().await,
            }
        }
    }

    /// Joins first, then leaves: a stream that opened and closed within one batch is announced in order.
    async fn apply(&mut self, batch: Vec<Change>) {
        let mut joins = Vec::new();
        let mut leaves = Vec::new();
        let mut departed = Vec::new();
        for change in batch {
            match change {
                Change::Join(id, entries) => {
                    joins.extend(entries.iter().cloned());
                    self.held.insert(id, entries);
                }
                Change::Leave(id) => leaves.extend(self.held.remove(&id).unwrap_or_default()),
                Change::Depart(done) => departed.push(done),
            }
        }
        self.join(&joins).await;
        self.leave(leaves).await;
        if !departed.is_empty() {
            let all: Vec<Entry> = self.held.drain().flat_map(|(_, e)| e).collect();
            self.leave(all).await;
            if let Err(e) = self.store.forget(&self.node).await {
                tracing::warn!("presence: cannot forget this node ({e}); its heartbeat runs out instead");
            }
            for done in departed {
                let _ = done.send(());
            }
        }
    }

    async fn join(&mut self, entries: &[Entry]) {
        for chunk in entries.chunks(BATCH) {
            match self.store.join(&self.node, chunk).await {
                Ok(new) => {
                    let new = chunk.iter().zip(new).filter(|(_, new)| *new).map(|(e, _)| e);
                    self.announce_all(new, true).await;
                }
                Err(e) => {
                    tracing::warn!(
                        "presence: cannot record {} subscriptions ({e}); retrying",
                        chunk.len()
                    );
                    self.resync = true;
                }
            }
        }
    }

    async fn leave(&mut self, entries: Vec<Entry>) {
        for chunk in entries.chunks(BATCH) {
            match self.store.leave(&self.node, chunk).await {
                Ok(_) => {
                    // Each end is announced even if this call found the entry gone: a write that timed
                    // out may have been run after all, or a reaper took this node for dead. The id is
                    // the start's `/left`, so a repeat is stored once.
                    self.announce_all(chunk.iter(), false).await;
                }
                Err(e) => {
                    tracing::warn!(
                        "presence: cannot remove {} subscriptions ({e}); retrying",
                        chunk.len()
                    );
                    if self.unwritten_leaves.len() + chunk.len() > MAX_UNWRITTEN {
                        self.unwritten_leaves.clear();
                        self.rebuild = true;
                    } else {
                        self.unwritten_leaves.extend_from_slice(chunk);
                    }
                }
            }
        }
    }

    async fn beat(&mut self) {
        let known = match self.store.beat(&self.node, self.ttl).await {
            Ok(known) => known,
            Err(e) => {
                tracing::warn!("presence: heartbeat failed ({e})");
                self.resync = true;
                return;
            }
        };
        if std::mem::take(&mut self.rebuild) && !self.rebuild_all().await {
            return;
        }
        if !known || std::mem::take(&mut self.resync) {
            // Not known: the store lost its data, or took this node for dead and announced its
            // subscriptions' end. Record them again, as new subscriptions (new announcements' ids).
            if !known {
                for entry in self.held.values_mut().flatten() {
                    entry.joined = urn();
                }
            }
            let all: Vec<Entry> = self.held.values().flatten().cloned().collect();
            self.join(&all).await;
        }
        let leaves = std::mem::take(&mut self.unwritten_leaves);
        self.leave(leaves).await;
        self.announce_again().await;
        self.reap().await;
    }

    /// Removes every entry the store holds for this node, each end announced, then has what it holds now
    /// recorded anew (and announced) on this heartbeat; false (and tried again later) if the store fails.
    /// Live subscriptions are seen to leave and join again: the price of a bounded memory.
    async fn rebuild_all(&mut self) -> bool {
        loop {
            let entries = match self.store.held(&self.node, BATCH).await {
                Ok(entries) if entries.is_empty() => break,
                Ok(entries) => entries,
                Err(_) => {
                    self.rebuild = true;
                    return false;
                }
            };
            self.announce_all(entries.iter(), false).await;
            if self.store.leave(&self.node, &entries).await.is_err() {
                self.rebuild = true;
                return false;
            }
        }
        for entry in self.held.values_mut().flatten() {
            entry.joined = urn();
        }
        self.resync = true;
        true
    }

    /// Removes the subscriptions of nodes whose heartbeat ran out, each announced by the node that claims
    /// it first. The announcement goes out before the removal: a claimer that dies in between is
    /// replaced when its lease ends, and its repeat of an announcement (same id) is stored once.
    async fn reap(&mut self) {
        for _ in 0..4 {
            let dead = match self.store.claim_dead(self.ttl).await {
                Ok(Some(dead)) => dead,
                Ok(None) => return,
                Err(e) => return tracing::warn!("presence: cannot look for dead nodes ({e})"),
            };
            tracing::info!(node = %dead, "presence: removing the subscriptions of a node that stopped");
            loop {
                let entries = match self.store.held(&dead, BATCH).await {
                    Ok(entries) => entries,
                    Err(e) => {
                        return tracing::warn!("presence: cannot read a dead node's subscriptions ({e})")
                    }
                };
                if entries.is_empty() {
                    if let Err(e) = self.store.forget(&dead).await {
                        tracing::warn!("presence: cannot forget a dead node ({e})");
                    }
                    break;
                }
                self.announce_all(entries.iter(), false).await;
                if let Err(e) = self.store.leave(&dead, &entries).await {
                    return tracing::warn!("presence: cannot remove a dead node's subscriptions ({e})");
                }
            }
        }
    }

    /// Announces a batch together: each on its own topic, so their order does not matter, and the
    /// engine's one connection pipelines them (one at a time, a storm's events trail its writes by
    /// seconds).
    async fn announce_all<'e>(&mut self, entries: impl Iterator<Item = &'e Entry>, active: bool) {
        let this = &*self;
        let failed: Vec<(Entry, bool)> = futures_util::future::join_all(
            entries.map(|e| async move { (!this.announce(e, active).await).then(|| (e.clone(), active)) }),
        )
        .await
        .into_iter()
        .flatten()
        .collect();
        // Sent again on the next heartbeat, with the same ids (so one that was stored after all is
        // stored once); past the bound they are only logged.
        let room = MAX_UNWRITTEN.saturating_sub(self.unannounced.len());
        if failed.len() > room {
            tracing::warn!(
                "presence: {} subscription events dropped (the store is down)",
                failed.len() - room
            );
        }
        self.unannounced.extend(failed.into_iter().take(room));
    }

    /// Announcements the store refused, tried again (on each heartbeat).
    async fn announce_again(&mut self) {
        let again = std::mem::take(&mut self.unannounced);
        for active in [true, false] {
            let entries: Vec<Entry> = again
                .iter()
                .filter(|(_, a)| *a == active)
                .map(|(e, _)| e.clone())
                .collect();
            self.announce_all(entries.iter(), active).await;
        }
    }

    /// Publishes a subscription's start or end as a private update on its own topic; false if the store
    /// refused it (to be tried again).
    async fn announce(&self, entry: &Entry, active: bool) -> bool {
        let iri = subscription_iri(entry);
        let Ok(topic) = TopicName::parse(&iri, MAX_EVENT_TOPIC_LEN) else {
            tracing::warn!("presence: a subscription's IRI is no topic; not announced");
            return true;
        };
        let id = if active {
            entry.joined.clone()
        } else {
            format!("{}/left", entry.joined)
        };
        // Neither fails for the ids and documents this module makes; a retry could not mend them.
        let Ok(key) = IdempotencyKey::parse(&mercure_key(&id)) else {
            return true;
        };
        let fields = UpdateFields {
            id,
            topics: vec![iri],
            private: true,
            kind: None,
            retry: None,
        };
        let (Ok(line), Ok(data)) = (
            serde_json::to_string(&fields),
            serde_json::to_string(&{
                let mut doc = document(entry, active);
                doc["@context"] = json!("https://mercure.rocks/");
                doc
            }),
        ) else {
            return true;
        };
        match store_update(&*self.engine, std::slice::from_ref(&topic), &line, &key, &data).await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("presence: a subscription event was not stored ({e}); trying again");
                false
            }
        }
    }
}
