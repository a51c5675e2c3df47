//! Event types, their Arrow schemas and the bulk JSON decoder. No I/O.
//!
//! ```text
//! producers --JSON--> Kafka --> [ schemas: decode + validate ] --> ingest --> Delta tables
//!                                         |
//!                                         +--> rejects (reason) --> dead_letters
//! ```
//!
//! Every event type has two schemas: the *wire* schema (what producers send, every field
//! nullable so that a missing field is reported by name instead of as a decoder error) and
//! the *table* schema (what lands in Delta: required fields non-null, plus `event_date` and
//! the Kafka lineage columns that make ingest exactly-once and auditable).

mod ai_usage;
mod click;
mod dead_letter;
mod decode;
mod error;
mod kind;
mod validate;

pub use ai_usage::AiUsage;
pub use click::LinkClick;
pub use dead_letter::{dead_letter_schema, DeadLetter, DeadLetterBuilder, DEAD_LETTERS_TABLE};
pub use decode::{cores, Decoded, EventDecoder, RawMessage, Reject};
pub use error::{Result, SchemaError};
pub use kind::{EventKind, PersonId, LINEAGE_COLUMNS, PARTITION_COLUMN};

/// Schema versions this build understands. Older or newer versions are rejected with a
/// reason naming the version, so a producer upgrade never silently writes garbage.
pub const SUPPORTED_SCHEMA_VERSIONS: &[i64] = &[1];
