//! The flush path without a broker: messages in memory -> decode -> Delta commits.
//! Used by `strata bench ingest` (to measure decode -> commit alone) and by tests.

use strata_engine::{EventTable, Storage, TableSpec};
use strata_schemas::EventKind;

use crate::dedupe::DedupeWindow;
use crate::flush::{flush, Tables};
use crate::partition::PartitionState;
use crate::{app_id, IngestMetrics, IngestReport, Result};

/// One message for [`ingest_direct`]: event kind, key, payload.
pub type DirectMessage<'a> = (EventKind, Option<&'a [u8]>, &'a [u8]);

/// Ingests `messages` as if they came from partition 0 of one topic per kind, flushing
/// every `flush_rows` messages. Offsets continue from what the table holds for `group`.
pub async fn ingest_direct(
    storage: &Storage,
    group: &str,
    messages: &[DirectMessage<'_>],
    flush_rows: usize,
    metrics: &IngestMetrics,
) -> Result<IngestReport> {
    let mut events = std::collections::HashMap::new();
    for kind in EventKind::ALL {
        events.insert(
            kind,
            EventTable::open_or_create(storage, TableSpec::for_events(kind)).await?,
        );
    }
    let dead_letters = EventTable::open_or_create(storage, TableSpec::dead_letters()).await?;
    let mut tables = Tables {
        events,
        dead_letters,
        tombstones: crate::tombstone::TombstoneFilter::new(storage),
    };
    let mut parts = Vec::new();
    for kind in EventKind::ALL {
        let topic = kind.default_topic().to_string();
        let id = app_id(group, &topic, 0);
        let stored = tables.stored_offsets(kind, &id).await?;
        parts.push(PartitionState::new(
            topic,
            0,
            kind,
            id,
            stored,
            DedupeWindow::new(crate::IngestOptions::DEFAULT_DEDUPE_WINDOW),
        ));
    }
    let mut report = IngestReport::default();
    let mut buffered = 0;
    for (kind, key, payload) in messages {
        let p = parts
            .iter_mut()
            .find(|p| p.kind == *kind)
            .expect("a partition per kind");
        let offset = p.position;
        p.pending.push(offset, *key, payload);
        p.position += 1;
        buffered += 1;
        report.consumed += 1;
        if buffered >= flush_rows {
            add(&mut report, flush(&mut parts, &mut tables, metrics).await?);
            buffered = 0;
        }
    }
    add(&mut report, flush(&mut parts, &mut tables, metrics).await?);
    Ok(report)
}

fn add(report: &mut IngestReport, out: crate::flush::FlushOutcome) {
    report.flushes += 1;
    report.rows_committed += out.rows;
    report.rejected += out.rejected;
    report.duplicates += out.duplicates;
    report.tombstoned += out.tombstoned;
    report.fenced += out.fenced.len() as u64;
}
