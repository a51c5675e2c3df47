//! Rollup partition replaces: an overwrite of the days a rollup recomputed, recording the
//! source version it consumed, fenced against compactions of the rollup.

use arrow::array::RecordBatch;
use deltalake::kernel::transaction::{CommitProperties, TransactionError};
use deltalake::kernel::Transaction;
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::SaveMode;
use deltalake::{DeltaTable, DeltaTableError};
use tracing::debug;

use super::rewrite_fence;
use crate::delta::log;
use crate::registry::TableSpec;
use crate::writer::writer_properties;
use crate::Result;

/// Attempts of [`replace_partitions`] when a compaction of the rollup lands first.
const MAX_REPLACE_ATTEMPTS: u32 = 5;

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
/// It carries the rewrite fence ([`super::REWRITE_FENCE_APP_ID`]): a compaction of the rollup
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
    let rows = batches.iter().map(RecordBatch::num_rows).sum();
    let mut attempt = 1;
    loop {
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new(&replace.app_id, replace.version))
            .with_application_transaction(rewrite_fence(&table, None))
            .with_max_retries(10);
        let mut write = table
            .clone()
            .write(batches.clone())
            .with_save_mode(SaveMode::Overwrite)
            .with_partition_columns([spec.partition_column])
            .with_writer_properties(writer_properties(spec, rows))
            .with_commit_properties(props);
        if replace.new_schema {
            write = write.with_schema_mode(SchemaMode::Overwrite);
        }
        if let Some(predicate) = &replace.replace_where {
            write = write.with_replace_where(predicate.clone());
        }
        let started = std::time::Instant::now();
        match write.await {
            Ok(written) => {
                super::observe::committed(spec.name, "replace", started);
                return Ok(written.version());
            }
            Err(DeltaTableError::Transaction {
                source: TransactionError::CommitConflict(e),
            }) if attempt < MAX_REPLACE_ATTEMPTS => {
                super::observe::conflicted(spec.name, "replace");
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
