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
    let origin = req.headers().get(header::ORIGIN).and_then(|o| o.to_str().ok());
    let cors = match (origin, req.app_data::<web::Data<Node>>()) {
        (Some(origin), Some(state)) if allowed(&state.settings, origin.as_bytes()) => {
            headers_for(&state.settings, origin)
        }
        _ => Vec::new(),
    };
    let allowed = !cors.is_empty();
    let preflight =
        req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if preflight {
        let response = if allowed {
            let mut r = HttpResponse::NoContent()
                .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, "GET, POST"))
                .insert_header((
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    "content-type, last-event-id, authorization, idempotency-key, cache-control",
                ))
                .insert_header((header::ACCESS_CONTROL_MAX_AGE, "600"))
                .finish();
            allow(r.headers_mut(), &cors);
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
    allow(res.headers_mut(), &cors);
    Ok(res)
}

/// Whether pages from `origin` may read the hub's answers (`cors.allowed_origins`); the lean stream path
/// asks the same.
pub(crate) fn allowed(settings: &Settings, origin: &[u8]) -> bool {
    let list = &settings.cors.allowed_origins;
    list.iter().any(|o| o == "*" || o.as_bytes() == origin)
}

/// Response headers a stream or reply may carry for a page on another origin: what Mercure's clients
/// read (the resume point, discovery) is exposed to it.
pub(crate) const EXPOSED: &str = "Last-Event-ID, Mercure-Last-Event-ID, Link";

/// The CORS headers for an allowed `origin`: a listed origin is named and may send its cookies
/// (`EventSource` with `withCredentials`, Mercure's cookie); one allowed only by `*` gets `*`, which a
/// browser never pairs with credentials, so no page can read a response made with another site's cookie.
pub(crate) fn headers_for(settings: &Settings, origin: &str) -> Vec<(&'static str, String)> {
    let listed = settings.cors.allowed_origins.iter().any(|o| o == origin);
    let mut out = vec![
        (
            "access-control-allow-origin",
            if listed { origin } else { "*" }.to_string(),
        ),
        ("access-control-expose-headers", EXPOSED.to_string()),
        ("vary", "Origin".to_string()),
    ];
    if listed {
        out.push(("access-control-allow-credentials", "true".to_string()));
    }
    out
}

fn allow(headers: &mut header::HeaderMap, cors: &[(&'static str, String)]) {
    for (name, value) in cors {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(header::HeaderName::from_static(name), value);
        }
    }
}
