//! Fenced appends: the files of a batch written once, committed with the Kafka offsets they
//! carry (`txn` actions) and the GDPR tombstone marker, checked again on every conflict.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, lexsort_to_indices, take_record_batch, SortColumn};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableError};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use tracing::{debug, warn};

use super::TOMBSTONE_MARKER_APP_ID;
use crate::delta::log;
use crate::registry::TableSpec;
use crate::writer::writer_properties;
use crate::{EngineError, Result};

/// Advance of one Kafka partition's offset, carried as a Delta `txn` action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnUpdate {
    /// `strata-<group>-<topic>-<partition>`
    pub app_id: String,
    /// The version this writer believes the table holds (None: never written).
    pub expected: Option<i64>,
    /// The next offset to consume after this commit.
    pub next: i64,
}

/// Commit attempts an append makes when other commits keep landing first.
const MAX_CONFLICT_RETRIES: u32 = 50;

/// What an append of filtered rows came to.
#[derive(Debug, Clone)]
pub enum RawAppend {
    Committed(AppendOutcome),
    /// A purge has committed a newer tombstone marker than the tombstones the rows were
    /// filtered with: nothing was committed.
    StaleTombstones {
        marker: i64,
        filtered_with: i64,
    },
}

/// What an append did.
#[derive(Debug, Clone, Default)]
pub struct AppendOutcome {
    pub version: u64,
    pub rows: usize,
    pub files: usize,
    pub bytes: i64,
    /// Commit attempts that lost a race and were checked again.
    pub retries: u32,
}

/// Appends `batches` (one file per partition value, rows sorted) with the `txns` offsets in
/// one commit, fenced: every `txn` must hold its `expected` version, and with `filtered_with`
/// the tombstone marker must not be newer than it (see [`crate::EventTable::append_filtered`]
/// for why this closes the race with purges). A commit that loses a race is checked again on
/// the new state, up to [`MAX_CONFLICT_RETRIES`] times; the files are written once.
pub(crate) async fn append(
    table: &mut DeltaTable,
    spec: &TableSpec,
    batches: &[RecordBatch],
    txns: &[TxnUpdate],
    filtered_with: Option<i64>,
) -> Result<RawAppend> {
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let mut app_ids: Vec<String> = txns.iter().map(|t| t.app_id.clone()).collect();
    if filtered_with.is_some() {
        app_ids.push(TOMBSTONE_MARKER_APP_ID.to_string());
    }
    let mut pending = PendingFiles::default();
    let mut retries = 0;
    loop {
        table.update_state().await?;
        let stored = log::txn_versions(table, &app_ids).await?;
        let app_txns = match check_fences(&stored, txns, filtered_with) {
            Fences::Pass(app_txns) => app_txns,
            Fences::Refuse(answer) => {
                pending.discard(table, spec.name).await;
                return answer;
            }
        };
        if pending.adds.is_none() {
            pending.adds = Some(write_files(table, spec, batches, rows).await?);
        }
        let files = pending.adds.as_deref().unwrap_or_default();
        let started = std::time::Instant::now();
        let committed = commit_adds(table, spec, files, &app_txns).await;
        match committed {
            Ok(version) => {
                super::observe::committed(spec.name, "append", started);
                let (files, bytes) = (files.len(), files.iter().map(|a| a.size).sum());
                table.update_state().await?;
                return Ok(RawAppend::Committed(AppendOutcome {
                    version,
                    rows,
                    files,
                    bytes,
                    retries,
                }));
            }
            // Another commit landed first (another partition's writer, a purge's marker
            // or rewrite): check the fences again on the new state. Writers that carry
            // the marker app id conflict with each other too, hence the generous limit.
            Err(DeltaTableError::Transaction { source }) if retries < MAX_CONFLICT_RETRIES => {
                debug!(table = spec.name, error = %source, "commit conflict, checking fences again");
                super::observe::conflicted(spec.name, "append");
                // Only a conflict proves that nothing was written; after any other
                // failure the files may be part of a commit and are never deleted.
                pending.uncertain |= !matches!(source, TransactionError::CommitConflict(_));
                retries += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// What the fences of an append say on the current state.
enum Fences {
    /// Commit, with these `txn` (app id, version) actions.
    Pass(Vec<(String, i64)>),
    /// Commit nothing; answer this.
    Refuse(Result<RawAppend>),
}

/// Checks every `txn` against its stored version (a mismatch is [`EngineError::Fenced`]),
/// then the tombstone marker against `filtered_with` (newer is
/// [`RawAppend::StaleTombstones`]).
fn check_fences(
    stored: &HashMap<String, Option<i64>>,
    txns: &[TxnUpdate],
    filtered_with: Option<i64>,
) -> Fences {
    for t in txns {
        let found = stored.get(&t.app_id).copied().flatten();
        if found != t.expected {
            return Fences::Refuse(Err(EngineError::Fenced {
                app_id: t.app_id.clone(),
                expected: t.expected,
                found,
            }));
        }
    }
    let mut app_txns: Vec<(String, i64)> =
        txns.iter().map(|t| (t.app_id.clone(), t.next)).collect();
    if let Some(filtered) = filtered_with {
        let marker = stored.get(TOMBSTONE_MARKER_APP_ID).copied().flatten();
        if let Some(marker) = marker.filter(|m| *m > filtered) {
            return Fences::Refuse(Ok(RawAppend::StaleTombstones {
                marker,
                filtered_with: filtered,
            }));
        }
        // Never lower the marker (it is at most `filtered` here).
        app_txns.push((
            TOMBSTONE_MARKER_APP_ID.to_string(),
            marker.map_or(filtered, |m| m.max(filtered)),
        ));
    }
    Fences::Pass(app_txns)
}

/// One attempt to commit `files` with the `txn` actions.
async fn commit_adds(
    table: &DeltaTable,
    spec: &TableSpec,
    files: &[Add],
    app_txns: &[(String, i64)],
) -> std::result::Result<u64, DeltaTableError> {
    let now = chrono::Utc::now().timestamp_millis();
    let actions: Vec<Action> = files.iter().cloned().map(Action::Add).collect();
    let props = CommitProperties::default()
        .with_application_transactions(
            app_txns
                .iter()
                .map(|(id, v)| Transaction::new_with_last_update(id, *v, Some(now)))
                .collect(),
        )
        .with_max_retries(20);
    let operation = DeltaOperation::Write {
        mode: SaveMode::Append,
        partition_by: Some(vec![spec.partition_column.to_string()]),
        predicate: None,
    };
    let done = CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await?;
    Ok(done.version())
}

/// The files of an append: written once the fences first pass, kept across conflict retries.
#[derive(Default)]
struct PendingFiles {
    adds: Option<Vec<Add>>,
    /// A commit attempt failed otherwise than by a conflict: the files may be part of a
    /// commit, so they are never deleted.
    uncertain: bool,
}

impl PendingFiles {
    /// Deletes files written for a commit that will not happen: no reader reaches them, and
    /// no purge would find the rows they hold.
    async fn discard(&self, table: &DeltaTable, name: &str) {
        if self.uncertain {
            return;
        }
        let store = table.object_store();
        for add in self.adds.as_deref().unwrap_or_default() {
            let path = Path::parse(&add.path).unwrap_or_else(|_| Path::from(add.path.as_str()));
            if let Err(e) = store.delete(&path).await {
                if !matches!(e, object_store::Error::NotFound { .. }) {
                    warn!(table = name, error = %e, "deleting an uncommitted file failed");
                }
            }
        }
    }
}

/// Rows below which an append writes its files on one task: one writer per core pays off on
/// a flush (200,000 rows by default), not on a trickle.
const PARALLEL_WRITE_MIN_ROWS: usize = 64 * 1024;

/// The Parquet files of `batches` (none when they hold no row), written but not committed.
///
/// The rows, ordered by (partition, sort column), are cut into one contiguous run per core and
/// each run is encoded by its own writer on its own task, so the encoding of one flush spreads
/// over the cores; a partition cut between two runs gets a file from each. One commit still
/// adds them all.
async fn write_files(
    table: &DeltaTable,
    spec: &TableSpec,
    batches: &[RecordBatch],
    rows: usize,
) -> Result<Vec<Add>> {
    if rows == 0 {
        return Ok(Vec::new());
    }
    let batch = sorted(spec, batches)?;
    let writers = strata_schemas::cores()
        .min(rows / PARALLEL_WRITE_MIN_ROWS)
        .max(1);
    let run = rows.div_ceil(writers);
    let mut tasks = Vec::with_capacity(writers);
    for start in (0..rows).step_by(run) {
        let slice = batch.slice(start, run.min(rows - start));
        let mut writer = RecordBatchWriter::for_table(table)?
            .with_writer_properties(writer_properties(spec, slice.num_rows()));
        tasks.push(tokio::spawn(async move {
            writer.write(slice).await?;
            writer.flush().await
        }));
    }
    let mut adds = Vec::new();
    for task in tasks {
        let written = task
            .await
            .map_err(|e| EngineError::Internal(format!("a Parquet writer task failed: {e}")))?;
        adds.extend(written?);
    }
    Ok(adds)
}

/// One batch ordered by (partition column, sort column).
fn sorted(spec: &TableSpec, batches: &[RecordBatch]) -> Result<RecordBatch> {
    let batch = concat_batches(&spec.schema, batches)?;
    let cols = [spec.partition_column, spec.sort_column]
        .iter()
        .map(|c| SortColumn {
            values: batch.column_by_name(c).expect("spec column exists").clone(),
            options: None,
        })
        .collect::<Vec<_>>();
    let idx = lexsort_to_indices(&cols, None)?;
    Ok(take_record_batch(&batch, &idx)?)
}
