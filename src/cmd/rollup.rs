use std::time::Instant;

use clap::Args;
use strata_engine::{Catalog, RollupBuilder, Storage};

use crate::config::StorageConfig;

#[derive(Args, Debug)]
pub struct RollupArgs {
    #[command(flatten)]
    pub storage: StorageConfig,
    /// Recompute every day from the raw events instead of only the changed days.
    #[arg(long)]
    pub rebuild: bool,
    /// Run only this rollup (click_stats_daily, click_stats_daily_totals, click_stats_daily_items,
    /// ai_usage_daily).
    #[arg(long)]
    pub only: Option<String>,
}

pub async fn run(args: RollupArgs) -> anyhow::Result<()> {
    let storage = Storage::open(&args.storage.options()?).await?;
    strata_engine::ensure_tables(&storage).await?;
    let catalog = Catalog::open(&storage).await?;
    let started = Instant::now();
    let progress = crate::progress::Progress::new("rollup", 0);
    let reports = RollupBuilder::new(catalog)
        .rebuild(args.rebuild)
        .only(args.only)
        .run()
        .await?;
    progress.done(&format!(
        "{} rollups in {:.1} s",
        reports.len(),
        started.elapsed().as_secs_f64()
    ));
    for r in &reports {
        println!("{}", serde_json::to_string(r)?);
    }
    Ok(())
}
