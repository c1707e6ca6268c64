//! A node cut off from Redis (silence, not refusal): after a grace it hands its subscribers to nodes that
//! still reach Redis.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::timeout;

use crate::engine::EngineEvents;

/// Ends every local stream once Redis has been silent to this node for `grace`, once per silence: their
/// browsers reconnect through the load balancer to a node that reaches Redis (this one refuses them
/// meanwhile) and resume with Last-Event-ID. A Redis that comes back within the grace keeps them: the link
/// gap-fills them.
pub(crate) async fn end_streams_when_silent(
    mut silent: watch::Receiver<bool>,
    grace: Duration,
    node: Arc<dyn EngineEvents>,
) {
    loop {
        if silent.wait_for(|s| *s).await.is_err() {
            return;
        }
        let back = timeout(grace, silent.wait_for(|s| !*s))
            .await
            .map(|answer| answer.is_ok());
        match back {
            Ok(true) => continue,
            Ok(false) => return,
            Err(_) => {
                tracing::warn!(
                    "Redis has been silent to this node for {} ms: ending its SSE streams so their clients \
                     resume on a node that reaches it",
                    grace.as_millis()
                );
                node.store_lost();
                if silent.wait_for(|s| !*s).await.is_err() {
                    return;
                }
            }
        }
    }
}
