//! The Kafka consumer loop: messages in, Delta commits out, exactly once.
//!
//! ```text
//! Kafka (clicks, ai_usage) --> [ ingest: consumer group -> per-partition buffers
//!                                  -> decode/validate/dedupe (schemas)
//!                                  -> dead_letters commit -> table commit with txn offsets ] --> engine tables
//! ```
//!
//! Exactly once: every commit to a table carries, per Kafka partition, a `txn` action
//! (`app_id = strata-<group>-<topic>-<partition>`, `version` = next offset). On assignment
//! the consumer seeks to those versions, not to Kafka's committed offsets (which are only
//! advanced afterwards, for lag monitoring). A commit first checks that the stored versions
//! are still the ones this process started from; if another process has taken a partition
//! over, the commit is abandoned and the partition re-read from the table's offsets.
//!
//! GDPR: events and dead letters of purged subjects that occurred before the purge request are
//! dropped (tombstones). The tombstone version a batch was filtered with rides in its commit
//! (`txn` app id `strata-gdpr-tombstones`); a purge that started since makes the commit come
//! back, and the flush reloads the tombstones, filters again and retries (see
//! `strata_engine::EventTable::append_filtered`).
//!
//! Producer retries: the same `event_id` sent twice lands in the same partition (the key is
//! the subject id). Each partition keeps a window of the most recent event ids (default
//! 200,000), restored from the table on assignment, and a repeated id is counted and dropped.

mod consumer;
mod dedupe;
mod direct;
mod error;
mod flush;
mod metrics;
mod options;
mod partition;
mod run;
mod tombstone;

pub use direct::{ingest_direct, DirectMessage};
pub use error::{IngestError, Result};
pub use metrics::{IngestMetrics, MetricsServer};
pub use options::{IngestOptions, TopicBinding};
pub use run::{run, IngestReport};

/// `strata-<group>-<topic>-<partition>`: the Delta `txn` app id of one Kafka partition.
pub fn app_id(group: &str, topic: &str, partition: i32) -> String {
    format!("strata-{group}-{topic}-{partition}")
}
