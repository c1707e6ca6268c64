//! Topic selectors: which topics a token's claims, `auth.private_topics` (and, with Mercure, a
//! subscription) name. One room, so every reader of a selector matches it the same way. Today: an exact
//! name, `prefix*`, or `*`; Mercure's URI templates and URL patterns belong here too.

use crate::domain::TopicName;

/// `*` matches everything, `prefix*` any topic starting with prefix, anything else itself.
pub fn matches(selector: &str, topic: &str) -> bool {
    match selector.strip_suffix('*') {
        Some(prefix) => topic.starts_with(prefix),
        None => selector == topic,
    }
}

/// Whether some valid topic name matches `selector` (`""`, or a name with a control character, matches
/// none).
pub(crate) fn can_match_a_topic(selector: &str) -> bool {
    match selector.strip_suffix('*') {
        Some(prefix) => !prefix.chars().any(char::is_control),
        None => TopicName::parse(selector, usize::MAX).is_ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        assert!(matches("*", "anything"));
        assert!(matches("user.*", "user.42"));
        assert!(!matches("user.*", "users"));
        assert!(matches("news", "news"));
        assert!(!matches("news", "news2"));
    }
}
