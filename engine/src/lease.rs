//! Leases in the storage root: how two servers on one root run each scheduled job once.
//!
//! ```text
//! time: |--- slot n ---|--- slot n+1 ---|   (slot = now / the job's interval)
//! server A --create _strata/leases/compact/<n>.json (PutMode::Create)--> ok            -> runs slot n
//! server B --create _strata/leases/compact/<n>.json (PutMode::Create)--> AlreadyExists -> skips slot n
//! ```
//!
//! A lease is a file created with a conditional put (`If-None-Match: *` on S3, a hard link
//! locally): exactly one creator succeeds, with no lock service and no clock agreement beyond
//! the slot length. Every server must run a job on the same interval for its slots to line up.
//! A lease is never released: it expires with its slot, and the holder deletes leases
//! [`KEEP_SLOTS`] slots old.

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::PutPayload;
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use crate::delta::layout::{lease_file, leases_dir};
use crate::{EngineError, Result, Storage};

/// Leases of this many slots before the current one are kept (to read who ran what); older
/// ones are deleted by the holder of a new lease.
pub const KEEP_SLOTS: u64 = 4;

/// One interval of a job's schedule: the `number`-th interval since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub number: u64,
    pub interval: Duration,
}

impl Slot {
    /// The slot `now` falls in (an interval under a millisecond counts as one millisecond).
    pub fn at(interval: Duration, now: DateTime<Utc>) -> Self {
        let ms = interval_ms(interval);
        let now_ms = u64::try_from(now.timestamp_millis()).unwrap_or(0);
        Self {
            number: now_ms / ms,
            interval,
        }
    }

    /// When the next slot starts.
    pub fn next_start(&self) -> DateTime<Utc> {
        let ms = (self.number + 1).saturating_mul(interval_ms(self.interval));
        DateTime::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

fn interval_ms(interval: Duration) -> u64 {
    u64::try_from(interval.as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// Who claims leases: one per process, named in every lease file it creates.
#[derive(Debug, Clone)]
pub struct LeaseHolder {
    /// Unique per process start (a UUID).
    pub id: String,
    pub host: String,
    pub pid: u32,
}

impl LeaseHolder {
    pub fn this_process() -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            host: host_name(),
            pid: std::process::id(),
        }
    }
}

/// The machine's name, for operators reading a lease file (`unknown` when it cannot be read).
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

/// What a lease file holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    job: String,
    slot: u64,
    interval_ms: u64,
    holder: String,
    host: String,
    pid: u32,
    /// RFC 3339.
    claimed_at: String,
}

/// The right to run `job` in one slot.
#[derive(Debug, Clone)]
pub struct Lease {
    pub job: String,
    pub slot: Slot,
    /// The [`LeaseHolder::id`] that claimed it.
    pub holder: String,
}

impl Lease {
    /// Claims the slot of `job` that `now` falls in: `Some` when this call created its lease
    /// file, `None` when another claim (another server, or an earlier call) got there first.
    pub async fn claim(
        storage: &Storage,
        holder: &LeaseHolder,
        job: &str,
        interval: Duration,
        now: DateTime<Utc>,
    ) -> Result<Option<Lease>> {
        let slot = Slot::at(interval, now);
        let record = LeaseRecord {
            job: job.to_string(),
            slot: slot.number,
            interval_ms: interval_ms(interval),
            holder: holder.id.clone(),
            host: holder.host.clone(),
            pid: holder.pid,
            claimed_at: now.to_rfc3339(),
        };
        let body = serde_json::to_vec(&record)
            .map_err(|e| EngineError::Internal(format!("encoding a lease: {e}")))?;
        let path = lease_file(job, slot.number);
        let what = format!("claiming lease {path}");
        if !storage
            .create_if_absent(&path, PutPayload::from(body), &what)
            .await?
        {
            debug!(job, slot = slot.number, "slot already claimed");
            return Ok(None);
        }
        if let Err(e) = forget_old(storage, job, slot.number).await {
            warn!(job, error = %e, "deleting old leases failed; the next holder tries again");
        }
        Ok(Some(Lease {
            job: job.to_string(),
            slot,
            holder: holder.id.clone(),
        }))
    }
}

/// Deletes the leases of `job` more than [`KEEP_SLOTS`] slots before `current`.
async fn forget_old(storage: &Storage, job: &str, current: u64) -> Result<()> {
    let store = storage.store();
    let entries: Vec<_> = store
        .list(Some(&leases_dir(job)))
        .try_collect()
        .await
        .map_err(|e| EngineError::Internal(format!("listing leases of {job}: {e}")))?;
    for entry in entries {
        let slot = entry
            .location
            .filename()
            .and_then(|f| f.strip_suffix(".json"))
            .and_then(|n| n.parse::<u64>().ok());
        if slot.is_some_and(|s| s.saturating_add(KEEP_SLOTS) < current) {
            storage.delete_if_present(&entry.location).await?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    #[test]
    fn slots_cut_time_by_the_interval() {
        let every = Duration::from_secs(60);
        let slot = Slot::at(every, at(1_800_000_030));
        assert_eq!(slot.number, 30_000_000);
        assert_eq!(slot.next_start(), at(1_800_000_060));
        assert_eq!(Slot::at(every, at(1_800_000_059)).number, slot.number);
        assert_eq!(Slot::at(every, at(1_800_000_060)).number, slot.number + 1);
        assert_eq!(
            lease_file("compact", 12).as_ref(),
            "_strata/leases/compact/12.json"
        );
    }

    #[tokio::test]
    async fn one_claim_of_a_slot_wins_and_the_next_slot_is_free_again() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        let (a, b) = (LeaseHolder::this_process(), LeaseHolder::this_process());
        let every = Duration::from_secs(10);
        let now = at(1_800_000_000);

        let won = Lease::claim(&storage, &a, "compact", every, now)
            .await
            .unwrap()
            .expect("the first claim of a slot wins");
        assert_eq!(won.holder, a.id);
        assert!(Lease::claim(
            &storage,
            &b,
            "compact",
            every,
            now + chrono::Duration::seconds(5)
        )
        .await
        .unwrap()
        .is_none());
        // The same holder cannot claim a slot twice either.
        assert!(Lease::claim(&storage, &a, "compact", every, now)
            .await
            .unwrap()
            .is_none());
        // Another job's slots are its own.
        assert!(Lease::claim(&storage, &b, "vacuum", every, now)
            .await
            .unwrap()
            .is_some());

        let next = now + chrono::Duration::seconds(10);
        let second = Lease::claim(&storage, &b, "compact", every, next)
            .await
            .unwrap()
            .expect("the next slot is claimable again");
        assert_eq!(second.slot.number, won.slot.number + 1);
        assert_eq!(second.holder, b.id);

        // The lease file says who holds it.
        let text = std::fs::read_to_string(
            dir.path()
                .join(lease_file("compact", second.slot.number).as_ref()),
        )
        .unwrap();
        let record: LeaseRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (record.holder, record.pid),
            (b.id.clone(), std::process::id())
        );
    }

    #[tokio::test]
    async fn a_holder_deletes_leases_a_few_slots_old() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        let holder = LeaseHolder::this_process();
        let every = Duration::from_secs(1);
        let start = 1_800_000_000;
        for s in 0..10 {
            let lease = Lease::claim(&storage, &holder, "retention", every, at(start + s))
                .await
                .unwrap();
            assert!(lease.is_some());
        }
        let leases = dir.path().join(leases_dir("retention").as_ref());
        let mut kept: Vec<u64> = std::fs::read_dir(leases)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_string_lossy()
                    .strip_suffix(".json")
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        kept.sort();
        let last = start as u64 + 9;
        assert_eq!(kept, ((last - KEEP_SLOTS)..=last).collect::<Vec<_>>());
    }
}
