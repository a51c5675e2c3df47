use std::collections::HashMap;

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, lexsort_to_indices, take, SortColumn};
use arrow::datatypes::SchemaRef;
use deltalake::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties, TransactionError};
use deltalake::kernel::{Action, Add, StructType, Transaction};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError, TableProperty};
use object_store::path::Path;
use object_store::ObjectStoreExt;
use strata_schemas::{dead_letter_schema, EventKind, DEAD_LETTERS_TABLE, PARTITION_COLUMN};
use tracing::{debug, info, warn};

use crate::writer::writer_properties;
use crate::{EngineError, Result, Storage};

/// What a table looks like and how its files are written.
#[derive(Debug, Clone)]
pub struct TableSpec {
    pub name: &'static str,
    pub schema: SchemaRef,
    pub partition_column: &'static str,
    /// Rows are ordered by this column within each file.
    pub sort_column: &'static str,
    /// Columns that get Delta data-skipping statistics. Identifiers and free text are left
    /// out so that no personal data reaches the transaction log.
    pub stats_columns: &'static [&'static str],
    pub bloom_columns: &'static [&'static str],
    /// Columns where a dictionary would only cost time.
    pub high_cardinality: &'static [&'static str],
    /// Every column LZ4 instead of zstd: for small tables that cold panels read whole, where
    /// the decoder parquet-rs creates per zstd page costs more than the page.
    pub lz4: bool,
}

impl TableSpec {
    pub fn for_events(kind: EventKind) -> Self {
        match kind {
            EventKind::LinkClick => Self {
                name: kind.table(),
                schema: kind.table_schema(),
                partition_column: PARTITION_COLUMN,
                sort_column: "occurred_at",
                stats_columns: &[
                    "schema_version",
                    "occurred_at",
                    "item_type",
                    "category",
                    "source",
                    "country",
                    "device",
                    "is_bot",
                    "kafka_partition",
                    "kafka_offset",
                    "ingested_at",
                ],
                bloom_columns: &["user_id", "anonymous_id"],
                high_cardinality: &["event_id", "target_url", "session_id"],
                lz4: false,
            },
            EventKind::AiUsage => Self {
                name: kind.table(),
                schema: kind.table_schema(),
                partition_column: PARTITION_COLUMN,
                sort_column: "occurred_at",
                stats_columns: &[
                    "schema_version",
                    "occurred_at",
                    "feature",
                    "provider",
                    "model",
                    "input_tokens",
                    "output_tokens",
                    "cost_usd",
                    "status",
                    "latency_ms",
                    "kafka_partition",
                    "kafka_offset",
                    "ingested_at",
                ],
                bloom_columns: &["user_id"],
                high_cardinality: &["event_id", "session_id"],
                lz4: false,
            },
        }
    }

    pub fn dead_letters() -> Self {
        Self {
            name: DEAD_LETTERS_TABLE,
            schema: dead_letter_schema(),
            partition_column: "received_date",
            sort_column: "received_at",
            stats_columns: &[
                "topic",
                "partition",
                "offset",
                "payload_is_lossy",
                "received_at",
            ],
            bloom_columns: &["key"],
            high_cardinality: &["payload"],
            lz4: false,
        }
    }

    pub(crate) fn sort_column_index(&self) -> Option<usize> {
        self.schema.index_of(self.sort_column).ok()
    }
}

/// Advance of one Kafka partition's offset, carried as a Delta `txn` action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnUpdate {
    /// `strata-<group>-<topic>-<partition>`
    pub app_id: String,
    /// The version this writer believes the table holds (None: never written).
    pub expected: Option<i64>,
    /// The next offset to consume after this commit.
    pub next: i64,
}

/// The `txn` app id of the GDPR tombstone marker in every raw table: its version is the
/// `gdpr_tombstones` version that commits after it were filtered with (see
/// [`EventTable::append_filtered`]).
pub const TOMBSTONE_MARKER_APP_ID: &str = "strata-gdpr-tombstones";

/// Commit attempts an append makes when other commits keep landing first.
const MAX_CONFLICT_RETRIES: u32 = 50;

/// What an append of filtered rows came to.
#[derive(Debug, Clone)]
pub enum RawAppend {
    Committed(AppendOutcome),
    /// A purge has committed a newer tombstone marker than the tombstones the rows were
    /// filtered with: nothing was committed.
    StaleTombstones {
        marker: i64,
        filtered_with: i64,
    },
}

/// What an append did.
#[derive(Debug, Clone, Default)]
pub struct AppendOutcome {
    pub version: u64,
    pub rows: usize,
    pub files: usize,
    pub bytes: i64,
    /// Commit attempts that lost a race and were checked again.
    pub retries: u32,
}

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
        let url = storage.table_url(spec.name);
        if let Ok(dir) = url.to_file_path() {
            std::fs::create_dir_all(&dir).map_err(|e| {
                EngineError::config(format!(
                    "cannot create table directory {}: {e}",
                    dir.display()
                ))
            })?;
        }
        let builder = DeltaTableBuilder::from_url(url.clone())?
            .with_storage_options(storage.options().clone());
        match builder.load().await {
            Ok(table) => return Ok(Self { spec, table }),
            Err(DeltaTableError::NotATable(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let schema: StructType = spec.schema.as_ref().try_into_kernel().map_err(|e| {
            EngineError::Internal(format!(
                "schema of {} has no Delta equivalent: {e}",
                spec.name
            ))
        })?;
        let table = DeltaTableBuilder::from_url(url.clone())?
            .with_storage_options(storage.options().clone())
            .build()?;
        let created = table
            .create()
            .with_table_name(spec.name)
            .with_columns(schema.fields().cloned())
            .with_partition_columns([spec.partition_column])
            .with_configuration_property(
                TableProperty::DataSkippingStatsColumns,
                Some(spec.stats_columns.join(",")),
            )
            .with_configuration_property(TableProperty::CheckpointInterval, Some("50"))
            .with_save_mode(SaveMode::Ignore)
            .await;
        match created {
            Ok(table) => {
                info!(table = spec.name, "created table");
                Ok(Self { spec, table })
            }
            Err(e) => {
                // Lost the creation race: load what the winner committed.
                debug!(table = spec.name, error = %e, "create failed, loading");
                let table = DeltaTableBuilder::from_url(url)?
                    .with_storage_options(storage.options().clone())
                    .load()
                    .await?;
                Ok(Self { spec, table })
            }
        }
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
        let state = self.table.snapshot()?;
        let log_store = self.table.log_store();
        let mut out = HashMap::with_capacity(app_ids.len());
        for id in app_ids {
            let v = state.transaction_version(log_store.as_ref(), id).await?;
            out.insert(id.clone(), v);
        }
        Ok(out)
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
        match self.commit_append(batches, txns, None).await? {
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
    /// `txn(`[`TOMBSTONE_MARKER_APP_ID`]`, T)` to every raw table, and only then scans the
    /// table (a snapshot at or after the marker) and rewrites it. This commit carries the same
    /// app id (with the version it was filtered with, so the marker never goes down), and is
    /// refused ([`RawAppend::StaleTombstones`], nothing committed, no file left behind) when
    /// the stored marker is newer than `tombstones`: the caller reloads the tombstones,
    /// filters again and retries.
    ///
    /// Why nothing of a purged subject can slip in: Delta orders commits, and delta-rs's
    /// conflict checker fails a commit when any commit that landed after its read snapshot
    /// carries a `txn` of an app id the commit itself carries (`ConcurrentTransaction`), so the
    /// marker check below and this commit act as one step. Either this commit lands before the
    /// marker: then the purge's scan, which starts after the marker, sees these rows and
    /// removes them; or it lands after the marker: then it saw the marker (directly, or after
    /// a conflict sent it round the loop again) and was filtered with tombstones at least as
    /// new as T, which drop the subject.
    pub async fn append_filtered(
        &mut self,
        batches: &[RecordBatch],
        txns: &[TxnUpdate],
        tombstones: Option<u64>,
    ) -> Result<RawAppend> {
        // Version 0 of `gdpr_tombstones` is its creation commit, which holds no tombstone:
        // the same filter as no table at all.
        let filtered_with = tombstones.map_or(0, |v| v as i64);
        self.commit_append(batches, txns, Some(filtered_with)).await
    }

    async fn commit_append(
        &mut self,
        batches: &[RecordBatch],
        txns: &[TxnUpdate],
        filtered_with: Option<i64>,
    ) -> Result<RawAppend> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut app_ids: Vec<String> = txns.iter().map(|t| t.app_id.clone()).collect();
        if filtered_with.is_some() {
            app_ids.push(TOMBSTONE_MARKER_APP_ID.to_string());
        }
        // Written once the fences first pass, kept across conflict retries.
        let mut adds: Option<Vec<Add>> = None;
        let mut uncertain = false;
        let mut retries = 0;
        loop {
            self.refresh().await?;
            let stored = self.txn_versions(&app_ids).await?;
            for t in txns {
                let found = stored.get(&t.app_id).copied().flatten();
                if found != t.expected {
                    if !uncertain {
                        self.discard(adds.as_deref()).await;
                    }
                    return Err(EngineError::Fenced {
                        app_id: t.app_id.clone(),
                        expected: t.expected,
                        found,
                    });
                }
            }
            let mut app_txns: Vec<(String, i64)> =
                txns.iter().map(|t| (t.app_id.clone(), t.next)).collect();
            if let Some(filtered) = filtered_with {
                let marker = stored.get(TOMBSTONE_MARKER_APP_ID).copied().flatten();
                if let Some(marker) = marker.filter(|m| *m > filtered) {
                    if !uncertain {
                        self.discard(adds.as_deref()).await;
                    }
                    return Ok(RawAppend::StaleTombstones {
                        marker,
                        filtered_with: filtered,
                    });
                }
                // Never lower the marker (it is at most `filtered` here).
                app_txns.push((
                    TOMBSTONE_MARKER_APP_ID.to_string(),
                    marker.map_or(filtered, |m| m.max(filtered)),
                ));
            }
            if adds.is_none() {
                adds = Some(self.write_files(batches, rows).await?);
            }
            let files = adds.as_deref().unwrap_or_default();
            let now = chrono::Utc::now().timestamp_millis();
            let actions: Vec<Action> = files.iter().cloned().map(Action::Add).collect();
            let props = CommitProperties::default()
                .with_application_transactions(
                    app_txns
                        .iter()
                        .map(|(id, v)| Transaction::new_with_last_update(id, *v, Some(now)))
                        .collect(),
                )
                .with_max_retries(20);
            let operation = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec![self.spec.partition_column.to_string()]),
                predicate: None,
            };
            let snapshot = self.table.snapshot()?;
            let committed = CommitBuilder::from(props)
                .with_actions(actions)
                .build(Some(snapshot), self.table.log_store(), operation)
                .await;
            match committed {
                Ok(done) => {
                    let version = done.version();
                    let (files, bytes) = (files.len(), files.iter().map(|a| a.size).sum());
                    self.table.update_state().await?;
                    return Ok(RawAppend::Committed(AppendOutcome {
                        version,
                        rows,
                        files,
                        bytes,
                        retries,
                    }));
                }
                // Another commit landed first (another partition's writer, a purge's marker
                // or rewrite): check the fences again on the new state. Writers that carry
                // the marker app id conflict with each other too, hence the generous limit.
                Err(DeltaTableError::Transaction { source }) if retries < MAX_CONFLICT_RETRIES => {
                    debug!(table = self.spec.name, error = %source, "commit conflict, checking fences again");
                    // Only a conflict proves that nothing was written; after any other
                    // failure the files may be part of a commit and are never deleted.
                    uncertain |= !matches!(source, TransactionError::CommitConflict(_));
                    retries += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The Parquet files of `batches` (none when they hold no row), written but not committed.
    async fn write_files(&self, batches: &[RecordBatch], rows: usize) -> Result<Vec<Add>> {
        if rows == 0 {
            return Ok(Vec::new());
        }
        let batch = self.sorted(batches)?;
        let mut writer = RecordBatchWriter::for_table(&self.table)?
            .with_writer_properties(writer_properties(&self.spec));
        writer.write(batch).await?;
        Ok(writer.flush().await?)
    }

    /// Deletes files written for a commit that will not happen: no reader reaches them, and
    /// no purge would find the rows they hold.
    async fn discard(&self, adds: Option<&[Add]>) {
        let store = self.table.object_store();
        for add in adds.unwrap_or_default() {
            let path = Path::parse(&add.path).unwrap_or_else(|_| Path::from(add.path.as_str()));
            if let Err(e) = store.delete(&path).await {
                if !matches!(e, object_store::Error::NotFound { .. }) {
                    warn!(table = self.spec.name, error = %e, "deleting an uncommitted file failed");
                }
            }
        }
    }

    /// One batch ordered by (partition column, sort column).
    fn sorted(&self, batches: &[RecordBatch]) -> Result<RecordBatch> {
        let batch = concat_batches(&self.spec.schema, batches)?;
        let cols = [self.spec.partition_column, self.spec.sort_column]
            .iter()
            .map(|c| SortColumn {
                values: batch.column_by_name(c).expect("spec column exists").clone(),
                options: None,
            })
            .collect::<Vec<_>>();
        let idx = lexsort_to_indices(&cols, None)?;
        let columns = batch
            .columns()
            .iter()
            .map(|c| take(c, &idx, None))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(batch.schema(), columns)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SqlSession, StorageOptions};
    use strata_schemas::{EventDecoder, RawMessage};

    fn batch(ids: &[&str]) -> RecordBatch {
        let payloads: Vec<String> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| format!(r#"{{"schema_version":1,"event_id":"{id}","occurred_at":"2026-10-0{}T12:00:00Z","user_id":"u-1","item_id":"i","item_type":"profile","source":"search","target_url":"/p"}}"#, 1 + i % 2))
            .collect();
        let raw: Vec<_> = payloads
            .iter()
            .enumerate()
            .map(|(i, p)| RawMessage {
                payload: p.as_bytes(),
                partition: 0,
                offset: i as i64,
            })
            .collect();
        let d = EventDecoder::new(EventKind::LinkClick)
            .decode(&raw, 1_800_000_000_000_000)
            .unwrap();
        assert!(d.rejects.is_empty());
        d.batch
    }

    #[tokio::test]
    async fn append_carries_offsets_and_fences_stale_writers() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(&StorageOptions {
            url: dir.path().to_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap();
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
        let out = a
            .append(
                &[batch(&ids[..1])],
                &[TxnUpdate {
                    app_id: app.clone(),
                    expected: None,
                    next: 10,
                }],
            )
            .await
            .unwrap();
        assert_eq!(out.rows, 1);
        assert_eq!(out.files, 1);

        // b still believes the partition was never written: fenced, nothing committed.
        let err = b
            .append(
                &[batch(&ids[..1])],
                &[TxnUpdate {
                    app_id: app.clone(),
                    expected: None,
                    next: 10,
                }],
            )
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
        let log = std::fs::read_to_string(
            dir.path()
                .join("tables/link_clicks/_delta_log/00000000000000000001.json"),
        )
        .unwrap();
        assert!(log.contains("\"txn\""), "offsets ride in the commit");
        assert!(
            !log.contains("\\\"u-1\\\""),
            "no user id in statistics: {log}"
        );
    }
}
