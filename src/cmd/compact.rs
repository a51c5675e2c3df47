//! `strata compact`: bin-packs the small files of every partition that has enough of them
//! (see docs/operations/maintenance.md).

use clap::Args;
use strata_engine::maintenance::{self, CompactOptions};
use strata_engine::Storage;

use crate::config::StorageConfig;
use crate::progress::Progress;

#[derive(Args, Debug)]
pub struct CompactArgs {
    #[command(flatten)]
    pub storage: StorageConfig,
    /// Only this table (repeatable); every table Strata owns by default.
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// The size small files are packed into, in MiB; smaller files are small.
    #[arg(long, default_value_t = CompactOptions::DEFAULT_TARGET_FILE_BYTES >> 20)]
    pub target_mb: u64,
    /// Compact a partition once it has at least this many small files.
    #[arg(long, default_value_t = CompactOptions::DEFAULT_MIN_FILES)]
    pub min_files: usize,
    /// One JSON report per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: CompactArgs) -> anyhow::Result<()> {
    let storage = Storage::open(&args.storage.options()?).await?;
    let tables = super::maintenance_tables(&args.tables)?;
    let opts = CompactOptions {
        target_file_bytes: args.target_mb.max(1) << 20,
        min_files: args.min_files,
    };
    let mut progress = Progress::new("compact", tables.len() as u64);
    let mut reports = Vec::with_capacity(tables.len());
    for table in &tables {
        reports.push(maintenance::compact(&storage, table, &opts).await?);
        progress.inc(1);
    }
    let removed: u64 = reports.iter().map(|r| r.files_removed).sum();
    let added: u64 = reports.iter().map(|r| r.files_added).sum();
    progress.done(&format!("{removed} files compacted into {added}"));
    super::print_job_reports(&reports, args.json)
}
