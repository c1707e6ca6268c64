//! The stream tests of `tests/api` once more, with SSE streams served by actix-web
//! (`server.lean_streams = false`, the path HTTPS connections take) instead of the lean path: both must
//! pass the same tests. `tests/api/front.rs` compares the two paths' answers byte for byte.

/// Read by the shared helpers when they start a node.
pub const LEAN_STREAMS: bool = false;

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/redis_server.rs"]
mod redis_server;

#[path = "../api/concurrency.rs"]
mod concurrency;
#[path = "../api/limits.rs"]
mod limits;
#[path = "../api/mercure.rs"]
mod mercure;
#[path = "../api/publish_subscribe.rs"]
mod publish_subscribe;
#[path = "../api/replay.rs"]
mod replay;
#[path = "../api/shutdown.rs"]
mod shutdown;
#[path = "../api/slow_consumer.rs"]
mod slow_consumer;
