use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use crate::kind::{envelope_wire_fields, WireField};

/// A click on a link of the platform (homepage module, marketplace listing, directory site,
/// profile, ...). One Kafka message on topic `clicks`, key = subject id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkClick {
    pub schema_version: i64,
    pub event_id: String,
    /// RFC 3339 timestamp.
    pub occurred_at: String,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub session_id: Option<String>,
    pub item_id: String,
    pub item_type: String,
    pub category: Option<String>,
    pub source: String,
    pub target_url: String,
    pub referrer: Option<String>,
    pub country: Option<String>,
    pub device: Option<String>,
    pub is_bot: bool,
    pub consent_analytics: Option<bool>,
    pub consent_marketing: Option<bool>,
}

/// In table order: the envelope, then the fields of this kind.
pub(crate) fn wire_fields() -> Vec<WireField> {
    envelope_wire_fields()
        .into_iter()
        .chain([
            ("user_id", DataType::Utf8, false),
            ("anonymous_id", DataType::Utf8, false),
            ("session_id", DataType::Utf8, false),
            ("item_id", DataType::Utf8, true),
            ("item_type", DataType::Utf8, true),
            ("category", DataType::Utf8, false),
            ("source", DataType::Utf8, true),
            ("target_url", DataType::Utf8, true),
            ("referrer", DataType::Utf8, false),
            ("country", DataType::Utf8, false),
            ("device", DataType::Utf8, false),
            ("is_bot", DataType::Boolean, false),
            ("consent_analytics", DataType::Boolean, false),
            ("consent_marketing", DataType::Boolean, false),
        ])
        .collect()
}
