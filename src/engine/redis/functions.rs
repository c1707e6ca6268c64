//! The functions library (`migrations/herald.lua`) and the Rust wrappers of its functions.

use std::collections::{HashMap, VecDeque};

use redis::aio::ConnectionLike;
use redis::RedisError;

use super::keys::Keys;
use crate::config::Settings;
use crate::domain::{EventId, TopicName};
use crate::engine::{HistoryPage, PageBound};
use crate::event::Stored;

/// The Lua library, versioned (`migrations/`); loaded with `FUNCTION LOAD REPLACE` at start-up and after
/// Redis comes back.
pub(super) const FUNCTIONS: &str = include_str!("../../../migrations/herald.lua");

/// The line of `herald.lua` that holds the settings for calls that bring none (`redis-cli`): each node
/// writes its own there when it loads the library.
const SETTINGS_LINE: &str =
    "local DEFAULTS = { max_len = 1000, max_age_ms = 86400000, idem_ttl_ms = 600000, \
     max_event_len = 64, max_data_bytes = 65536, sharded = false }";

/// The settings the publish function needs: passed with every call from a node (so another hub's
/// settings cannot change them), and written into the library a node loads, for `redis-cli` publishers.
/// In the library, not in a key: a function may only touch keys in its call's slot on a Cluster, and
/// FLUSHALL leaves functions in place.
#[derive(Clone)]
pub(super) struct FunctionSettings {
    /// max_len, max_age_ms, idem_ttl_ms, max_event_len: the order `herald.lua` reads them in.
    pub(super) args: [String; 4],
    /// `limits.max_body_bytes`, the publish function's ARGV 11.
    pub(super) max_data_bytes: String,
    /// The library with these settings as its defaults.
    library: std::sync::Arc<str>,
}

impl FunctionSettings {
    /// `sharded`: the dataset is a Cluster (events announced with SPUBLISH).
    pub(super) fn new(s: &Settings, sharded: bool) -> Self {
        let args = [
            s.history.max_len.to_string(),
            s.history.max_age_secs.as_millis().to_string(),
            s.limits.idempotency_window_secs.as_millis().to_string(),
            s.limits.max_event_name_len.to_string(),
        ];
        let max_data_bytes = s.limits.max_body_bytes.to_string();
        let line = format!(
            "local DEFAULTS = {{ max_len = {}, max_age_ms = {}, idem_ttl_ms = {}, max_event_len = {}, max_data_bytes = {}, sharded = {} }}",
            args[0], args[1], args[2], args[3], max_data_bytes, sharded
        );
        FunctionSettings {
            max_data_bytes,
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
    conn: &mut impl ConnectionLike,
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
pub(super) async fn fcall_replicated<T: redis::FromRedisValue>(
    conn: &mut impl ConnectionLike,
    cmd: redis::Cmd,
    replicas: u32,
    timeout_ms: u64,
    settings: &FunctionSettings,
) -> Result<(T, u32), RedisError> {
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
    conn: &mut impl ConnectionLike,
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

/// The newest id of each topic (`0-0` for none), read concurrently (on a Cluster, each from the topic's
/// shard: one pipeline may only hold one slot's keys).
pub(super) async fn last_ids<C: ConnectionLike + Clone + Send>(
    conn: &C,
    keys: &Keys,
    topics: &[TopicName],
    settings: &FunctionSettings,
) -> Result<Vec<EventId>, RedisError> {
    let reads = topics.iter().map(|topic| {
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("FCALL_RO");
        cmd.arg("herald_last").arg(1).arg(keys.topic(topic));
        async move {
            let raw: String = fcall(&mut conn, cmd, settings).await?;
            Ok::<_, RedisError>(raw.parse().unwrap_or(EventId::ZERO))
        }
    });
    futures_util::future::try_join_all(reads).await
}

/// The one clock of a release-6 dataset (`P:seq`), if there is one: every new id stays above it, so ids
/// clients took before the upgrade keep resuming every topic exactly.
pub(super) async fn legacy_clock(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
) -> Result<Option<EventId>, RedisError> {
    let raw: Option<String> = redis::cmd("GET")
        .arg(keys.legacy_clock())
        .query_async(conn)
        .await?;
    Ok(raw.and_then(|s| s.parse().ok()))
}

/// Topics whose newest id a node remembers: beyond it, the oldest-inserted are forgotten (a forgotten
/// topic's next publish just takes Redis' clock, unchecked).
const SEEN_TOPICS: usize = 65_536;

/// The newest id this node has seen of each recent topic (answered to a publisher, received on the link,
/// or read from Redis). Passed as a floor with every publish and when the link resumes, so that after a
/// failover or a restart that lost writes, or a clock that went back, no new id is at or below one
/// already handed out, and the loss is recorded for readers.
#[derive(Default)]
pub(super) struct Seen(std::sync::Mutex<SeenTopics>);

#[derive(Default)]
struct SeenTopics {
    newest: HashMap<TopicName, EventId>,
    order: VecDeque<TopicName>,
}

impl Seen {
    pub(super) fn saw(&self, topic: &TopicName, id: EventId) {
        let mut seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match seen.newest.get_mut(topic) {
            Some(newest) => *newest = (*newest).max(id),
            None => {
                if seen.order.len() >= SEEN_TOPICS {
                    if let Some(oldest) = seen.order.pop_front() {
                        seen.newest.remove(&oldest);
                    }
                }
                seen.newest.insert(topic.clone(), id);
                seen.order.push_back(topic.clone());
            }
        }
    }

    fn get(&self, topic: &TopicName) -> Option<EventId> {
        let seen = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.newest.get(topic).copied()
    }

    /// The floor argument: empty until something was seen, so a new topic is not marked as having lost data.
    pub(super) fn floor_arg(&self, topic: &TopicName) -> String {
        match self.get(topic) {
            Some(id) if id != EventId::ZERO => id.to_string(),
            _ => String::new(),
        }
    }
}

/// Raises a topic's id clock to what this node has seen of it (`herald_floor`): returns the topic's
/// newest id after that, and whether Redis was behind (writes were lost, and readers from before are now
/// told of a gap).
pub(super) async fn raise_floor(
    conn: &mut impl ConnectionLike,
    keys: &Keys,
    topic: &TopicName,
    seen: &Seen,
    settings: &FunctionSettings,
) -> Result<(EventId, bool), RedisError> {
    let mut cmd = redis::cmd("FCALL");
    cmd.arg("herald_floor")
        .arg(1)
        .arg(keys.topic(topic))
        .arg(seen.floor_arg(topic));
    let (newest, lost): (String, String) = fcall(conn, cmd, settings).await?;
    let newest = newest.parse().unwrap_or(EventId::ZERO);
    seen.saw(topic, newest);
    Ok((newest, !lost.is_empty()))
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
        let library = FunctionSettings::new(&settings, true).library;
        assert!(
            library.contains("local DEFAULTS = { max_len = 7, max_age_ms = ")
                && library.contains("sharded = true }"),
            "{library}"
        );
        assert!(!library.contains(SETTINGS_LINE));
    }
}
