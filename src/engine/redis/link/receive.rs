//! What arrives on the link's channels: each message decoded into an event for the hub, duplicates and
//! refused frames dropped, and the rare unexpected id checked against the topic's stream first.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::{Link, LinkError};
use crate::domain::{now_ms, TopicName};
use crate::engine::EngineError;
use crate::event::{Event, Stored};
use crate::sse;

impl Link {
    /// Adds one pub/sub message to the run for the hub (or drops it); waits only for the rare message
    /// that must be checked against its stream.
    pub(super) async fn take(
        &mut self,
        batch: &mut Vec<Arc<Event>>,
        channel: &str,
        payload: &[u8],
        from_pattern: bool,
    ) -> Result<(), LinkError> {
        match self.decode(channel, payload, from_pattern) {
            Decoded::Event(event) => batch.push(event),
            Decoded::Skip => {}
            Decoded::Check(event) => {
                // Rare (a forged or replayed message): keep order, then ask the stream.
                self.node.dispatch_all(batch);
                batch.clear();
                match self.in_stream(&event).await {
                    Ok(true) => {
                        self.shared.seen.saw(event.topic(), event.id);
                        self.cursors.insert(event.topic().clone(), event.id);
                        batch.push(event.event);
                    }
                    Ok(false) => self.refuse(event.topic(), "its id is not in the topic's stream"),
                    Err(e) => return Err(LinkError::Check(e)),
                }
            }
        }
        Ok(())
    }

    /// Turns one pub/sub message into an event for the hub; never waits.
    fn decode(&mut self, channel: &str, payload: &[u8], from_pattern: bool) -> Decoded {
        let Some((topic, stored)) = self.keys.topic_of_channel(channel, self.max_topic_len) else {
            return Decoded::Skip;
        };
        if !stored {
            // A plain `PUBLISH` to the live channel: data only, framed by us, whatever it contains.
            let data = String::from_utf8_lossy(payload);
            return Decoded::Event(Arc::new(Event::live(topic, &data)));
        }
        let id = match sse::stored_frame(payload, self.frame_rules) {
            Ok(id) => id,
            Err(why) => {
                self.refuse(&topic, &why.to_string());
                return Decoded::Skip;
            }
        };
        if from_pattern {
            // The copy of what its channel's own subscription just brought (`everything`).
            if self
                .last_plain
                .as_ref()
                .is_some_and(|(t, i)| *t == topic && *i == id)
            {
                return Decoded::Skip;
            }
            if !self.subscribed.contains(&topic) {
                let event = Stored::from_frame(id, topic, bytes::Bytes::copy_from_slice(payload));
                return Decoded::Event(event.event);
            }
        } else if self.everything {
            self.last_plain = Some((topic.clone(), id));
        }
        if self.floors.get(&topic).is_some_and(|floor| id <= *floor) {
            return Decoded::Skip;
        }
        let expected = self.cursors.get(&topic).is_none_or(|cursor| id > *cursor)
            && id.ms <= now_ms().saturating_add(FUTURE_TOLERANCE_MS);
        let event = Stored::from_frame(id, topic, bytes::Bytes::copy_from_slice(payload));
        if expected {
            self.shared.seen.saw(event.topic(), id);
            self.cursors.insert(event.topic().clone(), id);
            Decoded::Event(event.event)
        } else {
            Decoded::Check(event)
        }
    }

    /// Whether the topic's stream holds an entry with this event's id.
    async fn in_stream(&self, event: &Stored) -> Result<bool, EngineError> {
        let (log, id) = (self.keys.topic(event.topic()), event.id.to_string());
        self.shared
            .run(|mut conn| async move {
                let found: Vec<redis::Value> = redis::cmd("XRANGE")
                    .arg(log)
                    .arg(&id)
                    .arg(&id)
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await?;
                Ok(!found.is_empty())
            })
            .await
    }

    fn refuse(&self, topic: &TopicName, why: &str) {
        self.metrics.redis_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(held_back) = self.refused_log.ready() {
            tracing::warn!(
                %topic,
                held_back,
                "dropped a message on the topic's stored-event channel: {why} (herald_redis_refused_messages_total counts them all; one line per 10 s)"
            );
        }
    }
}

/// What one pub/sub message becomes.
enum Decoded {
    Event(Arc<Event>),
    /// A duplicate, or refused.
    Skip,
    /// A stored event whose id is not newer than its topic's cursor, or lies in the future: handed over
    /// only if the topic's stream has it.
    Check(Stored),
}

/// How far ahead of this node's clock an id's time may be before it is checked against the stream: ids
/// come from Redis's clock, so only the skew between the two hosts' clocks (NTP keeps it far below
/// this); a forged id further ahead would otherwise move the topic's clock and fake a loss.
pub(super) const FUTURE_TOLERANCE_MS: u64 = 2_000;
