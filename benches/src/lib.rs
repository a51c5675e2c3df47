//! Benchmarks. Criterion micro benches live in `benches/`; the end-to-end runner is
//! `strata bench ingest` (see docs/benchmarks.md).
//!
//! ```text
//! fixtures --messages--> [ benches: decode+validate (criterion) ]   strata bench ingest --> docs/benchmarks.md
//! ```
