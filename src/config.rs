//! Layered settings: built-in defaults → `config/default.toml` → `config/$HERALD_ENV.toml` →
//! `HERALD__SECTION__KEY` env vars → command-line overrides; validated once at load.

use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat, Source};
use serde::Deserialize;

/// The shipped defaults, built in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub sse: SseSettings,
    pub history: HistorySettings,
    pub limits: LimitsSettings,
    pub cors: CorsSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` (coloured only on a terminal) or `json` (one object per line).
    pub format: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AuthSettings {
    pub anonymous_publish: bool,
    pub private_topics: Vec<String>,
    pub hs_secret: Secret,
    pub rsa_public_key_file: String,
    pub ec_public_key_file: String,
    pub algorithms: Vec<String>,
    pub audience: String,
    #[serde(deserialize_with = "seconds")]
    pub leeway_secs: Duration,
    pub cookie_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    pub workers: usize,
    #[serde(deserialize_with = "seconds")]
    pub shutdown_grace_secs: Duration,
    #[serde(deserialize_with = "millis")]
    pub request_head_timeout_ms: Duration,
    /// Data written to a client must be taken within this, or the kernel drops the connection.
    #[serde(deserialize_with = "seconds")]
    pub write_timeout_secs: Duration,
    pub trusted_proxies: Vec<String>,
    /// HTTPS (with HTTP/2): a PEM certificate chain and its private key, read again on SIGHUP.
    pub tls_cert_file: String,
    pub tls_key_file: String,
    /// Plain HTTP: serve SSE streams on the lean path (`http::front`) instead of through actix-web.
    pub lean_streams: bool,
    /// Plain HTTP: connections of one client address still sending their first head (0 = no limit).
    pub max_pending_heads_per_ip: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SseSettings {
    pub retry_ms: u64,
    #[serde(deserialize_with = "seconds")]
    pub heartbeat_secs: Duration,
    pub queue_capacity: usize,
}

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

#[derive(Debug, Clone, Deserialize)]
pub struct CorsSettings {
    pub allowed_origins: Vec<String>,
}

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

/// A secret setting: read from configuration like a string, never shown by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The value itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

/// Durations are read from whole numbers of the unit their key names (`*_secs`, `*_ms`) and kept as
/// `Duration` from then on.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_secs)
}

fn millis<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}

/// Where settings come from besides the built-in defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Folder holding `default.toml` and `{env}.toml`; `config` under the working directory if unset.
    pub dir: Option<PathBuf>,
    /// `HERALD_ENV`: picks `{dir}/{env}.toml` when that file exists.
    pub env: Option<String>,
    /// Overrides from the command line, as `section.key` → value; they win over everything.
    pub overrides: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("could not read the configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("the configuration file {path} was asked for with --config but does not exist")]
    MissingDir { path: PathBuf },
    #[error("unknown setting {key} (from {origin}){hint}; a typo would otherwise be ignored silently")]
    Unknown {
        key: String,
        origin: String,
        /// ": did you mean …?" when a known key is close.
        hint: String,
    },
    #[error("{key} = {value}: {fix} (set it in config/*.toml, as {env}, or on the command line)")]
    Invalid {
        key: &'static str,
        value: String,
        fix: &'static str,
        env: String,
    },
}

impl Settings {
    /// Loads every layer, then checks each value so a bad one fails at start with how to fix it.
    pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
        let dir = match &sources.dir {
            Some(dir) if !dir.is_dir() => return Err(ConfigError::MissingDir { path: dir.clone() }),
            Some(dir) => dir.clone(),
            None => PathBuf::from("config"),
        };
        let mut builder = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .add_source(file(&dir.join("default.toml")));
        if let Some(env) = sources.env.as_deref().filter(|e| !e.is_empty()) {
            builder = builder.add_source(file(&dir.join(format!("{env}.toml"))));
        }
        builder = builder.add_source(
            Environment::with_prefix("HERALD")
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .list_separator(",")
                .with_list_parse_key("cors.allowed_origins")
                .with_list_parse_key("auth.private_topics")
                .with_list_parse_key("auth.algorithms")
                .with_list_parse_key("server.trusted_proxies")
                .with_list_parse_key("redis.sentinels")
                .with_list_parse_key("redis.cluster_nodes"),
        );
        for (key, value) in &sources.overrides {
            builder = builder.set_override(key.as_str(), value.as_str())?;
        }
        let merged = builder.build()?;
        refuse_unknown_keys(&merged)?;
        let settings: Settings = merged.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Settings from the built-in defaults alone (tests start from these).
    pub fn defaults() -> Result<Settings, ConfigError> {
        let settings: Settings = Config::builder()
            .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
            .build()?
            .try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every section; the first bad value stops start-up with its key, value and fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.server.validate()?;
        self.sse.validate()?;
        self.history.validate()?;
        self.limits.validate()?;
        self.cors.validate()?;
        self.redis.validate()?;
        self.auth.validate()?;
        check(
            ["text", "json"].contains(&self.log.format.as_str()),
            "log.format",
            &self.log.format,
            "use text or json",
        )
    }
}

/// `Ok` when `ok`, else the error naming the key, its value, the fix and the env var to set.
fn check(ok: bool, key: &'static str, value: impl ToString, fix: &'static str) -> Result<(), ConfigError> {
    if ok {
        return Ok(());
    }
    let env = format!("HERALD__{}", key.replace('.', "__").to_uppercase());
    Err(ConfigError::Invalid {
        key,
        value: value.to_string(),
        fix,
        env,
    })
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

impl ServerSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.tls_cert_file.is_empty() == self.tls_key_file.is_empty(),
            "server.tls_cert_file",
            &self.tls_cert_file,
            "give server.tls_cert_file and server.tls_key_file together (HTTPS), or neither (plain HTTP)",
        )?;
        check(
            !self.host.is_empty(),
            "server.host",
            "\"\"",
            "give an address such as 127.0.0.1 or 0.0.0.0",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.shutdown_grace_secs),
            "server.shutdown_grace_secs",
            self.shutdown_grace_secs.as_secs(),
            "use 1 to 3600 seconds",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(600)).contains(&self.write_timeout_secs),
            "server.write_timeout_secs",
            self.write_timeout_secs.as_secs(),
            "use 1 to 600 seconds",
        )?;
        check(
            (Duration::from_millis(100)..=Duration::from_millis(600_000))
                .contains(&self.request_head_timeout_ms),
            "server.request_head_timeout_ms",
            self.request_head_timeout_ms.as_millis(),
            "use 100 to 600000 ms",
        )?;
        for proxy in &self.trusted_proxies {
            check(
                proxy.parse::<std::net::IpAddr>().is_ok(),
                "server.trusted_proxies",
                proxy,
                "list IP addresses such as 127.0.0.1 or ::1",
            )?;
        }
        Ok(())
    }
}

impl SseSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        check(
            (1..=3_600_000).contains(&self.retry_ms),
            "sse.retry_ms",
            self.retry_ms,
            "use 1 to 3600000 ms",
        )?;
        check(
            (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.heartbeat_secs),
            "sse.heartbeat_secs",
            self.heartbeat_secs.as_secs(),
            "use 1 to 3600 seconds",
        )?;
        check(
            (1..=1_000_000).contains(&self.queue_capacity),
            "sse.queue_capacity",
            self.queue_capacity,
            "use 1 to 1000000 events",
        )?;
        Ok(())
    }
}

impl HistorySettings {
    fn validate(&self) -> Result<(), ConfigError> {
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
    fn validate(&self) -> Result<(), ConfigError> {
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

impl CorsSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for origin in &self.allowed_origins {
            let ok = origin == "*"
                || ((origin.starts_with("http://") || origin.starts_with("https://"))
                    && !origin.ends_with('/')
                    && origin
                        .split("://")
                        .nth(1)
                        .is_some_and(|rest| !rest.is_empty() && !rest.contains('/')));
            check(
                ok,
                "cors.allowed_origins",
                origin,
                "list origins as scheme://host[:port] with no path, or \"*\"",
            )?;
        }
        Ok(())
    }
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

    fn validate(&self) -> Result<(), ConfigError> {
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

impl AuthSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        check(
            self.hs_secret.is_empty() || self.hs_secret.expose().len() >= 32,
            "auth.hs_secret",
            "(hidden)",
            "use at least 32 random bytes (e.g. `openssl rand -base64 48`)",
        )?;
        let has_key = !self.hs_secret.is_empty()
            || !self.rsa_public_key_file.is_empty()
            || !self.ec_public_key_file.is_empty();
        check(
            self.anonymous_publish || has_key,
            "auth.anonymous_publish",
            false,
            "nobody could publish: configure auth.hs_secret or a public key file, or allow anonymous publishing",
        )?;
        check(
            self.leeway_secs <= Duration::from_secs(600),
            "auth.leeway_secs",
            self.leeway_secs.as_secs(),
            "use 0 to 600 seconds",
        )?;
        check(
            !self.cookie_name.is_empty()
                && self
                    .cookie_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
            "auth.cookie_name",
            &self.cookie_name,
            "use letters, digits, _ and -",
        )?;
        Ok(())
    }
}

/// Keys that once existed under another name, refused with the name that replaced them.
const MOVED: &[(&str, &str)] = &[
    // Was a copy of server.lean_streams that nothing read.
    ("redis.lean_streams", "server.lean_streams"),
];

/// Every key the built-in defaults name is a setting; any other key in a file, the environment or a flag is
/// a mistake, refused with where it came from and the closest known key.
fn refuse_unknown_keys(merged: &Config) -> Result<(), ConfigError> {
    let known = Config::builder()
        .add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml))
        .build()?
        .collect()?;
    let known_keys: Vec<String> = known
        .iter()
        .flat_map(|(section, value)| match &value.kind {
            config::ValueKind::Table(keys) => keys.keys().map(|k| format!("{section}.{k}")).collect(),
            _ => vec![section.clone()],
        })
        .collect();
    let unknown = |key: String, value: &config::Value| {
        let origin = match value.origin() {
            Some("the environment") => format!(
                "the environment variable HERALD__{}",
                key.replace('.', "__").to_uppercase()
            ),
            Some(path) => path.to_string(),
            None => "the command line".to_string(),
        };
        let hint = match MOVED.iter().find(|(old, _)| *old == key) {
            Some((_, new)) => format!(": it is {new} now"),
            None => closest(&key, &known_keys).map_or(String::new(), |k| format!(": did you mean {k}?")),
        };
        Err(ConfigError::Unknown { key, origin, hint })
    };
    let mut sections: Vec<_> = merged.collect()?.into_iter().collect();
    sections.sort_by(|a, b| a.0.cmp(&b.0));
    for (section, value) in sections {
        let Some(known_section) = known.get(&section) else {
            // A whole section nobody knows: name its first key, which says where it came from.
            return match &value.kind {
                config::ValueKind::Table(keys) => match keys.iter().min_by(|a, b| a.0.cmp(b.0)) {
                    Some((k, v)) => unknown(format!("{section}.{k}"), v),
                    None => unknown(section, &value),
                },
                _ => unknown(section, &value),
            };
        };
        if let (config::ValueKind::Table(keys), config::ValueKind::Table(known_keys)) =
            (&value.kind, &known_section.kind)
        {
            let mut keys: Vec<_> = keys.iter().collect();
            keys.sort_by(|a, b| a.0.cmp(b.0));
            for (key, v) in keys {
                if !known_keys.contains_key(key) {
                    return unknown(format!("{section}.{key}"), v);
                }
            }
        }
    }
    Ok(())
}

/// The known key nearest to `key` (edit distance at most a third of its length, and at least 2 allowed).
fn closest<'a>(key: &str, known: &'a [String]) -> Option<&'a String> {
    let distance = |a: &str, b: &str| {
        let b: Vec<char> = b.chars().collect();
        let mut row: Vec<usize> = (0..=b.len()).collect();
        for (i, ca) in a.chars().enumerate() {
            let mut prev = row[0];
            row[0] = i + 1;
            for (j, cb) in b.iter().enumerate() {
                let next = (prev + usize::from(ca != *cb))
                    .min(row[j] + 1)
                    .min(row[j + 1] + 1);
                prev = row[j + 1];
                row[j + 1] = next;
            }
        }
        row[b.len()]
    };
    let allowed = (key.chars().count() / 3).max(2);
    known
        .iter()
        .map(|k| (distance(key, k), k))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k)
}

fn file(path: &Path) -> File<config::FileSourceFile, FileFormat> {
    File::from(path).format(FileFormat::Toml).required(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_stay_out_of_debug() {
        let mut s = Settings::defaults().unwrap();
        s.auth.hs_secret = Secret::from("a-very-secret-value-a-very-secret-value");
        s.redis.url = "redis://user:pa55word@host:6379/0".into();
        s.redis.password = Secret::from("an0ther-pa55word");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("a-very-secret") && !shown.contains("pa55word"),
            "{shown}"
        );
        assert!(shown.contains("redis://***@host:6379/0"), "{shown}");
        assert_eq!(redact_url("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn defaults_are_valid() {
        let s = Settings::defaults().unwrap();
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.sse.heartbeat_secs, Duration::from_secs(15));
        assert!(s.cors.allowed_origins.is_empty());
    }

    #[test]
    fn invalid_value_says_how_to_fix() {
        let mut s = Settings::defaults().unwrap();
        s.sse.queue_capacity = 0;
        let msg = s.validate().unwrap_err().to_string();
        assert!(msg.contains("sse.queue_capacity = 0"), "{msg}");
        assert!(msg.contains("HERALD__SSE__QUEUE_CAPACITY"), "{msg}");
        s.sse.queue_capacity = 1;
        s.cors.allowed_origins = vec!["https://a.example/path".into()];
        assert!(s.validate().unwrap_err().to_string().contains("scheme://host"));
    }

    #[test]
    fn cluster_nodes_stand_alone_and_are_urls() {
        let mut s = Settings::defaults().unwrap();
        s.redis.cluster_nodes = vec!["redis://127.0.0.1:7000".into(), "redis://127.0.0.1:7001".into()];
        assert!(s.validate().is_ok());
        assert!(s.redis.enabled() && !s.redis.tls());
        s.redis.url = "redis://127.0.0.1:6379".into();
        let msg = s.validate().unwrap_err().to_string();
        assert!(
            msg.contains("redis.cluster_nodes") && msg.contains("not several"),
            "{msg}"
        );
        s.redis.url.clear();
        s.redis.cluster_nodes = vec!["127.0.0.1:7000".into()];
        let msg = s.validate().unwrap_err().to_string();
        assert!(msg.contains("redis://host:port"), "{msg}");
        s.redis.cluster_nodes = vec!["rediss://a:7000".into(), "redis://b:7000".into()];
        let msg = s.validate().unwrap_err().to_string();
        assert!(msg.contains("one scheme"), "{msg}");
        s.redis.cluster_nodes = vec!["rediss://a:7000".into(), "rediss://b:7000".into()];
        assert!(s.validate().is_ok() && s.redis.tls());
    }

    #[test]
    fn overrides_win() {
        let sources = Sources {
            dir: None,
            env: None,
            overrides: vec![("server.port".into(), "9123".into())],
        };
        assert_eq!(Settings::load(&sources).unwrap().server.port, 9123);
    }
}
