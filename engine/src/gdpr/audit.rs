use std::sync::Arc;

use arrow::array::{ArrayRef, Date32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{DateTime, Utc};

use crate::table::{EventTable, TableSpec};
use crate::{Result, Storage};

pub const GDPR_AUDIT_TABLE: &str = "gdpr_audit";

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

fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("request_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("subject_hash", DataType::Utf8, false),
        Field::new("requested_by", DataType::Utf8, false),
        Field::new("requested_at", ts.clone(), false),
        Field::new("finished_at", ts, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("receipt", DataType::Utf8, false),
        Field::new("request_date", DataType::Date32, false),
    ]))
}

impl AuditRecord {
    pub async fn append(&self, storage: &Storage) -> Result<()> {
        let mut table = EventTable::open_or_create(
            storage,
            TableSpec {
                name: GDPR_AUDIT_TABLE,
                schema: schema(),
                partition_column: "request_date",
                sort_column: "requested_at",
                stats_columns: &["kind", "requested_at", "finished_at", "status"],
                bloom_columns: &[],
                high_cardinality: &["request_id", "subject_hash", "receipt"],
                lz4: false,
            },
        )
        .await?;
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
            .append(&[RecordBatch::try_new(schema(), cols)?], &[])
            .await?;
        Ok(())
    }
}
