//! The one place where errors become HTTP statuses. Bodies are JSON `{error, code}`; a 5xx body
//! says nothing internal (the detail goes to the log, with the request's id).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use strata_engine::EngineError;

#[derive(Debug)]
pub enum ApiError {
    /// No or unknown bearer token.
    Unauthenticated(String),
    /// The token lacks the scope the route needs.
    Forbidden(String),
    RateLimited {
        retry_after_secs: u64,
    },
    BadRequest {
        code: &'static str,
        message: String,
    },
    NotFound(String),
    /// The query ran past its time limit.
    Timeout(String),
    /// The query hit its memory limit.
    TooLarge(String),
    Engine(EngineError),
    Internal(String),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Engine(e) => match e {
                EngineError::Sql(_) | EngineError::Param(_) | EngineError::Config(_) => {
                    StatusCode::BAD_REQUEST
                }
                EngineError::Refused(_) => StatusCode::BAD_REQUEST,
                EngineError::NotFound(_) => StatusCode::NOT_FOUND,
                EngineError::Limit(_) => StatusCode::UNPROCESSABLE_ENTITY,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::RateLimited { .. } => "rate_limited",
            Self::BadRequest { code, .. } => code,
            Self::NotFound(_) => "not_found",
            Self::Timeout(_) => "query_timeout",
            Self::TooLarge(_) => "limit_exceeded",
            Self::Engine(e) => match e {
                EngineError::Sql(_) => "bad_sql",
                EngineError::Refused(_) => "statement_not_allowed",
                EngineError::Param(_) => "bad_parameter",
                EngineError::Config(_) => "bad_request",
                EngineError::NotFound(_) => "not_found",
                EngineError::Limit(_) => "limit_exceeded",
                _ => "internal",
            },
            Self::Internal(_) => "internal",
        }
    }

    fn message(&self) -> String {
        match self {
            Self::Unauthenticated(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Timeout(m)
            | Self::TooLarge(m) => m.clone(),
            Self::RateLimited { retry_after_secs } => {
                format!("too many requests for this token; retry in {retry_after_secs} s")
            }
            Self::BadRequest { message, .. } => message.clone(),
            Self::Engine(e) => e.to_string(),
            Self::Internal(m) => m.clone(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        Self::Engine(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let message = if status.is_server_error() {
            tracing::error!(code = self.code(), error = %self.message(), "request failed");
            "internal error; the server log has the details".to_string()
        } else {
            self.message()
        };
        let mut resp = (
            status,
            axum::Json(json!({ "error": message, "code": self.code() })),
        )
            .into_response();
        match &self {
            Self::RateLimited { retry_after_secs } => {
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            Self::Unauthenticated(_) => {
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"strata\""),
                );
            }
            _ => {}
        }
        resp.extensions_mut().insert(ErrorCode(self.code()));
        resp
    }
}

/// Set on error responses so that the metrics layer can count them by code.
#[derive(Debug, Clone, Copy)]
pub struct ErrorCode(pub &'static str);
