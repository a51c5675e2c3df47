//! Benchmarks in two layers: criterion micro benches in `benches/`, and the runners of
//! `strata bench` here (see docs/benchmarks.md). A runner takes a plain options struct and
//! returns its results (`Display` for the text report, `Serialize` for the JSON one); the
//! binary parses the flags and prints them. Progress goes to stderr as a run goes (a run takes
//! minutes), and errors are `anyhow`'s, as in the binary that reports them.
//!
//! ```text
//! fixtures --messages--> [ benches: decode+validate (criterion) ]
//!          --messages--> [ ingest runner: direct commit, kafka -> ingest ] --> IngestResults
//! engine root ---------> [ query runner: rollups, panels (+ DuckDB) ]     --> QueryResults
//!             ---------> [ purge runner: median subject ]                 --> PurgeResults
//!             ---------> [ compact runner: 1,000 small files, query before/after ] --> CompactResults
//! AI calls ---> root --> [ budgets runner: in-process server, 200 callers of decisions ] --> BudgetsResults
//! clicks -----> root --> [ fetch runner: 1M rows over HTTP json/arrow, Postgres, Flight SQL ] --> FetchResults
//! ```

pub mod budgets;
pub mod compact;
pub mod fetch;
pub mod ingest;
pub mod kafka;
mod measure;
pub mod purge;
pub mod query;

pub use budgets::{BudgetsBench, BudgetsResults};
pub use compact::{CompactBench, CompactResults};
pub use fetch::{FetchBench, FetchResults};
pub use ingest::{EndToEnd, IngestBench, IngestResults};
pub use purge::PurgeResults;
pub use query::{QueryBench, QueryResults};

/// What a bench serves behind: one token of `scopes` (its secret returned) whose rate no
/// caller reaches (a run times answers, not the token bucket's refusals), and a loopback
/// server config with no scheduled job (no rollup, compaction, vacuum, retention or health
/// check competing with the run); the caller sets what it serves on top.
pub(crate) fn bench_server(
    scopes: &[strata_query_api::Scope],
) -> anyhow::Result<(
    String,
    strata_query_api::Auth,
    strata_query_api::ServerConfig,
)> {
    let (token, line) = strata_query_api::new_token("bench", scopes);
    let entry: strata_query_api::TokenEntry =
        line.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let auth = strata_query_api::Auth::new(vec![entry], 1e9, 1e9);
    let config = strata_query_api::ServerConfig {
        listen: "127.0.0.1:0".into(),
        rollup_every: None,
        compact_every: None,
        vacuum_every: None,
        retention_every: None,
        table_health_every: None,
        ..strata_query_api::ServerConfig::default()
    };
    Ok((token, auth, config))
}

/// The storage root `strata bench query` and `strata bench purge` use by default.
pub const DEFAULT_BENCH_ROOT: &str = "./bench-data";
/// Events generated into an empty bench root by default.
pub const DEFAULT_BENCH_EVENTS: u64 = 20_000_000;

/// The storage root of one run: the one asked for, or a fresh temporary directory (named after
/// the bench) that is removed when this is dropped, after the run.
pub(crate) struct BenchRoot {
    pub storage: strata_engine::Storage,
    temporary: Option<std::path::PathBuf>,
}

impl BenchRoot {
    pub(crate) async fn open(storage_url: Option<&str>, bench: &str) -> anyhow::Result<Self> {
        let (url, temporary) = match storage_url {
            Some(u) => (u.to_string(), None),
            None => {
                let p = std::env::temp_dir()
                    .join(format!("strata-bench-{bench}-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p)?;
                (p.display().to_string(), Some(p))
            }
        };
        let storage = match strata_engine::Storage::open_url(&url).await {
            Ok(s) => s,
            Err(e) => {
                if let Some(p) = &temporary {
                    let _ = std::fs::remove_dir_all(p);
                }
                return Err(e.into());
            }
        };
        Ok(Self { storage, temporary })
    }
}

impl Drop for BenchRoot {
    fn drop(&mut self) {
        if let Some(p) = &self.temporary {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}
