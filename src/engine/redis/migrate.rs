//! The one-time key-layout upgrades of `migrations/` (its README has the history): run when a node
//! starts and when its link finds Redis again (a restored backup may hold an older layout), before the
//! node reads or writes a topic; never on the hot path. Standalone and Sentinel only: a Cluster never
//! held an older layout.

use std::sync::Arc;

use redis::aio::ConnectionLike;
use redis::{AsyncConnectionConfig, RedisError};

use super::error::RedisStartError;
use super::functions::{is_missing_function, FUNCTIONS};
use super::keys::Keys;
use super::primary::{redis_version, server_info, Primary};
use crate::config::RedisSettings;

/// The key layout this release reads and writes: release 7 moved each topic's log to `P:{T}`.
pub(super) const LAYOUT: u32 = 7;

/// Keys the 6 → 7 upgrade asks for per `SCAN` round trip.
const SCAN_COUNT: usize = 1000;

/// The layout `P:layout` records; `None` when nothing is recorded (a release-6 dataset, or an empty one).
pub(super) async fn recorded(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<Option<u32>, RedisError> {
    let raw: Option<String> = redis::cmd("GET").arg(keys.layout()).query_async(conn).await?;
    Ok(raw.and_then(|r| r.parse().ok()))
}

/// Brings the Redis to [`LAYOUT`] unless it records it already; how many topics were moved. Several
/// nodes may run it at once: each topic moves in one atomic function call, once, and the layout is
/// recorded only after every topic found has moved.
pub(super) async fn upgrade(conn: &mut impl ConnectionLike, keys: &Keys) -> Result<u64, RedisError> {
    if recorded(conn, keys).await?.is_some_and(|layout| layout >= LAYOUT) {
        return Ok(0);
    }
    let mut moved = 0;
    for key in old_topic_keys(conn, keys).await? {
        let answer: String = redis::cmd("FCALL")
            .arg("herald_upgrade")
            .arg(1)
            .arg(&key)
            .query_async(conn)
            .await?;
        moved += u64::from(answer == "1");
    }
    let _: () = redis::cmd("SET")
        .arg(keys.layout())
        .arg(LAYOUT)
        .query_async(conn)
        .await?;
    if moved > 0 {
        tracing::info!(
            moved,
            "moved release-6 topic logs to the layout of release 7 (migrations/README.md)"
        );
    }
    Ok(moved)
}

/// Every `P:{T}` whose log is still in release 6's `P:{T}:log`.
pub(super) async fn old_topic_keys(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<Vec<String>, RedisError> {
    let pattern = format!("{}:{{*}}:log", glob_escape(&keys.prefix));
    let mut found = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(conn)
            .await?;
        // `*` also matches an idempotency key ending in ":log" (`P:{T}:idem:a:log`): only `P:{E}:log`,
        // E without braces (topics write them %7B and %7D), is a topic's log.
        found.extend(batch.into_iter().filter_map(|key| {
            let topic_key = key.strip_suffix(":log")?;
            let escaped = topic_key
                .strip_prefix(&*keys.prefix)?
                .strip_prefix(":{")?
                .strip_suffix('}')?;
            (!escaped.is_empty() && !escaped.contains(['{', '}'])).then(|| topic_key.to_string())
        }));
        if next == 0 {
            return Ok(found);
        }
        cursor = next;
    }
}

/// What `herald migrate --check` found: what the Redis holds, and whether this binary can serve it.
pub(crate) struct StoreCheck {
    pub url: String,
    pub redis_version: String,
    /// `FCALL_RO herald_version`: the library loaded now, if any.
    pub loaded: Option<String>,
    /// `None` on a Cluster (no global key; a Cluster never held an older layout).
    pub layout: Option<Layout>,
    /// Why this binary cannot serve it; `None` when it can.
    pub refusal: Option<String>,
}

pub(crate) struct Layout {
    pub recorded: Option<u32>,
    /// Topics still in release 6's keys (moved when a node starts).
    pub old_topics: usize,
}

impl std::fmt::Display for StoreCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "redis:     {} (Redis {})", self.url, self.redis_version)?;
        let ours = library_version();
        match &self.loaded {
            Some(v) if v == ours => writeln!(f, "functions: herald library VERSION {v} loaded (this binary's)")?,
            Some(v) => writeln!(
                f,
                "functions: herald library VERSION {v} loaded; this binary loads VERSION {ours} when it starts"
            )?,
            None => writeln!(f, "functions: none loaded; this binary loads VERSION {ours} when it starts")?,
        }
        match &self.layout {
            None => writeln!(f, "layout:    a Cluster holds only the current key layout ({LAYOUT}); nothing to upgrade")?,
            Some(Layout { recorded: Some(l), old_topics: 0 }) => writeln!(f, "layout:    {l} (recorded)")?,
            Some(Layout { recorded, old_topics }) => writeln!(
                f,
                "layout:    {} recorded; {old_topics} topics in release-6 keys: moved to layout {LAYOUT} when a node starts (migrations/README.md)",
                recorded.map_or("none".to_string(), |l| l.to_string())
            )?,
        }
        match &self.refusal {
            None => write!(f, "verdict:   this binary can serve it"),
            Some(why) => write!(f, "verdict:   this binary cannot serve it: {why}"),
        }
    }
}

/// The `VERSION` of the library this binary embeds.
pub(crate) fn library_version() -> &'static str {
    FUNCTIONS
        .lines()
        .find_map(|l| l.strip_prefix("local VERSION = '")?.strip_suffix('\''))
        .unwrap_or("unknown")
}

/// Looks at a Redis without changing anything: its version, the library loaded, the layout recorded and
/// any topic still in an older layout.
pub(crate) async fn check(settings: &RedisSettings) -> Result<StoreCheck, RedisStartError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(settings.connect_timeout_ms))
        .set_response_timeout(Some(settings.command_timeout_ms));
    let primary = Arc::new(Primary::new(settings, config.clone())?);
    let url = primary.shown(&settings.url);
    let failed = |e: RedisError| RedisStartError::Check {
        url: url.clone(),
        error: e.to_string(),
    };
    let mut conn = primary
        .connect(&config, settings.command_timeout_ms, None)
        .await
        .map_err(failed)?;
    let (redis_version, major) = redis_version(&server_info(&mut conn).await.map_err(failed)?);
    let loaded = match redis::cmd("FCALL_RO")
        .arg("herald_version")
        .arg(0)
        .query_async::<String>(&mut conn)
        .await
    {
        Ok(v) => Some(v),
        Err(e) if is_missing_function(&e) || major < 7 => None,
        Err(e) => return Err(failed(e)),
    };
    let keys = Keys {
        prefix: Arc::from(settings.key_prefix.as_str()),
    };
    let layout = match (settings.cluster_nodes.is_empty(), major >= 7) {
        (true, true) => Some(Layout {
            recorded: recorded(&mut conn, &keys).await.map_err(failed)?,
            old_topics: old_topic_keys(&mut conn, &keys).await.map_err(failed)?.len(),
        }),
        _ => None,
    };
    let newer = layout.as_ref().and_then(|l| l.recorded).filter(|l| *l > LAYOUT);
    let refusal = match (major < 7, newer) {
        (true, _) => Some(format!(
            "Redis {redis_version} is older than 7.0 (Herald uses Redis Functions)"
        )),
        (false, Some(newer)) => Some(format!(
            "it records key layout {newer}, newer than this binary's {LAYOUT}: run a newer release"
        )),
        (false, None) => None,
    };
    Ok(StoreCheck {
        url,
        redis_version,
        loaded,
        layout,
        refusal,
    })
}

/// `text` with Redis glob's special characters escaped, so a prefix matches only itself.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_matches_only_itself() {
        assert_eq!(super::glob_escape("herald"), "herald");
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
