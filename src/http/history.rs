//! `GET /topics/{topic}/history?after=<id>&limit=<n>`: a topic's retained events as JSON, paged.
//!
//! A page holds at most `limit` events and about `history.max_page_bytes` of JSON (at least one event):
//! whatever the events hold, one request makes the node gather a bounded amount.

use actix_web::http::header::ContentType;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::request::{head, path_topic, query_pairs, query_value};
use crate::auth::Access;
use crate::domain::EventId;
use crate::engine::PageBound;
use crate::node::Node;

pub async fn history(req: HttpRequest, state: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let settings = &state.settings;
    let topic = path_topic(&req, settings.limits.max_topic_len)?;
    let pairs = query_pairs(req.query_string())?;
    state.authorize(&head(&req, &pairs), Access::Read, std::slice::from_ref(&topic))?;
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
    let max_bytes = settings.history.max_page_bytes;
    let bound = PageBound {
        count: limit,
        bytes: max_bytes,
    };
    let page = state.engine.history(&topic, after, bound).await?;
    // JSON escapes can make an event's text up to six times its bytes: the page is cut again by its
    // encoded size, so the body stays within the bound too. Each event is encoded once, straight into
    // the body (no list of encoded events beside it).
    let mut body = format!(r#"{{"topic":{},"events":["#, json!(topic.as_str()));
    let start = body.len();
    let (mut last, mut cut) = (None, false);
    for e in &page.events {
        let (event, data) = e.fields();
        let item = json!({ "id": e.id.to_string(), "event": event, "data": data }).to_string();
        if last.is_some() && body.len() - start + item.len() > max_bytes {
            cut = true;
            break;
        }
        if last.is_some() {
            body.push(',');
        }
        body.push_str(&item);
        last = Some(e.id);
    }
    // Pass `next_after` as `after` to read on, while it is set.
    let next_after = (page.more || cut)
        .then_some(last)
        .flatten()
        .map(|id| id.to_string());
    body.push_str(&format!(
        r#"],"truncated":{},"first_retained":{},"next_after":{}}}"#,
        page.truncated,
        json!(page.first_retained.map(|id| id.to_string())),
        json!(next_after),
    ));
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .insert_header(super::mercure::discovery_link(&state))
        .body(body))
}
