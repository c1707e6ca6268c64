//! `[redis]`: the store; its URL and password never shown by `Debug`.

use std::time::Duration;

use serde::Deserialize;

use super::{check, millis, seconds, ConfigError, Secret};

#[derive(Clone, Deserialize)]
pub struct RedisSettings {
    pub url: String,
    /// ACL user and password; each, when set, wins over the URL's.
    pub username: String,
    pub password: Secret,
    /// PEM files for TLS: CAs to trust (empty: the system's), and a client certificate and key.
    pub tls_ca_file: String,
    pub tls_cert_file: String,
    pub tls_key_file: String,
    pub key_prefix: String,
    #[serde(deserialize_with = "millis")]
    pub connect_timeout_ms: Duration,
    #[serde(deserialize_with = "millis")]
    pub command_timeout_ms: Duration,
    #[serde(deserialize_with = "seconds")]
    pub startup_wait_secs: Duration,
    #[serde(deserialize_with = "millis")]
    pub ping_interval_ms: Duration,
    /// A ping unanswered this long means the pub/sub link is lost (and Redis silent to this node).
    #[serde(deserialize_with = "millis")]
    pub link_timeout_ms: Duration,
    /// Redis silent to this node this long: its SSE streams end (zero: never).
    #[serde(deserialize_with = "millis")]
    pub link_lost_grace_ms: Duration,
    /// Sentinels to ask for the primary of `sentinel_master` (instead of `url`).
    pub sentinels: Vec<String>,
    pub sentinel_master: String,
    pub sentinel_password: Secret,
    /// Seed nodes of a Redis Cluster (instead of `url` or `sentinels`): topics spread over its shards.
    pub cluster_nodes: Vec<String>,
    /// Replicas that must have a publish before it is acknowledged (`WAIT`); 0 acknowledges on the primary.
    pub min_replicas: u32,
}

/// The URL may carry a password: `Debug` shows it redacted.
impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("username", &self.username)
            .field("password", &self.password)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("command_timeout_ms", &self.command_timeout_ms)
            .field("startup_wait_secs", &self.startup_wait_secs)
            .field("ping_interval_ms", &self.ping_interval_ms)
            .field("link_timeout_ms", &self.link_timeout_ms)
            .field("link_lost_grace_ms", &self.link_lost_grace_ms)
            .field(
                "sentinels",
                &self.sentinels.iter().map(|u| redact_url(u)).collect::<Vec<_>>(),
            )
            .field("sentinel_master", &self.sentinel_master)
            .field("sentinel_password", &self.sentinel_password)
            .field(
                "cluster_nodes",
                &self
                    .cluster_nodes
                    .iter()
                    .map(|u| redact_url(u))
                    .collect::<Vec<_>>(),
            )
            .field("min_replicas", &self.min_replicas)
            .finish()
    }
}

/// A URL as it may be shown in logs and errors: any password replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => format!("{}://***@{}", &url[..scheme], &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// A list of Redis URLs (sentinels, Cluster nodes): each redis:// or rediss://, all with one scheme.
fn check_urls(
    key: &'static str,
    urls: &[String],
    list_fix: &'static str,
    scheme_fix: &'static str,
) -> Result<(), ConfigError> {
    for url in urls {
        check(
            url.starts_with("redis://") || url.starts_with("rediss://"),
            key,
            redact_url(url),
            list_fix,
        )?;
    }
    check(
        urls.iter().all(|u| u.starts_with("rediss://")) || urls.iter().all(|u| u.starts_with("redis://")),
        key,
        urls.len(),
        scheme_fix,
    )
}

impl RedisSettings {
    /// Whether Herald runs on Redis (a URL, sentinels or a Cluster) rather than the memory engine.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty() || !self.sentinels.is_empty() || !self.cluster_nodes.is_empty()
    }

    /// Whether data nodes are reached over TLS: a rediss:// URL, rediss:// sentinels or Cluster nodes.
    pub fn tls(&self) -> bool {
        let all_tls = |urls: &[String]| !urls.is_empty() && urls.iter().all(|u| u.starts_with("rediss://"));
        self.url.starts_with("rediss://") || all_tls(&self.sentinels) || all_tls(&self.cluster_nodes)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.url;
        check(
            url.is_empty() || url.starts_with("redis://") || url.starts_with("rediss://"),
            "redis.url",
            redact_url(url),
            "use redis://host:port[/db] (or rediss:// for TLS), or leave it empty for the memory engine",
        )?;
        check(
            !self.key_prefix.is_empty()
                && self.key_prefix.len() <= 64
                && !self.key_prefix.contains(['{', '}'])
                && self.key_prefix.bytes().all(|b| b.is_ascii_graphic()),
            "redis.key_prefix",
            &self.key_prefix,
            "use 1 to 64 visible ASCII characters without { or }",
        )?;
        check(
            (Duration::from_millis(10)..=Duration::from_millis(60_000)).contains(&self.connect_timeout_ms),
            "redis.connect_timeout_ms",
            self.connect_timeout_ms.as_millis(),
            "use 10 to 60000 ms",
        )?;
        check(
            (Duration::from_millis(10)..=Duration::from_millis(60_000)).contains(&self.command_timeout_ms),
            "redis.command_timeout_ms",
            self.command_timeout_ms.as_millis(),
            "use 10 to 60000 ms",
        )?;
        check(
            self.startup_wait_secs <= Duration::from_secs(3600),
            "redis.startup_wait_secs",
            self.startup_wait_secs.as_secs(),
            "use 0 to 3600 seconds",
        )?;
        check(
            (Duration::from_millis(50)..=Duration::from_millis(60_000)).contains(&self.ping_interval_ms),
            "redis.ping_interval_ms",
            self.ping_interval_ms.as_millis(),
            "use 50 to 60000 ms",
        )?;
        check(
            (Duration::from_millis(50)..=Duration::from_millis(60_000)).contains(&self.link_timeout_ms),
            "redis.link_timeout_ms",
            self.link_timeout_ms.as_millis(),
            "use 50 to 60000 ms (how long an unanswered ping may wait before the link counts as lost)",
        )?;
        check(
            self.link_lost_grace_ms <= Duration::from_millis(3_600_000),
            "redis.link_lost_grace_ms",
            self.link_lost_grace_ms.as_millis(),
            "use 0 (streams stay open until Redis is back) to 3600000 ms",
        )?;
        check(
            self.tls_cert_file.is_empty() == self.tls_key_file.is_empty(),
            "redis.tls_cert_file",
            &self.tls_cert_file,
            "give redis.tls_cert_file and redis.tls_key_file together (mutual TLS), or neither",
        )?;
        let tls_files = !(self.tls_ca_file.is_empty() && self.tls_cert_file.is_empty());
        check(
            !tls_files || self.tls(),
            "redis.url",
            redact_url(&self.url),
            "TLS files are set: use a rediss:// URL, sentinels or Cluster nodes (or clear redis.tls_*)",
        )?;
        check(
            self.url.is_empty() || self.sentinels.is_empty(),
            "redis.sentinels",
            self.sentinels.len(),
            "set either redis.url (one Redis) or redis.sentinels (Sentinel finds the primary), not both",
        )?;
        check_urls(
            "redis.sentinels",
            &self.sentinels,
            "list sentinels as redis://host:port (or rediss:// for TLS to sentinels and data nodes)",
            "use one scheme for every sentinel: redis:// (plain) or rediss:// (TLS everywhere)",
        )?;
        check(
            self.cluster_nodes.is_empty() || (self.url.is_empty() && self.sentinels.is_empty()),
            "redis.cluster_nodes",
            self.cluster_nodes.len(),
            "set one of redis.url (one Redis), redis.sentinels (Sentinel) or redis.cluster_nodes (a Redis \
             Cluster), not several",
        )?;
        check_urls(
            "redis.cluster_nodes",
            &self.cluster_nodes,
            "list Cluster nodes as redis://host:port (or rediss:// for TLS); any few of them will do",
            "use one scheme for every Cluster node: redis:// (plain) or rediss:// (TLS)",
        )?;
        check(
            self.sentinels.is_empty() || !self.sentinel_master.is_empty(),
            "redis.sentinel_master",
            &self.sentinel_master,
            "name the master the sentinels monitor (its name in `sentinel monitor <name> ...`)",
        )?;
        check(
            self.min_replicas <= 16,
            "redis.min_replicas",
            self.min_replicas,
            "use 0 (acknowledge once the primary has it) to 16 replicas",
        )?;
        Ok(())
    }
}
