//! Table health, read from the Delta log and the table's directory: what an operator checks
//! to see whether compaction, checkpoints and vacuum keep up.
//!
//! ```text
//! delta-rs state (the files of the current version) --> files, bytes, small files, largest partition
//! _delta_log/_last_checkpoint -----------------------> commits since the last checkpoint
//! listing of tables/<name>/ minus the current files --> bytes waiting for vacuum
//! ```

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Utc};
use deltalake::{DeltaTable, Path};
use serde::Serialize;

use super::{layout, log};
use crate::{EngineError, Result, Storage};

/// A data file under this size counts as small: a quarter of the default compaction target
/// (128 MiB), so that a partition compaction has already packed does not count as small.
pub const SMALL_FILE_BYTES: u64 = 32 << 20;

/// The partition of a table with the most data files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionFiles {
    /// `column=value[/column=value]`, as the partition's directory is named.
    pub partition: String,
    pub files: u64,
}

/// The health of one table at one version.
#[derive(Debug, Clone, Serialize)]
pub struct TableHealth {
    pub table: String,
    pub version: u64,
    /// Data files of the current version, and their bytes.
    pub files: u64,
    pub bytes: u64,
    /// Files under [`SMALL_FILE_BYTES`]: what compaction would pack.
    pub small_files: u64,
    pub small_file_bytes_threshold: u64,
    pub largest_partition: Option<PartitionFiles>,
    /// The version of the latest checkpoint (None: none written yet).
    pub checkpoint_version: Option<u64>,
    /// Commits a reader replays on top of the checkpoint (all of them without one).
    pub commits_since_checkpoint: u64,
    /// Data files in the table's directory that the current version does not reference:
    /// files removed by a commit and not deleted yet, and files a killed writer left.
    pub vacuum_files: u64,
    pub vacuum_bytes: u64,
    pub computed_at: DateTime<Utc>,
}

/// The health of table `name` at its latest version.
pub async fn table_health(storage: &Storage, name: &str) -> Result<TableHealth> {
    let table = log::load(storage, name).await?;
    health_of(storage, name, &table).await
}

/// The health of table `name` at the version `table` has loaded.
pub(crate) async fn health_of(
    storage: &Storage,
    name: &str,
    table: &DeltaTable,
) -> Result<TableHealth> {
    let version = table
        .version()
        .ok_or_else(|| EngineError::NotFound(format!("table `{name}` has no version yet")))?;
    let mut census = FileCensus::default();
    let mut referenced = HashSet::new();
    for file in table.snapshot()?.log_data() {
        let path = file.path();
        census.add(
            u64::try_from(file.size()).unwrap_or(0),
            partition_name(&file.partition_values_map()),
        );
        referenced.insert(layout::table_file(name, &path));
    }
    let checkpoint_version = log::last_checkpoint(storage, name).await?;
    let unreferenced = unreferenced_files(storage, name, &referenced).await?;
    Ok(TableHealth {
        table: name.to_string(),
        version,
        files: census.files,
        bytes: census.bytes,
        small_files: census.small_files,
        small_file_bytes_threshold: SMALL_FILE_BYTES,
        largest_partition: census.largest_partition(),
        checkpoint_version,
        commits_since_checkpoint: match checkpoint_version {
            Some(c) => version.saturating_sub(c),
            None => version + 1,
        },
        vacuum_files: unreferenced.files,
        vacuum_bytes: unreferenced.bytes,
        computed_at: Utc::now(),
    })
}

/// `column=value` pairs sorted by column and joined by `/` (`column=` for a null value).
fn partition_name(values: &std::collections::HashMap<String, Option<String>>) -> String {
    let sorted: BTreeMap<_, _> = values.iter().collect();
    sorted
        .into_iter()
        .map(|(k, v)| format!("{k}={}", v.as_deref().unwrap_or("")))
        .collect::<Vec<_>>()
        .join("/")
}

/// Counts of the current files of a table.
#[derive(Debug, Default)]
struct FileCensus {
    files: u64,
    bytes: u64,
    small_files: u64,
    per_partition: BTreeMap<String, u64>,
}

impl FileCensus {
    fn add(&mut self, size: u64, partition: String) {
        self.files += 1;
        self.bytes += size;
        if size < SMALL_FILE_BYTES {
            self.small_files += 1;
        }
        *self.per_partition.entry(partition).or_default() += 1;
    }

    /// The partition with the most files (the first by name among equals).
    fn largest_partition(&self) -> Option<PartitionFiles> {
        self.per_partition
            .iter()
            .fold(None::<(&String, u64)>, |best, (p, &n)| match best {
                Some((_, m)) if m >= n => best,
                _ => Some((p, n)),
            })
            .map(|(p, n)| PartitionFiles {
                partition: p.clone(),
                files: n,
            })
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Unreferenced {
    files: u64,
    bytes: u64,
}

/// The data files under `tables/<name>/` that `referenced` does not hold. The log directory
/// and hidden or temporary entries are not data files ([`layout::is_data_file`]).
async fn unreferenced_files(
    storage: &Storage,
    name: &str,
    referenced: &HashSet<Path>,
) -> Result<Unreferenced> {
    let mut out = Unreferenced::default();
    for entry in log::stored_data_files(storage, name).await? {
        if referenced.contains(&entry.location) {
            continue;
        }
        out.files += 1;
        out.bytes += entry.size;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use object_store::ObjectStoreExt;

    use super::*;
    use crate::jobs::{JobRun, JobRuns};

    #[test]
    fn census_counts_small_files_and_the_largest_partition() {
        let mut c = FileCensus::default();
        c.add(1 << 20, "event_date=2026-10-02".into());
        c.add(200 << 20, "event_date=2026-10-01".into());
        c.add(2 << 20, "event_date=2026-10-02".into());
        assert_eq!((c.files, c.small_files), (3, 2));
        assert_eq!(c.bytes, (1 << 20) + (200 << 20) + (2 << 20));
        assert_eq!(
            c.largest_partition(),
            Some(PartitionFiles {
                partition: "event_date=2026-10-02".into(),
                files: 2
            })
        );
        assert_eq!(FileCensus::default().largest_partition(), None);
        let values = [
            ("b".to_string(), Some("2".to_string())),
            ("a".to_string(), None),
        ]
        .into_iter()
        .collect();
        assert_eq!(partition_name(&values), "a=/b=2");
    }

    fn run(day: u32) -> JobRun {
        let at = Utc.with_ymd_and_hms(2026, 10, day, 12, 0, 0).unwrap();
        JobRun {
            job: "compact:link_clicks".into(),
            started_at: at,
            finished_at: at,
            status: "ok".into(),
            rows: 1,
            detail: "{}".into(),
        }
    }

    #[tokio::test]
    async fn health_of_a_table_with_files_and_an_orphan() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        JobRuns::append(&storage, &[run(1)]).await.unwrap();
        JobRuns::append(&storage, &[run(2), run(2)]).await.unwrap();
        JobRuns::append(&storage, &[run(2)]).await.unwrap();

        let h = table_health(&storage, "job_runs").await.unwrap();
        assert_eq!(h.table, "job_runs");
        assert_eq!(h.files, 3, "{h:?}");
        assert!(h.bytes > 0);
        assert_eq!(h.small_files, 3);
        assert_eq!(
            h.largest_partition,
            Some(PartitionFiles {
                partition: "run_date=2026-10-02".into(),
                files: 2
            })
        );
        assert_eq!(h.checkpoint_version, None);
        assert_eq!(h.commits_since_checkpoint, h.version + 1);
        assert_eq!((h.vacuum_files, h.vacuum_bytes), (0, 0));

        // A file no commit references (a killed writer's) waits for vacuum.
        let orphan = layout::table_file("job_runs", "run_date=2026-10-01/orphan.parquet");
        storage
            .store()
            .put(&orphan, object_store::PutPayload::from_static(b"12345"))
            .await
            .unwrap();
        let h = table_health(&storage, "job_runs").await.unwrap();
        assert_eq!((h.vacuum_files, h.vacuum_bytes), (1, 5));
        assert_eq!(h.files, 3);
    }
}
