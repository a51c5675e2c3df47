//! A Delta table Strata appends to: opened (or created) from its declaration in the
//! registry, appended to through [`crate::delta::commit`], which fences every append by
//! `txn` versions and the GDPR tombstone marker.

use std::collections::HashMap;

use arrow::array::RecordBatch;
use deltalake::{DeltaTable, DeltaTableError};

use crate::delta::commit::{self, AppendOutcome, RawAppend, TxnUpdate};
use crate::delta::log;
use crate::registry::TableSpec;
use crate::{EngineError, Result, Storage};

/// A Delta table Strata appends to.
pub struct EventTable {
    spec: TableSpec,
    table: DeltaTable,
}

impl std::fmt::Debug for EventTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventTable")
            .field("name", &self.spec.name)
            .field("version", &self.table.version())
            .finish()
    }
}

impl EventTable {
    /// Loads the table, creating it on first use. Two processes creating it at once is fine:
    /// the loser of the race for version 0 loads what the winner made.
    pub async fn open_or_create(storage: &Storage, spec: TableSpec) -> Result<Self> {
        if let Ok(dir) = storage.table_url(spec.name).to_file_path() {
            std::fs::create_dir_all(&dir).map_err(|e| {
                EngineError::config(format!(
                    "cannot create table directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        // A table never created is not loaded first (the Delta loader logs a missing table
        // at error level).
        if log::has_log(storage, spec.name).await {
            match log::load(storage, spec.name).await {
                Ok(table) => return Ok(Self { spec, table }),
                Err(DeltaTableError::NotATable(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let table = commit::create_table(storage, &spec).await?;
        Ok(Self { spec, table })
    }

    /// Brings the table's statistics columns (`delta.dataSkippingStatsColumns`) to the
    /// registry's list, for a table created before it changed. Only for a table whose writer
    /// calls it (a metadata commit fails a concurrent writer's commit).
    pub(crate) async fn align_stats_columns(&mut self) -> Result<()> {
        if let Some(table) = commit::set_stats_columns(&self.table, &self.spec).await? {
            self.table = table;
        }
        Ok(())
    }

    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    pub fn spec(&self) -> &TableSpec {
        &self.spec
    }

    pub fn delta(&self) -> &DeltaTable {
        &self.table
    }

    /// The loaded state, for the commits of `delta::commit` that are not appends.
    pub(crate) fn delta_mut(&mut self) -> &mut DeltaTable {
        &mut self.table
    }

    pub fn version(&self) -> Option<u64> {
        self.table.version()
    }

    /// Brings the loaded state up to the latest commit.
    pub async fn refresh(&mut self) -> Result<()> {
        self.table.update_state().await?;
        Ok(())
    }

    /// The offsets stored in the table for the given app ids (as of the loaded state).
    pub async fn txn_versions(&self, app_ids: &[String]) -> Result<HashMap<String, Option<i64>>> {
        log::txn_versions(&self.table, app_ids).await
    }

    /// (Kafka partition, event id) of the rows that came from each given partition at or
    /// after its offset: what the ingest retry window remembers across restarts. One scan
    /// for all the partitions of an assignment.
    pub async fn recent_event_ids(&self, from: &[(i32, i64)]) -> Result<Vec<(i32, String)>> {
        if from.is_empty()
            || self.table.version().is_none()
            || self.spec.schema.index_of("event_id").is_err()
        {
            return Ok(vec![]);
        }
        let ctx = datafusion::prelude::SessionContext::new();
        self.table.update_datafusion_session(&ctx.state())?;
        ctx.register_table("t", self.table.table_provider().await?)?;
        let predicate = from
            .iter()
            .map(|(p, o)| format!("(kafka_partition = {p} AND kafka_offset >= {o})"))
            .collect::<Vec<_>>()
            .join(" OR ");
        let df = ctx
            .sql(&format!(
                "SELECT kafka_partition, event_id FROM t WHERE {predicate}"
            ))
            .await?;
        let mut ids = Vec::new();
        for batch in df.collect().await? {
            let parts = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Int32)?;
            let parts = parts
                .as_any()
                .downcast_ref::<arrow::array::Int32Array>()
                .expect("cast to Int32");
            let col = arrow::compute::cast(batch.column(1), &arrow::datatypes::DataType::Utf8)?;
            let col = col
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .expect("cast to Utf8");
            ids.extend(
                parts
                    .iter()
                    .zip(col.iter())
                    .filter_map(|(p, id)| Some((p?, id?.to_string()))),
            );
        }
        Ok(ids)
    }

    /// Writes `batches` as Parquet (one file per partition value, rows sorted) and commits
    /// them with the `txn` offsets in one Delta commit.
    ///
    /// Fencing: before committing, the table's stored version of every `txn` must equal its
    /// `expected`; otherwise another writer has taken the partition over and nothing is
    /// committed ([`EngineError::Fenced`]). A concurrent commit touching the same app id
    /// makes Delta's conflict check fail; the check is then repeated on the new state.
    ///
    /// Rows that can hold a data subject and come from outside (ingest) go through
    /// [`EventTable::append_filtered`] instead, which is also fenced by GDPR purges.
    pub async fn append(
        &mut self,
        batches: &[RecordBatch],
        txns: &[TxnUpdate],
    ) -> Result<AppendOutcome> {
        match commit::append(&mut self.table, &self.spec, batches, txns, None).await? {
            RawAppend::Committed(done) => Ok(done),
            RawAppend::StaleTombstones { .. } => Err(EngineError::Internal(
                "an append without a tombstone fence was fenced by tombstones".into(),
            )),
        }
    }

    /// [`EventTable::append`] of rows that ingest filtered with the GDPR tombstones of
    /// `gdpr_tombstones` version `tombstones` (None: no tombstone table yet), fenced against
    /// purges.
    ///
    /// A purge writes its tombstones (version T), then commits the marker
    /// `txn(`[`crate::TOMBSTONE_MARKER_APP_ID`]`, T)` to every raw table, and only then scans the
    /// table (a snapshot at or after the marker) and rewrites it. This commit carries the same
    /// app id (with the version it was filtered with, so the marker never goes down), and is
    /// refused ([`RawAppend::StaleTombstones`], nothing committed, no file left behind) when
    /// the stored marker is newer than `tombstones`: the caller reloads the tombstones,
    /// filters again and retries.
    ///
    /// Why nothing of a purged subject can slip in: Delta orders commits, and delta-rs's
    /// conflict checker fails a commit when any commit that landed after its read snapshot
    /// carries a `txn` of an app id the commit itself carries (`ConcurrentTransaction`), so the
    /// marker check of `delta::commit::append` and this commit act as one step. Either this
    /// commit lands before the marker: then the purge's scan, which starts after the marker,
    /// sees these rows and removes them; or it lands after the marker: then it saw the marker
    /// (directly, or after a conflict sent it round the loop again) and was filtered with
    /// tombstones at least as new as T, which drop the subject.
    pub async fn append_filtered(
        &mut self,
        batches: &[RecordBatch],
        txns: &[TxnUpdate],
        tombstones: Option<u64>,
    ) -> Result<RawAppend> {
        // Version 0 of `gdpr_tombstones` is its creation commit, which holds no tombstone:
        // the same filter as no table at all.
        let filtered_with = Some(tombstones.map_or(0, |v| v as i64));
        commit::append(&mut self.table, &self.spec, batches, txns, filtered_with).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::layout;
    use crate::SqlSession;
    use strata_schemas::{EventDecoder, EventKind, RawMessage};

    fn batch(ids: &[&str]) -> RecordBatch {
        let payloads: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| format!(r#"{{"schema_version":1,"event_id":"{id}","occurred_at":"2026-10-0{}T12:00:00Z","user_id":"u-1","item_id":"i","item_type":"profile","source":"search","target_url":"/p"}}"#, 1 + i % 2))
            .collect();
        let raw = RawMessage::sequence(&payloads, 0, 0);
        let d = EventDecoder::new(EventKind::LinkClick)
            .decode(&raw, 1_800_000_000_000_000)
            .unwrap();
        assert!(d.rejects.is_empty());
        d.batch
    }

    #[tokio::test]
    async fn append_carries_offsets_and_fences_stale_writers() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        let mut a =
            EventTable::open_or_create(&storage, TableSpec::for_events(EventKind::LinkClick))
                .await
                .unwrap();
        let mut b =
            EventTable::open_or_create(&storage, TableSpec::for_events(EventKind::LinkClick))
                .await
                .unwrap();
        let app = "strata-g-clicks-0".to_string();

        let ids = [
            "0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11",
            "1b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11",
        ];
        // The first write of the partition, as both writers believe it to be.
        let first_write = [TxnUpdate {
            app_id: app.clone(),
            expected: None,
            next: 10,
        }];
        let out = a.append(&[batch(&ids[..1])], &first_write).await.unwrap();
        assert_eq!(out.rows, 1);
        assert_eq!(out.files, 1);

        // b still believes the partition was never written: fenced, nothing committed.
        let err = b
            .append(&[batch(&ids[..1])], &first_write)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                EngineError::Fenced {
                    found: Some(10),
                    ..
                }
            ),
            "{err}"
        );

        b.refresh().await.unwrap();
        assert_eq!(
            b.txn_versions(std::slice::from_ref(&app)).await.unwrap()[&app],
            Some(10)
        );
        b.append(
            &[batch(&ids)],
            &[TxnUpdate {
                app_id: app.clone(),
                expected: Some(10),
                next: 20,
            }],
        )
        .await
        .unwrap();

        let session = SqlSession::open(&storage).await.unwrap();
        let (_, rows) = session
            .query("SELECT count(*) AS n, count(DISTINCT event_date) AS d FROM link_clicks")
            .await
            .unwrap();
        let n = rows[0]
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap()
            .value(0);
        assert_eq!(n, 3);
        assert_eq!(
            a.recent_event_ids(&[(0, 0)]).await.unwrap().len(),
            1,
            "a's loaded state is the one it committed"
        );
        a.refresh().await.unwrap();
        assert_eq!(a.recent_event_ids(&[(0, 0)]).await.unwrap().len(), 3);

        // Parquet settings: zstd, bloom filter on user_id, identifiers not in the log stats.
        let commit = layout::commit_file("link_clicks", 1);
        let log = std::fs::read_to_string(dir.path().join(commit.as_ref())).unwrap();
        assert!(log.contains("\"txn\""), "offsets ride in the commit");
        assert!(
            !log.contains("\\\"u-1\\\""),
            "no user id in statistics: {log}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_large_append_is_encoded_by_one_writer_per_core_in_one_commit() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        let mut table =
            EventTable::open_or_create(&storage, TableSpec::for_events(EventKind::LinkClick))
                .await
                .unwrap();
        // 150,000 rows of one day: past twice the rows a writer needs to be worth a task.
        let one = batch(&["0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11"]);
        let rows = 150_000;
        let idx = arrow::array::UInt32Array::from(vec![0u32; rows]);
        let big = arrow::compute::take_record_batch(&one, &idx).unwrap();
        let out = table
            .append(
                &[big],
                &[TxnUpdate {
                    app_id: "strata-g-clicks-0".into(),
                    expected: None,
                    next: rows as i64,
                }],
            )
            .await
            .unwrap();
        assert_eq!(out.rows, rows);
        assert_eq!(out.version, 1, "one commit");
        // One file per writer: as many as the cores, at most two for this many rows.
        assert_eq!(out.files, strata_schemas::cores().min(2));
        let session = SqlSession::open(&storage).await.unwrap();
        assert_eq!(
            session
                .query_i64("SELECT count(*) FROM link_clicks")
                .await
                .unwrap(),
            Some(rows as i64)
        );
    }
}
