//! Compaction: the small files of a partition bin-packed into files near a target size, rows
//! ordered by the table's sort column, written with the table's writer properties (bloom
//! filters included: purges rely on them), committed as remove + add with `dataChange=false`.
//!
//! ```text
//! plan:   live files -> per partition, files < target; >= min_files of them -> bins of
//!         about target bytes (oldest first), a bin of one file is left alone
//! write:  read each bin, add the partition value back, sort, write (rolled at the target)
//! commit: read the log again -> drop a bin whose file was removed meanwhile (a purge or a
//!         retention run: its rows must not come back) and delete its output -> commit the
//!         rest; on a conflict read the log again and retry
//! ```
//!
//! Why our own bin-pack rather than delta-rs's `optimize`: `optimize` commits through its own
//! commit builder, outside [`crate::delta::commit`], so its commits would not carry the
//! rewrite fence ([`crate::delta::commit::REWRITE_FENCE_APP_ID`]) that makes a purge scanned
//! before it fail instead of resurrecting rows; it concatenates files without ordering rows
//! by `occurred_at`; and a conflict fails the whole run instead of dropping only the bins
//! whose files are gone. Writing through [`crate::writer_properties`] keeps every file Strata
//! writes alike.
//!
//! A partition that keeps receiving late events is compacted again as soon as it has
//! `min_files` small files, whatever its age. Ingest appends never conflict with a
//! compaction (they remove nothing, and a compaction reads no partition predicate), and the
//! `txn` versions (Kafka offsets, the GDPR tombstone marker) are never touched. Memory: a
//! bin's rows are held decoded while they are sorted (a bin is at most the target size
//! compressed).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{new_null_array, ArrayRef, RecordBatch, StringArray};
use arrow::compute::{concat_batches, sort_to_indices, take_record_batch};
use arrow::datatypes::SchemaRef;
use deltalake::kernel::Add;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::{StreamExt, TryStreamExt};
// ParquetObjectReader is deprecated in arrow 59 in favour of a hand-written AsyncFileReader;
// it still reads any object store, as the purge's rewrite does (see gdpr/rewrite.rs).
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::ParquetRecordBatchStreamBuilder;
use tracing::{debug, info};

use super::{CompactOptions, JobReport, MaintainedTable};
use crate::delta::log::LiveFile;
use crate::delta::{commit, layout, log};
use crate::registry::TableSpec;
use crate::writer::writer_properties;
use crate::{EngineError, Result, Storage};

/// Commit attempts before giving up when other writers keep committing conflicting changes.
const MAX_COMMIT_ATTEMPTS: u32 = 10;
/// Files of a bin read at once.
const READ_PARALLELISM: usize = 4;

/// Compacts table `table` (one of [`super::maintained_tables`]): every partition with at
/// least `opts.min_files` files smaller than `opts.target_file_bytes`. A table that does not
/// exist yet has nothing to compact.
pub async fn compact(storage: &Storage, table: &str, opts: &CompactOptions) -> Result<JobReport> {
    match Compaction::plan(storage, table, opts).await? {
        Some(plan) if !plan.bins.is_empty() => plan.write().await?.commit().await,
        _ => Ok(JobReport::new("compact", table)),
    }
}

/// Small files of one partition that are rewritten together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Bin {
    /// The partition value.
    pub partition: String,
    pub files: Vec<LiveFile>,
}

/// Groups the files smaller than the target by partition and packs, in each partition that
/// has at least `min_files` of them, the oldest first into bins of at most the target size.
/// A bin of one file would rewrite it for nothing and is left out.
pub(crate) fn plan_bins(files: Vec<LiveFile>, opts: &CompactOptions) -> Vec<Bin> {
    let mut small: BTreeMap<String, Vec<LiveFile>> = BTreeMap::new();
    for f in files
        .into_iter()
        .filter(|f| f.size < opts.target_file_bytes)
    {
        if let Some(p) = f.partition.clone() {
            small.entry(p).or_default().push(f);
        }
    }
    let mut bins = Vec::new();
    for (partition, mut files) in small {
        if files.len() < opts.min_files.max(2) {
            continue;
        }
        files.sort_by(|a, b| (a.modified_ms, &a.path).cmp(&(b.modified_ms, &b.path)));
        let mut current: Vec<LiveFile> = Vec::new();
        let mut bytes = 0;
        for f in files {
            if !current.is_empty() && bytes + f.size > opts.target_file_bytes {
                push_bin(&mut bins, &partition, std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += f.size;
            current.push(f);
        }
        push_bin(&mut bins, &partition, current);
    }
    bins
}

fn push_bin(bins: &mut Vec<Bin>, partition: &str, files: Vec<LiveFile>) {
    if files.len() >= 2 {
        bins.push(Bin {
            partition: partition.to_string(),
            files,
        });
    }
}

/// A compaction planned on one version of a table.
pub(crate) struct Compaction {
    storage: Storage,
    table: MaintainedTable,
    opts: CompactOptions,
    pub(crate) bins: Vec<Bin>,
    /// The GDPR tombstone marker's version when the bins were planned (see [`yields_to_purge`]).
    marker: Option<i64>,
}

/// A bin rewritten: its new files, not committed yet.
struct WrittenBin {
    bin: Bin,
    adds: Vec<Add>,
    rows: u64,
}

/// The bins of a compaction written, ready to commit.
pub(crate) struct WrittenCompaction {
    storage: Storage,
    table: MaintainedTable,
    opts: CompactOptions,
    bins: Vec<WrittenBin>,
    marker: Option<i64>,
}

impl Compaction {
    /// The bins of the latest version of `table`; None when the table does not exist.
    pub(crate) async fn plan(
        storage: &Storage,
        table: &str,
        opts: &CompactOptions,
    ) -> Result<Option<Self>> {
        let Some(table) = MaintainedTable::open(storage, table).await? else {
            return Ok(None);
        };
        let bins = plan_bins(table.live_files()?, opts);
        let marker = log::txn_version(&table.delta, commit::TOMBSTONE_MARKER_APP_ID).await?;
        Ok(Some(Self {
            storage: storage.clone(),
            table,
            opts: opts.clone(),
            bins,
            marker,
        }))
    }

    /// Reads, sorts and rewrites every bin (nothing is committed).
    pub(crate) async fn write(self) -> Result<WrittenCompaction> {
        let spec = self.table.spec()?;
        let mut written = Vec::with_capacity(self.bins.len());
        for bin in self.bins {
            let batch = match read_bin(&self.storage, &self.table, &bin).await {
                Ok(batch) => batch,
                // A purge or a retention run removed a file of the bin since the plan, and
                // deleted it at once: the bin is left out (its rows must not come back, and
                // its other files are compacted by the next slot), the others go on.
                Err(e) if e.is_missing_file() => {
                    info!(
                        table = spec.name,
                        files = bin.files.len(),
                        "a file of the bin was deleted since the plan; bin left out"
                    );
                    continue;
                }
                Err(e) => return Err(e),
            };
            let rows = batch.num_rows() as u64;
            let batch = sorted_by(batch, spec.sort_column)?;
            let adds = write_bin(&self.table, &spec, batch, self.opts.target_file_bytes).await?;
            debug!(
                table = spec.name,
                files = bin.files.len(),
                rows,
                "bin rewritten"
            );
            written.push(WrittenBin { bin, adds, rows });
        }
        Ok(WrittenCompaction {
            storage: self.storage,
            table: self.table,
            opts: self.opts,
            bins: written,
            marker: self.marker,
        })
    }
}

impl WrittenCompaction {
    /// Commits the bins whose files are all still live, reading the log again before each
    /// attempt; the output of a bin that lost a file is deleted, never committed.
    pub(crate) async fn commit(mut self) -> Result<JobReport> {
        let name = self.table.name();
        for attempt in 1..=MAX_COMMIT_ATTEMPTS {
            self.table.delta.update_state().await?;
            if self.yields_to_purge().await? {
                return Ok(JobReport::new("compact", name));
            }
            self.drop_stale_bins().await?;
            if self.bins.is_empty() {
                return Ok(JobReport::new("compact", name));
            }
            let column = self.table.decl.partition_column;
            let removes = self
                .bins
                .iter()
                .flat_map(|b| &b.bin.files)
                .map(|f| commit::removal_of(f, column, false))
                .collect();
            let adds = self.bins.iter().flat_map(|b| b.adds.clone()).collect();
            let target = self.opts.target_file_bytes;
            match commit::commit_compaction(&self.table.delta, name, removes, adds, target).await? {
                Some(version) => {
                    let report = self.report();
                    info!(
                        table = name,
                        version,
                        files_removed = report.files_removed,
                        files_added = report.files_added,
                        "compaction committed"
                    );
                    return Ok(report);
                }
                None => {
                    debug!(
                        table = name,
                        attempt, "compaction conflicted; reading the log again"
                    );
                }
            }
        }
        for b in std::mem::take(&mut self.bins) {
            delete_outputs(&self.storage, name, &b.adds).await?;
        }
        Err(EngineError::Internal(format!(
            "compacting {name}: other writers kept committing first ({MAX_COMMIT_ATTEMPTS} attempts)"
        )))
    }

    /// A purge started since the bins were planned (it raises the tombstone marker before it
    /// scans): the compaction gives way, deletes what it wrote and commits nothing, so that a
    /// purge never has to scan again because of it. The next slot compacts the purged files.
    async fn yields_to_purge(&mut self) -> Result<bool> {
        let now = log::txn_version(&self.table.delta, commit::TOMBSTONE_MARKER_APP_ID).await?;
        if now == self.marker {
            return Ok(false);
        }
        info!(
            table = self.table.name(),
            "a purge started during the compaction; compaction yields"
        );
        for b in std::mem::take(&mut self.bins) {
            delete_outputs(&self.storage, self.table.name(), &b.adds).await?;
        }
        Ok(true)
    }

    /// Drops (and deletes the output of) every bin with a file the loaded version no longer
    /// holds: a purge or a retention run removed it, and its rows must not come back.
    async fn drop_stale_bins(&mut self) -> Result<()> {
        let live: HashSet<String> = self
            .table
            .live_files()?
            .into_iter()
            .map(|f| f.path)
            .collect();
        let (keep, stale): (Vec<_>, Vec<_>) = std::mem::take(&mut self.bins)
            .into_iter()
            .partition(|b| b.bin.files.iter().all(|f| live.contains(&f.path)));
        for b in stale {
            info!(
                table = self.table.name(),
                partition = %b.bin.partition,
                "a file of the bin was removed meanwhile; bin dropped"
            );
            delete_outputs(&self.storage, self.table.name(), &b.adds).await?;
        }
        self.bins = keep;
        Ok(())
    }

    fn report(&self) -> JobReport {
        let mut report = JobReport::new("compact", self.table.name());
        let column = self.table.decl.partition_column;
        for b in &self.bins {
            for f in &b.bin.files {
                report.count_removed(column, f);
            }
            report.files_added += b.adds.len() as u64;
            report.bytes_added += b
                .adds
                .iter()
                .map(|a| u64::try_from(a.size).unwrap_or(0))
                .sum::<u64>();
        }
        // The rows read, rather than the log's statistics.
        report.rows = self.bins.iter().map(|b| b.rows).sum();
        report.finish()
    }
}

/// Every row of `bin`, in the table's schema (the partition value added back).
async fn read_bin(storage: &Storage, table: &MaintainedTable, bin: &Bin) -> Result<RecordBatch> {
    let schema: SchemaRef = RecordBatchWriter::for_table(&table.delta)?.arrow_schema();
    let column = table.decl.partition_column;
    // Collected first: a stream over a borrowing `map` closure would make this future `Send`
    // only for one lifetime, and the scheduler spawns it.
    let reads: Vec<_> = bin
        .files
        .iter()
        .map(|f| {
            let path = layout::table_file(table.name(), &f.path);
            read_file(storage.store().clone(), path, f.size)
        })
        .collect();
    let files: Vec<Vec<RecordBatch>> = futures::stream::iter(reads)
        .buffered(READ_PARALLELISM)
        .try_collect()
        .await?;
    let batches = files
        .iter()
        .flatten()
        .map(|b| in_table_schema(b, &schema, column, &bin.partition))
        .collect::<Result<Vec<_>>>()?;
    Ok(concat_batches(&schema, &batches)?)
}

/// The rows of one data file.
#[allow(deprecated)]
async fn read_file(
    store: Arc<dyn object_store::ObjectStore>,
    path: object_store::path::Path,
    size: u64,
) -> Result<Vec<RecordBatch>> {
    let failed = |e: parquet::errors::ParquetError| EngineError::Internal(format!("{path}: {e}"));
    let reader = ParquetObjectReader::new(store, path.clone()).with_file_size(size);
    ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(failed)?
        .build()
        .map_err(failed)?
        .try_collect()
        .await
        .map_err(failed)
}

/// A batch read from a data file (which holds no partition column) in `schema`: the partition
/// column filled with `value`, a column the file predates (nullable) filled with nulls.
fn in_table_schema(
    batch: &RecordBatch,
    schema: &SchemaRef,
    partition_column: &str,
    value: &str,
) -> Result<RecordBatch> {
    let n = batch.num_rows();
    let columns = schema
        .fields()
        .iter()
        .map(|f| {
            let column: ArrayRef = if f.name() == partition_column {
                Arc::new(StringArray::from(vec![value; n]))
            } else if let Some(c) = batch.column_by_name(f.name()) {
                c.clone()
            } else if f.is_nullable() {
                new_null_array(f.data_type(), n)
            } else {
                return Err(EngineError::Internal(format!(
                    "a data file lacks column {}",
                    f.name()
                )));
            };
            Ok(arrow::compute::cast(&column, f.data_type())?)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(RecordBatch::try_new(schema.clone(), columns)?)
}

/// `batch` ordered by `column` (as it is when the batch has no such column).
fn sorted_by(batch: RecordBatch, column: &str) -> Result<RecordBatch> {
    let Some(key) = batch.column_by_name(column) else {
        return Ok(batch);
    };
    let idx = sort_to_indices(key, None, None)?;
    Ok(take_record_batch(&batch, &idx)?)
}

/// Writes a bin's rows with the table's writer properties, rolling files at `target` bytes.
async fn write_bin(
    table: &MaintainedTable,
    spec: &TableSpec,
    batch: RecordBatch,
    target: u64,
) -> Result<Vec<Add>> {
    let mut writer = RecordBatchWriter::for_table(&table.delta)?
        .with_writer_properties(writer_properties(spec, batch.num_rows()))
        .with_target_file_size(target);
    writer.write(batch).await?;
    Ok(writer.flush().await?)
}

/// Deletes files written for a commit that will not happen (nobody references them).
async fn delete_outputs(storage: &Storage, table: &str, adds: &[Add]) -> Result<()> {
    for a in adds {
        storage
            .delete_if_present(&layout::table_file(table, &a.path))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::log;
    use crate::maintenance::test_support::*;

    const DAY: &str = "2026-10-01";
    const OTHER_DAY: &str = "2026-10-02";

    fn file(path: &str, partition: &str, size: u64, modified_ms: i64) -> LiveFile {
        LiveFile {
            path: path.into(),
            size,
            partition: Some(partition.into()),
            rows: Some(1),
            modified_ms,
        }
    }

    #[test]
    fn bins_pack_the_small_files_of_busy_partitions_oldest_first() {
        let opts = CompactOptions {
            target_file_bytes: 100,
            min_files: 3,
        };
        let files = vec![
            file("a4", "a", 40, 4),
            file("a1", "a", 40, 1),
            file("a3", "a", 40, 3),
            file("a2", "a", 40, 2),
            file("big", "a", 100, 0),
            file("b1", "b", 10, 1),
            file("b2", "b", 10, 2),
            file("c1", "c", 60, 1),
            file("c2", "c", 60, 2),
            file("c3", "c", 60, 3),
        ];
        let bins = plan_bins(files, &opts);
        let names: Vec<Vec<&str>> = bins
            .iter()
            .map(|b| b.files.iter().map(|f| f.path.as_str()).collect())
            .collect();
        // a: two bins of two; big is not small; b has too few small files; c's files do
        // not fit two to a bin.
        assert_eq!(names, vec![vec!["a1", "a2"], vec!["a3", "a4"]]);
        assert!(bins.iter().all(|b| b.partition == "a"));
    }

    #[tokio::test]
    async fn forty_small_files_become_one_with_the_same_rows_sorted_and_bloom_filtered() {
        let root = root().await;
        append_files(&root.storage, DAY, 0, 40, 50).await;
        let before = event_ids(&root.storage).await;
        assert_eq!(before.len(), 2000);
        assert_eq!(live(&root.storage, CLICKS).await.len(), 40);

        let report = compact(&root.storage, CLICKS, &CompactOptions::default())
            .await
            .unwrap();
        assert_eq!(report.job, "compact:link_clicks");
        assert_eq!(report.files_removed, 40);
        assert_eq!(report.rows, 2000);
        assert_eq!(report.partitions, vec![format!("event_date={DAY}")]);
        let after = live(&root.storage, CLICKS).await;
        assert_eq!(after.len(), 1);
        assert_eq!(report.files_added, 1);
        assert_eq!(event_ids(&root.storage).await, before, "the same rows");
        let check = check_file(&root.file(CLICKS, &after[0].path));
        assert_eq!(check.rows, 2000);
        assert!(check.sorted, "rows ordered by occurred_at");
        assert!(check.bloom_on_user_id, "bloom filters kept");

        let again = compact(&root.storage, CLICKS, &CompactOptions::default())
            .await
            .unwrap();
        assert_eq!(again.files_removed, 0, "nothing left to compact");
    }

    #[tokio::test]
    async fn an_append_landing_during_a_compaction_is_kept() {
        let root = root().await;
        append_files(&root.storage, DAY, 0, 10, 20).await;
        let plan = Compaction::plan(&root.storage, CLICKS, &CompactOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(plan.bins.len(), 1);
        let written = plan.write().await.unwrap();
        // Ingest commits between the compaction's read and its commit.
        append(&root.storage, clicks(DAY, 99, 20)).await;
        let report = written.commit().await.unwrap();
        assert_eq!(report.files_removed, 10);
        assert_eq!(
            count(&root.storage, "SELECT count(*) FROM link_clicks").await,
            220
        );
        assert_eq!(live(&root.storage, CLICKS).await.len(), 2);
    }

    #[tokio::test]
    async fn a_bin_whose_file_a_purge_deleted_before_the_read_is_left_out() {
        let root = root().await;
        append_files(&root.storage, DAY, 0, 8, 20).await;
        append_files(&root.storage, OTHER_DAY, 100, 8, 20).await;
        let plan = Compaction::plan(&root.storage, CLICKS, &CompactOptions::default())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(plan.bins.len(), 2);
        // A purge removes a file of DAY and deletes it at once, before the bins are read.
        purge_a_file(&root, DAY, true).await;

        let report = plan.write().await.unwrap().commit().await.unwrap();
        assert_eq!(report.partitions, vec![format!("event_date={OTHER_DAY}")]);
        assert_eq!(report.files_removed, 8);
        assert_eq!(
            count(&root.storage, "SELECT count(*) FROM link_clicks").await,
            15 * 20,
            "the purged rows did not come back"
        );
    }

    #[tokio::test]
    async fn a_bin_whose_file_a_purge_removed_meanwhile_is_dropped() {
        let root = root().await;
        append_files(&root.storage, DAY, 0, 8, 20).await;
        append_files(&root.storage, OTHER_DAY, 100, 8, 20).await;
        let written = Compaction::plan(&root.storage, CLICKS, &CompactOptions::default())
            .await
            .unwrap()
            .unwrap()
            .write()
            .await
            .unwrap();
        // A purge rewrites a file of DAY (here: removes it) before the compaction commits.
        purge_a_file(&root, DAY, false).await;

        let report = written.commit().await.unwrap();
        assert_eq!(report.partitions, vec![format!("event_date={OTHER_DAY}")]);
        assert_eq!(report.files_removed, 8);
        let after = live(&root.storage, CLICKS).await;
        let of = |day: &str| {
            after
                .iter()
                .filter(|f| f.partition.as_deref() == Some(day))
                .count()
        };
        assert_eq!((of(DAY), of(OTHER_DAY)), (7, 1));
        // DAY's compacted output was deleted, never committed: its 7 files and the removed one.
        assert_eq!(root.files_on_disk(CLICKS, &format!("event_date={DAY}")), 8);
        assert_eq!(
            count(&root.storage, "SELECT count(*) FROM link_clicks").await,
            15 * 20,
            "the purged rows did not come back"
        );
    }

    #[tokio::test]
    async fn a_purge_scanned_before_a_compaction_committed_scans_again() {
        let root = root().await;
        append_files(&root.storage, DAY, 0, 8, 20).await;
        let scanned = log::load(&root.storage, CLICKS).await.unwrap();
        let victim = live(&root.storage, CLICKS).await.remove(0);
        let report = compact(&root.storage, CLICKS, &CompactOptions::default())
            .await
            .unwrap();
        assert_eq!(report.files_removed, 8);
        // Without the rewrite fence delta-rs would accept this commit (the compaction's
        // removes do not change data), and the victim's rows would live on in the output.
        let purge = commit::remove_and_add(
            &root.storage,
            CLICKS,
            &scanned,
            &[commit::removal_of(&victim, "event_date", true)],
            Vec::new(),
            ("strata-gdpr-purge", "test"),
        )
        .await
        .unwrap();
        assert_eq!(purge, None);
        assert_eq!(
            count(&root.storage, "SELECT count(*) FROM link_clicks").await,
            160
        );
    }
}
