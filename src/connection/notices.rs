//! The frames a stream sends in its own words: gap notices and why it ended.

use bytes::{Bytes, BytesMut};
use serde_json::json;

use crate::domain::{EventId, TopicName, GAP_EVENT};
use crate::sse;

/// The last frames of a stream ended because its node lost the store: a short `retry:` (spread over
/// 100 ms to 1 s, so a node's thousands of browsers do not all come back in the same instant) and why.
pub(super) fn store_lost_goodbye() -> Bytes {
    use std::hash::{BuildHasher, RandomState};
    let spread_ms = 100 + RandomState::new().hash_one(0u8) % 900;
    let mut out = BytesMut::from(&sse::retry(spread_ms)[..]);
    out.extend_from_slice(&sse::comment(
        "herald: this node cannot reach its message store; reconnect (to another node) with Last-Event-ID to resume",
    ));
    out.freeze()
}

/// The notice a resuming stream with pattern selectors gets first: history is kept per topic, so only the
/// topics it names are replayed; what the patterns selected while it was away is not.
pub(super) fn pattern_gap_notice() -> Bytes {
    let data = json!({
        "detail": "events of some topics selected only by a pattern (*, a URI template, a URL pattern) are not replayed: more topics matched than a stream may hold, or the store keeps no list of its topics (a Cluster); the topics this stream names are",
    });
    sse::encode_event(None, Some(GAP_EVENT), &data.to_string())
}

/// The explicit notice that events after `after` on `topic` are no longer retained.
pub(super) fn gap_notice(topic: &TopicName, after: EventId, first_retained: Option<EventId>) -> Bytes {
    let data = json!({
        "topic": topic.as_str(),
        "last_event_id": after.to_string(),
        "first_retained": first_retained.map(|id| id.to_string()),
        "detail": "events after last_event_id may be missing: they are older than the retained history, or the store lost them",
    });
    // No `id:`: the client's Last-Event-ID stays where it was.
    sse::encode_event(None, Some(GAP_EVENT), &data.to_string())
}
