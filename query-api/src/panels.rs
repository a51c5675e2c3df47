//! `GET /v1/panels` and `GET /v1/panels/{name}`: named panels as JSON, with an ETag from the
//! versions of the tables they read (`If-None-Match` gives 304).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::encode::rows_json;
use crate::error::ApiError;
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
    let params = state.panels.parse_params(&name, &pairs)?;
    let limits = &state.limits;
    if let Some(tag) = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
    {
        let snapshot = state.catalog.fresh_snapshot(limits.max_age).await?;
        let (_, etag) = state.panels.etag(&name, &params, &snapshot)?;
        if tag.split(',').any(|t| t.trim() == etag) {
            state.metrics.not_modified.inc();
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            resp.headers_mut()
                .insert(header::ETAG, HeaderValue::from_str(&etag).expect("hex"));
            return Ok(resp);
        }
    }
    // A panel computation is a query: it takes one of the server's query slots.
    let _slot = state.admission.admit().await?;
    let result = tokio::time::timeout(
        limits.timeout,
        state.panels.run(
            &state.catalog,
            &name,
            &params,
            &limits.query,
            limits.max_age,
        ),
    )
    .await
    .map_err(|_| ApiError::Timeout(format!("panel `{name}` ran past its time limit")))??;
    if result.cached {
        state.metrics.cache_hits.inc();
    } else {
        state.metrics.cache_misses.inc();
    }
    let panel = state.panels.get(&name)?;
    let columns: Vec<_> = result
        .schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "type": f.data_type().to_string() }))
        .collect();
    let rows = rows_json(&result.schema, &result.batches)?;
    let row_count: usize = result.batches.iter().map(|b| b.num_rows()).sum();
    let body = json!({
        "panel": panel.name,
        "title": panel.title,
        "params": params,
        "columns": columns,
        "rows": rows,
        "meta": {
            "table_versions": result.versions,
            "cached": result.cached,
            "fallback": result.fallback,
            "elapsed_ms": result.elapsed.as_secs_f64() * 1000.0,
            "row_count": row_count,
        }
    });
    let mut resp = Json(body).into_response();
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
