//! The metrics of an ingest process, and a minimal `/metrics` endpoint for `strata ingest
//! --metrics-listen`.
//!
//! ```text
//! flush::decode --> events, rejected{reason}, duplicates      flush::commit --> commits, conflicts, failures, duration
//! run (every tick) --> lag_messages{topic,partition} = high watermark - next offset stored in the table
//! ```
//!
//! Label values come from fixed sets: tables, reject reasons ([`reject_reason`]), and the
//! topics and partitions this process is assigned (a revoked partition's series is removed).
//! docs/operations/metrics.md lists every metric.

use std::net::SocketAddr;

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Ingest metrics, registered on a registry the caller owns.
#[derive(Clone)]
pub struct IngestMetrics {
    /// Messages consumed, by table.
    pub events_in: IntCounterVec,
    /// Messages sent to dead letters, by table and [`reject_reason`].
    pub rejected: IntCounterVec,
    /// Producer retries dropped, by table.
    pub duplicates: IntCounterVec,
    pub tombstoned: IntCounterVec,
    /// Rows and files committed, by table.
    pub flushed_rows: IntCounterVec,
    pub flushed_files: IntCounterVec,
    pub flush_seconds: Histogram,
    /// Delta commits that went through, by table.
    pub commits: IntCounterVec,
    /// Commit attempts that lost a race with another writer and were checked again, by table.
    pub commit_conflicts: IntCounterVec,
    /// Commits that failed (the flush, and the ingest process, stop), by table.
    pub commit_failures: IntCounterVec,
    /// Time of one commit (tombstone filtering, Parquet writes, Delta commit and its retries),
    /// by table.
    pub commit_seconds: HistogramVec,
    /// Partitions re-read because another consumer had advanced them (fencing).
    pub fenced: IntCounter,
    /// High watermark minus the next offset stored in the table, by topic and partition.
    pub lag: IntGaugeVec,
    /// When these metrics were created (the process started): a crash loop shows as changes.
    pub start_time: Gauge,
}

impl IngestMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let counter_vec =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c =
                    IntCounterVec::new(Opts::new(name, help).namespace("strata_ingest"), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let events_in = counter_vec("events_total", "Messages consumed.", &["table"])?;
        let rejected = counter_vec(
            "rejected_total",
            "Messages sent to dead letters, by reason.",
            &["table", "reason"],
        )?;
        let duplicates = counter_vec("duplicates_total", "Producer retries dropped.", &["table"])?;
        let tombstoned = counter_vec(
            "tombstoned_total",
            "Events and dead letters of purged subjects dropped (they occurred before the purge request).",
            &["table"],
        )?;
        let flushed_rows = counter_vec("flushed_rows_total", "Rows committed.", &["table"])?;
        let flushed_files = counter_vec(
            "flushed_files_total",
            "Parquet files committed.",
            &["table"],
        )?;
        let commits = counter_vec("commits_total", "Delta commits made.", &["table"])?;
        let commit_conflicts = counter_vec(
            "commit_conflicts_total",
            "Delta commit attempts that lost a race with another writer and were retried.",
            &["table"],
        )?;
        let commit_failures = counter_vec(
            "commit_failures_total",
            "Delta commits that failed (ingest stops).",
            &["table"],
        )?;
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new("flush_seconds", "Time from flush start to the last commit.")
                .namespace("strata_ingest")
                .buckets(DURATION_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(flush_seconds.clone()))?;
        let commit_seconds = HistogramVec::new(
            HistogramOpts::new(
                "commit_duration_seconds",
                "Time of one commit: filtering, writing its files, the Delta commit and its retries.",
            )
            .namespace("strata_ingest")
            .buckets(DURATION_BUCKETS.to_vec()),
            &["table"],
        )?;
        registry.register(Box::new(commit_seconds.clone()))?;
        let fenced = IntCounter::with_opts(
            Opts::new(
                "fenced_total",
                "Flushes abandoned because another consumer owned a partition.",
            )
            .namespace("strata_ingest"),
        )?;
        registry.register(Box::new(fenced.clone()))?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "lag_messages",
                "Kafka offset lag: high watermark minus the next offset stored in the table.",
            )
            .namespace("strata_ingest"),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        let start_time = Gauge::with_opts(
            Opts::new(
                "start_time_seconds",
                "Unix time at which the ingest process started.",
            )
            .namespace("strata_ingest"),
        )?;
        start_time.set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        registry.register(Box::new(start_time.clone()))?;
        Ok(Self {
            events_in,
            rejected,
            duplicates,
            tombstoned,
            flushed_rows,
            flushed_files,
            flush_seconds,
            commits,
            commit_conflicts,
            commit_failures,
            commit_seconds,
            fenced,
            lag,
            start_time,
        })
    }
}

/// Flush and commit duration buckets (seconds).
const DURATION_BUCKETS: [f64; 10] = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The `reason` label of a reject: the kind of its reason, from the fixed set the decoder
/// and the validator of `strata_schemas` produce. A reason's text can quote a field name, a
/// version or a piece of the payload, so it is never a label value itself.
pub(crate) fn reject_reason(reason: &str) -> &'static str {
    const KINDS: [(&str, &str); 12] = [
        ("empty message", "empty_message"),
        ("message is not a JSON object", "not_a_json_object"),
        ("more than one JSON value", "malformed_json"),
        (
            "message must hold exactly one JSON object",
            "malformed_json",
        ),
        ("malformed JSON", "malformed_json"),
        ("truncated JSON", "malformed_json"),
        ("bad field type", "bad_field_type"),
        ("missing required field", "missing_field"),
        ("empty required field", "missing_field"),
        ("unsupported schema_version", "unsupported_schema_version"),
        ("event_id is not a UUID", "bad_event_id"),
        ("occurred_at is ", "occurred_at_out_of_range"),
    ];
    if let Some((_, kind)) = KINDS.iter().find(|(prefix, _)| reason.starts_with(prefix)) {
        return kind;
    }
    if reason.ends_with(" is negative") {
        return "negative_value";
    }
    "other"
}

/// A minimal `/metrics` endpoint for processes that do not run the API server.
pub struct MetricsServer;

impl MetricsServer {
    /// Serves the registry in the Prometheus text format on `addr` until the task is dropped.
    pub async fn serve(addr: SocketAddr, registry: Registry) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        info!(%local, "metrics listening");
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    continue;
                };
                let registry = registry.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = sock.read(&mut buf).await;
                    let mut body = Vec::new();
                    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut body) {
                        warn!(error = %e, "encoding metrics");
                    }
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = sock.write_all(head.as_bytes()).await;
                    let _ = sock.write_all(&body).await;
                });
            }
        });
        Ok(local)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use strata_schemas::{EventDecoder, EventKind, RawMessage};

    use super::*;

    const NOW: i64 = 1_800_000_000_000_000;

    fn click() -> String {
        r#"{"schema_version":1,"event_id":"0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11","occurred_at":"2026-10-01T12:00:00.250Z","user_id":"u-1","item_id":"mar-1","item_type":"marketplace_listing","source":"search","target_url":"/m/1"}"#.to_string()
    }

    /// The reasons the decoder really gives, each mapped to its kind: a reason reworded in
    /// `strata_schemas` shows up here as `other`.
    #[test]
    fn every_reason_of_the_decoder_has_its_kind() {
        let good = click();
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty_message"),
            ("not json".into(), "not_a_json_object"),
            (format!("{good}{good}"), "malformed_json"),
            (good[..40].to_string(), "malformed_json"),
            (
                good.replace("\"schema_version\":1", "\"schema_version\":\"one\""),
                "bad_field_type",
            ),
            (good.replace("\"item_id\":\"mar-1\",", ""), "missing_field"),
            (
                good.replace("\"source\":\"search\"", "\"source\":\" \""),
                "missing_field",
            ),
            (
                good.replace("\"schema_version\":1", "\"schema_version\":7"),
                "unsupported_schema_version",
            ),
            (
                good.replace("0b7f3c1e-8a8e-4f5e-9a51-3f0c2b0d9e11", "nope"),
                "bad_event_id",
            ),
            (
                good.replace("2026-10-01T12:00:00.250Z", "1999-12-31T00:00:00Z"),
                "occurred_at_out_of_range",
            ),
        ];
        let raw: Vec<RawMessage<'_>> = cases
            .iter()
            .enumerate()
            .map(|(i, (p, _))| RawMessage {
                payload: p.as_bytes(),
                partition: 0,
                offset: i as i64,
            })
            .collect();
        let decoded = EventDecoder::new(EventKind::LinkClick)
            .decode(&raw, NOW)
            .unwrap();
        assert_eq!(decoded.rejects.len(), cases.len());
        for reject in &decoded.rejects {
            let want = cases[reject.index].1;
            assert_eq!(reject_reason(&reject.reason), want, "{}", reject.reason);
        }
        assert_eq!(
            reject_reason("`input_tokens` is negative"),
            "negative_value"
        );
        assert_eq!(reject_reason("something new"), "other");
    }

    /// Every `strata_ingest_` name the shipped alert rules and dashboard use (without the
    /// histogram suffixes).
    fn names_used_in_ops() -> BTreeSet<String> {
        let files = [
            include_str!("../../ops/prometheus/alerts.yml"),
            include_str!("../../ops/grafana/strata.json"),
        ];
        files
            .iter()
            .flat_map(|f| f.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|w| w.starts_with("strata_ingest_"))
            .map(|w| {
                ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| w.strip_suffix(s))
                    .unwrap_or(w)
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn the_shipped_rules_and_dashboard_use_only_metrics_that_exist() {
        let registry = Registry::new();
        let m = IngestMetrics::new(&registry).unwrap();
        // Touch every family so that it is exposed (an empty family is not).
        let t = ["link_clicks"];
        for c in [
            &m.events_in,
            &m.duplicates,
            &m.tombstoned,
            &m.flushed_rows,
            &m.flushed_files,
            &m.commits,
            &m.commit_conflicts,
            &m.commit_failures,
        ] {
            c.with_label_values(&t).inc();
        }
        m.rejected
            .with_label_values(&["link_clicks", "other"])
            .inc();
        m.commit_seconds.with_label_values(&t).observe(0.1);
        m.lag.with_label_values(&["clicks", "0"]).set(1);
        let exposed: BTreeSet<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        let used = names_used_in_ops();
        assert!(!used.is_empty());
        for name in &used {
            assert!(
                exposed.contains(name),
                "{name} is not an ingest metric: {exposed:?}"
            );
        }
    }
}
