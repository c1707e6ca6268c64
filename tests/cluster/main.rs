//! The Redis Cluster tests (`tests/api/redis_cluster.rs`), in a binary of their own: cargo runs test
//! binaries one after another, so a Cluster's failover is timed without the rest of the suite on the
//! same two cores (beside it, the healthy shards' promptness check failed in 3 of 6 full runs on
//! 2026-12-08, and in none of 7 runs on its own).

/// Read by the shared helpers when they start a node.
pub const LEAN_STREAMS: bool = true;

#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;
#[allow(dead_code)]
#[path = "../api/redis_server.rs"]
mod redis_server;

#[path = "../api/redis_cluster.rs"]
mod redis_cluster;
