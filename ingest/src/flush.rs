//! One flush: decode every pending message, drop retries, keep rejects, and commit
//! dead letters first, then each event table, each commit carrying its partitions' offsets.
//! Rows and dead letters of purged subjects are dropped right before each commit, with the
//! tombstones that commit is fenced on (see `tombstone.rs`).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use strata_engine::{AppendOutcome, EngineError, EventTable, RawAppend, TxnUpdate};
use strata_schemas::{DeadLetter, DeadLetterBuilder, EventDecoder, EventKind, RawMessage};
use tracing::{debug, info, warn};

use crate::dedupe::uuid_key;
use crate::partition::PartitionState;
use crate::tombstone::TombstoneFilter;
use crate::{IngestError, IngestMetrics, Result};

/// Times one commit may come back because a purge started since its rows were filtered
/// (each time means one more purge meanwhile).
const MAX_TOMBSTONE_RELOADS: u32 = 20;

/// The tables ingest writes.
pub(crate) struct Tables {
    pub(crate) events: HashMap<EventKind, EventTable>,
    pub(crate) dead_letters: EventTable,
    pub(crate) tombstones: TombstoneFilter,
}

impl Tables {
    /// The `txn` versions of one app id in its event table and in `dead_letters`.
    pub(crate) async fn stored_offsets(
        &mut self,
        kind: EventKind,
        app_id: &str,
    ) -> Result<(Option<i64>, Option<i64>)> {
        let ids = [app_id.to_string()];
        let table_next = self
            .event(kind)
            .txn_versions(&ids)
            .await?
            .remove(app_id)
            .flatten();
        let dlq_next = self
            .dead_letters
            .txn_versions(&ids)
            .await?
            .remove(app_id)
            .flatten();
        Ok((table_next, dlq_next))
    }

    pub(crate) fn event(&mut self, kind: EventKind) -> &mut EventTable {
        self.events
            .get_mut(&kind)
            .expect("a table is opened for every bound kind")
    }
}

/// What one event table gets in a flush: rows (before the tombstone filter), the offsets they
/// advance, the indexes of the partitions involved, and (partition index, event id) of each
/// row, in row order, for the retry window.
type TableCommit = (RecordBatch, Vec<TxnUpdate>, Vec<usize>, Vec<(usize, u128)>);

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
    /// (topic, partition, next offset) committed, for Kafka's advisory offsets.
    pub(crate) committed: Vec<(String, i32, i64)>,
}

pub(crate) async fn flush(
    parts: &mut [PartitionState],
    tables: &mut Tables,
    metrics: &IngestMetrics,
) -> Result<FlushOutcome> {
    let started = Instant::now();
    let mut out = FlushOutcome::default();
    let now_us = chrono::Utc::now().timestamp_micros();
    let mut letters: Vec<DeadLetter> = Vec::new();
    let mut dlq_txns = Vec::new();
    let mut per_kind: HashMap<EventKind, TableCommit> = HashMap::new();
    tables.tombstones.refresh().await;

    for kind in EventKind::ALL {
        let members: Vec<usize> = (0..parts.len())
            .filter(|&i| parts[i].kind == kind && !parts[i].pending.is_empty())
            .collect();
        if members.is_empty() {
            continue;
        }
        // One decode call per kind over all its partitions' messages.
        let mut raw: Vec<RawMessage<'_>> = Vec::new();
        let mut origin: Vec<(usize, usize)> = Vec::new();
        for &m in &members {
            let p = &parts[m];
            for (i, msg) in p.pending.raw(p.partition).enumerate() {
                raw.push(msg);
                origin.push((m, i));
            }
        }
        let decoded = EventDecoder::new(kind).decode(&raw, now_us)?;
        drop(raw);
        metrics
            .events_in
            .with_label_values(&[kind.table()])
            .inc_by(origin.len() as u64);

        // Producer retries: an id already committed (window) or seen earlier in this flush.
        let ids = decoded
            .batch
            .column_by_name("event_id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| IngestError::Internal("decoded batch lacks event_id".into()))?;
        let mut seen: HashMap<usize, HashSet<u128>> = HashMap::new();
        let mut keep = Vec::with_capacity(ids.len());
        let mut fresh_ids = Vec::with_capacity(ids.len());
        let mut dups = 0u64;
        for (row, &src) in decoded.source_index.iter().enumerate() {
            let (m, _) = origin[src];
            let id = uuid_key(ids.value(row)).unwrap_or_default();
            let fresh = !parts[m].window.contains(id) && seen.entry(m).or_default().insert(id);
            dups += u64::from(!fresh);
            if fresh {
                fresh_ids.push((m, id));
            }
            keep.push(fresh);
        }
        let batch = if dups > 0 {
            filter_record_batch(&decoded.batch, &BooleanArray::from(keep))?
        } else {
            decoded.batch
        };
        metrics
            .duplicates
            .with_label_values(&[kind.table()])
            .inc_by(dups);
        out.duplicates += dups;

        let mut rejected_here = 0u64;
        let mut dlq_parts: HashSet<usize> = HashSet::new();
        for reject in &decoded.rejects {
            let (m, i) = origin[reject.index];
            let p = &parts[m];
            let offset = p.pending.offsets[i];
            rejected_here += 1;
            // Already kept before a restart: the dead-letter commit went through, the
            // table commit did not.
            if p.dlq_next.is_some_and(|next| offset < next) {
                continue;
            }
            let payload = p.pending.payload(i);
            let (text, lossy) = match std::str::from_utf8(payload) {
                Ok(s) => (s.to_string(), false),
                Err(_) => (String::from_utf8_lossy(payload).into_owned(), true),
            };
            letters.push(DeadLetter {
                topic: p.topic.clone(),
                partition: p.partition,
                offset,
                key: p
                    .pending
                    .key(i)
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                payload: text,
                payload_is_lossy: lossy,
                reason: reject.reason.clone(),
                received_at_us: now_us,
            });
            dlq_parts.insert(m);
        }
        metrics
            .rejected
            .with_label_values(&[kind.table()])
            .inc_by(rejected_here);
        out.rejected += rejected_here;
        for m in dlq_parts {
            let p = &parts[m];
            dlq_txns.push((
                m,
                TxnUpdate {
                    app_id: p.app_id.clone(),
                    expected: p.dlq_next,
                    next: p.position,
                },
            ));
        }

        let txns = members
            .iter()
            .map(|&m| TxnUpdate {
                app_id: parts[m].app_id.clone(),
                expected: parts[m].table_next,
                next: parts[m].position,
            })
            .collect();
        per_kind.insert(kind, (batch, txns, members, fresh_ids));
    }

    // Dead letters first: if we crash before the event commit, the replay skips them.
    if !letters.is_empty() {
        let txns: Vec<TxnUpdate> = dlq_txns.iter().map(|(_, t)| t.clone()).collect();
        let committed = commit_filtered(
            &mut tables.dead_letters,
            &mut tables.tombstones,
            &txns,
            |tombstones| {
                let mut kept = DeadLetterBuilder::default();
                let mut dropped = 0;
                for l in &letters {
                    if tombstones.keeps_letter(l.key.as_deref(), &l.payload) {
                        kept.push(l.clone());
                    } else {
                        dropped += 1;
                    }
                }
                Ok((kept.finish(), dropped))
            },
        )
        .await;
        match committed {
            Ok((done, tombstoned)) => {
                count_tombstoned(metrics, &mut out, "dead_letters", tombstoned);
                metrics.commit_retries.inc_by(done.retries as u64);
                metrics
                    .flushed_rows
                    .with_label_values(&[tables.dead_letters.name()])
                    .inc_by(done.rows as u64);
                metrics
                    .flushed_files
                    .with_label_values(&[tables.dead_letters.name()])
                    .inc_by(done.files as u64);
                for (m, t) in &dlq_txns {
                    parts[*m].dlq_next = Some(t.next);
                }
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
                return Ok(out);
            }
            Err(e) => return Err(e),
        }
    }

    for (kind, (batch, txns, members, fresh_ids)) in per_kind {
        let table = tables
            .events
            .get_mut(&kind)
            .expect("a table is opened for every bound kind");
        let committed = commit_filtered(table, &mut tables.tombstones, &txns, |tombstones| {
            tombstones.apply(batch.clone())
        })
        .await;
        match committed {
            Ok((done, tombstoned)) => {
                count_tombstoned(metrics, &mut out, kind.table(), tombstoned);
                metrics.commit_retries.inc_by(done.retries as u64);
                metrics
                    .flushed_rows
                    .with_label_values(&[kind.table()])
                    .inc_by(done.rows as u64);
                metrics
                    .flushed_files
                    .with_label_values(&[kind.table()])
                    .inc_by(done.files as u64);
                out.rows += done.rows as u64;
                debug!(
                    table = kind.table(),
                    version = done.version,
                    rows = done.rows,
                    files = done.files,
                    "committed"
                );
                for &m in &members {
                    let p = &mut parts[m];
                    p.table_next = Some(p.position);
                    out.committed
                        .push((p.topic.clone(), p.partition, p.position));
                }
                // The committed ids join the retry window of their partition.
                for (m, id) in fresh_ids {
                    parts[m].window.insert(id);
                }
                for &m in &members {
                    parts[m].pending.clear();
                }
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
            }
            Err(e) => return Err(e),
        }
    }
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
    Ok(out)
}

/// Commits what `filter` keeps with the tombstones it is given, fenced on their version; when
/// a purge has started since (its marker is newer), reloads them and filters again. Returns the
/// append and how many rows the filter dropped in the committed attempt.
async fn commit_filtered(
    table: &mut EventTable,
    tombstones: &mut TombstoneFilter,
    txns: &[TxnUpdate],
    filter: impl Fn(&TombstoneFilter) -> Result<(RecordBatch, u64)>,
) -> Result<(AppendOutcome, u64)> {
    for _ in 0..MAX_TOMBSTONE_RELOADS {
        let (batch, dropped) = filter(&*tombstones)?;
        match table
            .append_filtered(&[batch], txns, tombstones.version())
            .await?
        {
            RawAppend::Committed(done) => return Ok((done, dropped)),
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
