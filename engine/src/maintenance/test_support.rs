//! Fixtures of the maintenance tests: a fresh root, clicks appended one file per commit, and
//! what the tables hold afterwards (rows, event ids, the data files on disk).

use std::path::{Path, PathBuf};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use strata_schemas::{EventDecoder, EventKind, RawMessage};

use crate::delta::log::{self, LiveFile};
use crate::registry::TableSpec;
use crate::table::EventTable;
use crate::{SqlSession, Storage};

pub(crate) const CLICKS: &str = "link_clicks";

/// What a purge of other subjects does to one file of `day` in `link_clicks`: a commit removes
/// it (`delete`: and it is deleted from storage at once). Returns the file.
pub(crate) async fn purge_a_file(root: &Root, day: &str, delete: bool) -> LiveFile {
    let table = log::load(&root.storage, CLICKS).await.unwrap();
    let victim = live(&root.storage, CLICKS)
        .await
        .into_iter()
        .find(|f| f.partition.as_deref() == Some(day))
        .unwrap();
    crate::delta::commit::remove_and_add(
        &root.storage,
        CLICKS,
        &table,
        &[crate::delta::commit::removal_of(
            &victim,
            "event_date",
            true,
        )],
        Vec::new(),
        ("strata-gdpr-purge", "test"),
    )
    .await
    .unwrap()
    .unwrap();
    if delete {
        std::fs::remove_file(root.file(CLICKS, &victim.path)).unwrap();
    }
    victim
}

/// A storage root in a temporary directory.
pub(crate) struct Root {
    pub dir: tempfile::TempDir,
    pub storage: Storage,
}

pub(crate) async fn root() -> Root {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open_dir(dir.path()).await.unwrap();
    Root { dir, storage }
}

impl Root {
    /// The local path of data file `rel` of `table`.
    pub fn file(&self, table: &str, rel: &str) -> PathBuf {
        self.dir.path().join("tables").join(table).join(rel)
    }

    /// Parquet files on disk in `table`'s partition directory `partition` (`event_date=...`).
    pub fn files_on_disk(&self, table: &str, partition: &str) -> usize {
        std::fs::read_dir(self.dir.path().join("tables").join(table).join(partition))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".parquet"))
                    .count()
            })
            .unwrap_or(0)
    }
}

/// `n` clicks on `day` (YYYY-MM-DD) with ids unique per `tag`, their times scattered over
/// the day so that files of one day interleave.
pub(crate) fn clicks(day: &str, tag: u32, n: usize) -> RecordBatch {
    let payloads: Vec<String> = (0..n)
        .map(|i| {
            let s = ((n - i) * 7919 + tag as usize * 131) % 86_400;
            format!(
                r#"{{"schema_version":1,"event_id":"{tag:08x}-0000-4000-8000-{i:012x}","occurred_at":"{day}T{:02}:{:02}:{:02}Z","user_id":"u-{}","item_id":"i","item_type":"profile","source":"search","target_url":"/p"}}"#,
                s / 3600,
                s / 60 % 60,
                s % 60,
                i % 5
            )
        })
        .collect();
    let raw = RawMessage::sequence(&payloads, 0, 0);
    let decoded = EventDecoder::new(EventKind::LinkClick)
        .decode(&raw, 1_800_000_000_000_000)
        .unwrap();
    assert!(decoded.rejects.is_empty(), "{:?}", decoded.rejects);
    decoded.batch
}

/// Appends `batch` to `link_clicks` in one commit (one file per day it holds).
pub(crate) async fn append(storage: &Storage, batch: RecordBatch) {
    let mut table =
        EventTable::open_or_create(storage, TableSpec::for_events(EventKind::LinkClick))
            .await
            .unwrap();
    table.append(&[batch], &[]).await.unwrap();
}

/// Appends `files` files of `rows` clicks each on `day`, one commit each.
pub(crate) async fn append_files(
    storage: &Storage,
    day: &str,
    first_tag: u32,
    files: u32,
    rows: usize,
) {
    for tag in first_tag..first_tag + files {
        append(storage, clicks(day, tag, rows)).await;
    }
}

/// The integer a query answers.
pub(crate) async fn count(storage: &Storage, sql: &str) -> i64 {
    SqlSession::open(storage)
        .await
        .unwrap()
        .query_i64(sql)
        .await
        .unwrap()
        .unwrap_or(0)
}

/// Every event id of `link_clicks`, sorted.
pub(crate) async fn event_ids(storage: &Storage) -> Vec<String> {
    let session = SqlSession::open(storage).await.unwrap();
    let (_, batches) = session
        .query("SELECT CAST(event_id AS VARCHAR) FROM link_clicks ORDER BY 1")
        .await
        .unwrap();
    let mut ids = Vec::new();
    for b in batches {
        let col = arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        ids.extend(col.as_string::<i32>().iter().flatten().map(str::to_string));
    }
    ids
}

/// The live files of `table` at its latest version.
pub(crate) async fn live(storage: &Storage, table: &str) -> Vec<LiveFile> {
    let delta = log::load(storage, table).await.unwrap();
    log::live_files(&delta, "event_date").unwrap()
}

/// What one data file holds, read straight from disk.
pub(crate) struct FileCheck {
    pub rows: usize,
    /// Rows in `occurred_at` order.
    pub sorted: bool,
    /// Every row group has a bloom filter on `user_id`.
    pub bloom_on_user_id: bool,
}

pub(crate) fn check_file(path: &Path) -> FileCheck {
    let file = std::fs::File::open(path).unwrap();
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
    let meta = builder.metadata().clone();
    let idx = builder
        .parquet_schema()
        .columns()
        .iter()
        .position(|c| c.name() == "user_id")
        .unwrap();
    let bloom_on_user_id = (0..meta.num_row_groups()).all(|rg| {
        meta.row_group(rg)
            .column(idx)
            .bloom_filter_offset()
            .is_some()
    });
    let (mut rows, mut sorted, mut last) = (0, true, i64::MIN);
    for batch in builder.build().unwrap() {
        let batch = batch.unwrap();
        rows += batch.num_rows();
        let t = batch.column_by_name("occurred_at").unwrap();
        let t = arrow::compute::cast(t, &DataType::Int64).unwrap();
        for v in t.as_primitive::<Int64Type>().values() {
            sorted &= *v >= last;
            last = *v;
        }
    }
    FileCheck {
        rows,
        sorted,
        bloom_on_user_id,
    }
}
