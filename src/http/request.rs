//! What every route reads of a request, whatever path carried it: the query's pairs (decoded strictly),
//! the `{topic}` of a `/topics/{topic}` path, and the [`RequestHead`] the node's gate reads.

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::domain::{TopicError, TopicName};
use crate::error::ApiError;
use crate::node::RequestHead;

/// The `{topic}` of `/topics/{topic}[/…]`, decoded strictly from the raw path: actix's own extraction
/// replaces bytes that are not UTF-8, which would quietly name another topic.
pub(super) fn path_topic(req: &HttpRequest, max_len: usize) -> Result<TopicName, TopicError> {
    topic_of_path(req.uri().path(), max_len)
}

pub(super) fn topic_of_path(path: &str, max_len: usize) -> Result<TopicName, TopicError> {
    let raw = path.strip_prefix("/topics/").unwrap_or_default();
    let raw = raw.split_once('/').map_or(raw, |(segment, _)| segment);
    let topic = percent_decode(raw, false).map_err(TopicError::Encoding)?;
    TopicName::parse(&topic, max_len)
}

/// What the request logic reads of an actix request.
pub(super) fn head<'a>(req: &'a HttpRequest, query: &'a [(String, String)]) -> RequestHead<'a> {
    head_of(req.headers(), req.peer_addr(), query)
}

/// The same, from a request's parts (also before routing: see `publish::before_continue`).
pub(super) fn head_of<'a>(
    headers: &'a header::HeaderMap,
    peer: Option<std::net::SocketAddr>,
    query: &'a [(String, String)],
) -> RequestHead<'a> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    RequestHead {
        query,
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("")),
        cookies: headers
            .get_all(header::COOKIE)
            .filter_map(|v| v.to_str().ok())
            .collect(),
        origin: text(header::ORIGIN),
        referer: text(header::REFERER),
        host: text(header::HOST),
        last_event_id: headers.get("last-event-id").map(|v| v.to_str().ok()),
        peer: peer.map(|a| a.ip()),
        forwarded_for: text(header::HeaderName::from_static("x-forwarded-for")),
    }
}

/// Query-string pairs in order, repeated keys kept (`topic=a&topic=b`); `+` is a space, as in forms.
///
/// Decoded strictly: a `%` not starting two hex digits, or bytes that are not UTF-8, are refused rather
/// than kept or replaced, so `topic=%FF` can never quietly name the topic `\u{FFFD}`.
pub(crate) fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((percent_decode(key, true)?, percent_decode(value, true)?))
        })
        .collect::<Result<_, String>>()
        .map_err(|e| ApiError::BadRequest(format!("the query string {e}")))
}

/// A path segment or query part with its `%XX` escapes (and with `plus_is_space`, `+`) decoded; the
/// error completes "the query string …" or "the topic …".
pub(crate) fn percent_decode(raw: &str, plus_is_space: bool) -> Result<String, String> {
    if !raw.contains(['%', '+']) {
        return Ok(raw.to_string());
    }
    let mut bytes = Vec::with_capacity(raw.len());
    let mut rest = raw.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                let (hi, lo) = match rest {
                    [hi, lo, ..] => (hex(*hi), hex(*lo)),
                    _ => (None, None),
                };
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err("has a `%` not followed by two hex digits (write `%` itself as %25)".into());
                };
                bytes.push((hi * 16 + lo) as u8);
                rest = &rest[2..];
            }
            b'+' if plus_is_space => bytes.push(b' '),
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).map_err(|e| {
        format!(
            "is not UTF-8 once percent-decoded (byte {} of the decoded text)",
            e.utf8_error().valid_up_to()
        )
    })
}

/// The single value of `key` in the query, if given.
pub(crate) fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_decoding_is_strict() {
        let pairs = query_pairs("topic=a+b%2Fc&topic=%E6%97%A5&&flag&x=").unwrap();
        let expected = [("topic", "a b/c"), ("topic", "日"), ("flag", ""), ("x", "")];
        assert_eq!(pairs.len(), expected.len());
        for ((k, v), (ek, ev)) in pairs.iter().zip(expected) {
            assert_eq!((k.as_str(), v.as_str()), (ek, ev));
        }
        for bad in ["topic=%FF", "topic=%", "topic=%4", "topic=%G0", "%C3=x"] {
            assert!(query_pairs(bad).is_err(), "{bad} accepted");
        }
        assert_eq!(percent_decode("a+b%2B", false).unwrap(), "a+b+");
    }
}
