use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, RecordBatch};
use chrono::{NaiveDate, Utc};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{Action, Add, Remove};
use deltalake::protocol::DeltaOperation;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use deltalake::DeltaTableBuilder;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::ObjectStoreExt;
// ParquetObjectReader is deprecated in arrow 59 in favour of a hand-written AsyncFileReader;
// it still does ranged reads (footer, bloom filters) on any object store, which is what a
// purge needs. Replacing it is noted in docs/operations/gdpr.md.
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use serde::Serialize;
use strata_schemas::EventKind;
use tracing::info;

use super::audit::AuditRecord;
use super::subject::{GdprKey, Subject};
use super::tombstone::Tombstones;
use crate::table::TableSpec;
use crate::writer::writer_properties;
use crate::{Catalog, EngineError, Result, RollupBuilder, Storage};

/// Test hook: when `STRATA_TEST_PAUSE_AT` names this step, the purge stops here for good (a
/// crash test kills the process at that point). Steps: `tombstone`, `commit:<table>`,
/// `rollups`.
async fn pause_point(step: &str) {
    if std::env::var("STRATA_TEST_PAUSE_AT").is_ok_and(|s| s == step) {
        tracing::warn!(step, "purge paused by STRATA_TEST_PAUSE_AT");
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    }
}

/// The marker of purge commits in the Delta log (never the subject).
const PURGE_MARKER: &str = "strata-gdpr-purge";

/// What a purge did to one table.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TablePurge {
    pub table: String,
    pub version_before: Option<u64>,
    pub version_after: Option<u64>,
    pub files_in_table: usize,
    /// Files whose bloom filters could hold the subject (read in full).
    pub files_scanned: usize,
    pub files_rewritten: usize,
    pub rows_removed: usize,
    pub bytes_rewritten: i64,
    /// Removed files deleted from storage right away (no time travel back to them).
    pub files_vacuumed: usize,
    /// Wall time of this table's scan, rewrite, commit and deletes.
    pub elapsed_ms: u64,
}

/// The receipt of a purge: what was done and the proof that nothing is left.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReceipt {
    pub request_id: String,
    pub subject_hash: String,
    pub requested_at: chrono::DateTime<Utc>,
    pub finished_at: chrono::DateTime<Utc>,
    pub tables: Vec<TablePurge>,
    pub rows_removed: usize,
    /// Days of the rollups recomputed.
    pub rollup_days_recomputed: usize,
    /// Earlier exports of the subject, deleted with everything else.
    pub exports_deleted: usize,
    /// Rows of the subject found in every table after the purge, by table: all zero.
    pub verification: Vec<(String, i64)>,
    pub verified: bool,
    /// Where the time went, in milliseconds: rewrite (all tables), rollups, verification.
    pub timings_ms: PurgeTimings,
}

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct PurgeTimings {
    pub rewrite: u64,
    pub rollups: u64,
    pub verify: u64,
    pub total: u64,
}

/// `PurgeBuilder::new(storage, subject).requested_by("dpo").await -> PurgeReceipt`
pub struct PurgeBuilder {
    storage: Storage,
    subject: Subject,
    key: Option<GdprKey>,
    requested_by: String,
    request_id: String,
    requested_at: Option<chrono::DateTime<Utc>>,
}

impl PurgeBuilder {
    pub fn new(storage: &Storage, subject: Subject) -> Self {
        Self {
            storage: storage.clone(),
            subject,
            key: None,
            requested_by: "cli".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            requested_at: None,
        }
    }

    /// When the request was made (a resumed request keeps its original time, which is what
    /// its tombstone compares late events with).
    pub fn requested_at(mut self, at: chrono::DateTime<Utc>) -> Self {
        self.requested_at = Some(at);
        self
    }

    pub fn requested_by(mut self, who: impl Into<String>) -> Self {
        self.requested_by = who.into();
        self
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    pub fn key(mut self, key: GdprKey) -> Self {
        self.key = Some(key);
        self
    }

    async fn execute(self) -> Result<PurgeReceipt> {
        if self.subject.user_id.trim().is_empty() {
            return Err(EngineError::Param("the subject id is empty".into()));
        }
        let requested_at = self.requested_at.unwrap_or_else(Utc::now);
        let key = match self.key {
            Some(k) => k,
            None => GdprKey::load_or_create(&self.storage).await?,
        };
        let subject_hash = key.hash(&self.subject.user_id);
        // Tombstones first: from now on ingest drops late events of the subject.
        let hashes: Vec<String> = self.subject.ids().iter().map(|id| key.hash(id)).collect();
        Tombstones::add(
            &self.storage,
            &hashes,
            requested_at.timestamp_micros(),
            &self.request_id,
        )
        .await?;
        pause_point("tombstone").await;

        let started = std::time::Instant::now();
        let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
        let mut timings = PurgeTimings::default();
        let existing = self.storage.list_tables().await?;
        // The raw tables are independent (one commit each): they are purged concurrently.
        let specs: Vec<TableSpec> = [
            TableSpec::for_events(EventKind::LinkClick),
            TableSpec::for_events(EventKind::AiUsage),
            TableSpec::dead_letters(),
        ]
        .into_iter()
        .filter(|spec| existing.iter().any(|t| t == spec.name))
        .collect();
        let tables = futures::future::try_join_all(
            specs
                .iter()
                .map(|spec| purge_table(&self.storage, &self.subject, spec, &self.request_id)),
        )
        .await?;
        let exports_deleted = delete_exports_of(&self.storage, &subject_hash).await?;
        timings.rewrite = ms(started);
        pause_point("rollups").await;
        // Rollups recompute the days whose files changed; the catalog sees the new versions.
        let catalog = Catalog::open(&self.storage).await?;
        let step = std::time::Instant::now();
        let rollups = RollupBuilder::new(catalog.clone()).run().await?;
        timings.rollups = ms(step);
        let step = std::time::Instant::now();
        let verification = verify(&catalog, &self.subject).await?;
        timings.verify = ms(step);
        timings.total = ms(started);
        let receipt = PurgeReceipt {
            request_id: self.request_id.clone(),
            subject_hash: subject_hash.clone(),
            requested_at,
            finished_at: Utc::now(),
            rows_removed: tables.iter().map(|t| t.rows_removed).sum(),
            tables,
            rollup_days_recomputed: rollups.iter().map(|r| r.dates.len()).sum(),
            exports_deleted,
            verified: verification.iter().all(|(_, n)| *n == 0),
            verification,
            timings_ms: timings,
        };
        AuditRecord {
            request_id: self.request_id,
            kind: "purge".into(),
            subject_hash,
            requested_by: self.requested_by,
            requested_at,
            finished_at: receipt.finished_at,
            status: if receipt.verified {
                "done"
            } else {
                "unverified"
            }
            .into(),
            receipt: serde_json::to_string(&receipt).unwrap_or_default(),
        }
        .append(&self.storage)
        .await?;
        info!(
            rows_removed = receipt.rows_removed,
            verified = receipt.verified,
            "purge finished"
        );
        Ok(receipt)
    }
}

impl IntoFuture for PurgeBuilder {
    type Output = Result<PurgeReceipt>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// Rows of the subject left in each raw table (rollups hold no subject ids).
async fn verify(catalog: &Catalog, subject: &Subject) -> Result<Vec<(String, i64)>> {
    let (snap, ctx) = catalog.context()?;
    let mut out = Vec::new();
    for table in ["link_clicks", "ai_usage", "dead_letters"] {
        if snap.version(table).is_none() {
            continue;
        }
        let predicate = super::subject::sql_predicate(subject, table);
        let batches = ctx
            .sql(&format!("SELECT count(*) FROM {table} WHERE {predicate}"))
            .await?
            .collect()
            .await?;
        let n = crate::scalar_i64(&batches).unwrap_or(0);
        out.push((table.to_string(), n));
    }
    Ok(out)
}

#[allow(deprecated)]
async fn purge_table(
    storage: &Storage,
    subject: &Subject,
    spec: &TableSpec,
    request_id: &str,
) -> Result<TablePurge> {
    let started = std::time::Instant::now();
    let url = storage.table_url(spec.name);
    let mut table = DeltaTableBuilder::from_url(url.clone())?
        .with_storage_options(storage.options().clone())
        .load()
        .await?;
    let store = storage.store().clone();
    let prefix = format!("tables/{}/", spec.name);
    let mut report = TablePurge {
        table: spec.name.into(),
        version_before: table.version(),
        ..Default::default()
    };
    // A purge interrupted between its commit and its deletes left removed files behind:
    // delete them now (a repeated request finishes the job).
    report.files_vacuumed += vacuum_previous_purges(storage, spec.name).await?;

    let files: Vec<String> = table.get_file_uris()?.collect();
    report.files_in_table = files.len();
    // Files are inspected in parallel tasks (one per core): bloom filters first, then a full
    // read of the candidates; a file that holds the subject is rewritten in the same task, so
    // reading, filtering and Parquet encoding run on every core and only the files in flight
    // are held in memory.
    // Unordered: an ordered buffer holds a finished quick file (ruled out by its bloom filter)
    // until the slow rewrite ahead of it is done, which left one core idle.
    let parallelism = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut tasks = Vec::with_capacity(files.len());
    for uri in &files {
        let writer =
            RecordBatchWriter::for_table(&table)?.with_writer_properties(writer_properties(spec));
        let (store, url, prefix, uri) = (store.clone(), url.clone(), prefix.clone(), uri.clone());
        let (subject, spec) = (subject.clone(), spec.clone());
        tasks.push(async move {
            tokio::spawn(async move {
                let columns = subject.columns(spec.name);
                let started = std::time::Instant::now();
                let Some(hit) =
                    inspect_file(store, &url, &prefix, &uri, &subject, &spec, &columns).await?
                else {
                    return Ok::<_, EngineError>(None);
                };
                let read_ms = started.elapsed().as_millis() as u64;
                // A bloom false positive (nothing of the subject) is left as it is.
                let adds = if hit.removed > 0 {
                    rewrite(writer, &hit.kept).await?
                } else {
                    Vec::new()
                };
                tracing::debug!(
                    table = spec.name,
                    read_ms,
                    rewrite_ms = started.elapsed().as_millis() as u64 - read_ms,
                    rows_removed = hit.removed,
                    "purge file"
                );
                Ok(Some((hit, adds)))
            })
            .await
            .map_err(|e| EngineError::Internal(format!("purge task failed: {e}")))?
        });
    }
    let hits: Vec<Option<(FileHit, Vec<Add>)>> = futures::stream::iter(tasks)
        .buffer_unordered(parallelism)
        .try_collect()
        .await?;
    let mut removes = Vec::new();
    let mut adds = Vec::new();
    for (hit, file_adds) in hits.into_iter().flatten() {
        report.files_scanned += 1;
        if hit.removed == 0 {
            continue; // a bloom false positive
        }
        report.rows_removed += hit.removed;
        report.files_rewritten += 1;
        report.bytes_rewritten += hit.size as i64;
        adds.extend(file_adds);
        removes.push(Remove {
            path: hit.rel,
            data_change: true,
            deletion_timestamp: Some(Utc::now().timestamp_millis()),
            extended_file_metadata: Some(true),
            partition_values: Some(
                [(spec.partition_column.to_string(), Some(hit.partition))]
                    .into_iter()
                    .collect(),
            ),
            size: Some(hit.size as i64),
            tags: None,
            deletion_vector: None,
            base_row_id: None,
            default_row_commit_version: None,
        });
    }
    if removes.is_empty() {
        report.version_after = table.version();
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        return Ok(report);
    }
    let mut actions: Vec<Action> = removes.iter().cloned().map(Action::Remove).collect();
    actions.extend(adds.into_iter().map(Action::Add));
    let committed = CommitBuilder::from(CommitProperties::default().with_max_retries(20))
        .with_actions(actions)
        .build(
            Some(table.snapshot()?),
            table.log_store(),
            DeltaOperation::Delete {
                predicate: Some(format!("{PURGE_MARKER} {request_id}")),
            },
        )
        .await?;
    report.version_after = Some(committed.version());
    pause_point(&format!("commit:{}", spec.name)).await;
    table.update_state().await?;
    for r in &removes {
        let path = Path::from(format!("{prefix}{}", r.path));
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => report.files_vacuumed += 1,
            Err(e) => return Err(EngineError::Internal(format!("deleting {path}: {e}"))),
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    info!(
        table = spec.name,
        elapsed_ms = report.elapsed_ms,
        files_rewritten = report.files_rewritten,
        rows_removed = report.rows_removed,
        "purge committed"
    );
    Ok(report)
}

/// Writes the rows a file keeps (none when the subject was all it held, or when the bloom
/// filter was a false positive) as new files; returns their add actions.
async fn rewrite(mut writer: RecordBatchWriter, kept: &[RecordBatch]) -> Result<Vec<Add>> {
    if kept.is_empty() {
        return Ok(Vec::new());
    }
    for b in kept {
        writer.write(b.clone()).await?;
    }
    Ok(writer.flush().await?)
}

/// A candidate file: what it holds of the subject, and its other rows.
struct FileHit {
    rel: String,
    size: u64,
    /// The partition value as written in the path (`2026-10-01`).
    partition: String,
    removed: usize,
    kept: Vec<RecordBatch>,
}

/// None when the bloom filters rule the file out; otherwise its rows split by the subject.
#[allow(deprecated)]
async fn inspect_file(
    store: Arc<dyn object_store::ObjectStore>,
    url: &url::Url,
    prefix: &str,
    uri: &str,
    subject: &Subject,
    spec: &TableSpec,
    columns: &[(&'static str, Vec<&str>)],
) -> Result<Option<FileHit>> {
    // Local tables list plain paths, object stores full URLs.
    let rel = uri
        .strip_prefix(url.as_str())
        .or_else(|| uri.strip_prefix(url.path()))
        .ok_or_else(|| EngineError::Internal(format!("file {uri} is outside its table")))?
        .to_string();
    let path = Path::from(format!("{prefix}{rel}"));
    let meta = store
        .head(&path)
        .await
        .map_err(|e| EngineError::Internal(format!("{path}: {e}")))?;
    let reader = ParquetObjectReader::new(store.clone(), path.clone()).with_file_size(meta.size);
    let mut builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|e| EngineError::Internal(format!("{path}: {e}")))?;
    if !may_hold(&mut builder, columns).await? {
        return Ok(None);
    }
    let batches: Vec<RecordBatch> = builder
        .build()
        .map_err(|e| EngineError::Internal(e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| EngineError::Internal(format!("{path}: {e}")))?;
    let (days, partition) = partition_value(&rel, spec.partition_column)?;
    let mut removed = 0;
    let mut kept = Vec::new();
    for b in &batches {
        let hit = subject.matches(spec.name, b)?;
        removed += hit.true_count();
        let keep = arrow::compute::not(&hit)?;
        let rest = arrow::compute::filter_record_batch(b, &keep)?;
        if rest.num_rows() > 0 {
            kept.push(with_partition(rest, spec, days)?);
        }
    }
    Ok(Some(FileHit {
        rel,
        size: meta.size,
        partition,
        removed,
        kept,
    }))
}

/// False when the bloom filters of every row group rule the subject out for every column that
/// has one. A column without a bloom filter (or the dead-letter payload, matched by
/// containment) always needs a scan.
#[allow(deprecated)]
async fn may_hold(
    builder: &mut ParquetRecordBatchStreamBuilder<ParquetObjectReader>,
    columns: &[(&'static str, Vec<&str>)],
) -> Result<bool> {
    if columns.iter().any(|(c, _)| *c == "payload") {
        return Ok(true);
    }
    let schema = builder.parquet_schema().clone();
    let groups = builder.metadata().num_row_groups();
    for rg in 0..groups {
        for (col, ids) in columns {
            let Some(idx) = (0..schema.num_columns()).find(|i| schema.column(*i).name() == *col)
            else {
                continue;
            };
            let bloom = builder
                .get_row_group_column_bloom_filter(rg, idx)
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            match bloom {
                Some(sbbf) => {
                    if ids.iter().any(|id| sbbf.check(*id)) {
                        return Ok(true);
                    }
                }
                None => return Ok(true),
            }
        }
    }
    Ok(false)
}

/// `event_date=2026-10-01/part-...parquet` -> (days since the epoch, "2026-10-01").
fn partition_value(rel: &str, column: &str) -> Result<(i32, String)> {
    let prefix = format!("{column}=");
    let value = rel
        .split('/')
        .find_map(|seg| seg.strip_prefix(&prefix))
        .ok_or_else(|| EngineError::Internal(format!("{rel} has no {column} partition")))?;
    let d = NaiveDate::parse_from_str(value, "%Y-%m-%d")
        .map_err(|e| EngineError::Internal(format!("{rel}: bad partition value: {e}")))?;
    Ok((
        (d - NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch")).num_days() as i32,
        value.to_string(),
    ))
}

/// A batch read from a data file (which holds no partition column) in the table's schema.
fn with_partition(batch: RecordBatch, spec: &TableSpec, days: i32) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = spec
        .schema
        .fields()
        .iter()
        .map(|f| {
            if f.name() == spec.partition_column {
                Ok(Arc::new(Date32Array::from(vec![days; batch.num_rows()])) as ArrayRef)
            } else {
                let c = batch.column_by_name(f.name()).ok_or_else(|| {
                    EngineError::Internal(format!("file lacks column {}", f.name()))
                })?;
                Ok(arrow::compute::cast(c, f.data_type())?)
            }
        })
        .collect::<Result<_>>()?;
    Ok(RecordBatch::try_new(spec.schema.clone(), cols)?)
}

/// Deletes files that earlier purge commits removed and that are still in storage.
async fn vacuum_previous_purges(storage: &Storage, table: &str) -> Result<usize> {
    let store = storage.store();
    let log = Path::from(format!("tables/{table}/_delta_log"));
    let entries: Vec<_> = store
        .list(Some(&log))
        .try_collect()
        .await
        .map_err(|e| EngineError::Internal(format!("listing {log}: {e}")))?;
    let mut deleted = 0;
    for e in entries
        .iter()
        .filter(|e| e.location.as_ref().ends_with(".json"))
    {
        let bytes = store
            .get(&e.location)
            .await
            .map_err(|err| EngineError::Internal(err.to_string()))?
            .bytes()
            .await
            .map_err(|err| EngineError::Internal(err.to_string()))?;
        if !bytes
            .windows(PURGE_MARKER.len())
            .any(|w| w == PURGE_MARKER.as_bytes())
        {
            continue;
        }
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap_or_default();
            if let Some(p) = v
                .get("remove")
                .and_then(|r| r.get("path"))
                .and_then(|p| p.as_str())
            {
                let path = Path::from(format!("tables/{table}/{p}"));
                if store.head(&path).await.is_ok() {
                    store
                        .delete(&path)
                        .await
                        .map_err(|err| EngineError::Internal(err.to_string()))?;
                    deleted += 1;
                }
            }
        }
    }
    Ok(deleted)
}

/// Deletes every export whose manifest names the subject's hash.
async fn delete_exports_of(storage: &Storage, subject_hash: &str) -> Result<usize> {
    let store = storage.store();
    let listing = match store
        .list_with_delimiter(Some(&Path::from("exports")))
        .await
    {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(EngineError::Internal(format!("listing exports: {e}"))),
    };
    let mut deleted = 0;
    for dir in listing.common_prefixes {
        let manifest = dir.clone().join("manifest.json");
        let Ok(r) = store.get(&manifest).await else {
            continue;
        };
        let Ok(bytes) = r.bytes().await else { continue };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if v["subject_hash"].as_str() != Some(subject_hash) {
            continue;
        }
        let files: Vec<_> = store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        for f in files {
            store
                .delete(&f.location)
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?;
        }
        deleted += 1;
    }
    Ok(deleted)
}
