//! The one query service behind every surface: SQL over HTTP, the Postgres wire protocol and
//! Arrow Flight SQL all run a statement through [`AppState::start_query`], so each gets the
//! same read-only gate, admission slot, deadline, memory share, row cap, cancellation, result
//! cache and metrics. A surface only encodes the [`Rows`] it is handed.
//!
//! ```text
//! start_query: Deadline -> slot -> plan (gate, snapshot) -> bind parameters -> cache key -> Running entry
//!     -> cache hit: Rows from memory (slot released at once)
//!     -> miss: first batch (an error here is the statement's error) -> producer task -> Rows
//!        producer: shape (row cap, redaction) -> send by the deadline -> next batch | deadline | cancel | consumer gone
//! ```

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::common::ParamValues;
use datafusion::dataframe::DataFrame;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::{Stream, StreamExt};
use parking_lot::Mutex;
use strata_engine::{CachedResult, EngineError, PlannedQuery, QueryLimits, Redactor, ResultCache};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::admission::Slot;
use crate::error::ApiError;
use crate::metrics::Surface;
use crate::sql::RunningGuard;
use crate::AppState;

/// Results up to this size are kept in the cache.
const CACHE_RESULT_BYTES: usize = 8 << 20;

/// Batches a producer may have sent ahead of its consumer.
const AHEAD: usize = 2;

/// One statement as a surface hands it over.
pub struct Statement {
    pub sql: String,
    /// Values of `$1`, `$2`, ... (prepared statements of the Postgres and Flight surfaces).
    pub params: Option<ParamValues>,
    /// The client's name for the query, or a new id.
    pub query_id: String,
    pub surface: Surface,
}

impl Statement {
    pub fn new(sql: impl Into<String>, surface: Surface) -> Self {
        Self {
            sql: sql.into(),
            params: None,
            query_id: uuid::Uuid::new_v4().to_string(),
            surface,
        }
    }
}

/// Where the answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheUse {
    Hit,
    Miss,
    /// Not cacheable (no versioned table read, a volatile function, EXPLAIN).
    Bypass,
}

impl CacheUse {
    pub fn label(self) -> &'static str {
        match self {
            Self::Hit => "hit",
            Self::Miss => "miss",
            Self::Bypass => "bypass",
        }
    }
}

/// A statement that planned and produced its first batch (or its cached answer): what a
/// surface needs to start its response, and the rows to stream.
pub struct Started {
    pub query_id: String,
    pub schema: SchemaRef,
    pub cache: CacheUse,
    /// `table@version` of every table it reads, comma-separated.
    pub versions: String,
    pub deadline: Deadline,
    pub rows: Rows,
}

/// The one deadline of a statement: the wait for a slot, planning, the first batch and every
/// batch handed to a consumer that may stop reading all count against it.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
}

impl Deadline {
    pub fn start(limit: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + limit,
            limit,
        }
    }

    pub fn at(&self) -> tokio::time::Instant {
        self.at
    }

    pub fn timed_out(&self) -> ApiError {
        ApiError::Timeout(format!(
            "the query ran past its {} s limit; narrow it or use the rollups",
            self.limit.as_secs()
        ))
    }

    /// `work`, unless the deadline passes first.
    pub async fn within<F: Future>(&self, work: F) -> Result<F::Output, ApiError> {
        tokio::time::timeout_at(self.at, work)
            .await
            .map_err(|_| self.timed_out())
    }
}

impl AppState {
    /// Runs `statement` up to its first batch: an error until then (gate, plan, parameters,
    /// overload, timeout, the first batch failing) is the statement's error, for the surface
    /// to answer in its protocol. The rows that follow stream through [`Rows`].
    pub async fn start_query(&self, statement: Statement) -> Result<Started, ApiError> {
        let Statement {
            sql,
            params,
            query_id,
            surface,
        } = statement;
        let started = Instant::now();
        let deadline = Deadline::start(self.limits.timeout);
        let slot = self.admission.admit().await?;
        let planned = self.plan(&sql, params.as_ref(), deadline).await?;
        let schema = planned.schema();
        let versions = planned.versions.join(",");
        let key = planned.cache_key(&cache_text(&sql, params.as_ref()));
        let (guard, cancel) = self.running.start(&query_id)?;
        let cached = key.as_ref().and_then(|k| self.cache.get(k));
        let cache = match (&key, &cached) {
            (None, _) => CacheUse::Bypass,
            (Some(_), Some(_)) => CacheUse::Hit,
            (Some(_), None) => CacheUse::Miss,
        };
        let rows = if let Some(hit) = cached {
            self.metrics.count_cache(surface, true);
            drop(slot);
            drop(guard);
            Rows::from_memory(&hit, self.limits.row_cap)
        } else {
            if key.is_some() {
                self.metrics.count_cache(surface, false);
            }
            let fill = key.map(|key| CacheFill::new(self.cache.clone(), key, schema.clone()));
            let mut source = BatchSource::start(planned.df, cancel, deadline).await?;
            let first = source.first(deadline).await?;
            let (tx, rx) = mpsc::channel(AHEAD);
            let end = Arc::new(Mutex::new(End::Running));
            let producer = Producer {
                query_id: query_id.clone(),
                deadline,
                guard,
                slot,
                tx,
                end: end.clone(),
                redactor: planned.redactor.clone(),
                row_cap: self.limits.row_cap,
            };
            tokio::spawn(producer.run(source, first, fill));
            Rows {
                inner: RowsInner::Channel { rx, end },
            }
        };
        self.metrics.observe_query(surface, "", started.elapsed());
        info!(
            query_id = %query_id,
            surface = surface.label(),
            cache = cache.label(),
            first_batch_ms = started.elapsed().as_millis() as u64,
            "sql query"
        );
        Ok(Started {
            query_id,
            schema,
            cache,
            versions,
            deadline,
            rows,
        })
    }

    /// Plans `sql` read-only on a fresh snapshot and binds `params`, by the deadline.
    async fn plan(
        &self,
        sql: &str,
        params: Option<&ParamValues>,
        deadline: Deadline,
    ) -> Result<PlannedQuery, ApiError> {
        let limits = &self.limits;
        // Every SQL surface answers the catalog queries Postgres clients send.
        let query_limits = QueryLimits {
            pg_catalog: true,
            ..limits.query.clone()
        };
        let planned = deadline
            .within(async {
                let snapshot = self.catalog.fresh_snapshot(limits.max_age).await?;
                PlannedQuery::plan(&self.catalog, sql, &query_limits, snapshot).await
            })
            .await??;
        match params {
            Some(p) => Ok(planned.bind(p.clone())?),
            None => Ok(planned),
        }
    }

    /// Plans `sql` read-only without running it: the columns it answers with and the types
    /// of its parameters (`$1` is the first), for a surface that describes a prepared
    /// statement before it is bound.
    pub async fn describe_query(&self, sql: &str) -> Result<Described, ApiError> {
        let deadline = Deadline::start(self.limits.timeout);
        let planned = self.plan(sql, None, deadline).await?;
        let params = planned.parameter_types().map_err(ApiError::Engine)?;
        Ok(Described {
            schema: planned.schema(),
            params,
        })
    }
}

/// A statement planned but not run.
pub struct Described {
    pub schema: SchemaRef,
    /// The type of each parameter, `$1` first; None where the plan does not tell.
    pub params: Vec<Option<arrow::datatypes::DataType>>,
}

/// The text a cached answer is keyed by: the statement, and the values bound to it.
fn cache_text(sql: &str, params: Option<&ParamValues>) -> String {
    match params {
        None => sql.to_string(),
        Some(p) => format!("{sql}\n-- params {p:?}"),
    }
}

/// How a producer ended, for the consumer that finds its channel closed.
enum End {
    /// Still producing (or gone without a word: a panic).
    Running,
    /// The answer is whole (possibly cut at the row cap).
    Whole,
    /// It stopped: failed, ran past its deadline, was cancelled, or its consumer went away.
    Stopped(ApiError),
}

/// A statement's rows after the first batch: a stream of batches that ends when the answer
/// is whole, or with the error that stopped it.
pub struct Rows {
    inner: RowsInner,
}

enum RowsInner {
    Memory(VecDeque<RecordBatch>),
    Channel {
        rx: mpsc::Receiver<RecordBatch>,
        end: Arc<Mutex<End>>,
    },
    Done,
}

impl Rows {
    fn from_memory(hit: &CachedResult, row_cap: usize) -> Self {
        Self {
            inner: RowsInner::Memory(cap_batches(&hit.batches, row_cap).into()),
        }
    }

    /// The next batch; None once the answer is whole.
    pub async fn next_batch(&mut self) -> Option<Result<RecordBatch, ApiError>> {
        self.next().await
    }
}

impl Stream for Rows {
    type Item = Result<RecordBatch, ApiError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        match &mut this.inner {
            RowsInner::Memory(batches) => {
                let next = batches.pop_front();
                if next.is_none() {
                    this.inner = RowsInner::Done;
                }
                Poll::Ready(next.map(Ok))
            }
            RowsInner::Channel { rx, end } => match rx.poll_recv(cx) {
                Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(b))),
                Poll::Pending => Poll::Pending,
                Poll::Ready(None) => {
                    let end = std::mem::replace(&mut *end.lock(), End::Running);
                    this.inner = RowsInner::Done;
                    Poll::Ready(match end {
                        End::Whole => None,
                        End::Stopped(e) => Some(Err(e)),
                        End::Running => Some(Err(ApiError::Internal(
                            "the query stopped without an answer".into(),
                        ))),
                    })
                }
            },
            RowsInner::Done => Poll::Ready(None),
        }
    }
}

/// The running plan's batches, and the signal that cancels it (`DELETE /v1/queries/{id}`, a
/// Postgres cancel request).
struct BatchSource {
    stream: SendableRecordBatchStream,
    cancel: watch::Receiver<bool>,
}

impl BatchSource {
    /// Starts the plan, by the deadline.
    async fn start(
        df: DataFrame,
        cancel: watch::Receiver<bool>,
        deadline: Deadline,
    ) -> Result<Self, ApiError> {
        let stream = deadline
            .within(df.execute_stream())
            .await?
            .map_err(|e| ApiError::Engine(EngineError::from_execution(e)))?;
        Ok(Self { stream, cancel })
    }

    /// The first batch (None: the result is empty). An error before any row is handed over
    /// is the statement's error.
    async fn first(&mut self, deadline: Deadline) -> Result<Option<RecordBatch>, ApiError> {
        let first = tokio::select! {
            b = self.stream.next() => b,
            _ = tokio::time::sleep_until(deadline.at) => return Err(deadline.timed_out()),
            _ = self.cancel.changed() => return Err(cancelled()),
        };
        match first {
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(ApiError::Engine(EngineError::from_execution(e))),
            None => Ok(None),
        }
    }
}

fn cancelled() -> ApiError {
    ApiError::bad_request("cancelled", "the query was cancelled")
}

/// What the plan gave next while streaming.
enum Next {
    Batch(RecordBatch),
    /// The plan is done: the answer is whole.
    End,
    /// The query must stop, for this reason.
    Stop(ApiError),
}

/// A cacheable answer collected while it streams, offered to the cache once it is whole.
struct CacheFill {
    cache: Arc<ResultCache>,
    key: String,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
}

impl CacheFill {
    fn new(cache: Arc<ResultCache>, key: String, schema: SchemaRef) -> Self {
        Self {
            cache,
            key,
            schema,
            batches: Vec::new(),
            bytes: 0,
        }
    }

    /// Keeps `batch`; None once the answer is past [`CACHE_RESULT_BYTES`] (it is not cached).
    fn keep(mut self, batch: &RecordBatch) -> Option<Self> {
        self.bytes += batch.get_array_memory_size();
        if self.bytes > CACHE_RESULT_BYTES {
            return None;
        }
        self.batches.push(batch.clone());
        Some(self)
    }

    fn insert(self) {
        self.cache.insert(
            self.key,
            CachedResult::new(self.schema, Arc::new(self.batches)),
        );
    }
}

/// The task that runs a statement's plan after its first batch and hands the batches to the
/// surface: it owns the query's slot and running entry (released when it ends), its deadline,
/// the row cap and, for EXPLAIN, the redactor.
struct Producer {
    query_id: String,
    deadline: Deadline,
    // Fields drop in order: the running entry and the slot go before the sender, so a
    // consumer that sees the end of the rows finds the slot free.
    guard: RunningGuard,
    slot: Slot,
    tx: mpsc::Sender<RecordBatch>,
    end: Arc<Mutex<End>>,
    redactor: Option<Redactor>,
    row_cap: usize,
}

impl Producer {
    async fn run(
        self,
        mut source: BatchSource,
        first: Option<RecordBatch>,
        mut fill: Option<CacheFill>,
    ) {
        let mut rows = 0usize;
        let mut next = first;
        let end = loop {
            let Some(batch) = next.take() else {
                break End::Whole;
            };
            let batch = match self.shape(batch, rows) {
                Ok(b) => b,
                Err(e) => break End::Stopped(e),
            };
            rows += batch.num_rows();
            fill = fill.and_then(|f| f.keep(&batch));
            if let Err(e) = self.send(batch).await {
                break End::Stopped(e);
            }
            if rows >= self.row_cap {
                info!(
                    query_id = %self.query_id,
                    row_cap = self.row_cap,
                    "row cap reached; result cut"
                );
                fill = None;
                break End::Whole;
            }
            next = match self.next_batch(&mut source).await {
                Next::Batch(b) => Some(b),
                Next::End => None,
                Next::Stop(e) => break End::Stopped(e),
            };
        };
        drop(source);
        if let (End::Whole, Some(fill)) = (&end, fill) {
            fill.insert();
        }
        let Producer {
            guard,
            slot,
            tx,
            end: shared,
            ..
        } = self;
        drop(guard);
        drop(slot);
        *shared.lock() = end;
        drop(tx);
    }

    /// `batch` cut to the rows left under the cap (`rows` are handed over), and redacted for
    /// EXPLAIN.
    fn shape(&self, batch: RecordBatch, rows: usize) -> Result<RecordBatch, ApiError> {
        let room = self.row_cap - rows;
        let batch = if batch.num_rows() > room {
            batch.slice(0, room)
        } else {
            batch
        };
        match &self.redactor {
            None => Ok(batch),
            Some(r) => r
                .batch(&batch)
                .map_err(|e| ApiError::Internal(e.to_string())),
        }
    }

    /// Hands `batch` over by the deadline (a consumer that stops reading fills the channel).
    async fn send(&self, batch: RecordBatch) -> Result<(), ApiError> {
        match tokio::time::timeout_at(self.deadline.at, self.tx.send(batch)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => {
                info!(query_id = %self.query_id, "client went away; query stopped");
                Err(ApiError::Internal("the client went away".into()))
            }
            Err(_) => {
                info!(query_id = %self.query_id, "client stopped reading past the deadline; query stopped");
                Err(self.deadline.timed_out())
            }
        }
    }

    /// The plan's next batch, unless it fails, the deadline passes, the query is cancelled or
    /// the consumer goes away first.
    async fn next_batch(&self, source: &mut BatchSource) -> Next {
        let id = &self.query_id;
        tokio::select! {
            b = source.stream.next() => match b {
                Some(Ok(b)) => Next::Batch(b),
                None => Next::End,
                Some(Err(e)) => {
                    // The kind only: the message may quote a data value.
                    let e = EngineError::from_execution(e);
                    warn!(query_id = %id, kind = e.kind(), "query failed while streaming");
                    Next::Stop(ApiError::Engine(e))
                }
            },
            _ = tokio::time::sleep_until(self.deadline.at) => {
                warn!(query_id = %id, "query ran past its time limit while streaming; cut");
                Next::Stop(self.deadline.timed_out())
            }
            _ = source.cancel.changed() => {
                info!(query_id = %id, "query cancelled");
                Next::Stop(cancelled())
            }
            _ = self.tx.closed() => {
                info!(query_id = %id, "client went away; query stopped");
                Next::Stop(ApiError::Internal("the client went away".into()))
            }
        }
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
