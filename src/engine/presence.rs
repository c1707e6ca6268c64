//! Presence: the subscriptions every node holds, kept in the store so that any node lists them all.
//!
//! Each node writes its own entries when its streams open and removes them when they end, and says it
//! is alive with one write per heartbeat (not one per entry). A node that stops saying so is dead: one
//! surviving node claims it (a lease, so a claimer that dies too is replaced) and removes its entries.
//! The memory engine keeps the same records for its one node.

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::EngineError;

/// One subscription: one selector of one connection.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Entry {
    /// The selector as the subscriber sent it (a topic, `*`, a URI template, a URL pattern).
    pub topic: String,
    /// Its Mercure 1.0 matcher type (`Exact`, `URLPattern`) when a 1.0 parameter named it: its events
    /// and documents then take 1.0's shape (`matchType`, `match`).
    #[serde(default, rename = "matchType", skip_serializing_if = "Option::is_none")]
    pub match_type: Option<String>,
    /// `urn:uuid:<v4>`, made by the hub, one per connection.
    pub subscriber: String,
    /// The token's `payload` (`mercure.payload` or the detail's), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// The id of the update that announced it; its end is announced as `<joined>/left`, so a node that
    /// announces an end again (a claimer that took over from a dead one) stores it once.
    pub joined: String,
}

/// A page of a list: its entries, and where the next page starts (`None`: this was the last).
pub type Page = (Vec<Entry>, Option<String>);

/// The presence side of an engine. Futures are boxed, as the engine's are.
pub trait PresenceStore: Send + Sync + 'static {
    /// Records `entries` as held by `node`; answers, for each, whether it was new (not recorded yet).
    fn join<'a>(
        &'a self,
        node: &'a str,
        entries: &'a [Entry],
    ) -> BoxFuture<'a, Result<Vec<bool>, EngineError>>;

    /// Removes `entries` of `node`; answers, for each, whether this call removed it.
    fn leave<'a>(
        &'a self,
        node: &'a str,
        entries: &'a [Entry],
    ) -> BoxFuture<'a, Result<Vec<bool>, EngineError>>;

    /// Says `node` is alive for `ttl`; answers whether the store knew it (false after a data loss, or
    /// once the node was taken for dead: it must record its entries again).
    fn beat<'a>(&'a self, node: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool, EngineError>>;

    /// A node whose heartbeat is older than its ttl, now leased to the caller for `lease`, if any.
    fn claim_dead(&self, lease: Duration) -> BoxFuture<'_, Result<Option<String>, EngineError>>;

    /// Up to `n` entries `node` still holds (any of them: the caller removes them, then asks again).
    fn held<'a>(&'a self, node: &'a str, n: usize) -> BoxFuture<'a, Result<Vec<Entry>, EngineError>>;

    /// Forgets `node` (it holds nothing more).
    fn forget<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<(), EngineError>>;

    /// Subscriptions of `topic` (a selector, as subscribers wrote it), or of every topic, from `cursor`
    /// (empty: the start), about `n` of them.
    fn list<'a>(
        &'a self,
        topic: Option<&'a str>,
        cursor: &'a str,
        n: usize,
    ) -> BoxFuture<'a, Result<Page, EngineError>>;

    /// The subscription of `subscriber` to `topic`, if it is recorded.
    fn get<'a>(
        &'a self,
        topic: &'a str,
        subscriber: &'a str,
    ) -> BoxFuture<'a, Result<Option<Entry>, EngineError>>;

    /// Subscribers of `topic` (a selector), and on how many nodes.
    fn count<'a>(&'a self, topic: &'a str) -> BoxFuture<'a, Result<(u64, u64), EngineError>>;
}
