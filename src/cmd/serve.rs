//! `strata serve`: flags to a [`strata_query_api::Server`], run until SIGINT or SIGTERM.

use clap::Args;
use strata_engine::Storage;
use strata_query_api::Server;

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
    let auth = args.api.auth()?;
    if auth.is_empty() {
        anyhow::bail!(
            "no API tokens configured: make one with `strata token new --name me --scopes panels,sql` and pass its line with --token (or STRATA_TOKENS)"
        );
    }
    let server = Server::start(&storage, &args.api.server(), auth).await?;
    eprintln!("strata serve: listening on http://{}", server.addr);
    server.run(shutdown_signal()).await?;
    Ok(())
}
