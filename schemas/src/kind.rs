use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::{ai_usage, click};

/// The Delta partition column of every raw table: the UTC date of `occurred_at`.
pub const PARTITION_COLUMN: &str = "event_date";

/// Columns Strata adds to every raw table: where the event came from and when it landed.
pub const LINEAGE_COLUMNS: &[&str] = &["kafka_partition", "kafka_offset", "ingested_at"];

/// The kind of id of a person an identifier column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PersonId {
    /// The account id (`user_id`).
    User,
    /// A device or cookie id of a visitor not signed in (`anonymous_id`).
    Anonymous,
    /// One visit (`session_id`).
    Session,
}

/// The kinds of events Strata ingests. Each has a topic, a table and two schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventKind {
    LinkClick,
    AiUsage,
}

impl EventKind {
    pub const ALL: [EventKind; 2] = [EventKind::LinkClick, EventKind::AiUsage];

    /// Delta table name under `<root>/tables/`.
    pub const fn table(self) -> &'static str {
        match self {
            EventKind::LinkClick => "link_clicks",
            EventKind::AiUsage => "ai_usage",
        }
    }

    /// Default Kafka topic.
    pub fn default_topic(self) -> &'static str {
        match self {
            EventKind::LinkClick => "clicks",
            EventKind::AiUsage => "ai_usage",
        }
    }

    /// The columns of the table that identify a person, with the kind of id each holds: what
    /// a GDPR request matches and the ingest tombstone filter hashes. They are excluded from
    /// Delta data-skipping statistics so that no identifier is copied into the transaction
    /// log (GDPR: the log is hard to rewrite).
    pub const fn identifier_columns(self) -> &'static [(&'static str, PersonId)] {
        match self {
            EventKind::LinkClick => &[
                ("user_id", PersonId::User),
                ("anonymous_id", PersonId::Anonymous),
                ("session_id", PersonId::Session),
            ],
            EventKind::AiUsage => &[
                ("user_id", PersonId::User),
                ("session_id", PersonId::Session),
            ],
        }
    }

    pub fn from_table(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.table() == name)
    }

    /// The kind's wire fields in table order: the envelope, then its own.
    fn wire_fields(self) -> Vec<WireField> {
        match self {
            EventKind::LinkClick => click::wire_fields(),
            EventKind::AiUsage => ai_usage::wire_fields(),
        }
    }

    /// What producers send: every field nullable, so a missing required field is reported
    /// by name by validation rather than as an opaque decoder error.
    pub fn wire_schema(self) -> SchemaRef {
        Arc::new(Schema::new(
            self.wire_fields()
                .into_iter()
                .map(|(name, dt, _)| Field::new(name, dt, true))
                .collect::<Vec<_>>(),
        ))
    }

    /// Names of the wire fields that must be present and non-null.
    pub fn required_fields(self) -> Vec<&'static str> {
        self.wire_fields()
            .into_iter()
            .filter(|(_, _, required)| *required)
            .map(|(name, _, _)| name)
            .collect()
    }

    /// What lands in Delta: wire fields (required ones non-null), then `event_date`, then the
    /// lineage columns.
    pub fn table_schema(self) -> SchemaRef {
        let mut out: Vec<Field> = self
            .wire_fields()
            .into_iter()
            .map(|(name, dt, required)| {
                // Booleans with a documented default are stored non-null.
                let nullable = !required && !defaults_to_false(self, name);
                Field::new(name, dt, nullable)
            })
            .collect();
        out.push(Field::new(PARTITION_COLUMN, DataType::Date32, false));
        out.push(Field::new("kafka_partition", DataType::Int32, false));
        out.push(Field::new("kafka_offset", DataType::Int64, false));
        out.push(Field::new("ingested_at", timestamp_type(), false));
        Arc::new(Schema::new(out))
    }
}

/// One wire field: (name, type, required).
pub(crate) type WireField = (&'static str, DataType, bool);

/// The envelope every event opens with, the same for every kind (validation checks it): the
/// schema version, the event id and when the event happened.
pub(crate) fn envelope_wire_fields() -> [WireField; 3] {
    [
        ("schema_version", DataType::Int32, true),
        ("event_id", DataType::Utf8, true),
        ("occurred_at", timestamp_type(), true),
    ]
}

/// Fields that producers may omit and that mean `false` when omitted.
pub(crate) fn defaults_to_false(kind: EventKind, name: &str) -> bool {
    matches!((kind, name), (EventKind::LinkClick, "is_bot"))
}

/// All timestamps are UTC microseconds, which every Delta reader understands.
pub fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifier_columns_are_string_columns_of_the_table() {
        for kind in EventKind::ALL {
            let schema = kind.table_schema();
            for (column, _) in kind.identifier_columns() {
                let field = schema
                    .field_with_name(column)
                    .expect("identifier column exists");
                assert_eq!(field.data_type(), &DataType::Utf8, "{kind}.{column}");
            }
        }
    }
}
