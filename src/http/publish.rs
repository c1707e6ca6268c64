//! `POST /topics/{topic}[?event=<type>]`: the body is the event's data; answers the id once stored.
//! This file reads the native request; admission and the engine call are `crate::publish`'s.

use actix_web::http::header;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use bytes::BytesMut;
use futures_util::StreamExt;
use serde_json::json;

use super::error::ApiError;
use super::request::{head, head_of, path_topic, query_pairs, query_value, topic_of_path};
use crate::auth::Access;
use crate::domain::{EventName, IdempotencyKey, IdempotencyKeyError};
use crate::node::Node;
use crate::publish;

/// Runs before `100 Continue` is sent (actix-http's expect service, plain HTTP and HTTPS): a publish its sender may
/// not make, or whose declared body is over the limit, is refused before the client sends the body.
/// The same checks as the route, in the same functions (the route runs them again).
pub(crate) fn before_continue(state: &Node, req: &actix_http::Request) -> Result<(), ApiError> {
    let limits = &state.settings.limits;
    if req.method() != actix_web::http::Method::POST || !req.path().starts_with("/topics/") {
        return Ok(());
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limits.max_body_bytes as u64) {
        return Err(ApiError::BodyTooLarge {
            limit: limits.max_body_bytes,
        });
    }
    let topic = topic_of_path(req.path(), limits.max_topic_len)?;
    let pairs = query_pairs(req.uri().query().unwrap_or(""))?;
    let request = head_of(req.headers(), req.peer_addr(), &pairs);
    state.authorize(&request, Access::Write, std::slice::from_ref(&topic))?;
    Ok(())
}

pub async fn publish(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<Node>,
) -> Result<HttpResponse, ApiError> {
    let limits = &state.settings.limits;
    let topic = path_topic(&req, limits.max_topic_len)?;
    let pairs = query_pairs(req.query_string())?;
    let request = head(&req, &pairs);
    let permit = publish::admit(&state, &request, &topic)?;
    let event = query_value(&pairs, "event")
        .map(|name| EventName::parse(name, limits.max_event_name_len))
        .transpose()?;
    let body = read_body(&req, body, limits.max_body_bytes).await?;
    let data = std::str::from_utf8(&body).map_err(|e| ApiError::NotUtf8 { at: e.valid_up_to() })?;
    if is_json(&req) {
        serde_json::from_str::<serde::de::IgnoredAny>(data).map_err(|e| ApiError::BadJson(e.to_string()))?;
    }
    let idempotency_key = req
        .headers()
        .get("idempotency-key")
        .map(|v| v.to_str().ok().and_then(|v| IdempotencyKey::parse(v).ok()))
        .map(|key| key.ok_or_else(|| ApiError::BadRequest(IdempotencyKeyError.to_string())))
        .transpose()?;
    let id = permit
        .publish(event.as_ref(), data, idempotency_key.as_ref())
        .await?;
    Ok(HttpResponse::Ok()
        .insert_header(super::mercure::discovery_link(&state))
        .json(json!({ "id": id.to_string(), "topic": topic.as_str() })))
}

/// Reads the whole body, refusing it as soon as it is known to exceed `limit` (by header or by count).
pub(super) async fn read_body(
    req: &HttpRequest,
    mut body: web::Payload,
    limit: usize,
) -> Result<BytesMut, ApiError> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| ApiError::Payload(e.to_string()))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::BodyTooLarge { limit });
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// `application/json` or any `application/*+json`, parameters ignored.
fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    essence == "application/json" || (essence.starts_with("application/") && essence.ends_with("+json"))
}
