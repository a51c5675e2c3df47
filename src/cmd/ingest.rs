use clap::Args;
use strata_engine::Storage;
use strata_ingest::{IngestMetrics, MetricsServer};

use crate::config::{
    ingest_options, shutdown_signal, FlushConfig, KafkaConfig, MetricsConfig, StorageConfig,
};

#[derive(Args, Debug)]
pub struct IngestArgs {
    #[command(flatten)]
    pub kafka: KafkaConfig,
    #[command(flatten)]
    pub storage: StorageConfig,
    #[command(flatten)]
    pub flush: FlushConfig,
    #[command(flatten)]
    pub metrics: MetricsConfig,
}

pub async fn run(args: IngestArgs) -> anyhow::Result<()> {
    let opts = ingest_options(&args.kafka, &args.flush)?;
    let storage = Storage::open(&args.storage.options()?).await?;
    let registry = prometheus::Registry::new();
    let metrics = IngestMetrics::new(&registry)?;
    if let Some(addr) = args.metrics.metrics_listen {
        MetricsServer::serve(addr, registry.clone()).await?;
    }
    let report = strata_ingest::run(opts, storage, metrics, shutdown_signal()).await?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
