use std::collections::HashMap;
use std::future::Future;
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;
use strata_engine::{EventTable, Storage, TableSpec};
use strata_schemas::EventKind;
use tracing::{debug, info, warn};

use crate::consumer::{connect, is_transient, IngestConsumer, RebalanceEvent};
use crate::dedupe::{uuid_key, DedupeWindow};
use crate::flush::{flush, Tables};
use crate::partition::{PartitionState, StoredOffsets};
use crate::{app_id, IngestMetrics, IngestOptions, Result};

/// How far before the stored offset a partition's first fetch starts; the messages below
/// the offset are skipped. Costs a re-read of at most this many messages per assignment and
/// makes brokers that answer a fetch from inside a record batch with the *next* batch
/// (tansu does) return the batch that holds the offset.
const INITIAL_REWIND: i64 = 1024;
/// How long a partition may stay silent after a seek before its watermark is checked.
const STALL_CHECK: Duration = Duration::from_secs(3);

/// Totals of one ingest run.
#[derive(Debug, Default, Clone, Serialize)]
pub struct IngestReport {
    pub consumed: u64,
    pub rows_committed: u64,
    pub rejected: u64,
    pub duplicates: u64,
    /// Events and dead letters of purged subjects dropped (they occurred before the purge
    /// request).
    pub tombstoned: u64,
    pub flushes: u64,
    pub fenced: u64,
}

/// Consumes until `shutdown` resolves, then flushes and commits what it holds.
pub async fn run(
    opts: IngestOptions,
    storage: Storage,
    metrics: IngestMetrics,
    shutdown: impl Future<Output = ()>,
) -> Result<IngestReport> {
    let (tx, rx) = channel();
    let consumer = connect(&opts, tx)?;
    let mut tables = open_tables(&storage, &opts).await?;
    let mut lp = Loop {
        opts,
        consumer,
        rx,
        parts: Vec::new(),
        report: IngestReport::default(),
        metrics,
    };
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            biased;
            _ = &mut shutdown => break,
            _ = tick.tick() => {
                lp.apply_rebalances(&mut tables).await?;
                lp.check_stalled();
                lp.retry_seeks();
                if lp.flush_due() {
                    lp.flush(&mut tables).await?;
                }
                lp.update_lag();
            }
            msg = lp.consumer.recv() => {
                match msg {
                    Ok(m) => {
                        let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
                        let key = m.key().map(|k| k.to_vec());
                        let payload = m.payload().unwrap_or_default().to_vec();
                        drop(m);
                        lp.apply_rebalances(&mut tables).await?;
                        lp.accept(&topic, partition, offset, key.as_deref(), &payload);
                        if lp.flush_full() {
                            lp.flush(&mut tables).await?;
                        }
                    }
                    Err(e) if is_transient(&e) => {
                        warn!(error = %e, "kafka");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    info!("shutting down: flushing what is buffered");
    lp.apply_rebalances(&mut tables).await?;
    lp.flush(&mut tables).await?;
    lp.consumer.unsubscribe();
    Ok(lp.report)
}

async fn open_tables(storage: &Storage, opts: &IngestOptions) -> Result<Tables> {
    let mut events = HashMap::new();
    for binding in &opts.topics {
        if let std::collections::hash_map::Entry::Vacant(slot) = events.entry(binding.kind) {
            slot.insert(
                EventTable::open_or_create(storage, TableSpec::for_events(binding.kind)).await?,
            );
        }
    }
    let dead_letters = EventTable::open_or_create(storage, TableSpec::dead_letters()).await?;
    Ok(Tables {
        events,
        dead_letters,
        tombstones: crate::tombstone::TombstoneFilter::new(storage),
    })
}

/// The retry windows of partitions of one event table, from one scan of it: the event ids of
/// the last `window_size` offsets below each partition's stored offset.
async fn recent_windows(
    table: &EventTable,
    partitions: &[&(String, i32)],
    ids: &[String],
    stored: &HashMap<String, Option<i64>>,
    window_size: usize,
) -> Result<HashMap<i32, DedupeWindow>> {
    let from: Vec<(i32, i64)> = partitions
        .iter()
        .zip(ids)
        .filter(|_| window_size > 0)
        .filter_map(|((_, p), id)| Some((*p, stored[id]?.saturating_sub(window_size as i64))))
        .collect();
    let mut windows: HashMap<i32, DedupeWindow> = HashMap::new();
    for (p, event_id) in table.recent_event_ids(&from).await? {
        if let Some(k) = uuid_key(&event_id) {
            windows
                .entry(p)
                .or_insert_with(|| DedupeWindow::new(window_size))
                .insert(k);
        }
    }
    Ok(windows)
}

struct Loop {
    opts: IngestOptions,
    consumer: IngestConsumer,
    rx: Receiver<RebalanceEvent>,
    parts: Vec<PartitionState>,
    report: IngestReport,
    metrics: IngestMetrics,
}

impl Loop {
    fn find(&mut self, topic: &str, partition: i32) -> Option<&mut PartitionState> {
        self.parts
            .iter_mut()
            .find(|p| p.partition == partition && p.topic == topic)
    }

    fn accept(
        &mut self,
        topic: &str,
        partition: i32,
        offset: i64,
        key: Option<&[u8]>,
        payload: &[u8],
    ) {
        let Some(p) = self.find(topic, partition) else {
            // A message of a partition no longer (or not yet) ours: the owner reads it.
            return;
        };
        if offset < p.position {
            return; // committed (or buffered) already: a replay after a seek or restart
        }
        // Offsets of a partition are contiguous (no transactions, no compaction). A message
        // past the expected one was fetched before our seek took effect: drop it and seek
        // again. Only a partition never written may start wherever the log starts.
        let fresh_start = p.table_next.is_none() && p.pending.is_empty() && p.position == 0;
        if offset > p.position && !fresh_start {
            if !p.needs_seek {
                debug!(
                    topic,
                    partition,
                    expected = p.position,
                    got = offset,
                    "message ahead of position; seeking again"
                );
                p.needs_seek = true;
                p.gaps += 1;
            }
            return;
        }
        p.gaps = 0;
        p.awaiting = false;
        p.pending.push(offset, key, payload);
        p.position = offset + 1;
        self.report.consumed += 1;
    }

    fn pending_rows(&self) -> usize {
        self.parts.iter().map(|p| p.pending.len()).sum()
    }

    fn flush_full(&self) -> bool {
        self.pending_rows() >= self.opts.flush_rows
            || self.parts.iter().map(|p| p.pending.bytes()).sum::<usize>() >= self.opts.flush_bytes
    }

    fn flush_due(&self) -> bool {
        self.flush_full()
            || self
                .parts
                .iter()
                .filter_map(|p| p.pending.first_at)
                .any(|t| t.elapsed() >= self.opts.flush_age)
    }

    async fn flush(&mut self, tables: &mut Tables) -> Result<()> {
        if self.pending_rows() == 0 {
            return Ok(());
        }
        let out = flush(&mut self.parts, tables, &self.metrics).await?;
        self.report.flushes += 1;
        self.report.rows_committed += out.rows;
        self.report.rejected += out.rejected;
        self.report.tombstoned += out.tombstoned;
        self.report.duplicates += out.duplicates;
        if !out.committed.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for c in &out.committed {
                tpl.add_partition_offset(&c.topic, c.partition, Offset::Offset(c.next))?;
            }
            // Advisory only (lag monitoring); the table holds the real offsets.
            if let Err(e) = self.consumer.commit(&tpl, CommitMode::Async) {
                warn!(error = %e, "committing advisory offsets to Kafka");
            }
        }
        if !out.fenced.is_empty() {
            self.report.fenced += out.fenced.len() as u64;
            self.init_partitions(tables, &out.fenced).await?;
        }
        Ok(())
    }

    async fn apply_rebalances(&mut self, tables: &mut Tables) -> Result<()> {
        while let Ok(event) = self.rx.try_recv() {
            match event {
                RebalanceEvent::Revoked(list) => {
                    // Uncommitted messages of revoked partitions are dropped: the new owner
                    // reads them again from the offsets in the table.
                    self.parts
                        .retain(|p| !list.iter().any(|(t, n)| *t == p.topic && *n == p.partition));
                    self.forget_lag(&list);
                }
                RebalanceEvent::Assigned(list) => self.init_partitions(tables, &list).await?,
            }
        }
        Ok(())
    }

    /// (Re)starts partitions from the offsets stored in the tables.
    async fn init_partitions(&mut self, tables: &mut Tables, list: &[(String, i32)]) -> Result<()> {
        tables.dead_letters.refresh().await?;
        for kind in EventKind::ALL {
            let mine: Vec<&(String, i32)> = list
                .iter()
                .filter(|(t, _)| self.opts.kind_of(t) == Some(kind))
                .collect();
            if mine.is_empty() {
                continue;
            }
            tables.event(kind).refresh().await?;
            let ids: Vec<String> = mine
                .iter()
                .map(|(t, p)| app_id(&self.opts.group, t, *p))
                .collect();
            let stored = tables.event(kind).txn_versions(&ids).await?;
            let dlq = tables.dead_letters.txn_versions(&ids).await?;
            let window_size = self.opts.dedupe_window;
            let mut windows =
                recent_windows(tables.event(kind), &mine, &ids, &stored, window_size).await?;
            for ((topic, partition), id) in mine.into_iter().zip(ids) {
                let offsets = StoredOffsets {
                    table_next: stored[&id],
                    dlq_next: dlq[&id],
                };
                let window = windows
                    .remove(partition)
                    .unwrap_or_else(|| DedupeWindow::new(window_size));
                self.restart(topic, *partition, kind, id, offsets, window);
            }
        }
        self.retry_seeks();
        Ok(())
    }

    /// Replaces what the loop holds for one partition with a fresh state that resumes from
    /// the stored offsets (seeking a little before them: see `retry_seeks`).
    fn restart(
        &mut self,
        topic: &str,
        partition: i32,
        kind: EventKind,
        app_id: String,
        offsets: StoredOffsets,
        window: DedupeWindow,
    ) {
        let StoredOffsets {
            table_next,
            dlq_next,
        } = offsets;
        info!(topic = %topic, partition, ?table_next, ?dlq_next, window = window.len(), "partition starts from the table's offsets");
        self.parts
            .retain(|p| !(p.topic == topic && p.partition == partition));
        let mut state =
            PartitionState::new(topic.to_string(), partition, kind, app_id, offsets, window);
        state.needs_seek = true;
        state.rewind = if table_next.is_some() {
            INITIAL_REWIND
        } else {
            0
        };
        self.parts.push(state);
    }

    /// Points the client at the offsets from the table. A seek can fail while the
    /// assignment is still settling; it is retried on every tick until it is accepted.
    fn retry_seeks(&mut self) {
        for p in self.parts.iter_mut().filter(|p| p.needs_seek) {
            if p.last_seek
                .is_some_and(|t| t.elapsed() < Duration::from_millis(500))
            {
                continue;
            }
            // Some brokers (tansu among them) answer a fetch from the middle of a record batch
            // with the *next* batch. After a gap, seek further back each time (the messages
            // below `position` are skipped) until the batch holding `position` comes back.
            if p.gaps > 0 {
                p.rewind = (p.rewind * 4).max(512).min(p.position.max(0));
            }
            // Gaps that persist while rewinding may mean the log no longer holds
            // `position` (retention): then the earliest offset still held is where the
            // partition continues.
            if p.gaps >= 8 {
                if let Ok((low, _)) =
                    self.consumer
                        .fetch_watermarks(&p.topic, p.partition, Duration::from_secs(2))
                {
                    if low > p.position {
                        tracing::error!(topic = %p.topic, partition = p.partition, lost = low - p.position, "messages deleted by retention before ingest");
                        p.position = low;
                    }
                }
                p.gaps = 0;
            }
            let offset = match (p.table_next, p.position - p.rewind) {
                (None, _) if p.position == 0 => Offset::Beginning,
                (_, n) if n <= 0 => Offset::Beginning,
                (_, n) => Offset::Offset(n),
            };
            p.last_seek = Some(std::time::Instant::now());
            match self
                .consumer
                .seek(&p.topic, p.partition, offset, Duration::from_secs(5))
            {
                Ok(()) => {
                    p.needs_seek = false;
                    p.awaiting = true;
                }
                Err(e) => {
                    tracing::debug!(topic = %p.topic, partition = p.partition, error = %e, "seek not accepted yet")
                }
            }
        }
    }

    /// A partition that got no message since its seek although the log holds more than
    /// `position` is stuck behind a broker that skipped the batch we asked for (the last
    /// batch has no successor to reveal the gap): seek further back.
    fn check_stalled(&mut self) {
        for p in self.parts.iter_mut() {
            let idle = p.last_seek.is_some_and(|t| t.elapsed() >= STALL_CHECK);
            if p.needs_seek || !p.awaiting || !idle {
                continue;
            }
            match self
                .consumer
                .fetch_watermarks(&p.topic, p.partition, Duration::from_secs(1))
            {
                Ok((_, high)) if high > p.position => {
                    debug!(topic = %p.topic, partition = p.partition, position = p.position, high, "no message since seek; seeking further back");
                    p.gaps += 1;
                    p.needs_seek = true;
                }
                _ => p.last_seek = Some(std::time::Instant::now()),
            }
        }
    }

    /// Removes the lag series of partitions no longer ours: their new owner reports them, and
    /// a stale value here would count their lag twice.
    fn forget_lag(&self, list: &[(String, i32)]) {
        for (topic, partition) in list {
            // An error only says that no watermark was seen for it: nothing to remove.
            let _ = self
                .metrics
                .lag
                .remove_label_values(&[topic.as_str(), &partition.to_string()]);
        }
    }

    /// The Kafka offset lag of each partition: its high watermark (from librdkafka's
    /// statistics) minus the next offset stored in its table, i.e. what a restart would read
    /// again plus what is not consumed yet.
    fn update_lag(&self) {
        let Ok(marks) = self.consumer.context().high_watermarks.lock() else {
            return;
        };
        for p in &self.parts {
            if let Some(&high) = marks.get(&(p.topic.clone(), p.partition)) {
                let committed = p.table_next.unwrap_or(0);
                self.metrics
                    .lag
                    .with_label_values(&[p.topic.as_str(), &p.partition.to_string()])
                    .set((high - committed).max(0));
            }
        }
    }
}
