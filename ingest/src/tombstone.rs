//! Late events of purged subjects: a purge records a keyed hash of the subject's ids and the
//! request time (`gdpr_tombstones`); ingest drops events of such a subject that occurred
//! before that time, and dead letters about them, counts them, and never logs the id.
//!
//! The tombstone version a batch was filtered with rides in its commit and fences it against
//! purges ([`strata_engine::EventTable::append_filtered`]): a purge that started after the
//! filtering makes the commit come back, and the flush reloads and filters again.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::filter_record_batch;
use strata_engine::gdpr::{id_tokens, GdprKey, Tombstones};
use strata_engine::{registry, Storage};
use tracing::warn;

use crate::Result;

/// How often the tombstone table is looked at for new purges.
const REFRESH: Duration = Duration::from_secs(2);
/// Lengths of a valid subject id (the id rule): shorter or longer tokens are not hashed.
const ID_LEN: std::ops::RangeInclusive<usize> = 3..=256;

pub(crate) struct TombstoneFilter {
    storage: Storage,
    /// The columns of event batches that hold a person id (from the engine's registry).
    id_columns: Vec<&'static str>,
    key: Option<GdprKey>,
    by_hash: HashMap<String, i64>,
    version: Option<u64>,
    checked: Option<Instant>,
}

impl TombstoneFilter {
    pub(crate) fn new(storage: &Storage) -> Self {
        Self {
            storage: storage.clone(),
            id_columns: registry::person_id_columns(),
            key: None,
            by_hash: HashMap::new(),
            version: None,
            checked: None,
        }
    }

    /// The `gdpr_tombstones` version the filter holds (None: no tombstone table yet).
    pub(crate) fn version(&self) -> Option<u64> {
        self.version
    }

    /// Reloads the tombstones when the table has a new version (at most every 2 s).
    pub(crate) async fn refresh(&mut self) {
        if self.checked.is_some_and(|t| t.elapsed() < REFRESH) {
            return;
        }
        if let Err(e) = self.reload().await {
            warn!(error = %e, "reading tombstones failed; using the last set");
        }
    }

    /// Reloads the tombstones now, whatever the poll interval: a commit came back because a
    /// purge started after its rows were filtered. Fails rather than keep a stale set.
    pub(crate) async fn reload(&mut self) -> Result<()> {
        self.checked = Some(Instant::now());
        let Some(t) = Tombstones::load_if_changed(&self.storage, self.version).await? else {
            return Ok(());
        };
        if !t.by_hash.is_empty() && self.key.is_none() {
            self.key = Some(GdprKey::load_or_create(&self.storage).await?);
        }
        self.by_hash = t.by_hash;
        self.version = t.version;
        Ok(())
    }

    /// False for a dead letter about a tombstoned subject: its key, or any id-like token of
    /// its payload (the whole tokens a purge matches), hashes to a tombstone. It is kept only
    /// when its payload is JSON with a valid RFC 3339 `occurred_at` at or after the purge
    /// request, like an event (a malformed message often has none: then it is dropped).
    pub(crate) fn keeps_letter(&self, key: Option<&str>, payload: &str) -> bool {
        let Some(hasher) = &self.key else {
            return true;
        };
        if self.by_hash.is_empty() {
            return true;
        }
        let mut requested: Option<i64> = None;
        for id in key.into_iter().chain(id_tokens(payload)) {
            if !ID_LEN.contains(&id.len()) {
                continue;
            }
            if let Some(&at) = self.by_hash.get(&hasher.hash(id)) {
                requested = Some(requested.map_or(at, |r| r.max(at)));
            }
        }
        match requested {
            None => true,
            Some(requested) => occurred_at_us(payload).is_some_and(|t| t >= requested),
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
        let id_cols: Vec<StringArray> = self
            .id_columns
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

/// `occurred_at` of a payload that is a JSON object with a valid RFC 3339 `occurred_at`.
fn occurred_at_us(payload: &str) -> Option<i64> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let at = v.get("occurred_at")?.as_str()?;
    Some(
        chrono::DateTime::parse_from_rfc3339(at)
            .ok()?
            .timestamp_micros(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dead_letters_about_a_purged_subject_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        let key = GdprKey::from_bytes(b"test key");
        let requested = chrono::DateTime::parse_from_rfc3339("2026-10-10T00:00:00Z")
            .unwrap()
            .timestamp_micros();
        let mut f = TombstoneFilter::new(&storage);
        f.by_hash = [(key.hash("u-5"), requested)].into_iter().collect();
        f.key = Some(key);
        let before = r#"{"event_id":"x","occurred_at":"2026-10-09T12:00:00Z","user_id":"u-5"}"#;
        let after = r#"{"event_id":"x","occurred_at":"2026-10-11T12:00:00Z","user_id":"u-5"}"#;
        // By key, by a token of the payload; without a valid occurred_at it goes.
        assert!(!f.keeps_letter(Some("u-5"), "event=click;broken"));
        assert!(!f.keeps_letter(None, before));
        assert!(!f.keeps_letter(
            None,
            r#"[{"user_id":"u-5","occurred_at":"2026-10-11T12:00:00Z"}]"#
        ));
        assert!(!f.keeps_letter(Some("u-5"), r#"{"occurred_at":"yesterday"}"#));
        // Occurred after the request (a new consent), or about someone else: kept.
        assert!(f.keeps_letter(Some("u-5"), after));
        assert!(f.keeps_letter(Some("u-50"), r#"{"user_id":"u-50","note":"xu-5"}"#));
        assert!(f.keeps_letter(None, "event=click;broken"));
    }
}
