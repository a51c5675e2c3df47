use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use crate::kind::timestamp_type;

pub const DEAD_LETTERS_TABLE: &str = "dead_letters";

/// A message that could not become an event, kept with the reason and its Kafka position.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message key (the subject id by convention); kept so GDPR requests can find it.
    pub key: Option<String>,
    /// The raw payload, as UTF-8 (invalid sequences replaced, see `payload_is_lossy`).
    pub payload: String,
    pub payload_is_lossy: bool,
    pub reason: String,
    /// Microseconds since the epoch, UTC.
    pub received_at_us: i64,
}

/// Dead letters are partitioned by the UTC date they were received.
pub fn dead_letter_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("topic", DataType::Utf8, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("key", DataType::Utf8, true),
        Field::new("payload", DataType::Utf8, false),
        Field::new("payload_is_lossy", DataType::Boolean, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("received_at", timestamp_type(), false),
        Field::new("received_date", DataType::Date32, false),
    ]))
}

/// Accumulates dead letters into one Arrow batch.
#[derive(Default)]
pub struct DeadLetterBuilder {
    rows: Vec<DeadLetter>,
}

impl DeadLetterBuilder {
    pub fn push(&mut self, letter: DeadLetter) {
        self.rows.push(letter);
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn finish(self) -> RecordBatch {
        let n = self.rows.len();
        let mut topic = StringBuilder::with_capacity(n, n * 8);
        let mut partition = Int32Builder::with_capacity(n);
        let mut offset = Int64Builder::with_capacity(n);
        let mut key = StringBuilder::with_capacity(n, n * 16);
        let mut payload = StringBuilder::with_capacity(n, n * 256);
        let mut lossy = arrow::array::BooleanBuilder::with_capacity(n);
        let mut reason = StringBuilder::with_capacity(n, n * 32);
        let mut received = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        let mut date = Date32Builder::with_capacity(n);
        for r in self.rows {
            topic.append_value(&r.topic);
            partition.append_value(r.partition);
            offset.append_value(r.offset);
            key.append_option(r.key.as_deref());
            payload.append_value(&r.payload);
            lossy.append_value(r.payload_is_lossy);
            reason.append_value(&r.reason);
            received.append_value(r.received_at_us);
            date.append_value(r.received_at_us.div_euclid(86_400_000_000) as i32);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(topic.finish()),
            Arc::new(partition.finish()),
            Arc::new(offset.finish()),
            Arc::new(key.finish()),
            Arc::new(payload.finish()),
            Arc::new(lossy.finish()),
            Arc::new(reason.finish()),
            Arc::new(received.finish()),
            Arc::new(date.finish()),
        ];
        // The columns are built above in schema order with matching types and lengths.
        RecordBatch::try_new(dead_letter_schema(), columns)
            .expect("dead letter batch matches its schema")
    }
}
