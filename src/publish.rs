//! Publishing, whatever protocol carries it: the client's rate, the access gate, the engine call and the
//! counters. A protocol's handler parses its request, is admitted ([`admit`]) before it reads the body,
//! and publishes through the [`Permit`] it got: a publish cannot reach the engine unchecked.

use std::sync::atomic::Ordering;

use crate::auth::{Access, Grant};
use crate::domain::{EventId, EventName, IdempotencyKey, TopicName};
use crate::engine::Publish;
use crate::error::ApiError;
use crate::event::{mercure_key, UpdateFields};
use crate::node::{Node, RequestHead};
use crate::sse::MERCURE_FIELDS_MAX;

/// A publish to `topics` that passed the rate limit and the access rule (for every one of them).
pub(crate) struct Permit<'a> {
    node: &'a Node,
    topics: &'a [TopicName],
}

/// The client's publish rate first (the cheapest refusal, so floods of bad tokens cost little), then
/// the one access rule for writing `topic`.
pub(crate) fn admit<'a>(
    node: &'a Node,
    head: &RequestHead<'_>,
    topic: &'a TopicName,
) -> Result<Permit<'a>, ApiError> {
    admit_publisher(node, head)?.for_topics(std::slice::from_ref(topic))
}

/// A publisher past its rate and its token's check, whose topics come with the body (Mercure's form).
pub(crate) struct Publisher<'a> {
    node: &'a Node,
    grant: Option<Grant>,
}

/// The client's publish rate, then its token (verified once, whether or not it may publish anything
/// yet): what can be refused before a body is read.
pub(crate) fn admit_publisher<'a>(node: &'a Node, head: &RequestHead<'_>) -> Result<Publisher<'a>, ApiError> {
    node.per_ip
        .publish(node.client_ip(head))
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let grant = node.authorize(head, Access::Write, &[])?;
    Ok(Publisher { node, grant })
}

impl<'a> Publisher<'a> {
    /// The access rule for writing every one of `topics`.
    pub(crate) fn for_topics(self, topics: &'a [TopicName]) -> Result<Permit<'a>, ApiError> {
        self.node.auth.check_publish(self.grant.as_ref(), topics)?;
        Ok(Permit {
            node: self.node,
            topics,
        })
    }
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
        let Some(topic) = self.topics.first() else {
            return Err(ApiError::BadRequest("name a topic to publish to".into()));
        };
        let message = Publish {
            topic,
            event,
            data,
            idempotency_key,
        };
        let id = self.node.engine.publish(message).await?;
        self.node.metrics.published.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// Stores a Mercure update once per topic, keyed by its id (`event::mercure_key`; see
    /// `engine::store_update`); answers once every copy is stored.
    pub(crate) async fn publish_update(self, fields: &UpdateFields, data: &str) -> Result<(), ApiError> {
        let line = serde_json::to_string(fields)
            .map_err(|e| ApiError::BadRequest(format!("the update cannot be stored: {e}")))?;
        if line.len() >= MERCURE_FIELDS_MAX {
            return Err(ApiError::BadRequest(format!(
                "the update's id, type and topics take {} bytes; at most {} fit: send fewer or shorter topics",
                line.len(),
                MERCURE_FIELDS_MAX - 1
            )));
        }
        let key = IdempotencyKey::parse(&mercure_key(&fields.id)).map_err(|_| {
            ApiError::BadRequest("the id is too long: at most 128 bytes once written as visible ASCII".into())
        })?;
        crate::engine::store_update(&*self.node.engine, self.topics, &line, &key, data).await?;
        self.node.metrics.published.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}
