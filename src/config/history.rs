//! `[history]` and `[limits]`: what the node keeps and what one client may cost it.

use std::time::Duration;

use serde::Deserialize;

use super::{check, seconds, ConfigError};

#[derive(Debug, Clone, Deserialize)]
pub struct HistorySettings {
    pub max_len: usize,
    #[serde(deserialize_with = "seconds")]
    pub max_age_secs: Duration,
    pub page_size: usize,
    /// Bytes of event data one history read (a JSON page, or one step of a replay) gathers at most;
    /// at least one event is always returned, so no event is too large to read.
    pub max_page_bytes: usize,
    /// Memory engine: all topics' retained events together stay within this many bytes (0: no bound).
    pub max_total_bytes: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LimitsSettings {
    pub max_body_bytes: usize,
    pub max_topic_len: usize,
    pub max_event_name_len: usize,
    pub max_topics_per_connection: usize,
    pub max_connections: usize,
    #[serde(deserialize_with = "seconds")]
    pub idempotency_window_secs: Duration,
    pub publish_rate_per_ip: u32,
    pub publish_burst_per_ip: u32,
    pub max_connections_per_ip: usize,
}

impl HistorySettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.max_len >= 1,
            "history.max_len",
            self.max_len,
            "keep at least 1 event per topic",
        )?;
        check(
            (1..=10_000).contains(&self.page_size),
            "history.page_size",
            self.page_size,
            "use 1 to 10000 events",
        )?;
        check(
            (4096..=64 * 1024 * 1024).contains(&self.max_page_bytes),
            "history.max_page_bytes",
            self.max_page_bytes,
            "use 4096 bytes to 64 MiB",
        )?;
        check(
            self.max_total_bytes == 0 || self.max_total_bytes >= 1024 * 1024,
            "history.max_total_bytes",
            self.max_total_bytes,
            "use 0 (no bound) or at least 1048576 bytes",
        )?;
        Ok(())
    }
}

impl LimitsSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check(
            (1..=64 * 1024 * 1024).contains(&self.max_body_bytes),
            "limits.max_body_bytes",
            self.max_body_bytes,
            "use 1 byte to 64 MiB",
        )?;
        check(
            (1..=1024).contains(&self.max_topic_len),
            "limits.max_topic_len",
            self.max_topic_len,
            "use 1 to 1024 bytes",
        )?;
        check(
            (1..=1024).contains(&self.max_event_name_len),
            "limits.max_event_name_len",
            self.max_event_name_len,
            "use 1 to 1024 bytes",
        )?;
        check(
            (1..=10_000).contains(&self.max_topics_per_connection),
            "limits.max_topics_per_connection",
            self.max_topics_per_connection,
            "use 1 to 10000 topics",
        )?;
        check(
            self.max_connections >= 1,
            "limits.max_connections",
            self.max_connections,
            "allow at least 1 connection",
        )?;
        check(
            self.publish_rate_per_ip == 0 || self.publish_burst_per_ip >= 1,
            "limits.publish_burst_per_ip",
            self.publish_burst_per_ip,
            "allow a burst of at least 1 when publish_rate_per_ip is set",
        )?;
        Ok(())
    }
}
