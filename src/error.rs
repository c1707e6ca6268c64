//! The errors a request can end with, whatever carried it; `http::error` maps each to problem+json once.

use std::time::Duration;

use crate::auth::AuthError;
use crate::domain::{EventIdError, EventNameError, TopicError};
use crate::engine::EngineError;
use crate::hub::JoinError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Topic(#[from] TopicError),
    #[error(transparent)]
    EventName(#[from] EventNameError),
    #[error("Last-Event-ID: {0}")]
    LastEventId(#[from] EventIdError),
    #[error("the body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the body is not valid UTF-8 (byte {at} is the first bad one); publish UTF-8 text or JSON")]
    NotUtf8 { at: usize },
    #[error("the body is not valid JSON ({0}); fix it, or publish it as text with another Content-Type")]
    BadJson(String),
    /// A malformed request that names its own fix.
    #[error("{0}")]
    BadRequest(String),
    /// Nothing at this path (an unknown subscription, or presence switched off), with what to do.
    #[error("{0}")]
    NotFound(String),
    #[error("could not read the request body: {0}")]
    Payload(String),
    #[error(transparent)]
    Join(#[from] JoinError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Auth(#[from] AuthError),
    #[error("too many publishes from your address; retry in {} ms", retry_after.as_millis())]
    RateLimited { retry_after: Duration },
    #[error("your address already holds its maximum of {0} streams; close one first")]
    TooManyStreams(usize),
    #[error(
        "the auth cookie was sent from a page this hub does not trust (origin: {0}); send the token in \
         the Authorization header, or add the page's origin to cors.allowed_origins"
    )]
    ForeignOrigin(String),
}

impl ApiError {
    /// A stable, machine-readable code for the `code` member of the problem body.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            ApiError::Topic(_) => "invalid-topic",
            ApiError::EventName(_) => "invalid-event-name",
            ApiError::LastEventId(_) => "invalid-last-event-id",
            ApiError::BodyTooLarge { .. } => "body-too-large",
            ApiError::NotUtf8 { .. } => "body-not-utf8",
            ApiError::BadJson(_) => "body-not-json",
            ApiError::BadRequest(_) => "bad-request",
            ApiError::NotFound(_) => "not-found",
            ApiError::Payload(_) => "unreadable-body",
            ApiError::Join(JoinError::Full(_)) => "too-many-connections",
            ApiError::Join(JoinError::ShuttingDown) => "shutting-down",
            ApiError::Engine(EngineError::Unavailable(_)) => "store-unavailable",
            ApiError::Engine(EngineError::Unknown(_)) => "outcome-unknown",
            ApiError::Engine(EngineError::NotEnoughReplicas(_)) => "not-enough-replicas",
            ApiError::Engine(EngineError::Failed(_)) => "store-error",
            ApiError::Auth(AuthError::Missing(_)) => "token-missing",
            ApiError::Auth(AuthError::Invalid(_)) => "token-invalid",
            ApiError::Auth(AuthError::Forbidden { .. }) => "forbidden",
            ApiError::Auth(AuthError::NotPublisher) => "not-a-publisher",
            ApiError::RateLimited { .. } => "rate-limited",
            ApiError::TooManyStreams(_) => "too-many-streams",
            ApiError::ForeignOrigin(_) => "origin-not-allowed",
        }
    }
}
