//! Every error the API returns: JSON `{"error": {"code", "message"}}` with a stable code.
//! Status codes are decided here and nowhere else.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request is malformed or invalid: the message says what to fix.
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("the request body is larger than {limit} bytes: send a shorter message")]
    PayloadTooLarge { limit: usize },
    #[error("too many requests from this client: wait {retry_after_s} s")]
    RateLimited { retry_after_s: u64 },
    #[error("this client already has {limit} answers in flight: wait for one to finish")]
    InFlight { limit: usize },
    #[error("Kotae is busy answering other questions: retry in {retry_after_s} s")]
    Busy { retry_after_s: u64 },
    #[error("not ready: {0}")]
    NotReady(String),
    /// The request conflicts with work in progress (the message names it).
    #[error("{0}")]
    Conflict(String),
    #[error("the request took longer than {0} s")]
    Timeout(u64),
    /// A bug or an environment failure: details go to the log, not to the client.
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize)]
pub struct ErrorDetail {
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    /// Status, stable code and retry hint of every variant.
    pub fn parts(&self) -> (StatusCode, &'static str, Option<u64>) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request", None),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None),
            ApiError::RateLimited { retry_after_s } => {
                (StatusCode::TOO_MANY_REQUESTS, "rate_limited", Some(*retry_after_s))
            }
            ApiError::InFlight { .. } => (StatusCode::TOO_MANY_REQUESTS, "in_flight_limit", Some(1)),
            ApiError::Busy { retry_after_s } => (StatusCode::SERVICE_UNAVAILABLE, "busy", Some(*retry_after_s)),
            ApiError::NotReady(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "timeout", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }

    pub fn body(&self) -> ErrorBody {
        let (_, code, _) = self.parts();
        ErrorBody { error: ErrorDetail { code, message: self.to_string() } }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, _, retry) = self.parts();
        if let ApiError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut resp = (status, axum::Json(self.body())).into_response();
        if let Some(s) = retry {
            if let Ok(v) = HeaderValue::from_str(&s.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

impl From<kotae_answer::Error> for ApiError {
    fn from(e: kotae_answer::Error) -> Self {
        match e {
            kotae_answer::Error::BadQuestion(m) => ApiError::BadRequest(m),
            kotae_answer::Error::Index(e) => ApiError::from(e),
            kotae_answer::Error::Busy(kotae_models::SubmitError::QueueFull { .. }) => {
                ApiError::Busy { retry_after_s: 5 }
            }
            kotae_answer::Error::Busy(kotae_models::SubmitError::Stopped) => {
                ApiError::NotReady("the generation worker has stopped".into())
            }
            kotae_answer::Error::Model(kotae_models::Error::PromptTooLong { tokens, limit }) => ApiError::BadRequest(
                format!("the conversation is too long for the model ({tokens} of {limit} tokens): start a new one"),
            ),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<kotae_index::Error> for ApiError {
    fn from(e: kotae_index::Error) -> Self {
        match e {
            kotae_index::Error::Query(m) => ApiError::BadRequest(m),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

/// Axum's own rejections (bad JSON, wrong content type, body too large) in our error shape.
impl From<axum::extract::rejection::JsonRejection> for ApiError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge { limit: crate::BODY_LIMIT };
        }
        ApiError::BadRequest(format!("{}: send a JSON body with Content-Type: application/json", r.body_text()))
    }
}
