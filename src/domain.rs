//! Validated domain values: once parsed, the rest of the code never re-checks them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// The longest topic the hub writes itself: a subscription event's topic names a selector and a
/// subscriber, each percent-encoded, so it may be longer than `limits.max_topic_len` allows publishers.
pub const MAX_HUB_TOPIC_LEN: usize = 2048;

/// A topic name: 1..=max bytes of UTF-8 without control characters, so IRIs such as
/// `https://example.com/books/1` (Mercure's topics) are names too.
///
/// Control characters are refused so no name can break a log line, an SSE field or a Redis reply; the
/// Redis engine escapes `{`, `}` and `%` in key names (see `engine::redis::keys`).
/// `Arc<str>` because a name is cloned into every event and every hub entry.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicName(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TopicError {
    #[error("the topic name is empty; give 1 to {max} bytes of UTF-8, such as `news` or `https://example.com/books/1`")]
    Empty { max: usize },
    #[error("the topic name is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error("the topic name has the control character {found:?} at byte {at}; CR, LF, NUL, TAB and other controls are refused")]
    Control { found: char, at: usize },
    /// Its percent-encoding is broken; the text completes "the topic …".
    #[error("the topic {0}")]
    Encoding(String),
}

impl TopicName {
    pub fn parse(s: &str, max_len: usize) -> Result<Self, TopicError> {
        if s.is_empty() {
            return Err(TopicError::Empty { max: max_len });
        }
        if s.len() > max_len {
            return Err(TopicError::TooLong {
                len: s.len(),
                max: max_len,
            });
        }
        // `char::is_control` is Unicode's Cc: C0, DEL and C1, the same set herald.lua refuses.
        if let Some((at, found)) = s.char_indices().find(|&(_, c)| c.is_control()) {
            return Err(TopicError::Control { found, at });
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TopicName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// An event type (the SSE `event:` field) chosen by a publisher.
///
/// Control characters are refused so no publisher can inject SSE fields; the `herald.` prefix is reserved
/// for the hub's own events (such as [`GAP_EVENT`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct EventName(Arc<str>);

/// The event type of the notice sent when a `Last-Event-ID` is older than the retained history.
pub const GAP_EVENT: &str = "herald.gap";

/// The stored event type of an update published through Mercure: its data's first line is the update's
/// own fields (`event::Update`), the rest the update's data. Reserved, so no publisher can forge one.
pub const MERCURE_EVENT: &str = "herald.mercure";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventNameError {
    #[error("the event name is empty; leave the parameter out for the default `message` type")]
    Empty,
    #[error("the event name is {len} bytes long; the limit is {max}")]
    TooLong { len: usize, max: usize },
    #[error(
        "the event name has the control character {found:?}; CR, LF, NUL and other controls are refused"
    )]
    Control { found: char },
    #[error("event names starting with `herald.` are reserved for the hub")]
    Reserved,
}

impl EventName {
    pub fn parse(s: &str, max_len: usize) -> Result<Self, EventNameError> {
        if s.is_empty() {
            return Err(EventNameError::Empty);
        }
        // Counted in characters, as API schemas count string lengths.
        let len = s.chars().count();
        if len > max_len {
            return Err(EventNameError::TooLong { len, max: max_len });
        }
        if let Some(found) = s.chars().find(|c| c.is_control()) {
            return Err(EventNameError::Control { found });
        }
        if s.starts_with("herald.") {
            return Err(EventNameError::Reserved);
        }
        Ok(Self(Arc::from(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The reserved type a Mercure update is stored under ([`MERCURE_EVENT`]).
    pub(crate) fn mercure() -> Self {
        Self(Arc::from(MERCURE_EVENT))
    }
}

impl fmt::Debug for EventName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// A publisher's `Idempotency-Key`: 1..=128 visible ASCII characters. Shared, not copied: the memory
/// engine holds each remembered key twice (its map and its expiry queue).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct IdempotencyKey(Arc<str>);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the Idempotency-Key must be 1 to 128 visible ASCII characters (a UUID is a good choice)")]
pub struct IdempotencyKeyError;

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, IdempotencyKeyError> {
        if s.is_empty() || s.len() > 128 || !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(IdempotencyKeyError);
        }
        Ok(Self(s.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An event id, `<ms>-<seq>`: a wall-clock millisecond and a sequence within it.
///
/// Ids are ordered within a topic (each topic may have its own clock); a multi-topic stream resumes from
/// a composite of them (`cursor`). The shape is a Redis stream id, so the Redis engine can store it verbatim.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EventId {
    pub ms: u64,
    pub seq: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not an event id; ids look like `1732000000000-0` (use `0-0` to replay all retained history)"
)]
pub struct EventIdError(pub String);

/// Milliseconds since the Unix epoch: the time part of event ids.
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl EventId {
    pub const ZERO: EventId = EventId { ms: 0, seq: 0 };

    /// The next id after `self` at wall-clock `now_ms`: never goes backwards, even if the clock does.
    pub fn next_at(self, now_ms: u64) -> EventId {
        if now_ms > self.ms {
            EventId { ms: now_ms, seq: 0 }
        } else {
            EventId {
                ms: self.ms,
                seq: self.seq.saturating_add(1),
            }
        }
    }
}

impl FromStr for EventId {
    type Err = EventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || EventIdError(s.chars().take(64).collect());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        // 19 digits always fit a u64, so the parts cannot overflow.
        let digits = |p: &str| !p.is_empty() && p.len() <= 19 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        Ok(EventId {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl fmt::Debug for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_edges() {
        assert!(TopicName::parse(&"a".repeat(8), 8).is_ok());
        assert_eq!(
            TopicName::parse(&"a".repeat(9), 8),
            Err(TopicError::TooLong { len: 9, max: 8 })
        );
        assert_eq!(TopicName::parse("", 8), Err(TopicError::Empty { max: 8 }));
        for good in [
            "news.eu:fr-1_x",
            "https://example.com/books/1?x=%20#f",
            "a{b}%c",
            "é 日本",
            "a b",
        ] {
            assert!(TopicName::parse(good, 64).is_ok(), "{good:?} refused");
        }
        for bad in ["a\nb", "a\0", "a\tb", "a\u{7f}", "a\u{85}b", "a\rb"] {
            assert!(TopicName::parse(bad, 64).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn event_name_refuses_injection() {
        for bad in ["a\nb", "a\rb", "a\0b", "herald.gap"] {
            assert!(EventName::parse(bad, 64).is_err(), "{bad:?} accepted");
        }
        assert!(EventName::parse("price-update ünicode", 64).is_ok());
        assert!(EventName::parse(&"e".repeat(65), 64).is_err());
    }

    #[test]
    fn event_id_round_trip_and_order() {
        let id: EventId = "1732000000000-7".parse().unwrap();
        assert_eq!(id.to_string(), "1732000000000-7");
        assert!(EventId { ms: 1, seq: 9 } < EventId { ms: 2, seq: 0 });
        for bad in [
            "",
            "1",
            "-1",
            "1-",
            "a-1",
            "1-1-1",
            " 1-1",
            "99999999999999999999999-0",
            "+1-0",
        ] {
            assert!(bad.parse::<EventId>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn clock_never_goes_back() {
        let a = EventId { ms: 10, seq: 3 };
        assert_eq!(a.next_at(5), EventId { ms: 10, seq: 4 });
        assert_eq!(a.next_at(10), EventId { ms: 10, seq: 4 });
        assert_eq!(a.next_at(11), EventId { ms: 11, seq: 0 });
    }
}
