//! Integration tests: real nodes on port 0, real HTTP, SSE parsed by an independent parser crate.
//! Logs are printed only with `TEST_LOG=1`.

/// Streams over plain HTTP take the lean path here; `tests/actix_streams` runs the stream tests again
/// through actix-web.
pub const LEAN_STREAMS: bool = true;

mod helpers;
// Its Cluster half serves tests/cluster, the binary the Cluster tests run in.
#[allow(dead_code)]
mod redis_server;
mod security;

mod browser;
mod concurrency;
mod config;
mod deploy;
mod front;
mod fuzz;
mod https;
mod isolation;
mod limits;
mod logs;
mod mercure;
mod mercure_conformance;
mod presence;
mod publish_subscribe;
mod redis_engine;
mod redis_failover;
mod replay;
mod shutdown;
mod slow_consumer;
