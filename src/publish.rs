//! Publishing, whatever protocol carries it: the client's rate, the access gate, the engine call and the
//! counters. A protocol's handler parses its request, is admitted ([`admit`]) before it reads the body,
//! and publishes through the [`Permit`] it got: a publish cannot reach the engine unchecked.

use std::sync::atomic::Ordering;

use crate::auth::Access;
use crate::domain::{EventId, EventName, IdempotencyKey, TopicName};
use crate::engine::Publish;
use crate::error::ApiError;
use crate::node::{Node, RequestHead};

/// A publish to `topic` that passed the rate limit and the access rule.
pub(crate) struct Permit<'a> {
    node: &'a Node,
    topic: &'a TopicName,
}

/// The client's publish rate first (the cheapest refusal, so floods of bad tokens cost little), then
/// the one access rule for writing `topic`.
pub(crate) fn admit<'a>(
    node: &'a Node,
    head: &RequestHead<'_>,
    topic: &'a TopicName,
) -> Result<Permit<'a>, ApiError> {
    node.per_ip
        .publish(node.client_ip(head))
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    node.authorize(head, Access::Write, std::slice::from_ref(topic))?;
    Ok(Permit { node, topic })
}

impl Permit<'_> {
    /// Stores and fans out the event; its id once the engine has stored it (and, with
    /// `redis.min_replicas`, once the replicas confirmed it).
    pub(crate) async fn publish(
        self,
        event: Option<&EventName>,
        data: &str,
        idempotency_key: Option<&IdempotencyKey>,
    ) -> Result<EventId, ApiError> {
        let message = Publish {
            topic: self.topic,
            event,
            data,
            idempotency_key,
        };
        let id = self.node.engine.publish(message).await?;
        self.node.metrics.published.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }
}
