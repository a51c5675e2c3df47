pub mod bench;
pub mod budgets;
pub mod compact;
pub mod config;
pub mod demo;
pub mod gdpr;
pub mod gen;
pub mod ingest;
pub mod retention;
pub mod rollup;
pub mod serve;
pub mod sql;
pub mod token;
pub mod vacuum;

use strata_engine::maintenance::{maintained_tables, JobReport};

/// The tables a maintenance command works on: those named (each checked against the
/// registry), or every table Strata owns.
pub fn maintenance_tables(named: &[String]) -> anyhow::Result<Vec<String>> {
    let known = maintained_tables();
    if named.is_empty() {
        return Ok(known.iter().map(|t| t.to_string()).collect());
    }
    for t in named {
        if !known.contains(&t.as_str()) {
            anyhow::bail!("no table `{t}`; Strata's tables are {}", known.join(", "));
        }
    }
    Ok(named.to_vec())
}

/// The reports of a maintenance command on stdout: one JSON object per line with `json`,
/// else a table.
pub fn print_job_reports(reports: &[JobReport], json: bool) -> anyhow::Result<()> {
    if json {
        for r in reports {
            println!("{}", serde_json::to_string(r)?);
        }
        return Ok(());
    }
    println!(
        "{:<40} {:>10} {:>8} {:>8} {:>14} {:>14} {:>10}",
        "job", "partitions", "removed", "added", "bytes removed", "bytes added", "rows"
    );
    for r in reports {
        println!(
            "{:<40} {:>10} {:>8} {:>8} {:>14} {:>14} {:>10}{}",
            r.job,
            r.partitions.len(),
            r.files_removed,
            r.files_added,
            r.bytes_removed,
            r.bytes_added,
            r.rows,
            if r.dry_run { "  (dry run)" } else { "" }
        );
    }
    Ok(())
}
