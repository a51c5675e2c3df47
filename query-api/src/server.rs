//! The running server: the API on its listener, the rollups on a schedule, and the GDPR
//! requests a previous process left unfinished resumed at start-up. `strata serve` and
//! `strata demo` both run it.
//!
//! ```text
//! ServerConfig --start--> tables ensured -> Catalog -> AppState -> bound listener
//!              --run-->   resume GDPR requests; rollups every `rollup_every`; serve to shutdown
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strata_engine::{Catalog, EngineError, ResultCache, RollupBuilder, Storage};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use crate::{ApiError, ApiLimits, AppState, Auth};

/// What a server is started with besides its storage root and tokens. `Default` gives the
/// documented defaults; each is declared once, as a `DEFAULT_*` constant below.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the API and dashboard listen on (port 0 picks a free port).
    pub listen: String,
    /// Memory for cached panel and SQL results, in bytes.
    pub cache_bytes: usize,
    /// Time between scheduled rollup runs; `None`: never.
    pub rollup_every: Option<Duration>,
    pub limits: ApiLimits,
}

impl ServerConfig {
    pub const DEFAULT_LISTEN: &'static str = "127.0.0.1:8080";
    /// Memory for cached results, in MiB.
    pub const DEFAULT_CACHE_MB: usize = 256;
    pub const DEFAULT_ROLLUP_INTERVAL: Duration = Duration::from_secs(60);
    /// Requests per second each token may make on average (the rate of the [`Auth`] a server
    /// is usually given).
    pub const DEFAULT_TOKEN_RATE_PER_SEC: f64 = 50.0;
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: Self::DEFAULT_LISTEN.into(),
            cache_bytes: Self::DEFAULT_CACHE_MB << 20,
            rollup_every: Some(Self::DEFAULT_ROLLUP_INTERVAL),
            limits: ApiLimits::default(),
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
    #[error("serving the API")]
    Serve(#[source] std::io::Error),
}

impl From<EngineError> for ServerError {
    fn from(e: EngineError) -> Self {
        Self::Storage(Box::new(e))
    }
}

/// The API with its scheduled rollups, bound and ready to [`run`](Server::run).
pub struct Server {
    /// The address actually bound (the port is known here when 0 was asked for).
    pub addr: SocketAddr,
    pub catalog: Arc<Catalog>,
    listener: TcpListener,
    state: AppState,
    rollup_every: Option<Duration>,
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
        let state = AppState::new(
            catalog.clone(),
            cache,
            auth,
            config.limits.clone(),
            registry,
        )
        .map_err(|e| ServerError::State(Box::new(e)))?;
        let listener =
            TcpListener::bind(&config.listen)
                .await
                .map_err(|source| ServerError::Listen {
                    listen: config.listen.clone(),
                    source,
                })?;
        let addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
        Ok(Self {
            addr,
            catalog,
            listener,
            state,
            rollup_every: config.rollup_every,
        })
    }

    /// Resumes unfinished GDPR requests, starts the rollup schedule and serves until
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
        let scheduler = self
            .rollup_every
            .map(|every| schedule_rollups(self.catalog.clone(), every));
        let result = crate::serve(self.listener, self.state, shutdown).await;
        if let Some(s) = scheduler {
            s.abort();
        }
        result.map_err(ServerError::Serve)
    }
}

/// Brings the rollups up to date now and then every `every` after a run ends, until aborted.
/// A failed run is logged and retried at the next tick.
fn schedule_rollups(catalog: Arc<Catalog>, every: Duration) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match RollupBuilder::new(catalog.clone()).run().await {
                Ok(reports) => {
                    let days: usize = reports.iter().map(|r| r.dates.len()).sum();
                    info!(days, "scheduled rollups done");
                }
                Err(e) => warn!(error = %e, "scheduled rollup failed"),
            }
            tokio::time::sleep(every).await;
        }
    })
}
