//! `POST /v1/sql`, `GET /v1/sql?q=`, `DELETE /v1/queries/{id}`: one read-only statement,
//! streamed in the asked format, with a query id, a time limit, a memory limit and a row cap.
//! Cancelling it (by id or by hanging up) drops the DataFusion stream, which stops the work.
//!
//! The statement runs through the query service ([`crate::query`]), as on every surface; this
//! module only chooses the format and encodes the rows into a streamed body.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::encode::{streamed_body, Chunk, Encoder, Format};
use crate::error::ApiError;
use crate::metrics::Surface;
use crate::query::{Deadline, Rows, Statement};
use crate::AppState;

#[derive(Debug, Deserialize)]
pub struct SqlParams {
    q: Option<String>,
    format: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct SqlBody {
    sql: Option<String>,
    query: Option<String>,
    format: Option<String>,
}

/// Running queries, by id.
#[derive(Default)]
pub struct Running {
    queries: parking_lot::Mutex<HashMap<String, watch::Sender<bool>>>,
}

impl Running {
    pub(crate) fn start(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<(RunningGuard, watch::Receiver<bool>), ApiError> {
        let (tx, rx) = watch::channel(false);
        let mut q = self.queries.lock();
        if q.contains_key(id) {
            return Err(ApiError::bad_request(
                "duplicate_query_id",
                format!("a query with id `{id}` is already running"),
            ));
        }
        q.insert(id.to_string(), tx);
        Ok((
            RunningGuard {
                running: self.clone(),
                id: id.to_string(),
            },
            rx,
        ))
    }

    pub fn len(&self) -> usize {
        self.queries.lock().len()
    }

    fn finish(&self, id: &str) {
        self.queries.lock().remove(id);
    }

    pub(crate) fn cancel(&self, id: &str) -> bool {
        match self.queries.lock().remove(id) {
            Some(tx) => {
                let _ = tx.send(true);
                true
            }
            None => false,
        }
    }
}

/// Removes a query from [`Running`] however its handler ends (done, failed, or dropped
/// because the client hung up).
pub(crate) struct RunningGuard {
    running: Arc<Running>,
    id: String,
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        self.running.finish(&self.id);
    }
}

pub async fn get_sql(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<SqlParams>,
) -> Result<Response, ApiError> {
    let sql = params
        .q
        .ok_or_else(|| ApiError::bad_request("missing_sql", "give the statement as `q`"))?;
    run(state, &headers, sql, params.format).await
}

pub async fn post_sql(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<SqlParams>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let (sql, format) = if is_json {
        let b: SqlBody = serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "bad_body",
                format!("the body must be JSON {{\"sql\": \"...\"}}: {e}"),
            )
        })?;
        (b.sql.or(b.query), b.format.or(params.format))
    } else {
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| ApiError::bad_request("bad_body", "the body must be UTF-8 SQL text"))?;
        (Some(text), params.format)
    };
    let sql = sql
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("missing_sql", "the body holds no SQL statement"))?;
    run(state, &headers, sql, format).await
}

pub async fn delete_query(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.running.cancel(&id) {
        info!(query_id = %id, "query cancelled by request");
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::NotFound(format!("no running query `{id}`")))
    }
}

/// Runs one statement through the query service: the response's status and headers are
/// decided by its first batch; the body streams from a task that encodes the rows.
async fn run(
    state: AppState,
    headers: &HeaderMap,
    sql: String,
    format: Option<String>,
) -> Result<Response, ApiError> {
    let format = Format::choose(headers, format)?;
    let mut statement = Statement::new(sql, Surface::Sql);
    statement.query_id = query_id(headers)?;
    let started = state.start_query(statement).await?;
    let encoder =
        Encoder::new(format, &started.schema).map_err(|e| ApiError::Internal(e.to_string()))?;
    let (tx, rx) = mpsc::channel::<Chunk>(4);
    let response = streamed_response(
        rx,
        format,
        &started.query_id,
        started.cache.label(),
        state.limits.row_cap,
        &started.versions,
    );
    tokio::spawn(encode_rows(started.rows, encoder, tx, started.deadline));
    Ok(response)
}

/// Encodes the rows into the response body, each chunk sent by the deadline; a client that
/// goes away drops the rows, which stops the query. An answer cut midway ends the body with
/// an error (the client sees a broken body, never a whole-looking one).
async fn encode_rows(
    mut rows: Rows,
    mut encoder: Encoder,
    tx: mpsc::Sender<Chunk>,
    deadline: Deadline,
) {
    let send_by = |bytes: Bytes| {
        let tx = &tx;
        async move {
            matches!(
                tokio::time::timeout_at(deadline.at(), tx.send(Ok(bytes))).await,
                Ok(Ok(()))
            )
        }
    };
    loop {
        let next = tokio::select! {
            b = rows.next_batch() => b,
            _ = tx.closed() => return,
        };
        match next {
            Some(Ok(batch)) => {
                let bytes = match encoder.write(&batch) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                if !send_by(bytes).await {
                    return;
                }
            }
            Some(Err(e)) => {
                // A short reason only: the message may quote a data value.
                let why = match e {
                    ApiError::Timeout(_) => "query timeout",
                    ApiError::BadRequest {
                        code: "cancelled", ..
                    } => "query cancelled",
                    _ => "query failed",
                };
                let _ = tx.try_send(Err(std::io::Error::other(why)));
                return;
            }
            None => break,
        }
    }
    if let Ok(bytes) = encoder.finish() {
        send_by(bytes).await;
    }
}

/// The response whose body is what the answer's task sends to `rx`.
fn streamed_response(
    rx: mpsc::Receiver<Chunk>,
    format: Format,
    query_id: &str,
    cache_header: &'static str,
    row_cap: usize,
    versions: &str,
) -> Response {
    let mut resp = Response::new(streamed_body(rx));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(
        "x-strata-query-id",
        HeaderValue::from_str(query_id).expect("uuid is ASCII"),
    );
    h.insert("x-strata-cache", HeaderValue::from_static(cache_header));
    h.insert("x-strata-row-cap", HeaderValue::from(row_cap as u64));
    if let Ok(v) = HeaderValue::from_str(versions) {
        h.insert("x-strata-table-versions", v);
    }
    resp
}

/// The client's name for its query (to cancel it before the first byte arrives), or a new id.
fn query_id(headers: &HeaderMap) -> Result<String, ApiError> {
    match headers
        .get("x-strata-query-id")
        .and_then(|v| v.to_str().ok())
    {
        Some(id)
            if !id.is_empty()
                && id.len() <= 64
                && id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') =>
        {
            Ok(id.to_string())
        }
        Some(_) => Err(ApiError::bad_request(
            "bad_query_id",
            "x-strata-query-id must be 1-64 letters, digits, `-` or `_`",
        )),
        None => Ok(uuid::Uuid::new_v4().to_string()),
    }
}
