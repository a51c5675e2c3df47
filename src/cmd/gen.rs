use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use chrono::NaiveDate;
use clap::Args;
use strata_fixtures::{GenOptions, Generator};
use strata_schemas::EventKind;

use crate::config::KafkaConfig;

#[derive(Args, Debug)]
pub struct GenArgs {
    /// Seed: the same seed and end date give the same messages.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Distinct events to generate (malformed messages and retries come on top).
    #[arg(long, default_value_t = 10_000)]
    pub events: u64,
    /// Days of traffic ending at --end-date.
    #[arg(long, default_value_t = 30)]
    pub days: u32,
    /// Last day (exclusive), YYYY-MM-DD; default today (UTC).
    #[arg(long)]
    pub end_date: Option<NaiveDate>,
    /// Share of extra messages that are malformed.
    #[arg(long, default_value_t = 0.005)]
    pub malformed_rate: f64,
    /// Share of events sent twice (producer retry).
    #[arg(long, default_value_t = 0.003)]
    pub duplicate_rate: f64,
    /// Write JSON lines {"kind","key","payload",...} to this file.
    #[arg(long, conflicts_with = "kafka")]
    pub out: Option<PathBuf>,
    /// Produce to Kafka at these brokers instead (topic per event type).
    #[arg(long, conflicts_with = "storage_url")]
    pub kafka: Option<String>,
    /// Or write straight into the tables of this storage root, through the ingest's
    /// decode -> Parquet -> Delta commit path without a broker (benchmarks, test data).
    #[arg(long, conflicts_with = "out")]
    pub storage_url: Option<String>,
    /// Create the topics first (with --partitions partitions).
    #[arg(long)]
    pub create_topics: bool,
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
    #[command(flatten)]
    pub topics: TopicArgs,
}

#[derive(Args, Debug)]
pub struct TopicArgs {
    #[arg(long, env = "STRATA_CLICK_TOPIC", default_value = "clicks")]
    pub click_topic: String,
    #[arg(long, env = "STRATA_AI_USAGE_TOPIC", default_value = "ai_usage")]
    pub ai_usage_topic: String,
}

impl GenArgs {
    /// `strata gen --events N --storage-url URL` with every other flag at its default.
    pub fn for_storage(url: &str, events: u64) -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            gen: GenArgs,
        }
        let events = events.to_string();
        Wrap::parse_from(["gen", "--events", &events, "--storage-url", url]).gen
    }

    pub fn options(&self) -> GenOptions {
        let mut o = GenOptions {
            seed: self.seed,
            events: self.events,
            days: self.days,
            malformed_rate: self.malformed_rate,
            duplicate_rate: self.duplicate_rate,
            ..GenOptions::default()
        };
        if let Some(d) = self.end_date {
            o.end_date = d;
        }
        o
    }
}

pub async fn run(args: GenArgs) -> anyhow::Result<()> {
    let mut generator = Generator::new(args.options());
    let mut progress = crate::progress::Progress::new("gen", args.events);
    if let Some(url) = &args.storage_url {
        let storage = strata_engine::Storage::open(&strata_engine::StorageOptions {
            url: url.clone(),
            ..Default::default()
        })
        .await?;
        let registry = prometheus::Registry::new();
        let metrics = strata_ingest::IngestMetrics::new(&registry)?;
        const CHUNK: usize = 500_000;
        loop {
            let chunk: Vec<_> = generator.by_ref().take(CHUNK).collect();
            if chunk.is_empty() {
                break;
            }
            let direct: Vec<strata_ingest::DirectMessage> = chunk
                .iter()
                .map(|m| {
                    (
                        EventKind::from(m.kind),
                        m.key.as_deref().map(str::as_bytes),
                        m.payload.as_bytes(),
                    )
                })
                .collect();
            strata_ingest::ingest_direct(&storage, "gen", &direct, CHUNK, &metrics).await?;
            progress.inc(chunk.iter().filter(|m| !m.malformed && !m.retry).count() as u64);
        }
        progress.done(&format!("written to {}", storage.root()));
    } else if let Some(brokers) = &args.kafka {
        let kafka = KafkaConfig {
            brokers: brokers.clone(),
            click_topic: args.topics.click_topic.clone(),
            ai_usage_topic: args.topics.ai_usage_topic.clone(),
            kafka_options: vec![],
        };
        if args.create_topics {
            crate::kafka::create_topics(
                brokers,
                &[&kafka.click_topic, &kafka.ai_usage_topic],
                args.partitions,
            )
            .await?;
        }
        let (producer, counts) = crate::kafka::producer(brokers)?;
        for m in generator.by_ref() {
            crate::kafka::send(
                &producer,
                kafka.topic_of(EventKind::from(m.kind)),
                m.key.as_deref(),
                &m.payload,
            )?;
            if !m.malformed && !m.retry {
                progress.inc(1);
            }
        }
        let delivered = crate::kafka::finish(&producer, &counts)?;
        eprintln!("gen: {delivered} messages delivered to {brokers}");
    } else {
        let path = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("events.jsonl"));
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = BufWriter::new(file);
        for m in generator.by_ref() {
            serde_json::to_writer(&mut w, &m)?;
            w.write_all(b"\n")?;
            if !m.malformed && !m.retry {
                progress.inc(1);
            }
        }
        w.flush()?;
        eprintln!("gen: wrote {}", path.display());
    }
    println!("{}", serde_json::to_string(generator.summary())?);
    Ok(())
}
