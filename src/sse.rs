//! Server-Sent Events framing per the WHATWG HTML standard (§ 9.2 "Server-sent events").
//!
//! Frames are encoded once per node and shared as `Bytes` by every connection that receives them.

use bytes::{BufMut, Bytes, BytesMut};

use crate::domain::{EventId, EventName, EventNameError, MERCURE_EVENT};

/// How long a Mercure update's fields line may be (its id, type, retry and topics), on top of the data
/// limit: the Mercure route refuses longer ones, the Redis function and the link's frame check too.
pub const MERCURE_FIELDS_MAX: usize = 8192;

/// Encodes one event: `id:` when given, `event:` when set, then one `data:` line per line of `data`.
///
/// Lines are split where an SSE parser splits them (CRLF, CR or LF), so the frame parses to exactly the
/// lines of `data` joined by LF: LF-only data arrives byte-exact, CRLF and lone CR arrive as LF.
pub fn encode_event(id: Option<EventId>, event: Option<&str>, data: &str) -> Bytes {
    encode_full(id.map(|id| id.to_string()).as_deref(), event, None, data)
}

/// [`encode_event`] with any id text (a Mercure publisher's, checked free of line breaks) and an
/// optional `retry:`.
pub fn encode_full(id: Option<&str>, event: Option<&str>, retry: Option<u64>, data: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(data.len() + 64);
    if let Some(id) = id {
        buf.put_slice(b"id: ");
        buf.put_slice(id.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(event) = event {
        buf.put_slice(b"event: ");
        buf.put_slice(event.as_bytes());
        buf.put_u8(b'\n');
    }
    if let Some(retry) = retry {
        buf.put_slice(format!("retry: {retry}\n").as_bytes());
    }
    for line in lines(data) {
        buf.put_slice(b"data: ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// Reads the event type and data back out of a frame made by [`encode_event`] (or the Redis function,
/// which frames the same way).
pub fn decode_event(frame: &[u8]) -> (Option<String>, String) {
    let text = String::from_utf8_lossy(frame);
    let mut event = None;
    let mut data: Option<String> = None;
    for line in text.split('\n') {
        if let Some(value) = line.strip_prefix("data: ") {
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_string()),
            }
        } else if let Some(value) = line.strip_prefix("event: ") {
            event = Some(value.to_string());
        }
    }
    (event, data.unwrap_or_default())
}

/// What a frame on a topic's stored-event channel must keep to beyond its shape: the publish rules
/// (`limits.max_event_name_len`, `limits.max_body_bytes`).
#[derive(Debug, Clone, Copy)]
pub struct FrameRules {
    pub max_event_len: usize,
    pub max_data_bytes: usize,
}

/// Why a message on a stored-event channel is not passed on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameRefusal {
    #[error("it is not one well-formed event frame")]
    Shape,
    #[error("its event name breaks the publish rule: {0}")]
    EventName(EventNameError),
    #[error("its data is {len} bytes; a publish takes at most {max}")]
    TooLarge { len: usize, max: usize },
}

/// The id of a frame as [`encode_event`] (or the Redis function) makes it, if it is exactly that: `id:`,
/// an optional `event:` that a publish could have named (`EventName::parse`: no controls, not reserved,
/// not too long), one or more `data:` lines holding no more than a publish body may, and the blank line
/// that ends it; valid UTF-8, no CR, nothing else (no `retry:`, no second event). Such a frame can be
/// passed to clients as it is without letting its sender set anything but one event's data and type.
pub fn stored_frame(frame: &[u8], rules: FrameRules) -> Result<EventId, FrameRefusal> {
    let text = std::str::from_utf8(frame)
        .ok()
        .and_then(|t| t.strip_suffix("\n\n"))
        .filter(|t| !t.contains('\r'))
        .ok_or(FrameRefusal::Shape)?;
    let mut lines = text.split('\n');
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("id: "))
        .and_then(|id| id.parse().ok())
        .ok_or(FrameRefusal::Shape)?;
    let mut line = lines.next().ok_or(FrameRefusal::Shape)?;
    let mut max_data = rules.max_data_bytes;
    if let Some(event) = line.strip_prefix("event: ") {
        if event == MERCURE_EVENT {
            // A Mercure update's first data line holds its fields, bounded apart from its data.
            max_data = max_data.saturating_add(MERCURE_FIELDS_MAX);
        } else {
            EventName::parse(event, rules.max_event_len).map_err(FrameRefusal::EventName)?;
        }
        line = lines.next().ok_or(FrameRefusal::Shape)?;
    }
    // The data as a client reads it: the lines' contents joined by LF.
    let mut len = 0;
    for (n, l) in std::iter::once(line).chain(lines).enumerate() {
        let content = l
            .strip_prefix("data: ")
            .or_else(|| (l == "data:").then_some(""))
            .ok_or(FrameRefusal::Shape)?;
        len += content.len() + usize::from(n > 0);
    }
    if len > max_data {
        return Err(FrameRefusal::TooLarge { len, max: max_data });
    }
    Ok(id)
}

/// A comment frame (`: text`): ignored by clients, keeps proxies and NATs from closing an idle stream.
pub fn comment(text: &str) -> Bytes {
    let mut buf = BytesMut::with_capacity(text.len() + 4);
    for line in lines(text) {
        buf.put_slice(b": ");
        buf.put_slice(line.as_bytes());
        buf.put_u8(b'\n');
    }
    buf.put_u8(b'\n');
    buf.freeze()
}

/// The reconnection delay a client should use, sent once when a stream opens.
pub fn retry(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// Splits like the SSE parser: on CRLF, on lone CR and on LF; an empty string is one empty line.
fn lines(data: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(data);
    std::iter::from_fn(move || {
        let s = rest?;
        match s.find(['\r', '\n']) {
            None => {
                rest = None;
                Some(s)
            }
            Some(at) => {
                let skip = if s[at..].starts_with("\r\n") { 2 } else { 1 };
                rest = Some(&s[at + skip..]);
                Some(&s[..at])
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(s: &str) -> Vec<&str> {
        lines(s).collect()
    }

    #[test]
    fn splits_like_the_parser() {
        assert_eq!(split(""), vec![""]);
        assert_eq!(split("a"), vec!["a"]);
        assert_eq!(split("a\n"), vec!["a", ""]);
        assert_eq!(split("a\r\nb\rc\nd"), vec!["a", "b", "c", "d"]);
        assert_eq!(split("\n\n"), vec!["", "", ""]);
        assert_eq!(split("a\r"), vec!["a", ""]);
    }

    const RULES: FrameRules = FrameRules {
        max_event_len: 64,
        max_data_bytes: 100,
    };

    #[test]
    fn frame_shape() {
        let id = EventId { ms: 5, seq: 1 };
        let frame = encode_event(Some(id), Some("up"), "x\ny");
        assert_eq!(&frame[..], b"id: 5-1\nevent: up\ndata: x\ndata: y\n\n");
        assert_eq!(stored_frame(&frame, RULES), Ok(id));
        assert_eq!(decode_event(&frame), (Some("up".into()), "x\ny".into()));
        assert_eq!(&encode_event(Some(id), None, "")[..], b"id: 5-1\ndata: \n\n");
        assert_eq!(decode_event(&encode_event(None, None, "\n")), (None, "\n".into()));
        assert_eq!(&comment("bye")[..], b": bye\n\n");
    }

    #[test]
    fn only_one_plain_event_passes_as_a_stored_frame() {
        let id = EventId { ms: 5, seq: 1 };
        for good in [
            &encode_event(Some(id), None, "")[..],
            b"id: 5-1\nevent: e\ndata: a\ndata:\n\n",
        ] {
            assert_eq!(stored_frame(good, RULES), Ok(id), "{good:?}");
        }
        let bad: [&[u8]; 10] = [
            b"data: x\n\n",
            b"id: 5-1\n\n",
            b"id: 5-1\ndata: x\n",
            b"id: 5-1\ndata: x\n\nid: 6-0\ndata: y\n\n",
            b"id: 5-1\nretry: 1\ndata: x\n\n",
            b"id: 5-1\ndata: x\nevent: late\n\n",
            b"id: 5-1\nevent: a\x01b\ndata: x\n\n",
            b"id: 5-1\ndata: x\rdata: y\n\n",
            b"id: nope\ndata: x\n\n",
            b"id: 5-1\ndata: \xff\n\n",
        ];
        for frame in bad {
            assert!(
                stored_frame(frame, RULES).is_err(),
                "{:?}",
                String::from_utf8_lossy(frame)
            );
        }
        // A publish could not have made these: the same rules apply to what arrives from Redis.
        let long = format!("id: 5-1\nevent: {}\ndata: x\n\n", "e".repeat(65));
        assert!(matches!(
            stored_frame(long.as_bytes(), RULES),
            Err(FrameRefusal::EventName(EventNameError::TooLong { .. }))
        ));
        assert_eq!(
            stored_frame(b"id: 5-1\nevent: herald.gap\ndata: x\n\n", RULES),
            Err(FrameRefusal::EventName(EventNameError::Reserved))
        );
        let at_limit = encode_event(Some(id), None, &"a\n".repeat(50));
        assert_eq!(stored_frame(&at_limit, RULES), Ok(id));
        let over = encode_event(Some(id), None, &format!("{}b", "a\n".repeat(50)));
        assert_eq!(
            stored_frame(&over, RULES),
            Err(FrameRefusal::TooLarge { len: 101, max: 100 })
        );
    }
}
