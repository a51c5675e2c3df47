use std::io::{BufRead, IsTerminal, Write};

use clap::Args;
use strata_engine::{write_batches, OutputFormat, SqlSession, Storage};

use crate::config::StorageConfig;

#[derive(Args, Debug)]
pub struct SqlArgs {
    /// The statement. Tables are addressed by name (link_clicks, ai_usage, dead_letters, ...).
    /// Without it, an interactive session reads statements ending in `;` from standard input.
    pub statement: Option<String>,
    /// Output: table, csv or json (one object per line).
    #[arg(long, default_value = "table")]
    pub format: OutputFormat,
    #[command(flatten)]
    pub storage: StorageConfig,
}

pub async fn run(args: SqlArgs) -> anyhow::Result<()> {
    let storage = Storage::open(&args.storage.options()?).await?;
    let session = SqlSession::open(&storage).await?;
    match &args.statement {
        Some(sql) => run_one(&session, sql, args.format).await,
        None => interactive(&session, args.format).await,
    }
}

async fn run_one(session: &SqlSession, sql: &str, format: OutputFormat) -> anyhow::Result<()> {
    let (schema, batches) = session.query(sql).await?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write_batches(&mut out, format, &schema, &batches)?;
    Ok(())
}

/// A small REPL: statements end with `;`; `\d` lists tables; `\q` or end of input quits.
/// Each statement sees the commits made since the previous one.
async fn interactive(session: &SqlSession, format: OutputFormat) -> anyhow::Result<()> {
    let tty = std::io::stdin().is_terminal();
    if tty {
        eprintln!(
            "strata sql: {} tables ({}). End statements with `;`, \\d lists tables, \\q quits.",
            session.tables().len(),
            session.tables().join(", ")
        );
    }
    let stdin = std::io::stdin();
    let mut buf = String::new();
    let prompt = |cont: bool| {
        if tty {
            eprint!("{}", if cont { "   ...> " } else { "strata> " });
            let _ = std::io::stderr().flush();
        }
    };
    prompt(false);
    for line in stdin.lock().lines() {
        let line = line?;
        let trimmed = line.trim();
        if buf.is_empty() && (trimmed == "\\q" || trimmed == "exit" || trimmed == "quit") {
            break;
        }
        if buf.is_empty() && trimmed == "\\d" {
            session.refresh().await?;
            println!("{}", session.tables().join("\n"));
            prompt(false);
            continue;
        }
        buf.push_str(&line);
        buf.push('\n');
        if trimmed.ends_with(';') {
            let sql = std::mem::take(&mut buf);
            session.refresh().await?;
            let started = std::time::Instant::now();
            match run_one(session, sql.trim().trim_end_matches(';'), format).await {
                Ok(()) if tty => eprintln!("({:.3} s)", started.elapsed().as_secs_f64()),
                Ok(()) => {}
                Err(e) => eprintln!("error: {e:#}"),
            }
        }
        prompt(!buf.is_empty());
    }
    if !buf.trim().is_empty() {
        run_one(session, buf.trim().trim_end_matches(';'), format).await?;
    }
    Ok(())
}
