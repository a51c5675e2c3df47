//! `strata gen`: generated messages (or the messages of a file, replayed) to a JSON-lines
//! file, to Kafka, or straight into the tables of a storage root.
//!
//! ```text
//! Generator(seed)  --+                 +--> --out FILE (JSON lines)
//!                    +--> messages --> +--> --kafka BROKERS (topic per kind)
//! --from FILE -------+                 +--> --storage-url URL (decode -> Parquet -> Delta)
//! ```

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::NaiveDate;
use clap::Args;
use strata_benches::kafka;
use strata_fixtures::{GenOptions, GenSummary, Generator, Message};
use strata_schemas::EventKind;

use crate::config::TopicConfig;
use crate::progress::Progress;

#[derive(Args, Debug)]
pub struct GenArgs {
    /// Seed: the same seed and end date give the same messages.
    #[arg(long, default_value_t = GenOptions::default().seed)]
    pub seed: u64,
    /// Distinct events to generate (malformed messages and retries come on top).
    #[arg(long, default_value_t = GenOptions::default().events)]
    pub events: u64,
    /// Days of traffic ending at --end-date.
    #[arg(long, default_value_t = GenOptions::default().days)]
    pub days: u32,
    /// Last day (exclusive), YYYY-MM-DD; default today (UTC).
    #[arg(long)]
    pub end_date: Option<NaiveDate>,
    /// Share of extra messages that are malformed.
    #[arg(long, default_value_t = GenOptions::default().malformed_rate)]
    pub malformed_rate: f64,
    /// Share of events sent twice (producer retry).
    #[arg(long, default_value_t = GenOptions::default().duplicate_rate)]
    pub duplicate_rate: f64,
    /// Replay the messages of this JSON-lines file (as --out writes them: one
    /// {"kind":"ai_usage"|"link_click","key":..,"payload":"<event JSON>"} a line) instead of
    /// generating; needs --storage-url, --kafka or --out.
    #[arg(
        long,
        value_name = "PATH",
        conflicts_with_all = ["seed", "events", "days", "end_date", "malformed_rate", "duplicate_rate"]
    )]
    pub from: Option<PathBuf>,
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
    pub topics: TopicConfig,
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

/// Messages on their way to a sink; a replayed file's line that is no message is an error.
type Source = Box<dyn Iterator<Item = anyhow::Result<Message>> + Send>;

pub async fn run(args: GenArgs) -> anyhow::Result<()> {
    let (source, total): (Source, u64) = match &args.from {
        Some(path) => {
            anyhow::ensure!(
                args.storage_url.is_some() || args.kafka.is_some() || args.out.is_some(),
                "--from replays messages into --storage-url, --kafka or --out; name one of them"
            );
            // The number of messages is not known before the file is read.
            (Box::new(read_jsonl(path)?) as Source, 0)
        }
        None => {
            let generated = Generator::new(args.options()).map(Ok::<Message, anyhow::Error>);
            (Box::new(generated) as Source, args.events)
        }
    };
    let mut summary = GenSummary::default();
    let mut messages = source.inspect(|m| {
        if let Ok(m) = m {
            summary.count(m);
        }
    });
    let mut progress = Progress::new("gen", total);
    if let Some(url) = &args.storage_url {
        write_to_storage(url, &mut messages, &mut progress).await?;
    } else if let Some(brokers) = &args.kafka {
        produce_to_kafka(brokers, &args, &mut messages, &mut progress).await?;
    } else {
        let path = args
            .out
            .clone()
            .unwrap_or_else(|| PathBuf::from("events.jsonl"));
        write_jsonl(&path, &mut messages, &mut progress)?;
    }
    drop(messages);
    println!("{}", serde_json::to_string(&summary)?);
    Ok(())
}

/// The messages of a JSON-lines file, one a line (blank lines skipped), read as they are sent.
fn read_jsonl(path: &Path) -> anyhow::Result<impl Iterator<Item = anyhow::Result<Message>> + Send> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let shown = path.display().to_string();
    let lines = BufReader::new(file).lines().enumerate();
    Ok(lines.filter_map(move |(i, line)| {
        let line = match line.with_context(|| format!("reading {shown}")) {
            Ok(line) => line,
            Err(e) => return Some(Err(e)),
        };
        if line.trim().is_empty() {
            return None;
        }
        // The error says where and what is wrong, never the line itself (it holds an event).
        Some(serde_json::from_str::<Message>(&line).with_context(|| {
            format!(
                "{shown} line {}: not a message {{\"kind\":\"ai_usage\"|\"link_click\",\"key\":..,\"payload\":\"..\"}}",
                i + 1
            )
        }))
    }))
}

/// Through the ingest's decode -> Parquet -> Delta commit path, in chunks, without a broker.
async fn write_to_storage(
    url: &str,
    messages: &mut impl Iterator<Item = anyhow::Result<Message>>,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let storage = strata_engine::Storage::open_url(url).await?;
    let registry = prometheus::Registry::new();
    let metrics = strata_ingest::IngestMetrics::new(&registry)?;
    const CHUNK: usize = 500_000;
    loop {
        let chunk = messages
            .by_ref()
            .take(CHUNK)
            .collect::<anyhow::Result<Vec<Message>>>()?;
        if chunk.is_empty() {
            break;
        }
        let direct = strata_benches::ingest::direct_messages(&chunk);
        strata_ingest::ingest_direct(&storage, "gen", &direct, CHUNK, &metrics).await?;
        progress.inc(chunk.iter().filter(|m| !m.malformed && !m.retry).count() as u64);
    }
    progress.done(&format!("written to {}", storage.root()));
    Ok(())
}

/// To the topic of each message's kind, creating the topics first when asked.
async fn produce_to_kafka(
    brokers: &str,
    args: &GenArgs,
    messages: &mut impl Iterator<Item = anyhow::Result<Message>>,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let topics = &args.topics;
    if args.create_topics {
        kafka::create_topics(
            brokers,
            &[&topics.click_topic, &topics.ai_usage_topic],
            args.partitions,
        )
        .await?;
    }
    let (producer, counts) = kafka::producer(brokers)?;
    for m in messages {
        let m = m?;
        kafka::send(
            &producer,
            topics.topic_of(EventKind::from(m.kind)),
            m.key.as_deref(),
            &m.payload,
        )?;
        if !m.malformed && !m.retry {
            progress.inc(1);
        }
    }
    let delivered = kafka::finish(&producer, &counts)?;
    eprintln!("gen: {delivered} messages delivered to {brokers}");
    Ok(())
}

/// One JSON object per line: {"kind","key","payload",...}.
fn write_jsonl(
    path: &Path,
    messages: &mut impl Iterator<Item = anyhow::Result<Message>>,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = BufWriter::new(file);
    for m in messages {
        let m = m?;
        serde_json::to_writer(&mut w, &m)?;
        w.write_all(b"\n")?;
        if !m.malformed && !m.retry {
            progress.inc(1);
        }
    }
    w.flush()?;
    eprintln!("gen: wrote {}", path.display());
    Ok(())
}
