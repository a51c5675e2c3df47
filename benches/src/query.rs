//! `strata bench query`: panel latency (cold and cached) and rollup throughput on a root of
//! generated events, with DuckDB on the same Parquet files for comparison when asked.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::NaiveDate;
use serde::Serialize;
use strata_engine::{
    Catalog, PanelParams, Panels, QueryLimits, ResultCache, RollupBuilder, RollupSpec, SqlSession,
    Storage, ROLLUPS,
};

use crate::measure::percentile;

/// The DuckDB side of the comparison: it prints the seconds of each rollup as JSON.
const DUCKDB_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench_duckdb.py");
const POLARS_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench_polars.py");
/// Memory of each panel registry's result cache.
const PANEL_CACHE_BYTES: usize = 256 << 20;
/// How old the catalog snapshot a panel runs on may be: longer than a run, so that the runs
/// time the panels, not a refresh of the snapshot.
const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(3600);

/// What one `strata bench query` run does.
#[derive(Debug, Clone)]
pub struct QueryBench {
    /// Runs per panel and mode (p50 and p99 are taken over them).
    pub iterations: usize,
    /// Also time DuckDB on the same Parquet files with this Python (which must have `duckdb`).
    pub duckdb_python: Option<String>,
    /// Also time Polars on the same Parquet files with this Python (which must have `polars`).
    pub polars_python: Option<String>,
    /// Only these panels; all of them when empty.
    pub panels: Vec<String>,
    /// Time the panels only, over the rollups as they are (no rebuild, no DuckDB).
    pub skip_rollups: bool,
}

impl QueryBench {
    pub const DEFAULT_ITERATIONS: usize = 30;
}

#[derive(Debug, Serialize)]
pub struct PanelTiming {
    pub panel: String,
    pub rows: usize,
    pub cold_p50_ms: f64,
    pub cold_p99_ms: f64,
    pub cached_p50_ms: f64,
    pub cached_p99_ms: f64,
    /// Cold runs answered by the panel's fallback statement (top_items: the full items table
    /// instead of the daily top lists).
    pub fallback_runs: usize,
}

#[derive(Debug, Serialize)]
pub struct RollupTiming {
    pub rollup: String,
    pub source_rows: u64,
    pub rows: usize,
    pub seconds: f64,
    pub source_rows_per_sec: f64,
    pub duckdb_seconds: Option<f64>,
    /// DuckDB writing the rollup as zstd Parquet partitioned by day (no Delta commit).
    pub duckdb_parquet_seconds: Option<f64>,
    pub polars_seconds: Option<f64>,
    /// Polars writing the rollup as zstd Parquet partitioned by day.
    pub polars_parquet_seconds: Option<f64>,
    /// Whether Polars' answer equals DuckDB's (group count and sums of every count column);
    /// None unless both ran.
    pub peers_agree: Option<bool>,
    /// Rows of Strata's rollup table that differ from DuckDB's answer on the same files, on
    /// every user-visible column but p95 (EXCEPT ALL both ways; 0 is equal); None unless
    /// DuckDB ran and computes this rollup.
    pub rows_differing_from_duckdb: Option<u64>,
    /// ai_usage_daily only: groups whose sketched p95 is off DuckDB's exact one by over 2%.
    pub p95_off_duckdb: Option<u64>,
}

impl RollupTiming {
    /// Strata's time over the fastest peer's writing Parquet (what Strata's rollup also does,
    /// less the Delta commit): below 1 is ahead.
    pub fn ratio_to_best_peer(&self) -> Option<f64> {
        [self.duckdb_parquet_seconds, self.polars_parquet_seconds]
            .into_iter()
            .flatten()
            .min_by(f64::total_cmp)
            .map(|best| self.seconds / best)
    }
}

/// What a run measured; `Display` is the text report, `Serialize` the JSON one.
#[derive(Debug, Serialize)]
pub struct QueryResults {
    pub link_clicks: u64,
    pub ai_usage: u64,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub rollups: Vec<RollupTiming>,
    pub panels: Vec<PanelTiming>,
}

/// Runs the rollups, then the panels, on `storage`; progress goes to stderr as they go.
pub async fn run(storage: &Storage, bench: &QueryBench) -> anyhow::Result<QueryResults> {
    strata_engine::ensure_tables(storage).await?;
    let root = RootSummary::read(storage).await?;
    let mut rollups = Vec::new();
    if !bench.skip_rollups {
        rollups = time_rollups(storage, &root).await?;
        let duckdb = match &bench.duckdb_python {
            Some(python) => Some(run_peer(python, DUCKDB_SCRIPT, "DuckDB", storage)?),
            None => None,
        };
        let polars = match &bench.polars_python {
            Some(python) => Some(run_peer(python, POLARS_SCRIPT, "Polars", storage)?),
            None => None,
        };
        for r in &mut rollups {
            let key = |suffix: &str| format!("{}{suffix}", r.rollup);
            if let Some(t) = &duckdb {
                r.duckdb_seconds = t[&r.rollup].as_f64();
                r.duckdb_parquet_seconds = t[key(":parquet")].as_f64();
                r.rows_differing_from_duckdb = t[key(":strata_diff")].as_u64();
                r.p95_off_duckdb = t[key(":p95_off")].as_u64();
            }
            if let Some(t) = &polars {
                r.polars_seconds = t[&r.rollup].as_f64();
                r.polars_parquet_seconds = t[key(":parquet")].as_f64();
            }
            if let (Some(d), Some(p)) = (&duckdb, &polars) {
                // Only the rollups the peers compute (not the totals or the top lists).
                r.peers_agree = (!d[&r.rollup].is_null()).then(|| {
                    d[key(":rows")] == p[key(":rows")] && d[key(":check")] == p[key(":check")]
                });
            }
        }
    }
    let panels = time_panels(storage, bench, &root).await?;
    Ok(QueryResults {
        link_clicks: root.link_clicks,
        ai_usage: root.ai_usage,
        from: root.from,
        to: root.to,
        rollups,
        panels,
    })
}

/// The events of the root, and the 30 days up to the last one that the panels are asked for.
struct RootSummary {
    link_clicks: u64,
    ai_usage: u64,
    from: NaiveDate,
    to: NaiveDate,
}

impl RootSummary {
    async fn read(storage: &Storage) -> anyhow::Result<Self> {
        let session = SqlSession::open(storage).await?;
        let link_clicks = count(&session, "SELECT count(*) FROM link_clicks").await? as u64;
        let ai_usage = count(&session, "SELECT count(*) FROM ai_usage").await? as u64;
        let max_day = count(
            &session,
            "SELECT CAST(max(event_date) AS BIGINT) FROM link_clicks",
        )
        .await;
        // Days since 1970-01-01 to a date (1970-01-01 is day 719,163 of the common era).
        let to = match max_day {
            Ok(d) => NaiveDate::from_num_days_from_ce_opt(d as i32 + 719_163).context("date")?,
            Err(_) => chrono::Utc::now().date_naive(),
        };
        let from = to - chrono::Days::new(29);
        eprintln!(
            "bench query: {link_clicks} clicks, {ai_usage} AI calls; panels over {from}..{to}"
        );
        Ok(Self {
            link_clicks,
            ai_usage,
            from,
            to,
        })
    }
}

async fn count(session: &SqlSession, sql: &str) -> anyhow::Result<i64> {
    Ok(session.query_i64(sql).await?.unwrap_or(0))
}

/// Rollups from scratch, one at a time, each on a fresh catalog (no Parquet footer cached
/// by an earlier one). Timed: reading, computing, writing and committing the rollup; not
/// recording the run in job_runs (another table's commit, bookkeeping DuckDB has no part of).
async fn time_rollups(storage: &Storage, root: &RootSummary) -> anyhow::Result<Vec<RollupTiming>> {
    let mut rollups: Vec<RollupTiming> = Vec::new();
    for spec in ROLLUPS.iter() {
        let catalog = Catalog::open(storage).await?;
        let started = Instant::now();
        let reports = RollupBuilder::new(catalog.clone())
            .only(Some(spec.name.to_string()))
            .rebuild(true)
            .record(false)
            .run()
            .await?;
        let seconds = started.elapsed().as_secs_f64();
        let source_rows = source_rows(spec, root, &rollups);
        rollups.push(RollupTiming {
            rollup: spec.name.into(),
            source_rows,
            rows: reports.iter().map(|r| r.rows).sum(),
            seconds,
            source_rows_per_sec: source_rows as f64 / seconds,
            duckdb_seconds: None,
            duckdb_parquet_seconds: None,
            polars_seconds: None,
            polars_parquet_seconds: None,
            peers_agree: None,
            rows_differing_from_duckdb: None,
            p95_off_duckdb: None,
        });
        eprintln!("bench query: rollup {} in {seconds:.2} s", spec.name);
    }
    Ok(rollups)
}

/// The rows a rollup reads: an event table's, or for a rollup of a rollup
/// (click_stats_daily_totals) the rows that one produced.
fn source_rows(spec: &RollupSpec, root: &RootSummary, done: &[RollupTiming]) -> u64 {
    match spec.source {
        "link_clicks" => root.link_clicks,
        "ai_usage" => root.ai_usage,
        other => done
            .iter()
            .find(|r| r.rollup == other)
            .map_or(0, |r| r.rows as u64),
    }
}

/// "yes", or "NO: n rows" (and the p95s past 2%), or "-" when DuckDB did not check this rollup.
fn equal_to_duckdb(r: &RollupTiming) -> String {
    match (r.rows_differing_from_duckdb, r.p95_off_duckdb.unwrap_or(0)) {
        (None, _) => "-".into(),
        (Some(0), 0) => "yes".into(),
        (Some(rows), 0) => format!("NO: {rows} rows"),
        (Some(rows), p95) => format!("NO: {rows} rows, {p95} p95s"),
    }
}

/// Runs a peer engine's script (`scripts/bench_duckdb.py`, `scripts/bench_polars.py`) with
/// `python` on the root's files: its seconds per rollup and its answers' sums.
fn run_peer(
    python: &str,
    script: &str,
    engine: &str,
    storage: &Storage,
) -> anyhow::Result<serde_json::Value> {
    eprintln!("bench query: {engine} on the same files");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(
            storage
                .root()
                .to_file_path()
                .map_err(|_| anyhow::anyhow!("{engine} comparison needs a local root"))?,
        )
        .output()
        .with_context(|| format!("running {engine}"))?;
    anyhow::ensure!(
        out.status.success(),
        "{engine} run failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Panels: cold (a fresh cache each run) and cached, over the root's last 30 days.
async fn time_panels(
    storage: &Storage,
    bench: &QueryBench,
    root: &RootSummary,
) -> anyhow::Result<Vec<PanelTiming>> {
    let catalog = Catalog::open(storage).await?;
    let registry = Panels::new(Arc::new(ResultCache::new(PANEL_CACHE_BYTES)))?;
    let names: Vec<&'static str> = registry
        .list()
        .map(|p| p.name)
        .filter(|n| bench.panels.is_empty() || bench.panels.iter().any(|p| p == n))
        .collect();
    if let Some(unknown) = bench.panels.iter().find(|p| !names.contains(&p.as_str())) {
        anyhow::bail!(
            "no panel named {unknown:?} (see GET /v1/panels or docs/rollups-and-panels.md)"
        );
    }
    let mut panels = Vec::new();
    for name in names {
        let panel = registry.get(name)?;
        let mut pairs = vec![];
        if panel.params.iter().any(|p| p.name == "from") && name != "dead_letters_daily" {
            pairs.push(("from".to_string(), root.from.to_string()));
            pairs.push(("to".to_string(), root.to.to_string()));
        }
        let params = registry.parse_params(name, &pairs)?;
        panels.push(time_panel(&catalog, name, &params, bench.iterations).await?);
    }
    Ok(panels)
}

/// `iterations` cold runs, each with a fresh cache, then `iterations` runs answered from a
/// warmed one.
async fn time_panel(
    catalog: &Catalog,
    name: &str,
    params: &PanelParams,
    iterations: usize,
) -> anyhow::Result<PanelTiming> {
    let limits = QueryLimits::default();
    let mut cold = Vec::new();
    let mut rows = 0;
    let mut fallback_runs = 0;
    for _ in 0..iterations {
        let fresh = Panels::new(Arc::new(ResultCache::new(PANEL_CACHE_BYTES)))?;
        let started = Instant::now();
        let r = fresh
            .run(catalog, name, params, &limits, SNAPSHOT_MAX_AGE)
            .await?;
        cold.push(started.elapsed().as_secs_f64() * 1000.0);
        rows = r.batches.iter().map(|b| b.num_rows()).sum();
        fallback_runs += usize::from(r.fallback);
    }
    let cached_registry = Panels::new(Arc::new(ResultCache::new(PANEL_CACHE_BYTES)))?;
    cached_registry
        .run(catalog, name, params, &limits, SNAPSHOT_MAX_AGE)
        .await?;
    let mut cached = Vec::new();
    for _ in 0..iterations {
        let started = Instant::now();
        cached_registry
            .run(catalog, name, params, &limits, SNAPSHOT_MAX_AGE)
            .await?;
        cached.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(PanelTiming {
        panel: name.into(),
        rows,
        cold_p50_ms: percentile(&mut cold, 0.5),
        cold_p99_ms: percentile(&mut cold, 0.99),
        cached_p50_ms: percentile(&mut cached, 0.5),
        cached_p99_ms: percentile(&mut cached, 0.99),
        fallback_runs,
    })
}

impl fmt::Display for QueryResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<24} {:>6} {:>12} {:>12} {:>12} {:>12}",
            "panel", "rows", "cold p50 ms", "cold p99 ms", "cache p50", "cache p99"
        )?;
        for p in &self.panels {
            writeln!(
                f,
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
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "{:<24} {:>12} {:>10} {:>14} {:>10} {:>16} {:>10} {:>16} {:>10} {:>12} {:>14}",
            "rollup",
            "source rows",
            "seconds",
            "rows/s",
            "duckdb s",
            "duckdb->parquet",
            "polars s",
            "polars->parquet",
            "vs best",
            "peers agree",
            "= duckdb"
        )?;
        let secs = |s: Option<f64>| s.map_or("-".into(), |s| format!("{s:.2}"));
        for r in &self.rollups {
            writeln!(
                f,
                "{:<24} {:>12} {:>10.2} {:>14.0} {:>10} {:>16} {:>10} {:>16} {:>10} {:>12} {:>14}",
                r.rollup,
                r.source_rows,
                r.seconds,
                r.source_rows_per_sec,
                secs(r.duckdb_seconds),
                secs(r.duckdb_parquet_seconds),
                secs(r.polars_seconds),
                secs(r.polars_parquet_seconds),
                r.ratio_to_best_peer()
                    .map_or("-".into(), |x| format!("{x:.2}x")),
                r.peers_agree.map_or("-", |a| if a { "yes" } else { "NO" }),
                equal_to_duckdb(r),
            )?;
        }
        Ok(())
    }
}
