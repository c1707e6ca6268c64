//! What every stream of a node shares.

use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::config::Settings;
use crate::engine::{Engine, PageBound};
use crate::telemetry::Metrics;

/// What every stream of a node shares: where history comes from, what it counts, and its settings.
pub struct Streams {
    pub engine: Arc<dyn Engine>,
    pub metrics: Arc<Metrics>,
    /// The access rule, for topics a stream selects by pattern only (checked per event: they were not
    /// named when the stream was authorized).
    pub auth: Arc<Auth>,
    /// `retry:` sent when a stream opens.
    pub retry_ms: u64,
    /// A comment goes out after this long without anything else.
    pub heartbeat: Duration,
    /// One read of a replay.
    pub page: PageBound,
}

impl Streams {
    pub fn new(engine: Arc<dyn Engine>, metrics: Arc<Metrics>, auth: Arc<Auth>, settings: &Settings) -> Self {
        Streams {
            engine,
            metrics,
            auth,
            retry_ms: settings.sse.retry_ms,
            heartbeat: settings.sse.heartbeat_secs,
            page: PageBound {
                count: settings.history.page_size,
                bytes: settings.history.max_page_bytes,
            },
        }
    }
}
