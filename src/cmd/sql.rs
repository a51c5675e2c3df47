use clap::Args;
use strata_engine::{write_batches, OutputFormat, SqlSession, Storage};

use crate::config::StorageConfig;

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// The statement. Tables are addressed by name (link_clicks, ai_usage, dead_letters, ...).
    pub statement: String,
    /// Output: table, csv or json (one object per line).
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
    #[command(flatten)]
    pub storage: StorageConfig,
}

pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let storage = Storage::open(&args.storage.options()?).await?;
    let session = SqlSession::open(&storage).await?;
    let (schema, batches) = session.query(&args.statement).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write_batches(&mut out, args.format, &schema, &batches)?;
    Ok(())
}
