//! Layered settings: built-in defaults → `config/default.toml` → `config/$HERALD_ENV.toml` →
//! `HERALD__SECTION__KEY` env vars → command-line overrides; validated once at load.
//!
//! Each section's struct lives beside its own validation: `server` (`[server]`, `[sse]`, `[cors]`),
//! `history` (`[history]`, `[limits]`), `redis`, `auth`, `mercure`, `presence`; the loader is here, the strict-key check
//! in `keys`.

mod auth;
mod history;
mod keys;
mod mercure;
mod presence;
mod redis;
mod server;

pub use auth::AuthSettings;
pub use history::{HistorySettings, LimitsSettings};
pub use mercure::MercureSettings;
pub use presence::PresenceSettings;
pub use redis::{redact_url, RedisSettings};
pub use server::{CorsSettings, ServerSettings, SseSettings};

use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

/// The shipped defaults, built in so the binary runs from any directory.
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub server: ServerSettings,
    pub sse: SseSettings,
    pub history: HistorySettings,
    pub limits: LimitsSettings,
    pub cors: CorsSettings,
    pub redis: RedisSettings,
    pub auth: AuthSettings,
    pub mercure: MercureSettings,
    pub presence: PresenceSettings,
    pub log: LogSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LogSettings {
    /// `text` (coloured only on a terminal) or `json` (one object per line).
    pub format: String,
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
        keys::refuse_unknown_keys(&merged)?;
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
        self.mercure.validate()?;
        self.presence.validate()?;
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
