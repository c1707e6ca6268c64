//! Key and channel names under the configured prefix.
//!
//! A topic T is written into names as `{E}`, where E is T with `%`, `{` and `}` percent-encoded (`%25`,
//! `%7B`, `%7D`) and every other byte kept: the hash tag then always spans exactly the topic (a Cluster
//! slot per topic), no two topics share a name, and the topics of older releases (no `%{}`) keep theirs.

use std::borrow::Cow;
use std::sync::Arc;

use crate::domain::TopicName;

/// Key and channel names under the configured prefix.
#[derive(Clone)]
pub(super) struct Keys {
    pub(super) prefix: Arc<str>,
}

/// The form of `topic` written between the braces of its key and channel names.
pub(crate) fn escape(topic: &str) -> Cow<'_, str> {
    if !topic.contains(['%', '{', '}']) {
        return Cow::Borrowed(topic);
    }
    let mut out = String::with_capacity(topic.len() + 8);
    for c in topic.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The topic `escape` wrote as `escaped`; `None` for anything `escape` cannot have written (a raw brace,
/// or a `%` not starting `%25`, `%7B` or `%7D`), so one topic has exactly one name.
pub(crate) fn unescape(escaped: &str) -> Option<Cow<'_, str>> {
    if escaped.contains(['{', '}']) {
        return None;
    }
    if !escaped.contains('%') {
        return Some(Cow::Borrowed(escaped));
    }
    let mut out = String::with_capacity(escaped.len());
    let mut rest = escaped;
    while let Some(at) = rest.find('%') {
        out.push_str(&rest[..at]);
        let c = match rest.get(at + 1..at + 3) {
            Some("25") => '%',
            Some("7B") => '{',
            Some("7D") => '}',
            _ => return None,
        };
        out.push(c);
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(Cow::Owned(out))
}

impl Keys {
    /// `P:{T}`: the topic's stream (history and id clock), the key the functions take; the hash tag keeps
    /// a topic's keys and channels in one Cluster slot.
    pub(super) fn topic(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}", self.prefix, escape(topic.as_str()))
    }

    /// Where the publish function announces each stored event (its SSE frame).
    pub(super) fn stored_channel(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}:stored", self.prefix, escape(topic.as_str()))
    }

    /// The pattern of every topic's stored channel (`PSUBSCRIBE`, for pattern subscriptions). Braces are
    /// plain characters to Redis's glob, and no escaped topic holds one, so it matches exactly those.
    pub(super) fn every_stored_channel(&self) -> String {
        let mut pattern = String::with_capacity(self.prefix.len() + 12);
        for c in self.prefix.chars() {
            if matches!(c, '*' | '?' | '[' | ']' | '\\') {
                pattern.push('\\');
            }
            pattern.push(c);
        }
        pattern.push_str(":{*}:stored");
        pattern
    }

    /// Where `redis-cli PUBLISH` sends live-only messages: framed by the node as data only.
    pub(super) fn live_channel(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}:live", self.prefix, escape(topic.as_str()))
    }

    /// Both channels of a topic: a node subscribes to them together.
    pub(super) fn channels(&self, topic: &TopicName) -> [String; 2] {
        [self.stored_channel(topic), self.live_channel(topic)]
    }

    /// `P:{T}:idem:K`: the id answered for an idempotency key.
    pub(super) fn idempotency(&self, topic: &TopicName, key: &str) -> String {
        format!("{}:{{{}}}:idem:{key}", self.prefix, escape(topic.as_str()))
    }

    /// `P:{T}:ids`: the topic's Mercure update ids → event ids, for the updates its stream holds.
    pub(super) fn update_ids(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}:ids", self.prefix, escape(topic.as_str()))
    }

    /// `P:topics`: every topic (as written in names) by the time of its latest publish; not on a Cluster.
    pub(super) fn catalogue(&self) -> String {
        format!("{}:topics", self.prefix)
    }

    /// `P:layout`: the key layout the Redis holds (`migrate::LAYOUT`), recorded once it is upgraded.
    pub(super) fn layout(&self) -> String {
        format!("{}:layout", self.prefix)
    }

    /// The one id clock of releases before 7 (standalone and Sentinel only): new ids stay above it.
    pub(super) fn legacy_clock(&self) -> String {
        format!("{}:seq", self.prefix)
    }

    /// The topic of a `P:{T}:stored` or `P:{T}:live` channel, and whether it is the stored one.
    pub(super) fn topic_of_channel(&self, channel: &str, max_len: usize) -> Option<(TopicName, bool)> {
        let inner = channel.strip_prefix(&*self.prefix)?.strip_prefix(":{")?;
        let (inner, stored) = match inner.strip_suffix("}:stored") {
            Some(inner) => (inner, true),
            None => (inner.strip_suffix("}:live")?, false),
        };
        Some((TopicName::parse(&unescape(inner)?, max_len).ok()?, stored))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_names_round_trip() {
        let keys = Keys {
            prefix: Arc::from("hub:a"),
        };
        let t = TopicName::parse("news.eu", 64).unwrap();
        assert_eq!(keys.live_channel(&t), "hub:a:{news.eu}:live");
        assert_eq!(
            keys.topic_of_channel(&keys.live_channel(&t), 64),
            Some((t.clone(), false))
        );
        assert_eq!(
            keys.topic_of_channel(&keys.stored_channel(&t), 64),
            Some((t, true))
        );
        assert_eq!(keys.topic_of_channel("other:{x}:live", 64), None);
        assert_eq!(keys.topic_of_channel("hub:a:{x%41}:live", 64), None);
        assert_eq!(keys.topic_of_channel("hub:a:{x{y}:live", 64), None);
    }

    proptest::proptest! {
        #[test]
        fn escaping_is_one_to_one_and_keeps_braces_out(topic in "(?s).{0,40}", other in "[%{}7BD25a]{0,12}") {
            let escaped = escape(&topic).into_owned();
            proptest::prop_assert!(!escaped.contains(['{', '}']), "braces in {}", escaped);
            let back = unescape(&escaped).map(Cow::into_owned);
            proptest::prop_assert_eq!(back.as_deref(), Some(topic.as_str()));
            // Whatever unescape accepts, escape writes back exactly: one topic, one name.
            if let Some(t) = unescape(&other).map(Cow::into_owned) {
                proptest::prop_assert_eq!(escape(&t).into_owned(), other);
            }
        }
    }

    #[test]
    fn topics_with_braces_and_percents_keep_one_slot_and_their_own_names() {
        let keys = Keys {
            prefix: Arc::from("hub"),
        };
        let iri = TopicName::parse("https://example.com/a?q=%7B}{", 128).unwrap();
        assert_eq!(
            keys.stored_channel(&iri),
            "hub:{https://example.com/a?q=%257B%7D%7B}:stored"
        );
        assert_eq!(
            keys.topic_of_channel(&keys.stored_channel(&iri), 128),
            Some((iri, true))
        );
        // Names from before escaping existed are unchanged.
        let old = TopicName::parse("news.eu:fr-1_x", 64).unwrap();
        assert_eq!(keys.topic(&old), "hub:{news.eu:fr-1_x}");
        // Distinct topics never share a name, whatever they hold.
        let names: Vec<String> = ["%7B", "{", "%257B", "%", "%25", "}", "%7D"]
            .iter()
            .map(|t| keys.topic(&TopicName::parse(t, 64).unwrap()))
            .collect();
        let mut unique = names.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        for (t, name) in ["%7B", "{", "%257B", "%", "%25", "}", "%7D"].iter().zip(&names) {
            let inner = name
                .strip_prefix("hub:{")
                .and_then(|n| n.strip_suffix('}'))
                .unwrap();
            assert_eq!(unescape(inner).as_deref(), Some(*t));
        }
    }
}
