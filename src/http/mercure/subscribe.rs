//! `GET /.well-known/mercure?topic=…`: a Mercure subscription. Selectors come as `topic=` (0.x,
//! repeatable) or `match=` (1.0); the resume point as the `Last-Event-ID` header or, in that order, the
//! `lastEventID`, `Last-Event-ID` and `last_event_id` query parameters (every spelling clients use).

use actix_web::http::{Method, Version};
use actix_web::{web, HttpRequest, HttpResponse};

use crate::domain::TopicName;
use crate::error::ApiError;
use crate::event::Shape;
use crate::http::request::{head, query_pairs, query_value};
use crate::http::subscribe::stream_head;
use crate::node::{Node, RequestHead};
use crate::subscribe::{open, Open, Resume, StreamRequest};

pub async fn subscribe(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(req.query_string())?;
    let asked = if req.method() == Method::HEAD {
        Open::Check
    } else {
        Open::Stream
    };
    let head = head(&req, &pairs);
    let (request, resumed_from) = stream_request(&node, &head)?;
    let Some(connection) = open(&node, &head, request, asked).await? else {
        return Ok(stream_head(&mut HttpResponse::Ok()).finish());
    };
    let mut builder = HttpResponse::Ok();
    stream_head(&mut builder);
    if let Some(id) = resumed_from {
        // 0.x names it Last-Event-ID, 1.0 Mercure-Last-Event-ID: where the stream starts.
        builder.insert_header(("Last-Event-ID", id.clone()));
        builder.insert_header(("Mercure-Last-Event-ID", id));
    }
    let mut response = builder.streaming(connection.into_stream());
    if req.version() <= Version::HTTP_11 {
        response.head_mut().no_chunking(true);
    }
    Ok(response)
}

/// The subscription's topics and resume point, and the id the response names as its start.
fn stream_request(node: &Node, head: &RequestHead<'_>) -> Result<(StreamRequest, Option<String>), ApiError> {
    let limits = &node.settings.limits;
    let mut topics: Vec<TopicName> = Vec::new();
    for (key, value) in head.query {
        match key.as_str() {
            "topic" | "match" => {}
            other if other.starts_with("match") => {
                return Err(ApiError::BadRequest(format!(
                    "{other}= is not a selector this hub knows: use topic= (or match=) with a topic, `*` or \
                     a URI template, or match_urlpattern= with a URL pattern"
                )));
            }
            _ => continue,
        }
        if value == "*" || crate::selector::Template::parse(value).is_some() {
            return Err(ApiError::BadRequest(format!(
                "{key}={value}: this hub subscribes to exact topics only for now; name each topic"
            )));
        }
        let topic = TopicName::parse(value, limits.max_topic_len)?;
        if !topics.contains(&topic) {
            topics.push(topic);
        }
        if topics.len() > limits.max_topics_per_connection {
            return Err(ApiError::BadRequest(format!(
                "one subscription may name at most {} selectors (limits.max_topics_per_connection)",
                limits.max_topics_per_connection
            )));
        }
    }
    if topics.is_empty() {
        return Err(ApiError::BadRequest(
            "name at least one selector: ?topic=https://example.com/books/1 (repeat it for more)".into(),
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
    let resume = raw.filter(|id| !id.is_empty()).map(str::to_string);
    let request = StreamRequest {
        topics,
        last_event_id: resume.clone().map(Resume::Update),
        poll: false,
        shape: Shape::Mercure,
    };
    Ok((request, resume))
}
