//! What the Redis engine's start-up can fail with, and the one mapping of a Redis error onto an
//! [`EngineError`] (so the HTTP side never reads Redis's own text).

use redis::RedisError;

use crate::engine::{Cause, EngineError};

#[derive(Debug, thiserror::Error)]
pub enum RedisStartError {
    #[error("{url} (redis.url or redis.sentinels) is not a Redis URL: {source}")]
    BadUrl { url: String, source: RedisError },
    #[error(
        "cannot reach Redis at {url} after {waited_secs} s ({last_error}); start redis-server, or fix \
         redis.url (HERALD__REDIS__URL / --redis-url) or, for rediss://, redis.tls_ca_file / \
         tls_cert_file / tls_key_file; or raise redis.startup_wait_secs"
    )]
    Unreachable {
        url: String,
        waited_secs: u64,
        last_error: String,
    },
    #[error(
        "Redis at {url} refused the credentials for {waited_secs} s: fix redis.username / \
         redis.password (HERALD__REDIS__PASSWORD), or the user:password in redis.url, or the ACL user"
    )]
    Credentials { url: String, waited_secs: u64 },
    #[error(
        "cannot reach {url} after {waited_secs} s ({last_error}); start the sentinels and the primary, or \
         fix redis.sentinels / redis.sentinel_master / redis.sentinel_password, or raise \
         redis.startup_wait_secs"
    )]
    NoPrimary {
        url: String,
        waited_secs: u64,
        last_error: String,
    },
    #[error(
        "Redis at {url} is version {version}; Herald needs Redis 7.0 or newer (it uses Redis Functions)"
    )]
    TooOld { url: String, version: String },
    #[error("Redis at {url} refused the Herald functions library: {source}")]
    Functions { url: String, source: RedisError },
    #[error("{key}: cannot read {path}: {source}")]
    TlsFile {
        key: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error(
        "cannot check Redis at {url} ({error}); start it, or fix redis.url, redis.sentinels or \
         redis.cluster_nodes (and the credentials)"
    )]
    Check { url: String, error: String },
    #[error("cannot start the Redis I/O thread: {0}")]
    Thread(std::io::Error),
}

/// `Unknown` when Redis may have run the call; `Failed` when it refused in a way no retry changes;
/// `Unavailable` when it surely did not run and may next time (failing over, loading, out of memory,
/// short of replicas). Redis's own text goes along for the log.
pub(super) fn classify(e: RedisError) -> EngineError {
    let raw = e.to_string();
    if e.code() == Some("NOREPLICAS") {
        // Redis's own min-replicas-to-write refused it: nothing was written.
        return EngineError::NotEnoughReplicas(Cause::with_raw(
            "Redis has too few replicas in sync to write",
            raw,
        ));
    }
    if e.is_timeout() || e.is_connection_dropped() || e.is_io_error() {
        EngineError::Unknown(Cause::with_raw(
            "the connection to Redis broke or timed out during the call",
            raw,
        ))
    } else if permanent(&e) {
        EngineError::Failed(Cause::with_raw(
            "Redis refused the call: a script error, a bad argument or a missing permission",
            raw,
        ))
    } else {
        EngineError::Unavailable(Cause::with_raw("Redis refused the call for now", raw))
    }
}

/// Errors a retry of the same call cannot fix: the script or its arguments are wrong, the ACL user may
/// not run it, or the reply is not what Herald reads.
fn permanent(e: &RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        // "ERR" is also "max number of clients reached", which passes.
        ErrorKind::Server(ServerErrorKind::ResponseError) => {
            !e.detail().is_some_and(|d| d.contains("max number of clients"))
        }
        ErrorKind::Server(
            ServerErrorKind::ExecAbort | ServerErrorKind::CrossSlot | ServerErrorKind::NoPerm,
        )
        | ErrorKind::Parse
        | ErrorKind::UnexpectedReturnType
        | ErrorKind::AuthenticationFailed => true,
        ErrorKind::Extension => e.code() == Some("WRONGTYPE"),
        _ => false,
    }
}
