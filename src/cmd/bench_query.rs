//! `strata bench query`: panel latency (cold and cached) and rollup throughput on a root of
//! generated events, with DuckDB on the same Parquet files for comparison when asked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::NaiveDate;
use clap::Args;
use serde::Serialize;
use strata_engine::{
    Catalog, Panels, QueryLimits, ResultCache, RollupBuilder, SqlSession, Storage, StorageOptions,
    ROLLUPS,
};

#[derive(Args, Debug)]
pub struct BenchQueryArgs {
    /// Storage root holding the events (generated into it first when it has none).
    #[arg(long, default_value = "./bench-data")]
    pub storage_url: String,
    /// Events to generate when the root is empty (`strata gen --storage-url` does the same).
    #[arg(long, default_value_t = 20_000_000)]
    pub events: u64,
    /// Runs per panel and mode (p50 and p99 are taken over them).
    #[arg(long, default_value_t = 30)]
    pub iterations: usize,
    /// Also time DuckDB on the same Parquet files with this Python (which must have `duckdb`).
    #[arg(long)]
    pub duckdb_python: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
    /// Only these panels (repeatable); all of them by default.
    #[arg(long = "panel")]
    pub panels: Vec<String>,
    /// Time the panels only, over the rollups as they are (no rebuild, no DuckDB).
    #[arg(long)]
    pub skip_rollups: bool,
}

#[derive(Debug, Serialize)]
struct PanelTiming {
    panel: String,
    rows: usize,
    cold_p50_ms: f64,
    cold_p99_ms: f64,
    cached_p50_ms: f64,
    cached_p99_ms: f64,
    /// Cold runs answered by the panel's fallback statement (top_items: the full items table
    /// instead of the daily top lists).
    fallback_runs: usize,
}

#[derive(Debug, Serialize)]
struct RollupTiming {
    rollup: String,
    source_rows: u64,
    rows: usize,
    seconds: f64,
    source_rows_per_sec: f64,
    duckdb_seconds: Option<f64>,
    /// DuckDB writing the rollup as zstd Parquet partitioned by day (no Delta commit).
    duckdb_parquet_seconds: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Results {
    link_clicks: u64,
    ai_usage: u64,
    from: NaiveDate,
    to: NaiveDate,
    rollups: Vec<RollupTiming>,
    panels: Vec<PanelTiming>,
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(|a, b| a.total_cmp(b));
    let idx = ((samples.len() as f64 - 1.0) * q).round() as usize;
    samples[idx]
}

async fn count(session: &SqlSession, sql: &str) -> anyhow::Result<i64> {
    Ok(session.query_i64(sql).await?.unwrap_or(0))
}

/// The root of a bench run, with `events` generated events written into it first when it has
/// no `link_clicks` yet (the same as `strata gen --events N --storage-url URL`).
pub async fn bench_root(label: &str, url: &str, events: u64) -> anyhow::Result<Storage> {
    let storage = Storage::open(&StorageOptions {
        url: url.to_string(),
        ..Default::default()
    })
    .await?;
    if !storage
        .list_tables()
        .await?
        .iter()
        .any(|t| t == "link_clicks")
    {
        eprintln!(
            "{label}: generating {events} events into {}",
            storage.root()
        );
        crate::cmd::gen::run(crate::cmd::gen::GenArgs::for_storage(url, events)).await?;
    }
    Ok(storage)
}

pub async fn run(args: BenchQueryArgs) -> anyhow::Result<()> {
    let storage = bench_root("bench query", &args.storage_url, args.events).await?;
    strata_engine::ensure_tables(&storage).await?;
    let session = SqlSession::open(&storage).await?;
    let clicks = count(&session, "SELECT count(*) FROM link_clicks").await? as u64;
    let ai = count(&session, "SELECT count(*) FROM ai_usage").await? as u64;
    let max_day = count(
        &session,
        "SELECT CAST(max(event_date) AS BIGINT) FROM link_clicks",
    )
    .await;
    let to = match max_day {
        Ok(d) => NaiveDate::from_num_days_from_ce_opt(d as i32 + 719_163).context("date")?,
        Err(_) => chrono::Utc::now().date_naive(),
    };
    let from = to - chrono::Days::new(29);
    eprintln!("bench query: {clicks} clicks, {ai} AI calls; panels over {from}..{to}");

    // Rollups from scratch, one at a time, each on a fresh catalog (no Parquet footer cached
    // by an earlier one). Timed: reading, computing, writing and committing the rollup; not
    // recording the run in job_runs (another table's commit, bookkeeping DuckDB has no part of).
    let mut rollups = Vec::new();
    for spec in ROLLUPS.iter().filter(|_| !args.skip_rollups) {
        let catalog = Catalog::open(&storage).await?;
        let started = Instant::now();
        let reports = RollupBuilder::new(catalog.clone())
            .only(Some(spec.name.to_string()))
            .rebuild(true)
            .record(false)
            .run()
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        let source_rows = match spec.source {
            "link_clicks" => clicks,
            "ai_usage" => ai,
            // A rollup of a rollup (click_stats_daily_totals): the rows that one produced.
            other => rollups
                .iter()
                .find(|r: &&RollupTiming| r.rollup == other)
                .map_or(0, |r| r.rows as u64),
        };
        rollups.push(RollupTiming {
            rollup: spec.name.into(),
            source_rows,
            rows: reports.iter().map(|r| r.rows).sum(),
            seconds,
            source_rows_per_sec: source_rows as f64 / seconds,
            duckdb_seconds: None,
            duckdb_parquet_seconds: None,
        });
        eprintln!("bench query: rollup {} in {seconds:.2} s", spec.name);
    }
    if let Some(python) = args.duckdb_python.as_ref().filter(|_| !args.skip_rollups) {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/bench_duckdb.py");
        let out = std::process::Command::new(python)
            .arg(script)
            .arg(
                storage
                    .root()
                    .to_file_path()
                    .map_err(|_| anyhow::anyhow!("DuckDB comparison needs a local root"))?,
            )
            .output()
            .context("running DuckDB")?;
        anyhow::ensure!(
            out.status.success(),
            "DuckDB run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let times: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        for r in &mut rollups {
            r.duckdb_seconds = times[&r.rollup].as_f64();
            r.duckdb_parquet_seconds = times[format!("{}:parquet", r.rollup)].as_f64();
        }
    }

    // Panels: cold (a fresh cache each run) and cached.
    let catalog = Catalog::open(&storage).await?;
    let limits = QueryLimits::default();
    let mut panels = Vec::new();
    let registry = Panels::new(Arc::new(ResultCache::new(256 << 20)))?;
    let names: Vec<&'static str> = registry
        .list()
        .map(|p| p.name)
        .filter(|n| args.panels.is_empty() || args.panels.iter().any(|p| p == n))
        .collect();
    if let Some(unknown) = args.panels.iter().find(|p| !names.contains(&p.as_str())) {
        anyhow::bail!(
            "no panel named {unknown:?} (see GET /v1/panels or docs/rollups-and-panels.md)"
        );
    }
    for name in names {
        let panel = registry.get(name)?;
        let mut pairs = vec![];
        if panel.params.iter().any(|p| p.name == "from") && name != "dead_letters_daily" {
            pairs.push(("from".to_string(), from.to_string()));
            pairs.push(("to".to_string(), to.to_string()));
        }
        let params = registry.parse_params(name, &pairs)?;
        let mut cold = Vec::new();
        let mut rows = 0;
        let mut fallback_runs = 0;
        for _ in 0..args.iterations {
            let fresh = Panels::new(Arc::new(ResultCache::new(256 << 20)))?;
            let started = Instant::now();
            let r = fresh
                .run(&catalog, name, &params, &limits, Duration::from_secs(3600))
                .await?;
            cold.push(started.elapsed().as_secs_f64() * 1000.0);
            rows = r.batches.iter().map(|b| b.num_rows()).sum();
            fallback_runs += usize::from(r.fallback);
        }
        let cached_registry = Panels::new(Arc::new(ResultCache::new(256 << 20)))?;
        cached_registry
            .run(&catalog, name, &params, &limits, Duration::from_secs(3600))
            .await?;
        let mut cached = Vec::new();
        for _ in 0..args.iterations {
            let started = Instant::now();
            cached_registry
                .run(&catalog, name, &params, &limits, Duration::from_secs(3600))
                .await?;
            cached.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        panels.push(PanelTiming {
            panel: name.into(),
            rows,
            cold_p50_ms: percentile(&mut cold, 0.5),
            cold_p99_ms: percentile(&mut cold, 0.99),
            cached_p50_ms: percentile(&mut cached, 0.5),
            cached_p99_ms: percentile(&mut cached, 0.99),
            fallback_runs,
        });
    }

    println!(
        "{:<24} {:>6} {:>12} {:>12} {:>12} {:>12}",
        "panel", "rows", "cold p50 ms", "cold p99 ms", "cache p50", "cache p99"
    );
    for p in &panels {
        println!(
            "{:<24} {:>6} {:>12.2} {:>12.2} {:>12.3} {:>12.3}{}",
            p.panel,
            p.rows,
            p.cold_p50_ms,
            p.cold_p99_ms,
            p.cached_p50_ms,
            p.cached_p99_ms,
            match p.fallback_runs {
                0 => String::new(),
                n => format!("  ({n} cold runs by the fallback)"),
            }
        );
    }
    println!();
    println!(
        "{:<24} {:>12} {:>10} {:>14} {:>10} {:>16}",
        "rollup", "source rows", "seconds", "rows/s", "duckdb s", "duckdb->parquet"
    );
    for r in &rollups {
        println!(
            "{:<24} {:>12} {:>10.2} {:>14.0} {:>10} {:>16}",
            r.rollup,
            r.source_rows,
            r.seconds,
            r.source_rows_per_sec,
            r.duckdb_seconds.map_or("-".into(), |s| format!("{s:.2}")),
            r.duckdb_parquet_seconds
                .map_or("-".into(), |s| format!("{s:.2}"))
        );
    }
    let results = Results {
        link_clicks: clicks,
        ai_usage: ai,
        from,
        to,
        rollups,
        panels,
    };
    if let Some(path) = &args.json_out {
        std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
    }
    Ok(())
}
