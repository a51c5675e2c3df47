//! The one place that writes a Delta log: creating a table, appending fenced by `txn`
//! versions, raising a `txn` version (the GDPR tombstone marker), replacing partitions
//! (rollups), removing + adding files (purge rewrites, compactions, retention), each with its
//! conflict retry, and checkpoints with the cleanup of expired log entries.
//!
//! ```text
//! mod.rs          create_table, set_stats_columns; the txn app ids and commitInfo markers;
//!                 the rewrite fence
//! append.rs       fenced append: offsets + tombstone marker as txn, files written once
//! txn.rs          raise_txn: one txn, no files (the GDPR tombstone marker)
//! replace.rs      rollup partition replace, whole or spliced (rewrite fence)
//! rewrite.rs      remove + add: purge rewrite, compaction, retention (rewrite fence)
//! maintenance.rs  checkpoint, cleanup of expired log entries
//! observe.rs      the process's commit observer (a server's metrics)
//! ```

mod append;
mod maintenance;
mod observe;
mod replace;
mod rewrite;
mod txn;

use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::{StructType, Transaction};
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableBuilder, TableProperty};
use tracing::{debug, info};

use super::log;
use crate::registry::TableSpec;
use crate::{EngineError, Result, Storage};

pub(crate) use append::append;
pub use append::{AppendOutcome, RawAppend, TxnUpdate};
pub(crate) use maintenance::{checkpoint, clean_expired_log};
pub use observe::{set_commit_observer, CommitObserver, Operation};
pub(crate) use replace::{
    replace_partitions, replace_with_files, splice_partitions, PartitionReplace,
};
pub(crate) use rewrite::{commit_compaction, commit_expiry, removal, removal_of, remove_and_add};
pub(crate) use txn::raise_txn;

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

/// The [`REWRITE_FENCE_APP_ID`] `txn` of a commit built on the loaded version of `table`
/// (-1 when it has none), with `last_updated` (ms since the epoch) when the caller records one.
fn rewrite_fence(table: &DeltaTable, last_updated: Option<i64>) -> Transaction {
    let read_version = table.version().map_or(-1, |v| v as i64);
    Transaction::new_with_last_update(REWRITE_FENCE_APP_ID, read_version, last_updated)
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

/// Sets `table`'s `delta.dataSkippingStatsColumns` to `spec`'s list when it holds another one
/// (a table created before the registry's list changed): one metadata commit, which returns
/// the table at its version; None when the list is already the one stored.
pub(crate) async fn set_stats_columns(
    table: &DeltaTable,
    spec: &TableSpec,
) -> Result<Option<DeltaTable>> {
    let key = TableProperty::DataSkippingStatsColumns.as_ref();
    let wanted = spec.stats_columns.join(",");
    let stored = table
        .snapshot()?
        .metadata()
        .configuration()
        .get(key)
        .cloned();
    if stored.as_deref() == Some(wanted.as_str()) {
        return Ok(None);
    }
    let table = table
        .clone()
        .set_tbl_properties()
        .with_properties(std::collections::HashMap::from([(key.to_string(), wanted)]))
        .await?;
    info!(
        table = spec.name,
        "statistics columns set to the registry's"
    );
    Ok(Some(table))
}
