//! `GET /v1/panels` and `GET /v1/panels/{name}`: named panels as JSON, with an ETag from the
//! versions of the tables they read (`If-None-Match` gives 304).
//!
//! A request resolves its panel once ([`strata_engine::Panels::request`]) and binds it once on
//! one snapshot ([`strata_engine::PanelRequest::prepare`]): the ETag compared with
//! `If-None-Match` is the one the answer carries.

use std::time::Instant;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use strata_engine::{EngineError, PanelRequest, PanelResult, PreparedPanel};

use crate::encode::rows_json;
use crate::error::ApiError;
use crate::metrics::Surface;
use crate::AppState;

pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let panels: Vec<_> = state.panels.list().collect();
    Ok(Json(json!({ "panels": panels })).into_response())
}

pub async fn get(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> Result<Response, ApiError> {
    let request = state.panels.request(&name, &pairs)?;
    let limits = &state.limits;
    let mut prepared = None;
    if let Some(tags) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let snapshot = state.catalog.fresh_snapshot(limits.max_age).await?;
        let bound = request.prepare(snapshot);
        if tags.split(',').any(|t| t.trim() == bound.etag()) {
            state.metrics.not_modified.inc();
            return Ok(not_modified(bound.etag()));
        }
        // The answer comes from the snapshot its ETag was compared on.
        prepared = Some(bound);
    }
    // A panel computation is a query: it takes one of the server's query slots.
    let started = Instant::now();
    let _slot = state.admission.admit().await?;
    let result = tokio::time::timeout(limits.timeout, answer(&state, &request, prepared))
        .await
        .map_err(|_| ApiError::Timeout(format!("panel `{name}` ran past its time limit")))??;
    // The name is a known panel's (`request` resolved it): a bounded label value.
    state
        .metrics
        .observe_query(Surface::Panel, request.panel.name, started.elapsed());
    state.metrics.count_cache(Surface::Panel, result.cached);
    let mut resp = Json(body(&request, &result)?).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&result.etag).expect("hex"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        "x-strata-cache",
        HeaderValue::from_static(if result.cached { "hit" } else { "miss" }),
    );
    Ok(resp)
}

/// Runs the request, bound on a fresh snapshot unless it already is.
async fn answer(
    state: &AppState,
    request: &PanelRequest<'_>,
    prepared: Option<PreparedPanel<'_>>,
) -> Result<PanelResult, EngineError> {
    let prepared = match prepared {
        Some(prepared) => prepared,
        None => request.prepare(state.catalog.fresh_snapshot(state.limits.max_age).await?),
    };
    prepared.run(&state.catalog, &state.limits.query).await
}

fn not_modified(etag: &str) -> Response {
    let mut resp = StatusCode::NOT_MODIFIED.into_response();
    resp.headers_mut()
        .insert(header::ETAG, HeaderValue::from_str(etag).expect("hex"));
    resp
}

/// `{panel, title, params, columns, rows, meta}`.
fn body(request: &PanelRequest<'_>, result: &PanelResult) -> Result<Value, ApiError> {
    let columns: Vec<_> = result
        .schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    let rows = rows_json(&result.schema, &result.batches)?;
    let row_count: usize = result.batches.iter().map(|b| b.num_rows()).sum();
    Ok(json!({
        "panel": request.panel.name,
        "title": request.panel.title,
        "params": request.params,
        "columns": columns,
        "rows": rows,
        "meta": {
            "table_versions": result.versions,
            "cached": result.cached,
            "fallback": result.fallback,
            "elapsed_ms": result.elapsed.as_secs_f64() * 1000.0,
            "row_count": row_count,
        }
    }))
}
