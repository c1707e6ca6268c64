//! What the primary says of its replicas, for `redis.min_replicas`: with fewer connected than a publish
//! must wait for, the publish is refused at once (503 `not-enough-replicas`), before anything is stored
//! or fanned out, instead of being stored, delivered and then answered 504 after `WAIT` timed out.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use redis::{RedisError, Value};

use super::primary::Conn;

/// How often the watcher asks the primary (`ROLE`): a replica lost between two asks is the one case a
/// publish still waits out `WAIT` and is answered 504.
pub(super) const EVERY: Duration = Duration::from_millis(100);

/// The replicas the primary had connected when last asked, if that answer still holds.
#[derive(Default)]
pub(crate) struct Replicas {
    connected: AtomicU32,
    /// False until asked, and again whenever the connection (and so maybe the primary) changed.
    known: AtomicBool,
}

impl Replicas {
    pub(super) fn get(&self) -> Option<u32> {
        self.known
            .load(Ordering::Acquire)
            .then(|| self.connected.load(Ordering::Acquire))
    }

    pub(super) fn set(&self, connected: u32) {
        self.connected.store(connected, Ordering::Release);
        self.known.store(true, Ordering::Release);
    }

    /// The connection moved (a failover, a reconnect): the next publish asks before it writes.
    pub(super) fn forget(&self) {
        self.known.store(false, Ordering::Release);
    }
}

/// `ROLE` on the primary: how many replicas it has connected (0 if it is no primary any more).
pub(super) async fn ask(mut conn: Conn) -> Result<u32, RedisError> {
    let role: Value = redis::cmd("ROLE").query_async(&mut conn).await?;
    let Value::Array(parts) = role else {
        return Ok(0);
    };
    let is_primary = matches!(parts.first(), Some(Value::BulkString(b)) if b == b"master");
    Ok(match parts.get(2) {
        Some(Value::Array(replicas)) if is_primary => u32::try_from(replicas.len()).unwrap_or(u32::MAX),
        _ => 0,
    })
}
