use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use chrono::{DateTime, Utc};

use crate::registry::{self, GDPR_AUDIT};
use crate::table::EventTable;
use crate::{Result, Storage};

pub const GDPR_AUDIT_TABLE: &str = GDPR_AUDIT.name;

/// One GDPR request as the audit log keeps it: who asked, when, what was done. The subject is
/// only its keyed hash.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub request_id: String,
    /// `export` or `purge`
    pub kind: String,
    pub subject_hash: String,
    pub requested_by: String,
    pub requested_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub status: String,
    /// The receipt or manifest as JSON (hashes, counts, versions; never an id).
    pub receipt: String,
}

impl AuditRecord {
    pub async fn append(&self, storage: &Storage) -> Result<()> {
        let mut table = EventTable::open_or_create(storage, GDPR_AUDIT.spec()).await?;
        let us = |t: &DateTime<Utc>| t.timestamp_micros();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from(vec![self.request_id.as_str()])),
            Arc::new(StringArray::from(vec![self.kind.as_str()])),
            Arc::new(StringArray::from(vec![self.subject_hash.as_str()])),
            Arc::new(StringArray::from(vec![self.requested_by.as_str()])),
            Arc::new(
                TimestampMicrosecondArray::from(vec![us(&self.requested_at)]).with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from(vec![us(&self.finished_at)]).with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![self.status.as_str()])),
            Arc::new(StringArray::from(vec![self.receipt.as_str()])),
            Arc::new(Date32Array::from(vec![
                self.requested_at.timestamp().div_euclid(86_400) as i32,
            ])),
        ];
        table
            .append(
                &[RecordBatch::try_new(registry::gdpr_audit_schema(), cols)?],
                &[],
            )
            .await?;
        Ok(())
    }
}
