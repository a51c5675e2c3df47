use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use strata_engine::{Catalog, ResultCache, RollupBuilder, Storage};
use strata_query_api::AppState;
use tracing::{info, warn};

use crate::config::{shutdown_signal, ApiConfig, StorageConfig};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub api: ApiConfig,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let storage = Storage::open(&args.storage.options()?).await?;
    let auth = args.api.auth(vec![])?;
    if auth.is_empty() {
        anyhow::bail!(
            "no API tokens configured: make one with `strata token new --name me --scopes panels,sql` and pass its line with --token (or STRATA_TOKENS)"
        );
    }
    let server = Server::start(&storage, &args.api, auth).await?;
    eprintln!("strata serve: listening on http://{}", server.addr);
    server.run(shutdown_signal()).await
}

/// The API with its scheduled rollups: shared by `strata serve` and `strata demo`.
pub struct Server {
    pub addr: std::net::SocketAddr,
    pub catalog: Arc<Catalog>,
    listener: tokio::net::TcpListener,
    state: AppState,
    rollup_every: Option<Duration>,
}

impl Server {
    pub async fn start(
        storage: &Storage,
        api: &ApiConfig,
        auth: strata_query_api::Auth,
    ) -> anyhow::Result<Self> {
        strata_engine::ensure_tables(storage).await?;
        let catalog = Catalog::open(storage).await?;
        let cache = Arc::new(ResultCache::new(api.cache_mb.max(1) << 20));
        let registry = prometheus::Registry::new();
        let state = AppState::new(catalog.clone(), cache, auth, api.limits(), registry)
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let listener = tokio::net::TcpListener::bind(&api.listen)
            .await
            .with_context(|| format!("cannot listen on {}; choose another --listen", api.listen))?;
        let addr = listener.local_addr()?;
        Ok(Self {
            addr,
            catalog,
            listener,
            state,
            rollup_every: (api.rollup_interval_secs > 0)
                .then(|| Duration::from_secs(api.rollup_interval_secs)),
        })
    }

    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        info!(addr = %self.addr, "serving");
        match strata_query_api::gdpr::resume(&self.state).await {
            Ok(0) => {}
            Ok(n) => info!(requests = n, "resuming unfinished GDPR requests"),
            Err(e) => warn!(error = ?e, "could not look for unfinished GDPR requests"),
        }
        let scheduler = self.rollup_every.map(|every| {
            let catalog = self.catalog.clone();
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
        });
        let result = strata_query_api::serve(self.listener, self.state, shutdown).await;
        if let Some(s) = scheduler {
            s.abort();
        }
        result.context("serving the API")
    }
}
