//! `POST /v1/sql`, `GET /v1/sql?q=`, `DELETE /v1/queries/{id}`: one read-only statement,
//! streamed in the asked format, with a query id, a time limit, a memory limit and a row cap.
//! Cancelling it (by id or by hanging up) drops the DataFusion stream, which stops the work.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::RecordBatch;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use strata_engine::{CachedResult, EngineError, PlannedQuery};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::encode::{Encoder, Format};
use crate::error::ApiError;
use crate::AppState;

/// Results up to this size are kept in the cache.
const CACHE_RESULT_BYTES: usize = 8 << 20;

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
    fn start(
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

    fn cancel(&self, id: &str) -> bool {
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
struct RunningGuard {
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

fn choose_format(headers: &HeaderMap, param: Option<String>) -> Result<Format, ApiError> {
    if let Some(f) = param {
        return Format::from_name(&f);
    }
    Ok(headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .and_then(Format::from_accept)
        .unwrap_or(Format::Json))
}

async fn run(
    state: AppState,
    headers: &HeaderMap,
    sql: String,
    format: Option<String>,
) -> Result<Response, ApiError> {
    let format = choose_format(headers, format)?;
    let limits = &state.limits;
    let query_id = query_id(headers)?;
    let started = Instant::now();
    // One deadline for everything: waiting for a slot, planning, optimising, the first batch,
    // and streaming to a client that may stop reading.
    let deadline = tokio::time::Instant::now() + limits.timeout;
    let timed_out = || {
        ApiError::Timeout(format!(
            "the query ran past its {} s limit; narrow it or use the rollups",
            limits.timeout.as_secs()
        ))
    };
    let slot = state.admission.admit().await?;
    let planned = tokio::time::timeout_at(deadline, async {
        let snapshot = state.catalog.fresh_snapshot(limits.max_age).await?;
        PlannedQuery::plan(&state.catalog, &sql, &limits.query, snapshot).await
    })
    .await
    .map_err(|_| timed_out())??;
    let schema = planned.schema();
    let versions = planned.versions.join(",");
    let key = planned.cacheable.then(|| format!("sql\n{sql}\n{versions}"));
    let redactor = planned.redactor.clone();

    let (guard, mut cancel) = state.running.start(&query_id)?;
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let mut encoder =
        Encoder::new(format, &schema).map_err(|e| ApiError::Internal(e.to_string()))?;
    let cached = key.as_ref().and_then(|k| state.cache.get(k));
    let cache_header = match (&key, &cached) {
        (None, _) => "bypass",
        (Some(_), Some(_)) => "hit",
        (Some(_), None) => "miss",
    };
    if let Some(hit) = &cached {
        state.metrics.cache_hits.inc();
        drop(slot);
        // Served from memory; the row cap still applies.
        let batches = cap_batches(&hit.batches, limits.row_cap);
        drop(guard);
        tokio::spawn(async move {
            for b in &batches {
                let bytes = match encoder.write(b) {
                    Ok(bytes) => bytes,
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        return;
                    }
                };
                if !send_by(&tx, bytes, deadline).await {
                    return;
                }
            }
            if let Ok(bytes) = encoder.finish() {
                send_by(&tx, bytes, deadline).await;
            }
        });
    } else {
        if key.is_some() {
            state.metrics.cache_misses.inc();
        }
        let mut stream = tokio::time::timeout_at(deadline, planned.df.execute_stream())
            .await
            .map_err(|_| timed_out())?
            .map_err(|e| ApiError::Engine(EngineError::from_execution(e)))?;
        // The first batch decides the status: an error before any row is sent is a proper 4xx.
        let first = tokio::select! {
            b = stream.next() => b,
            _ = tokio::time::sleep_until(deadline) => return Err(timed_out()),
            _ = cancel.changed() => {
                return Err(ApiError::bad_request("cancelled", "the query was cancelled"));
            }
        };
        let first = match first {
            Some(Ok(b)) => Some(b),
            Some(Err(e)) => {
                return Err(ApiError::Engine(EngineError::from_execution(e)));
            }
            None => None,
        };
        let row_cap = limits.row_cap;
        let cache = state.cache.clone();
        let id = query_id.clone();
        let schema_for_cache = schema.clone();
        tokio::spawn(async move {
            let mut rows = 0usize;
            let mut kept: Option<Vec<RecordBatch>> = key.is_some().then(Vec::new);
            let mut kept_bytes = 0usize;
            let mut next = first;
            let mut complete = false;
            loop {
                let Some(batch) = next.take() else {
                    complete = true;
                    break;
                };
                let room = row_cap - rows;
                let batch = if batch.num_rows() > room {
                    batch.slice(0, room)
                } else {
                    batch
                };
                let batch = match &redactor {
                    Some(r) => match r.batch(&batch) {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                            break;
                        }
                    },
                    None => batch,
                };
                rows += batch.num_rows();
                if let Some(k) = &mut kept {
                    kept_bytes += batch.get_array_memory_size();
                    if kept_bytes > CACHE_RESULT_BYTES {
                        kept = None
                    } else {
                        k.push(batch.clone())
                    }
                }
                match encoder.write(&batch) {
                    Ok(bytes) => {
                        if !send_by(&tx, bytes, deadline).await {
                            info!(query_id = %id, "client went away or stopped reading; query stopped");
                            break;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                        break;
                    }
                }
                if rows >= row_cap {
                    info!(query_id = %id, row_cap, "row cap reached; result cut");
                    kept = None;
                    complete = true;
                    break;
                }
                next = tokio::select! {
                    b = stream.next() => match b {
                        Some(Ok(b)) => Some(b),
                        None => None,
                        Some(Err(e)) => {
                            // The kind only: the message may quote a data value.
                            let e = EngineError::from_execution(e);
                            warn!(query_id = %id, kind = e.kind(), "query failed while streaming");
                            let _ = tx.send(Err(std::io::Error::other("query failed"))).await;
                            break;
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        warn!(query_id = %id, "query ran past its time limit while streaming; cut");
                        let _ = tx.try_send(Err(std::io::Error::other("query timeout")));
                        break;
                    }
                    _ = cancel.changed() => {
                        info!(query_id = %id, "query cancelled");
                        let _ = tx.try_send(Err(std::io::Error::other("query cancelled")));
                        break;
                    }
                    _ = tx.closed() => {
                        info!(query_id = %id, "client went away; query stopped");
                        break;
                    }
                };
            }
            drop(stream);
            if complete {
                if let Ok(bytes) = encoder.finish() {
                    send_by(&tx, bytes, deadline).await;
                }
                if let (Some(k), Some(key)) = (kept, key) {
                    cache.insert(key, CachedResult::new(schema_for_cache, Arc::new(k)));
                }
            }
            drop(guard);
            drop(slot);
        });
    }
    info!(
        query_id = %query_id,
        format = format.content_type(),
        cache = cache_header,
        first_batch_ms = started.elapsed().as_millis() as u64,
        "sql query"
    );
    let body = Body::from_stream(tokio_stream(rx));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    h.insert(
        "x-strata-query-id",
        HeaderValue::from_str(&query_id).expect("uuid is ASCII"),
    );
    h.insert("x-strata-cache", HeaderValue::from_static(cache_header));
    h.insert("x-strata-row-cap", HeaderValue::from(limits.row_cap as u64));
    if let Ok(v) = HeaderValue::from_str(&versions) {
        h.insert("x-strata-table-versions", v);
    }
    Ok(resp)
}

/// Sends one chunk to the client unless the deadline passes first (a client that stops
/// reading fills the channel); false when the query must stop.
async fn send_by(
    tx: &mpsc::Sender<Result<Bytes, std::io::Error>>,
    bytes: Bytes,
    deadline: tokio::time::Instant,
) -> bool {
    matches!(
        tokio::time::timeout_at(deadline, tx.send(Ok(bytes))).await,
        Ok(Ok(()))
    )
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

fn cap_batches(batches: &[RecordBatch], cap: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    let mut rows = 0;
    for b in batches {
        if rows >= cap {
            break;
        }
        let take = b.num_rows().min(cap - rows);
        out.push(b.slice(0, take));
        rows += take;
    }
    out
}

fn tokio_stream(
    mut rx: mpsc::Receiver<Result<Bytes, std::io::Error>>,
) -> impl futures::Stream<Item = Result<Bytes, std::io::Error>> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
