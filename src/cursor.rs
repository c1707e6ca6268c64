//! A stream's position, as its `id:` lines carry it: one event id for a single-topic stream, a composite
//! of one position per topic for a multi-topic one (docs/cluster-ids.md, alternative D).
//!
//! Ids are ordered per topic only (each topic has its own clock), so "every event after id X, in every
//! topic" cannot resume a multi-topic stream exactly. A composite can: `<tag>.<p1>.<p2>…`, where the
//! positions follow the stream's topics sorted by name, each written `<ms>-<seq>` in base 36, and the tag
//! (base 36 of a 32-bit FNV-1a hash of the sorted names) says which topic set they belong to.
//! `Positions` keeps a multi-topic stream's position per topic as it sends events.

use std::fmt::Write;
use std::str::FromStr;

use bytes::BytesMut;

use crate::domain::{EventId, EventIdError, TopicName};

/// A `Last-Event-ID` as a client sends it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastEventId {
    /// A single-topic stream's id, or an id from before composites existed: "this position in every
    /// topic", which is what it meant when one clock served every topic.
    Single(EventId),
    /// One position per topic, in the order of the topics' names.
    Composite { tag: u32, positions: Vec<EventId> },
}

/// Longer composites are refused: 32 topics (the default limit) take about 400 bytes.
const MAX_COMPOSITE_LEN: usize = 4096;

impl FromStr for LastEventId {
    type Err = EventIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !s.contains('.') {
            return s.parse().map(LastEventId::Single);
        }
        let bad = || EventIdError(s.chars().take(64).collect());
        if s.len() > MAX_COMPOSITE_LEN {
            return Err(bad());
        }
        let mut parts = s.split('.');
        let tag = parts.next().and_then(base36).ok_or_else(bad)?;
        let tag = u32::try_from(tag).map_err(|_| bad())?;
        let positions = parts
            .map(|p| {
                let (ms, seq) = p.split_once('-')?;
                Some(EventId {
                    ms: base36(ms)?,
                    seq: base36(seq)?,
                })
            })
            .collect::<Option<Vec<_>>>()
            .ok_or_else(bad)?;
        if positions.len() < 2 {
            return Err(bad());
        }
        Ok(LastEventId::Composite { tag, positions })
    }
}

impl LastEventId {
    /// Where to resume each of `topics` (in their order): exact for the stream's own composite or a
    /// single id; for a composite of another topic set (the page changed its topics), its oldest
    /// position for every topic, so a change of topics may repeat events but never skips one.
    pub fn after_for(&self, topics: &[TopicName]) -> Vec<EventId> {
        match self {
            LastEventId::Single(id) => vec![*id; topics.len()],
            LastEventId::Composite { tag, positions } => {
                let sorted = sorted(topics);
                if *tag == set_tag(&sorted) && positions.len() == topics.len() {
                    topics
                        .iter()
                        .map(|t| {
                            sorted
                                .iter()
                                .position(|s| *s == t)
                                .map_or(EventId::ZERO, |i| positions[i])
                        })
                        .collect()
                } else {
                    let oldest = positions.iter().min().copied().unwrap_or(EventId::ZERO);
                    vec![oldest; topics.len()]
                }
            }
        }
    }
}

/// The topics in name order: the order of a composite's positions.
pub fn sorted(topics: &[TopicName]) -> Vec<&TopicName> {
    let mut sorted: Vec<&TopicName> = topics.iter().collect();
    sorted.sort();
    sorted
}

/// The tag of a topic set given in name order: FNV-1a over the names, each followed by a line feed
/// (which no topic holds).
pub fn set_tag(sorted: &[&TopicName]) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for topic in sorted {
        for &b in topic.as_str().as_bytes().iter().chain(b"\n") {
            hash ^= u32::from(b);
            hash = hash.wrapping_mul(0x0100_0193);
        }
    }
    hash
}

/// Writes the composite of `positions` (in name order) under `tag`.
pub fn write_composite(out: &mut impl Write, tag: u32, positions: impl Iterator<Item = EventId>) {
    push_base36(out, u64::from(tag));
    for p in positions {
        let _ = out.write_char('.');
        push_base36(out, p.ms);
        let _ = out.write_char('-');
        push_base36(out, p.seq);
    }
}

fn push_base36(out: &mut impl Write, mut n: u64) {
    let mut digits = [0u8; 13];
    let mut at = digits.len();
    loop {
        at -= 1;
        // n % 36 < 36, so the digit always exists.
        digits[at] = b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize];
        n /= 36;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        let _ = out.write_char(char::from(d));
    }
}

/// A base-36 number of lower-case digits, without overflow; `None` otherwise.
fn base36(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 13 {
        return None;
    }
    s.bytes().try_fold(0u64, |n, b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        n.checked_mul(36)?.checked_add(u64::from(d))
    })
}

/// A multi-topic stream's position in each topic, which its composite `id:` lines carry.
pub(crate) struct Positions {
    tag: u32,
    /// In name order: the topic, the newest of its ids this stream has sent (or started after), and for
    /// a resuming stream the engine's newest id when it joined (what the replay sends up to: live events
    /// up to it are duplicates), `0-0` for a fresh one (every live event is new to it, even one published
    /// before its starting position was read).
    topics: Vec<(TopicName, EventId, EventId)>,
}

impl Positions {
    /// `newest` follows `topics`' order, as do the resume positions `after`.
    pub(crate) fn new(topics: &[TopicName], after: Option<&[EventId]>, newest: &[EventId]) -> Self {
        let mut entries: Vec<(TopicName, EventId, EventId)> = topics
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let newest = newest.get(i).copied().unwrap_or(EventId::ZERO);
                match after {
                    Some(after) => (t.clone(), after.get(i).copied().unwrap_or(newest), newest),
                    None => (t.clone(), newest, EventId::ZERO),
                }
            })
            .collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let sorted: Vec<&TopicName> = entries.iter().map(|e| &e.0).collect();
        Positions {
            tag: set_tag(&sorted),
            topics: entries,
        }
    }

    /// Records that `topic`'s event `id` is sent; false when the replay sent it already. The position
    /// never goes back: an event older than the starting position was published before it was read.
    pub(crate) fn advance(&mut self, topic: &TopicName, id: EventId) -> bool {
        match self.topics.iter_mut().find(|e| e.0 == *topic) {
            Some(entry) if id > entry.2 => {
                entry.1 = entry.1.max(id);
                true
            }
            _ => false,
        }
    }

    /// Records a replayed event of `topic` as sent.
    pub(crate) fn replayed_one(&mut self, topic: &TopicName, id: EventId) {
        if let Some(entry) = self.topics.iter_mut().find(|e| e.0 == *topic) {
            entry.1 = entry.1.max(id);
        }
    }

    /// Once the replay is sent, every topic's position is at least where the replay stopped.
    pub(crate) fn replayed(&mut self) {
        for entry in &mut self.topics {
            entry.1 = entry.1.max(entry.2);
        }
    }

    /// `frame` (a stored event's) with the composite of the positions as its `id:` line.
    pub(crate) fn write_frame(&self, frame: &[u8], out: &mut BytesMut) {
        out.extend_from_slice(b"id: ");
        write_composite(out, self.tag, self.topics.iter().map(|e| e.1));
        out.extend_from_slice(b"\n");
        let rest = frame
            .strip_prefix(b"id: ")
            .and_then(|r| r.iter().position(|&b| b == b'\n').map(|at| &r[at + 1..]))
            .unwrap_or(frame);
        out.extend_from_slice(rest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(names: &[&str]) -> Vec<TopicName> {
        names.iter().map(|n| TopicName::parse(n, 64).unwrap()).collect()
    }

    #[test]
    fn a_composite_round_trips_whatever_the_order_the_topics_were_asked_in() {
        let asked = topics(&["news", "alerts", "https://example.com/b"]);
        let sorted = sorted(&asked);
        let ids = [
            EventId {
                ms: 1_732_000_000_000,
                seq: 0,
            },
            EventId {
                ms: 1_732_000_000_123,
                seq: 7,
            },
            EventId {
                ms: u64::MAX,
                seq: u64::MAX,
            },
        ];
        let mut text = String::new();
        write_composite(&mut text, set_tag(&sorted), ids.iter().copied());
        assert!(text.bytes().all(|b| b.is_ascii_graphic()), "{text}");
        let parsed: LastEventId = text.parse().unwrap();
        // ids are in name order: alerts, https://…, news.
        assert_eq!(parsed.after_for(&asked), vec![ids[2], ids[0], ids[1]]);
        // The same set asked in another order resumes the same way.
        let other_order = topics(&["https://example.com/b", "news", "alerts"]);
        assert_eq!(parsed.after_for(&other_order), vec![ids[1], ids[2], ids[0]]);
    }

    #[test]
    fn another_topic_set_or_a_plain_id_resumes_every_topic_from_one_position() {
        let mut text = String::new();
        let ids = [EventId { ms: 50, seq: 1 }, EventId { ms: 40, seq: 9 }];
        write_composite(&mut text, set_tag(&sorted(&topics(&["a", "b"]))), ids.into_iter());
        let parsed: LastEventId = text.parse().unwrap();
        let changed = topics(&["a", "c"]);
        assert_eq!(parsed.after_for(&changed), vec![ids[1], ids[1]]);
        let single: LastEventId = "1732000000000-3".parse().unwrap();
        assert_eq!(
            single.after_for(&changed),
            vec![
                EventId {
                    ms: 1_732_000_000_000,
                    seq: 3
                };
                2
            ]
        );
    }

    #[test]
    fn malformed_composites_are_refused() {
        for bad in [
            "a.",
            ".1-1.2-2",
            "z.1-1",
            "1.1-1.2",
            "1.1-1.A-1",
            "1.1-1.zzzzzzzzzzzzzz-0",
            "1.1-1..2-2",
            "1.1_1.2-2",
        ] {
            assert!(bad.parse::<LastEventId>().is_err(), "{bad:?} accepted");
        }
    }
}
