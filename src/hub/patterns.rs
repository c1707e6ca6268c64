//! The hub's pattern subscriptions (`*`, URI templates, URL patterns): grouped by their text, so 10,000
//! subscribers of one template cost one match per event, and each topic's matching groups cached, so a
//! busy topic is matched once per change of the groups, not once per event.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::Conn;
use crate::domain::TopicName;
use crate::selector::Pattern;

/// Topics whose matching groups are remembered; past it the cache starts over (a bound on memory, at
/// the price of matching again).
const CACHE_TOPICS: usize = 4096;

/// Topic → the keys of the pattern groups that select it.
type Matches = HashMap<TopicName, Arc<[Arc<str>]>>;

#[derive(Default)]
pub(super) struct Patterns {
    index: RwLock<Index>,
    /// Per topic, the keys of the groups that match it, as of `Index::generation`.
    cache: Mutex<(u64, Matches)>,
}

#[derive(Default)]
struct Index {
    groups: HashMap<Arc<str>, Group>,
    /// Bumped when a group is made or removed: cached matches are then stale.
    generation: u64,
}

struct Group {
    pattern: Arc<Pattern>,
    conns: Vec<Arc<Conn>>,
}

impl Patterns {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn is_empty(&self) -> bool {
        self.read().groups.is_empty()
    }

    pub(super) fn add(&self, conn: &Arc<Conn>) {
        let mut index = self.write();
        for (key, pattern) in &conn.patterns {
            let made = !index.groups.contains_key(key);
            index
                .groups
                .entry(Arc::clone(key))
                .or_insert_with(|| Group {
                    pattern: Arc::clone(pattern),
                    conns: Vec::new(),
                })
                .conns
                .push(Arc::clone(conn));
            if made {
                index.generation += 1;
            }
        }
    }

    pub(super) fn remove(&self, conn: &Conn) {
        let mut index = self.write();
        for (key, _) in &conn.patterns {
            let emptied = index.groups.get_mut(key).is_some_and(|group| {
                group.conns.retain(|c| c.id != conn.id);
                group.conns.is_empty()
            });
            if emptied {
                index.groups.remove(key);
                index.generation += 1;
            }
        }
    }

    /// Calls `each` once for every pattern connection that selects `topic` and does not name it (those
    /// the topic map served already). Only a connection in several matching groups needs remembering,
    /// so the set is of pattern connections alone, and made only when more than one group matches.
    pub(super) fn for_each_match(&self, topic: &TopicName, mut each: impl FnMut(&Arc<Conn>)) {
        let index = self.read();
        if index.groups.is_empty() {
            return;
        }
        let keys = self.matching(&index, topic);
        let mut served: Option<HashSet<u64>> = (keys.len() > 1).then(HashSet::new);
        for key in keys.iter() {
            if let Some(group) = index.groups.get(key) {
                for conn in &group.conns {
                    let once = served.as_mut().is_none_or(|s| s.insert(conn.id));
                    if once && !conn.topics.contains(topic) {
                        each(conn);
                    }
                }
            }
        }
    }

    /// Every pattern connection (for closing them all).
    pub(super) fn all(&self) -> Vec<Arc<Conn>> {
        let index = self.read();
        let mut seen = HashSet::new();
        index
            .groups
            .values()
            .flat_map(|g| g.conns.iter())
            .filter(|c| seen.insert(c.id))
            .cloned()
            .collect()
    }

    /// Pattern subscriptions held (one per connection and pattern).
    pub(super) fn count(&self) -> u64 {
        self.read().groups.values().map(|g| g.conns.len() as u64).sum()
    }

    fn matching(&self, index: &Index, topic: &TopicName) -> Arc<[Arc<str>]> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.0 != index.generation {
            *cache = (index.generation, HashMap::new());
        }
        if let Some(keys) = cache.1.get(topic) {
            return Arc::clone(keys);
        }
        let keys: Arc<[Arc<str>]> = index
            .groups
            .iter()
            .filter(|(_, g)| g.pattern.matches(topic.as_str()))
            .map(|(k, _)| Arc::clone(k))
            .collect();
        if cache.1.len() >= CACHE_TOPICS {
            cache.1.clear();
        }
        cache.1.insert(topic.clone(), Arc::clone(&keys));
        keys
    }
}
