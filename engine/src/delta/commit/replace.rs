//! Rollup partition replaces: an overwrite of the days a rollup recomputed, or a splice of
//! some of their rows (a purge's groups), recording the source version it consumed, fenced
//! against compactions of the rollup.

use std::collections::BTreeSet;

use arrow::array::RecordBatch;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Remove, Transaction};
use deltalake::operations::write::SchemaMode;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use tracing::debug;

use super::rewrite_fence;
use crate::delta::{layout, log};
use crate::registry::TableSpec;
use crate::writer::writer_properties;
use crate::{EngineError, Result, Storage};

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

/// Replaces partitions `partitions` (values of the partition column; every partition when
/// None) of `table` with files `adds`, written already and holding all of their new rows: one
/// commit that removes every live file of those partitions and records `replace`'s `txn` and
/// the rewrite fence, as [`replace_partitions`] does, without delta-rs' write path (so each
/// day's file is written on its own task, as soon as the day is computed). When a compaction
/// of the table lands first, its files are read again and the commit is made again; when a run
/// of the same rollup got as far, its commit stands and `adds` are deleted. Returns the new
/// version.
pub(crate) async fn replace_with_files(
    storage: &Storage,
    table: &DeltaTable,
    spec: &TableSpec,
    partitions: Option<&BTreeSet<String>>,
    adds: Vec<Add>,
    replace: &PartitionReplace,
) -> Result<Option<u64>> {
    let mut table = table.clone();
    for attempt in 1..=MAX_REPLACE_ATTEMPTS {
        let removes: Vec<Remove> = log::live_files(&table, spec.partition_column)?
            .iter()
            .filter(|f| {
                partitions.is_none_or(|p| f.partition.as_ref().is_some_and(|v| p.contains(v)))
            })
            .map(|f| super::removal_of(f, spec.partition_column, true))
            .collect();
        if let Some(version) = commit_once(&table, spec, removes, adds.clone(), replace).await? {
            return Ok(Some(version));
        }
        table.update_state().await?;
        let stored = log::txn_version(&table, &replace.app_id).await?;
        if stored.is_some_and(|v| v >= replace.version) || attempt == MAX_REPLACE_ATTEMPTS {
            delete_files(storage, spec, &adds).await?;
            if stored.is_some_and(|v| v >= replace.version) {
                return Ok(table.version());
            }
        }
        debug!(
            table = spec.name,
            attempt, "partition replace conflicted; committing again"
        );
    }
    Err(EngineError::Internal(format!(
        "replacing partitions of {}: other writers kept changing its files \
         ({MAX_REPLACE_ATTEMPTS} attempts)",
        spec.name
    )))
}

/// Replaces rows of the partitions `replace` selects by removing files `removes` and adding
/// `adds` (written already: the removed files spliced without the replaced rows, and those
/// rows recomputed), in one commit that records `replace`'s `txn` and the rewrite fence, like
/// [`replace_partitions`]. None when another commit conflicted (a compaction of the table,
/// another run): nothing is committed, the added files are deleted, and the caller replaces
/// the partitions whole instead.
pub(crate) async fn splice_partitions(
    storage: &Storage,
    table: &DeltaTable,
    spec: &TableSpec,
    removes: Vec<Remove>,
    adds: Vec<Add>,
    replace: &PartitionReplace,
) -> Result<Option<u64>> {
    let committed = commit_once(table, spec, removes, adds.clone(), replace).await?;
    if committed.is_none() {
        delete_files(storage, spec, &adds).await?;
    }
    Ok(committed)
}

/// One commit of `removes` and `adds` on the loaded state of `table`, recording `replace`'s
/// `txn` and the rewrite fence; None when it lost a conflict (nothing committed).
async fn commit_once(
    table: &DeltaTable,
    spec: &TableSpec,
    removes: Vec<Remove>,
    adds: Vec<Add>,
    replace: &PartitionReplace,
) -> Result<Option<u64>> {
    let mut actions: Vec<Action> = removes.into_iter().map(Action::Remove).collect();
    actions.extend(adds.into_iter().map(Action::Add));
    let props = CommitProperties::default()
        .with_application_transaction(Transaction::new(&replace.app_id, replace.version))
        .with_application_transaction(rewrite_fence(table, None))
        .with_max_retries(10);
    let operation = DeltaOperation::Write {
        mode: SaveMode::Overwrite,
        partition_by: Some(vec![spec.partition_column.to_string()]),
        predicate: replace.replace_where.clone(),
    };
    let started = std::time::Instant::now();
    let committed = CommitBuilder::from(props)
        .with_actions(actions)
        .build(Some(table.snapshot()?), table.log_store(), operation)
        .await;
    match committed {
        Ok(c) => {
            super::observe::committed(spec.name, "replace", started);
            Ok(Some(c.version()))
        }
        Err(DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(e),
        }) => {
            super::observe::conflicted(spec.name, "replace");
            debug!(table = spec.name, error = %e, "partition replace conflicted");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Deletes files `adds` of table `spec` that no commit references.
async fn delete_files(storage: &Storage, spec: &TableSpec, adds: &[Add]) -> Result<()> {
    for add in adds {
        storage
            .delete_if_present(&layout::table_file(spec.name, &add.path))
            .await?;
    }
    Ok(())
}
