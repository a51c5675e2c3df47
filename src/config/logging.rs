//! Logs on stderr, as text for people or one JSON object per line for log pipelines.
//!
//! The JSON lines are written by a small formatter of our own: tracing-subscriber's `json`
//! feature would change the feature set of a crate delta-rs' kernel shares with us, and so
//! rebuild everything above it. Each line holds `timestamp`, `level`, `target`, the fields of
//! the spans the event is in (outermost first, so the request span's `request_id` is on every
//! line of a request) and the event's own fields, `message` among them.

use std::fmt;

use clap::ValueEnum;
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The filter when neither `STRATA_LOG` nor `RUST_LOG` sets one: our crates at `info`, the
/// Delta libraries silent (they log per file), everything else at `warn`.
pub const DEFAULT_LOG_FILTER: &str = "warn,strata=info,strata_ingest=info,strata_engine=info,deltalake_core=off,deltalake=off,delta_kernel=off,buoyant_kernel=off";

/// The filter in effect: `STRATA_LOG`, else `RUST_LOG`, else [`DEFAULT_LOG_FILTER`].
pub fn log_filter() -> String {
    std::env::var(super::keys::LOG_FILTER_ENV)
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| DEFAULT_LOG_FILTER.into())
}

/// Logs go to stderr in `format`; `STRATA_LOG` (or `RUST_LOG`) sets the filter.
pub fn init_tracing(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(log_filter()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .init(),
    }
}

/// Span fields as the members of a JSON object without its braces (`"k":v,"k2":v2`), so
/// that fields recorded later are appended with a comma.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonFields;

impl<'writer> FormatFields<'writer> for JsonFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut visitor = JsonVisitor::default();
        fields.record(&mut visitor);
        let members: Vec<String> = visitor
            .0
            .iter()
            .map(|(k, v)| format!("{}:{v}", Value::String(k.clone())))
            .collect();
        writer.write_str(&members.join(","))
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        if !current.fields.is_empty() {
            current.fields.push(',');
        }
        self.format_fields(current.as_writer(), fields)
    }
}

/// One JSON object per event (see the module docs for its members).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonLines;

impl<S> FormatEvent<S, JsonFields> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        line.insert("level".into(), Value::String(meta.level().to_string()));
        line.insert("target".into(), Value::String(meta.target().to_string()));
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                let Some(fields) = extensions.get::<FormattedFields<JsonFields>>() else {
                    continue;
                };
                if let Ok(Value::Object(members)) =
                    serde_json::from_str::<Value>(&format!("{{{}}}", fields.fields))
                {
                    line.extend(members);
                }
            }
        }
        let mut visitor = JsonVisitor::default();
        event.record(&mut visitor);
        line.extend(visitor.0);
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Collects fields as JSON values: numbers and booleans as such, the rest as strings.
#[derive(Default)]
struct JsonVisitor(Map<String, Value>);

impl Visit for JsonVisitor {
    fn record_f64(&mut self, field: &Field, value: f64) {
        let v = serde_json::Number::from_f64(value).map_or(Value::Null, Value::Number);
        self.0.insert(field.name().into(), v);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), Value::String(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A writer into a shared buffer, one per event.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            // The lock is only poisoned if a writer panicked, which fails the test anyway.
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_lines_carry_span_and_event_fields() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info"))
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields)
            .event_format(JsonLines)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "request",
                request_id = "r-1",
                status = tracing::field::Empty
            );
            let _entered = span.enter();
            span.record("status", 200);
            tracing::info!(rows = 3, ok = true, elapsed_ms = 1.5, "done \"quoted\"");
            tracing::info!("second");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let first = &lines[0];
        assert_eq!(first["message"], "done \"quoted\"");
        assert_eq!(first["request_id"], "r-1");
        assert_eq!(first["status"], 200);
        assert_eq!(first["rows"], 3);
        assert_eq!(first["ok"], true);
        assert_eq!(first["elapsed_ms"], 1.5);
        assert_eq!(first["level"], "INFO");
        assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(lines[1]["request_id"], "r-1");
        assert_eq!(lines[1]["message"], "second");
    }
}
