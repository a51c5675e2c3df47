//! `strata bench budgets`: how fast a server answers budget decisions
//! (`GET /v1/ai/budgets/decision`) to many concurrent callers, from the states it keeps in
//! memory.
//!
//! ```text
//! generated AI calls occurring now --ingest_direct--> root
//! root --> in-process Server with 20 budgets (all usage, feature, provider, model, per user, soft)
//! N callers, one keep-alive HTTP/1.1 connection each: GET decision?feature=..&user_id=.. in a loop
//!   warm-up (not recorded), then the recorded run --> requests/s, p50 p90 p99 p99.9 max, errors
//! ```
//!
//! The callers and the server share this process and its cores, so the latencies include the
//! client's side: an upper bound of what the server takes. Every answer is checked (status 200
//! and a decision in the body); a run with errors says so and fails, since it timed errors.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use strata_engine::budget::{Action, Budget, Money, Period, PeriodKind, Scope, Threshold, Tz};
use strata_engine::Storage;
use strata_fixtures::GenOptions;
use strata_query_api::routes::AI_DECISION;
use strata_query_api::Server;
use tokio::sync::watch;

use crate::measure::percentile;

/// The generator's features, and its providers with their models (fixtures/src/generator.rs).
const FEATURES: &[&str] = &[
    "search_answer",
    "listing_writer",
    "site_summary",
    "profile_bio",
    "moderation",
];
const PROVIDERS: &[&str] = &["openai", "anthropic", "mistral"];
const MODELS: &[(&str, &str)] = &[
    ("openai", "gpt-4.1-mini"),
    ("openai", "gpt-4.1"),
    ("anthropic", "claude-haiku"),
    ("mistral", "mistral-small"),
];
/// Users the callers ask about (`u-0` ...), about as many as the generated calls have.
const USERS: usize = 1_000;
/// Distinct calls each caller cycles through.
const CALLS_PER_CALLER: usize = 64;
/// Messages per commit when writing the AI calls.
const FLUSH_ROWS: usize = 100_000;
/// How long the server may take to read the budgets for the first time.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// A request not answered within this counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one `strata bench budgets` run does.
#[derive(Debug, Clone)]
pub struct BudgetsBench {
    /// Concurrent callers, each with its own keep-alive connection.
    pub callers: usize,
    /// The recorded part of the run.
    pub duration: Duration,
    /// Requests before the recorded part (connections opened, caches warm); not recorded.
    pub warmup: Duration,
    /// AI calls written before the run: the spend the budgets' states are computed from.
    pub events: u64,
    /// Storage root for the run (default: a fresh temporary directory, removed after).
    pub storage_url: Option<String>,
    /// Decisions each caller asks for per second, on a fixed schedule (an open loop: the
    /// latency counts from when a request was due, so a slow answer delays no measurement);
    /// None: each caller asks again as soon as it has its answer (a closed loop that
    /// saturates the server: its latency is mostly queueing, callers / throughput).
    pub rate_per_caller: Option<f64>,
}

impl BudgetsBench {
    pub const DEFAULT_CALLERS: usize = 200;
    pub const DEFAULT_DURATION_SECS: u64 = 10;
    pub const DEFAULT_WARMUP: Duration = Duration::from_secs(1);
    pub const DEFAULT_EVENTS: u64 = 50_000;
    /// 200 callers at 10 decisions/s each: 2,000 decisions/s, a fleet of AI job runners
    /// asking before every batch.
    pub const DEFAULT_RATE_PER_CALLER: f64 = 10.0;
}

impl Default for BudgetsBench {
    fn default() -> Self {
        Self {
            callers: Self::DEFAULT_CALLERS,
            duration: Duration::from_secs(Self::DEFAULT_DURATION_SECS),
            warmup: Self::DEFAULT_WARMUP,
            events: Self::DEFAULT_EVENTS,
            storage_url: None,
            rate_per_caller: Some(Self::DEFAULT_RATE_PER_CALLER),
        }
    }
}

/// What a run measured; `Display` is the text report, `Serialize` the JSON one.
#[derive(Debug, Serialize)]
pub struct BudgetsResults {
    pub budgets: usize,
    pub callers: usize,
    /// Decisions each caller asked for per second (None: as fast as answered).
    pub rate_per_caller: Option<f64>,
    pub events: u64,
    pub cores: usize,
    /// The recorded part of the run.
    pub seconds: f64,
    /// Requests sent in the recorded part and answered.
    pub requests: u64,
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    /// Answers other than 200, by status.
    pub non_200: BTreeMap<u16, u64>,
    /// Requests without an answer (connection refused or reset, timeout).
    pub no_answer: u64,
    /// 200 answers without a decision in their body.
    pub bad_bodies: u64,
}

impl BudgetsResults {
    /// Requests that did not get a decision.
    pub fn errors(&self) -> u64 {
        self.non_200.values().sum::<u64>() + self.no_answer + self.bad_bodies
    }
}

/// Writes the AI calls, starts the server, runs the callers; progress on stderr.
pub async fn run(bench: &BudgetsBench) -> anyhow::Result<BudgetsResults> {
    let root = crate::BenchRoot::open(bench.storage_url.as_deref(), "budgets").await?;
    run_in(&root.storage, bench).await
}

async fn run_in(storage: &Storage, bench: &BudgetsBench) -> anyhow::Result<BudgetsResults> {
    write_calls(storage, bench.events).await?;
    let budgets = bench_budgets();
    let (token, auth, mut config) = crate::bench_server(&[strata_query_api::Scope::Ai])?;
    config.budgets = budgets.clone();
    let connections = config.limits.http.max_connections.max(bench.callers + 16);
    config.limits.http.max_connections = connections;
    let server = Server::start(storage, &config, auth).await?;
    let url = format!("http://{}{AI_DECISION}", server.addr);
    let (stop, mut stopped) = watch::channel(false);
    let serving = tokio::spawn(server.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let tally = call(&url, &token, bench).await;
    let _ = stop.send(true);
    serving.await??;
    let mut tally = tally?;
    anyhow::ensure!(
        !tally.latencies_ms.is_empty(),
        "no request was answered in the recorded part of the run"
    );
    let seconds = bench.duration.as_secs_f64();
    let requests = tally.latencies_ms.len() as u64;
    let samples = &mut tally.latencies_ms;
    Ok(BudgetsResults {
        budgets: budgets.len(),
        callers: bench.callers,
        rate_per_caller: bench.rate_per_caller,
        events: bench.events,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seconds,
        requests,
        requests_per_sec: requests as f64 / seconds,
        p50_ms: percentile(samples, 0.5),
        p90_ms: percentile(samples, 0.9),
        p99_ms: percentile(samples, 0.99),
        p999_ms: percentile(samples, 0.999),
        max_ms: percentile(samples, 1.0),
        non_200: tally.non_200,
        no_answer: tally.no_answer,
        bad_bodies: tally.bad_bodies,
    })
}

/// `events` AI calls of the generator's features, models and users, all occurring now (so in
/// the current period of every budget), through the ingest's broker-free path.
async fn write_calls(storage: &Storage, events: u64) -> anyhow::Result<()> {
    eprintln!("bench budgets: writing {events} AI calls");
    let options = GenOptions {
        seed: 5,
        events,
        live: true,
        ai_share: 1.0,
        malformed_rate: 0.0,
        duplicate_rate: 0.0,
        late_rate: 0.0,
        ..GenOptions::default()
    };
    crate::ingest::write_generated(storage, "bench-budgets", options, FLUSH_ROWS).await
}

/// Twenty budgets over the generated calls, with every kind of scope and period: all usage (a
/// month, and a soft day), each feature (a day), each provider (an ISO week), each model (a
/// month of Berlin), each feature per user (a day), and one feature on one provider that
/// pauses the queue.
pub fn bench_budgets() -> Vec<Budget> {
    let day = Period::new(PeriodKind::Day, Tz::UTC);
    let mut all_daily = Budget::new("all-daily-soft", Money::from_dollars(100));
    all_daily.hard = false;
    all_daily.period = day;
    let mut budgets = vec![
        Budget::new("all-monthly", Money::from_dollars(5_000)),
        all_daily,
    ];
    let scoped = |name: String, dollars: i64, scope: Scope, period: Period| {
        let mut b = Budget::new(name, Money::from_dollars(dollars));
        b.scope = scope;
        b.period = period;
        b
    };
    let feature = |f: &str| Scope {
        feature: Some(f.to_string()),
        ..Scope::default()
    };
    for &f in FEATURES {
        budgets.push(scoped(format!("{f}-daily"), 40, feature(f), day));
    }
    for &p in PROVIDERS {
        let scope = Scope {
            provider: Some(p.to_string()),
            ..Scope::default()
        };
        let week = Period::new(PeriodKind::Week, Tz::UTC);
        budgets.push(scoped(format!("{p}-weekly"), 60, scope, week));
    }
    for &(_, m) in MODELS {
        let scope = Scope {
            model: Some(m.to_string()),
            ..Scope::default()
        };
        let month = Period::new(PeriodKind::Month, Tz::Europe__Berlin);
        let name = format!("model-{}", m.replace('.', "-"));
        budgets.push(scoped(name, 200, scope, month));
    }
    for &f in FEATURES {
        let mut b = scoped(format!("{f}-per-user"), 1, feature(f), day);
        b.scope.per_user = true;
        budgets.push(b);
    }
    let mut paused = scoped(
        "search-openai".into(),
        30,
        Scope {
            provider: Some("openai".into()),
            ..feature("search_answer")
        },
        day,
    );
    paused.thresholds = vec![
        Threshold {
            percent: 50,
            action: Action::Alert,
        },
        Threshold {
            percent: 80,
            action: Action::PauseQueue,
        },
    ];
    budgets.push(paused);
    budgets
}

/// The calls caller `i` asks about, in turn: every feature, users spread over [`USERS`], and
/// every third call with a provider and model too.
fn caller_urls(url: &str, i: usize) -> Vec<String> {
    (0..CALLS_PER_CALLER)
        .map(|k| {
            let n = i * CALLS_PER_CALLER + k;
            let feature = FEATURES[n % FEATURES.len()];
            let user = n.wrapping_mul(7_919) % USERS;
            let base = format!("{url}?feature={feature}&user_id=u-{user}");
            if n.is_multiple_of(3) {
                let (provider, model) = MODELS[n % MODELS.len()];
                format!("{base}&provider={provider}&model={model}")
            } else {
                base
            }
        })
        .collect()
}

/// What callers saw in the recorded part of the run.
#[derive(Debug, Default)]
struct Tally {
    /// Of every answered request, in milliseconds.
    latencies_ms: Vec<f64>,
    non_200: BTreeMap<u16, u64>,
    no_answer: u64,
    bad_bodies: u64,
}

/// How one request ended.
enum Outcome {
    Decision,
    Status(u16),
    BadBody,
    NoAnswer,
}

impl Tally {
    fn record(&mut self, outcome: Outcome, took: Duration) {
        match outcome {
            Outcome::NoAnswer => {
                self.no_answer += 1;
                return;
            }
            Outcome::Status(s) => *self.non_200.entry(s).or_default() += 1,
            Outcome::BadBody => self.bad_bodies += 1,
            Outcome::Decision => {}
        }
        self.latencies_ms.push(took.as_secs_f64() * 1000.0);
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_ms.extend(other.latencies_ms);
        for (status, n) in other.non_200 {
            *self.non_200.entry(status).or_default() += n;
        }
        self.no_answer += other.no_answer;
        self.bad_bodies += other.bad_bodies;
    }
}

/// Waits for the server's first read of the budgets, then runs the callers: the warm-up, then
/// the recorded part.
async fn call(url: &str, token: &str, bench: &BudgetsBench) -> anyhow::Result<Tally> {
    let client = reqwest::Client::builder()
        .http1_only()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(bench.callers)
        .timeout(REQUEST_TIMEOUT)
        .build()?;
    wait_ready(&client, url, token).await?;
    eprintln!(
        "bench budgets: {} callers for {:.0} s after a {:.0} s warm-up",
        bench.callers,
        bench.duration.as_secs_f64(),
        bench.warmup.as_secs_f64()
    );
    let token: Arc<str> = token.into();
    let record_from = Instant::now() + bench.warmup;
    let end = record_from + bench.duration;
    let callers: Vec<_> = (0..bench.callers)
        .map(|i| {
            let (client, token, urls) = (client.clone(), token.clone(), caller_urls(url, i));
            // Open loop: caller i's requests are due every 1/rate s, phase-shifted so that
            // the callers do not ask in lockstep.
            let schedule = bench.rate_per_caller.filter(|r| *r > 0.0).map(|rate| {
                let every = Duration::from_secs_f64(1.0 / rate);
                (every, every.mul_f64(i as f64 / bench.callers.max(1) as f64))
            });
            tokio::spawn(
                async move { caller(&client, &urls, &token, record_from, end, schedule).await },
            )
        })
        .collect();
    let mut tally = Tally::default();
    for c in callers {
        tally.merge(c.await?);
    }
    Ok(tally)
}

/// One caller: its calls in turn, one at a time on its connection, until `end`; requests due
/// from `record_from` on are recorded. With a `schedule` (interval, phase) each request is due
/// at its slot and its latency counts from then (a late start is the server's delay too);
/// without, the next request goes when the answer is in.
async fn caller(
    client: &reqwest::Client,
    urls: &[String],
    token: &str,
    record_from: Instant,
    end: Instant,
    schedule: Option<(Duration, Duration)>,
) -> Tally {
    let mut tally = Tally::default();
    let start = Instant::now();
    let mut answered = start;
    for (n, url) in urls.iter().cycle().enumerate() {
        let (due, from) = match schedule {
            Some((every, phase)) => {
                let due = start + phase + every.mul_f64(n as f64);
                tokio::time::sleep_until(due.into()).await;
                // Still waiting for the last answer when this one was due: the server held
                // it up, so it counts from when it was due. Otherwise it counts from when it
                // goes (the timer wakes up to a millisecond late, which is the client's).
                (due, if answered > due { due } else { Instant::now() })
            }
            None => {
                let now = Instant::now();
                (now, now)
            }
        };
        if due >= end {
            break;
        }
        let outcome = ask(client, url, token).await;
        answered = Instant::now();
        if due >= record_from {
            tally.record(outcome, answered - from);
        }
    }
    tally
}

/// One decision request, its body read whole (so the connection is reused) and checked.
async fn ask(client: &reqwest::Client, url: &str, token: &str) -> Outcome {
    let Ok(response) = client.get(url).bearer_auth(token).send().await else {
        return Outcome::NoAnswer;
    };
    let status = response.status().as_u16();
    let Ok(body) = response.bytes().await else {
        return Outcome::NoAnswer;
    };
    if status != 200 {
        Outcome::Status(status)
    } else if body.windows(8).any(|w| w == b"\"allow\":") {
        Outcome::Decision
    } else {
        Outcome::BadBody
    }
}

/// Asks for a decision until one is answered (503 until the first read of the budgets).
async fn wait_ready(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        match client.get(url).bearer_auth(token).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status().as_u16() != 503 => {
                let status = r.status();
                anyhow::bail!(
                    "the decision route answered {status} before the run: {}",
                    r.text().await.unwrap_or_default()
                );
            }
            _ => {}
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the server did not read its budgets within {} s",
            READY_TIMEOUT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl fmt::Display for BudgetsResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "budget decisions: {} budgets, {} callers ({}), {} cores, {:.1} s recorded: {} requests, {:.0} requests/s",
            self.budgets,
            self.callers,
            match self.rate_per_caller {
                Some(r) => format!("{r} requests/s each, open loop"),
                None => "each as fast as answered, closed loop".to_string(),
            },
            self.cores,
            self.seconds,
            self.requests,
            self.requests_per_sec
        )?;
        writeln!(
            f,
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (target: p99 under 2 ms)",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms
        )?;
        if self.errors() == 0 {
            return writeln!(f, "errors: none (every answer was a 200 with a decision)");
        }
        let statuses: Vec<String> = self
            .non_200
            .iter()
            .map(|(s, n)| format!("{s}: {n}"))
            .collect();
        writeln!(
            f,
            "ERRORS: {} requests got no decision ({} not 200 [{}], {} unanswered, {} without a decision): the latencies above include them",
            self.errors(),
            self.non_200.values().sum::<u64>(),
            statuses.join(", "),
            self.no_answer,
            self.bad_bodies
        )
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use strata_engine::budget::validate_budgets;

    use super::*;

    #[test]
    fn the_bench_budgets_are_twenty_valid_ones_of_every_scope() {
        let budgets = bench_budgets();
        validate_budgets(&budgets).unwrap();
        assert_eq!(budgets.len(), 20);
        assert!(budgets.iter().any(|b| b.scope.per_user));
        assert!(budgets.iter().any(|b| !b.hard));
        assert!(budgets
            .iter()
            .any(|b| b.scope.model.as_deref() == Some("gpt-4.1")));
        let kinds: BTreeSet<String> = budgets.iter().map(|b| b.period.kind.to_string()).collect();
        assert_eq!(
            kinds.into_iter().collect::<Vec<_>>(),
            ["day", "month", "week"]
        );
    }

    #[test]
    fn callers_ask_about_features_users_and_models() {
        let urls = caller_urls("http://h/d", 0);
        assert_eq!(urls.len(), 64);
        assert_eq!(
            urls[0],
            "http://h/d?feature=search_answer&user_id=u-0&provider=openai&model=gpt-4.1-mini"
        );
        assert_eq!(urls[1], "http://h/d?feature=listing_writer&user_id=u-919");
        let other = caller_urls("http://h/d", 1);
        assert_ne!(urls, other);
    }

    #[test]
    fn a_tally_counts_every_failure_and_times_only_answers() {
        let mut a = Tally::default();
        a.record(Outcome::Decision, Duration::from_millis(2));
        a.record(Outcome::Status(503), Duration::from_millis(1));
        a.record(Outcome::NoAnswer, Duration::from_secs(10));
        let mut b = Tally::default();
        b.record(Outcome::Status(503), Duration::from_millis(1));
        b.record(Outcome::BadBody, Duration::from_millis(1));
        a.merge(b);
        assert_eq!(a.latencies_ms, [2.0, 1.0, 1.0, 1.0]);
        assert_eq!(a.non_200.get(&503), Some(&2));
        assert_eq!((a.no_answer, a.bad_bodies), (1, 1));
    }
}
