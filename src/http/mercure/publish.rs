//! `POST /.well-known/mercure`: a Mercure update as an `application/x-www-form-urlencoded` form
//! (`topic` repeatable, `data`, `private`, `id`, `type`, `retry`); answers the update's id as text.

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};

use crate::domain::{EventName, TopicName};
use crate::error::ApiError;
use crate::event::{mercure_key, UpdateFields};
use crate::http::publish::read_body;
use crate::http::request::{head, percent_decode, query_pairs};
use crate::node::Node;
use crate::publish;

use super::HUB_PATH;

/// What the form of a publish holds, checked.
struct Form {
    topics: Vec<TopicName>,
    data: String,
    private: bool,
    id: Option<String>,
    kind: Option<EventName>,
    retry: Option<u64>,
}

pub async fn publish(
    req: HttpRequest,
    body: web::Payload,
    node: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let limits = &node.settings.limits;
    let essence = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    if essence
        .as_deref()
        .is_some_and(|e| e != "application/x-www-form-urlencoded")
    {
        return Err(ApiError::BadRequest(
            "a Mercure publish is a form: send Content-Type: application/x-www-form-urlencoded with \
             topic=…&data=…"
                .into(),
        ));
    }
    let pairs = query_pairs(req.query_string())?;
    let request = head(&req, &pairs);
    // The rate and a missing or bad token are refused before the body is read; the topics, and so the
    // rest of the rule, come with it.
    let publisher = publish::admit_publisher(&node, &request)?;
    let body = read_body(&req, body, limits.max_body_bytes).await?;
    let text = std::str::from_utf8(&body).map_err(|e| ApiError::NotUtf8 { at: e.valid_up_to() })?;
    let form = read_form(&node, text)?;
    let permit = publisher.for_topics(&form.topics)?;
    let id = form
        .id
        .unwrap_or_else(|| format!("urn:uuid:{}", uuid::Uuid::new_v4()));
    let fields = UpdateFields {
        id,
        topics: form.topics.iter().map(|t| t.as_str().to_string()).collect(),
        private: form.private,
        kind: form.kind.map(|k| k.as_str().to_string()),
        retry: form.retry,
    };
    permit.publish_update(&fields, &form.data).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body(fields.id))
}

/// The form's fields, decoded as browsers and PHP's `urlencode` write them (`+` is a space), each bad
/// one refused with how to write it. Unknown fields are ignored, as the spec asks.
fn read_form(node: &Node, body: &str) -> Result<Form, ApiError> {
    let limits = &node.settings.limits;
    let mut form = Form {
        topics: Vec::new(),
        data: String::new(),
        private: false,
        id: None,
        kind: None,
        retry: None,
    };
    for pair in body.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let decode =
            |raw| percent_decode(raw, true).map_err(|e| ApiError::BadRequest(format!("the form {e}")));
        let key = decode(key)?;
        match key.as_str() {
            "topic" => {
                let value = decode(value)?;
                if value == "*" || value == HUB_PATH || value.starts_with(&format!("{HUB_PATH}/")) {
                    return Err(ApiError::BadRequest(format!(
                        "topic={value}: `*` and the hub's own {HUB_PATH}/… topics cannot be published to"
                    )));
                }
                let topic = TopicName::parse(&value, limits.max_topic_len)?;
                if !form.topics.contains(&topic) {
                    form.topics.push(topic);
                }
                if form.topics.len() > limits.max_topics_per_connection {
                    return Err(ApiError::BadRequest(format!(
                        "an update may name at most {} topics (limits.max_topics_per_connection)",
                        limits.max_topics_per_connection
                    )));
                }
            }
            "data" => form.data = decode(value)?,
            "private" => form.private = true,
            "id" => {
                let id = decode(value)?;
                if id.starts_with('#') || id == "earliest" || id.chars().any(char::is_control) {
                    return Err(ApiError::BadRequest(format!(
                        "id={}: an id may not start with `#`, be `earliest` or hold control characters",
                        id.chars().take(64).collect::<String>()
                    )));
                }
                if mercure_key(&id).len() > 128 {
                    return Err(ApiError::BadRequest(
                        "the id is too long: at most 128 bytes once written as visible ASCII \
                         (a UUID URN is 45)"
                            .into(),
                    ));
                }
                form.id = (!id.is_empty()).then_some(id);
            }
            "type" => {
                let kind = decode(value)?;
                if kind == "mercure" {
                    return Err(ApiError::BadRequest(
                        "type=mercure is reserved for the hub's own events".into(),
                    ));
                }
                form.kind = (!kind.is_empty())
                    .then(|| EventName::parse(&kind, limits.max_event_name_len))
                    .transpose()?;
            }
            "retry" => {
                let raw = decode(value)?;
                let retry = (!raw.is_empty() && raw.len() <= 15 && raw.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| raw.parse().ok())
                    .flatten()
                    .ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "retry={}: give the reconnection delay in milliseconds, digits only",
                            raw.chars().take(32).collect::<String>()
                        ))
                    })?;
                form.retry = Some(retry);
            }
            _ => {}
        }
    }
    if form.topics.is_empty() {
        return Err(ApiError::BadRequest(
            "name at least one topic: topic=https://example.com/books/1 (repeat topic= for alternates)"
                .into(),
        ));
    }
    Ok(form)
}
