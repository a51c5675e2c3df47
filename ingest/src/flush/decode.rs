//! Stage 1 of a flush: the pending messages of each event kind decoded in one call, producer
//! retries dropped, rejects turned into dead letters, and the `txn` update each partition's
//! commit carries. Only reads the partitions: nothing is committed or advanced here.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, BooleanArray, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use strata_engine::TxnUpdate;
use strata_schemas::{DeadLetter, Decoded, EventDecoder, EventKind, RawMessage, Reject};

use super::FlushOutcome;
use crate::dedupe::uuid_key;
use crate::metrics::reject_reason;
use crate::partition::PartitionState;
use crate::{IngestError, IngestMetrics, Result};

/// Everything one flush commits, decoded and checked; nothing committed yet.
#[derive(Default)]
pub(super) struct FlushPlan {
    /// Committed first: see [`super::commit::commit_dead_letters`].
    pub(super) dead_letters: DeadLetterCommit,
    /// One per event kind with pending messages, in [`EventKind::ALL`] order.
    pub(super) events: Vec<EventCommit>,
}

/// The rejects of a flush, bound for `dead_letters`.
#[derive(Default)]
pub(super) struct DeadLetterCommit {
    /// New dead letters, before the tombstone filter (rejects below their partition's
    /// `dlq_next` were kept before a restart and are not repeated).
    pub(super) letters: Vec<DeadLetter>,
    /// The `dead_letters` offset update of each partition with new letters.
    pub(super) txns: Vec<PartitionTxn>,
}

/// One partition's offset update in a commit.
pub(super) struct PartitionTxn {
    /// Index of the partition in the flush's partitions.
    pub(super) part: usize,
    pub(super) txn: TxnUpdate,
}

/// What one event table gets in a flush.
pub(super) struct EventCommit {
    pub(super) kind: EventKind,
    /// Decoded rows without producer retries, before the tombstone filter (which runs at
    /// commit time, with the tombstones the commit is fenced on).
    pub(super) rows: RecordBatch,
    /// The offset update of each partition involved, expecting its `table_next`.
    pub(super) txns: Vec<TxnUpdate>,
    /// Indexes of the partitions involved (those of this kind with pending messages).
    pub(super) members: Vec<usize>,
    /// The event id of each row of `rows`, in row order, for the retry windows.
    pub(super) fresh_ids: Vec<FreshId>,
}

/// An event id that passed the retry check; it joins its partition's retry window once its
/// table commit goes through.
#[derive(Debug, Clone, Copy)]
pub(super) struct FreshId {
    pub(super) part: usize,
    pub(super) id: u128,
}

/// Where one decoded message came from.
#[derive(Debug, Clone, Copy)]
struct MessageOrigin {
    /// Index of the partition in the flush's partitions.
    part: usize,
    /// Position among that partition's pending messages.
    index: usize,
}

/// One kind's pending messages decoded, with the origin of each input message (the index
/// `Decoded::source_index` and `Reject::index` refer to).
struct DecodedKind {
    decoded: Decoded,
    origin: Vec<MessageOrigin>,
}

/// The rows of one kind left once producer retries are dropped.
struct FreshRows {
    rows: RecordBatch,
    ids: Vec<FreshId>,
    duplicates: u64,
}

/// Decodes, dedupes and sorts out the pending messages of every kind; counts messages in,
/// duplicates and rejects (metrics and `out`).
pub(super) fn plan(
    parts: &[PartitionState],
    now_us: i64,
    metrics: &IngestMetrics,
    out: &mut FlushOutcome,
) -> Result<FlushPlan> {
    let mut plan = FlushPlan::default();
    for kind in EventKind::ALL {
        let commit = plan_kind(parts, kind, now_us, metrics, out, &mut plan.dead_letters)?;
        plan.events.extend(commit);
    }
    Ok(plan)
}

/// The commit of one event kind (None: none of its partitions has pending messages); its
/// rejects go to `dead_letters`.
fn plan_kind(
    parts: &[PartitionState],
    kind: EventKind,
    now_us: i64,
    metrics: &IngestMetrics,
    out: &mut FlushOutcome,
    dead_letters: &mut DeadLetterCommit,
) -> Result<Option<EventCommit>> {
    let members: Vec<usize> = (0..parts.len())
        .filter(|&i| parts[i].kind == kind && !parts[i].pending.is_empty())
        .collect();
    if members.is_empty() {
        return Ok(None);
    }
    let DecodedKind { decoded, origin } = decode(parts, &members, kind, now_us)?;
    metrics
        .events_in
        .with_label_values(&[kind.table()])
        .inc_by(origin.len() as u64);

    let fresh = drop_retries(parts, &origin, decoded.batch, &decoded.source_index)?;
    metrics
        .duplicates
        .with_label_values(&[kind.table()])
        .inc_by(fresh.duplicates);
    out.duplicates += fresh.duplicates;

    count_rejects(metrics, kind.table(), &decoded.rejects);
    let rejected = collect_rejects(parts, &origin, &decoded.rejects, now_us, dead_letters);
    out.rejected += rejected;

    let txns = members
        .iter()
        .map(|&m| TxnUpdate {
            app_id: parts[m].app_id.clone(),
            expected: parts[m].table_next,
            next: parts[m].position,
        })
        .collect();
    Ok(Some(EventCommit {
        kind,
        rows: fresh.rows,
        txns,
        members,
        fresh_ids: fresh.ids,
    }))
}

/// One decode call per kind over all its partitions' messages.
fn decode(
    parts: &[PartitionState],
    members: &[usize],
    kind: EventKind,
    now_us: i64,
) -> Result<DecodedKind> {
    let mut raw: Vec<RawMessage<'_>> = Vec::new();
    let mut origin = Vec::new();
    for &part in members {
        let p = &parts[part];
        for (index, msg) in p.pending.raw(p.partition).enumerate() {
            raw.push(msg);
            origin.push(MessageOrigin { part, index });
        }
    }
    let decoded = EventDecoder::new(kind).decode(&raw, now_us)?;
    Ok(DecodedKind { decoded, origin })
}

/// Producer retries: drops the rows whose id is already committed (the partition's window)
/// or was seen earlier in this flush.
fn drop_retries(
    parts: &[PartitionState],
    origin: &[MessageOrigin],
    batch: RecordBatch,
    source_index: &[usize],
) -> Result<FreshRows> {
    let ids = batch
        .column_by_name("event_id")
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| IngestError::Internal("decoded batch lacks event_id".into()))?;
    let mut seen: HashMap<usize, HashSet<u128>> = HashMap::new();
    let mut keep = Vec::with_capacity(ids.len());
    let mut fresh_ids = Vec::with_capacity(ids.len());
    let mut duplicates = 0u64;
    for (row, &src) in source_index.iter().enumerate() {
        let part = origin[src].part;
        let id = uuid_key(ids.value(row)).unwrap_or_default();
        let fresh = !parts[part].window.contains(id) && seen.entry(part).or_default().insert(id);
        duplicates += u64::from(!fresh);
        if fresh {
            fresh_ids.push(FreshId { part, id });
        }
        keep.push(fresh);
    }
    let rows = if duplicates > 0 {
        filter_record_batch(&batch, &BooleanArray::from(keep))?
    } else {
        batch
    };
    Ok(FreshRows {
        rows,
        ids: fresh_ids,
        duplicates,
    })
}

/// Counts `rejects` by table and kind of reason (every reject, kept already or not, as
/// `collect_rejects` does).
fn count_rejects(metrics: &IngestMetrics, table: &str, rejects: &[Reject]) {
    for reject in rejects {
        metrics
            .rejected
            .with_label_values(&[table, reject_reason(&reject.reason)])
            .inc();
    }
}

/// Adds a dead letter per reject not kept yet, and the `dead_letters` offset update of each
/// partition that got one. Returns how many messages were rejected (kept already or not).
fn collect_rejects(
    parts: &[PartitionState],
    origin: &[MessageOrigin],
    rejects: &[Reject],
    now_us: i64,
    dead_letters: &mut DeadLetterCommit,
) -> u64 {
    let mut rejected = 0u64;
    let mut with_letters: HashSet<usize> = HashSet::new();
    for reject in rejects {
        let MessageOrigin { part, index } = origin[reject.index];
        let p = &parts[part];
        rejected += 1;
        // Already kept before a restart: the dead-letter commit went through, the table
        // commit did not.
        if p.dlq_next
            .is_some_and(|next| p.pending.offsets[index] < next)
        {
            continue;
        }
        dead_letters
            .letters
            .push(dead_letter(p, index, &reject.reason, now_us));
        with_letters.insert(part);
    }
    for part in with_letters {
        let p = &parts[part];
        dead_letters.txns.push(PartitionTxn {
            part,
            txn: TxnUpdate {
                app_id: p.app_id.clone(),
                expected: p.dlq_next,
                next: p.position,
            },
        });
    }
    rejected
}

/// The dead letter of pending message `index` of `p`: its payload as text (lossy when it is
/// not UTF-8), its key and its Kafka position.
fn dead_letter(p: &PartitionState, index: usize, reason: &str, received_at_us: i64) -> DeadLetter {
    let payload = p.pending.payload(index);
    let (text, lossy) = match std::str::from_utf8(payload) {
        Ok(s) => (s.to_string(), false),
        Err(_) => (String::from_utf8_lossy(payload).into_owned(), true),
    };
    DeadLetter {
        topic: p.topic.clone(),
        partition: p.partition,
        offset: p.pending.offsets[index],
        key: p
            .pending
            .key(index)
            .map(|k| String::from_utf8_lossy(k).into_owned()),
        payload: text,
        payload_is_lossy: lossy,
        reason: reason.to_string(),
        received_at_us,
    }
}
