//! `strata demo`: an embedded broker, a live producer, the ingest and the server in one
//! process, stopped together by Ctrl-C or `--duration-secs`.
//!
//! ```text
//! producer thread (Generator, live) --> embedded broker --> ingest --> root <-- server (API, dashboard)
//!   + `demo_assistant` calls at --ai-spend-per-min       budget `demo-assistant` (4 minutes of it)
//! ```
//!
//! The demo's AI spend is steady, so its budget crosses 75% after 3 minutes, 90% after 3.6
//! and stops at 4: a newcomer sees the states and the decision change.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;
use strata_benches::kafka;
use strata_engine::budget::{self, Budget, Money, Period, PeriodKind, Tz};
use strata_engine::{RollupBuilder, SqlSession, Storage};
use strata_fixtures::{GenOptions, Generator, DEMO_FEATURE};
use strata_ingest::{IngestMetrics, IngestOptions, IngestReport};
use strata_query_api::{new_token, ApiLimits, Scope, Server, ServerConfig};
use strata_schemas::EventKind;
use tokio::sync::watch;

use crate::config::{shutdown_signal, token_auth, BudgetsConfig, StorageConfig};

/// Memory for the demo server's cached results, in MiB.
const DEMO_CACHE_MB: usize = 128;
/// The name of the demo's budget.
pub const DEMO_BUDGET: &str = "demo-assistant";
/// The demo budget's amount, in minutes of the demo's AI spend.
const DEMO_BUDGET_MINUTES: i128 = 4;

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    pub storage: StorageConfig,
    /// Events per second produced to the embedded broker (bursts go 3x above it).
    #[arg(long, env = "STRATA_DEMO_RATE", default_value_t = 300)]
    pub rate: u64,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Address of the API and dashboard (port 0 picks a free one).
    #[arg(long, env = "STRATA_LISTEN", default_value = ServerConfig::DEFAULT_LISTEN)]
    pub listen: String,
    /// Seconds between rollup runs.
    #[arg(long, default_value_t = 5)]
    pub rollup_interval_secs: u64,
    /// USD a minute (an exact decimal such as 2.50) that the producer's `demo_assistant` calls
    /// spend; the demo budget `demo-assistant` holds four minutes of it. 0: neither.
    #[arg(
        long,
        env = "STRATA_DEMO_AI_SPEND_PER_MIN",
        default_value = "2.50",
        value_parser = Money::parse
    )]
    pub ai_spend_per_min: Money,
    // Budgets served next to the demo's own (--budgets, STRATA_BUDGETS).
    #[command(flatten)]
    pub budgets: BudgetsConfig,
}

/// The demo's budget over the `demo_assistant` calls its producer makes at `per_min` USD a
/// minute: `demo-assistant`, a hard day of UTC with the default thresholds, of four minutes of
/// that spend (75% after 3 minutes, 90% after 3.6, stop at 4).
pub fn demo_budget(per_min: Money) -> Budget {
    let mut b = Budget::new(
        DEMO_BUDGET,
        per_min.saturating_mul_div(DEMO_BUDGET_MINUTES, 1),
    );
    b.scope = budget::Scope {
        feature: Some(DEMO_FEATURE.to_string()),
        ..budget::Scope::default()
    };
    b.period = Period::new(PeriodKind::Day, Tz::UTC);
    b
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let storage = Storage::open(&args.storage.options()?).await?;
    let spend_per_min =
        u64::try_from(args.ai_spend_per_min.nanos()).context("--ai-spend-per-min is too large")?;
    let demo = args
        .ai_spend_per_min
        .is_positive()
        .then(|| demo_budget(args.ai_spend_per_min));
    let broker = EmbeddedBroker::start()?;
    let brokers = broker.bootstrap_servers.clone();
    let (server, token) = start_server(&storage, &args, demo.as_ref()).await?;
    announce(
        &brokers,
        &storage,
        args.rate,
        server.addr,
        &token,
        demo.as_ref(),
    );

    // One stop signal for the producer, the ingest and the server.
    let stop_rx = stop_signal(args.duration_secs.map(Duration::from_secs));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (stop, brokers, rate, seed) =
            (stop.clone(), brokers.clone(), args.rate.max(1), args.seed);
        std::thread::spawn(move || produce_live(&brokers, rate, seed, spend_per_min, &stop))
    };
    let catalog = server.catalog.clone();
    let serving = tokio::spawn(server.run(stopped(stop_rx.clone())));

    let report = ingest(&storage, &brokers, stopped(stop_rx)).await;
    stop.store(true, Ordering::Relaxed);
    let produced = producer
        .join()
        .map_err(|_| anyhow::anyhow!("producer thread panicked"))??;
    let report = report?;
    // The last commits into the rollups too, so a second run starts from current panels.
    RollupBuilder::new(catalog).run().await?;
    serving.await??;
    eprintln!(
        "strata demo: produced {produced}, ingest {}",
        serde_json::to_string(&report)?
    );
    eprintln!("strata demo: {}", counts(&storage).await?);
    eprintln!(
        "strata demo: query it with: strata sql --storage-url {} \"SELECT source, count(*) FROM link_clicks GROUP BY source\"",
        args.storage.storage_url
    );
    drop(broker);
    Ok(())
}

/// librdkafka's own mock cluster (the same client code path as a real broker), with the
/// default topics; it stops when dropped.
struct EmbeddedBroker {
    _cluster: MockCluster<'static, DefaultProducerContext>,
    bootstrap_servers: String,
}

impl EmbeddedBroker {
    fn start() -> anyhow::Result<Self> {
        let cluster = MockCluster::new(1).context("starting the embedded Kafka broker")?;
        for kind in EventKind::ALL {
            cluster.create_topic(kind.default_topic(), 4, 1)?;
        }
        Ok(Self {
            bootstrap_servers: cluster.bootstrap_servers(),
            _cluster: cluster,
        })
    }
}

/// The API and dashboard with the demo budget (and any configured ones), and a fresh token for
/// this run; returns the server and the token.
async fn start_server(
    storage: &Storage,
    args: &DemoArgs,
    demo: Option<&Budget>,
) -> anyhow::Result<(Server, String)> {
    let (token, line) = new_token("demo", &[Scope::Panels, Scope::Sql, Scope::Ai]);
    let mut config = ServerConfig {
        listen: args.listen.clone(),
        cache_bytes: DEMO_CACHE_MB << 20,
        rollup_every: (args.rollup_interval_secs > 0)
            .then(|| Duration::from_secs(args.rollup_interval_secs)),
        limits: ApiLimits::default(),
        ..ServerConfig::default()
    };
    // A configured budget named like the demo's is refused as declared twice.
    config.budgets = demo.into_iter().cloned().collect();
    config.budgets.extend(args.budgets.budgets()?);
    budget::validate_budgets(&config.budgets)?;
    let auth = token_auth(&[line], ServerConfig::DEFAULT_TOKEN_RATE_PER_SEC)?;
    let server = Server::start(storage, &config, auth).await?;
    Ok((server, token))
}

fn announce(
    brokers: &str,
    storage: &Storage,
    rate: u64,
    addr: SocketAddr,
    token: &str,
    demo: Option<&Budget>,
) {
    eprintln!(
        "strata demo: embedded Kafka at {brokers}, storage root {}",
        storage.root()
    );
    eprintln!("strata demo: producing ~{rate} events/s; Ctrl-C stops and commits what is buffered");
    eprintln!("strata demo: dashboard at http://{addr}/#token={token}");
    eprintln!("strata demo: API token (scopes panels, sql, ai): {token}");
    eprintln!("strata demo: try  curl -H 'Authorization: Bearer {token}' 'http://{addr}/v1/panels/overview'");
    if let Some(b) = demo {
        announce_budget(b, addr, token);
    }
}

/// What the demo budget will do and when, and where to watch it.
fn announce_budget(b: &Budget, addr: SocketAddr, token: &str) {
    let per_min = b.amount.saturating_mul_div(1, DEMO_BUDGET_MINUTES);
    let steps: Vec<String> = b
        .thresholds
        .iter()
        .map(|t| {
            let minutes = DEMO_BUDGET_MINUTES as f64 * f64::from(t.percent) / 100.0;
            format!("{}% {} after {minutes:.1} min", t.percent, t.action)
        })
        .collect();
    eprintln!(
        "strata demo: AI budget `{}`: feature {DEMO_FEATURE} spends ${per_min}/min against ${} a day (UTC, hard): {}; spend of earlier runs today counts too",
        b.name,
        b.amount,
        steps.join(", ")
    );
    eprintln!(
        "strata demo: watch it in the dashboard's budget panel, at http://{addr}/v1/ai/budgets, and in the decision the AI job runner gets:"
    );
    eprintln!(
        "strata demo:   curl -H 'Authorization: Bearer {token}' 'http://{addr}/v1/ai/budgets/decision?feature={DEMO_FEATURE}'"
    );
}

/// Turns true on SIGINT, SIGTERM or after `deadline`.
fn stop_signal(deadline: Option<Duration>) -> watch::Receiver<bool> {
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        match deadline {
            Some(d) => {
                tokio::select! { _ = shutdown_signal() => {}, _ = tokio::time::sleep(d) => {} }
            }
            None => shutdown_signal().await,
        }
        let _ = stop_tx.send(true);
    });
    stop_rx
}

/// Resolves once `rx` turns true.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Consumes the embedded broker until `shutdown`, printing the table counts every 10 s.
async fn ingest(
    storage: &Storage,
    brokers: &str,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<IngestReport> {
    // A fresh group per run: the embedded broker starts empty each time, while the tables
    // (and their stored offsets) persist, so offsets of an old run must not apply.
    let group = format!("demo-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S"));
    let opts = IngestOptions {
        brokers: brokers.to_string(),
        group,
        flush_rows: 50_000,
        flush_age: Duration::from_secs(2),
        ..IngestOptions::default()
    };
    let registry = prometheus::Registry::new();
    let metrics = IngestMetrics::new(&registry)?;
    let reporter = {
        let storage = storage.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if let Ok(line) = counts(&storage).await {
                    eprintln!("strata demo [{:>4}s]: {line}", started.elapsed().as_secs());
                }
            }
        })
    };
    let report = strata_ingest::run(opts, storage.clone(), metrics, shutdown).await;
    reporter.abort();
    Ok(report?)
}

async fn counts(storage: &Storage) -> anyhow::Result<String> {
    let session = SqlSession::open(storage).await?;
    let mut parts = Vec::new();
    for t in session.tables() {
        let n = session
            .query_i64(&format!("SELECT count(*) FROM {t}"))
            .await?
            .unwrap_or(0);
        parts.push(format!("{t}={n}"));
    }
    Ok(parts.join(" "))
}

/// Produces live events at `rate` per second, with a 3x burst for 2 s every 15 s, and the
/// demo's `demo_assistant` calls at `demo_spend_per_min` nano-dollars a minute.
fn produce_live(
    brokers: &str,
    rate: u64,
    seed: u64,
    demo_spend_per_min: u64,
    stop: &AtomicBool,
) -> anyhow::Result<u64> {
    let (producer, counts) = kafka::producer(brokers)?;
    let mut generator = Generator::new(GenOptions {
        seed,
        live: true,
        events: u64::MAX,
        demo_spend_per_min,
        ..GenOptions::default()
    });
    let started = Instant::now();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let t = started.elapsed().as_secs();
        let per_tick = if t % 15 < 2 { rate * 3 / 10 } else { rate / 10 }.max(1);
        for _ in 0..per_tick {
            let Some(m) = generator.next() else { break };
            kafka::send(
                &producer,
                EventKind::from(m.kind).default_topic(),
                m.key.as_deref(),
                &m.payload,
            )?;
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    kafka::finish(&producer, &counts)?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_budget_holds_four_minutes_of_spend_on_its_feature() {
        let b = demo_budget(Money::parse("2.50").unwrap());
        b.validate().unwrap();
        assert_eq!(b.name, "demo-assistant");
        assert_eq!(b.amount, Money::from_dollars(10));
        assert_eq!(b.scope.feature.as_deref(), Some("demo_assistant"));
        assert!(b.scope.provider.is_none() && b.scope.model.is_none() && !b.scope.per_user);
        assert_eq!(b.period.kind, PeriodKind::Day);
        assert_eq!(b.period.tz, Tz::UTC);
        assert!(b.hard);
        let percents: Vec<u32> = b.thresholds.iter().map(|t| t.percent).collect();
        assert_eq!(percents, [75, 90, 100]);
        // An odd rate stays exact: 4 x 1.000000001 = 4.000000004.
        let odd = demo_budget(Money::parse("1.000000001").unwrap());
        assert_eq!(odd.amount, Money::parse("4.000000004").unwrap());
    }
}
