//! `POST /v1/gdpr/exports`, `POST /v1/gdpr/purges` (202 + request id), `GET
//! /v1/gdpr/requests/{id}`, `GET /v1/gdpr/exports/{id}/files/{name}`. The handlers parse and
//! answer; the request lifecycle (durable store, one at a time, cache and catalog after a
//! purge, resuming at start-up) is `strata_engine::gdpr::GdprService`'s, held by [`AppState`].

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::json;
use strata_engine::gdpr::{ExportFileLookup, RequestKind, Subject};

use crate::auth::Caller;
use crate::error::ApiError;
use crate::{routes, AppState};

pub async fn post_export(
    State(state): State<AppState>,
    Extension(who): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    submit(state, who, body, RequestKind::Export).await
}

pub async fn post_purge(
    State(state): State<AppState>,
    Extension(who): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    submit(state, who, body, RequestKind::Purge).await
}

/// `who` was authenticated, and its `gdpr` scope checked, by `auth::authorize`.
async fn submit(
    state: AppState,
    who: Caller,
    body: Bytes,
    kind: RequestKind,
) -> Result<Response, ApiError> {
    let subject: Subject = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(
            "bad_body",
            format!("the body must be JSON {{\"subject\": \"<user id>\", \"anonymous_ids\": [...], \"session_ids\": [...]}}: {e}"),
        )
    })?;
    let req = state.gdpr.submit(kind, subject, &who.name).await?;
    let status_url = format!("/v1/gdpr/requests/{}", req.id);
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(json!({
            "request_id": req.id,
            "status": req.status,
            "status_url": status_url,
        })),
    )
        .into_response();
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&status_url).expect("uuid"),
    );
    Ok(resp)
}

/// Picks up the requests a previous server left unfinished (each runs in the background);
/// returns how many.
pub async fn resume(state: &AppState) -> Result<usize, ApiError> {
    Ok(state.gdpr.resume().await?)
}

pub async fn get_request(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let req = state
        .gdpr
        .request(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no GDPR request `{id}`")))?;
    Ok(Json(req.public()).into_response())
}

pub async fn get_export_file(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let bytes = match state.gdpr.export_file(&id, &name).await? {
        ExportFileLookup::Found(bytes) => bytes,
        ExportFileLookup::NoExport => {
            return Err(ApiError::NotFound(format!("no export `{id}`")));
        }
        ExportFileLookup::NotReady(status) => {
            return Err(ApiError::bad_request(
                "not_ready",
                format!("export `{id}` is {status:?}; poll {}", routes::GDPR_REQUEST),
            ));
        }
        ExportFileLookup::NotListed => {
            return Err(ApiError::NotFound(format!(
                "export `{id}` has no file `{name}`"
            )));
        }
        ExportFileLookup::Gone => {
            return Err(ApiError::NotFound(format!(
                "export file `{name}` is gone (the subject may have been purged since)"
            )));
        }
    };
    let mut resp = Response::new(Body::from(bytes));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(content_type(&name)),
    );
    Ok(resp)
}

fn content_type(name: &str) -> &'static str {
    if name.ends_with(".parquet") {
        "application/vnd.apache.parquet"
    } else if name.ends_with(".jsonl") {
        "application/x-ndjson"
    } else {
        "application/json"
    }
}
