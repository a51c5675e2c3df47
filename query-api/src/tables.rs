//! `GET /v1/tables`: the health of every table, checked now: data files and bytes, small files,
//! the partition with the most files, commits since the last checkpoint and bytes waiting for
//! vacuum ([`strata_engine::delta::stats`]). The check also refreshes what the `strata_tables`
//! view (and the `table_health` panel) shows, and the `strata_table_*` metrics.

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use strata_engine::delta::stats::SMALL_FILE_BYTES;

use crate::error::ApiError;
use crate::metrics::Surface;
use crate::AppState;

/// `{small_file_bytes, tables: [TableHealth, ...]}`, tables by name.
pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    // A check reads every table's log state and lists its directory: it takes a query slot
    // and runs under the query time limit, like a panel.
    let started = Instant::now();
    let _slot = state.admission.admit().await?;
    let tables = tokio::time::timeout(state.limits.timeout, state.catalog.table_health())
        .await
        .map_err(|_| {
            ApiError::Timeout("the table health check ran past its time limit".into())
        })??;
    state
        .metrics
        .observe_query(Surface::Tables, "", started.elapsed());
    state.metrics.tables.record(&tables);
    Ok(Json(json!({
        "small_file_bytes": SMALL_FILE_BYTES,
        "tables": tables,
    }))
    .into_response())
}
