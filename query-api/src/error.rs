//! The one place where errors become HTTP statuses. Bodies are JSON `{error, code}`; a 5xx body
//! says nothing internal (the detail goes to the log, with the request's id). [`json_errors`]
//! gives the same shape to the error responses that are not ours (axum's rejections: 413, 400,
//! 405, ...).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use strata_engine::EngineError;

/// What a 5xx body says; the detail goes to the log.
const INTERNAL_MESSAGE: &str = "internal error; the server log has the details";

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
    /// The request is well-formed but the state refuses it (a hard budget without room).
    Conflict {
        code: &'static str,
        message: String,
    },
    /// The query ran past its time limit.
    Timeout(String),
    /// The query hit its memory limit.
    TooLarge(String),
    /// The request body is bigger than the server takes.
    PayloadTooLarge(String),
    /// Every query slot is taken and none freed up in time (admission control): 503 with
    /// Retry-After. Not a failure of the server, so the message goes to the client.
    Overloaded {
        retry_after_secs: u64,
        message: String,
    },
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
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::TooLarge(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Engine(e) => match e {
                EngineError::Sql(_)
                | EngineError::Param(_)
                | EngineError::Config(_)
                | EngineError::Query(_) => StatusCode::BAD_REQUEST,
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
            Self::BadRequest { code, .. } | Self::Conflict { code, .. } => code,
            Self::NotFound(_) => "not_found",
            Self::Timeout(_) => "query_timeout",
            Self::TooLarge(_) => "limit_exceeded",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::Overloaded { .. } => "overloaded",
            Self::Engine(e) => match e {
                EngineError::Sql(_) => "bad_sql",
                EngineError::Query(_) => "query_failed",
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

    pub fn message(&self) -> String {
        match self {
            Self::Unauthenticated(m)
            | Self::Forbidden(m)
            | Self::NotFound(m)
            | Self::Timeout(m)
            | Self::TooLarge(m)
            | Self::PayloadTooLarge(m) => m.clone(),
            Self::RateLimited { retry_after_secs } => {
                format!("too many requests; retry in {retry_after_secs} s")
            }
            Self::BadRequest { message, .. }
            | Self::Conflict { message, .. }
            | Self::Overloaded { message, .. } => message.clone(),
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
        let message = if status.is_server_error() && !matches!(self, Self::Overloaded { .. }) {
            tracing::error!(code = self.code(), error = %self.message(), "request failed");
            INTERNAL_MESSAGE.to_string()
        } else {
            self.message()
        };
        let mut resp = (
            status,
            axum::Json(json!({ "error": message, "code": self.code() })),
        )
            .into_response();
        match &self {
            Self::RateLimited { retry_after_secs }
            | Self::Overloaded {
                retry_after_secs, ..
            } => {
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

/// Rewrites every error response that is not JSON yet (axum's rejections are plain text, a 405
/// has no body) into `{error, code}`, keeping its status and headers (`Allow`, `Retry-After`).
pub(crate) async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if resp.status().as_u16() < 400 || is_json {
        return resp;
    }
    as_json_error(resp).await
}

/// Rejection texts are a few dozen bytes; past this the text is not one.
const MAX_REJECTION_TEXT: usize = 4096;

async fn as_json_error(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let status = parts.status;
    let code = code_of_status(status);
    let text = axum::body::to_bytes(body, MAX_REJECTION_TEXT)
        .await
        .ok()
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .filter(|t| !t.is_empty());
    let message = if status.is_server_error() {
        tracing::error!(
            status = status.as_u16(),
            error = text.as_deref().unwrap_or(""),
            "request failed"
        );
        INTERNAL_MESSAGE.to_string()
    } else {
        // axum's rejection texts name what was wrong, never the values sent.
        text.unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("request failed")
                .to_lowercase()
        })
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.extensions.insert(ErrorCode(code));
    let body = json!({ "error": message, "code": code }).to_string();
    Response::from_parts(parts, Body::from(body))
}

/// The `code` of an error response that did not come from an [`ApiError`].
fn code_of_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthenticated",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "request_timeout",
        411 => "length_required",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "unprocessable_entity",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "unavailable",
        _ if status.is_client_error() => "bad_request",
        _ => "internal",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_json(resp: Response) -> serde_json::Value {
        let bytes = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[tokio::test]
    async fn a_plain_text_rejection_becomes_json_with_its_text() {
        let rejection = (
            StatusCode::PAYLOAD_TOO_LARGE,
            "Failed to buffer the request body: length limit exceeded",
        )
            .into_response();
        let resp = as_json_error(rejection).await;
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(
            resp.extensions().get::<ErrorCode>().unwrap().0,
            "payload_too_large"
        );
        let v = body_json(resp).await;
        assert_eq!(v["code"], "payload_too_large");
        assert_eq!(
            v["error"],
            "Failed to buffer the request body: length limit exceeded"
        );
    }

    #[tokio::test]
    async fn an_empty_405_keeps_its_allow_header() {
        let mut resp = StatusCode::METHOD_NOT_ALLOWED.into_response();
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        let resp = as_json_error(resp).await;
        assert_eq!(resp.headers()[header::ALLOW], "GET,HEAD");
        let v = body_json(resp).await;
        assert_eq!(v["code"], "method_not_allowed");
        assert_eq!(v["error"], "method not allowed");
    }

    #[tokio::test]
    async fn a_5xx_says_nothing_internal() {
        let resp = (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Missing request extension: x",
        )
            .into_response();
        let v = body_json(as_json_error(resp).await).await;
        assert_eq!(v["code"], "internal");
        assert_eq!(v["error"], INTERNAL_MESSAGE);
    }
}
