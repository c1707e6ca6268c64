//! What the engines carry and the hub fans out: an event with its SSE frame encoded once, below both
//! (neither engines nor hub import each other for it).

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::domain::{EventId, TopicName, MERCURE_EVENT};
use crate::sse;

/// What a stream sends of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The native API: Herald's `id:`, and with `envelope` the data wrapped with its topic.
    Native { envelope: bool },
    /// Mercure's dialect: the publisher's own `id:` (Herald's for an event published natively).
    Mercure,
}

/// A Mercure update's own fields, stored as the first data line of its event (`MERCURE_EVENT`).
#[derive(Debug, Serialize, Deserialize)]
pub struct UpdateFields {
    /// The update's id, verbatim as its publisher gave it (or the hub made it).
    pub id: String,
    /// Every topic of the update, the canonical one first.
    pub topics: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private: bool,
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<u64>,
}

/// The key a Mercure update of id `id` is stored under (its idempotency, and what a resume finds it by:
/// on Redis a field of the topic's id hash): the id
/// itself when it is one (visible ASCII, no `%`), else percent-encoded, so every id has one key (the
/// Mercure route refuses ids whose key would be longer than a key may be: 128).
pub fn mercure_key(id: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What Mercure adds to an event published through it.
#[derive(Debug)]
pub struct Update {
    pub id: Box<str>,
    /// Every topic of the update, the canonical one first; it is stored once per topic, and a stream
    /// sends the copy of the first topic it subscribes to (`Update::sent_via`).
    pub topics: Vec<TopicName>,
    /// Sent only to subscribers whose token may subscribe to one of `topics`.
    pub private: bool,
    /// The frame Mercure subscribers get (`id:` the update's own).
    frame: Bytes,
}

impl Update {
    /// Whether a stream that `wants` some topics sends this update's copy on `topic`: the copy of the
    /// first of the update's topics it wants, so an update reaches it once.
    pub fn sent_via(&self, topic: &TopicName, wants: impl Fn(&TopicName) -> bool) -> bool {
        self.topics.len() < 2 || self.topics.iter().find(|t| wants(t)) == Some(topic)
    }
}

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
    /// Set when the event was published through Mercure (boxed: most events are not).
    pub update: Option<Box<Update>>,
}

impl Event {
    pub fn new(id: Option<EventId>, topic: TopicName, frame: Bytes) -> Self {
        Event {
            id,
            topic,
            frame,
            enveloped: OnceLock::new(),
            update: None,
        }
    }

    /// The frame a stream of `shape` sends.
    pub fn frame_in(&self, shape: Shape) -> &Bytes {
        match (shape, &self.update) {
            (Shape::Mercure, Some(update)) => &update.frame,
            (Shape::Mercure, None) => &self.frame,
            (Shape::Native { envelope }, _) => self.frame_for(envelope),
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
        if event == Some(MERCURE_EVENT) {
            if let Some(stored) = Stored::mercure(id, &topic, data) {
                return stored;
            }
        }
        Stored::from_frame_as_is(id, topic, sse::encode_event(Some(id), event, data))
    }

    /// A stored event from a frame already encoded (by the Redis publish function, and checked).
    pub fn from_frame(id: EventId, topic: TopicName, frame: Bytes) -> Self {
        // A Mercure update's frame names its type right after the id line; only then is it read again.
        let mercure = frame
            .splitn(2, |&b| b == b'\n')
            .nth(1)
            .is_some_and(|rest| rest.starts_with(b"event: herald.mercure\n"));
        if mercure {
            let (_, data) = sse::decode_event(&frame);
            if let Some(stored) = Stored::mercure(id, &topic, &data) {
                return stored;
            }
        }
        Stored::from_frame_as_is(id, topic, frame)
    }

    fn from_frame_as_is(id: EventId, topic: TopicName, frame: Bytes) -> Self {
        Stored {
            id,
            event: Arc::new(Event::new(Some(id), topic, frame)),
        }
    }

    /// A Mercure update from its stored data (its fields line, then its data): framed for native
    /// streams with Herald's id and for Mercure streams with its own. `None` when the fields do not read
    /// (written by hand with redis-cli): the event is then passed on as it was stored.
    fn mercure(id: EventId, topic: &TopicName, stored: &str) -> Option<Self> {
        let (fields, data) = stored.split_once('\n').unwrap_or((stored, ""));
        let fields: UpdateFields = serde_json::from_str(fields).ok()?;
        let no_break = |s: &str| !s.contains(['\r', '\n']);
        if !no_break(&fields.id) || !fields.kind.as_deref().is_none_or(no_break) {
            return None;
        }
        let topics = fields
            .topics
            .iter()
            .map(|t| TopicName::parse(t, usize::MAX).ok())
            .collect::<Option<Vec<_>>>()?;
        let kind = fields.kind.as_deref();
        let native = sse::encode_full(Some(&id.to_string()), kind, fields.retry, data);
        let own = sse::encode_full(Some(&fields.id), kind, fields.retry, data);
        let mut event = Event::new(Some(id), topic.clone(), native);
        event.update = Some(Box::new(Update {
            id: fields.id.into_boxed_str(),
            topics,
            private: fields.private,
            frame: own,
        }));
        Some(Stored {
            id,
            event: Arc::new(event),
        })
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
