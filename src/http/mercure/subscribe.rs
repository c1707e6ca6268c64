//! `GET /.well-known/mercure?topic=…`: a Mercure subscription. Selectors come as `topic=` (0.x: a
//! topic, `*` or a URI template), `match=` / `matchExact=` (a topic or `*`) and `matchURLPattern=`
//! (also spelled `match_urlpattern=`), each repeatable; the resume point as the `Last-Event-ID` header or, in that order, the
//! `lastEventID`, `Last-Event-ID` and `last_event_id` query parameters (every spelling clients use).

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use actix_web::{web, HttpRequest, HttpResponse};

use crate::domain::TopicName;
use crate::error::ApiError;
use crate::event::Shape;
use crate::http::request::query_value;
use crate::node::{Node, RequestHead};
use crate::selector::{Pattern, Selection};
use crate::subscribe::{Resume, StreamRequest};

pub async fn subscribe(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    crate::http::subscribe::serve(&req, &node, stream_request).await
}

/// The subscription's selectors and resume point (for the lean path too).
pub(crate) fn stream_request(node: &Node, head: &RequestHead<'_>) -> Result<StreamRequest, ApiError> {
    let limits = &node.settings.limits;
    let mut topics: Vec<TopicName> = Vec::new();
    let mut patterns: Vec<(Arc<str>, Arc<Pattern>)> = Vec::new();
    let mut count = 0usize;
    // The selectors as written, with their 1.0 matcher type (none for 0.x's `topic=`), for presence.
    let mut presence: Vec<(String, Option<&'static str>)> = Vec::new();
    for (key, value) in head.query {
        let selection = match key.as_str() {
            // 0.x: a topic, `*` or a URI template.
            "topic" => Selection::of_topic_selector(value, limits.max_topic_len)?,
            // 1.0: exact (or `*`).
            "match" | "matchExact" if value == "*" => Selection::Pattern(Pattern::Any),
            "match" | "matchExact" => Selection::Topic(TopicName::parse(value, limits.max_topic_len)?),
            "matchURLPattern" | "match_urlpattern" => {
                check_pattern(key, value, limits.max_topic_len)?;
                Selection::of_url_pattern(value)
                    .map_err(|e| ApiError::BadRequest(format!("{key}={value}: the URL pattern {e}")))?
            }
            other if other.get(..5).is_some_and(|p| p.eq_ignore_ascii_case("match")) => {
                return Err(ApiError::BadRequest(format!(
                    "{other}= is not a selector this hub knows: use match= (a topic, or `*`), \
                     matchURLPattern= (a URL pattern such as https://example.com/books/:id) or topic= (a \
                     topic, `*` or a URI template)"
                )));
            }
            _ => continue,
        };
        if let Selection::Pattern(Pattern::Template(_)) = &selection {
            check_pattern(key, value, limits.max_topic_len)?;
        }
        if node.presence.is_some() {
            let kind = match key.as_str() {
                "topic" => None,
                "match" | "matchExact" => Some("Exact"),
                _ => Some("URLPattern"),
            };
            if !presence.iter().any(|(v, k)| v == value && *k == kind) {
                presence.push((value.clone(), kind));
            }
        }
        count += 1;
        if count > limits.max_topics_per_connection {
            return Err(ApiError::BadRequest(format!(
                "one subscription may name at most {} selectors (limits.max_topics_per_connection)",
                limits.max_topics_per_connection
            )));
        }
        match selection {
            Selection::Topic(topic) if !topics.contains(&topic) => topics.push(topic),
            Selection::Topic(_) => {}
            Selection::Pattern(pattern) => {
                // Grouped in the hub by this text: the same pattern, whatever parameter named it.
                let text: Arc<str> = match &pattern {
                    Pattern::Any => "*".into(),
                    Pattern::Template(_) => format!("template {value}").into(),
                    Pattern::Url(_) => format!("urlpattern {value}").into(),
                };
                if !patterns.iter().any(|(t, _)| *t == text) {
                    patterns.push((text, Arc::new(pattern)));
                }
            }
        }
    }
    if topics.is_empty() && patterns.is_empty() {
        return Err(ApiError::BadRequest(
            "name at least one selector: ?topic=https://example.com/books/1 (or a URI template, or `*`), \
             ?match=… or ?matchURLPattern=…"
                .into(),
        ));
    }
    let raw = match head.last_event_id {
        Some(value) => Some(value.ok_or_else(|| {
            ApiError::BadRequest(
                "the Last-Event-ID header is not visible ASCII; send an id this hub sent".into(),
            )
        })?),
        None => ["lastEventID", "Last-Event-ID", "last_event_id"]
            .iter()
            .find_map(|name| query_value(head.query, name)),
    };
    let last_event_id = raw.filter(|id| !id.is_empty()).map(|id| Resume::Update {
        id: id.to_string(),
        found: Arc::new(AtomicBool::new(false)),
    });
    Ok(StreamRequest {
        topics,
        patterns,
        last_event_id,
        poll: false,
        shape: Shape::Mercure,
        presence,
    })
}

/// A pattern's text: as long as a topic may be, and without control characters.
fn check_pattern(key: &str, value: &str, max_len: usize) -> Result<(), ApiError> {
    if value.len() > max_len || value.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(format!(
            "{key}=: a pattern may be at most {max_len} bytes, without control characters"
        )));
    }
    Ok(())
}
