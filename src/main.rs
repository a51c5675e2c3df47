//! `strata`: one binary for generation, ingest, SQL, the demo and benchmarks.

mod cmd;
mod config;
mod progress;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "strata",
    version,
    about = "Event-sourced analytics: Kafka -> Delta Lake -> SQL"
)]
struct Cli {
    #[command(flatten)]
    global: config::GlobalConfig,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of its largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Run everything on an embedded Kafka: produce events, ingest them, show the tables.
    Demo(cmd::demo::DemoArgs),
    /// Generate seeded synthetic events into a JSONL file or Kafka topics.
    Gen(cmd::gen::GenArgs),
    /// Consume the event topics into Delta tables, exactly once.
    Ingest(cmd::ingest::IngestArgs),
    /// Run SQL over the tables of a storage root: one statement, or an interactive session.
    Sql(cmd::sql::SqlArgs),
    /// Serve the HTTP API (panels, SQL, health, metrics) and the dashboard; runs the rollups on a schedule.
    Serve(cmd::serve::ServeArgs),
    /// Bring the rollup tables up to date (only the changed days), or rebuild them.
    Rollup(cmd::rollup::RollupArgs),
    /// Bin-pack the small files of busy partitions into files near a target size.
    Compact(cmd::compact::CompactArgs),
    /// Delete files no table version needs after a grace period; checkpoint and clean the log.
    Vacuum(cmd::vacuum::VacuumArgs),
    /// Remove the partitions older than each table's retention window.
    Retention(cmd::retention::RetentionArgs),
    /// The AI budgets now: spend, share, forecast, action and overrides of each.
    Budgets(cmd::budgets::BudgetsArgs),
    /// GDPR/CCPA: export or purge one data subject.
    #[command(subcommand)]
    Gdpr(cmd::gdpr::GdprCommand),
    /// Validate the configuration (file, STRATA_* variables, flags) and print it, secrets hidden.
    #[command(subcommand)]
    Config(cmd::config::ConfigCommand),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(cmd::token::TokenCommand),
    /// Measure throughput.
    #[command(subcommand)]
    Bench(cmd::bench::BenchCommand),
}

fn main() -> anyhow::Result<()> {
    // The config file becomes STRATA_* variables before clap reads them, while the process has
    // one thread.
    if let Err(e) = config::file::export_to_env() {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    let cli = Cli::parse();
    config::init_tracing(cli.global.log_format);
    // Worker stacks of 16 MiB (2 MiB by default): planning and optimising recurse once per
    // level of a statement's expression tree. The read-only gate bounds that depth; the larger
    // stack keeps a margin for the deepest statement it lets through.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 << 20)
        .build()?;
    let result = runtime.block_on(async {
        match cli.command {
            Command::Demo(a) => cmd::demo::run(a).await,
            Command::Gen(a) => cmd::gen::run(a).await,
            Command::Ingest(a) => cmd::ingest::run(a).await,
            Command::Sql(a) => cmd::sql::run(a).await,
            Command::Serve(a) => cmd::serve::run(a).await,
            Command::Rollup(a) => cmd::rollup::run(a).await,
            Command::Compact(a) => cmd::compact::run(a).await,
            Command::Vacuum(a) => cmd::vacuum::run(a).await,
            Command::Retention(a) => cmd::retention::run(a).await,
            Command::Budgets(a) => cmd::budgets::run(a).await,
            Command::Config(c) => cmd::config::run(c),
            Command::Token(c) => cmd::token::run(c),
            Command::Gdpr(c) => cmd::gdpr::run(c).await,
            Command::Bench(c) => cmd::bench::run(c).await,
        }
    });
    if let Err(e) = &result {
        eprintln!("error: {e:#}");
        std::process::exit(2);
    }
    // The command is done and everything it committed is durable: exit now rather than drop
    // the runtime under tasks still in flight. A Delta log read on a blocking thread (a
    // scheduler's refresh aborted at shutdown) panics when the runtime it waits on goes away,
    // which printed a panic into `strata serve`'s JSON logs on a clean stop.
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    std::process::exit(0);
}
