//! `strata retention`: removes the partitions older than each table's retention window
//! (see docs/operations/maintenance.md for the defaults).

use chrono::NaiveDate;
use clap::Args;
use strata_engine::maintenance;
use strata_engine::Storage;

use crate::config::StorageConfig;
use crate::progress::Progress;

#[derive(Args, Debug)]
pub struct RetentionArgs {
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub retention: crate::config::RetentionConfig,
    /// List the partitions, files and bytes that would go; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The day the windows count back from, YYYY-MM-DD; default today (UTC).
    #[arg(long)]
    pub today: Option<NaiveDate>,
    /// One JSON report per line instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: RetentionArgs) -> anyhow::Result<()> {
    let storage = Storage::open(&args.storage.options()?).await?;
    let today = args
        .today
        .unwrap_or_else(|| chrono::Utc::now().date_naive());
    let progress = Progress::new("retention", 0);
    let reports =
        maintenance::retention(&storage, &args.retention.policy()?, today, args.dry_run).await?;
    let partitions: usize = reports.iter().map(|r| r.partitions.len()).sum();
    let verb = if args.dry_run {
        "would be removed"
    } else {
        "removed"
    };
    progress.done(&format!(
        "{partitions} partitions of {} tables {verb}",
        reports.len()
    ));
    super::print_job_reports(&reports, args.json)
}
