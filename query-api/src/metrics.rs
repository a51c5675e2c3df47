//! The metrics of `strata serve`, on the registry `/metrics` serves: HTTP requests in the shape
//! of OpenTelemetry's `http.server.request.duration`, query duration by surface, the result
//! cache, scheduled jobs, and the table health figures of the last check.
//!
//! ```text
//! observe (lib.rs) --observe_request / count_error--> strata_http_server_request_duration_seconds, strata_query_errors_total
//! sql / panels / tables handlers --observe_query / count_cache--> strata_query_duration_seconds, strata_cache_*_total
//! scheduler (server.rs) --JobMetrics::record--> strata_job_*        health task, /v1/tables --TableMetrics::record--> strata_table_*
//! ```
//!
//! Every label value comes from a fixed set (matched routes, known methods, status codes,
//! panel names, job names, table names), never from a raw path or a query, so that the number
//! of series stays bounded whatever clients send. docs/operations/metrics.md lists them all.

use std::sync::Arc;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use strata_engine::delta::stats::TableHealth;
use strata_engine::{ScheduledJob, ScheduledOutcome};

/// Latency buckets (seconds) of requests and queries: 1 ms to the 30 s query time limit.
const LATENCY_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// Job duration buckets (seconds): a rollup in a second to a compaction of an hour.
const JOB_BUCKETS: [f64; 10] = [0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0];
/// The methods that are their own label value; any other is `_OTHER` (OpenTelemetry's rule),
/// since a client may send any token as a method.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// Where a query comes from: the label of [`ApiMetrics::observe_query`] and the cache counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// `/v1/sql`: from the request to the first batch (or the cached answer).
    Sql,
    /// `/v1/panels/{name}`: a panel computed (or served from the cache).
    Panel,
    /// `/v1/tables`: a table health check.
    Tables,
    /// The Postgres wire protocol (`--pg-listen`): to the first batch.
    Postgres,
    /// Arrow Flight SQL (`--flight-listen`): to the first batch.
    Flight,
}

impl Surface {
    pub fn label(self) -> &'static str {
        match self {
            Self::Sql => "sql",
            Self::Panel => "panel",
            Self::Tables => "tables",
            Self::Postgres => "postgres",
            Self::Flight => "flight",
        }
    }
}

/// The API's own metrics, and the job and table metrics of the server it runs in.
pub struct ApiMetrics {
    requests: HistogramVec,
    errors: IntCounterVec,
    queries: HistogramVec,
    cache_hits: IntCounterVec,
    cache_misses: IntCounterVec,
    pub not_modified: IntCounter,
    pub running: IntGauge,
    pub jobs: JobMetrics,
    pub tables: TableMetrics,
    /// Commits this process makes to any table (rollups, purges, maintenance), by table and
    /// operation: the engine's commit observer.
    pub commits: Arc<CommitMetrics>,
}

impl ApiMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let requests = histogram_vec(
            registry,
            "strata_http_server_request_duration_seconds",
            "Duration of HTTP requests (to the first byte of a streamed body), by matched route (`unmatched` for none), method and status code.",
            &["http_route", "http_request_method", "http_response_status_code"],
            &LATENCY_BUCKETS,
        )?;
        let errors = counter_vec(
            registry,
            "strata_query_errors_total",
            "Requests answered with an error, by matched route and error code.",
            &["http_route", "code"],
        )?;
        let queries = histogram_vec(
            registry,
            "strata_query_duration_seconds",
            "Time to answer a query, by surface (sql, postgres, flight: to the first batch; panel: the panel's computation or cached answer, with its name; tables: a table health check).",
            &["surface", "panel"],
            &LATENCY_BUCKETS,
        )?;
        let cache_hits = counter_vec(
            registry,
            "strata_cache_hits_total",
            "Panel and SQL results served from the cache, by surface (sql, panel, postgres, flight).",
            &["surface"],
        )?;
        let cache_misses = counter_vec(
            registry,
            "strata_cache_misses_total",
            "Panel and SQL results computed (cacheable ones only), by surface.",
            &["surface"],
        )?;
        // Every query surface has its counters from the start, so that a ratio never lacks one.
        for surface in [
            Surface::Sql,
            Surface::Panel,
            Surface::Postgres,
            Surface::Flight,
        ] {
            cache_hits.with_label_values(&[surface.label()]);
            cache_misses.with_label_values(&[surface.label()]);
        }
        let not_modified = IntCounter::new(
            "strata_not_modified_total",
            "Panel requests answered 304 from the ETag.",
        )?;
        registry.register(Box::new(not_modified.clone()))?;
        let running = IntGauge::new("strata_queries_running", "SQL queries running now.")?;
        registry.register(Box::new(running.clone()))?;
        Ok(Self {
            requests,
            errors,
            queries,
            cache_hits,
            cache_misses,
            not_modified,
            running,
            jobs: JobMetrics::new(registry)?,
            tables: TableMetrics::new(registry)?,
            commits: Arc::new(CommitMetrics::new(registry)?),
        })
    }

    /// One answered request. `route` is the matched route (or `unmatched`), never the path.
    pub fn observe_request(
        &self,
        route: &str,
        method: &Method,
        status: StatusCode,
        elapsed: Duration,
    ) {
        self.requests
            .with_label_values(&[route, method_label(method), status.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// One error answer, by its code (`forbidden`, `timeout`, ...).
    pub fn count_error(&self, route: &str, code: &str) {
        self.errors.with_label_values(&[route, code]).inc();
    }

    /// One query of `surface`; `panel` is the name of a known panel (empty for the others).
    pub fn observe_query(&self, surface: Surface, panel: &str, elapsed: Duration) {
        self.queries
            .with_label_values(&[surface.label(), panel])
            .observe(elapsed.as_secs_f64());
    }

    /// A cacheable result of `surface` served from the cache (`hit`) or computed.
    pub fn count_cache(&self, surface: Surface, hit: bool) {
        let counter = if hit {
            &self.cache_hits
        } else {
            &self.cache_misses
        };
        counter.with_label_values(&[surface.label()]).inc();
    }
}

/// The label value of `method`: its name when it is a standard method, else `_OTHER`.
fn method_label(method: &Method) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|m| **m == method.as_str())
        .copied()
        .unwrap_or("_OTHER")
}

/// The scheduled jobs this server ran (the slots whose lease it held), by job.
/// `strata_delta_commits_total`, `strata_delta_commit_conflicts_total` and
/// `strata_delta_commit_duration_seconds`, by `table` and `operation` (both bounded: the
/// registry's tables, the engine's commit operations).
pub struct CommitMetrics {
    commits: IntCounterVec,
    conflicts: IntCounterVec,
    duration: HistogramVec,
}

impl CommitMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let labels = &["table", "operation"];
        Ok(Self {
            commits: counter_vec(
                registry,
                "strata_delta_commits_total",
                "Delta commits this process made, by table and operation (append, replace, purge, compaction, retention).",
                labels,
            )?,
            conflicts: counter_vec(
                registry,
                "strata_delta_commit_conflicts_total",
                "Delta commits of this process that lost a conflict with another writer (then retried or dropped), by table and operation.",
                labels,
            )?,
            duration: histogram_vec(
                registry,
                "strata_delta_commit_duration_seconds",
                "Duration of a Delta commit attempt that landed, by table and operation.",
                labels,
                &JOB_BUCKETS,
            )?,
        })
    }
}

impl strata_engine::delta::CommitObserver for CommitMetrics {
    fn committed(&self, table: &str, operation: &'static str, elapsed: std::time::Duration) {
        self.commits.with_label_values(&[table, operation]).inc();
        self.duration
            .with_label_values(&[table, operation])
            .observe(elapsed.as_secs_f64());
    }

    fn conflicted(&self, table: &str, operation: &'static str) {
        self.conflicts.with_label_values(&[table, operation]).inc();
    }
}

pub struct JobMetrics {
    runs: IntCounterVec,
    failures: IntCounterVec,
    duration: HistogramVec,
    last_success: GaugeVec,
}

impl JobMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        // The label is `job_name`: a `job` label would clash with the one Prometheus adds to
        // every scraped series (and be renamed `exported_job`).
        let runs = counter_vec(
            registry,
            "strata_job_runs_total",
            "Scheduled job runs this server made (one per slot it held), by job.",
            &["job_name"],
        )?;
        let failures = counter_vec(
            registry,
            "strata_job_failures_total",
            "Scheduled job runs that failed on at least one table (or could not claim their slot), by job.",
            &["job_name"],
        )?;
        let duration = histogram_vec(
            registry,
            "strata_job_duration_seconds",
            "Duration of scheduled job runs, by job.",
            &["job_name"],
            &JOB_BUCKETS,
        )?;
        let last_success = GaugeVec::new(
            Opts::new(
                "strata_job_last_success_timestamp_seconds",
                "Unix time at which a run of the job last ended without a failure on this server.",
            ),
            &["job_name"],
        )?;
        registry.register(Box::new(last_success.clone()))?;
        // Every job has its counters from the start, so that `increase()` sees the first run.
        for job in ScheduledJob::ALL {
            runs.with_label_values(&[job.name()]);
            failures.with_label_values(&[job.name()]);
        }
        Ok(Self {
            runs,
            failures,
            duration,
            last_success,
        })
    }

    /// One run of `job` that took `elapsed`, with what `run_scheduled` reported.
    pub fn record(&self, job: ScheduledJob, outcome: ScheduledOutcome, elapsed: Duration) {
        let name = [job.name()];
        self.runs.with_label_values(&name).inc();
        self.duration
            .with_label_values(&name)
            .observe(elapsed.as_secs_f64());
        if outcome.failed > 0 {
            self.failures.with_label_values(&name).inc();
        } else {
            self.last_success
                .with_label_values(&name)
                .set(chrono::Utc::now().timestamp_millis() as f64 / 1000.0);
        }
    }

    /// A slot of `job` this server could not claim because the storage did not answer: the
    /// job did not run, which an operator should see as a failed run.
    pub fn record_claim_failure(&self, job: ScheduledJob) {
        let name = [job.name()];
        self.runs.with_label_values(&name).inc();
        self.failures.with_label_values(&name).inc();
    }
}

/// The figures of the last table health check, by table ([`TableHealth`]).
pub struct TableMetrics {
    files: IntGaugeVec,
    bytes: IntGaugeVec,
    small_files: IntGaugeVec,
    largest_partition_files: IntGaugeVec,
    commits_since_checkpoint: IntGaugeVec,
    vacuum_files: IntGaugeVec,
    vacuum_bytes: IntGaugeVec,
}

impl TableMetrics {
    fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| gauge_vec(registry, name, help, &["table"]);
        Ok(Self {
            files: gauge("strata_table_files", "Data files of the table's current version.")?,
            bytes: gauge(
                "strata_table_size_bytes",
                "Bytes of the data files of the table's current version.",
            )?,
            small_files: gauge(
                "strata_table_small_files",
                "Data files under the small-file size (32 MiB): the compaction backlog.",
            )?,
            largest_partition_files: gauge(
                "strata_table_largest_partition_files",
                "Data files of the table's partition with the most files.",
            )?,
            commits_since_checkpoint: gauge(
                "strata_table_commits_since_checkpoint",
                "Commits a reader replays on top of the table's last checkpoint.",
            )?,
            vacuum_files: gauge(
                "strata_table_vacuum_pending_files",
                "Files in the table's directory the current version no longer references (waiting for vacuum).",
            )?,
            vacuum_bytes: gauge(
                "strata_table_vacuum_pending_bytes",
                "Bytes of the files waiting for vacuum.",
            )?,
        })
    }

    /// Sets every gauge of each checked table (a table whose check failed keeps its last
    /// figures).
    pub fn record(&self, health: &[TableHealth]) {
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for h in health {
            let table = [h.table.as_str()];
            self.files.with_label_values(&table).set(count(h.files));
            self.bytes.with_label_values(&table).set(count(h.bytes));
            self.small_files
                .with_label_values(&table)
                .set(count(h.small_files));
            self.largest_partition_files
                .with_label_values(&table)
                .set(count(h.largest_partition.as_ref().map_or(0, |p| p.files)));
            self.commits_since_checkpoint
                .with_label_values(&table)
                .set(count(h.commits_since_checkpoint));
            self.vacuum_files
                .with_label_values(&table)
                .set(count(h.vacuum_files));
            self.vacuum_bytes
                .with_label_values(&table)
                .set(count(h.vacuum_bytes));
        }
    }
}

fn counter_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(g.clone()))?;
    Ok(g)
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> prometheus::Result<HistogramVec> {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn text(registry: &Registry) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .unwrap()
    }

    #[test]
    fn a_request_is_labelled_by_route_method_and_status_never_by_path() {
        let registry = Registry::new();
        let m = ApiMetrics::new(&registry).unwrap();
        m.observe_request(
            "/v1/panels/{name}",
            &Method::GET,
            StatusCode::OK,
            Duration::from_millis(3),
        );
        let odd = Method::from_bytes(b"BREW").unwrap();
        m.observe_request("unmatched", &odd, StatusCode::NOT_FOUND, Duration::ZERO);
        let text = text(&registry);
        assert!(text.contains("strata_http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/v1/panels/{name}\"} 1"), "{text}");
        assert!(text.contains("http_request_method=\"_OTHER\""), "{text}");
        assert!(!text.contains("BREW"), "{text}");
    }

    #[test]
    fn jobs_have_counters_before_their_first_run_and_count_failures() {
        let registry = Registry::new();
        let m = ApiMetrics::new(&registry).unwrap();
        assert!(text(&registry).contains("strata_job_runs_total{job_name=\"vacuum\"} 0"));
        let failed = ScheduledOutcome { runs: 3, failed: 1 };
        m.jobs
            .record(ScheduledJob::Compaction, failed, Duration::from_secs(2));
        m.jobs.record_claim_failure(ScheduledJob::Vacuum);
        let ok = ScheduledOutcome { runs: 1, failed: 0 };
        m.jobs.record(ScheduledJob::Rollups, ok, Duration::ZERO);
        let text = text(&registry);
        for line in [
            "strata_job_runs_total{job_name=\"compact\"} 1",
            "strata_job_failures_total{job_name=\"compact\"} 1",
            "strata_job_failures_total{job_name=\"vacuum\"} 1",
            "strata_job_failures_total{job_name=\"rollups\"} 0",
            "strata_job_duration_seconds_count{job_name=\"compact\"} 1",
            "strata_job_last_success_timestamp_seconds{job_name=\"rollups\"}",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(!text.contains("strata_job_last_success_timestamp_seconds{job_name=\"compact\"}"));
    }

    /// Every `strata_` name the shipped alert rules and dashboard use (without the histogram
    /// suffixes), outside the ingest process's own metrics.
    fn names_used_in_ops() -> BTreeSet<String> {
        let files = [
            include_str!("../../ops/prometheus/alerts.yml"),
            include_str!("../../ops/grafana/strata.json"),
        ];
        files
            .iter()
            .flat_map(|f| f.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')))
            .filter(|w| w.starts_with("strata_") && !w.starts_with("strata_ingest_"))
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
        let m = ApiMetrics::new(&registry).unwrap();
        // Touch every family so that it is exposed (an empty family is not).
        m.observe_request("/", &Method::GET, StatusCode::OK, Duration::ZERO);
        m.count_error("/", "forbidden");
        m.observe_query(Surface::Sql, "", Duration::ZERO);
        m.jobs.record(
            ScheduledJob::Rollups,
            ScheduledOutcome::default(),
            Duration::ZERO,
        );
        m.tables.record(&[sample_health()]);
        {
            use strata_engine::budget::{Board, BudgetObserver, BudgetStanding, Decision, Money};
            let b = crate::budget_metrics::BudgetMetrics::new(&registry).unwrap();
            let budget = strata_engine::budget::Budget::new("ai", Money::parse("10").unwrap());
            let now = chrono::Utc::now();
            let state = strata_engine::budget::BudgetState::compute(
                &budget,
                budget.period.window(now),
                Money::parse("8").unwrap(),
                now,
            );
            b.states(
                &Board {
                    standings: vec![BudgetStanding {
                        budget,
                        total: Some(state),
                        per_user: Default::default(),
                    }],
                    as_of: now,
                },
                &|_| Money::ZERO,
            );
            b.alert("ai", "threshold-75", false, 7, 7);
            b.decision(&Decision {
                action: None,
                budget: None,
                reason: String::new(),
                as_of: now,
                lag: Duration::ZERO,
            });
        }
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
                "{name} is not a metric of strata serve: {exposed:?}"
            );
        }
    }

    #[test]
    fn a_health_check_sets_the_gauges_of_its_tables() {
        let registry = Registry::new();
        let m = ApiMetrics::new(&registry).unwrap();
        m.tables.record(&[sample_health()]);
        let text = text(&registry);
        for line in [
            "strata_table_files{table=\"link_clicks\"} 10",
            "strata_table_small_files{table=\"link_clicks\"} 9",
            "strata_table_largest_partition_files{table=\"link_clicks\"} 0",
            "strata_table_commits_since_checkpoint{table=\"link_clicks\"} 4",
            "strata_table_vacuum_pending_bytes{table=\"link_clicks\"} 10",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    fn sample_health() -> TableHealth {
        TableHealth {
            table: "link_clicks".into(),
            version: 3,
            files: 10,
            bytes: 1000,
            small_files: 9,
            small_file_bytes_threshold: 32 << 20,
            largest_partition: None,
            checkpoint_version: None,
            commits_since_checkpoint: 4,
            vacuum_files: 1,
            vacuum_bytes: 10,
            computed_at: chrono::Utc::now(),
        }
    }
}
