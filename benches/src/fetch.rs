//! `strata bench fetch`: the same rows fetched over each analysts' surface, rows per second.
//!
//! ```text
//! generated clicks --ingest_direct--> root --> in-process Server (HTTP, --pg-listen, --flight-listen)
//! scripts/bench_fetch.py (one Python process, the clients analysts use):
//!   HTTP json (json.loads) | HTTP arrow (pyarrow) | Postgres (psycopg rows) | Flight SQL (ADBC -> pyarrow)
//!   each `repeats` times over `SELECT * FROM link_clicks LIMIT rows` --> median seconds --> rows/s
//! ```
//!
//! Client and server share this machine's cores, so the figures are what one analyst on the
//! same host gets, decoding included; the answers are too large for the result cache, so every
//! run reads the files.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use strata_engine::Storage;
use strata_fixtures::GenOptions;
use strata_query_api::{PgOptions, Scope, Server};
use tokio::sync::watch;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/bench_fetch.py");
/// Messages per commit when writing the clicks.
const FLUSH_ROWS: usize = 200_000;

/// What one `strata bench fetch` run does.
#[derive(Debug, Clone)]
pub struct FetchBench {
    /// Rows fetched per run (clicks written first: a few more than this).
    pub rows: u64,
    /// Runs per surface (the median is reported).
    pub repeats: usize,
    /// The Python with psycopg, adbc-driver-flightsql and pyarrow (the test venv's).
    pub python: PathBuf,
    /// Storage root (default: a fresh temporary directory, removed after).
    pub storage_url: Option<String>,
}

impl FetchBench {
    pub const DEFAULT_ROWS: u64 = 1_000_000;
    pub const DEFAULT_REPEATS: usize = 3;
}

/// One surface's figures.
#[derive(Debug, Clone, Serialize)]
pub struct SurfaceFetch {
    pub surface: String,
    pub rows: u64,
    pub median_seconds: f64,
    pub rows_per_sec: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct FetchResults {
    pub rows: u64,
    pub repeats: usize,
    pub cores: usize,
    pub surfaces: Vec<SurfaceFetch>,
}

impl fmt::Display for FetchResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "fetch of {} rows of link_clicks, median of {} runs, {} cores (client and server on one host)",
            self.rows, self.repeats, self.cores
        )?;
        writeln!(f, "{:<12} {:>10} {:>14}", "surface", "seconds", "rows/s")?;
        for s in &self.surfaces {
            writeln!(
                f,
                "{:<12} {:>10.3} {:>14.0}",
                s.surface, s.median_seconds, s.rows_per_sec
            )?;
        }
        Ok(())
    }
}

pub async fn run(bench: &FetchBench) -> anyhow::Result<FetchResults> {
    let root = crate::BenchRoot::open(bench.storage_url.as_deref(), "fetch").await?;
    run_in(&root.storage, bench).await
}

async fn run_in(storage: &Storage, bench: &FetchBench) -> anyhow::Result<FetchResults> {
    write_clicks(storage, bench.rows).await?;
    let (token, auth, mut config) = crate::bench_server(&[Scope::Sql])?;
    config.pg = Some(PgOptions {
        listen: "127.0.0.1:0".into(),
        tls: None,
    });
    config.flight_listen = Some("127.0.0.1:0".into());
    config.limits.row_cap = config.limits.row_cap.max(bench.rows as usize);
    config.limits.timeout = Duration::from_secs(600);
    let server = Server::start(storage, &config, auth).await?;
    let http = format!("http://{}", server.addr);
    let pg_port = server.pg.as_ref().map(|p| p.addr.port()).unwrap_or(0);
    let flight = format!(
        "grpc://{}",
        server
            .flight
            .as_ref()
            .map(|f| f.addr.to_string())
            .unwrap_or_default()
    );
    let (stop, mut stopped) = watch::channel(false);
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let sql = format!("SELECT * FROM link_clicks LIMIT {}", bench.rows);
    eprintln!(
        "bench fetch: fetching {} rows over each surface",
        bench.rows
    );
    let python = bench.python.clone();
    let repeats = bench.repeats.max(1).to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .args([
                SCRIPT,
                &http,
                &pg_port.to_string(),
                &flight,
                "bench",
                &token,
                &sql,
                &repeats,
            ])
            .output()
    })
    .await?
    .context("running scripts/bench_fetch.py")?;
    let _ = stop.send(true);
    serving.await??;
    anyhow::ensure!(
        out.status.success(),
        "the fetch clients failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let times: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let mut surfaces = Vec::new();
    for name in ["http_json", "http_arrow", "postgres", "flight_sql"] {
        let t = &times[name];
        let rows = t["rows"].as_u64().unwrap_or(0);
        let mut seconds: Vec<f64> = t["seconds"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default();
        seconds.sort_by(f64::total_cmp);
        let median = seconds.get(seconds.len() / 2).copied().unwrap_or(f64::NAN);
        anyhow::ensure!(
            rows == bench.rows,
            "{name} fetched {rows} rows, not {}",
            bench.rows
        );
        surfaces.push(SurfaceFetch {
            surface: name.to_string(),
            rows,
            median_seconds: median,
            rows_per_sec: rows as f64 / median,
        });
    }
    Ok(FetchResults {
        rows: bench.rows,
        repeats: bench.repeats.max(1),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        surfaces,
    })
}

/// At least `rows` clicks (a tenth more: the generator's malformed and duplicate messages are
/// off, so every message is a click), through the ingest's broker-free path.
async fn write_clicks(storage: &Storage, rows: u64) -> anyhow::Result<()> {
    let events = rows + rows / 10 + 10;
    eprintln!("bench fetch: writing {events} clicks");
    let options = GenOptions {
        seed: 11,
        events,
        ai_share: 0.0,
        malformed_rate: 0.0,
        duplicate_rate: 0.0,
        late_rate: 0.0,
        ..GenOptions::default()
    };
    crate::ingest::write_generated(storage, "bench-fetch", options, FLUSH_ROWS).await
}
