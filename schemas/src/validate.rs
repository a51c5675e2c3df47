//! Checks arrow-json cannot make: required fields, supported versions, UUIDs, ranges.
//! Column-at-a-time over the decoded wire batch.

use arrow::array::{
    Array, AsArray, Decimal128Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};

use crate::kind::EventKind;
use crate::SUPPORTED_SCHEMA_VERSIONS;

/// Earliest accepted `occurred_at`: 2000-01-01T00:00:00Z.
const MIN_OCCURRED_AT_US: i64 = 946_684_800_000_000;
/// Clocks drift; an event up to one day in the future of its ingestion is accepted.
const MAX_FUTURE_US: i64 = 86_400_000_000;

/// One entry per row: `None` when the row is good, else the first reason it is not.
pub(crate) fn validate(
    kind: EventKind,
    wire: &RecordBatch,
    ingested_at_us: i64,
) -> Vec<Option<String>> {
    let n = wire.num_rows();
    let mut reasons: Vec<Option<String>> = vec![None; n];
    let set = |reasons: &mut Vec<Option<String>>, row: usize, why: &dyn Fn() -> String| {
        if reasons[row].is_none() {
            reasons[row] = Some(why());
        }
    };

    for name in kind.required_fields() {
        let col = wire
            .column_by_name(name)
            .expect("required field is a wire field");
        if col.null_count() > 0 {
            for row in 0..n {
                if col.is_null(row) {
                    set(&mut reasons, row, &|| {
                        format!("missing required field `{name}`")
                    });
                }
            }
        }
        if let Some(s) = col.as_string_opt::<i32>() {
            for row in 0..n {
                if s.is_valid(row) && s.value(row).trim().is_empty() {
                    set(&mut reasons, row, &|| {
                        format!("empty required field `{name}`")
                    });
                }
            }
        }
    }

    let version = column::<Int32Array>(wire, "schema_version");
    for row in 0..n {
        if version.is_valid(row)
            && !SUPPORTED_SCHEMA_VERSIONS.contains(&(version.value(row) as i64))
        {
            let v = version.value(row);
            set(&mut reasons, row, &|| {
                format!("unsupported schema_version {v} (supported: {SUPPORTED_SCHEMA_VERSIONS:?})")
            });
        }
    }

    let event_id = column::<StringArray>(wire, "event_id");
    for row in 0..n {
        if event_id.is_valid(row) && !is_uuid(event_id.value(row)) {
            set(&mut reasons, row, &|| "event_id is not a UUID".to_string());
        }
    }

    let occurred = column::<TimestampMicrosecondArray>(wire, "occurred_at");
    for row in 0..n {
        if occurred.is_valid(row) {
            let t = occurred.value(row);
            if !(MIN_OCCURRED_AT_US..=ingested_at_us + MAX_FUTURE_US).contains(&t) {
                set(&mut reasons, row, &|| {
                    "occurred_at is before 2000 or more than a day in the future".to_string()
                });
            }
        }
    }

    if kind == EventKind::AiUsage {
        for name in ["input_tokens", "output_tokens", "latency_ms"] {
            let col = column::<Int64Array>(wire, name);
            for row in 0..n {
                if col.is_valid(row) && col.value(row) < 0 {
                    set(&mut reasons, row, &|| format!("`{name}` is negative"));
                }
            }
        }
        let cost = column::<Decimal128Array>(wire, "cost_usd");
        for row in 0..n {
            if cost.is_valid(row) && cost.value(row) < 0 {
                set(&mut reasons, row, &|| "`cost_usd` is negative".to_string());
            }
        }
    }
    reasons
}

fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .expect("wire column has its declared type")
}

/// Canonical 8-4-4-4-12 hex form, either case.
pub(crate) fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

#[cfg(test)]
mod tests {
    use super::is_uuid;

    #[test]
    fn uuid_shape() {
        assert!(is_uuid("0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11"));
        assert!(!is_uuid("0b7f3c1e8a8e4f5e9a513f0c2b0d9e11"));
        assert!(!is_uuid("0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e1z"));
    }
}
