//! Placeholder seam for GDPR tombstones (events of purged subjects are dropped at ingest).
//! The purge issue fills this in; until then nothing is dropped.
