//! `GET /topics/{topic}/presence`: how many subscribe to a topic (a selector, as subscribers wrote it),
//! summed over every node, for anyone who may subscribe to it (`[presence]` on).

use actix_web::http::header::ContentType;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::request::{head, path_topic, query_pairs};
use crate::auth::Access;
use crate::node::Node;

pub async fn count(req: HttpRequest, state: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let topic = path_topic(&req, state.settings.limits.max_topic_len)?;
    let pairs = query_pairs(req.query_string())?;
    state.authorize(&head(&req, &pairs), Access::Read, std::slice::from_ref(&topic))?;
    let presence = state.presence.as_ref().ok_or_else(off)?;
    let (subscribers, nodes) = presence.store.count(topic.as_str()).await?;
    let body = json!({ "topic": topic.as_str(), "subscribers": subscribers, "nodes": nodes });
    Ok(HttpResponse::Ok()
        .content_type(ContentType::json())
        .body(body.to_string()))
}

/// What the presence routes answer while presence is off.
pub(super) fn off() -> ApiError {
    ApiError::NotFound(
        "presence is off on this hub: set presence.enabled (HERALD__PRESENCE__ENABLED=true)".into(),
    )
}
