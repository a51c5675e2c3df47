//! `strata bench compact`: query time over one partition of many small files (1,000 by
//! default, as a day of streaming ingest leaves it), before and after compacting it.
//!
//! ```text
//! generated clicks of one day --ingest_direct, one flush per file--> N small files
//!   -> time the partition query (first run, p50) -> compact -> time it again
//! ```

use std::fmt;
use std::time::Instant;

use chrono::NaiveDate;
use serde::Serialize;
use strata_engine::maintenance::{self, CompactOptions};
use strata_engine::{SqlSession, Storage};
use strata_fixtures::GenOptions;

use crate::measure::percentile;

/// The day every generated click falls on.
const DAY: &str = "2026-10-31";
/// The query timed: a scan of the whole partition, as a panel over raw events does.
const PARTITION_QUERY: &str = "SELECT count(*) AS clicks, count(DISTINCT user_id) AS users, \
     sum(CASE WHEN is_bot THEN 1 ELSE 0 END) AS bots FROM link_clicks \
     WHERE event_date = DATE '2026-10-31'";

/// What one `strata bench compact` run does.
#[derive(Debug, Clone)]
pub struct CompactBench {
    /// Small files written into the partition (one ingest flush each).
    pub files: usize,
    pub rows_per_file: usize,
    /// Runs of the query before and after (the p50 is taken over them).
    pub iterations: usize,
    /// Storage root for the run (default: a fresh temporary directory, removed after).
    pub storage_url: Option<String>,
}

impl CompactBench {
    pub const DEFAULT_FILES: usize = 1_000;
    pub const DEFAULT_ROWS_PER_FILE: usize = 200;
    pub const DEFAULT_ITERATIONS: usize = 10;
}

impl Default for CompactBench {
    fn default() -> Self {
        Self {
            files: Self::DEFAULT_FILES,
            rows_per_file: Self::DEFAULT_ROWS_PER_FILE,
            iterations: Self::DEFAULT_ITERATIONS,
            storage_url: None,
        }
    }
}

/// Timings of the partition query on one layout.
#[derive(Debug, Serialize)]
pub struct QueryTiming {
    pub files: u64,
    /// The first run (footers and statistics not cached yet).
    pub first_ms: f64,
    pub p50_ms: f64,
}

/// What a run measured; `Display` is the text report, `Serialize` the JSON one.
#[derive(Debug, Serialize)]
pub struct CompactResults {
    pub rows: u64,
    pub write_seconds: f64,
    pub compact_seconds: f64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub before: QueryTiming,
    pub after: QueryTiming,
}

/// Writes the small files, times the query, compacts, times it again; progress on stderr.
pub async fn run(bench: &CompactBench) -> anyhow::Result<CompactResults> {
    let root = crate::BenchRoot::open(bench.storage_url.as_deref(), "compact").await?;
    run_in(&root.storage, bench).await
}

async fn run_in(storage: &Storage, bench: &CompactBench) -> anyhow::Result<CompactResults> {
    eprintln!(
        "bench compact: writing {} files of {} clicks into {DAY}",
        bench.files, bench.rows_per_file
    );
    let started = Instant::now();
    write_small_files(storage, bench).await?;
    let write_seconds = started.elapsed().as_secs_f64();
    let (rows, first_ms, p50_ms) = time_query(storage, bench.iterations).await?;
    eprintln!("bench compact: before: first {first_ms:.1} ms, p50 {p50_ms:.1} ms; compacting");
    let started = Instant::now();
    let report = maintenance::compact(storage, "link_clicks", &CompactOptions::default()).await?;
    let compact_seconds = started.elapsed().as_secs_f64();
    let (rows_after, after_first, after_p50) = time_query(storage, bench.iterations).await?;
    anyhow::ensure!(
        rows == rows_after,
        "compaction changed the partition's rows: {rows} -> {rows_after}"
    );
    let files = bench.files as u64;
    Ok(CompactResults {
        rows,
        write_seconds,
        compact_seconds,
        bytes_before: report.bytes_removed,
        bytes_after: report.bytes_added,
        before: QueryTiming {
            files,
            first_ms,
            p50_ms,
        },
        after: QueryTiming {
            files: files.saturating_sub(report.files_removed) + report.files_added,
            first_ms: after_first,
            p50_ms: after_p50,
        },
    })
}

/// `bench.files` commits of `bench.rows_per_file` clicks each, all on [`DAY`], through the
/// ingest's broker-free path (one flush, so one file, per commit).
async fn write_small_files(storage: &Storage, bench: &CompactBench) -> anyhow::Result<()> {
    let day = NaiveDate::parse_from_str(DAY, "%Y-%m-%d")?;
    let options = GenOptions {
        seed: 11,
        events: (bench.files * bench.rows_per_file) as u64,
        days: 1,
        end_date: day.succ_opt().unwrap_or(day),
        ai_share: 0.0,
        malformed_rate: 0.0,
        duplicate_rate: 0.0,
        late_rate: 0.0,
        ..GenOptions::default()
    };
    crate::ingest::write_generated(
        storage,
        "bench-compact",
        options,
        bench.rows_per_file.max(1),
    )
    .await
}

/// The partition's row count, and the first and median times of `iterations` runs of the
/// query in milliseconds, on a session opened at the table's latest version.
async fn time_query(storage: &Storage, iterations: usize) -> anyhow::Result<(u64, f64, f64)> {
    let session = SqlSession::open(storage).await?;
    let mut samples = Vec::with_capacity(iterations.max(1));
    let mut rows = 0;
    for _ in 0..iterations.max(1) {
        let started = Instant::now();
        let (_, batches) = session.query(PARTITION_QUERY).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        rows = strata_engine::scalar_i64(&batches).unwrap_or(0) as u64;
    }
    let first = samples[0];
    Ok((rows, first, percentile(&mut samples, 0.5)))
}

impl fmt::Display for CompactResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "compaction of one partition: {} rows, written in {:.1} s, compacted in {:.2} s ({} -> {} bytes)",
            self.rows, self.write_seconds, self.compact_seconds, self.bytes_before, self.bytes_after
        )?;
        writeln!(
            f,
            "{:<8} {:>8} {:>12} {:>10}",
            "layout", "files", "first ms", "p50 ms"
        )?;
        for (name, t) in [("before", &self.before), ("after", &self.after)] {
            writeln!(
                f,
                "{:<8} {:>8} {:>12.1} {:>10.1}",
                name, t.files, t.first_ms, t.p50_ms
            )?;
        }
        Ok(())
    }
}
