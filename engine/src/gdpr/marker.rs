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

use crate::delta::commit::{self, TOMBSTONE_MARKER_APP_ID};
use crate::registry::TableSpec;
use crate::table::EventTable;
use crate::{EngineError, Result, Storage};

/// Makes the marker of `table` at least `tombstones` (creating the table when it does not
/// exist yet, so that no writer can start it without the marker). Returns the table version
/// at which the marker holds: a scan of this version or a later one sees every row committed
/// without the tombstones of `tombstones`.
pub(crate) async fn commit_tombstone_marker(
    storage: &Storage,
    spec: TableSpec,
    tombstones: u64,
) -> Result<u64> {
    let mut table = EventTable::open_or_create(storage, spec).await?;
    let name = table.name();
    // Already there (a retried purge, a later purge, or an ingest commit filtered with these
    // tombstones already): never lowered. An ingest commit (which carries the same app id)
    // landing first sends it round again.
    let raised = commit::raise_txn(
        table.delta_mut(),
        name,
        TOMBSTONE_MARKER_APP_ID,
        tombstones as i64,
    )
    .await?;
    raised.ok_or_else(|| {
        EngineError::Internal(format!(
            "could not commit the tombstone marker to {name}: other commits kept landing first"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RawAppend;
    use strata_schemas::EventKind;

    #[tokio::test]
    async fn ingest_filtered_before_the_marker_is_refused_and_never_lowers_it() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
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
