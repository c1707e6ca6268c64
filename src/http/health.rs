//! `/healthz` (the process answers), `/readyz` (it can serve: engine reachable, not shutting down) and
//! `/metrics` (Prometheus text).

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::json;

use super::error::problem;
use crate::node::Node;

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

pub async fn readyz(state: web::Data<Node>) -> HttpResponse {
    if state.hub.is_shutting_down() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting-down",
            "this node is shutting down",
        );
    }
    if !state.engine.is_ready() {
        return problem(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            &format!("the {} engine is not reachable", state.engine.name()),
        );
    }
    HttpResponse::Ok().json(json!({ "status": "ready", "engine": state.engine.name() }))
}

pub async fn metrics(state: web::Data<Node>) -> HttpResponse {
    let mut gauges = state.hub.gauges(state.engine.is_ready());
    gauges.history = state.engine.retained();
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(state.metrics.render(&gauges))
}
