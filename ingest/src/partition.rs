use strata_schemas::{EventKind, RawMessage};

use crate::dedupe::DedupeWindow;

/// Messages of one partition received since its last commit, in one arena.
#[derive(Debug, Default)]
pub(crate) struct PendingMessages {
    arena: Vec<u8>,
    payloads: Vec<(usize, usize)>,
    keys: Vec<Option<(usize, usize)>>,
    pub(crate) offsets: Vec<i64>,
    pub(crate) first_at: Option<std::time::Instant>,
}

impl PendingMessages {
    pub(crate) fn push(&mut self, offset: i64, key: Option<&[u8]>, payload: &[u8]) {
        if self.first_at.is_none() {
            self.first_at = Some(std::time::Instant::now());
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(payload);
        self.payloads.push((start, self.arena.len()));
        self.keys.push(key.map(|k| {
            let s = self.arena.len();
            self.arena.extend_from_slice(k);
            (s, self.arena.len())
        }));
        self.offsets.push(offset);
    }

    pub(crate) fn len(&self) -> usize {
        self.offsets.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.arena.len()
    }

    pub(crate) fn payload(&self, i: usize) -> &[u8] {
        let (s, e) = self.payloads[i];
        &self.arena[s..e]
    }

    pub(crate) fn key(&self, i: usize) -> Option<&[u8]> {
        self.keys[i].map(|(s, e)| &self.arena[s..e])
    }

    pub(crate) fn raw(&self, partition: i32) -> impl Iterator<Item = RawMessage<'_>> + '_ {
        (0..self.len()).map(move |i| RawMessage {
            payload: self.payload(i),
            partition,
            offset: self.offsets[i],
        })
    }

    pub(crate) fn clear(&mut self) {
        self.arena.clear();
        self.payloads.clear();
        self.keys.clear();
        self.offsets.clear();
        self.first_at = None;
    }
}

/// The `txn` versions one partition's app id has stored: where it resumes after a restart
/// or a takeover.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StoredOffsets {
    /// In the partition's event table: the next offset not yet committed there.
    pub(crate) table_next: Option<i64>,
    /// In `dead_letters`: rejects below it are already kept.
    pub(crate) dlq_next: Option<i64>,
}

/// Everything the loop knows about one assigned partition.
#[derive(Debug)]
pub(crate) struct PartitionState {
    pub(crate) topic: String,
    pub(crate) partition: i32,
    pub(crate) kind: EventKind,
    pub(crate) app_id: String,
    /// The `txn` version stored in the event table: the next offset not yet committed there.
    pub(crate) table_next: Option<i64>,
    /// The `txn` version stored in `dead_letters`: rejects below it are already kept.
    pub(crate) dlq_next: Option<i64>,
    /// The next offset this loop accepts; anything below is a replay and is skipped.
    pub(crate) position: i64,
    /// True until a seek to `position` has been accepted by the client.
    pub(crate) needs_seek: bool,
    pub(crate) last_seek: Option<std::time::Instant>,
    /// Messages seen ahead of `position` since the last watermark check.
    pub(crate) gaps: u32,
    /// How far before `position` the next seek goes (see `retry_seeks`).
    pub(crate) rewind: i64,
    /// True from a seek until the first message at or past `position` arrives.
    pub(crate) awaiting: bool,
    pub(crate) pending: PendingMessages,
    pub(crate) window: DedupeWindow,
}

impl PartitionState {
    /// A partition resuming from the offsets stored in its event table and in dead letters.
    pub(crate) fn new(
        topic: String,
        partition: i32,
        kind: EventKind,
        app_id: String,
        stored: StoredOffsets,
        window: DedupeWindow,
    ) -> Self {
        let StoredOffsets {
            table_next,
            dlq_next,
        } = stored;
        Self {
            topic,
            partition,
            kind,
            app_id,
            table_next,
            dlq_next,
            position: table_next.unwrap_or(0),
            needs_seek: false,
            last_seek: None,
            gaps: 0,
            rewind: 0,
            awaiting: false,
            pending: PendingMessages::default(),
            window,
        }
    }
}
