//! One flush: decode every pending message, drop retries, keep rejects, and commit
//! dead letters first, then each event table, each commit carrying its partitions' offsets.
//! Rows and dead letters of purged subjects are dropped right before each commit, with the
//! tombstones that commit is fenced on (see `tombstone.rs`).
//!
//! ```text
//! pending messages --decode::plan--> FlushPlan { dead_letters, events[kind] }
//!   --commit::commit_dead_letters--> (fenced: drop all pending, stop)
//!   --commit::commit_events, per kind--> offsets, retry windows, metrics in FlushOutcome
//! ```
//!
//! Crash safety comes from the order: a dead letter's offsets are stored with it before the
//! event commit, so a replay after a crash in between skips the rejects already kept.

mod commit;
mod decode;
mod tables;

use std::time::Instant;

use tracing::info;

use crate::partition::PartitionState;
use crate::{IngestMetrics, Result};

use commit::AfterDeadLetters;
pub(crate) use tables::Tables;

/// What one flush did: counts for the report, partitions to re-read, offsets for Kafka.
#[derive(Debug, Default)]
pub(crate) struct FlushOutcome {
    pub(crate) rows: u64,
    pub(crate) rejected: u64,
    pub(crate) duplicates: u64,
    /// Events and dead letters of purged subjects that occurred before the purge (dropped,
    /// counted).
    pub(crate) tombstoned: u64,
    /// Partitions another consumer has advanced: their pending messages were dropped and
    /// they must be re-initialised from the table.
    pub(crate) fenced: Vec<(String, i32)>,
    /// Offsets committed to event tables, for Kafka's advisory offsets.
    pub(crate) committed: Vec<CommittedOffset>,
}

/// The next offset of one partition, now stored in its event table.
#[derive(Debug, Clone)]
pub(crate) struct CommittedOffset {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) next: i64,
}

/// Commits everything `parts` hold (see the module docs for the stages).
pub(crate) async fn flush(
    parts: &mut [PartitionState],
    tables: &mut Tables,
    metrics: &IngestMetrics,
) -> Result<FlushOutcome> {
    let started = Instant::now();
    let mut out = FlushOutcome::default();
    let now_us = chrono::Utc::now().timestamp_micros();
    tables.tombstones.refresh().await;

    let plan = decode::plan(parts, now_us, metrics, &mut out)?;
    match commit::commit_dead_letters(parts, tables, metrics, &mut out, plan.dead_letters).await? {
        AfterDeadLetters::CommitEvents => {}
        AfterDeadLetters::Abandon => return Ok(out),
    }
    for table_commit in plan.events {
        commit::commit_events(parts, tables, metrics, &mut out, table_commit).await?;
    }
    record_flush(metrics, &out, started);
    Ok(out)
}

/// The flush's duration (histogram) and, when it moved anything, one log line of counts.
fn record_flush(metrics: &IngestMetrics, out: &FlushOutcome, started: Instant) {
    let elapsed = started.elapsed();
    metrics.flush_seconds.observe(elapsed.as_secs_f64());
    if out.rows > 0 || out.rejected > 0 {
        info!(
            rows = out.rows,
            rejected = out.rejected,
            duplicates = out.duplicates,
            ms = elapsed.as_millis() as u64,
            "flushed"
        );
    }
}
