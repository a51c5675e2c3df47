//! `strata bench purge`: time to erase one median subject, and how much was rewritten.
//! It really purges that subject from the root it is given.

use std::time::Instant;

use anyhow::Context;
use clap::Args;
use serde_json::json;
use strata_engine::gdpr::{PurgeBuilder, Subject};
use strata_engine::SqlSession;

#[derive(Args, Debug)]
pub struct BenchPurgeArgs {
    /// Storage root holding the events (generated into it first when it has none).
    #[arg(long, default_value = "./bench-data")]
    pub storage_url: String,
    /// Events to generate when the root is empty.
    #[arg(long, default_value_t = 20_000_000)]
    pub events: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

pub async fn run(args: BenchPurgeArgs) -> anyhow::Result<()> {
    let storage =
        crate::cmd::bench_query::bench_root("bench purge", &args.storage_url, args.events).await?;
    let session = SqlSession::open(&storage).await?;
    // The median subject by number of clicks.
    let (_, batches) = session
        .query(
            "WITH u AS (SELECT user_id, count(*) AS n FROM link_clicks WHERE user_id IS NOT NULL GROUP BY user_id), \
             r AS (SELECT user_id, n, row_number() OVER (ORDER BY n, user_id) AS i, count(*) OVER () AS c FROM u) \
             SELECT user_id, n FROM r WHERE i = (c + 1) / 2",
        )
        .await?;
    let b = batches.first().context("no users in link_clicks")?;
    let user = arrow::compute::cast(b.column(0), &arrow::datatypes::DataType::Utf8)?;
    let user = user
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .context("user id")?
        .value(0)
        .to_string();
    let clicks = b
        .column(1)
        .as_any()
        .downcast_ref::<arrow::array::Int64Array>()
        .context("count")?
        .value(0);
    eprintln!("bench purge: median subject has {clicks} clicks");
    let started = Instant::now();
    let receipt = PurgeBuilder::new(&storage, Subject::new(user))
        .requested_by("bench")
        .await?;
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "purge of one median subject: {seconds:.2} s, {} rows removed, verified {}",
        receipt.rows_removed, receipt.verified
    );
    let t = receipt.timings_ms;
    println!(
        "time: rewrite {} ms, rollups {} ms ({} rollup days), verification {} ms",
        t.rewrite, t.rollups, receipt.rollup_days_recomputed, t.verify
    );
    println!(
        "{:<14} {:>8} {:>8} {:>10} {:>14}",
        "table", "files", "scanned", "rewritten", "bytes rewritten"
    );
    for t in &receipt.tables {
        println!(
            "{:<14} {:>8} {:>8} {:>10} {:>14}",
            t.table, t.files_in_table, t.files_scanned, t.files_rewritten, t.bytes_rewritten
        );
    }
    if let Some(path) = &args.json_out {
        std::fs::write(
            path,
            serde_json::to_vec_pretty(&json!({ "seconds": seconds, "receipt": receipt }))?,
        )?;
    }
    Ok(())
}
