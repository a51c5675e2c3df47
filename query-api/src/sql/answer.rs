//! A statement's answer after its status is decided: [`SqlAnswer`] owns everything the task
//! that streams it needs (the deadline, the query's slot and running entry, the encoder, the
//! redactor), [`BatchSource`] the running plan, and [`CacheFill`] the copy kept for the cache.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use datafusion::dataframe::DataFrame;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;
use strata_engine::{CachedResult, EngineError, Redactor, ResultCache};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::admission::Slot;
use crate::encode::{Chunk, Encoder};
use crate::error::ApiError;

use super::RunningGuard;

/// Results up to this size are kept in the cache.
const CACHE_RESULT_BYTES: usize = 8 << 20;

/// The one deadline of a statement: the wait for a slot, planning, the first batch and every
/// chunk sent to a client that may stop reading all count against it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Deadline {
    at: tokio::time::Instant,
    limit: Duration,
}

impl Deadline {
    pub(super) fn start(limit: Duration) -> Self {
        Self {
            at: tokio::time::Instant::now() + limit,
            limit,
        }
    }

    fn timed_out(&self) -> ApiError {
        ApiError::Timeout(format!(
            "the query ran past its {} s limit; narrow it or use the rollups",
            self.limit.as_secs()
        ))
    }

    /// `work`, unless the deadline passes first.
    pub(super) async fn within<F: Future>(&self, work: F) -> Result<F::Output, ApiError> {
        tokio::time::timeout_at(self.at, work)
            .await
            .map_err(|_| self.timed_out())
    }
}

/// Sends one chunk to the client unless the deadline passes first (a client that stops
/// reading fills the channel); false when the query must stop.
async fn send_by(tx: &mpsc::Sender<Chunk>, bytes: Bytes, deadline: Deadline) -> bool {
    matches!(
        tokio::time::timeout_at(deadline.at, tx.send(Ok(bytes))).await,
        Ok(Ok(()))
    )
}

/// The running plan's batches, and the signal that cancels it (`DELETE /v1/queries/{id}`).
pub(super) struct BatchSource {
    stream: SendableRecordBatchStream,
    cancel: watch::Receiver<bool>,
}

impl BatchSource {
    /// Starts the plan, by the deadline.
    pub(super) async fn start(
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

    /// The first batch (None: the result is empty). It decides the status: an error before
    /// any row is sent is a proper 4xx.
    pub(super) async fn first(
        &mut self,
        deadline: Deadline,
    ) -> Result<Option<RecordBatch>, ApiError> {
        let first = tokio::select! {
            b = self.stream.next() => b,
            _ = tokio::time::sleep_until(deadline.at) => return Err(deadline.timed_out()),
            _ = self.cancel.changed() => {
                return Err(ApiError::bad_request("cancelled", "the query was cancelled"));
            }
        };
        match first {
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(ApiError::Engine(EngineError::from_execution(e))),
            None => Ok(None),
        }
    }
}

/// What the plan gave next while streaming.
enum Next {
    Batch(RecordBatch),
    /// The plan is done: the answer is whole.
    End,
    /// The query must stop: it failed, ran past its deadline, was cancelled, or the client
    /// went away (the client was told, where it still listens).
    Stop,
}

/// A cacheable answer collected while it streams, offered to the cache once it is whole.
pub(super) struct CacheFill {
    cache: Arc<ResultCache>,
    key: String,
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    bytes: usize,
}

impl CacheFill {
    pub(super) fn new(cache: Arc<ResultCache>, key: String, schema: SchemaRef) -> Self {
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

/// A statement's answer on its way to the client, owned by the task that streams it: the
/// deadline every chunk is sent by, the query's entry in [`super::Running`] and its slot (released
/// when the answer ends), the encoder of the asked format and, for EXPLAIN, the redactor.
///
/// Its methods that wait take `&mut self`, so that its task needs it `Send` only (the format
/// writers need not be `Sync`).
pub(super) struct SqlAnswer {
    pub(super) query_id: String,
    pub(super) deadline: Deadline,
    // Fields drop in order: the running entry and the slot go before the body's sender, so a
    // client that sees the end of the body finds the slot free.
    pub(super) guard: RunningGuard,
    pub(super) slot: Slot,
    pub(super) tx: mpsc::Sender<Chunk>,
    pub(super) encoder: Encoder,
    pub(super) redactor: Option<Redactor>,
    pub(super) row_cap: usize,
}

impl SqlAnswer {
    /// Answers from the cache: the slot and the running entry are released at once, and the
    /// batches (cut at the row cap) are encoded and sent from memory.
    pub(super) fn answer_from_memory(self, hit: &CachedResult) {
        let SqlAnswer {
            deadline,
            guard,
            slot,
            tx,
            mut encoder,
            row_cap,
            ..
        } = self;
        drop(slot);
        let batches = cap_batches(&hit.batches, row_cap);
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
    }

    /// Streams the plan's batches (from `first` on) to the client, up to the row cap; when
    /// the answer is whole, finishes the format and offers the answer to the cache.
    pub(super) async fn stream(
        mut self,
        mut source: BatchSource,
        first: Option<RecordBatch>,
        mut fill: Option<CacheFill>,
    ) {
        let mut rows = 0usize;
        let mut next = first;
        let complete = loop {
            let Some(batch) = next.take() else {
                break true;
            };
            let Some(batch) = self.shape(batch, rows).await else {
                break false;
            };
            rows += batch.num_rows();
            fill = fill.and_then(|f| f.keep(&batch));
            if !self.send(&batch).await {
                break false;
            }
            if rows >= self.row_cap {
                info!(
                    query_id = %self.query_id,
                    row_cap = self.row_cap,
                    "row cap reached; result cut"
                );
                fill = None;
                break true;
            }
            next = match self.next_batch(&mut source).await {
                Next::Batch(b) => Some(b),
                Next::End => None,
                Next::Stop => break false,
            };
        };
        drop(source);
        if complete {
            self.finish(fill).await;
        }
    }

    /// `batch` cut to the rows left under the cap (`rows` are sent), and redacted for
    /// EXPLAIN; None when redaction failed (the client gets the error).
    async fn shape(&mut self, batch: RecordBatch, rows: usize) -> Option<RecordBatch> {
        let room = self.row_cap - rows;
        let batch = if batch.num_rows() > room {
            batch.slice(0, room)
        } else {
            batch
        };
        let Some(redactor) = &self.redactor else {
            return Some(batch);
        };
        match redactor.batch(&batch) {
            Ok(b) => Some(b),
            Err(e) => {
                let _ = self
                    .tx
                    .send(Err(std::io::Error::other(e.to_string())))
                    .await;
                None
            }
        }
    }

    /// Encodes `batch` and sends it by the deadline; false when the query must stop.
    async fn send(&mut self, batch: &RecordBatch) -> bool {
        let bytes = match self.encoder.write(batch) {
            Ok(bytes) => bytes,
            Err(e) => {
                let _ = self
                    .tx
                    .send(Err(std::io::Error::other(e.to_string())))
                    .await;
                return false;
            }
        };
        let sent = send_by(&self.tx, bytes, self.deadline).await;
        if !sent {
            info!(query_id = %self.query_id, "client went away or stopped reading; query stopped");
        }
        sent
    }

    /// The plan's next batch, unless it fails, the deadline passes, the query is cancelled or
    /// the client goes away first.
    async fn next_batch(&mut self, source: &mut BatchSource) -> Next {
        let id = &self.query_id;
        let tx = &self.tx;
        tokio::select! {
            b = source.stream.next() => match b {
                Some(Ok(b)) => Next::Batch(b),
                None => Next::End,
                Some(Err(e)) => {
                    // The kind only: the message may quote a data value.
                    let e = EngineError::from_execution(e);
                    warn!(query_id = %id, kind = e.kind(), "query failed while streaming");
                    let _ = tx.send(Err(std::io::Error::other("query failed"))).await;
                    Next::Stop
                }
            },
            _ = tokio::time::sleep_until(self.deadline.at) => {
                warn!(query_id = %id, "query ran past its time limit while streaming; cut");
                let _ = tx.try_send(Err(std::io::Error::other("query timeout")));
                Next::Stop
            }
            _ = source.cancel.changed() => {
                info!(query_id = %id, "query cancelled");
                let _ = tx.try_send(Err(std::io::Error::other("query cancelled")));
                Next::Stop
            }
            _ = tx.closed() => {
                info!(query_id = %id, "client went away; query stopped");
                Next::Stop
            }
        }
    }

    /// Sends the format's closing bytes and offers the whole answer to the cache; the slot
    /// and the running entry go when this returns.
    async fn finish(self, fill: Option<CacheFill>) {
        if let Ok(bytes) = self.encoder.finish() {
            send_by(&self.tx, bytes, self.deadline).await;
        }
        if let Some(fill) = fill {
            fill.insert();
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
