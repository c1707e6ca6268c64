//! `GET /topics/{topic}/history?after=<id>&limit=<n>`: a topic's retained events as JSON, paged.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::{query_pairs, query_value, AppState};
use crate::auth::Access;
use crate::domain::{EventId, TopicName};

pub async fn history(
    req: HttpRequest,
    topic: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let settings = &state.settings;
    let topic = TopicName::parse(&topic, settings.limits.max_topic_len)?;
    let pairs = query_pairs(req.query_string())?;
    state.authorize(&req, &pairs, Access::Read, std::slice::from_ref(&topic))?;
    let after = match query_value(&pairs, "after") {
        Some(raw) => raw
            .parse::<EventId>()
            .map_err(|e| ApiError::BadRequest(format!("after: {e}")))?,
        None => EventId::ZERO,
    };
    let max = settings.history.page_size;
    let limit = match query_value(&pairs, "limit") {
        None => max,
        Some(raw) => raw
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "limit must be a whole number from 1 to {max}, not `{raw}`"
                ))
            })?,
    };
    let page = state.engine.history(&topic, after, limit).await?;
    let events: Vec<_> = page
        .events
        .iter()
        .map(|e| {
            let (event, data) = e.fields();
            json!({ "id": e.id.to_string(), "event": event, "data": data })
        })
        .collect();
    // A full page may have more behind it: pass `next_after` as `after` to read on.
    let next_after = (events.len() == limit).then(|| page.events.last().map(|e| e.id.to_string()));
    Ok(HttpResponse::Ok().json(json!({
        "topic": topic.as_str(),
        "events": events,
        "truncated": page.truncated,
        "first_retained": page.first_retained.map(|id| id.to_string()),
        "next_after": next_after.flatten(),
    })))
}
