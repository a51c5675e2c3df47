//! Commits that remove files they have read, each fenced by [`super::REWRITE_FENCE_APP_ID`]:
//! a purge's rewrite (remove + add), a compaction (the same rows in fewer files,
//! `dataChange=false`) and a retention run (expired partitions removed).

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, Remove};
use deltalake::protocol::DeltaOperation;
use deltalake::{DeltaTable, DeltaTableError};
use object_store::path::Path;
use tracing::debug;

use super::{rewrite_fence, RETENTION_MARKER};
use crate::delta::layout;
use crate::delta::log::LiveFile;
use crate::{Result, Storage};

/// The `commitInfo` key of compaction commits (for operators reading the log).
const COMPACTION_MARKER: &str = "strata-compaction";

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
/// [`super::REWRITE_FENCE_APP_ID`] (a compaction, a retention run) that landed after `table`
/// was loaded (delta-rs retries other conflicts up to 20 times). Returns the new version, or
/// None when it lost such a conflict: nothing was committed, and the added files, nobody's,
/// are deleted.
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
    let committed = commit_rewrite(table, name, actions, operation, commit_info, "purge").await?;
    if committed.is_none() {
        for path in &added {
            storage.delete_if_present(path).await?;
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
    let info = (COMPACTION_MARKER, name);
    commit_rewrite(table, name, actions, operation, info, "compaction").await
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
    let info = (RETENTION_MARKER, cutoff);
    commit_rewrite(table, name, actions, operation, info, "retention").await
}

/// One commit of `actions` built on the loaded state of `table`, fenced by
/// [`super::REWRITE_FENCE_APP_ID`], with `(key, value)` in its `commitInfo`. None when it lost
/// a conflict (nothing committed).
async fn commit_rewrite(
    table: &DeltaTable,
    name: &str,
    actions: Vec<Action>,
    operation: DeltaOperation,
    commit_info: (&str, &str),
    label: super::Operation,
) -> Result<Option<u64>> {
    let (key, value) = commit_info;
    let started = std::time::Instant::now();
    let fence = rewrite_fence(table, Some(chrono::Utc::now().timestamp_millis()));
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
        Ok(c) => {
            super::observe::committed(name, label, started);
            Ok(Some(c.version()))
        }
        Err(DeltaTableError::Transaction {
            source: TransactionError::CommitConflict(e),
        }) => {
            debug!(table = name, error = %e, "rewrite commit conflict");
            super::observe::conflicted(name, label);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}
