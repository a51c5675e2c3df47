//! `strata retention`, `strata compact` and `strata vacuum` on roots written by `strata gen`,
//! checked with `strata sql`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

use crate::support::*;

/// `strata gen` of `events` events over `days` days ending 2026-11-01 into `root`.
fn gen_into(root: &[String], seed: u64, events: u64, days: u32) {
    run_ok(
        strata()
            .args(["gen", "--seed", &seed.to_string()])
            .args(["--events", &events.to_string()])
            .args(["--days", &days.to_string(), "--end-date", "2026-11-01"])
            .args(root),
    );
}

/// The JSON reports a maintenance command printed with `--json`.
fn reports(cmd: &mut Command) -> Vec<Value> {
    run_ok(cmd.arg("--json"))
        .lines()
        .filter(|l| l.trim_start().starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn report<'a>(reports: &'a [Value], job: &str) -> Option<&'a Value> {
    reports.iter().find(|r| r["job"] == job)
}

fn partitions(report: &Value) -> Vec<String> {
    report["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect()
}

/// Parquet files under a local directory, at any depth.
fn parquet_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        parquet_files(&p)
                    } else {
                        usize::from(p.extension().is_some_and(|x| x == "parquet"))
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[test]
fn a_rollup_past_the_jobs_memory_fails_saying_so_and_runs_once_there_is_room() {
    let dir = test_dir();
    let root = local_storage(dir.path());
    // 100k events on two days: a day's grouping reserves more than 1 MiB.
    gen_into(&root, 7, 100_000, 2);
    let out = run_err(
        strata()
            .arg("rollup")
            .env("STRATA_JOBS_MEMORY_MB", "1")
            .args(&root),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the jobs' memory is used up") && err.contains("the limit is 1048576 bytes"),
        "{err}"
    );
    assert!(
        err.contains("--jobs-memory-mb"),
        "the error names the setting: {err}"
    );
    // The run stops at the first rollup that fails, and records it.
    let runs = sql(&root, "SELECT job, status, detail FROM job_runs");
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["job"], "rollup:click_stats_daily");
    assert_eq!(runs[0]["status"], "failed");
    assert!(runs[0]["detail"]
        .as_str()
        .unwrap()
        .contains("--jobs-memory-mb"));
    assert_eq!(
        count(&root, "SELECT count(*) AS n FROM click_stats_daily"),
        0
    );

    // With the default pool the same run completes: every click is counted once.
    run_ok(strata().arg("rollup").args(&root));
    let clicks = count(&root, "SELECT count(*) AS n FROM link_clicks");
    assert!(clicks > 50_000, "{clicks}");
    let rolled = "SELECT CAST(sum(clicks) AS BIGINT) AS n FROM click_stats_daily";
    assert_eq!(count(&root, rolled), clicks);
}

#[test]
fn retention_lists_then_removes_exactly_the_expired_days_and_keeps_the_rollups() {
    let dir = test_dir();
    let root = local_storage(dir.path());
    // 2026-10-12 .. 2026-10-31; on 2027-11-26 link_clicks (400 days) keeps 2026-10-22 on.
    gen_into(&root, 7, 4000, 20);
    run_ok(strata().arg("rollup").args(&root));
    let old = "SELECT count(*) AS n FROM link_clicks WHERE event_date < DATE '2026-10-22'";
    let kept = "SELECT count(*) AS n FROM link_clicks WHERE event_date >= DATE '2026-10-22'";
    let rollup_old =
        "SELECT count(*) AS n FROM click_stats_daily WHERE event_date < DATE '2026-10-22'";
    let (old_rows, kept_rows) = (count(&root, old), count(&root, kept));
    let rollup_rows = count(&root, rollup_old);
    assert!(old_rows > 0 && kept_rows > 0 && rollup_rows > 0);
    let expired: Vec<String> = (12..22)
        .map(|d| format!("event_date=2026-10-{d}"))
        .collect();
    let today = ["--today", "2027-11-26"];

    let dry = reports(
        strata()
            .args(["retention", "--dry-run"])
            .args(today)
            .args(&root),
    );
    let clicks = report(&dry, "retention:link_clicks").expect("link_clicks expires");
    assert_eq!(clicks["dry_run"], true);
    assert_eq!(partitions(clicks), expired);
    assert_eq!(int(clicks, "rows"), old_rows);
    assert!(int(clicks, "files_removed") >= 10 && int(clicks, "bytes_removed") > 0);
    assert!(
        report(&dry, "retention:ai_usage").is_none(),
        "ai_usage keeps 762 days"
    );
    assert_eq!(count(&root, old), old_rows, "a dry run removes nothing");

    let done = reports(strata().arg("retention").args(today).args(&root));
    let clicks_done = report(&done, "retention:link_clicks").unwrap();
    assert_eq!(clicks_done["dry_run"], false);
    assert_eq!(partitions(clicks_done), expired);
    assert_eq!(
        int(clicks_done, "files_removed"),
        int(clicks, "files_removed")
    );
    assert_eq!(count(&root, old), 0);
    assert_eq!(count(&root, kept), kept_rows);
    for p in &expired {
        assert_eq!(
            parquet_files(&dir.path().join("tables/link_clicks").join(p)),
            0,
            "{p}: expired files are deleted at once"
        );
    }

    // The rollup days of the expired days stay, also once the rollups have run again.
    run_ok(strata().arg("rollup").args(&root));
    assert_eq!(count(&root, rollup_old), rollup_rows);
    let again = reports(strata().arg("retention").args(today).args(&root));
    assert!(report(&again, "retention:link_clicks").is_none());
}

#[test]
fn compaction_keeps_every_row_and_vacuum_deletes_only_what_no_version_references() {
    let dir = test_dir();
    let root = local_storage(dir.path());
    // Three runs: three small files in each of the two days.
    for seed in [1, 2, 3] {
        gen_into(&root, seed, 1500, 2);
    }
    let rows = "SELECT count(*) AS n FROM link_clicks";
    let ids = "SELECT count(DISTINCT event_id) AS n FROM link_clicks";
    let (rows_before, ids_before) = (count(&root, rows), count(&root, ids));
    let table_dir = dir.path().join("tables/link_clicks");
    assert_eq!(parquet_files(&table_dir), 6);

    let compact = ["compact", "--table", "link_clicks", "--min-files", "2"];
    let done = reports(strata().args(compact).args(&root));
    let r = report(&done, "compact:link_clicks").unwrap();
    assert_eq!(int(r, "files_removed"), 6);
    assert_eq!(int(r, "files_added"), 2);
    assert_eq!(int(r, "rows"), rows_before);
    assert_eq!(
        partitions(r),
        vec!["event_date=2026-10-30", "event_date=2026-10-31"]
    );
    assert_eq!(count(&root, rows), rows_before);
    assert_eq!(count(&root, ids), ids_before);
    let again = reports(strata().args(compact).args(&root));
    assert_eq!(
        int(&again[0], "files_removed"),
        0,
        "nothing left to compact"
    );

    // The six removed files wait for their grace period; with none, a dry run lists them.
    let vacuum = ["vacuum", "--table", "link_clicks", "--grace-hours", "0"];
    let listed = reports(strata().args(vacuum).arg("--dry-run").args(&root));
    assert_eq!(int(&listed[0], "files_removed"), 6);
    assert_eq!(parquet_files(&table_dir), 8);
    let kept = reports(
        strata()
            .args(["vacuum", "--table", "link_clicks"])
            .args(&root),
    );
    assert_eq!(
        int(&kept[0], "files_removed"),
        0,
        "within the default grace of 7 days"
    );
    let vacuumed = reports(strata().args(vacuum).args(&root));
    assert_eq!(int(&vacuumed[0], "files_removed"), 6);
    assert_eq!(parquet_files(&table_dir), 2);
    assert_eq!(count(&root, rows), rows_before);
}
