//! `GET /status`: a live page of this node's state, fed by `GET /status.json` (node, version, engine and
//! link, connections, the busiest topics, rates over the last minute, recent reconnects, gaps and lag
//! closes; with presence, each busiest topic's subscribers over every node). The page holds no data; the JSON is shown to publishers only when auth is on
//! (`Access::Status`), and names only topics its caller could subscribe to (`Auth::may_read`, the read
//! rule), saying how many it left out.

use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::json;

use super::error::ApiError;
use super::request::{head, query_pairs};
use crate::auth::Access;
use crate::node::Node;

const PAGE: &str = include_str!("../../static/status.html");

/// Topics listed by subscriber count.
const BUSIEST: usize = 10;

pub async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(PAGE)
}

pub async fn json(req: HttpRequest, state: web::Data<Node>) -> Result<HttpResponse, ApiError> {
    let pairs = query_pairs(req.query_string())?;
    let grant = state.authorize(&head(&req, &pairs), Access::Status, &[])?;
    let ready = state.engine.is_ready();
    let gauges = state.hub.gauges(ready);
    let now = state.metrics.counts();
    let (secs, last_minute) = state.recent.since_oldest(now);
    let per_sec = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    // Private topic names are often personal data: only those the caller could subscribe to are named.
    let (busiest, hidden) = state
        .hub
        .busiest(BUSIEST, |t| state.auth.may_read(grant.as_ref(), t));
    let mut listed = Vec::with_capacity(busiest.len());
    for (topic, subscribers) in busiest {
        let mut row = json!({ "topic": topic.as_str(), "subscribers": subscribers });
        // With presence, the same topic over every node too (at most BUSIEST reads of the store).
        if let Some(presence) = &state.presence {
            if let Ok((all, nodes)) = presence.store.count(topic.as_str()).await {
                row["subscribers_all_nodes"] = json!(all);
                row["nodes"] = json!(nodes);
            }
        }
        listed.push(row);
    }
    let busiest = listed;
    Ok(HttpResponse::Ok().json(json!({
        "node": state.node_id,
        "version": env!("CARGO_PKG_VERSION"),
        "engine": state.engine.name(),
        "engine_ready": ready,
        "shutting_down": state.hub.is_shutting_down(),
        "uptime_secs": state.recent.started.elapsed().as_secs(),
        "connections": gauges.connections,
        "subscriptions": gauges.subscriptions,
        "topics": gauges.topics,
        "busiest_topics": busiest,
        "topics_not_shown": hidden,
        "window_secs": secs.round(),
        "publishes_per_sec": per_sec(last_minute.published),
        "deliveries_per_sec": per_sec(last_minute.delivered),
        "last_minute": last_minute,
        "totals": now,
    })))
}
