//! `[presence]`: who is subscribed, across every node (the subscriptions API and subscription events).

use std::time::Duration;

use serde::Deserialize;

use super::{check, seconds, ConfigError};

#[derive(Debug, Clone, Deserialize)]
pub struct PresenceSettings {
    /// Off by default: it costs a write per connect and per disconnect.
    pub enabled: bool,
    /// How often a node tells the store it is alive (one write per node, whatever it holds).
    #[serde(deserialize_with = "seconds")]
    pub heartbeat_secs: Duration,
    /// A node silent this long is dead: a surviving node removes its subscriptions and announces them.
    #[serde(deserialize_with = "seconds")]
    pub ttl_secs: Duration,
    /// Subscriptions per page of the subscriptions API; a longer list answers a `next` link.
    pub page_size: usize,
}

impl PresenceSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let (beat, ttl) = (self.heartbeat_secs.as_secs(), self.ttl_secs.as_secs());
        check(
            (1..=3600).contains(&beat),
            "presence.heartbeat_secs",
            beat,
            "use 1 to 3600 seconds (10 is a good start)",
        )?;
        check(
            ttl >= 2 * beat && ttl <= 86_400,
            "presence.ttl_secs",
            ttl,
            "use at least twice presence.heartbeat_secs (so one late heartbeat kills no node) and at most 86400",
        )?;
        check(
            (1..=10_000).contains(&self.page_size),
            "presence.page_size",
            self.page_size,
            "use 1 to 10000",
        )
    }
}
