use arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};

use crate::kind::{envelope_wire_fields, WireField};

/// Precision and scale of `cost_usd`: nano-dollars, up to a billion dollars per call.
pub const COST_PRECISION: u8 = 18;
pub const COST_SCALE: i8 = 9;

/// One call of an AI model by a platform feature. One Kafka message on topic `ai_usage`,
/// key = subject id (or the job id for system work).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AiUsage {
    pub schema_version: i64,
    pub event_id: String,
    pub occurred_at: String,
    pub user_id: Option<String>,
    pub session_id: Option<String>,
    pub feature: String,
    pub provider: String,
    pub model: String,
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Decimal as a JSON string ("0.001250000") so no float rounding happens on the way.
    pub cost_usd: String,
    pub status: String,
    pub latency_ms: Option<i64>,
    pub job_id: Option<String>,
    pub batch_id: Option<String>,
}

/// In table order: the envelope, then the fields of this kind.
pub(crate) fn wire_fields() -> Vec<WireField> {
    envelope_wire_fields()
        .into_iter()
        .chain([
            ("user_id", DataType::Utf8, false),
            ("session_id", DataType::Utf8, false),
            ("feature", DataType::Utf8, true),
            ("provider", DataType::Utf8, true),
            ("model", DataType::Utf8, true),
            ("input_tokens", DataType::Int64, true),
            ("output_tokens", DataType::Int64, true),
            (
                "cost_usd",
                DataType::Decimal128(COST_PRECISION, COST_SCALE),
                true,
            ),
            ("status", DataType::Utf8, true),
            ("latency_ms", DataType::Int64, false),
            ("job_id", DataType::Utf8, false),
            ("batch_id", DataType::Utf8, false),
        ])
        .collect()
}
