//! `GET /events?topic=a&topic=b[&lastEventId=<id>]`: an SSE stream of the topics' events. This file
//! reads the native query ([`stream_request`], for the lean path too); the logic is `crate::subscribe`;
//! the route turns its answer into an actix response.

use actix_web::http::header::{self, CacheDirective};
use actix_web::http::{Method, Version};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};

use super::request::{head, query_pairs, query_value};
use crate::cursor::LastEventId;
use crate::domain::{now_ms, EventId, TopicName};
use crate::error::ApiError;
use crate::event::Shape;
use crate::node::{Node, RequestHead};
use crate::subscribe::{open, Open, Resume, StreamRequest};

pub async fn subscribe(req: HttpRequest, node: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    serve(&req, &node, stream_request).await
}

/// A stream route on actix-web, whatever protocol's `parse` reads the request (as `lean::ROUTES` has it
/// on the lean path).
pub(super) async fn serve(
    req: &HttpRequest,
    node: &Node,
    parse: fn(&Node, &RequestHead<'_>) -> Result<StreamRequest, ApiError>,
) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(req.query_string())?;
    let asked = if req.method() == Method::HEAD {
        Open::Check
    } else {
        Open::Stream
    };
    let head = head(req, &pairs);
    let request = parse(node, &head)?;
    let starts_at = request.starts_at();
    let Some(connection) = open(node, &head, request, asked).await? else {
        // What a GET would answer, without opening a stream (no slot, no hub membership).
        return Ok(stream_head(&mut HttpResponse::Ok()).finish());
    };
    let mut builder = HttpResponse::Ok();
    stream_head(&mut builder);
    if let Some(start) = starts_at {
        // Where a Mercure resume started: 0.x names it Last-Event-ID, 1.0 Mercure-Last-Event-ID (the
        // lean path writes the same).
        let value = start.header_value();
        builder.insert_header(("Last-Event-ID", value.clone()));
        builder.insert_header(("Mercure-Last-Event-ID", value));
    }
    let mut response = builder.streaming(connection.into_stream());
    if req.version() <= Version::HTTP_11 {
        // The stream runs until the connection closes, which delimits the body: no chunked encoding (HTTP/1.0
        // has none), so the bytes on the wire are the events themselves, as on the lean path
        // (`http::front`).
        response.head_mut().no_chunking(true);
    }
    Ok(response)
}

/// The headers of an SSE response.
fn stream_head(builder: &mut HttpResponseBuilder) -> &mut HttpResponseBuilder {
    builder
        .content_type("text/event-stream")
        .insert_header(header::CacheControl(vec![CacheDirective::NoCache]))
        // Tells nginx and similar proxies not to buffer the stream.
        .insert_header(("X-Accel-Buffering", "no"))
        // When the stream ends the client reconnects anyway, maybe to another node: close the socket.
        .force_close()
}

/// The native API's stream request: `topic=` (repeatable), `Last-Event-ID` / `lastEventId=` / `since=`,
/// `poll=1`, `envelope=json`. Each bad value is refused with how to write it.
pub(crate) fn stream_request(node: &Node, head: &RequestHead<'_>) -> Result<StreamRequest, ApiError> {
    let limits = &node.settings.limits;
    let mut topics: Vec<TopicName> = Vec::new();
    for (key, value) in head.query {
        if key == "topic" {
            let topic = TopicName::parse(value, limits.max_topic_len)?;
            if !topics.contains(&topic) {
                topics.push(topic);
            }
            if topics.len() > limits.max_topics_per_connection {
                return Err(ApiError::BadRequest(format!(
                    "one connection may subscribe to at most {} topics",
                    limits.max_topics_per_connection
                )));
            }
        }
    }
    if topics.is_empty() {
        return Err(ApiError::BadRequest(
            "name at least one topic, as in /events?topic=news (repeat topic= for more)".into(),
        ));
    }
    let last_event_id = match last_event_id(head)? {
        Some(id) => Some(id),
        None => since(head)?.map(LastEventId::Single),
    }
    .map(Resume::Native);
    let poll =
        match query_value(head.query, "poll") {
            None | Some("") | Some("0") => false,
            Some("1") if last_event_id.is_some() => true,
            Some("1") => return Err(ApiError::BadRequest(
                "poll=1 replays and ends: say from where, with lastEventId=<id> or since=10m (or since=all)"
                    .into(),
            )),
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "poll={other}: use poll=1 to get the replay and end the stream, or leave it out"
                )))
            }
        };
    let envelope = match query_value(head.query, "envelope") {
        None | Some("") | Some("none") => false,
        Some("json") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "envelope={other} is not a known envelope; use envelope=json to get each event's data as \
                 {{\"topic\": …, \"id\": …, \"data\": …}}, or leave it out"
            )))
        }
    };
    Ok(StreamRequest {
        topics,
        patterns: Vec::new(),
        last_event_id,
        poll,
        shape: Shape::Native { envelope },
        presence: Vec::new(),
    })
}

/// `since=30s|10m|2h|1d|all` (as ntfy has it): where to resume when no event id is given, as the id just
/// before that moment. Ids are milliseconds since the epoch, so a time maps onto them directly.
fn since(head: &RequestHead<'_>) -> Result<Option<EventId>, ApiError> {
    let raw = match query_value(head.query, "since") {
        None | Some("") => return Ok(None),
        Some("all") => return Ok(Some(EventId::ZERO)),
        Some(raw) => raw,
    };
    let bad = || {
        ApiError::BadRequest(format!(
            "since={raw}: use a number and a unit (30s, 10m, 2h, 7d), or all"
        ))
    };
    let split = raw.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = raw.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_ms: u64 = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    let back = number.checked_mul(unit_ms).ok_or_else(bad)?;
    Ok(Some(
        match now_ms().checked_sub(back).and_then(|t| t.checked_sub(1)) {
            Some(before) => EventId {
                ms: before,
                seq: u64::MAX,
            },
            None => EventId::ZERO,
        },
    ))
}

/// The `Last-Event-ID` header (what a browser sends when it reconnects) wins over the `lastEventId` query
/// parameter (what a page sets on first connect, and keeps in its URL). Empty means none. A malformed id
/// is refused with 400 rather than silently replaying nothing or everything.
fn last_event_id(head: &RequestHead<'_>) -> Result<Option<LastEventId>, ApiError> {
    let raw = match head.last_event_id {
        Some(value) => Some(value.ok_or_else(|| {
            ApiError::BadRequest(
                "the Last-Event-ID header is not visible ASCII; send an id this hub gave you".into(),
            )
        })?),
        None => query_value(head.query, "lastEventId"),
    };
    match raw {
        None | Some("") => Ok(None),
        Some(raw) => Ok(Some(raw.parse()?)),
    }
}
