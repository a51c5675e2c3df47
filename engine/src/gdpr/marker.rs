//! The tombstone marker: how a purge closes the race with ingest.
//!
//! ```text
//! purge:  tombstones (gdpr_tombstones vT) -> marker txn(strata-gdpr-tombstones, T) in each raw
//!         table -> scan a snapshot at or after the marker -> rewrite -> verify
//! ingest: filter with tombstones vF -> commit rows + txn(strata-gdpr-tombstones, F), refused
//!         when the stored marker is newer than F (reload, filter again, retry)
//! ```
//!
//! Both commits carry the same `txn` app id, and delta-rs's conflict checker fails a commit
//! when a commit that landed after its read snapshot carries a `txn` of an app id the commit
//! itself carries (`check_for_updated_application_transaction_ids_that_current_txn_depends_on`
//! in `kernel/transaction/conflict_checker.rs`; the app ids of a commit are those of its own
//! `txn` actions, which `CommitProperties::with_application_transactions` adds to it). So an
//! ingest commit either lands before the marker, and the purge's scan (which starts after the
//! marker) sees and removes its rows, or after it, and then it was checked against the marker
//! and filtered with tombstones at least as new as the purge's. See
//! [`crate::EventTable::append_filtered`].

use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::Transaction;
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::DeltaTableError;

use crate::table::{EventTable, TableSpec, TOMBSTONE_MARKER_APP_ID};
use crate::{EngineError, Result, Storage};

/// Attempts before giving up (each lost attempt means another writer committed meanwhile).
const MAX_ATTEMPTS: u32 = 100;

/// Makes the marker of `table` at least `tombstones` (creating the table when it does not
/// exist yet, so that no writer can start it without the marker). Returns the table version
/// at which the marker holds: a scan of this version or a later one sees every row committed
/// without the tombstones of `tombstones`.
pub(crate) async fn commit_tombstone_marker(
    storage: &Storage,
    spec: TableSpec,
    tombstones: u64,
) -> Result<u64> {
    let want = tombstones as i64;
    let mut table = EventTable::open_or_create(storage, spec).await?;
    let ids = [TOMBSTONE_MARKER_APP_ID.to_string()];
    for attempt in 0..MAX_ATTEMPTS {
        table.refresh().await?;
        let stored = table
            .txn_versions(&ids)
            .await?
            .remove(TOMBSTONE_MARKER_APP_ID)
            .flatten();
        let version = table.version().unwrap_or(0);
        // Already there (a retried purge, a later purge, or an ingest commit filtered with
        // these tombstones already): never lower it.
        if stored.is_some_and(|v| v >= want) {
            return Ok(version);
        }
        let props = CommitProperties::default()
            .with_application_transaction(Transaction::new_with_last_update(
                TOMBSTONE_MARKER_APP_ID,
                want,
                Some(chrono::Utc::now().timestamp_millis()),
            ))
            .with_max_retries(20);
        let committed = CommitBuilder::from(props)
            .with_actions(Vec::new())
            .build(
                Some(table.delta().snapshot()?),
                table.delta().log_store(),
                DeltaOperation::Write {
                    mode: SaveMode::Append,
                    partition_by: None,
                    predicate: None,
                },
            )
            .await;
        match committed {
            Ok(done) => return Ok(done.version()),
            // An ingest commit (which carries the same app id) landed first: look again.
            Err(DeltaTableError::Transaction { source }) => {
                tracing::debug!(table = table.name(), attempt, error = %source, "tombstone marker lost a race; again");
                tokio::time::sleep(std::time::Duration::from_millis(
                    5 * u64::from(attempt.min(20)),
                ))
                .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(EngineError::Internal(format!(
        "could not commit the tombstone marker to {}: other commits kept landing first",
        table.name()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{RawAppend, StorageOptions};
    use strata_schemas::EventKind;

    #[tokio::test]
    async fn ingest_filtered_before_the_marker_is_refused_and_never_lowers_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageOptions {
            url: dir.path().to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let spec = TableSpec::for_events(EventKind::LinkClick);
        let mut ingest = EventTable::open_or_create(&storage, spec.clone())
            .await
            .unwrap();
        let empty = arrow::array::RecordBatch::new_empty(spec.schema.clone());
        // Before any purge: commits, and sets the marker to what it was filtered with.
        let first = ingest
            .append_filtered(std::slice::from_ref(&empty), &[], Some(2))
            .await
            .unwrap();
        assert!(matches!(first, RawAppend::Committed(_)), "{first:?}");

        commit_tombstone_marker(&storage, spec.clone(), 5)
            .await
            .unwrap();
        // Filtered with older tombstones: refused.
        let stale = ingest
            .append_filtered(std::slice::from_ref(&empty), &[], Some(4))
            .await
            .unwrap();
        assert!(
            matches!(
                stale,
                RawAppend::StaleTombstones {
                    marker: 5,
                    filtered_with: 4
                }
            ),
            "{stale:?}"
        );
        // With the new ones: committed; an older purge's marker does not lower it.
        let ok = ingest
            .append_filtered(std::slice::from_ref(&empty), &[], Some(7))
            .await
            .unwrap();
        assert!(matches!(ok, RawAppend::Committed(_)), "{ok:?}");
        commit_tombstone_marker(&storage, spec.clone(), 6)
            .await
            .unwrap();
        ingest.refresh().await.unwrap();
        let ids = [TOMBSTONE_MARKER_APP_ID.to_string()];
        assert_eq!(
            ingest.txn_versions(&ids).await.unwrap()[TOMBSTONE_MARKER_APP_ID],
            Some(7)
        );
    }
}
