//! The functions library (`herald.lua`, beside this file) and the Rust wrappers of its functions.

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::RedisError;

use super::keys::Keys;
use crate::config::Settings;
use crate::domain::{EventId, TopicName};
use crate::engine::{HistoryPage, PageBound};
use crate::event::Stored;

/// The Lua library, versioned; loaded with `FUNCTION LOAD REPLACE` at start-up and after Redis comes back.
pub(super) const FUNCTIONS: &str = include_str!("herald.lua");

/// The line of `herald.lua` that holds the settings for calls that bring none (`redis-cli`): each node
/// writes its own there when it loads the library.
const SETTINGS_LINE: &str =
    "local DEFAULTS = { max_len = 1000, max_age_ms = 86400000, idem_ttl_ms = 600000, max_event_len = 64 }";

/// The settings the publish function needs: passed with every call from a node (so another hub's
/// settings cannot change them), and written into the library a node loads, for `redis-cli` publishers.
/// In the library, not in a key: a function may only touch keys in its call's slot on a Cluster, and
/// FLUSHALL leaves functions in place.
#[derive(Clone)]
pub(super) struct FunctionSettings {
    /// max_len, max_age_ms, idem_ttl_ms, max_event_len: the order `herald.lua` reads them in.
    pub(super) args: [String; 4],
    /// The library with these settings as its defaults.
    library: std::sync::Arc<str>,
}

impl FunctionSettings {
    pub(super) fn new(s: &Settings) -> Self {
        let args = [
            s.history.max_len.to_string(),
            s.history.max_age_secs.as_millis().to_string(),
            s.limits.idempotency_window_secs.as_millis().to_string(),
            s.limits.max_event_name_len.to_string(),
        ];
        let line = format!(
            "local DEFAULTS = {{ max_len = {}, max_age_ms = {}, idem_ttl_ms = {}, max_event_len = {} }}",
            args[0], args[1], args[2], args[3]
        );
        FunctionSettings {
            library: FUNCTIONS.replacen(SETTINGS_LINE, &line, 1).into(),
            args,
        }
    }

    pub(super) fn max_age_ms(&self) -> &str {
        &self.args[1]
    }
}

pub(super) fn is_missing_function(e: &RedisError) -> bool {
    e.to_string().contains("Function not found")
}

pub(super) async fn load_functions(
    conn: &mut impl ConnectionLike,
    settings: &FunctionSettings,
) -> Result<(), RedisError> {
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg(&*settings.library)
        .query_async::<String>(conn)
        .await
        .map(drop)
}

/// Runs `FCALL`/`FCALL_RO`; if Redis lost the library (restarted without persistence), loads it and
/// retries once: a missing function ran nothing, so the retry cannot store twice.
pub(super) async fn fcall<T: redis::FromRedisValue>(
    conn: &mut MultiplexedConnection,
    cmd: redis::Cmd,
    settings: &FunctionSettings,
) -> Result<T, RedisError> {
    match cmd.query_async(conn).await {
        Err(e) if is_missing_function(&e) => {
            tracing::warn!("the Herald functions were missing in Redis; loading them again");
            load_functions(conn, settings).await?;
            cmd.query_async(conn).await
        }
        other => other,
    }
}

/// Runs the publish `FCALL` and, right behind it on the same connection, `WAIT replicas timeout`:
/// returns the id and how many replicas confirmed they hold it (and everything written before it).
pub(super) async fn fcall_replicated(
    conn: &mut MultiplexedConnection,
    cmd: redis::Cmd,
    replicas: u32,
    timeout_ms: u64,
    settings: &FunctionSettings,
) -> Result<(String, u32), RedisError> {
    let mut pipe = redis::pipe();
    pipe.add_command(cmd).cmd("WAIT").arg(replicas).arg(timeout_ms);
    match pipe.query_async(conn).await {
        Err(e) if is_missing_function(&e) => {
            tracing::warn!("the Herald functions were missing in Redis; loading them again");
            load_functions(conn, settings).await?;
            pipe.query_async(conn).await
        }
        other => other,
    }
}

/// Reads one page of a topic's history with the `herald_history` function.
pub(super) async fn read_history(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    topic: &TopicName,
    after: EventId,
    bound: PageBound,
    settings: &FunctionSettings,
) -> Result<HistoryPage, RedisError> {
    let mut cmd = redis::cmd("FCALL_RO");
    cmd.arg("herald_history")
        .arg(1)
        .arg(keys.topic(topic))
        .arg(after.to_string())
        .arg(bound.count)
        .arg(bound.bytes)
        .arg(settings.max_age_ms());
    let flat: Vec<Vec<u8>> = fcall(conn, cmd, settings).await?;
    let parse_id = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<EventId>().ok())
    };
    // The newest id retention removed (empty when none was): a reader after an older id missed events.
    let trimmed = flat.first().and_then(|b| parse_id(b));
    let first_retained = flat.get(1).and_then(|b| parse_id(b));
    let more = flat.get(2).is_some_and(|b| !b.is_empty());
    let mut events = Vec::new();
    for entry in flat.get(3..).unwrap_or_default().chunks_exact(3) {
        let Some(id) = parse_id(&entry[0]) else {
            continue;
        };
        let data = String::from_utf8_lossy(&entry[1]);
        let event = String::from_utf8_lossy(&entry[2]);
        let event = (!event.is_empty()).then_some(&*event);
        events.push(Stored::new(id, topic.clone(), event, &data));
    }
    Ok(HistoryPage {
        events,
        truncated: trimmed.is_some_and(|t| after < t),
        first_retained,
        more,
    })
}

pub(super) async fn last_id(conn: &mut MultiplexedConnection, keys: &Keys) -> Result<EventId, RedisError> {
    let raw: Option<String> = redis::cmd("GET").arg(keys.seq()).query_async(conn).await?;
    Ok(raw.and_then(|s| s.parse().ok()).unwrap_or(EventId::ZERO))
}

/// The newest id this node has seen from Redis (answered to a publisher, received on the link, or read as
/// the clock). Passed as a floor with every publish and on every ping, so that after a failover or a
/// restart that lost writes, or a clock that went back, no new id is at or below one already handed out.
#[derive(Default)]
pub(super) struct Seen(std::sync::Mutex<EventId>);

impl Seen {
    pub(super) fn saw(&self, id: EventId) {
        let mut newest = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if id > *newest {
            *newest = id;
        }
    }

    /// The floor argument: empty until something was seen, so a new Redis is not marked as having lost data.
    pub(super) fn floor_arg(&self) -> String {
        let newest = *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if newest == EventId::ZERO {
            String::new()
        } else {
            newest.to_string()
        }
    }
}

/// What `herald_floor` found and did.
pub(super) struct Clock {
    /// Redis' clock after the raise: every id up to it is in Redis or was lost.
    pub(super) seq: EventId,
    /// The newest id some node had seen when it found Redis behind it (writes were lost); readers
    /// resuming from before it are sent a gap.
    pub(super) lost: Option<EventId>,
}

/// Raises Redis' id clock to what this node has seen (`herald_floor`).
pub(super) async fn raise_clock(
    conn: &mut MultiplexedConnection,
    keys: &Keys,
    seen: &Seen,
    settings: &FunctionSettings,
) -> Result<Clock, RedisError> {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("herald_floor")
        .arg(0)
        .arg(&*keys.prefix)
        .arg(seen.floor_arg())
        .arg(&settings.args[..]);
    let (seq, lost): (String, String) = fcall(conn, cmd, settings).await?;
    let seq = seq.parse().unwrap_or(EventId::ZERO);
    seen.saw(seq);
    Ok(Clock {
        seq,
        lost: lost.parse().ok(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_library_carries_the_nodes_settings() {
        assert_eq!(
            FUNCTIONS.matches(SETTINGS_LINE).count(),
            1,
            "herald.lua's settings line changed shape"
        );
        let mut settings = Settings::defaults().expect("defaults");
        settings.history.max_len = 7;
        let library = FunctionSettings::new(&settings).library;
        assert!(
            library.contains("local DEFAULTS = { max_len = 7, max_age_ms = "),
            "{library}"
        );
        assert!(!library.contains(SETTINGS_LINE));
    }
}
