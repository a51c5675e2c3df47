//! Configuration blocks shared by the subcommands. Every flag is also read from
//! `STRATA_<FLAG>`; its doc comment is its `--help`. Under both lies the configuration file
//! ([`file`]): each of its keys ([`keys`]) becomes its flag's variable unless the
//! environment sets that already, so the precedence is flag > environment > file > default.

pub mod file;
pub mod keys;
pub mod logging;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use strata_engine::maintenance::RetentionPolicy;
use strata_engine::StorageOptions;
use strata_ingest::{IngestOptions, TopicBinding};
use strata_query_api::{
    ApiLimits, Auth, HttpLimits, PgOptions, ServerConfig, TlsFiles, TokenEntry,
};
use strata_schemas::EventKind;

pub use logging::{init_tracing, LogFormat};

/// Flags of every subcommand: where the configuration file is and how logs look.
#[derive(Args, Debug, Clone)]
pub struct GlobalConfig {
    /// Configuration file (TOML; docs/operations/config.md); default ./strata.toml when it
    /// exists. Flags and STRATA_* variables override its keys.
    // Read before clap parses (file::locate), declared here so that clap accepts it and
    // --help shows it.
    #[allow(dead_code)]
    #[arg(long, global = true, env = "STRATA_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log lines on stderr: text, or one JSON object per line.
    #[arg(
        long,
        global = true,
        env = "STRATA_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
}

#[derive(Args, Debug, Clone)]
pub struct StorageConfig {
    /// Storage root: a local directory or an s3://, gs://, az:// URL. Tables live at <root>/tables/<name>.
    #[arg(long, env = "STRATA_STORAGE_URL", default_value = "./data")]
    pub storage_url: String,
    /// Object-store option KEY=VALUE (repeatable), e.g. aws_endpoint=http://127.0.0.1:5000.
    #[arg(
        long = "storage-option",
        env = "STRATA_STORAGE_OPTIONS",
        value_delimiter = ','
    )]
    pub storage_options: Vec<String>,
    /// Memory the jobs of this process share, in MiB: rollups (scheduled or a purge's), a
    /// purge's verification, exports. Past it the job fails and says so (no spill files).
    #[arg(long, env = "STRATA_JOBS_MEMORY_MB", default_value_t = StorageConfig::DEFAULT_JOBS_MEMORY_MB)]
    pub jobs_memory_mb: usize,
}

impl StorageConfig {
    /// An items rollup rebuild at 20M events peaks at ~420 MiB of RSS on 2 cores (days in
    /// flight = cores): 2 GiB leaves room for a purge's rollups beside a scheduled run.
    pub const DEFAULT_JOBS_MEMORY_MB: usize = 2048;

    pub fn options(&self) -> anyhow::Result<StorageOptions> {
        Ok(StorageOptions {
            url: self.storage_url.clone(),
            options: pairs(&self.storage_options, "--storage-option")?
                .into_iter()
                .collect(),
            jobs_memory_bytes: Some(self.jobs_memory_mb.max(1).saturating_mul(1 << 20)),
        })
    }
}

#[derive(Args, Debug, Clone)]
pub struct KafkaConfig {
    /// Kafka bootstrap servers, host:port[,host:port].
    #[arg(long, env = "STRATA_BROKERS", default_value = IngestOptions::DEFAULT_BROKERS)]
    pub brokers: String,
    #[command(flatten)]
    pub topics: TopicConfig,
    /// Extra librdkafka setting KEY=VALUE (repeatable), e.g. security.protocol=SSL.
    #[arg(
        long = "kafka-option",
        env = "STRATA_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub kafka_options: Vec<String>,
}

/// The topic of each kind of event: what `strata ingest` consumes and `strata gen --kafka`
/// produces to.
#[derive(Args, Debug, Clone)]
pub struct TopicConfig {
    /// Topic of click events.
    #[arg(long, env = "STRATA_CLICK_TOPIC", default_value = EventKind::LinkClick.default_topic())]
    pub click_topic: String,
    /// Topic of AI-usage events.
    #[arg(long, env = "STRATA_AI_USAGE_TOPIC", default_value = EventKind::AiUsage.default_topic())]
    pub ai_usage_topic: String,
}

impl TopicConfig {
    pub fn bindings(&self) -> Vec<TopicBinding> {
        vec![
            TopicBinding {
                topic: self.click_topic.clone(),
                kind: EventKind::LinkClick,
            },
            TopicBinding {
                topic: self.ai_usage_topic.clone(),
                kind: EventKind::AiUsage,
            },
        ]
    }

    pub fn topic_of(&self, kind: EventKind) -> &str {
        match kind {
            EventKind::LinkClick => &self.click_topic,
            EventKind::AiUsage => &self.ai_usage_topic,
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct FlushConfig {
    /// Consumer group; part of the Delta txn app ids (strata-<group>-<topic>-<partition>).
    #[arg(long, env = "STRATA_GROUP", default_value = IngestOptions::DEFAULT_GROUP)]
    pub group: String,
    /// Static group membership: this process's group.instance.id, so that a restart takes
    /// its partitions back at once; `auto` uses the host name. Unset by default. No two
    /// processes may share one (the broker fences the older), so `auto` suits one ingest per
    /// host (a StatefulSet pod, a VM).
    #[arg(long, env = "STRATA_GROUP_INSTANCE_ID")]
    pub group_instance_id: Option<String>,
    /// Flush when this many messages are buffered.
    #[arg(long, env = "STRATA_FLUSH_ROWS", default_value_t = IngestOptions::DEFAULT_FLUSH_ROWS)]
    pub flush_rows: usize,
    /// Flush when this many payload bytes are buffered.
    #[arg(long, env = "STRATA_FLUSH_BYTES", default_value_t = IngestOptions::DEFAULT_FLUSH_BYTES)]
    pub flush_bytes: usize,
    /// Flush when the oldest buffered message is this many milliseconds old.
    #[arg(
        long,
        env = "STRATA_FLUSH_AGE_MS",
        default_value_t = millis(IngestOptions::DEFAULT_FLUSH_AGE)
    )]
    pub flush_age_ms: u64,
    /// Event ids remembered per partition to drop producer retries (0 disables).
    #[arg(
        long,
        env = "STRATA_DEDUPE_WINDOW",
        default_value_t = IngestOptions::DEFAULT_DEDUPE_WINDOW
    )]
    pub dedupe_window: usize,
}

pub fn ingest_options(kafka: &KafkaConfig, flush: &FlushConfig) -> anyhow::Result<IngestOptions> {
    Ok(IngestOptions {
        brokers: kafka.brokers.clone(),
        group: flush.group.clone(),
        topics: kafka.topics.bindings(),
        flush_rows: flush.flush_rows.max(1),
        flush_bytes: flush.flush_bytes.max(1),
        flush_age: Duration::from_millis(flush.flush_age_ms),
        dedupe_window: flush.dedupe_window,
        kafka_config: pairs(&kafka.kafka_options, "--kafka-option")?,
        group_instance_id: flush
            .group_instance_id
            .as_deref()
            .map(group_instance_id)
            .transpose()?,
        ..IngestOptions::default()
    })
}

/// The value of `--group-instance-id` that `auto` stands for.
pub const GROUP_INSTANCE_AUTO: &str = "auto";

/// `--group-instance-id` as the consumer's `group.instance.id`: `auto` is the host name.
fn group_instance_id(flag: &str) -> anyhow::Result<String> {
    let id = if flag == GROUP_INSTANCE_AUTO {
        host_name().ok_or_else(|| {
            anyhow::anyhow!(
                "--group-instance-id auto: cannot read the host name; pass an explicit id"
            )
        })?
    } else {
        flag.trim().to_string()
    };
    if id.is_empty() {
        anyhow::bail!("--group-instance-id must not be empty");
    }
    Ok(id)
}

/// The host name (Linux: /proc/sys/kernel/hostname, /etc/hostname; else `HOSTNAME`).
fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// Where `strata ingest` serves its Prometheus metrics.
#[derive(Args, Debug, Clone)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "STRATA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The AI budgets (docs/operations/ai-budgets.md).
#[derive(Args, Debug, Clone)]
pub struct BudgetsConfig {
    /// AI budgets as a JSON array (the `[[budgets]]` sections of the configuration file
    /// arrive here as such an array).
    #[arg(
        long,
        env = "STRATA_BUDGETS",
        value_name = "JSON",
        hide_env_values = true
    )]
    pub budgets: Option<String>,
}

impl BudgetsConfig {
    pub fn budgets(&self) -> anyhow::Result<Vec<strata_engine::budget::Budget>> {
        match self.budgets.as_deref().map(str::trim) {
            None | Some("") => Ok(Vec::new()),
            Some(text) => parse_budgets(text),
        }
    }
}

/// Budgets from their JSON array, each checked (names, amounts, time zones, thresholds,
/// webhooks); the error names the budget and the field.
pub fn parse_budgets(text: &str) -> anyhow::Result<Vec<strata_engine::budget::Budget>> {
    let budgets: Vec<strata_engine::budget::Budget> =
        serde_json::from_str(text).map_err(|e| anyhow::anyhow!("budgets: {e}"))?;
    strata_engine::budget::validate_budgets(&budgets)?;
    Ok(budgets)
}

/// How long each table keeps its rows (what retention removes).
#[derive(Args, Debug, Clone)]
pub struct RetentionConfig {
    /// Retention of one table, TABLE=DAYS or TABLE=forever (repeatable); the tables not named
    /// keep their defaults (docs/operations/maintenance.md).
    #[arg(
        long = "retention-days",
        env = "STRATA_RETENTION_DAYS",
        value_delimiter = ',',
        value_name = "TABLE=DAYS"
    )]
    pub retention_days: Vec<String>,
}

impl RetentionConfig {
    /// The default policy with the configured tables changed.
    pub fn policy(&self) -> anyhow::Result<RetentionPolicy> {
        let mut policy = RetentionPolicy::default();
        for (table, days) in pairs(&self.retention_days, "--retention-days")? {
            if strata_engine::registry::get(&table).is_none() {
                anyhow::bail!("--retention-days names `{table}`, which is not a table of Strata's");
            }
            let days = if days == file::RETENTION_FOREVER {
                None
            } else {
                match days.parse::<u32>() {
                    Ok(d) if d >= 1 => Some(d),
                    _ => anyhow::bail!(
                        "--retention-days {table}={days}: days must be a whole number (1 or more) or `{}`",
                        file::RETENTION_FOREVER
                    ),
                }
            };
            policy.days.insert(table, days);
        }
        Ok(policy)
    }
}

fn pairs(items: &[String], flag: &str) -> anyhow::Result<Vec<(String, String)>> {
    items
        .iter()
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| anyhow::anyhow!("{flag} `{s}` must be KEY=VALUE"))
        })
        .collect()
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("signal received");
}

#[derive(Args, Debug, Clone)]
pub struct ApiConfig {
    /// Address the API and dashboard listen on (port 0 picks a free port; the log says which).
    #[arg(long, env = "STRATA_LISTEN", default_value = ServerConfig::DEFAULT_LISTEN)]
    pub listen: String,
    /// Address the Postgres wire protocol listens on, for psql, DBeaver, Grafana and psycopg
    /// (login: the token's name as user, the token as password). Off unless given; an address
    /// other than loopback needs --pg-tls-cert and --pg-tls-key.
    #[arg(long, env = "STRATA_PG_LISTEN")]
    pub pg_listen: Option<String>,
    /// PEM certificate chain of the Postgres listener's TLS.
    #[arg(long, env = "STRATA_PG_TLS_CERT", requires = "pg_tls_key")]
    pub pg_tls_cert: Option<std::path::PathBuf>,
    /// PEM private key of the Postgres listener's TLS.
    #[arg(long, env = "STRATA_PG_TLS_KEY", requires = "pg_tls_cert")]
    pub pg_tls_key: Option<std::path::PathBuf>,
    /// Address Arrow Flight SQL listens on (ADBC, JDBC's Flight SQL driver; bearer tokens).
    /// Off unless given; plain gRPC, so loopback or behind a TLS proxy.
    #[arg(long, env = "STRATA_FLIGHT_LISTEN")]
    pub flight_listen: Option<String>,
    /// API token NAME:SCOPE[+SCOPE...]:SHA256_HEX (repeatable; make one with `strata token new`).
    /// Scopes: panels, sql, gdpr, ai, admin.
    #[arg(long = "token", env = "STRATA_TOKENS", value_delimiter = ',')]
    pub tokens: Vec<String>,
    /// Requests per second each token may make on average (bursts of 4x are allowed).
    #[arg(
        long,
        env = "STRATA_RATE_LIMIT",
        default_value_t = ServerConfig::DEFAULT_TOKEN_RATE_PER_SEC
    )]
    pub rate_limit: f64,
    /// Time limit of one query or panel, in seconds.
    #[arg(
        long,
        env = "STRATA_QUERY_TIMEOUT_SECS",
        default_value_t = ApiLimits::DEFAULT_TIMEOUT.as_secs()
    )]
    pub query_timeout_secs: u64,
    /// Memory one query may use, in MiB; past it the query fails with 422.
    #[arg(
        long,
        env = "STRATA_QUERY_MEMORY_MB",
        default_value_t = ApiLimits::DEFAULT_QUERY_MEMORY_MB
    )]
    pub query_memory_mb: usize,
    /// Rows one SQL response may hold; the result is cut there.
    #[arg(long, env = "STRATA_ROW_CAP", default_value_t = ApiLimits::DEFAULT_ROW_CAP)]
    pub row_cap: usize,
    /// How old (ms) the view of the tables may be before a request looks for new commits.
    #[arg(long, env = "STRATA_REFRESH_MS", default_value_t = millis(ApiLimits::DEFAULT_MAX_AGE))]
    pub refresh_ms: u64,
    /// Memory for cached panel and SQL results, in MiB.
    #[arg(long, env = "STRATA_CACHE_MB", default_value_t = ServerConfig::DEFAULT_CACHE_MB)]
    pub cache_mb: usize,
    /// Seconds between scheduled rollup runs (0: never).
    #[arg(
        long,
        env = "STRATA_ROLLUP_INTERVAL_SECS",
        default_value_t = ServerConfig::DEFAULT_ROLLUP_INTERVAL.as_secs()
    )]
    pub rollup_interval_secs: u64,
    /// Seconds per compaction slot; each slot runs on one server of the root (0: never).
    #[arg(
        long,
        env = "STRATA_COMPACT_INTERVAL_SECS",
        default_value_t = ServerConfig::DEFAULT_COMPACT_INTERVAL.as_secs()
    )]
    pub compact_interval_secs: u64,
    /// Seconds per vacuum slot: vacuum, checkpoints, log cleanup (0: never).
    #[arg(
        long,
        env = "STRATA_VACUUM_INTERVAL_SECS",
        default_value_t = ServerConfig::DEFAULT_VACUUM_INTERVAL.as_secs()
    )]
    pub vacuum_interval_secs: u64,
    /// Seconds per retention slot (0: never).
    #[arg(
        long,
        env = "STRATA_RETENTION_INTERVAL_SECS",
        default_value_t = ServerConfig::DEFAULT_RETENTION_INTERVAL.as_secs()
    )]
    pub retention_interval_secs: u64,
    /// Seconds between this server's table health checks (the table_health panel; 0: never).
    #[arg(
        long,
        env = "STRATA_TABLE_HEALTH_INTERVAL_SECS",
        default_value_t = ServerConfig::DEFAULT_TABLE_HEALTH_INTERVAL.as_secs()
    )]
    pub table_health_interval_secs: u64,
    /// Connections served at once; more wait in the kernel's accept queue.
    #[arg(
        long,
        env = "STRATA_MAX_CONNECTIONS",
        default_value_t = HttpLimits::default().max_connections
    )]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers; an idle keep-alive connection is
    /// closed after as long.
    #[arg(
        long,
        env = "STRATA_HEADER_TIMEOUT_SECS",
        default_value_t = HttpLimits::default().header_timeout.as_secs()
    )]
    pub header_timeout_secs: u64,
    /// Seconds a client has to send a request's whole body.
    #[arg(
        long,
        env = "STRATA_BODY_TIMEOUT_SECS",
        default_value_t = HttpLimits::default().body_timeout.as_secs()
    )]
    pub body_timeout_secs: u64,
    /// Requests per second one client address may make without a valid token (public routes,
    /// missing or unknown tokens; bursts of 5x are allowed); past it, 429.
    #[arg(
        long,
        env = "STRATA_PEER_RATE_LIMIT",
        default_value_t = HttpLimits::default().peer_rate_per_sec
    )]
    pub peer_rate_limit: f64,
    /// Queries (SQL and panels) running at once; the next ones wait up to --queue-wait-ms.
    #[arg(long, env = "STRATA_MAX_QUERIES", default_value_t = ApiLimits::DEFAULT_MAX_QUERIES)]
    pub max_queries: usize,
    /// Milliseconds a query may wait for a slot before it is answered 503 with Retry-After.
    #[arg(
        long,
        env = "STRATA_QUEUE_WAIT_MS",
        default_value_t = millis(ApiLimits::DEFAULT_QUEUE_WAIT)
    )]
    pub queue_wait_ms: u64,
    /// Memory all running queries share, in MiB (each one at most --query-memory-mb of it).
    #[arg(
        long,
        env = "STRATA_SERVER_MEMORY_MB",
        default_value_t = ApiLimits::DEFAULT_SERVER_MEMORY_MB
    )]
    pub server_memory_mb: usize,
}

impl ApiConfig {
    /// What `strata serve` starts the server with.
    pub fn server(&self) -> ServerConfig {
        ServerConfig {
            listen: self.listen.clone(),
            pg: self.pg_listen.clone().map(|listen| PgOptions {
                listen,
                tls: match (&self.pg_tls_cert, &self.pg_tls_key) {
                    (Some(cert), Some(key)) => Some(TlsFiles {
                        cert: cert.clone(),
                        key: key.clone(),
                    }),
                    _ => None,
                },
            }),
            flight_listen: self.flight_listen.clone(),
            cache_bytes: self.cache_mb.max(1) << 20,
            rollup_every: every(self.rollup_interval_secs),
            compact_every: every(self.compact_interval_secs),
            vacuum_every: every(self.vacuum_interval_secs),
            retention_every: every(self.retention_interval_secs),
            table_health_every: every(self.table_health_interval_secs),
            maintenance: strata_engine::MaintenanceOptions::default(),
            limits: self.limits(),
            budgets: Vec::new(),
        }
    }

    pub fn limits(&self) -> ApiLimits {
        ApiLimits {
            timeout: Duration::from_secs(self.query_timeout_secs.max(1)),
            row_cap: self.row_cap.max(1),
            max_age: Duration::from_millis(self.refresh_ms),
            query: strata_engine::QueryLimits {
                memory_bytes: Some(self.query_memory_mb.max(1) << 20),
                ..Default::default()
            },
            max_queries: self.max_queries.max(1),
            queue_wait: Duration::from_millis(self.queue_wait_ms),
            server_memory_bytes: self.server_memory_mb.max(1) << 20,
            http: HttpLimits {
                max_connections: self.max_connections.max(1),
                header_timeout: Duration::from_secs(self.header_timeout_secs.max(1)),
                body_timeout: Duration::from_secs(self.body_timeout_secs.max(1)),
                peer_rate_per_sec: self.peer_rate_limit,
                peer_burst: self.peer_rate_limit * HttpLimits::PEER_BURST_SECONDS,
                ..Default::default()
            },
        }
    }

    pub fn auth(&self) -> anyhow::Result<Auth> {
        token_auth(&self.tokens, self.rate_limit)
    }
}

/// The tokens of `--token` lines (`NAME:SCOPE[+SCOPE...]:SHA256_HEX`, blank ones skipped), each
/// allowed `rate` requests per second on average with bursts of 4x.
pub fn token_auth(lines: &[String], rate: f64) -> anyhow::Result<Auth> {
    let tokens = lines
        .iter()
        .filter(|t| !t.trim().is_empty())
        .map(|t| {
            t.parse()
                .map_err(|e: String| anyhow::anyhow!("--token: {e}"))
        })
        .collect::<anyhow::Result<Vec<TokenEntry>>>()?;
    Ok(Auth::new(tokens, rate, rate * 4.0))
}

/// A duration as the milliseconds a flag takes (for defaults declared as `Duration`s).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A schedule interval from its flag: 0 seconds is never.
fn every(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}
