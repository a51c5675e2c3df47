//! Two `strata serve` on one root with short job slots: each slot of each scheduled job runs on
//! one of them, never both (leases in the root), every run is in `job_runs`, and `/v1/tables`
//! and the `table_health` panel report every table's health.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use reqwest::header::AUTHORIZATION;
use reqwest::Client;
use serde_json::Value;

use super::server::{client, json, seed_root, tokens, Tokens};
use super::support::{spawn, sql, strata, test_dir, wait_for, Proc};

/// Slot lengths of the servers under test, in seconds.
const ROLLUP_SECS: u64 = 2;
const COMPACT_SECS: u64 = 2;
const VACUUM_SECS: u64 = 3;
const RETENTION_SECS: u64 = 3;
/// Compaction slots both servers live through before they stop.
const COMPACT_SLOTS: usize = 3;

/// The jobs recorded with their slot in `detail` (rollups keep their own record).
const SLOTTED: [&str; 3] = ["compact:", "vacuum:", "retention:"];

/// A `strata serve` with every job on short slots (`TestServer` turns the jobs off).
struct Replica {
    base: String,
    log: PathBuf,
    proc: Option<Proc>,
}

impl Replica {
    fn start(root: &Path, tokens: &Tokens, name: &str) -> Self {
        let log = root.with_extension(format!("{name}.log"));
        let mut args: Vec<String> = [
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--storage-url",
            root.to_str().unwrap(),
            "--refresh-ms",
            "0",
            "--table-health-interval-secs",
            "1",
        ]
        .map(String::from)
        .to_vec();
        for (flag, secs) in [
            ("--rollup-interval-secs", ROLLUP_SECS),
            ("--compact-interval-secs", COMPACT_SECS),
            ("--vacuum-interval-secs", VACUUM_SECS),
            ("--retention-interval-secs", RETENTION_SECS),
        ] {
            args.push(flag.to_string());
            args.push(secs.to_string());
        }
        let mut cmd = strata();
        cmd.args(&args).env("STRATA_TOKENS", tokens.lines.join(","));
        let proc = spawn(&mut cmd, "strata serve", &log);
        let mut base = String::new();
        wait_for("strata serve to listen", Duration::from_secs(60), || {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(rest) = text.split("listening on ").nth(1) {
                base = rest.split_whitespace().next().unwrap_or("").to_string();
            }
            !base.is_empty()
        });
        Self {
            base,
            log,
            proc: Some(proc),
        }
    }

    async fn get(&self, c: &Client, path: &str, token: &str, query: &[(&str, &str)]) -> Value {
        let resp = c
            .get(format!("{}{path}", self.base))
            .query(query)
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let (status, body) = json(resp).await;
        assert_eq!(status, 200, "{path}: {body}");
        body
    }

    fn stop(mut self) {
        let (status, _) = self.proc.take().unwrap().stop();
        assert!(status.success(), "strata serve exited with {status}");
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", self.log.display());
        }
    }
}

/// One row of `job_runs`, its `detail` parsed.
#[derive(Debug)]
struct Run {
    job: String,
    status: String,
    detail: Value,
}

fn runs(rows: &[Value]) -> Vec<Run> {
    rows.iter()
        .map(|r| Run {
            job: r["job"].as_str().unwrap().to_string(),
            status: r["status"].as_str().unwrap().to_string(),
            detail: serde_json::from_str(r["detail"].as_str().unwrap_or_default())
                .unwrap_or(Value::Null),
        })
        .collect()
}

fn slotted(job: &str) -> bool {
    SLOTTED.iter().any(|p| job.starts_with(p))
}

/// The distinct slots in which `compact:link_clicks` ran.
fn compact_slots(runs: &[Run]) -> usize {
    runs.iter()
        .filter(|r| r.job == "compact:link_clicks")
        .filter_map(|r| r.detail["slot"].as_u64())
        .collect::<BTreeSet<_>>()
        .len()
}

/// Most runs one job may have had in `elapsed` at one run per slot of `secs` seconds (a
/// partial slot at each end counts).
fn at_most(elapsed: Duration, secs: u64) -> usize {
    (elapsed.as_secs() / secs) as usize + 2
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_run_each_job_slot_once() {
    let dir = test_dir();
    let root = dir.path().join("root");
    seed_root(&root, 5_000);
    let storage = vec![
        "--storage-url".to_string(),
        root.to_str().unwrap().to_string(),
    ];
    let rollups_before = rollup_runs(&runs(&sql(&storage, JOB_RUNS)));
    let t = tokens();
    let c = client();

    let started = Instant::now();
    let a = Replica::start(&root, &t, "serve-a");
    let b = Replica::start(&root, &t, "serve-b");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let rows = a
            .get(
                &c,
                "/v1/sql",
                &t.sql,
                &[("q", JOB_RUNS), ("format", "json")],
            )
            .await;
        if compact_slots(&runs(rows.as_array().unwrap())) >= COMPACT_SLOTS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compaction ran in fewer than {COMPACT_SLOTS} slots in 180 s"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    check_table_health(&c, &t, &a, &b).await;
    a.stop();
    b.stop();
    let elapsed = started.elapsed();

    let all = runs(&sql(&storage, JOB_RUNS));
    check_each_slot_ran_once(&all, elapsed);
    let rollups = rollup_runs(&all) - rollups_before;
    assert!(rollups >= 1, "the scheduled rollups never ran");
    assert!(
        rollups <= at_most(elapsed, ROLLUP_SECS),
        "rollups ran {rollups} times in {elapsed:?}"
    );

    // The holders tidied up: only the last few slots' leases are left (one more when a server
    // stopped in the middle of tidying).
    for job in ["rollups", "compact", "vacuum", "retention"] {
        let leases = std::fs::read_dir(root.join("_strata/leases").join(job))
            .unwrap()
            .count() as u64;
        assert!(
            (1..=strata_engine::lease::KEEP_SLOTS + 2).contains(&leases),
            "{leases} leases of {job} left"
        );
    }
}

const JOB_RUNS: &str = "SELECT job, status, detail FROM job_runs";

/// Runs of one rollup (each rollup run writes one row per rollup).
fn rollup_runs(runs: &[Run]) -> usize {
    runs.iter()
        .filter(|r| r.job == "rollup:click_stats_daily")
        .count()
}

/// `/v1/tables` (on `b`) lists every table `strata_tables` (on `a`) has, with sane figures;
/// the `table_health` panel shows them too.
async fn check_table_health(c: &Client, t: &Tokens, a: &Replica, b: &Replica) {
    let names: BTreeSet<String> = a
        .get(
            c,
            "/v1/sql",
            &t.sql,
            &[("q", "SELECT table_name FROM strata_tables")],
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["table_name"].as_str().unwrap().to_string())
        .collect();
    let health = b.get(c, "/v1/tables", &t.panels, &[]).await;
    assert_eq!(health["small_file_bytes"].as_u64(), Some(32 << 20));
    let tables = health["tables"].as_array().unwrap();
    let listed: BTreeSet<String> = tables
        .iter()
        .map(|h| h["table"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, names);
    for h in tables {
        let n = |k: &str| h[k].as_u64().unwrap_or_else(|| panic!("{k} in {h}"));
        assert!(n("small_files") <= n("files"), "{h}");
        assert!(n("commits_since_checkpoint") <= n("version") + 1, "{h}");
        assert!(n("vacuum_bytes") == 0 || n("vacuum_files") > 0, "{h}");
        if let Some(p) = h["largest_partition"].as_object() {
            assert!(p["files"].as_u64().unwrap() <= n("files"), "{h}");
        }
    }
    let clicks = tables.iter().find(|h| h["table"] == "link_clicks").unwrap();
    assert!(clicks["files"].as_u64().unwrap() > 0, "{clicks}");
    assert!(clicks["bytes"].as_u64().unwrap() > 0, "{clicks}");
    let largest = &clicks["largest_partition"];
    let partition = largest["partition"].as_str().unwrap();
    assert!(partition.starts_with("event_date="), "{clicks}");
    assert!(largest["files"].as_u64().unwrap() >= 1, "{clicks}");

    // Each server checks its tables every second: the panel has figures.
    let panel = a.get(c, "/v1/panels/table_health", &t.panels, &[]).await;
    let row = panel["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["table_name"] == "link_clicks")
        .cloned()
        .unwrap();
    assert!(row["files"].as_u64().unwrap() > 0, "{panel}");
}

/// Every compaction, vacuum and retention run was ok, names its slot and holder, and no
/// (job, slot) ran twice; each job ran, at most once per slot of the time the servers ran.
fn check_each_slot_ran_once(all: &[Run], elapsed: Duration) {
    let mut per_slot: BTreeMap<(String, u64), usize> = BTreeMap::new();
    let mut per_job: BTreeMap<String, usize> = BTreeMap::new();
    for run in all.iter().filter(|r| slotted(&r.job)) {
        assert_eq!(run.status, "ok", "{run:?}");
        let slot = run.detail["slot"]
            .as_u64()
            .unwrap_or_else(|| panic!("no slot in {run:?}"));
        assert!(run.detail["holder"].is_string(), "{run:?}");
        for key in [
            "files_added",
            "files_removed",
            "bytes_added",
            "bytes_removed",
        ] {
            assert!(run.detail[key].is_u64(), "{key} in {run:?}");
        }
        *per_slot.entry((run.job.clone(), slot)).or_default() += 1;
        *per_job.entry(run.job.clone()).or_default() += 1;
    }
    let twice: Vec<_> = per_slot.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "slots run twice: {twice:?}");
    // Retention may have nothing to report on a root without expired days; its leases show
    // it ran.
    for prefix in ["compact:", "vacuum:"] {
        assert!(
            per_job.keys().any(|j| j.starts_with(prefix)),
            "no {prefix} run: {per_job:?}"
        );
    }
    for (job, n) in &per_job {
        let secs = if job.starts_with("compact:") {
            COMPACT_SECS
        } else if job.starts_with("vacuum:") {
            VACUUM_SECS
        } else {
            RETENTION_SECS
        };
        assert!(
            *n <= at_most(elapsed, secs),
            "{job} ran {n} times in {elapsed:?}"
        );
    }
}
