//! Key and channel names under the configured prefix.

use std::sync::Arc;

use crate::domain::TopicName;

/// Key and channel names under the configured prefix.
#[derive(Clone)]
pub(super) struct Keys {
    pub(super) prefix: Arc<str>,
}

impl Keys {
    /// `P:{T}`: the key the functions take; the hash tag keeps a topic's keys in one Cluster slot.
    pub(super) fn topic(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}", self.prefix, topic)
    }

    /// Where the publish function announces each stored event (its SSE frame).
    pub(super) fn stored_channel(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}:stored", self.prefix, topic)
    }

    /// Where `redis-cli PUBLISH` sends live-only messages: framed by the node as data only.
    pub(super) fn live_channel(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}:live", self.prefix, topic)
    }

    /// Both channels of a topic: a node subscribes to them together.
    pub(super) fn channels(&self, topic: &TopicName) -> [String; 2] {
        [self.stored_channel(topic), self.live_channel(topic)]
    }

    pub(super) fn log(&self, topic: &TopicName) -> String {
        format!("{}:{{{}}}:log", self.prefix, topic)
    }

    pub(super) fn seq(&self) -> String {
        format!("{}:seq", self.prefix)
    }

    pub(super) fn config(&self) -> String {
        format!("{}:config", self.prefix)
    }

    /// The topic of a `P:{T}:stored` or `P:{T}:live` channel, and whether it is the stored one.
    pub(super) fn topic_of_channel(&self, channel: &str, max_len: usize) -> Option<(TopicName, bool)> {
        let inner = channel.strip_prefix(&*self.prefix)?.strip_prefix(":{")?;
        let (inner, stored) = match inner.strip_suffix("}:stored") {
            Some(inner) => (inner, true),
            None => (inner.strip_suffix("}:live")?, false),
        };
        Some((TopicName::parse(inner, max_len).ok()?, stored))
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
    }
}
