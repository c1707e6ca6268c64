//! The memory engine's presence: one node's subscriptions, ordered by (topic, subscriber) so a list
//! pages from where the last page ended.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures_util::future::{self, BoxFuture, FutureExt};

use crate::engine::presence::{Entry, Page, PresenceStore};
use crate::engine::EngineError;

type Key = (String, String);

#[derive(Default)]
pub struct MemoryPresence {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    entries: BTreeMap<Key, Entry>,
    /// Subscribers per topic, for counts without a scan.
    per_topic: HashMap<String, u64>,
    known: bool,
}

fn key(entry: &Entry) -> Key {
    (entry.topic.to_string(), entry.subscriber.to_string())
}

impl MemoryPresence {
    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

impl PresenceStore for MemoryPresence {
    fn join<'a>(&'a self, _: &'a str, entries: &'a [Entry]) -> BoxFuture<'a, Result<Vec<bool>, EngineError>> {
        let new = self.with(|s| {
            entries
                .iter()
                .map(|e| {
                    let new = s.entries.insert(key(e), e.clone()).is_none();
                    if new {
                        *s.per_topic.entry(e.topic.to_string()).or_default() += 1;
                    }
                    new
                })
                .collect()
        });
        future::ready(Ok(new)).boxed()
    }

    fn leave<'a>(
        &'a self,
        _: &'a str,
        entries: &'a [Entry],
    ) -> BoxFuture<'a, Result<Vec<bool>, EngineError>> {
        let removed = self.with(|s| {
            entries
                .iter()
                .map(|e| {
                    let removed = s.entries.remove(&key(e)).is_some();
                    if removed {
                        let topic = e.topic.as_str();
                        if let Some(n) = s.per_topic.get_mut(topic) {
                            *n = n.saturating_sub(1);
                            if *n == 0 {
                                s.per_topic.remove(topic);
                            }
                        }
                    }
                    removed
                })
                .collect()
        });
        future::ready(Ok(removed)).boxed()
    }

    fn beat<'a>(&'a self, _: &'a str, _: Duration) -> BoxFuture<'a, Result<bool, EngineError>> {
        let known = self.with(|s| std::mem::replace(&mut s.known, true));
        future::ready(Ok(known)).boxed()
    }

    fn claim_dead(&self, _: Duration) -> BoxFuture<'_, Result<Option<String>, EngineError>> {
        // One node, alive while it asks.
        future::ready(Ok(None)).boxed()
    }

    fn held<'a>(&'a self, _: &'a str, n: usize) -> BoxFuture<'a, Result<Vec<Entry>, EngineError>> {
        let held = self.with(|s| s.entries.values().take(n).cloned().collect());
        future::ready(Ok(held)).boxed()
    }

    fn forget<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), EngineError>> {
        self.with(|s| s.known = false);
        future::ready(Ok(())).boxed()
    }

    fn list<'a>(
        &'a self,
        topic: Option<&'a str>,
        cursor: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<Page, EngineError>> {
        // The cursor is the last (topic, subscriber) sent, joined by a newline (neither holds one).
        let after = cursor
            .split_once('\n')
            .map(|(t, s)| (t.to_string(), s.to_string()));
        let page = self.with(|s| {
            let start = match &after {
                Some(k) => std::ops::Bound::Excluded(k.clone()),
                None => match topic {
                    Some(t) => std::ops::Bound::Included((t.to_string(), String::new())),
                    None => std::ops::Bound::Unbounded,
                },
            };
            let mut entries: Vec<Entry> = s
                .entries
                .range((start, std::ops::Bound::Unbounded))
                .take_while(|((t, _), _)| topic.is_none_or(|want| t == want))
                .take(n + 1)
                .map(|(_, e)| e.clone())
                .collect();
            let next = (entries.len() > n).then(|| {
                entries.truncate(n);
                entries
                    .last()
                    .map(|e| format!("{}\n{}", e.topic, e.subscriber))
                    .unwrap_or_default()
            });
            (entries, next)
        });
        future::ready(Ok(page)).boxed()
    }

    fn get<'a>(
        &'a self,
        topic: &'a str,
        subscriber: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, EngineError>> {
        let found = self.with(|s| {
            s.entries
                .get(&(topic.to_string(), subscriber.to_string()))
                .cloned()
        });
        future::ready(Ok(found)).boxed()
    }

    fn count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(u64, u64), EngineError>> {
        let n = self.with(|s| s.per_topic.get(topic).copied().unwrap_or(0));
        future::ready(Ok((n, u64::from(n > 0)))).boxed()
    }
}
