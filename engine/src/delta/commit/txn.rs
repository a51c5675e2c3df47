//! Raising one `txn` version in a commit that holds nothing else: how a purge moves the GDPR
//! tombstone marker of a raw table (see [`super::TOMBSTONE_MARKER_APP_ID`]).

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::Transaction;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableError};
use tracing::debug;

use crate::delta::log;
use crate::Result;

/// Attempts of [`raise_txn`] (each lost attempt means another writer committed meanwhile).
const MAX_RAISE_ATTEMPTS: u32 = 100;

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
