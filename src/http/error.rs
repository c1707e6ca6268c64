//! Every HTTP error, mapped once to `application/problem+json` (RFC 9457) with a human sentence.

use actix_web::body::MessageBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::auth::AuthError;
use crate::engine::EngineError;
pub use crate::error::ApiError;

pub const PROBLEM_JSON: &str = "application/problem+json";

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Join(_)
            | ApiError::Engine(EngineError::Unavailable(_) | EngineError::NotEnoughReplicas(_)) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            // The publisher must be able to tell "maybe stored" from "refused": retry with the same
            // Idempotency-Key to find out.
            ApiError::Engine(EngineError::Unknown(_)) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Engine(EngineError::Failed(_)) => StatusCode::INTERNAL_SERVER_ERROR,
            ApiError::Auth(AuthError::Forbidden { .. } | AuthError::NotPublisher)
            | ApiError::ForeignOrigin(_) => StatusCode::FORBIDDEN,
            ApiError::Auth(_) => StatusCode::UNAUTHORIZED,
            ApiError::RateLimited { .. } | ApiError::TooManyStreams(_) => StatusCode::TOO_MANY_REQUESTS,
            _ => StatusCode::BAD_REQUEST,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let detail = self.to_string();
        let mut body = problem_json(status, self.code(), &detail);
        if status.is_server_error() {
            // The client gets Herald's words and an id; the log gets the store's own text under that id.
            let id = request_id();
            let raw = match self {
                ApiError::Engine(e) => e.raw(),
                _ => None,
            };
            tracing::warn!(request_id = %id, error = %detail, store_said = raw, "request failed");
            body["request_id"] = id.into();
        }
        let mut response = HttpResponse::build(status)
            .content_type(PROBLEM_JSON)
            .body(body.to_string());
        let headers = response.headers_mut();
        match self {
            ApiError::RateLimited { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            ApiError::TooManyStreams(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Auth(AuthError::Invalid(_)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"herald\", error=\"invalid_token\""),
                );
            }
            ApiError::Auth(AuthError::Forbidden { .. }) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"herald\", error=\"insufficient_scope\""),
                );
            }
            ApiError::Auth(AuthError::Missing(_)) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"herald\""),
                );
            }
            // Only where retrying can help: a permanent failure (500) gets none.
            _ if status == StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}

/// A problem+json response: `type` is `about:blank` (the status says it all), `code` tells machines apart.
pub fn problem(status: StatusCode, code: &str, detail: &str) -> HttpResponse {
    HttpResponse::build(status)
        .content_type(PROBLEM_JSON)
        .body(problem_body(status, code, detail))
}

/// The body of every problem+json answer, also of those the front door makes before any route.
pub(crate) fn problem_body(status: StatusCode, code: &str, detail: &str) -> String {
    problem_json(status, code, detail).to_string()
}

fn problem_json(status: StatusCode, code: &str, detail: &str) -> serde_json::Value {
    json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "code": code,
        "detail": detail,
    })
}

/// An id for one failed request, unique on this node across restarts (its start time and a count): the
/// problem+json carries it, and the log line with the details.
fn request_id() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static START: OnceLock<u128> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let start = START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    });
    format!("{start:x}-{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Turns any error response that is not problem+json yet (unknown route, wrong method, extractor
/// errors) into one, so every error a client sees has the same shape.
pub fn problem_fallback<B: MessageBody>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let already = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()));
    if already {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let detail = match status {
        StatusCode::NOT_FOUND => format!(
            "nothing is served at {}; the API is POST /topics/{{topic}}, GET /events?topic=…, GET /topics/{{topic}}/history",
            res.request().path()
        ),
        StatusCode::METHOD_NOT_ALLOWED => {
            format!("{} is not accepted at {}", res.request().method(), res.request().path())
        }
        _ => res
            .response()
            .error()
            .map(ToString::to_string)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string()),
    };
    let code = match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        s if s.is_server_error() => "internal",
        _ => "bad-request",
    };
    let (req, old) = res.into_parts();
    let mut response = problem(status, code, &detail);
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, response).map_into_right_body(),
    ))
}
