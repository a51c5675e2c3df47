//! `strata serve`: flags to a [`strata_query_api::Server`], run until SIGINT or SIGTERM.

use clap::Args;
use strata_engine::Storage;
use strata_query_api::Server;

use crate::config::{shutdown_signal, ApiConfig, BudgetsConfig, RetentionConfig, StorageConfig};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub api: ApiConfig,
    #[command(flatten)]
    pub retention: RetentionConfig,
    #[command(flatten)]
    pub budgets: BudgetsConfig,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = args.api.server();
    config.maintenance.retention = args.retention.policy()?;
    config.budgets = args.budgets.budgets()?;
    let storage = Storage::open(&args.storage.options()?).await?;
    let auth = args.api.auth()?;
    if auth.is_empty() {
        anyhow::bail!(
            "no API tokens configured: make one with `strata token new --name me --scopes panels,sql` and pass its line with --token (or STRATA_TOKENS, or tokens under [api] in the config file)"
        );
    }
    let server = Server::start(&storage, &config, auth).await?;
    eprintln!("strata serve: listening on http://{}", server.addr);
    if let Some(pg) = &server.pg {
        eprintln!("strata serve: Postgres wire protocol on {}", pg.addr);
    }
    if let Some(flight) = &server.flight {
        eprintln!("strata serve: Arrow Flight SQL on grpc://{}", flight.addr);
    }
    server.run(shutdown_signal()).await?;
    Ok(())
}
