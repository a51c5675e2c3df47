//! Engine integration tests: rollups and panels over real Delta tables in a temporary root,
//! their meaning pinned in sqllogictest files (`engine/tests/slt/*.slt`).
//!
//! `STRATA_SLT_COMPLETE=1 cargo test -p strata-engine --test it` rewrites the expected results
//! (then read the diff: it is the change of meaning).

mod rollups;
mod slt;
mod support;
mod top_items;
