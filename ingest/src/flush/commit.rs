//! Stages 2 to 4 of a flush, once per commit: filter the rows against the tombstones the
//! commit is fenced on, write them with their partitions' offsets (`txn` actions, fenced on
//! the versions this process started from), then advance the partitions and count, or drop
//! what a fenced partition holds so that it is re-read from the table. Each commit is timed
//! and counted by table (`strata_ingest_commit*` metrics).

use std::time::Instant;

use arrow::array::RecordBatch;
use strata_engine::{AppendOutcome, EngineError, EventTable, RawAppend, TxnUpdate};
use strata_schemas::{DeadLetter, DeadLetterBuilder};
use tracing::{debug, warn};

use super::decode::{DeadLetterCommit, EventCommit, FreshId};
use super::{CommittedOffset, FlushOutcome, Tables};
use crate::partition::PartitionState;
use crate::tombstone::TombstoneFilter;
use crate::{IngestError, IngestMetrics, Result};

/// Times one commit may come back because a purge started since its rows were filtered
/// (each time means one more purge meanwhile).
const MAX_TOMBSTONE_RELOADS: u32 = 20;

/// What the flush does once its dead letters are handled.
pub(super) enum AfterDeadLetters {
    /// Committed (or there were none): the event tables follow.
    CommitEvents,
    /// A partition is owned by another consumer: every pending message was dropped, the
    /// flush ends here.
    Abandon,
}

/// A commit that went through, and how many rows the tombstone filter dropped in the
/// attempt that went through.
struct FilteredAppend {
    done: AppendOutcome,
    tombstoned: u64,
}

/// Dead letters first: if we crash before the event commit, the replay skips them (their
/// partitions' `dlq_next` is stored with them).
pub(super) async fn commit_dead_letters(
    parts: &mut [PartitionState],
    tables: &mut Tables,
    metrics: &IngestMetrics,
    out: &mut FlushOutcome,
    commit: DeadLetterCommit,
) -> Result<AfterDeadLetters> {
    if commit.letters.is_empty() {
        return Ok(AfterDeadLetters::CommitEvents);
    }
    let txns: Vec<TxnUpdate> = commit.txns.iter().map(|t| t.txn.clone()).collect();
    let letters = &commit.letters;
    let started = Instant::now();
    let committed = commit_filtered(
        &mut tables.dead_letters,
        &mut tables.tombstones,
        &txns,
        |tombstones| Ok(keep_letters(tombstones, letters)),
    )
    .await;
    record_commit(metrics, tables.dead_letters.name(), started, &committed);
    match committed {
        Ok(FilteredAppend { done, tombstoned }) => {
            count_tombstoned(metrics, out, "dead_letters", tombstoned);
            count_append(metrics, tables.dead_letters.name(), &done);
            for t in &commit.txns {
                parts[t.part].dlq_next = Some(t.txn.next);
            }
            Ok(AfterDeadLetters::CommitEvents)
        }
        Err(IngestError::Engine(EngineError::Fenced { app_id, .. })) => {
            warn!(%app_id, table = "dead_letters", "partition owned by another consumer; re-reading it");
            metrics.fenced.inc();
            for p in parts.iter_mut() {
                if !p.pending.is_empty() {
                    out.fenced.push((p.topic.clone(), p.partition));
                    p.pending.clear();
                }
            }
            Ok(AfterDeadLetters::Abandon)
        }
        Err(e) => Err(e),
    }
}

/// The dead letters the tombstones keep, as one batch, and how many they drop.
fn keep_letters(tombstones: &TombstoneFilter, letters: &[DeadLetter]) -> (RecordBatch, u64) {
    let mut kept = DeadLetterBuilder::default();
    let mut dropped = 0;
    for l in letters {
        if tombstones.keeps_letter(l.key.as_deref(), &l.payload) {
            kept.push(l.clone());
        } else {
            dropped += 1;
        }
    }
    (kept.finish(), dropped)
}

/// Commits one event table's rows with its partitions' offsets. A fenced partition loses its
/// pending messages and is listed in `out.fenced`; the other tables still commit.
pub(super) async fn commit_events(
    parts: &mut [PartitionState],
    tables: &mut Tables,
    metrics: &IngestMetrics,
    out: &mut FlushOutcome,
    commit: EventCommit,
) -> Result<()> {
    let EventCommit {
        kind,
        rows,
        txns,
        members,
        fresh_ids,
    } = commit;
    let table = tables
        .events
        .get_mut(&kind)
        .expect("a table is opened for every bound kind");
    let started = Instant::now();
    let committed = commit_filtered(table, &mut tables.tombstones, &txns, |tombstones| {
        tombstones.apply(rows.clone())
    })
    .await;
    record_commit(metrics, kind.table(), started, &committed);
    match committed {
        Ok(FilteredAppend { done, tombstoned }) => {
            count_tombstoned(metrics, out, kind.table(), tombstoned);
            count_append(metrics, kind.table(), &done);
            out.rows += done.rows as u64;
            debug!(
                table = kind.table(),
                version = done.version,
                rows = done.rows,
                files = done.files,
                "committed"
            );
            advance(parts, out, &members, fresh_ids);
            Ok(())
        }
        Err(IngestError::Engine(EngineError::Fenced {
            app_id,
            expected,
            found,
        })) => {
            warn!(%app_id, ?expected, ?found, table = kind.table(), "partition owned by another consumer; re-reading it");
            metrics.fenced.inc();
            for &m in &members {
                let p = &mut parts[m];
                out.fenced.push((p.topic.clone(), p.partition));
                p.pending.clear();
            }
            Ok(())
        }
        Err(e) => Err(e),
    }
}

/// After an event commit: its partitions resume from the committed offsets (also reported
/// to Kafka, advisory), the committed ids join their retry windows, pending is cleared.
fn advance(
    parts: &mut [PartitionState],
    out: &mut FlushOutcome,
    members: &[usize],
    fresh_ids: Vec<FreshId>,
) {
    for &m in members {
        let p = &mut parts[m];
        p.table_next = Some(p.position);
        out.committed.push(CommittedOffset {
            topic: p.topic.clone(),
            partition: p.partition,
            next: p.position,
        });
    }
    for FreshId { part, id } in fresh_ids {
        parts[part].window.insert(id);
    }
    for &m in members {
        parts[m].pending.clear();
    }
}

/// Commits what `filter` keeps with the tombstones it is given, fenced on their version; when
/// a purge has started since (its marker is newer), reloads them and filters again.
async fn commit_filtered(
    table: &mut EventTable,
    tombstones: &mut TombstoneFilter,
    txns: &[TxnUpdate],
    filter: impl Fn(&TombstoneFilter) -> Result<(RecordBatch, u64)>,
) -> Result<FilteredAppend> {
    for _ in 0..MAX_TOMBSTONE_RELOADS {
        let (batch, dropped) = filter(&*tombstones)?;
        match table
            .append_filtered(&[batch], txns, tombstones.version())
            .await?
        {
            RawAppend::Committed(done) => {
                return Ok(FilteredAppend {
                    done,
                    tombstoned: dropped,
                });
            }
            RawAppend::StaleTombstones {
                marker,
                filtered_with,
            } => {
                debug!(
                    table = table.name(),
                    marker,
                    filtered_with,
                    "a purge started since these rows were filtered; filtering them again"
                );
                tombstones.reload().await?;
            }
        }
    }
    Err(IngestError::Internal(format!(
        "{}: purges kept starting while a flush was filtering its rows",
        table.name()
    )))
}

fn count_tombstoned(metrics: &IngestMetrics, out: &mut FlushOutcome, table: &str, n: u64) {
    if n > 0 {
        metrics.tombstoned.with_label_values(&[table]).inc_by(n);
        out.tombstoned += n;
    }
}

/// The duration of one commit of `table`, and whether it went through or failed. A fenced
/// commit is neither: `fenced_total` counts it.
fn record_commit(
    metrics: &IngestMetrics,
    table: &str,
    started: Instant,
    committed: &Result<FilteredAppend>,
) {
    metrics
        .commit_seconds
        .with_label_values(&[table])
        .observe(started.elapsed().as_secs_f64());
    match committed {
        Ok(_) => metrics.commits.with_label_values(&[table]).inc(),
        Err(IngestError::Engine(EngineError::Fenced { .. })) => {}
        Err(_) => metrics.commit_failures.with_label_values(&[table]).inc(),
    }
}

/// Conflicts retried, rows and files of one commit that went through.
fn count_append(metrics: &IngestMetrics, table: &str, done: &AppendOutcome) {
    metrics
        .commit_conflicts
        .with_label_values(&[table])
        .inc_by(u64::from(done.retries));
    metrics
        .flushed_rows
        .with_label_values(&[table])
        .inc_by(done.rows as u64);
    metrics
        .flushed_files
        .with_label_values(&[table])
        .inc_by(done.files as u64);
}
