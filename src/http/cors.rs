//! CORS: pages from the configured origins may subscribe and publish; others get no CORS headers (their
//! browser then refuses to expose the response), and their preflights are answered 403.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::middleware::Next;
use actix_web::{web, Error, HttpResponse};

use super::error::problem;
use crate::config::Settings;
use crate::node::Node;

pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, Error> {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allowed = match (&origin, req.app_data::<web::Data<Node>>()) {
        (Some(origin), Some(state)) => allowed(&state.settings, origin.as_bytes()),
        _ => false,
    };
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let response = if allowed {
            let mut r = HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "content-type, last-event-id, authorization, idempotency-key",
                ))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .finish();
            allow(r.headers_mut(), origin);
            r
        } else {
            problem(
                StatusCode::FORBIDDEN,
                "origin-not-allowed",
                "this origin may not call the hub; add it to cors.allowed_origins",
            )
        };
        return Ok(req.into_response(response));
    }
    let mut res = next.call(req).await?.map_into_boxed_body();
    if allowed {
        allow(res.headers_mut(), origin);
    }
    Ok(res)
}

/// Whether pages from `origin` may read the hub's answers (`cors.allowed_origins`); the lean stream path
/// asks the same.
pub(crate) fn allowed(settings: &Settings, origin: &[u8]) -> bool {
    let list = &settings.cors.allowed_origins;
    list.iter().any(|o| o == "*" || o.as_bytes() == origin)
}

fn allow(headers: &mut header::HeaderMap, origin: Option<HeaderValue>) {
    if let Some(origin) = origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        headers.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}
