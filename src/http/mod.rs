//! HTTP routes, one file each; this module only wires them. What every route reads of a request
//! (query, path topic, head) is in `request`; the plain-HTTP front door and its lean SSE path in
//! `front` and `lean`.

mod cors;
mod demo;
pub mod error;
mod framing;
pub(crate) mod front;
mod health;
mod history;
mod lean;
mod mercure;
mod presence;
pub(crate) mod publish;
pub(crate) mod request;
mod status;
mod subscribe;

use actix_web::http::{header, StatusCode};
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, HttpRequest};

use crate::presence::SUBSCRIPTIONS_PATH as SUBSCRIPTIONS;

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
            .service(get("/status", status::page))
            .service(get("/status.json", status::json))
            .service(get("/openapi.yaml", demo::openapi))
            .service(get("/events", subscribe::subscribe))
            .service(resource("/topics/{topic}", "POST").route(web::post().to(publish::publish)))
            .service(get("/topics/{topic}/history", history::history))
            .service(get("/topics/{topic}/presence", presence::count))
            .service(get(SUBSCRIPTIONS, mercure::subscriptions::subscriptions))
            .service(get(
                &format!("{SUBSCRIPTIONS}/{{topic}}"),
                mercure::subscriptions::subscriptions,
            ))
            .service(get(
                &format!("{SUBSCRIPTIONS}/{{topic}}/{{subscriber}}"),
                mercure::subscriptions::subscriptions,
            ))
            .service(get(
                &format!("{SUBSCRIPTIONS}/{{kind}}/{{topic}}/{{subscriber}}"),
                mercure::subscriptions::subscriptions,
            ))
            .service(
                resource(mercure::HUB_PATH, "GET, HEAD, POST")
                    .route(web::get().to(mercure::subscribe::subscribe))
                    .route(web::head().to(mercure::subscribe::subscribe))
                    .route(web::post().to(mercure::publish::publish)),
            ),
    );
}

/// A resource that answers 405 problem+json (with `Allow: allow`) to methods it has no route for.
fn resource(path: &str, allow: &'static str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(move |req: HttpRequest| async move {
        let mut response = error::problem(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            &format!("{} is not accepted at {}", req.method(), req.path()),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, header::HeaderValue::from_static(allow));
        response
    }))
}

/// A GET resource that answers HEAD too (the same status and headers, no body; RFC 9110 § 9.3.2).
fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args> + Clone,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    resource(path, "GET, HEAD")
        .route(web::get().to(handler.clone()))
        .route(web::head().to(handler))
}
