//! Mercure 1.0 access tokens (RFC 9068, `typ: at+jwt`): what their `authorization_details` (RFC 9396)
//! allow, read strictly: one bad Mercure detail rejects the whole token, so no token grants less (or
//! more) than it says.

use std::sync::Arc;

use serde_json::Value;

use super::AuthError;
use crate::selector::{self, Pattern, Selection};

/// The detail types Mercure has used: the IRI of the 1.0 drafts, and `mercure` of the newest.
const DETAIL_TYPES: [&str; 2] = ["https://mercure.rocks/authorization-detail", "mercure"];

/// Bounds on what a token may list, so no token makes a node do much work per topic it checks.
const MAX_DETAILS: usize = 64;
const MAX_TOPICS: usize = 256;
const MAX_PATTERN_LEN: usize = 2048;

/// One topic selector of a token.
#[derive(Debug, Clone)]
pub(crate) enum TokenSelector {
    /// A legacy claim (`mercure.publish` / `mercure.subscribe`): a topic, `prefix*`, `*` or a URI
    /// template, as `selector::matches` reads it.
    Legacy(String),
    /// An `Exact` matcher: the topic itself, or `*`.
    Exact(String),
    /// A `URLPattern` matcher.
    Pattern(Arc<Pattern>),
}

impl TokenSelector {
    pub(crate) fn matches(&self, topic: &str) -> bool {
        match self {
            TokenSelector::Legacy(s) => selector::matches(s, topic),
            TokenSelector::Exact(s) => s == "*" || s == topic,
            TokenSelector::Pattern(p) => p.matches(topic),
        }
    }

    /// Whether some topic could match it (a publisher's status page needs one).
    pub(crate) fn can_match(&self) -> bool {
        match self {
            TokenSelector::Legacy(s) | TokenSelector::Exact(s) => selector::can_match_a_topic(s),
            TokenSelector::Pattern(_) => true,
        }
    }
}

/// Subscribe details' payloads in the token's order, each with the topics of its detail.
pub(crate) type Payloads = Vec<(Vec<TokenSelector>, Value)>;

/// What an access token's details allow: (publish selectors, subscribe selectors, the subscribe details'
/// payloads).
pub(crate) type Allowed = (Vec<TokenSelector>, Vec<TokenSelector>, Payloads);

pub(crate) fn read(details: Option<&Value>) -> Result<Allowed, AuthError> {
    let bad = |why: &str| AuthError::Invalid(format!("its authorization_details {why}"));
    let Some(details) = details else {
        return Ok((Vec::new(), Vec::new(), Vec::new()));
    };
    let list = details.as_array().ok_or_else(|| bad("are not an array"))?;
    if list.len() > MAX_DETAILS {
        return Err(bad(&format!("list more than {MAX_DETAILS} entries")));
    }
    let (mut publish, mut subscribe, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
    for detail in list {
        let object = detail
            .as_object()
            .ok_or_else(|| bad("hold an entry that is not an object"))?;
        let kind = object
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("hold an entry without a type"))?;
        if !DETAIL_TYPES.contains(&kind) {
            continue;
        }
        let actions = object
            .get("actions")
            .and_then(Value::as_array)
            .filter(|a| !a.is_empty())
            .ok_or_else(|| bad("hold a Mercure entry without actions"))?;
        let (mut may_publish, mut may_subscribe) = (false, false);
        for action in actions {
            match action.as_str() {
                Some("publish") => may_publish = true,
                Some("subscribe") => may_subscribe = true,
                _ => return Err(bad("name an action other than publish and subscribe")),
            }
        }
        let topics = object
            .get("topics")
            .and_then(Value::as_array)
            .filter(|t| !t.is_empty() && t.len() <= MAX_TOPICS)
            .ok_or_else(|| bad(&format!("hold a Mercure entry without 1 to {MAX_TOPICS} topics")))?;
        let selectors = topics.iter().map(topic_selector).collect::<Result<Vec<_>, _>>()?;
        match object.get("payload") {
            None => {}
            Some(p @ Value::Object(_)) if may_subscribe => payloads.push((selectors.clone(), p.clone())),
            Some(Value::Object(_)) => {}
            Some(_) => return Err(bad("hold a payload that is not an object")),
        }
        if may_publish {
            publish.extend(selectors.iter().cloned());
        }
        if may_subscribe {
            subscribe.extend(selectors);
        }
    }
    Ok((publish, subscribe, payloads))
}

/// One entry of a detail's `topics`: `{"match": …}` with an optional `matchType` (`Exact`, the default,
/// or `URLPattern`), or `{"match_urlpattern": …}`.
fn topic_selector(entry: &Value) -> Result<TokenSelector, AuthError> {
    let bad = |why: String| AuthError::Invalid(format!("its authorization_details hold a topic {why}"));
    let object = entry
        .as_object()
        .ok_or_else(|| bad("that is not an object".into()))?;
    let text = |key: &str| -> Result<Option<&str>, AuthError> {
        match object.get(key) {
            None => Ok(None),
            Some(Value::String(s)) if s.len() <= MAX_PATTERN_LEN && !s.chars().any(char::is_control) => {
                Ok(Some(s.as_str()))
            }
            Some(_) => Err(bad(format!(
                "whose {key} is not a string of at most {MAX_PATTERN_LEN} bytes"
            ))),
        }
    };
    let url_pattern = |value: &str| -> Result<TokenSelector, AuthError> {
        match Selection::of_url_pattern(value) {
            Ok(Selection::Pattern(p)) => Ok(TokenSelector::Pattern(Arc::new(p))),
            Ok(Selection::Topic(t)) => Ok(TokenSelector::Exact(t.as_str().to_string())),
            Err(e) => Err(bad(format!("whose URL pattern {e}"))),
        }
    };
    match (text("match")?, text("match_urlpattern")?, object.get("matchType")) {
        (Some(m), None, None) => Ok(TokenSelector::Exact(m.to_string())),
        (Some(m), None, Some(Value::String(t))) if t == "Exact" => Ok(TokenSelector::Exact(m.to_string())),
        (Some("*"), None, Some(Value::String(t))) if t == "URLPattern" => {
            Ok(TokenSelector::Exact("*".into()))
        }
        (Some(m), None, Some(Value::String(t))) if t == "URLPattern" => url_pattern(m),
        (None, Some(p), None) => url_pattern(p),
        _ => Err(bad(
            "that is neither {\"match\": …} (matchType Exact or URLPattern) nor {\"match_urlpattern\": …}"
                .into(),
        )),
    }
}
