use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand};
use rdkafka::mocking::MockCluster;
use serde::Serialize;
use strata_engine::{Storage, StorageOptions};
use strata_fixtures::{GenOptions, Generator, Message};
use strata_ingest::{IngestMetrics, IngestOptions, TopicBinding};
use strata_schemas::EventKind;

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Ingest throughput: decode -> Parquet -> Delta commit, and end to end from a broker.
    Ingest(BenchIngestArgs),
    /// Panel latency (cold and cached) and rollup throughput on generated events.
    Query(crate::cmd::bench_query::BenchQueryArgs),
    /// Time to purge one median subject, and the files and bytes rewritten.
    Purge(crate::cmd::bench_purge::BenchPurgeArgs),
}

#[derive(Args, Debug)]
pub struct BenchIngestArgs {
    /// Distinct events to generate.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Messages per flush (one commit per table per flush).
    #[arg(long, default_value_t = 200_000)]
    pub flush_rows: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Storage root for the runs (default: a fresh temporary directory, removed after).
    #[arg(long)]
    pub storage_url: Option<String>,
    /// Brokers for the end-to-end run (tansu or Kafka); topics are created with 4 partitions.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Run the end-to-end stage on librdkafka's in-process mock cluster. Known to stall
    /// above ~100k messages (see docs/benchmarks.md); prefer a real broker.
    #[arg(long)]
    pub embedded_broker: bool,
    /// Skip the end-to-end run.
    #[arg(long)]
    pub skip_broker: bool,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json_out: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct Stage {
    name: &'static str,
    messages: u64,
    rows_committed: u64,
    seconds: f64,
    events_per_sec: f64,
    cpu_seconds: f64,
    events_per_cpu_sec: f64,
}

#[derive(Debug, Serialize)]
struct Results {
    events: u64,
    flush_rows: usize,
    cores: usize,
    stages: Vec<Stage>,
    peak_rss_mib: f64,
    generated_bytes: u64,
}

pub async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Ingest(a) => ingest(a).await,
        BenchCommand::Query(a) => crate::cmd::bench_query::run(a).await,
        BenchCommand::Purge(a) => crate::cmd::bench_purge::run(a).await,
    }
}

async fn ingest(args: BenchIngestArgs) -> anyhow::Result<()> {
    let tmp = tempdir()?;
    let root = |name: &str| match &args.storage_url {
        Some(u) => format!("{}/{name}", u.trim_end_matches('/')),
        None => format!("{}/{name}", tmp.display()),
    };
    eprintln!(
        "bench: generating {} events (seed {})",
        args.events, args.seed
    );
    let mut generator = Generator::new(GenOptions {
        seed: args.seed,
        events: args.events,
        ..GenOptions::default()
    });
    let messages: Vec<Message> = generator.by_ref().collect();
    let summary = generator.summary().clone();
    let generated_bytes: u64 = messages.iter().map(|m| m.payload.len() as u64).sum();
    let expected = summary.link_clicks + summary.ai_usage;
    let mut stages = Vec::new();

    // Stage 1: decode -> Parquet -> Delta commit, no broker.
    let storage = Storage::open(&StorageOptions {
        url: root("direct"),
        ..Default::default()
    })
    .await?;
    let direct: Vec<strata_ingest::DirectMessage<'_>> = messages
        .iter()
        .map(|m| {
            (
                EventKind::from(m.kind),
                m.key.as_deref().map(str::as_bytes),
                m.payload.as_bytes(),
            )
        })
        .collect();
    let metrics = IngestMetrics::new(&prometheus::Registry::new())?;
    eprintln!("bench: decode -> commit of {} messages", direct.len());
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let report =
        strata_ingest::ingest_direct(&storage, "bench", &direct, args.flush_rows, &metrics).await?;
    stages.push(stage(
        "decode_to_commit",
        direct.len() as u64,
        report.rows_committed,
        t0.elapsed(),
        cpu_seconds() - cpu0,
    ));
    anyhow::ensure!(
        report.rows_committed == expected,
        "committed {} rows, expected {expected}",
        report.rows_committed
    );
    drop(direct);

    if !args.skip_broker && args.brokers.is_none() && !args.embedded_broker {
        eprintln!("bench: no --brokers given: skipping the end-to-end stage (pass --brokers, or --embedded-broker)");
    }
    if !args.skip_broker && (args.brokers.is_some() || args.embedded_broker) {
        let cluster = match &args.brokers {
            Some(_) => None,
            None => Some(MockCluster::new(1).context("starting the embedded broker")?),
        };
        let brokers = match (&args.brokers, &cluster) {
            (Some(b), _) => b.clone(),
            (None, Some(c)) => c.bootstrap_servers(),
            (None, None) => unreachable!("a cluster is started when no brokers are given"),
        };
        let suffix = Utc::now().format("%H%M%S%f").to_string();
        let topic = |k: EventKind| format!("{}-{suffix}", k.default_topic());
        match &cluster {
            Some(c) => {
                for k in EventKind::ALL {
                    c.create_topic(&topic(k), 4, 1)?;
                }
            }
            None => {
                crate::kafka::create_topics(
                    &brokers,
                    &[&topic(EventKind::LinkClick), &topic(EventKind::AiUsage)],
                    4,
                )
                .await?
            }
        }
        eprintln!("bench: producing {} messages to {brokers}", messages.len());
        let t0 = Instant::now();
        let (producer, counts) = crate::kafka::producer(&brokers)?;
        for m in &messages {
            crate::kafka::send(
                &producer,
                &topic(EventKind::from(m.kind)),
                m.key.as_deref(),
                &m.payload,
            )?;
        }
        crate::kafka::finish(&producer, &counts)?;
        drop(producer);
        eprintln!("bench: produced in {:.1}s", t0.elapsed().as_secs_f64());

        let storage = Storage::open(&StorageOptions {
            url: root("broker"),
            ..Default::default()
        })
        .await?;
        let registry = prometheus::Registry::new();
        let metrics = IngestMetrics::new(&registry)?;
        let opts = IngestOptions {
            brokers: brokers.clone(),
            group: format!("bench-{suffix}"),
            topics: EventKind::ALL
                .into_iter()
                .map(|kind| TopicBinding {
                    topic: topic(kind),
                    kind,
                })
                .collect(),
            flush_rows: args.flush_rows,
            flush_age: Duration::from_secs(2),
            ..IngestOptions::default()
        };
        let watch = metrics.clone();
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
        stages.push(stage(
            "broker_to_commit",
            report.consumed,
            report.rows_committed,
            t0.elapsed(),
            cpu_seconds() - cpu0,
        ));
    }

    let results = Results {
        events: args.events,
        flush_rows: args.flush_rows,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        stages,
        peak_rss_mib: peak_rss_mib(),
        generated_bytes,
    };
    for s in &results.stages {
        println!(
            "{:<18} {:>10} msgs {:>8.2}s {:>10.0} events/s {:>10.0} events/cpu-s",
            s.name, s.messages, s.seconds, s.events_per_sec, s.events_per_cpu_sec
        );
    }
    println!(
        "peak RSS {:.0} MiB (includes the {} MiB of generated messages held in memory)",
        results.peak_rss_mib,
        generated_bytes / (1 << 20)
    );
    let json = serde_json::to_string_pretty(&results)?;
    if let Some(p) = &args.json_out {
        std::fs::write(p, &json)?;
    }
    if args.storage_url.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    Ok(())
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

fn tempdir() -> anyhow::Result<std::path::PathBuf> {
    let p = std::env::temp_dir().join(format!("strata-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&p)?;
    Ok(p)
}

/// User + system CPU time of this process, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}
