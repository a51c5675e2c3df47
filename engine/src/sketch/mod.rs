//! Mergeable sketches kept in the rollups, so that ranges of days can be answered from daily
//! rows: distinct counts (HyperLogLog) and latency quantiles (a log-bucket histogram).
//!
//! ```text
//! raw events --hll_sketch(visitor)--> daily rollup row (BINARY) --hll_merge--> hll_count -> users over 7/30 days
//! raw events --latency_sketch(ms)---> daily rollup row (BINARY) --latency_merge--> latency_quantile(s, 0.95)
//! raw events --distinct_sketch(visitor)--> {exact daily count, the hll_sketch of the same values}
//! ```
//!
//! All are registered as SQL functions on every session ([`register`]).
//!
//! * HLL: precision 12 (4,096 registers), 64-bit hash; standard error 1.04/sqrt(4096) = 1.6%,
//!   exact-ish (linear counting) for small sets. Small sketches are stored sparse (a sorted list
//!   of non-zero registers), so a rollup row of a rarely clicked item costs a few bytes.
//! * Latency: buckets grow by 2% (relative error of any quantile under 1%), counts kept per
//!   non-empty bucket.
//!
//! Where each part lives (dependencies point down this list, never up):
//!
//! * `functions`: the SQL surface, [`register`] and the scalar functions over sketch bytes.
//! * `distinct`: `distinct_sketch`, an exact count per group plus its HLL sketch. It builds on
//!   `hll` and `columns` and [`register`] registers it, so it lives inside this module: the
//!   dependency stays one way.
//! * `hll`, `latency`: the two sketches, their byte formats, and their `Sketch` impls.
//! * `accumulator`: the `Sketch` trait and the aggregate accumulators generic over it (one
//!   sketch, or one per GROUP BY group).
//! * `columns`: reading sketch arguments out of Arrow arrays, and per-row partial states.
//! * this file: [`NotASketch`], the error every byte decoder returns, and `DfResult`.
//!
//! `malformed` (tests only) feeds arbitrary bytes through all of the above.

mod accumulator;
mod columns;
mod distinct;
mod functions;
mod hll;
mod latency;
#[cfg(test)]
mod malformed;

use datafusion::common::DataFusionError;

pub(crate) use columns::{
    by_group, counting_sort, filtered_out, for_each_bytes, group_u32, inputs, RowStates,
    PENDING_MAX,
};
pub use functions::register;
pub(crate) use hll::hash64;
pub use hll::Hll;
pub use latency::LatencySketch;

pub(crate) type DfResult<T> = std::result::Result<T, DataFusionError>;

/// Bytes that do not decode as a sketch: a rollup column written by something else, or any
/// binary value a query passes. The SQL function that read them names itself in the error
/// ([`NotASketch::in_function`]); the bytes are never quoted (user data, and possibly large).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotASketch {
    /// "HLL" or "latency".
    kind: &'static str,
    reason: String,
}

impl NotASketch {
    fn hll(reason: impl Into<String>) -> Self {
        Self {
            kind: "HLL",
            reason: reason.into(),
        }
    }

    fn latency(reason: impl Into<String>) -> Self {
        Self {
            kind: "latency",
            reason: reason.into(),
        }
    }

    /// The user's mistake, as `function` reports it.
    pub fn in_function(&self, function: &str) -> DataFusionError {
        DataFusionError::Execution(format!("{function}: the argument is {self}"))
    }
}

impl std::fmt::Display for NotASketch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "not a Strata {} sketch ({})", self.kind, self.reason)
    }
}

impl std::error::Error for NotASketch {}

impl From<NotASketch> for DataFusionError {
    fn from(e: NotASketch) -> Self {
        DataFusionError::Execution(e.to_string())
    }
}
