//! `strata vacuum`: deletes the files no version needs any more once their grace period is
//! over, checkpoints and cleans old log entries (see docs/operations/maintenance.md).

use std::time::Duration;

use clap::Args;
use strata_engine::maintenance::{self, VacuumOptions};
use strata_engine::Storage;

use crate::config::StorageConfig;
use crate::progress::Progress;

#[derive(Args, Debug)]
pub struct VacuumArgs {
    #[command(flatten)]
    pub storage: StorageConfig,
    /// Only this table (repeatable); every table Strata owns by default.
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// Hours a removed file is kept after its removal (and a file no commit references after
    /// it was written): readers of older versions still need them, writers have not committed.
    #[arg(long, default_value_t = VacuumOptions::DEFAULT_GRACE.as_secs() / 3600)]
    pub grace_hours: u64,
    /// List what would be deleted; delete, checkpoint and clean nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// One JSON report per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: VacuumArgs) -> anyhow::Result<()> {
    let storage = Storage::open(&args.storage.options()?).await?;
    let tables = super::maintenance_tables(&args.tables)?;
    let opts = VacuumOptions {
        grace: Duration::from_secs(args.grace_hours.saturating_mul(3600)),
        dry_run: args.dry_run,
        ..VacuumOptions::default()
    };
    let mut progress = Progress::new("vacuum", tables.len() as u64);
    let mut reports = Vec::with_capacity(tables.len());
    for table in &tables {
        reports.push(maintenance::vacuum(&storage, table, &opts).await?);
        progress.inc(1);
    }
    let files: u64 = reports.iter().map(|r| r.files_removed).sum();
    let verb = if args.dry_run {
        "would be deleted"
    } else {
        "deleted"
    };
    progress.done(&format!("{files} files {verb}"));
    super::print_job_reports(&reports, args.json)
}
