//! HTTP routes, one file each; this module only wires them.

mod cors;
mod demo;
pub mod error;
mod health;
mod history;
mod publish;
mod subscribe;

use std::sync::Arc;

use actix_web::http::{header, StatusCode};
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, HttpRequest};

use crate::config::Settings;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::telemetry::Metrics;
use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub engine: Arc<dyn Engine>,
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
}

/// Registers every route and the middleware that applies to all of them.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("")
            .wrap(from_fn(cors::cors))
            .wrap(ErrorHandlers::new().default_handler(error::problem_fallback))
            .service(get("/", demo::page))
            .service(get("/healthz", health::healthz))
            .service(get("/readyz", health::readyz))
            .service(get("/metrics", health::metrics))
            .service(get("/events", subscribe::subscribe))
            .service(resource("/topics/{topic}").route(web::post().to(publish::publish)))
            .service(get("/topics/{topic}/history", history::history)),
    );
}

/// A resource that answers 405 problem+json (with `Allow`) to methods it has no route for.
fn resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(|req: HttpRequest| async move {
        let mut response = error::problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            &format!("{} is not accepted at {}", req.method(), req.path()),
        );
        let allow = if req.path().starts_with("/topics/") && !req.path().ends_with("/history") {
            "POST"
        } else {
            "GET"
        };
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        response
    }))
}

fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    resource(path).route(web::get().to(handler))
}

/// Query-string pairs in order, repeated keys kept (`topic=a&topic=b`).
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, ApiError> {
    serde_urlencoded::from_str(query)
        .map_err(|e| ApiError::BadRequest(format!("the query string is not valid form encoding: {e}")))
}

/// The single value of `key` in the query, if given.
fn query_value<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}
