//! `strata bench ingest`: ingest throughput on generated events, in two stages: decode ->
//! Parquet -> Delta commit without a broker, then end to end from a broker.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use serde::Serialize;
use strata_engine::Storage;
use strata_fixtures::{GenOptions, Generator, Message};
use strata_ingest::{DirectMessage, IngestMetrics, IngestOptions, TopicBinding};
use strata_schemas::EventKind;

use crate::kafka;
use crate::measure::{cpu_seconds, peak_rss_mib};

/// What one `strata bench ingest` run does.
#[derive(Debug, Clone)]
pub struct IngestBench {
    /// Distinct events to generate.
    pub events: u64,
    /// Messages per flush (one commit per table per flush).
    pub flush_rows: usize,
    pub seed: u64,
    /// Storage root for the runs; `None`: a fresh temporary directory, removed after.
    pub storage_url: Option<String>,
    pub end_to_end: EndToEnd,
}

impl IngestBench {
    pub const DEFAULT_EVENTS: u64 = 1_000_000;
    pub const DEFAULT_SEED: u64 = 42;
}

/// Whether and where the end-to-end stage runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndToEnd {
    /// No broker was named: not run, and the run says how to ask for it.
    NotAsked,
    /// Not run.
    Skipped,
    /// On these brokers (tansu or Kafka); topics are created with 4 partitions.
    Brokers(String),
    /// On librdkafka's in-process mock cluster.
    Embedded,
}

/// One stage's throughput.
#[derive(Debug, Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub messages: u64,
    pub rows_committed: u64,
    pub seconds: f64,
    pub events_per_sec: f64,
    pub cpu_seconds: f64,
    pub events_per_cpu_sec: f64,
}

/// What a run measured; `Display` is the text report, `Serialize` the JSON one.
#[derive(Debug, Serialize)]
pub struct IngestResults {
    pub events: u64,
    pub flush_rows: usize,
    pub cores: usize,
    pub stages: Vec<Stage>,
    pub peak_rss_mib: f64,
    pub generated_bytes: u64,
}

impl fmt::Display for IngestResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for s in &self.stages {
            writeln!(
                f,
                "{:<18} {:>10} msgs {:>8.2}s {:>10.0} events/s {:>10.0} events/cpu-s",
                s.name, s.messages, s.seconds, s.events_per_sec, s.events_per_cpu_sec
            )?;
        }
        writeln!(
            f,
            "peak RSS {:.0} MiB (includes the {} MiB of generated messages held in memory)",
            self.peak_rss_mib,
            self.generated_bytes / (1 << 20)
        )
    }
}

/// Runs the stages; progress goes to stderr as they go.
pub async fn run(bench: &IngestBench) -> anyhow::Result<IngestResults> {
    let roots = RunRoots::new(bench.storage_url.as_deref())?;
    let generated = Generated::new(bench.events, bench.seed);
    let mut stages = vec![direct_stage(&roots, &generated, bench.flush_rows).await?];
    let broker = match &bench.end_to_end {
        EndToEnd::NotAsked => {
            eprintln!(
                "bench: no --brokers given: skipping the end-to-end stage (pass --brokers, or --embedded-broker)"
            );
            None
        }
        EndToEnd::Skipped => None,
        EndToEnd::Brokers(b) => Some(BenchBroker::external(b).await?),
        EndToEnd::Embedded => Some(BenchBroker::embedded()?),
    };
    if let Some(broker) = broker {
        produce(&broker, &generated.messages)?;
        stages.push(broker_stage(&roots, &broker, &generated, bench.flush_rows).await?);
    }
    let results = IngestResults {
        events: bench.events,
        flush_rows: bench.flush_rows,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        stages,
        peak_rss_mib: peak_rss_mib(),
        generated_bytes: generated.bytes,
    };
    roots.remove_temporary();
    Ok(results)
}

/// The messages of a run, generated up front and held in memory so that no stage times the
/// generator.
struct Generated {
    messages: Vec<Message>,
    /// Rows the tables must hold after a stage: the distinct good events.
    expected_rows: u64,
    /// Payload bytes of all messages.
    bytes: u64,
}

impl Generated {
    fn new(events: u64, seed: u64) -> Self {
        eprintln!("bench: generating {events} events (seed {seed})");
        let mut generator = Generator::new(GenOptions {
            seed,
            events,
            ..GenOptions::default()
        });
        let messages: Vec<Message> = generator.by_ref().collect();
        let summary = generator.summary();
        Self {
            expected_rows: summary.link_clicks + summary.ai_usage,
            bytes: messages.iter().map(|m| m.payload.len() as u64).sum(),
            messages,
        }
    }
}

/// Where the stages write: `<storage_url>/<stage>`, or `<temporary directory>/<stage>`.
struct RunRoots {
    base: String,
    /// The temporary directory to remove at the end, when no storage URL was given.
    temporary: Option<PathBuf>,
}

impl RunRoots {
    fn new(storage_url: Option<&str>) -> anyhow::Result<Self> {
        Ok(match storage_url {
            Some(u) => Self {
                base: u.trim_end_matches('/').to_string(),
                temporary: None,
            },
            None => {
                let p = std::env::temp_dir().join(format!("strata-bench-{}", uuid::Uuid::new_v4()));
                std::fs::create_dir_all(&p)?;
                Self {
                    base: p.display().to_string(),
                    temporary: Some(p),
                }
            }
        })
    }

    async fn open(&self, stage: &str) -> anyhow::Result<Storage> {
        Ok(Storage::open_url(&format!("{}/{stage}", self.base)).await?)
    }

    fn remove_temporary(&self) {
        if let Some(p) = &self.temporary {
            let _ = std::fs::remove_dir_all(p);
        }
    }
}

/// Generated messages as the ingest's broker-free path takes them (`strata gen
/// --storage-url` writes through the same path).
pub fn direct_messages(messages: &[Message]) -> Vec<DirectMessage<'_>> {
    messages
        .iter()
        .map(|m| {
            (
                EventKind::from(m.kind),
                m.key.as_deref().map(str::as_bytes),
                m.payload.as_bytes(),
            )
        })
        .collect()
}

/// The generator's messages for `options` (at most `options.events` of them), written into
/// `storage` through the ingest's broker-free path, `flush_rows` messages per commit.
pub(crate) async fn write_generated(
    storage: &Storage,
    app_id: &str,
    options: GenOptions,
    flush_rows: usize,
) -> anyhow::Result<()> {
    let events = usize::try_from(options.events).unwrap_or(usize::MAX);
    let messages: Vec<Message> = Generator::new(options).take(events).collect();
    let direct = direct_messages(&messages);
    let metrics = IngestMetrics::new(&prometheus::Registry::new())?;
    strata_ingest::ingest_direct(storage, app_id, &direct, flush_rows, &metrics).await?;
    Ok(())
}

/// Stage 1: decode -> Parquet -> Delta commit, no broker.
async fn direct_stage(
    roots: &RunRoots,
    generated: &Generated,
    flush_rows: usize,
) -> anyhow::Result<Stage> {
    let storage = roots.open("direct").await?;
    let direct = direct_messages(&generated.messages);
    let metrics = IngestMetrics::new(&prometheus::Registry::new())?;
    eprintln!("bench: decode -> commit of {} messages", direct.len());
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let report =
        strata_ingest::ingest_direct(&storage, "bench", &direct, flush_rows, &metrics).await?;
    let timed = stage(
        "decode_to_commit",
        direct.len() as u64,
        report.rows_committed,
        t0.elapsed(),
        cpu_seconds() - cpu0,
    );
    anyhow::ensure!(
        report.rows_committed == generated.expected_rows,
        "committed {} rows, expected {}",
        report.rows_committed,
        generated.expected_rows
    );
    Ok(timed)
}

/// The broker of the end-to-end stage, with topics of this run (suffixed by the time) on it.
struct BenchBroker {
    /// The embedded cluster, kept alive for the stage; `None` on external brokers.
    _cluster: Option<MockCluster<'static, DefaultProducerContext>>,
    bootstrap_servers: String,
    suffix: String,
}

impl BenchBroker {
    /// Creates this run's topics on external brokers.
    async fn external(bootstrap_servers: &str) -> anyhow::Result<Self> {
        let broker = Self {
            _cluster: None,
            bootstrap_servers: bootstrap_servers.to_string(),
            suffix: topic_suffix(),
        };
        kafka::create_topics(
            &broker.bootstrap_servers,
            &[
                &broker.topic(EventKind::LinkClick),
                &broker.topic(EventKind::AiUsage),
            ],
            4,
        )
        .await?;
        Ok(broker)
    }

    /// Starts the embedded cluster with this run's topics.
    fn embedded() -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("starting the embedded broker")?;
        let suffix = topic_suffix();
        for k in EventKind::ALL {
            cluster.create_topic(&topic_name(k, &suffix), 4, 1)?;
        }
        Ok(Self {
            bootstrap_servers: cluster.bootstrap_servers(),
            _cluster: Some(cluster),
            suffix,
        })
    }

    fn topic(&self, kind: EventKind) -> String {
        topic_name(kind, &self.suffix)
    }
}

/// Topics and the consumer group of a run are suffixed by the time, so runs on the same
/// brokers do not share them.
fn topic_suffix() -> String {
    Utc::now().format("%H%M%S%f").to_string()
}

fn topic_name(kind: EventKind, suffix: &str) -> String {
    format!("{}-{suffix}", kind.default_topic())
}

/// Produces every message to the topic of its kind, before the stage: the stage times only
/// the consumer.
fn produce(broker: &BenchBroker, messages: &[Message]) -> anyhow::Result<()> {
    let brokers = &broker.bootstrap_servers;
    eprintln!("bench: producing {} messages to {brokers}", messages.len());
    let t0 = Instant::now();
    let (producer, counts) = kafka::producer(brokers)?;
    for m in messages {
        kafka::send(
            &producer,
            &broker.topic(EventKind::from(m.kind)),
            m.key.as_deref(),
            &m.payload,
        )?;
    }
    kafka::finish(&producer, &counts)?;
    drop(producer);
    eprintln!("bench: produced in {:.1}s", t0.elapsed().as_secs_f64());
    Ok(())
}

/// Stage 2: the ingest consumes the produced messages until every expected row is committed.
async fn broker_stage(
    roots: &RunRoots,
    broker: &BenchBroker,
    generated: &Generated,
    flush_rows: usize,
) -> anyhow::Result<Stage> {
    let storage = roots.open("broker").await?;
    let registry = prometheus::Registry::new();
    let metrics = IngestMetrics::new(&registry)?;
    let opts = IngestOptions {
        brokers: broker.bootstrap_servers.clone(),
        group: format!("bench-{}", broker.suffix),
        topics: EventKind::ALL
            .into_iter()
            .map(|kind| TopicBinding {
                topic: broker.topic(kind),
                kind,
            })
            .collect(),
        flush_rows,
        flush_age: Duration::from_secs(2),
        ..IngestOptions::default()
    };
    let watch = metrics.clone();
    let expected = generated.expected_rows;
    let done = async move {
        loop {
            let rows: u64 = EventKind::ALL
                .iter()
                .map(|k| watch.flushed_rows.with_label_values(&[k.table()]).get())
                .sum();
            if rows >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    eprintln!("bench: end-to-end ingest from the broker");
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let report = strata_ingest::run(opts, storage, metrics, done).await?;
    Ok(stage(
        "broker_to_commit",
        report.consumed,
        report.rows_committed,
        t0.elapsed(),
        cpu_seconds() - cpu0,
    ))
}

fn stage(name: &'static str, messages: u64, rows: u64, wall: Duration, cpu: f64) -> Stage {
    let s = wall.as_secs_f64();
    Stage {
        name,
        messages,
        rows_committed: rows,
        seconds: s,
        events_per_sec: messages as f64 / s,
        cpu_seconds: cpu,
        events_per_cpu_sec: if cpu > 0.0 {
            messages as f64 / cpu
        } else {
            0.0
        },
    }
}
