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
//! ```

pub mod compact;
pub mod ingest;
pub mod kafka;
mod measure;
pub mod purge;
pub mod query;

pub use compact::{CompactBench, CompactResults};
pub use ingest::{EndToEnd, IngestBench, IngestResults};
pub use purge::PurgeResults;
pub use query::{QueryBench, QueryResults};

/// The storage root `strata bench query` and `strata bench purge` use by default.
pub const DEFAULT_BENCH_ROOT: &str = "./bench-data";
/// Events generated into an empty bench root by default.
pub const DEFAULT_BENCH_EVENTS: u64 = 20_000_000;
