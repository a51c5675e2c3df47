use std::net::SocketAddr;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Ingest metrics, registered on a registry the caller owns.
#[derive(Clone)]
pub struct IngestMetrics {
    /// Messages consumed, by table.
    pub events_in: IntCounterVec,
    /// Messages sent to dead letters, by table.
    pub rejected: IntCounterVec,
    /// Producer retries dropped, by table.
    pub duplicates: IntCounterVec,
    pub tombstoned: IntCounterVec,
    /// Rows and files committed, by table.
    pub flushed_rows: IntCounterVec,
    pub flushed_files: IntCounterVec,
    pub flush_seconds: Histogram,
    pub commit_retries: IntCounter,
    /// Partitions re-read because another consumer had advanced them (fencing).
    pub fenced: IntCounter,
    /// High watermark minus the next offset to commit, by topic and partition.
    pub lag: IntGaugeVec,
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
            "Messages sent to dead letters.",
            &["table"],
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
        let flush_seconds = Histogram::with_opts(
            HistogramOpts::new("flush_seconds", "Time from flush start to the last commit.")
                .namespace("strata_ingest")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        registry.register(Box::new(flush_seconds.clone()))?;
        let commit_retries = IntCounter::with_opts(
            Opts::new(
                "commit_retries_total",
                "Delta commits retried after a conflict.",
            )
            .namespace("strata_ingest"),
        )?;
        registry.register(Box::new(commit_retries.clone()))?;
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
                "High watermark minus the next offset to commit.",
            )
            .namespace("strata_ingest"),
            &["topic", "partition"],
        )?;
        registry.register(Box::new(lag.clone()))?;
        Ok(Self {
            events_in,
            rejected,
            duplicates,
            tombstoned,
            flushed_rows,
            flushed_files,
            flush_seconds,
            commit_retries,
            fenced,
            lag,
        })
    }
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
