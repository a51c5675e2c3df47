//! `POST /v1/gdpr/exports`, `POST /v1/gdpr/purges` (202 + request id), `GET
//! /v1/gdpr/requests/{id}`, `GET /v1/gdpr/exports/{id}/files/{name}`. Requests are durable
//! (engine::gdpr::RequestStore): a restarted server resumes the ones it did not finish.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde_json::json;
use strata_engine::gdpr::{GdprRequest, RequestKind, RequestStatus, RequestStore, Subject};
use tracing::{info, warn};

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
    let store = RequestStore::new(state.catalog.storage());
    let req = store.create(kind, subject, &who.name).await?;
    info!(request_id = %req.id, kind = ?kind, requested_by = %who.name, "GDPR request accepted");
    spawn_run(state.clone(), req.clone());
    let mut resp = (
        StatusCode::ACCEPTED,
        Json(json!({
            "request_id": req.id,
            "status": req.status,
            "status_url": format!("/v1/gdpr/requests/{}", req.id),
        })),
    )
        .into_response();
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/v1/gdpr/requests/{}", req.id)).expect("uuid"),
    );
    Ok(resp)
}

/// Runs a request in the background, one at a time; after a purge the result cache is dropped
/// and the catalog refreshed, so no answer holding the subject is served again.
pub fn spawn_run(state: AppState, req: GdprRequest) {
    tokio::spawn(async move {
        let _one_at_a_time = state.gdpr_lock.lock().await;
        let store = RequestStore::new(state.catalog.storage());
        let id = req.id.clone();
        let kind = req.kind;
        match store.run(req).await {
            Ok(done) => info!(request_id = %id, status = ?done.status, "GDPR request finished"),
            Err(e) => warn!(request_id = %id, error = %e, "GDPR request could not be stored"),
        }
        if kind == RequestKind::Purge {
            state.cache.clear();
            if let Err(e) = state.catalog.refresh().await {
                warn!(error = %e, "refreshing the catalog after a purge failed");
            }
        }
    });
}

/// Picks up the requests a previous server left unfinished.
pub async fn resume(state: &AppState) -> Result<usize, ApiError> {
    let store = RequestStore::new(state.catalog.storage());
    let pending = store.unfinished().await?;
    let n = pending.len();
    for req in pending {
        info!(request_id = %req.id, "resuming GDPR request");
        spawn_run(state.clone(), req);
    }
    Ok(n)
}

pub async fn get_request(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let store = RequestStore::new(state.catalog.storage());
    let req = store
        .get(&id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no GDPR request `{id}`")))?;
    Ok(Json(req.public()).into_response())
}

pub async fn get_export_file(
    State(state): State<AppState>,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let store = RequestStore::new(state.catalog.storage());
    let req = store
        .get(&id)
        .await?
        .filter(|r| r.kind == RequestKind::Export)
        .ok_or_else(|| ApiError::NotFound(format!("no export `{id}`")))?;
    if req.status != RequestStatus::Done {
        return Err(ApiError::bad_request(
            "not_ready",
            format!(
                "export `{id}` is {:?}; poll {}",
                req.status,
                routes::GDPR_REQUEST
            ),
        ));
    }
    let listed = name == "manifest.json"
        || req
            .receipt
            .as_ref()
            .and_then(|m| m["files"].as_array())
            .is_some_and(|files| {
                files
                    .iter()
                    .any(|f| f["name"].as_str() == Some(name.as_str()))
            });
    if !listed {
        return Err(ApiError::NotFound(format!(
            "export `{id}` has no file `{name}`"
        )));
    }
    let path = object_store::path::Path::from(format!("exports/{id}/{name}"));
    let bytes = object_store::ObjectStoreExt::get(state.catalog.storage().store().as_ref(), &path)
        .await
        .map_err(|_| {
            ApiError::NotFound(format!(
                "export file `{name}` is gone (the subject may have been purged since)"
            ))
        })?
        .bytes()
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let content_type = if name.ends_with(".parquet") {
        "application/vnd.apache.parquet"
    } else if name.ends_with(".jsonl") {
        "application/x-ndjson"
    } else {
        "application/json"
    };
    let mut resp = Response::new(Body::from(bytes));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    Ok(resp)
}
