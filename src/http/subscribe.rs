//! `GET /events?topic=a&topic=b[&lastEventId=<id>]`: an SSE stream of the topics' events.
//!
//! Order matters: join the hub (and confirm the engine's subscription) before reading the engine's newest
//! id, so every event is either in the replay (id <= that) or queued live (id > that): no gap, no duplicate.

use actix_web::http::header::{self, CacheDirective};
use actix_web::http::{Method, Version};
use actix_web::{web, HttpRequest, HttpResponse, HttpResponseBuilder};

use super::error::ApiError;
use super::{query_pairs, query_value, AppState};
use crate::auth::Access;
use crate::connection::{Connection, Resume};
use crate::domain::{EventId, TopicName};

pub async fn subscribe(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let limits = &state.settings.limits;
    let pairs = query_pairs(req.query_string())?;
    let mut topics: Vec<TopicName> = Vec::new();
    for (key, value) in &pairs {
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
    let last_event_id = last_event_id(&req, &pairs)?;
    let grant = state.authorize(&req, &pairs, Access::Read, &topics)?;
    if req.method() == Method::HEAD {
        // What a GET would answer, without opening a stream (no slot, no hub membership).
        return Ok(stream_head(&mut HttpResponse::Ok()).finish());
    }
    let slot = state
        .per_ip
        .connect(state.client_ip(&req))
        .ok_or(ApiError::TooManyStreams(limits.max_connections_per_ip))?;

    let membership = state.hub.join(topics.clone())?;
    for topic in &topics {
        state.engine.subscribe(topic).await?;
    }
    let resume = match last_event_id {
        Some(after) => Some(Resume {
            after,
            until: state.engine.last_id().await?,
        }),
        None => None,
    };
    let body = Connection::new(
        &state.streams,
        membership,
        resume,
        slot,
        grant.and_then(|g| g.expires_at()),
    )
    .into_stream();
    let mut response = stream_head(&mut HttpResponse::Ok()).streaming(body);
    if req.version() < Version::HTTP_11 {
        // HTTP/1.0 has no chunked encoding: the stream runs until the connection closes.
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

/// The `Last-Event-ID` header (what a browser sends when it reconnects) wins over the `lastEventId` query
/// parameter (what a page sets on first connect, and keeps in its URL). Empty means none. A malformed id
/// is refused with 400 rather than silently replaying nothing or everything.
fn last_event_id(req: &HttpRequest, pairs: &[(String, String)]) -> Result<Option<EventId>, ApiError> {
    let raw = match req.headers().get("last-event-id") {
        Some(value) => Some(value.to_str().map_err(|_| {
            ApiError::BadRequest(
                "the Last-Event-ID header is not visible ASCII; send an id this hub gave you".into(),
            )
        })?),
        None => query_value(pairs, "lastEventId"),
    };
    match raw {
        None | Some("") => Ok(None),
        Some(raw) => Ok(Some(raw.parse()?)),
    }
}
