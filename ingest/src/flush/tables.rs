//! The tables one ingest process writes, opened once and kept across flushes.

use std::collections::HashMap;

use strata_engine::EventTable;
use strata_schemas::EventKind;

use crate::partition::StoredOffsets;
use crate::tombstone::TombstoneFilter;
use crate::Result;

/// The tables ingest writes, and the tombstones their commits are filtered and fenced with.
pub(crate) struct Tables {
    pub(crate) events: HashMap<EventKind, EventTable>,
    pub(crate) dead_letters: EventTable,
    pub(crate) tombstones: TombstoneFilter,
}

impl Tables {
    /// The `txn` versions of one app id in its event table and in `dead_letters`.
    pub(crate) async fn stored_offsets(
        &mut self,
        kind: EventKind,
        app_id: &str,
    ) -> Result<StoredOffsets> {
        let ids = [app_id.to_string()];
        let table_next = self
            .event(kind)
            .txn_versions(&ids)
            .await?
            .remove(app_id)
            .flatten();
        let dlq_next = self
            .dead_letters
            .txn_versions(&ids)
            .await?
            .remove(app_id)
            .flatten();
        Ok(StoredOffsets {
            table_next,
            dlq_next,
        })
    }

    pub(crate) fn event(&mut self, kind: EventKind) -> &mut EventTable {
        self.events
            .get_mut(&kind)
            .expect("a table is opened for every bound kind")
    }
}
