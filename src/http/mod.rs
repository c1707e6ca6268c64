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

use std::net::IpAddr;

use crate::auth::{Auth, AuthError};
use crate::config::Settings;
use crate::engine::Engine;
use crate::hub::Hub;
use crate::limits::{self, PerIp};
use crate::telemetry::Metrics;
use error::ApiError;

/// What every handler shares.
pub struct AppState {
    pub engine: Arc<dyn Engine>,
    pub hub: Arc<Hub>,
    pub settings: Arc<Settings>,
    pub metrics: Arc<Metrics>,
    pub auth: Auth,
    pub per_ip: PerIp,
    pub trusted_proxies: Vec<IpAddr>,
}

impl AppState {
    /// The client's address for per-IP limits (see `server.trusted_proxies`).
    fn client_ip(&self, req: &HttpRequest) -> IpAddr {
        let forwarded = req.headers().get("x-forwarded-for").and_then(|v| v.to_str().ok());
        limits::client_ip(req.peer_addr().map(|a| a.ip()), forwarded, &self.trusted_proxies)
            .unwrap_or(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED))
    }

    /// The token sent with the request: `Authorization: Bearer`, else the auth cookie, else the
    /// `authorization` query parameter.
    fn token(&self, req: &HttpRequest, pairs: &[(String, String)]) -> Result<Option<String>, ApiError> {
        if let Some(value) = req.headers().get(header::AUTHORIZATION) {
            let value = value.to_str().unwrap_or("");
            let token = value
                .get(..7)
                .filter(|scheme| scheme.eq_ignore_ascii_case("bearer "))
                .map(|_| value[7..].trim())
                .ok_or_else(|| {
                    AuthError::Invalid("the Authorization header must be `Bearer <jwt>`".into())
                })?;
            return Ok(Some(token.to_string()));
        }
        let cookies = req
            .headers()
            .get_all(header::COOKIE)
            .filter_map(|v| v.to_str().ok());
        for pair in cookies.flat_map(|v| v.split(';')) {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == self.auth.cookie_name && !value.is_empty() {
                    return Ok(Some(value.trim_matches('"').to_string()));
                }
            }
        }
        Ok(query_value(pairs, "authorization")
            .filter(|t| !t.is_empty())
            .map(String::from))
    }
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

fn get<F, Args>(path: &str, handler: F) -> actix_web::Resource
where
    F: actix_web::Handler<Args>,
    Args: actix_web::FromRequest + 'static,
    F::Output: actix_web::Responder + 'static,
{
    resource(path, "GET").route(web::get().to(handler))
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
