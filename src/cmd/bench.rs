//! `strata bench`: flags to the runners of `strata_benches`, their reports to stdout and, when
//! asked, to a JSON file.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use strata_benches::{
    BudgetsBench, CompactBench, EndToEnd, FetchBench, IngestBench, QueryBench,
    DEFAULT_BENCH_EVENTS, DEFAULT_BENCH_ROOT,
};
use strata_engine::Storage;
use strata_ingest::IngestOptions;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Ingest throughput: decode -> Parquet -> Delta commit, and end to end from a broker.
    Ingest(BenchIngestArgs),
    /// Panel latency (cold and cached) and rollup throughput on generated events.
    Query(BenchQueryArgs),
    /// Time to purge one median subject, and the files and bytes rewritten.
    Purge(BenchPurgeArgs),
    /// Query time over one partition of 1,000 small files, before and after compacting it.
    Compact(BenchCompactArgs),
    /// Latency of budget decisions (GET /v1/ai/budgets/decision) under concurrent callers, on
    /// an in-process server with 20 budgets; fails when any answer was not a decision.
    Budgets(BenchBudgetsArgs),
    /// Rows per second fetching the same rows over HTTP (JSON, Arrow), the Postgres wire
    /// protocol and Arrow Flight SQL, with the Python clients analysts use.
    Fetch(BenchFetchArgs),
}

#[derive(Args, Debug)]
pub struct BenchFetchArgs {
    /// Rows fetched per run.
    #[arg(long, default_value_t = FetchBench::DEFAULT_ROWS)]
    pub rows: u64,
    /// Runs per surface (the median is reported).
    #[arg(long, default_value_t = FetchBench::DEFAULT_REPEATS)]
    pub repeats: usize,
    /// A Python with psycopg, adbc-driver-flightsql and pyarrow (scripts/test.sh makes one in
    /// ~/.cache/strata/venv).
    #[arg(long, env = "STRATA_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// Storage root for the run (default: a fresh temporary directory, removed after).
    #[arg(long)]
    pub storage_url: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchBudgetsArgs {
    /// Concurrent callers, each on its own keep-alive HTTP/1.1 connection.
    #[arg(long, default_value_t = BudgetsBench::DEFAULT_CALLERS)]
    pub callers: usize,
    /// Seconds recorded, after a 1 s warm-up.
    #[arg(long, default_value_t = BudgetsBench::DEFAULT_DURATION_SECS)]
    pub duration_secs: u64,
    /// AI calls written before the run (the spend the budgets' states come from).
    #[arg(long, default_value_t = BudgetsBench::DEFAULT_EVENTS)]
    pub events: u64,
    /// Decisions each caller asks for per second, on a fixed schedule (latency counted from
    /// when each was due); 0: each asks again as soon as answered (saturation: the latency is
    /// then mostly queueing).
    #[arg(long, default_value_t = BudgetsBench::DEFAULT_RATE_PER_CALLER)]
    pub rate_per_caller: f64,
    /// Storage root for the run (default: a fresh temporary directory, removed after).
    #[arg(long)]
    pub storage_url: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchCompactArgs {
    /// Small files written into the partition (one ingest flush each).
    #[arg(long, default_value_t = CompactBench::DEFAULT_FILES)]
    pub files: usize,
    /// Clicks per small file.
    #[arg(long, default_value_t = CompactBench::DEFAULT_ROWS_PER_FILE)]
    pub rows_per_file: usize,
    /// Runs of the query before and after compacting (the p50 is taken over them).
    #[arg(long, default_value_t = CompactBench::DEFAULT_ITERATIONS)]
    pub iterations: usize,
    /// Storage root for the run (default: a fresh temporary directory, removed after).
    #[arg(long)]
    pub storage_url: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct BenchIngestArgs {
    /// Distinct events to generate.
    #[arg(long, default_value_t = IngestBench::DEFAULT_EVENTS)]
    pub events: u64,
    /// Messages per flush (one commit per table per flush).
    #[arg(long, default_value_t = IngestOptions::DEFAULT_FLUSH_ROWS)]
    pub flush_rows: usize,
    #[arg(long, default_value_t = IngestBench::DEFAULT_SEED)]
    pub seed: u64,
    /// Storage root for the runs (default: a fresh temporary directory, removed after).
    #[arg(long)]
    pub storage_url: Option<String>,
    /// Brokers for the end-to-end run (tansu or Kafka); topics are created with 4 partitions.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Run the end-to-end stage on librdkafka's in-process mock cluster. Known to stall
    /// above ~100k messages (see docs/benchmarks.md); prefer a real broker.
    #[arg(long)]
    pub embedded_broker: bool,
    /// Skip the end-to-end run.
    #[arg(long)]
    pub skip_broker: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

impl BenchIngestArgs {
    fn bench(&self) -> IngestBench {
        // --skip-broker wins, then --brokers, then --embedded-broker.
        let end_to_end = match (&self.brokers, self.embedded_broker) {
            _ if self.skip_broker => EndToEnd::Skipped,
            (Some(b), _) => EndToEnd::Brokers(b.clone()),
            (None, true) => EndToEnd::Embedded,
            (None, false) => EndToEnd::NotAsked,
        };
        IngestBench {
            events: self.events,
            flush_rows: self.flush_rows,
            seed: self.seed,
            storage_url: self.storage_url.clone(),
            end_to_end,
        }
    }
}

#[derive(Args, Debug)]
pub struct BenchQueryArgs {
    /// Storage root holding the events (generated into it first when it has none).
    #[arg(long, default_value = DEFAULT_BENCH_ROOT)]
    pub storage_url: String,
    /// Events to generate when the root is empty (`strata gen --storage-url` does the same).
    #[arg(long, default_value_t = DEFAULT_BENCH_EVENTS)]
    pub events: u64,
    /// Runs per panel and mode (p50 and p99 are taken over them).
    #[arg(long, default_value_t = QueryBench::DEFAULT_ITERATIONS)]
    pub iterations: usize,
    /// Also time DuckDB on the same Parquet files with this Python (which must have `duckdb`).
    #[arg(long)]
    pub duckdb_python: Option<String>,
    /// Also time Polars on the same Parquet files with this Python (which must have `polars`;
    /// threads pinned to the cores, as DuckDB's).
    #[arg(long)]
    pub polars_python: Option<String>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
    /// Only these panels (repeatable); all of them by default.
    #[arg(long = "panel")]
    pub panels: Vec<String>,
    /// Time the panels only, over the rollups as they are (no rebuild, no DuckDB).
    #[arg(long)]
    pub skip_rollups: bool,
}

#[derive(Args, Debug)]
pub struct BenchPurgeArgs {
    /// Storage root holding the events (generated into it first when it has none).
    #[arg(long, default_value = DEFAULT_BENCH_ROOT)]
    pub storage_url: String,
    /// Events to generate when the root is empty.
    #[arg(long, default_value_t = DEFAULT_BENCH_EVENTS)]
    pub events: u64,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<PathBuf>,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingest(a) => {
            let results = strata_benches::ingest::run(&a.bench()).await?;
            print!("{results}");
            if let Some(path) = &a.json_out {
                std::fs::write(path, serde_json::to_string_pretty(&results)?)?;
            }
        }
        BenchCommand::Query(a) => {
            let storage = bench_root("bench query", &a.storage_url, a.events).await?;
            let bench = QueryBench {
                iterations: a.iterations,
                duckdb_python: a.duckdb_python,
                polars_python: a.polars_python,
                panels: a.panels,
                skip_rollups: a.skip_rollups,
            };
            let results = strata_benches::query::run(&storage, &bench).await?;
            print!("{results}");
            if let Some(path) = &a.json_out {
                std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
            }
            // A fast wrong answer is no result: the run fails when DuckDB disagrees.
            let differing: Vec<&str> = results
                .rollups
                .iter()
                .filter(|r| {
                    r.rows_differing_from_duckdb.unwrap_or(0) > 0
                        || r.p95_off_duckdb.unwrap_or(0) > 0
                })
                .map(|r| r.rollup.as_str())
                .collect();
            anyhow::ensure!(
                differing.is_empty(),
                "Strata's answers differ from DuckDB's on the same files: {}",
                differing.join(", ")
            );
        }
        BenchCommand::Purge(a) => {
            let storage = bench_root("bench purge", &a.storage_url, a.events).await?;
            let results = strata_benches::purge::run(&storage).await?;
            print!("{results}");
            if let Some(path) = &a.json_out {
                std::fs::write(path, serde_json::to_vec_pretty(&results.to_json())?)?;
            }
        }
        BenchCommand::Compact(a) => {
            let bench = CompactBench {
                files: a.files,
                rows_per_file: a.rows_per_file,
                iterations: a.iterations,
                storage_url: a.storage_url,
            };
            let results = strata_benches::compact::run(&bench).await?;
            print!("{results}");
            if let Some(path) = &a.json_out {
                std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
            }
        }
        BenchCommand::Fetch(a) => {
            let bench = FetchBench {
                rows: a.rows.max(1),
                repeats: a.repeats.max(1),
                python: a.python,
                storage_url: a.storage_url,
            };
            let results = strata_benches::fetch::run(&bench).await?;
            print!("{results}");
            if let Some(path) = &a.json_out {
                std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
            }
        }
        BenchCommand::Budgets(a) => {
            let bench = BudgetsBench {
                callers: a.callers.max(1),
                duration: Duration::from_secs(a.duration_secs.max(1)),
                warmup: BudgetsBench::DEFAULT_WARMUP,
                events: a.events,
                storage_url: a.storage_url,
                rate_per_caller: (a.rate_per_caller > 0.0).then_some(a.rate_per_caller),
            };
            let results = strata_benches::budgets::run(&bench).await?;
            print!("{results}");
            if let Some(path) = &a.json_out {
                std::fs::write(path, serde_json::to_vec_pretty(&results)?)?;
            }
            anyhow::ensure!(
                results.errors() == 0,
                "{} of the requests got no decision: the run timed errors, not decisions",
                results.errors()
            );
        }
    }
    Ok(())
}

/// The root of a bench run, with `events` generated events written into it first when it has
/// no `link_clicks` yet (the same as `strata gen --events N --storage-url URL`).
async fn bench_root(label: &str, url: &str, events: u64) -> anyhow::Result<Storage> {
    let storage = Storage::open_url(url).await?;
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
