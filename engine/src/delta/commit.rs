//! The one place that writes a Delta log: creating a table, appending fenced by `txn`
//! versions, raising a `txn` version (the GDPR tombstone marker), replacing partitions
//! (rollups), removing + adding files (purge rewrites, compactions, retention), each with its
//! conflict retry, and checkpoints with the cleanup of expired log entries.

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, lexsort_to_indices, take, SortColumn};
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Remove, StructType, Transaction};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use tracing::{debug, info, warn};

use super::log::LiveFile;
use super::{layout, log};
use crate::registry::TableSpec;
use crate::writer::writer_properties;
use crate::{EngineError, Result, Storage};

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

/// The `txn` app id of the GDPR tombstone marker in every raw table: its version is the
/// `gdpr_tombstones` version that commits after it were filtered with (see
/// [`crate::EventTable::append_filtered`]).
pub const TOMBSTONE_MARKER_APP_ID: &str = "strata-gdpr-tombstones";

/// The `txn` app id of every commit that removes files it has read: a purge's rewrite, a
/// compaction, a retention run, a rollup's partition replace (its version: the table version
/// the commit was built on).
///
/// delta-rs does not count removes with `dataChange=false` (a compaction's) as conflicts:
/// without this fence a purge scanned before a compaction committed would still commit its
/// rewrite of files the compaction folded into a new one (the subject's rows surviving there,
/// everyone else's twice), and two compactions of the same files would both commit. With it
/// the later of two such commits fails (`ConcurrentTransaction`) and reads the table again.
/// Appends and the tombstone marker do not carry it: they never conflict with a compaction.
pub const REWRITE_FENCE_APP_ID: &str = "strata-file-rewrite";

/// The `commitInfo` key of retention commits: the log reader leaves them out of the days a
/// rollup recomputes, so that rollup days outlive their expired source days.
pub(crate) const RETENTION_MARKER: &str = "strata-retention";

/// The `commitInfo` key of compaction commits (for operators reading the log).
const COMPACTION_MARKER: &str = "strata-compaction";

/// Commit attempts an append makes when other commits keep landing first.
const MAX_CONFLICT_RETRIES: u32 = 50;

/// Attempts of [`replace_partitions`] when a compaction of the rollup lands first.
const MAX_REPLACE_ATTEMPTS: u32 = 5;

/// Attempts of [`raise_txn`] (each lost attempt means another writer committed meanwhile).
const MAX_RAISE_ATTEMPTS: u32 = 100;

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

/// Creates table `spec` (its first commit), or loads it when another process won the race
/// for version 0.
pub(crate) async fn create_table(storage: &Storage, spec: &TableSpec) -> Result<DeltaTable> {
    let schema: StructType = spec.schema.as_ref().try_into_kernel().map_err(|e| {
        EngineError::Internal(format!(
            "schema of {} has no Delta equivalent: {e}",
            spec.name
        ))
    })?;
    let table = DeltaTableBuilder::from_url(storage.table_url(spec.name))?
        .with_storage_options(storage.options().clone())
        .build()?;
    let created = table
        .create()
        .with_table_name(spec.name)
        .with_columns(schema.fields().cloned())
        .with_partition_columns([spec.partition_column])
        .with_configuration_property(
            TableProperty::DataSkippingStatsColumns,
            Some(spec.stats_columns.join(",")),
        )
        .with_configuration_property(TableProperty::CheckpointInterval, Some("50"))
        .with_save_mode(SaveMode::Ignore)
        .await;
    match created {
        Ok(table) => {
            info!(table = spec.name, "created table");
            Ok(table)
        }
        Err(e) => {
            // Lost the creation race: load what the winner committed.
            debug!(table = spec.name, error = %e, "create failed, loading");
            Ok(log::load(storage, spec.name).await?)
        }
    }
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
        let committed = commit_adds(table, spec, files, &app_txns).await;
        match committed {
            Ok(version) => {
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
    stored: &std::collections::HashMap<String, Option<i64>>,
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

/// The Parquet files of `batches` (none when they hold no row), written but not committed.
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
    let mut writer =
        RecordBatchWriter::for_table(table)?.with_writer_properties(writer_properties(spec));
    writer.write(batch).await?;
    Ok(writer.flush().await?)
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
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c, &idx, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Makes the version of `txn` app id `app_id` in `table` (called `name`) at least `want`,
/// never lowering it: a commit holding only that `txn`, unless it is there already. A commit
/// of another writer landing first (one carrying the same app id conflicts) sends it round
/// again after a short pause. Returns the table version at which the `txn` holds, or None when
/// other commits kept landing first for [`MAX_RAISE_ATTEMPTS`] attempts.
pub(crate) async fn raise_txn(
    table: &mut DeltaTable,
    name: &str,
    app_id: &str,
    want: i64,
) -> Result<Option<u64>> {
    for attempt in 0..MAX_RAISE_ATTEMPTS {
        table.update_state().await?;
        let stored = log::txn_version(table, app_id).await?;
        let version = table.version().unwrap_or(0);
        if stored.is_some_and(|v| v >= want) {
            return Ok(Some(version));
        }
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new_with_last_update(
                app_id,
                want,
                Some(chrono::Utc::now().timestamp_millis()),
            ))
            .with_max_retries(20);
        let committed = CommitBuilder::from(props)
            .with_actions(Vec::new())
            .build(
                Some(table.snapshot()?),
                table.log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await;
        match committed {
            Ok(done) => return Ok(Some(done.version())),
            Err(DeltaTableError::Transaction { source }) => {
                debug!(table = name, app_id, attempt, error = %source, "txn commit lost a race; again");
                tokio::time::sleep(std::time::Duration::from_millis(
                    5 * u64::from(attempt.min(20)),
                ))
                .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// How [`replace_partitions`] commits.
pub(crate) struct PartitionReplace {
    /// The `txn` the commit records (a rollup: the source version it consumed).
    pub app_id: String,
    pub version: i64,
    /// The partitions replaced, as a predicate; None replaces the whole table.
    pub replace_where: Option<String>,
    /// The table takes the schema of the new rows (a rollup whose columns changed).
    pub new_schema: bool,
}

/// Replaces the partitions `replace` selects with `batches` in one commit that records its
/// `txn` (delta-rs retries a commit that lost a race without a conflict up to 10 times).
/// Returns the new version.
///
/// It carries the rewrite fence ([`REWRITE_FENCE_APP_ID`]): a compaction of the rollup
/// committed meanwhile fails it (an overwrite would leave the compaction's file next to its
/// own) and the write is made again, so maintenance never blocks a rollup (the failed
/// attempt's files are left to vacuum); a run of the same rollup that got as far wins.
pub(crate) async fn replace_partitions(
    table: &DeltaTable,
    spec: &TableSpec,
    batches: Vec<RecordBatch>,
    replace: PartitionReplace,
) -> Result<Option<u64>> {
    let mut table = table.clone();
    let mut attempt = 1;
    loop {
        let read_version = table.version().map_or(-1, |v| v as i64);
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&replace.app_id, replace.version))
            .with_application_transaction(Transaction::new(REWRITE_FENCE_APP_ID, read_version))
            .with_max_retries(10);
        let mut write = table
            .clone()
            .write(batches.clone())
            .with_save_mode(SaveMode::Overwrite)
            .with_partition_columns([spec.partition_column])
            .with_writer_properties(writer_properties(spec))
            .with_commit_properties(props);
        if replace.new_schema {
            write = write.with_schema_mode(SchemaMode::Overwrite);
        }
        if let Some(predicate) = &replace.replace_where {
            write = write.with_replace_where(predicate.clone());
        }
        match write.await {
            Ok(written) => return Ok(written.version()),
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(e),
            }) if attempt < MAX_REPLACE_ATTEMPTS => {
                table.update_state().await?;
                let stored = log::txn_version(&table, &replace.app_id).await?;
                if stored.is_some_and(|v| v >= replace.version) {
                    return Ok(table.version());
                }
                debug!(table = spec.name, attempt, error = %e, "partition replace conflicted; writing again");
                attempt += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// The remove action of data file `path` (relative to the table) of partition
/// `partition_column = value`.
pub(crate) fn removal(path: String, partition_column: &str, value: String, size: u64) -> Remove {
    Remove {
        path,
        data_change: true,
        deletion_timestamp: Some(chrono::Utc::now().timestamp_millis()),
        extended_file_metadata: Some(true),
        partition_values: Some(
            [(partition_column.to_string(), Some(value))]
                .into_iter()
                .collect(),
        ),
        size: Some(size as i64),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
    }
}

/// The remove action of live file `file` of a table partitioned by `partition_column`;
/// `data_change` false when its rows live on in another file (a compaction).
pub(crate) fn removal_of(file: &LiveFile, partition_column: &str, data_change: bool) -> Remove {
    let mut remove = removal(
        file.path.clone(),
        partition_column,
        String::new(),
        file.size,
    );
    remove.data_change = data_change;
    remove.partition_values = Some(
        [(partition_column.to_string(), file.partition.clone())]
            .into_iter()
            .collect(),
    );
    remove
}

/// Commits `removes` and `adds` of table `name` atomically, with `(key, value)` in the
/// commit's `commitInfo`. No read predicate: appends landing meanwhile never conflict with
/// it; a commit that removed a file it removes does, and so does any other commit carrying
/// [`REWRITE_FENCE_APP_ID`] (a compaction, a retention run) that landed after `table` was
/// loaded (delta-rs retries other conflicts up to 20 times). Returns the new version, or None
/// when it lost such a conflict: nothing was committed, and the added files, nobody's, are
/// deleted.
pub(crate) async fn remove_and_add(
    storage: &Storage,
    name: &str,
    table: &DeltaTable,
    removes: &[Remove],
    adds: Vec<Add>,
    commit_info: (&str, &str),
) -> Result<Option<u64>> {
    let added: Vec<Path> = adds
        .iter()
        .map(|a| layout::table_file(name, &a.path))
        .collect();
    let mut actions: Vec<Action> = removes.iter().cloned().map(Action::Remove).collect();
    actions.extend(adds.into_iter().map(Action::Add));
    let operation = DeltaOperation::Delete { predicate: None };
    let committed = commit_rewrite(table, name, actions, operation, commit_info).await?;
    if committed.is_none() {
        for path in &added {
            match storage.store().delete(path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(EngineError::Internal(format!("deleting {path}: {e}"))),
            }
        }
    }
    Ok(committed)
}

/// Commits a compaction of table `name`: `removes` and the `adds` holding the same rows, all
/// `dataChange=false` (no reader, stream or rollup sees a change of data). None when a
/// conflicting commit (a purge, a retention run, a rollup replace, another compaction) landed
/// after `table` was loaded: nothing committed, the added files are the caller's.
pub(crate) async fn commit_compaction(
    table: &DeltaTable,
    name: &str,
    removes: Vec<Remove>,
    adds: Vec<Add>,
    target_size: u64,
) -> Result<Option<u64>> {
    let mut actions = Vec::with_capacity(removes.len() + adds.len());
    for mut remove in removes {
        remove.data_change = false;
        actions.push(Action::Remove(remove));
    }
    for mut add in adds {
        add.data_change = false;
        actions.push(Action::Add(add));
    }
    let operation = DeltaOperation::Optimize {
        predicate: None,
        target_size: i64::try_from(target_size).unwrap_or(i64::MAX),
    };
    commit_rewrite(table, name, actions, operation, (COMPACTION_MARKER, name)).await
}

/// Commits the removal of expired files of table `name` (`removes`, whole partitions older
/// than `cutoff`), marked as a retention commit (see [`RETENTION_MARKER`]). None when a
/// conflicting commit landed after `table` was loaded: nothing was committed.
pub(crate) async fn commit_expiry(
    table: &DeltaTable,
    name: &str,
    removes: Vec<Remove>,
    cutoff: &str,
) -> Result<Option<u64>> {
    let actions = removes.into_iter().map(Action::Remove).collect();
    let operation = DeltaOperation::Delete { predicate: None };
    commit_rewrite(table, name, actions, operation, (RETENTION_MARKER, cutoff)).await
}

/// One commit of `actions` built on the loaded state of `table`, fenced by
/// [`REWRITE_FENCE_APP_ID`], with `(key, value)` in its `commitInfo`. None when it lost a
/// conflict (nothing committed).
async fn commit_rewrite(
    table: &DeltaTable,
    name: &str,
    actions: Vec<Action>,
    operation: DeltaOperation,
    commit_info: (&str, &str),
) -> Result<Option<u64>> {
    let (key, value) = commit_info;
    let read_version = table.version().map_or(-1, |v| v as i64);
    let fence = Transaction::new_with_last_update(
        REWRITE_FENCE_APP_ID,
        read_version,
        Some(chrono::Utc::now().timestamp_millis()),
    );
    let committed = CommitBuilder::from(
        CommitProperties::default()
            .with_max_retries(20)
            .with_metadata([(
                key.to_string(),
                serde_json::Value::String(value.to_string()),
            )])
            .with_application_transaction(fence),
    )
    .with_actions(actions)
    .build(Some(table.snapshot()?), table.log_store(), operation)
    .await;
    match committed {
        Ok(c) => Ok(Some(c.version())),
        Err(DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(e),
        }) => {
            debug!(table = name, error = %e, "rewrite commit conflict");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes a checkpoint of the loaded version of `table` (loading replays no commit before it).
pub(crate) async fn checkpoint(table: &DeltaTable) -> Result<()> {
    deltalake::checkpoints::create_checkpoint(table, None).await?;
    Ok(())
}

/// Deletes the log entries of `table` older than `cutoff_ms` (ms since the epoch) that a
/// checkpoint before the cutoff makes unnecessary (the table loads the same); how many went.
pub(crate) async fn clean_expired_log(table: &DeltaTable, cutoff_ms: i64) -> Result<usize> {
    let version = table.version().unwrap_or(0);
    let log_store = table.log_store();
    let cleaned = deltalake::checkpoints::cleanup_expired_logs_for(
        version,
        log_store.as_ref(),
        cutoff_ms,
        None,
    )
    .await?;
    Ok(cleaned)
}
