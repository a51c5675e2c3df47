//! Rewriting one raw table without a subject: bloom filters rule files out, the candidates
//! are read, the files that hold the subject are rewritten without its rows, one commit
//! (remove + add), then the removed files are deleted at once.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::Date32Type;
use chrono::NaiveDate;
use deltalake::kernel::{Add, Remove};
use deltalake::DeltaTable;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
// ParquetObjectReader is deprecated in arrow 59 in favour of a hand-written AsyncFileReader;
// it still does ranged reads (footer, bloom filters) on any object store, which is what a
// purge needs. Replacing it is noted in docs/operations/gdpr.md.
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::file::metadata::ParquetMetaData;
use tracing::info;

use super::purge::{pause_point, TablePurge};
use super::subject::{matching_rows, Subject, SubjectColumn};
use crate::delta::{commit, layout, log};
use crate::registry::TableSpec;
use crate::writer::{splice, writer_properties};
use crate::{EngineError, Result, Storage};

/// The marker of purge commits in the Delta log (never the subject): a key of their
/// `commitInfo`, with the request id as its value.
const PURGE_MARKER: &str = "strata-gdpr-purge";

/// Scans and commits before giving up when other writers keep removing files the purge read
/// (a compaction, another purge). Appends never conflict with the purge's commit.
const MAX_ATTEMPTS: u32 = 10;

/// Purges `subject` from one raw table. The caller has committed the tombstone marker to it
/// first: the scan starts from a snapshot loaded after the marker.
pub(super) async fn purge_table(
    storage: &Storage,
    subject: &Subject,
    spec: &TableSpec,
    request_id: &str,
) -> Result<TablePurge> {
    let started = std::time::Instant::now();
    let mut report = TablePurge {
        table: spec.name.into(),
        ..Default::default()
    };
    // A purge interrupted between its commit and its deletes left removed files behind:
    // delete them now (a repeated request finishes the job).
    report.files_vacuumed +=
        super::pending::finish_earlier(storage, spec.name, PURGE_MARKER).await?;
    for attempt in 1..=MAX_ATTEMPTS {
        if rewrite_table(storage, subject, spec, request_id, &mut report).await? {
            // Copies the current version no longer references (a compaction's removed files
            // before vacuum, a killed writer's leftovers) must not keep the subject either.
            report.files_vacuumed +=
                super::leftovers::delete_unreferenced_copies(storage, subject, spec).await?;
            report.elapsed_ms = started.elapsed().as_millis() as u64;
            return Ok(report);
        }
        tracing::debug!(
            table = spec.name,
            attempt,
            "purge commit conflicted with another writer; scanning again"
        );
        // Let the other rewrite (a retention run, a compaction that had not seen the marker)
        // finish its work before scanning again.
        tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt))).await;
    }
    Err(EngineError::Internal(format!(
        "purging {}: other writers kept changing the files the purge read ({MAX_ATTEMPTS} attempts)",
        spec.name
    )))
}

/// One scan, rewrite and commit of the table. False when the commit lost a conflict (nothing
/// committed, the files it wrote deleted): scan again.
async fn rewrite_table(
    storage: &Storage,
    subject: &Subject,
    spec: &TableSpec,
    request_id: &str,
    report: &mut TablePurge,
) -> Result<bool> {
    let table = log::load(storage, spec.name).await?;
    if report.version_before.is_none() {
        report.version_before = table.version();
    }
    let files: Vec<String> = table.get_file_uris()?.collect();
    report.files_in_table = files.len();
    let inspected = match inspect_files(storage, &table, subject, spec, &files).await {
        Ok(inspected) => inspected,
        // A rewrite (retention, compaction, another purge) removed and deleted a file of this
        // snapshot while it was read: its commit would lose anyway; scan the new version.
        Err(e) if e.is_missing_file() => return Ok(false),
        Err(e) => return Err(e),
    };
    let found = Rewrite::collect(spec, inspected);
    if found.removes.is_empty() {
        report.files_scanned += found.scanned;
        report.version_after = table.version();
        return Ok(true);
    }
    // No read predicate: appends landing meanwhile never conflict with this commit (they were
    // filtered with the tombstones, see `marker.rs`); a commit that removed a file read here
    // does. The marker rides in `commitInfo`, never the subject.
    // Recorded first: a purge killed between the commit and the deletes below leaves the
    // subject in files no version references, which the next purge deletes from this record.
    let removed: Vec<String> = found.removes.iter().map(|r| r.path.clone()).collect();
    super::pending::record(storage, spec.name, request_id, &removed).await?;
    let committed = commit::remove_and_add(
        storage,
        spec.name,
        &table,
        &found.removes,
        found.adds,
        (PURGE_MARKER, request_id),
    )
    .await?;
    let Some(version) = committed else {
        super::pending::clear(storage, spec.name, request_id).await?;
        return Ok(false);
    };
    report.version_after = Some(version);
    report.files_scanned += found.scanned;
    report.rows_removed += found.rows_removed;
    report.subject_rows.extend(found.subject_rows);
    report.files_rewritten += found.removes.len();
    report.bytes_rewritten += found.bytes_rewritten;
    pause_point(&format!("commit:{}", spec.name)).await;
    report.files_vacuumed += delete_removed(storage, spec.name, &found.removes).await?;
    super::pending::clear(storage, spec.name, request_id).await?;
    info!(
        table = spec.name,
        files_rewritten = found.removes.len(),
        rows_removed = found.rows_removed,
        "purge committed"
    );
    Ok(true)
}

/// A candidate file inspected, and the file its kept rows were rewritten to.
type Inspected = Option<(FileHit, Vec<Add>)>;

/// Inspects every file of the table in parallel tasks (one per core): bloom filters first,
/// then the subject columns of the row groups they let through; a file that holds the subject
/// is rewritten in the same task without its rows (only its row groups that held them are
/// decoded and encoded again, see [`crate::writer::splice`]), so reading, filtering and
/// Parquet encoding run on every core and only the files in flight are held in memory. None
/// for a file the filters and the column read rule out.
async fn inspect_files(
    storage: &Storage,
    table: &DeltaTable,
    subject: &Subject,
    spec: &TableSpec,
    files: &[String],
) -> Result<Vec<Inspected>> {
    let url = storage.table_url(spec.name);
    let store = storage.store().clone();
    // A rewritten file keeps the bounds of the statistics its add action carries.
    let stats = log::file_stats(table)?;
    // Unordered: an ordered buffer holds a finished quick file (ruled out by its bloom filter)
    // until the slow rewrite ahead of it is done, which left one core idle.
    let parallelism = strata_schemas::cores();
    let mut tasks = Vec::with_capacity(files.len());
    for uri in files {
        let rel = relative(&url, uri)?;
        let old_stats = stats.get(&rel).cloned().flatten();
        let (store, rel) = (store.clone(), rel.clone());
        let (subject, spec) = (subject.clone(), spec.clone());
        tasks.push(async move {
            tokio::spawn(async move {
                let columns = subject.columns(spec.name);
                let started = std::time::Instant::now();
                let Some(mut hit) =
                    inspect_file(store.clone(), rel, &subject, &spec, &columns).await?
                else {
                    return Ok::<_, EngineError>(None);
                };
                let read_ms = started.elapsed().as_millis() as u64;
                // A bloom false positive (nothing of the subject) is left as it is, and so
                // is nothing when the subject was all the file held.
                let adds = match hit.rewritten.take() {
                    Some((bytes, metadata)) if hit.removed > 0 => {
                        let file = splice::SplicedFile {
                            partition: &hit.partition,
                            old_stats: old_stats.as_deref(),
                            rows: hit.kept_rows,
                            bytes,
                            metadata: &metadata,
                        };
                        vec![file.store(&store, &spec).await?]
                    }
                    _ => Vec::new(),
                };
                tracing::debug!(
                    table = spec.name,
                    read_ms,
                    store_ms = started.elapsed().as_millis() as u64 - read_ms,
                    rows_removed = hit.removed,
                    row_groups_encoded = hit.row_groups_encoded,
                    "purge file"
                );
                Ok(Some((hit, adds)))
            })
            .await
            .map_err(|e| EngineError::Internal(format!("purge task failed: {e}")))?
        });
    }
    futures::stream::iter(tasks)
        .buffer_unordered(parallelism)
        .try_collect()
        .await
}

/// A file's path relative to its table: local tables list plain paths, object stores full URLs.
fn relative(url: &url::Url, uri: &str) -> Result<String> {
    Ok(uri
        .strip_prefix(url.as_str())
        .or_else(|| uri.strip_prefix(url.path()))
        .ok_or_else(|| EngineError::Internal(format!("file {uri} is outside its table")))?
        .to_string())
}

/// What one scan found to change: the commit's removes and adds, and what they amount to.
#[derive(Default)]
struct Rewrite {
    /// Candidate files read in full.
    scanned: usize,
    removes: Vec<Remove>,
    adds: Vec<Add>,
    rows_removed: usize,
    /// The rows removed, for the rollups (see [`FileHit::subject_rows`]).
    subject_rows: Vec<RecordBatch>,
    bytes_rewritten: i64,
}

impl Rewrite {
    fn collect(spec: &TableSpec, inspected: Vec<Inspected>) -> Self {
        let mut out = Self::default();
        for (hit, file_adds) in inspected.into_iter().flatten() {
            out.scanned += 1;
            if hit.removed == 0 {
                continue; // a bloom false positive
            }
            out.rows_removed += hit.removed;
            out.subject_rows.extend(hit.subject_rows);
            out.bytes_rewritten += hit.size as i64;
            out.adds.extend(file_adds);
            out.removes.push(commit::removal(
                hit.rel,
                spec.partition_column,
                hit.partition,
                hit.size,
            ));
        }
        out
    }
}

/// Deletes the files a purge commit removed, at once (no time travel back to them).
async fn delete_removed(storage: &Storage, table: &str, removes: &[Remove]) -> Result<usize> {
    let mut deleted = 0;
    for r in removes {
        storage
            .delete_if_present(&layout::table_file(table, &r.path))
            .await?;
        deleted += 1;
    }
    Ok(deleted)
}

/// A candidate file: what it holds of the subject, and the file without it.
struct FileHit {
    rel: String,
    size: u64,
    /// The partition value as written in the path (`2026-10-01`).
    partition: String,
    removed: usize,
    /// The subject's rows (in the table's schema): the groups of the rollups they were in
    /// are the only ones recomputed (`crate::rollup::PurgedRows`).
    subject_rows: Vec<RecordBatch>,
    /// The file without the subject's rows (None when nothing else was left or nothing was
    /// removed), and how many rows it holds.
    rewritten: Option<(bytes::Bytes, ParquetMetaData)>,
    kept_rows: usize,
    /// Row groups decoded and encoded again (the others were copied as they were).
    row_groups_encoded: usize,
}

/// None when the bloom filters and the subject columns rule the file out; otherwise what it
/// holds of the subject, and the file without it.
async fn inspect_file(
    store: Arc<dyn object_store::ObjectStore>,
    rel: String,
    subject: &Subject,
    spec: &TableSpec,
    columns: &[SubjectColumn<'_>],
) -> Result<Option<FileHit>> {
    let path = layout::table_file(spec.name, &rel);
    let meta = store
        .head(&path)
        .await
        .map_err(|e| EngineError::Internal(format!("{path}: {e}")))?;
    let Some((_, metadata, groups)) =
        row_groups_holding(store.clone(), &path, meta.size, columns).await?
    else {
        return Ok(None);
    };
    let bytes = store
        .get(&path)
        .await
        .map_err(|e| EngineError::Internal(format!("{path}: {e}")))?
        .bytes()
        .await
        .map_err(|e| EngineError::Internal(format!("{path}: {e}")))?;
    let rows = usize::try_from(metadata.metadata().file_metadata().num_rows()).unwrap_or(0);
    let spliced = splice::without_rows(&bytes, &groups, writer_properties(spec, rows), |b| {
        subject.matches(spec.name, b)
    })?;
    let (days, partition) = partition_value(&rel, spec.partition_column)?;
    let subject_rows = spliced
        .removed
        .iter()
        .map(|b| splice::with_partition(b.clone(), spec, days))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(FileHit {
        rel,
        size: meta.size,
        partition,
        removed: spliced.removed_rows(),
        subject_rows,
        kept_rows: spliced.rows,
        row_groups_encoded: spliced.row_groups_encoded,
        rewritten: spliced.file,
    }))
}

/// The rows of the Parquet file at `path` (`size` bytes), or None when it holds nothing of the
/// subject and nothing past its subject columns was read (see [`row_groups_holding`]).
#[allow(deprecated)]
pub(super) async fn read_if_may_hold(
    store: Arc<dyn object_store::ObjectStore>,
    path: &object_store::path::Path,
    size: u64,
    columns: &[SubjectColumn<'_>],
) -> Result<Option<Vec<RecordBatch>>> {
    let failed = |e: parquet::errors::ParquetError| EngineError::Internal(format!("{path}: {e}"));
    let Some((reader, metadata, groups)) = row_groups_holding(store, path, size, columns).await?
    else {
        return Ok(None);
    };
    let batches = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, metadata)
        .with_row_groups(groups)
        .build()
        .map_err(failed)?
        .try_collect()
        .await
        .map_err(failed)?;
    Ok(Some(batches))
}

/// The row groups of the Parquet file at `path` (`size` bytes) that may hold the subject, or
/// None when none does: the bloom filters of each row group rule the subject out (see
/// [`row_groups_that_may_hold`]), then a read of only the subject columns of the row groups
/// they let through keeps those where a column holds one of the subject's ids (a bloom false
/// positive costs that column read, never the whole file). Free text (a dead letter's payload)
/// has no bloom filter and is matched by containment: every row group is a candidate.
#[allow(deprecated)]
async fn row_groups_holding(
    store: Arc<dyn object_store::ObjectStore>,
    path: &object_store::path::Path,
    size: u64,
    columns: &[SubjectColumn<'_>],
) -> Result<Option<(ParquetObjectReader, ArrowReaderMetadata, Vec<usize>)>> {
    let failed = |e: parquet::errors::ParquetError| EngineError::Internal(format!("{path}: {e}"));
    let mut reader = ParquetObjectReader::new(store, path.clone()).with_file_size(size);
    let metadata = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
        .await
        .map_err(failed)?;
    let mut builder =
        ParquetRecordBatchStreamBuilder::new_with_metadata(reader.clone(), metadata.clone());
    let groups = row_groups_that_may_hold(&mut builder, columns).await?;
    if groups.is_empty() {
        return Ok(None);
    }
    if columns.iter().any(|c| c.in_text) {
        return Ok(Some((reader, metadata, groups)));
    }
    let names = columns.iter().map(|c| c.column);
    let mask = ProjectionMask::columns(builder.parquet_schema(), names);
    let mut holding = Vec::new();
    for rg in groups {
        let mut ids =
            ParquetRecordBatchStreamBuilder::new_with_metadata(reader.clone(), metadata.clone())
                .with_row_groups(vec![rg])
                .with_projection(mask.clone())
                .build()
                .map_err(failed)?;
        while let Some(batch) = ids.try_next().await.map_err(failed)? {
            if matching_rows(&batch, columns)?.true_count() > 0 {
                holding.push(rg);
                break;
            }
        }
    }
    if holding.is_empty() {
        return Ok(None);
    }
    Ok(Some((reader, metadata, holding)))
}

/// The row groups whose bloom filters do not rule the subject out for the columns that have
/// one; every row group when a subject column has no bloom filter (or is free text, matched by
/// containment).
#[allow(deprecated)]
async fn row_groups_that_may_hold(
    builder: &mut ParquetRecordBatchStreamBuilder<ParquetObjectReader>,
    columns: &[SubjectColumn<'_>],
) -> Result<Vec<usize>> {
    let groups = builder.metadata().num_row_groups();
    if columns.iter().any(|c| c.in_text) {
        return Ok((0..groups).collect());
    }
    let schema = builder.parquet_schema().clone();
    let mut may_hold = Vec::new();
    'groups: for rg in 0..groups {
        for SubjectColumn { column, ids, .. } in columns {
            let Some(idx) = (0..schema.num_columns()).find(|i| schema.column(*i).name() == *column)
            else {
                continue;
            };
            let bloom = builder
                .get_row_group_column_bloom_filter(rg, idx)
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?;
            let maybe = match bloom {
                Some(sbbf) => ids.iter().any(|id| sbbf.check(*id)),
                None => true,
            };
            if maybe {
                may_hold.push(rg);
                continue 'groups;
            }
        }
    }
    Ok(may_hold)
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
    Ok((Date32Type::from_naive_date(d), value.to_string()))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use object_store::memory::InMemory;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};
    use parquet::arrow::ArrowWriter;
    use parquet::file::properties::WriterProperties;

    use super::*;

    /// A file of 1,000 users whose bloom filter (sized for one value) lets any id through.
    async fn file_with_a_saturated_bloom() -> (Arc<dyn object_store::ObjectStore>, Path, u64) {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    (0..1_000).map(|i| format!("u-{i}")),
                )),
                Arc::new(Int64Array::from_iter_values(0..1_000)),
            ],
        )
        .unwrap();
        let props = WriterProperties::builder()
            .set_bloom_filter_enabled(true)
            .set_bloom_filter_max_ndv(1)
            .set_bloom_filter_fpp(0.5)
            .build();
        let mut buf = Vec::new();
        let mut writer = ArrowWriter::try_new(&mut buf, schema, Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let size = buf.len() as u64;
        let store: Arc<dyn object_store::ObjectStore> = Arc::new(InMemory::new());
        let path = Path::from("t/part-0.parquet");
        store.put(&path, PutPayload::from(buf)).await.unwrap();
        (store, path, size)
    }

    fn user(id: &str) -> SubjectColumn<'_> {
        SubjectColumn {
            column: "user_id",
            ids: vec![id],
            in_text: false,
        }
    }

    #[allow(deprecated)]
    #[tokio::test]
    async fn a_bloom_false_positive_costs_the_subject_column_not_the_file() {
        let (store, path, size) = file_with_a_saturated_bloom().await;
        // The bloom filter does let the absent id through...
        let reader = ParquetObjectReader::new(store.clone(), path.clone()).with_file_size(size);
        let mut builder = ParquetRecordBatchStreamBuilder::new(reader).await.unwrap();
        let groups = row_groups_that_may_hold(&mut builder, &[user("u-5000")])
            .await
            .unwrap();
        assert_eq!(groups, vec![0], "the test needs a false positive");
        // ...and the read of its user_id column rules the file out.
        let absent = read_if_may_hold(store.clone(), &path, size, &[user("u-5000")])
            .await
            .unwrap();
        assert!(absent.is_none());
        // A present id gets the whole file, every column.
        let present = read_if_may_hold(store, &path, size, &[user("u-7")])
            .await
            .unwrap()
            .expect("u-7 is in the file");
        let rows: usize = present.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 1_000);
        assert_eq!(present[0].num_columns(), 2);
    }
}
