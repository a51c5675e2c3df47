//! The running server: the API on its listener, the scheduled jobs (rollups, compaction,
//! vacuum with checkpoints, retention) and table health checks, and the GDPR requests a
//! previous process left unfinished resumed at start-up. `strata serve` and `strata demo` both
//! run it.
//!
//! ```text
//! ServerConfig --start--> tables ensured -> Catalog -> AppState (+ BudgetService) -> bound listener
//!              --run-->   resume GDPR requests; Scheduler; budget refresh loop; serve to shutdown
//! Scheduler: per job with an interval, one task: at each slot, Lease::claim -> run_scheduled -> job_runs
//!            (and the `strata_job_*` metrics of this server)
//!            table health every `table_health_every` (this server's view, no lease; `strata_table_*`)
//! ```
//!
//! Slots are cut from the wall clock (see [`strata_engine::lease`]), so that servers sharing a
//! root agree on them: each slot of a job runs on one server, and one task per job means a
//! server never runs one job twice at once.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use strata_engine::budget::{Budget, BudgetService};
use strata_engine::lease::{Lease, LeaseHolder, Slot};
use strata_engine::{
    run_scheduled, Catalog, EngineError, MaintenanceOptions, ResultCache, ScheduledJob, Storage,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::flight::{FlightListenError, FlightServer};
use crate::pg::{PgError, PgOptions, PgServer};
use crate::{ApiError, ApiLimits, ApiMetrics, AppState, Auth};

/// What a server is started with besides its storage root and tokens. `Default` gives the
/// documented defaults; each is declared once, as a `DEFAULT_*` constant below.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the API and dashboard listen on (port 0 picks a free port).
    pub listen: String,
    /// Memory for cached panel and SQL results, in bytes.
    pub cache_bytes: usize,
    /// Length of a rollup slot (rollups run once per slot across the servers of a root);
    /// `None`: never.
    pub rollup_every: Option<Duration>,
    /// Length of a compaction slot; `None`: never.
    pub compact_every: Option<Duration>,
    /// Length of a vacuum slot (vacuum, checkpoint and log cleanup); `None`: never.
    pub vacuum_every: Option<Duration>,
    /// Length of a retention slot; `None`: never.
    pub retention_every: Option<Duration>,
    /// Time between this server's table health checks (what the `table_health` panel shows);
    /// `None`: only when `/v1/tables` is asked.
    pub table_health_every: Option<Duration>,
    /// Options of compaction, vacuum and retention.
    pub maintenance: MaintenanceOptions,
    pub limits: ApiLimits,
    /// The AI budgets served under `/v1/ai/budgets` (none: those routes say so).
    pub budgets: Vec<Budget>,
    /// The Postgres wire protocol's listener (none: off).
    pub pg: Option<PgOptions>,
    /// Arrow Flight SQL's listen address (none: off).
    pub flight_listen: Option<String>,
}

impl ServerConfig {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    /// Memory for cached results, in MiB.
    pub const DEFAULT_CACHE_MB: usize = 256;
    pub const DEFAULT_ROLLUP_INTERVAL: Duration = Duration::from_secs(60);
    pub const DEFAULT_COMPACT_INTERVAL: Duration = Duration::from_secs(5 * 60);
    pub const DEFAULT_VACUUM_INTERVAL: Duration = Duration::from_secs(60 * 60);
    pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(60 * 60);
    pub const DEFAULT_TABLE_HEALTH_INTERVAL: Duration = Duration::from_secs(60);
    /// Requests per second each token may make on average (the rate of the [`Auth`] a server
    /// is usually given).
    pub const DEFAULT_TOKEN_RATE_PER_SEC: f64 = 50.0;

    /// The slot length of `job` (`None`: the job is not scheduled).
    pub fn every(&self, job: ScheduledJob) -> Option<Duration> {
        match job {
            ScheduledJob::Rollups => self.rollup_every,
            ScheduledJob::Compaction => self.compact_every,
            ScheduledJob::Vacuum => self.vacuum_every,
            ScheduledJob::Retention => self.retention_every,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Self::DEFAULT_LISTEN.into(),
            cache_bytes: Self::DEFAULT_CACHE_MB << 20,
            rollup_every: Some(Self::DEFAULT_ROLLUP_INTERVAL),
            compact_every: Some(Self::DEFAULT_COMPACT_INTERVAL),
            vacuum_every: Some(Self::DEFAULT_VACUUM_INTERVAL),
            retention_every: Some(Self::DEFAULT_RETENTION_INTERVAL),
            table_health_every: Some(Self::DEFAULT_TABLE_HEALTH_INTERVAL),
            maintenance: MaintenanceOptions::default(),
            limits: ApiLimits::default(),
            budgets: Vec::new(),
            pg: None,
            flight_listen: None,
        }
    }
}

/// Why a server did not start or stopped serving. Separate from [`ApiError`], which is an
/// answer to one request; these end the process. The large errors are boxed to keep the
/// `Result` small.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Creating the tables or opening the catalog failed.
    #[error(transparent)]
    Storage(Box<EngineError>),
    /// The shared state could not be built (metrics registration, panel definitions).
    #[error("{0:?}")]
    State(Box<ApiError>),
    #[error("cannot listen on {listen}; choose another --listen")]
    Listen {
        listen: String,
        #[source]
        source: std::io::Error,
    },
    /// The bound listener has no local address.
    #[error(transparent)]
    LocalAddr(std::io::Error),
    #[error(transparent)]
    Postgres(#[from] PgError),
    #[error(transparent)]
    Flight(#[from] FlightListenError),
    #[error("serving the API")]
    Serve(#[source] std::io::Error),
}

impl From<EngineError> for ServerError {
    fn from(e: EngineError) -> Self {
        Self::Storage(Box::new(e))
    }
}

/// The API with its scheduled jobs, bound and ready to [`run`](Server::run).
pub struct Server {
    /// The address actually bound (the port is known here when 0 was asked for).
    pub addr: SocketAddr,
    pub catalog: Arc<Catalog>,
    listener: TcpListener,
    /// The Postgres wire protocol, when asked for.
    pub pg: Option<PgServer>,
    /// Arrow Flight SQL, when asked for.
    pub flight: Option<FlightServer>,
    state: AppState,
    schedule: Schedule,
}

impl Server {
    /// Creates the tables that are missing, opens the catalog and binds the listener.
    pub async fn start(
        storage: &Storage,
        config: &ServerConfig,
        auth: Auth,
    ) -> Result<Self, ServerError> {
        strata_engine::ensure_tables(storage).await?;
        let catalog = Catalog::open(storage).await?;
        let cache = Arc::new(ResultCache::new(config.cache_bytes));
        let registry = prometheus::Registry::new();
        let mut state = AppState::new(
            catalog.clone(),
            cache,
            auth,
            config.limits.clone(),
            registry,
        )
        .map_err(|e| ServerError::State(Box::new(e)))?;
        if !config.budgets.is_empty() {
            let metrics = crate::budget_metrics::BudgetMetrics::new(&state.registry)
                .map_err(|e| ServerError::State(Box::new(ApiError::Internal(e.to_string()))))?;
            let service = BudgetService::new(
                catalog.clone(),
                config.budgets.clone(),
                state.limits.query.clone(),
                LeaseHolder::this_process().id,
            )?
            .with_observer(Arc::new(metrics));
            state.budgets = Some(service);
        }
        // This server's metrics hear of every commit the process makes (rollups, purges,
        // maintenance); the first server of a process keeps them.
        strata_engine::delta::set_commit_observer(state.metrics.commits.clone());
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    listen: config.listen.clone(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
        let pg = match &config.pg {
            Some(options) => Some(PgServer::bind(state.clone(), options).await?),
            None => None,
        };
        let flight = match &config.flight_listen {
            Some(listen) => Some(FlightServer::bind(state.clone(), listen).await?),
            None => None,
        };
        Ok(Self {
            addr,
            catalog,
            listener,
            pg,
            flight,
            state,
            schedule: Schedule::of(config),
        })
    }

    /// Resumes unfinished GDPR requests, starts the scheduled jobs and serves until
    /// `shutdown` resolves.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        info!(addr = %self.addr, "serving");
        match crate::gdpr::resume(&self.state).await {
            Ok(0) => {}
            Ok(n) => info!(requests = n, "resuming unfinished GDPR requests"),
            Err(e) => warn!(error = ?e, "could not look for unfinished GDPR requests"),
        }
        let mut scheduler = Scheduler::start(
            self.catalog.clone(),
            &self.schedule,
            self.state.metrics.clone(),
        );
        if let Some(budgets) = &self.state.budgets {
            scheduler.tasks.push(tokio::spawn(budgets.clone().run()));
        }
        // The analysts' surfaces stop with the API.
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut surfaces = Vec::new();
        if let Some(pg) = self.pg {
            surfaces.push(tokio::spawn(pg.serve(stopped.clone())));
        }
        if let Some(flight) = self.flight {
            surfaces.push(tokio::spawn(flight.serve(stopped.clone())));
        }
        let result = crate::serve(self.listener, self.state, shutdown).await;
        let _ = stop.send(true);
        for surface in surfaces {
            // A Flight stream still open does not hold the process past a grace period.
            if tokio::time::timeout(Duration::from_secs(5), surface)
                .await
                .is_err()
            {
                warn!("an analysts' surface did not stop within 5 s");
            }
        }
        scheduler.stop();
        result.map_err(ServerError::Serve)
    }
}

/// What a server schedules: each job with a slot length, and its own health checks.
#[derive(Debug, Clone)]
struct Schedule {
    jobs: Vec<(ScheduledJob, Duration)>,
    table_health_every: Option<Duration>,
    maintenance: Arc<MaintenanceOptions>,
}

impl Schedule {
    fn of(config: &ServerConfig) -> Self {
        Self {
            jobs: ScheduledJob::ALL
                .into_iter()
                .filter_map(|job| config.every(job).map(|every| (job, every)))
                .collect(),
            table_health_every: config.table_health_every,
            maintenance: Arc::new(config.maintenance.clone()),
        }
    }
}

/// The running tasks of a [`Schedule`]; [`stop`](Scheduler::stop) aborts them (a job stopped
/// mid-run has committed all or nothing of each commit; its slot is not run again).
struct Scheduler {
    tasks: Vec<JoinHandle<()>>,
}

impl Scheduler {
    fn start(catalog: Arc<Catalog>, schedule: &Schedule, metrics: Arc<ApiMetrics>) -> Self {
        let holder = Arc::new(LeaseHolder::this_process());
        info!(holder = %holder.id, jobs = schedule.jobs.len(), "scheduler started");
        let mut tasks: Vec<JoinHandle<()>> = schedule
            .jobs
            .iter()
            .map(|&(job, every)| {
                tokio::spawn(run_job_slots(
                    JobContext {
                        catalog: catalog.clone(),
                        holder: holder.clone(),
                        maintenance: schedule.maintenance.clone(),
                        metrics: metrics.clone(),
                    },
                    job,
                    every,
                ))
            })
            .collect();
        if let Some(every) = schedule.table_health_every {
            tasks.push(tokio::spawn(check_table_health(catalog, metrics, every)));
        }
        Self { tasks }
    }

    fn stop(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// How long after a slot starts its claim is made: the sleep ends inside the slot even when
/// the wall clock and the timer disagree by a little.
const SLOT_MARGIN: Duration = Duration::from_millis(20);

/// What every job task of a server shares.
struct JobContext {
    catalog: Arc<Catalog>,
    holder: Arc<LeaseHolder>,
    maintenance: Arc<MaintenanceOptions>,
    metrics: Arc<ApiMetrics>,
}

/// Runs `job` in every slot of length `every` whose lease this server claims, from the
/// current slot on, until aborted. A slot missed while the previous run went on is skipped.
/// A failed run is recorded in `job_runs`; a failed claim (storage unreachable) skips the slot.
/// Both count in the job metrics; a slot another server holds does not.
async fn run_job_slots(cx: JobContext, job: ScheduledJob, every: Duration) {
    let JobContext {
        catalog,
        holder,
        maintenance,
        metrics,
    } = cx;
    let name = job.name();
    loop {
        match Lease::claim(catalog.storage(), &holder, name, every, Utc::now()).await {
            Ok(Some(lease)) => {
                let started = Instant::now();
                let outcome = run_scheduled(&catalog, job, &maintenance, &lease).await;
                metrics.jobs.record(job, outcome, started.elapsed());
                info!(
                    job = name,
                    slot = lease.slot.number,
                    runs = outcome.runs,
                    failed = outcome.failed,
                    "scheduled job done"
                );
            }
            Ok(None) => debug!(job = name, "another server holds this slot"),
            Err(e) => {
                metrics.jobs.record_claim_failure(job);
                warn!(job = name, error = %e, "claiming the slot failed; skipping it");
            }
        }
        sleep_until(Slot::at(every, Utc::now()).next_start()).await;
    }
}

async fn sleep_until(at: DateTime<Utc>) {
    let wait = (at - Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + SLOT_MARGIN).await;
}

/// Checks the health of every table now and then every `every`, until aborted, so that the
/// `strata_tables` view, the `table_health` panel and the `strata_table_*` metrics stay
/// current on this server.
async fn check_table_health(catalog: Arc<Catalog>, metrics: Arc<ApiMetrics>, every: Duration) {
    loop {
        match catalog.table_health().await {
            Ok(health) => metrics.tables.record(&health),
            Err(e) => warn!(error = %e, "table health check failed"),
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_job_has_its_interval_and_none_disables_it() {
        let config = ServerConfig::default();
        let schedule = Schedule::of(&config);
        assert_eq!(
            schedule.jobs,
            vec![
                (ScheduledJob::Rollups, ServerConfig::DEFAULT_ROLLUP_INTERVAL),
                (
                    ScheduledJob::Compaction,
                    ServerConfig::DEFAULT_COMPACT_INTERVAL
                ),
                (ScheduledJob::Vacuum, ServerConfig::DEFAULT_VACUUM_INTERVAL),
                (
                    ScheduledJob::Retention,
                    ServerConfig::DEFAULT_RETENTION_INTERVAL
                ),
            ]
        );
        let config = ServerConfig {
            rollup_every: None,
            vacuum_every: None,
            ..ServerConfig::default()
        };
        let jobs: Vec<_> = Schedule::of(&config)
            .jobs
            .into_iter()
            .map(|(j, _)| j)
            .collect();
        assert_eq!(
            jobs,
            vec![ScheduledJob::Compaction, ScheduledJob::Retention]
        );
    }
}
