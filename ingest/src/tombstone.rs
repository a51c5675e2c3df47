//! Late events of purged subjects: a purge records a keyed hash of the subject's ids and the
//! request time (`gdpr_tombstones`); ingest drops events of such a subject that occurred
//! before that time, counts them, and never logs the id.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::filter_record_batch;
use strata_engine::gdpr::{GdprKey, Tombstones};
use strata_engine::Storage;
use tracing::warn;

use crate::Result;

/// How often the tombstone table is looked at for new purges.
const REFRESH: Duration = Duration::from_secs(2);

pub(crate) struct TombstoneFilter {
    storage: Storage,
    key: Option<GdprKey>,
    by_hash: HashMap<String, i64>,
    version: Option<u64>,
    checked: Option<Instant>,
}

impl TombstoneFilter {
    pub(crate) fn new(storage: &Storage) -> Self {
        Self {
            storage: storage.clone(),
            key: None,
            by_hash: HashMap::new(),
            version: None,
            checked: None,
        }
    }

    /// Reloads the tombstones when the table has a new version (at most every 2 s).
    pub(crate) async fn refresh(&mut self) {
        if self.checked.is_some_and(|t| t.elapsed() < REFRESH) {
            return;
        }
        self.checked = Some(Instant::now());
        match Tombstones::load_if_changed(&self.storage, self.version).await {
            Ok(Some(t)) => {
                if !t.by_hash.is_empty() && self.key.is_none() {
                    match GdprKey::load_or_create(&self.storage).await {
                        Ok(k) => self.key = Some(k),
                        Err(e) => {
                            warn!(error = %e, "cannot read the GDPR key; tombstones not applied yet");
                            return;
                        }
                    }
                }
                self.by_hash = t.by_hash;
                self.version = t.version;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "reading tombstones failed; using the last set"),
        }
    }

    /// Drops the rows of tombstoned subjects that occurred before their purge request.
    pub(crate) fn apply(&self, batch: RecordBatch) -> Result<(RecordBatch, u64)> {
        let Some(key) = &self.key else {
            return Ok((batch, 0));
        };
        if self.by_hash.is_empty() || batch.num_rows() == 0 {
            return Ok((batch, 0));
        }
        let occurred = batch.column_by_name("occurred_at").and_then(|c| {
            c.as_any()
                .downcast_ref::<TimestampMicrosecondArray>()
                .cloned()
        });
        let id_cols: Vec<StringArray> = ["user_id", "anonymous_id", "session_id"]
            .iter()
            .filter_map(|c| batch.column_by_name(c))
            .filter_map(|c| c.as_any().downcast_ref::<StringArray>().cloned())
            .collect();
        let mut keep = Vec::with_capacity(batch.num_rows());
        let mut dropped = 0u64;
        for row in 0..batch.num_rows() {
            let at = occurred
                .as_ref()
                .filter(|o| o.is_valid(row))
                .map(|o| o.value(row));
            let tombstoned = id_cols.iter().any(|col| {
                col.is_valid(row)
                    && self
                        .by_hash
                        .get(&key.hash(col.value(row)))
                        .is_some_and(|&requested| at.is_none_or(|t| t < requested))
            });
            dropped += u64::from(tombstoned);
            keep.push(!tombstoned);
        }
        if dropped == 0 {
            return Ok((batch, 0));
        }
        Ok((
            filter_record_batch(&batch, &BooleanArray::from(keep))?,
            dropped,
        ))
    }
}
