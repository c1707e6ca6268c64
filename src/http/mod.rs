//! HTTP routes, one file each; this module only wires them.

mod cors;
mod demo;
pub mod error;
pub(crate) mod front;
mod health;
mod history;
pub(crate) mod publish;
mod status;
mod subscribe;

use actix_web::http::{header, StatusCode};
use actix_web::middleware::{from_fn, ErrorHandlers};
use actix_web::{web, HttpRequest};

use crate::node::RequestHead;
pub(crate) use crate::node::{query_pairs, query_value};

use crate::domain::{TopicError, TopicName};

/// The `{topic}` of `/topics/{topic}[/…]`, decoded strictly from the raw path: actix's own extraction
/// replaces bytes that are not UTF-8, which would quietly name another topic.
fn path_topic(req: &HttpRequest, max_len: usize) -> Result<TopicName, TopicError> {
    topic_of_path(req.uri().path(), max_len)
}

fn topic_of_path(path: &str, max_len: usize) -> Result<TopicName, TopicError> {
    let raw = path.strip_prefix("/topics/").unwrap_or_default();
    let raw = raw.split_once('/').map_or(raw, |(segment, _)| segment);
    let topic = crate::node::percent_decode(raw, false).map_err(TopicError::Encoding)?;
    TopicName::parse(&topic, max_len)
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
            .service(get("/status", status::page))
            .service(get("/status.json", status::json))
            .service(get("/openapi.yaml", demo::openapi))
            .service(get("/events", subscribe::subscribe))
            .service(resource("/topics/{topic}", "POST").route(web::post().to(publish::publish)))
            .service(get("/topics/{topic}/history", history::history)),
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

/// What the request logic reads of an actix request.
fn head<'a>(req: &'a HttpRequest, query: &'a [(String, String)]) -> RequestHead<'a> {
    head_of(req.headers(), req.peer_addr(), query)
}

/// The same, from a request's parts (also before routing: see `publish::before_continue`).
fn head_of<'a>(
    headers: &'a header::HeaderMap,
    peer: Option<std::net::SocketAddr>,
    query: &'a [(String, String)],
) -> RequestHead<'a> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    RequestHead {
        query,
        authorization: headers
            .get(header::AUTHORIZATION)
            .map(|v| v.to_str().unwrap_or("")),
        cookies: headers
            .get_all(header::COOKIE)
            .filter_map(|v| v.to_str().ok())
            .collect(),
        origin: text(header::ORIGIN),
        referer: text(header::REFERER),
        host: text(header::HOST),
        last_event_id: headers.get("last-event-id").map(|v| v.to_str().ok()),
        peer: peer.map(|a| a.ip()),
        forwarded_for: text(header::HeaderName::from_static("x-forwarded-for")),
    }
}
