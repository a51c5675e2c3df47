//! Table maintenance: compaction, vacuum (with checkpoints and the cleanup of old log
//! entries) and retention. Each job works on the tables of the registry, commits through
//! [`crate::delta::commit`] only, and returns a [`JobReport`] (what the scheduler records in
//! `job_runs` and `strata compact|vacuum|retention` print).
//!
//! ```text
//! ingest appends (many small files) --> compact: bin-pack small files per partition,
//!                                       rows by the sort column, remove+add dataChange=false
//! compaction, purge, rollup replace --> vacuum:  delete files removed > grace ago and files
//! (files removed from the table)        no commit references (killed writers) > grace old;
//!                                       checkpoint every N commits, clean old log entries
//! time passes ----------------------->  retention: remove partitions older than the table's
//!                                       window in one commit, delete their files at once
//! ```
//!
//! A report carries counts, bytes and partition names (`event_date=2026-10-01`), never a
//! subject id or a data value.

mod compact;
mod retention;
mod vacuum;

#[cfg(test)]
pub(crate) mod test_support;

use std::time::Duration;

use deltalake::writer::RecordBatchWriter;
use deltalake::{DeltaTable, DeltaTableError};

use crate::delta::log::{self, LiveFile};
use crate::registry::{self, TableDecl, TableSpec};
use crate::{EngineError, Result, Storage};

pub use compact::compact;
pub use retention::{retention, RetentionPolicy};
pub use vacuum::vacuum;

/// What one run of a maintenance job did to one table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct JobReport {
    /// `compact:<table>`, `vacuum:<table>` or `retention:<table>`.
    pub job: String,
    /// Rows rewritten (compaction) or removed (retention).
    pub rows: u64,
    pub files_added: u64,
    pub files_removed: u64,
    pub bytes_added: u64,
    pub bytes_removed: u64,
    /// The partitions touched, as `<column>=<value>`, sorted.
    pub partitions: Vec<String>,
    /// Nothing was changed: the report lists what a real run would do.
    pub dry_run: bool,
}

impl JobReport {
    fn new(job: &str, table: &str) -> Self {
        Self {
            job: format!("{job}:{table}"),
            ..Self::default()
        }
    }

    /// Counts `file` (of partition column `column`) as removed.
    fn count_removed(&mut self, column: &str, file: &LiveFile) {
        self.files_removed += 1;
        self.bytes_removed += file.size;
        self.rows += file.rows.unwrap_or(0);
        if let Some(value) = &file.partition {
            self.partitions
                .push(crate::layout::partition_name(column, value));
        }
    }

    /// Sorts the partitions and names each once.
    fn finish(mut self) -> Self {
        self.partitions.sort();
        self.partitions.dedup();
        self
    }
}

/// How compaction packs files.
#[derive(Debug, Clone)]
pub struct CompactOptions {
    /// Files smaller than this are small; a bin gathers small files up to this many bytes.
    pub target_file_bytes: u64,
    /// A partition is compacted once it has at least this many small files.
    pub min_files: usize,
}

impl CompactOptions {
    pub const DEFAULT_TARGET_FILE_BYTES: u64 = 128 << 20;
    pub const DEFAULT_MIN_FILES: usize = 8;
}

impl Default for CompactOptions {
    fn default() -> Self {
        Self {
            target_file_bytes: Self::DEFAULT_TARGET_FILE_BYTES,
            min_files: Self::DEFAULT_MIN_FILES,
        }
    }
}

/// How vacuum deletes files and keeps the log short.
#[derive(Debug, Clone)]
pub struct VacuumOptions {
    /// A removed file is deleted this long after its removal; a file no commit references,
    /// this long after it was written (longer than any write takes to commit).
    pub grace: Duration,
    /// List what would be deleted without deleting, checkpointing or cleaning anything.
    pub dry_run: bool,
    /// Write a checkpoint once this many commits landed since the last one.
    pub checkpoint_every: u64,
    /// Log entries older than this (and older than a checkpoint) are deleted; never less
    /// than `grace`, so that a removal's entry outlives its file.
    pub log_retention: Duration,
}

impl VacuumOptions {
    pub const DEFAULT_GRACE: Duration = Duration::from_secs(7 * 86_400);
    pub const DEFAULT_CHECKPOINT_EVERY: u64 = 50;
    pub const DEFAULT_LOG_RETENTION: Duration = Duration::from_secs(30 * 86_400);
}

impl Default for VacuumOptions {
    fn default() -> Self {
        Self {
            grace: Self::DEFAULT_GRACE,
            dry_run: false,
            checkpoint_every: Self::DEFAULT_CHECKPOINT_EVERY,
            log_retention: Self::DEFAULT_LOG_RETENTION,
        }
    }
}

/// The tables compaction and vacuum apply to: every table Strata owns (the registry's).
pub fn maintained_tables() -> Vec<&'static str> {
    registry::tables().map(|t| t.name).collect()
}

/// A table of the registry as it is in storage.
pub(crate) struct MaintainedTable {
    pub decl: TableDecl,
    pub delta: DeltaTable,
}

impl MaintainedTable {
    /// Loads table `name` at its latest version; None when it was never created.
    /// [`EngineError::NotFound`] when Strata owns no such table.
    pub(crate) async fn open(storage: &Storage, name: &str) -> Result<Option<Self>> {
        let decl = registry::get(name).ok_or_else(|| {
            EngineError::NotFound(format!(
                "no table `{name}`; Strata's tables are {}",
                maintained_tables().join(", ")
            ))
        })?;
        match log::load(storage, name).await {
            Ok(delta) => Ok(Some(Self { decl, delta })),
            Err(DeltaTableError::NotATable(_)) => Ok(None),
            Err(_) if !log::has_log(storage, name).await => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub(crate) fn name(&self) -> &'static str {
        self.decl.name
    }

    /// The data files of the loaded version.
    pub(crate) fn live_files(&self) -> Result<Vec<LiveFile>> {
        log::live_files(&self.delta, self.decl.partition_column)
    }

    /// How its files are written: the declared schema, or (a rollup, whose schema comes from
    /// its SQL) the table's own.
    pub(crate) fn spec(&self) -> Result<TableSpec> {
        Ok(match self.decl.schema() {
            Some(schema) => self.decl.spec_with(schema),
            None => self
                .decl
                .spec_with(RecordBatchWriter::for_table(&self.delta)?.arrow_schema()),
        })
    }
}

/// Milliseconds of `d`, saturating.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_tables() {
        let c = CompactOptions::default();
        assert_eq!(c.target_file_bytes, 128 * 1024 * 1024);
        assert_eq!(c.min_files, 8);
        let v = VacuumOptions::default();
        assert_eq!(v.grace, Duration::from_secs(7 * 24 * 3600));
        assert!(!v.dry_run);
        assert_eq!(v.checkpoint_every, 50);
        assert_eq!(v.log_retention, Duration::from_secs(30 * 24 * 3600));
        let tables = maintained_tables();
        for t in [
            "link_clicks",
            "ai_usage",
            "dead_letters",
            "job_runs",
            "click_stats_daily",
        ] {
            assert!(tables.contains(&t), "{t} is not maintained");
        }
    }

    #[tokio::test]
    async fn unknown_and_missing_tables() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        assert!(matches!(
            MaintainedTable::open(&storage, "nope").await,
            Err(EngineError::NotFound(_))
        ));
        assert!(MaintainedTable::open(&storage, "link_clicks")
            .await
            .unwrap()
            .is_none());
        let report = compact(&storage, "link_clicks", &CompactOptions::default())
            .await
            .unwrap();
        assert_eq!(report.job, "compact:link_clicks");
        assert_eq!(report.files_removed, 0);
    }
}
