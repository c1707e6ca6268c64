//! What the engines carry and the hub fans out: an event with its SSE frame encoded once, below both
//! (neither engines nor hub import each other for it).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;

use crate::domain::{EventId, TopicName};
use crate::sse;

/// An event with its SSE frame encoded once, shared by every connection that sends it.
#[derive(Debug)]
pub struct Event {
    /// `None` for a live-only message (a `PUBLISH` straight to a topic's Redis live channel): it is not
    /// in history, is framed without `id:` (the client's `Last-Event-ID` stays), and is never skipped as
    /// a duplicate.
    pub id: Option<EventId>,
    pub topic: TopicName,
    pub frame: Bytes,
    /// The same event for streams that asked for `envelope=json`: made on first use, then shared.
    enveloped: OnceLock<Bytes>,
}

impl Event {
    pub fn new(id: Option<EventId>, topic: TopicName, frame: Bytes) -> Self {
        Event {
            id,
            topic,
            frame,
            enveloped: OnceLock::new(),
        }
    }

    /// A live-only message, framed as data only.
    pub fn live(topic: TopicName, data: &str) -> Self {
        Event::new(None, topic, sse::encode_event(None, None, data))
    }

    /// The frame a stream sends: as published, or with `envelope` its data wrapped as
    /// `{"topic": …, "id": …, "data": …}` (same `id:` line and event type; no "id" for a live-only one), so one `EventSource` on several topics can tell
    /// them apart. Each form is encoded once per node and shared by every connection that sends it.
    pub fn frame_for(&self, envelope: bool) -> &Bytes {
        if !envelope {
            return &self.frame;
        }
        self.enveloped.get_or_init(|| {
            let (event, data) = sse::decode_event(&self.frame);
            // The event's own id too: a multi-topic stream's `id:` is its composite position.
            let json = match self.id {
                Some(id) => {
                    serde_json::json!({ "topic": self.topic.as_str(), "id": id.to_string(), "data": data })
                }
                None => serde_json::json!({ "topic": self.topic.as_str(), "data": data }),
            };
            sse::encode_event(self.id, event.as_deref(), &json.to_string())
        })
    }
}

/// A stored event: one that history holds, so it always has an id.
#[derive(Debug, Clone)]
pub struct Stored {
    pub id: EventId,
    pub event: Arc<Event>,
}

impl Stored {
    pub fn new(id: EventId, topic: TopicName, event: Option<&str>, data: &str) -> Self {
        Stored::from_frame(id, topic, sse::encode_event(Some(id), event, data))
    }

    /// A stored event from a frame already encoded (by the Redis publish function, and checked).
    pub fn from_frame(id: EventId, topic: TopicName, frame: Bytes) -> Self {
        Stored {
            id,
            event: Arc::new(Event::new(Some(id), topic, frame)),
        }
    }

    pub fn frame(&self) -> &Bytes {
        &self.event.frame
    }

    pub fn topic(&self) -> &TopicName {
        &self.event.topic
    }

    /// The event type and data, read back from the frame (for the JSON history).
    pub fn fields(&self) -> (Option<String>, String) {
        sse::decode_event(&self.event.frame)
    }
}
