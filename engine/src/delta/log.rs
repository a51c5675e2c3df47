//! The one reader of the Delta log: a table's state as delta-rs loads it (its version, the
//! versions of its `txn` app ids, its live files and the files it removed), and its commit
//! files read directly where delta-rs has no answer (when a commit landed, the files each
//! commit added and removed, the partitions that changed between two versions, what earlier
//! operations removed, the newest checkpoint).

use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDate;
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use tracing::warn;

use super::commit::RETENTION_MARKER;
use super::layout;
use crate::{EngineError, Result, Storage};

/// Loads table `name` at its latest version (`NotATable` when it was never created).
pub(crate) async fn load(
    storage: &Storage,
    name: &str,
) -> std::result::Result<DeltaTable, DeltaTableError> {
    DeltaTableBuilder::from_url(storage.table_url(name))?
        .with_storage_options(storage.options().clone())
        .load()
        .await
}

/// Whether anything is under the table's `_delta_log`: tells a table that does not exist
/// from one that fails to load.
pub(crate) async fn has_log(storage: &Storage, name: &str) -> bool {
    let log = layout::delta_log_dir(name);
    futures::StreamExt::next(&mut storage.store().list(Some(&log)))
        .await
        .is_some()
}

/// The version of each `txn` app id in the loaded state of `table` (None: never committed).
pub(crate) async fn txn_versions(
    table: &DeltaTable,
    app_ids: &[String],
) -> Result<HashMap<String, Option<i64>>> {
    let state = table.snapshot()?;
    let log_store = table.log_store();
    let mut out = HashMap::with_capacity(app_ids.len());
    for id in app_ids {
        let v = state.transaction_version(log_store.as_ref(), id).await?;
        out.insert(id.clone(), v);
    }
    Ok(out)
}

/// The version of one `txn` app id in the loaded state of `table`.
pub(crate) async fn txn_version(table: &DeltaTable, app_id: &str) -> Result<Option<i64>> {
    Ok(table
        .snapshot()?
        .transaction_version(table.log_store().as_ref(), app_id)
        .await?)
}

/// When commit `version` of `table` landed (its commit file's modification time), if known.
pub(crate) async fn commit_time(storage: &Storage, table: &str, version: u64) -> Option<i64> {
    storage
        .store()
        .head(&layout::commit_file(table, version))
        .await
        .ok()
        .map(|m| m.last_modified.timestamp_millis())
}

/// A data file a commit added or removed, as its log entry names it.
#[derive(Debug, Clone, Default)]
pub(crate) struct FileAction {
    /// Relative to the table.
    pub path: Option<String>,
    pub partition_values: serde_json::Map<String, serde_json::Value>,
    /// False when the rows live on elsewhere (a compaction's removes and adds).
    pub data_change: bool,
}

impl FileAction {
    fn from_json(action: &serde_json::Value) -> Self {
        Self {
            path: action
                .get("path")
                .and_then(|p| p.as_str())
                .map(str::to_string),
            partition_values: action
                .get("partitionValues")
                .and_then(|p| p.as_object())
                .cloned()
                .unwrap_or_default(),
            data_change: action
                .get("dataChange")
                .and_then(|d| d.as_bool())
                .unwrap_or(true),
        }
    }

    /// The file's value of partition column `column` (None when the entry carries none).
    pub fn partition(&self, column: &str) -> Option<&str> {
        self.partition_values.get(column).and_then(|v| v.as_str())
    }
}

/// The data files one commit added and removed, in log order, and its `commitInfo`.
#[derive(Debug, Clone, Default)]
pub(crate) struct CommitFiles {
    pub added: Vec<FileAction>,
    pub removed: Vec<FileAction>,
    pub info: serde_json::Map<String, serde_json::Value>,
}

/// The files added and removed by commit `version` of `table`; None when its commit file is
/// gone (cleaned up).
pub(crate) async fn commit_files(
    storage: &Storage,
    table: &str,
    version: u64,
) -> Result<Option<CommitFiles>> {
    let path = layout::commit_file(table, version);
    let Some(bytes) = storage.read_if_exists(&path).await? else {
        return Ok(None);
    };
    let mut files = CommitFiles::default();
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let action: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| EngineError::Internal(format!("{path} is not JSON lines: {e}")))?;
        if let Some(a) = action.get("add") {
            files.added.push(FileAction::from_json(a));
        }
        if let Some(r) = action.get("remove") {
            files.removed.push(FileAction::from_json(r));
        }
        if let Some(info) = action.get("commitInfo").and_then(|i| i.as_object()) {
            files.info = info.clone();
        }
    }
    Ok(Some(files))
}

/// The values of partition column `column` of every file added or removed in versions
/// `from..=to` of `table`, each parsed by `parse`. None when a commit file is gone or a file
/// carries no parsable value: the caller then treats every partition as changed.
///
/// Files moved without changing rows (`dataChange=false`: a compaction) change no partition,
/// and neither do retention commits: the days they expire keep what was derived from them
/// (rollup days hold no personal data and outlive their source days).
pub(crate) async fn changed_partitions<T: Ord>(
    storage: &Storage,
    table: &str,
    column: &str,
    from: u64,
    to: u64,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<BTreeSet<T>>> {
    let mut values = BTreeSet::new();
    for v in from..=to {
        let Some(files) = commit_files(storage, table, v).await? else {
            warn!(
                table,
                version = v,
                "commit file is gone; recomputing everything"
            );
            return Ok(None);
        };
        if files.info.contains_key(RETENTION_MARKER) {
            continue;
        }
        for file in files
            .added
            .iter()
            .chain(&files.removed)
            .filter(|f| f.data_change)
        {
            match file.partition(column).and_then(&parse) {
                Some(value) => {
                    values.insert(value);
                }
                None => return Ok(None),
            }
        }
    }
    Ok(Some(values))
}

/// The `event_date`s of the files added or removed in versions `from..=to` of a table, read
/// from its commit files (compactions and retention runs left out, see
/// [`changed_partitions`]). None when a commit file is gone or a file carries no date: the
/// caller then recomputes everything.
pub async fn changed_dates(
    storage: &Storage,
    table: &str,
    from: u64,
    to: u64,
) -> Result<Option<BTreeSet<NaiveDate>>> {
    changed_partitions(storage, table, "event_date", from, to, |d| {
        NaiveDate::parse_from_str(d, "%Y-%m-%d").ok()
    })
    .await
}

/// The files removed by every commit of `table` whose commit file holds `marker` (the key an
/// operation puts in its `commitInfo`): what such an operation may have left in storage when
/// it was interrupted between its commit and its deletes.
pub(crate) async fn files_removed_by_marked_commits(
    storage: &Storage,
    table: &str,
    marker: &str,
) -> Result<Vec<String>> {
    let store = storage.store();
    let log = layout::delta_log_dir(table);
    let entries: Vec<_> = store
        .list(Some(&log))
        .try_collect()
        .await
        .map_err(|e| EngineError::Internal(format!("listing {log}: {e}")))?;
    let mut removed = Vec::new();
    for e in entries
        .iter()
        .filter(|e| e.location.as_ref().ends_with(".json"))
    {
        let bytes = storage.read(&e.location).await?;
        if !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()) {
            continue;
        }
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
            if let Some(path) = v.get("remove").and_then(|r| FileAction::from_json(r).path) {
                removed.push(path);
            }
        }
    }
    Ok(removed)
}

/// The Delta statistics (JSON) each data file's add action carries in the loaded version of
/// `table`, by path relative to the table: what a rewrite of the file keeps the bounds of.
pub(crate) fn file_stats(table: &DeltaTable) -> Result<HashMap<String, Option<String>>> {
    Ok(table
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| (f.path().to_string(), f.stats()))
        .collect())
}

/// A data file of the loaded version of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LiveFile {
    /// Relative to the table, as the log names it.
    pub path: String,
    pub size: u64,
    /// Its value of the table's partition column (None when the entry carries none).
    pub partition: Option<String>,
    /// Its rows, from the log's statistics (None when they carry no count).
    pub rows: Option<u64>,
    /// When it was written, in milliseconds since the epoch.
    pub modified_ms: i64,
}

impl LiveFile {
    /// Its partition value as a date (None when it carries none, or not a date).
    pub fn day(&self) -> Option<NaiveDate> {
        NaiveDate::parse_from_str(self.partition.as_deref()?, "%Y-%m-%d").ok()
    }
}

/// The data files of the loaded version of `table`, with their values of `partition_column`.
pub(crate) fn live_files(table: &DeltaTable, partition_column: &str) -> Result<Vec<LiveFile>> {
    Ok(table
        .snapshot()?
        .log_data()
        .iter()
        .map(|f| LiveFile {
            path: f.path().to_string(),
            size: u64::try_from(f.size()).unwrap_or(0),
            partition: f
                .partition_values_map()
                .get(partition_column)
                .cloned()
                .flatten(),
            rows: f.num_records().map(|n| n as u64),
            modified_ms: f.modification_time(),
        })
        .collect())
}

/// The files the loaded state of `table` remembers as removed (tombstones), each with its
/// removal time in milliseconds since the epoch when the log recorded one. Paths are
/// relative to the table. Tombstones leave the state once checkpoints drop them (after the
/// table's `delta.deletedFileRetentionDuration`).
pub(crate) async fn tombstones(table: &DeltaTable) -> Result<HashMap<String, Option<i64>>> {
    let log_store = table.log_store();
    let removed: HashMap<String, Option<i64>> = table
        .snapshot()?
        .all_tombstones(log_store.as_ref())
        .map_ok(|t| (t.path().to_string(), t.deletion_timestamp()))
        .try_collect()
        .await?;
    Ok(removed)
}

/// The version the newest checkpoint of `table` holds (None: no checkpoint yet), from the
/// log's `_last_checkpoint` pointer.
pub(crate) async fn last_checkpoint(storage: &Storage, table: &str) -> Result<Option<u64>> {
    let path = layout::last_checkpoint_file(table);
    let Some(bytes) = storage.read_if_exists(&path).await? else {
        return Ok(None);
    };
    let pointer: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| EngineError::Internal(format!("{path} is not JSON: {e}")))?;
    Ok(pointer.get("version").and_then(|v| v.as_u64()))
}

/// The data files in storage under `tables/<name>/`, whether a version references them or
/// not (the log directory and hidden or temporary entries are no data files:
/// [`layout::is_data_file`]). What vacuum, table health and a purge's leftover check compare
/// with the log.
pub(crate) async fn stored_data_files(
    storage: &Storage,
    name: &str,
) -> Result<Vec<object_store::ObjectMeta>> {
    let dir = layout::table_dir(name);
    let listed: Vec<object_store::ObjectMeta> = storage
        .store()
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|e| EngineError::Internal(format!("listing {dir}: {e}")))?;
    Ok(listed
        .into_iter()
        .filter(|m| layout::relative_to_table(name, &m.location).is_some_and(layout::is_data_file))
        .collect())
}
