//! A bounded soak: `strata ingest` with short flushes (many small files) and one `strata serve`
//! with short job slots (rollups, compaction, vacuum, retention) run against a producer sending
//! a known set of events at a steady pace, with a GDPR purge over HTTP midway. At the end every
//! kept event is in the tables once, the expired days are gone, the subject is gone, no job
//! failed, and a last compaction leaves one file per partition.
//!
//! ```text
//! producer --clicks, ai_usage (kept users, expired days, the subject, malformed)--> tansu
//!   --> strata ingest (flush every 300 ms) --> root <-- strata serve (slots of 2-4 s)
//!                                                  <-- POST /v1/gdpr/purges (midway)
//! ```

use std::collections::HashSet;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeDelta, Utc};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use reqwest::header::AUTHORIZATION;
use reqwest::Client;
use serde_json::Value;
use strata_query_api::{new_token, Scope};

use super::gdpr_race::{ai_call, send};
use super::gdpr_support::{click, dead_letters_of, gdpr_scan, rows_of};
use super::server::{bearer, client, get_as, json as response_json, send as http_send};
use super::support::{
    count, free_port, int, local_storage, produce, run_ok, spawn, sql, strata, test_dir, wait_for,
    Proc, Tansu,
};

/// The subject purged midway; their events keep coming after the purge (late events, all
/// dated before it), and ingest must drop them.
const SUBJECT: &str = "u-soak-gone";
const SESSION: &str = "s-soak";
/// Rounds the producer sends, one every `PACE`: about 25 s of traffic.
const ROUNDS: u64 = 1_000;
const PACE: Duration = Duration::from_millis(25);
const KEPT_USERS: u64 = 40;
/// Kept events are dated today and up to this many days back minus one (late events).
const LATE_DAYS: u64 = 6;
/// The retention of `link_clicks` and `ai_usage` in this soak...
const RETENTION_DAYS: u32 = 30;
/// ...and how old the expired events are (up to three days more).
const EXPIRED_AGE_DAYS: i64 = 40;
/// Job slots of the server, in seconds.
const SLOTS: [(&str, u64); 4] = [
    ("--rollup-interval-secs", 3),
    ("--compact-interval-secs", 2),
    ("--vacuum-interval-secs", 4),
    ("--retention-interval-secs", 3),
];

/// What the producer sent, grouped by what the end state must show of it.
#[derive(Debug, Default)]
struct Sent {
    /// Event ids of the kept users' events: in the tables once each.
    kept_clicks: HashSet<String>,
    kept_ai: HashSet<String>,
    /// Events dated before the retention window (users `u-old-*`): removed by retention.
    expired: u64,
    /// The subject's messages, valid and malformed: purged, or dropped by ingest.
    subject: u64,
    /// Malformed messages keyed by kept users: dead letters, once each.
    malformed: u64,
}

impl Sent {
    /// Round `i` of the traffic: one click and one AI call of a kept user each round, now
    /// and then an expired event, one of the subject's and a malformed message.
    fn round(&mut self, p: &BaseProducer, i: u64) {
        let now = Utc::now();
        let user = format!("u-keep-{}", i % KEPT_USERS);
        let late = now - TimeDelta::days((i % LATE_DAYS) as i64) - TimeDelta::minutes(5);
        self.kept_clicks
            .insert(send_event(p, "clicks", &user, click(&user, SESSION, late)));
        self.kept_ai
            .insert(send_event(p, "ai_usage", &user, ai_call(&user, late)));
        if i.is_multiple_of(5) {
            let old = format!("u-old-{}", i % 7);
            let at = now - TimeDelta::days(EXPIRED_AGE_DAYS + (i % 4) as i64);
            send_event(p, "clicks", &old, click(&old, SESSION, at));
            send_event(p, "ai_usage", &old, ai_call(&old, at));
            self.expired += 2;
        }
        if i.is_multiple_of(4) {
            let at = now - TimeDelta::hours(2) - TimeDelta::days((i % 3) as i64);
            send_event(p, "clicks", SUBJECT, click(SUBJECT, SESSION, at));
            send_event(p, "ai_usage", SUBJECT, ai_call(SUBJECT, at));
            self.subject += 2;
        }
        if i.is_multiple_of(25) {
            send(p, "clicks", &user, &malformed(&user, i));
            self.malformed += 1;
        }
        if i.is_multiple_of(50) {
            send(p, "clicks", SUBJECT, &malformed(SUBJECT, i));
            self.subject += 1;
        }
    }
}

/// Sends one valid event and returns its id.
fn send_event(p: &BaseProducer, topic: &str, key: &str, payload: String) -> String {
    send(p, topic, key, &payload);
    let event: Value = serde_json::from_str(&payload).unwrap();
    event["event_id"].as_str().unwrap().to_string()
}

/// A message ingest cannot take: not JSON, or JSON without an event id.
fn malformed(user: &str, i: u64) -> String {
    if i.is_multiple_of(2) {
        format!("user={user};broken")
    } else {
        serde_json::json!({ "schema_version": 1, "occurred_at": Utc::now().to_rfc3339(), "user_id": user })
            .to_string()
    }
}

/// Sends `ROUNDS` rounds at a steady pace, counting them in `done`; returns what it sent.
fn produce_steadily(brokers: &str, done: &AtomicU64) -> Sent {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let mut sent = Sent::default();
    for i in 0..ROUNDS {
        sent.round(&producer, i);
        done.store(i + 1, Ordering::SeqCst);
        // Serves delivery reports without waiting, then keeps the pace.
        producer.poll(Duration::ZERO);
        std::thread::sleep(PACE);
    }
    producer.flush(Duration::from_secs(30)).unwrap();
    sent
}

/// `strata serve` on the root with short job slots and a `RETENTION_DAYS` retention of the
/// raw tables; its base URL. (`TestServer` turns the jobs off.)
fn serve(storage: &[String], token_line: &str, log: &Path) -> (Proc, String) {
    let port = free_port();
    let mut cmd = strata();
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--refresh-ms", "0"])
        .args(storage);
    for (flag, secs) in SLOTS {
        cmd.arg(flag).arg(secs.to_string());
    }
    for table in ["link_clicks", "ai_usage"] {
        cmd.arg("--retention-days")
            .arg(format!("{table}={RETENTION_DAYS}"));
    }
    cmd.env("STRATA_TOKENS", token_line);
    let proc = spawn(&mut cmd, "strata serve", log);
    wait_for("strata serve to listen", Duration::from_secs(60), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (proc, format!("http://127.0.0.1:{port}"))
}

/// `POST /v1/gdpr/purges` of the subject, then its request polled until done (two minutes at
/// most): the finished request.
async fn purge_over_http(c: &Client, base: &str, token: &str) -> Value {
    let body = serde_json::json!({ "subject": SUBJECT }).to_string();
    let post = c
        .post(format!("{base}/v1/gdpr/purges"))
        .header(AUTHORIZATION, bearer(token))
        .body(body);
    let (status, accepted) = response_json(http_send(post).await).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["request_id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let url = format!("{base}/v1/gdpr/requests/{id}");
        let (status, request) = response_json(get_as(c, url, token).await).await;
        assert_eq!(status, 200, "{request}");
        match request["status"].as_str() {
            Some("done") => return request,
            Some("failed") => panic!("the purge failed: {request}"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "the purge did not finish within two minutes: {request}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rows of the kept users in each raw table (`clicks`, `ai`, `dead`).
const KEPT_ROWS: &str = "SELECT \
    (SELECT count(*) FROM link_clicks WHERE user_id LIKE 'u-keep-%') AS clicks, \
    (SELECT count(*) FROM ai_usage WHERE user_id LIKE 'u-keep-%') AS ai, \
    (SELECT count(*) FROM dead_letters WHERE key LIKE 'u-keep-%') AS dead";
const EXPIRED_ROWS: &str = "SELECT \
    (SELECT count(*) FROM link_clicks WHERE user_id LIKE 'u-old-%') + \
    (SELECT count(*) FROM ai_usage WHERE user_id LIKE 'u-old-%') AS n";

/// The first row `q` answers through `strata sql`, or None when the query lost a race with a
/// deletion: retention and purges delete the files they remove at once, so a query planned on
/// the version before fails on them (by design, docs/operations/gdpr.md); the next poll reads
/// the new version. Any other failure fails the test.
fn poll_row(storage: &[String], q: &str) -> Option<Value> {
    let out = strata()
        .args(["sql", q, "--format", "json"])
        .args(storage)
        .output()
        .unwrap();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not found"), "{q}: {err}");
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    Some(serde_json::from_str(line).unwrap())
}

/// Rows of the subject in each raw table (`clicks`, `ai`, `dead`).
fn subject_rows() -> String {
    format!(
        "SELECT \
        (SELECT count(*) FROM link_clicks WHERE user_id = '{SUBJECT}') AS clicks, \
        (SELECT count(*) FROM ai_usage WHERE user_id = '{SUBJECT}') AS ai, \
        ({}) AS dead",
        dead_letters_of(SUBJECT)
    )
}

/// Whether `row` has more than 0 in each of `clicks`, `ai` and `dead`.
fn in_every_table(row: &Value) -> bool {
    ["clicks", "ai", "dead"].iter().all(|k| int(row, k) > 0)
}

/// Waits until every kept event and every kept user's malformed message is in; fails at once
/// on more rows than were sent (a duplicate).
fn wait_caught_up(storage: &[String], sent: &Sent) {
    let want = [
        sent.kept_clicks.len() as u64,
        sent.kept_ai.len() as u64,
        sent.malformed,
    ];
    wait_for("ingest to catch up", Duration::from_secs(120), || {
        let Some(r) = poll_row(storage, KEPT_ROWS) else {
            return false;
        };
        let have = [int(&r, "clicks"), int(&r, "ai"), int(&r, "dead")];
        assert!(
            have.iter().zip(&want).all(|(h, w)| h <= w),
            "more rows than events (duplicates): {have:?} > {want:?}"
        );
        have == want
    });
}

/// The end state: every kept event once and nothing else, the kept users' malformed messages
/// as dead letters once each, nothing of the expired days or of the subject.
fn assert_end_state(storage: &[String], sent: &Sent, when: &str) {
    assert_eq!(count(storage, EXPIRED_ROWS), 0, "{when}: expired rows left");
    assert_eq!(
        rows_of(storage, SUBJECT),
        [0, 0, 0],
        "{when}: the subject is back"
    );
    for (table, ids) in [
        ("link_clicks", &sent.kept_clicks),
        ("ai_usage", &sent.kept_ai),
    ] {
        let r = &sql(
            storage,
            &format!("SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM {table}"),
        )[0];
        let n = ids.len() as u64;
        assert_eq!(
            (int(r, "n"), int(r, "d")),
            (n, n),
            "{when}: {table} rows, ids"
        );
        let got: HashSet<String> = sql(storage, &format!("SELECT event_id FROM {table}"))
            .iter()
            .map(|r| r["event_id"].as_str().unwrap().to_string())
            .collect();
        assert!(
            got == *ids,
            "{when}: {table}: {} sent ids missing, {} ids never sent",
            ids.difference(&got).count(),
            got.difference(ids).count()
        );
    }
    let r = &sql(storage, "SELECT count(*) AS n, count(DISTINCT concat(topic, '/', CAST(\"partition\" AS VARCHAR), '/', CAST(\"offset\" AS VARCHAR))) AS d FROM dead_letters")[0];
    let m = sent.malformed;
    assert_eq!((int(r, "n"), int(r, "d")), (m, m), "{when}: dead letters");
}

/// One row of `job_runs`, its `detail` parsed.
#[derive(Debug)]
struct Run {
    job: String,
    status: String,
    rows: u64,
    detail: Value,
}

fn job_runs(storage: &[String]) -> Vec<Run> {
    sql(
        storage,
        "SELECT job, status, \"rows\", detail FROM job_runs",
    )
    .iter()
    .map(|r| Run {
        job: r["job"].as_str().unwrap().to_string(),
        status: r["status"].as_str().unwrap().to_string(),
        rows: r["rows"].as_u64().unwrap_or(0),
        detail: serde_json::from_str(r["detail"].as_str().unwrap_or_default())
            .unwrap_or(Value::Null),
    })
    .collect()
}

/// The runs of `job`.
fn runs_of<'a>(runs: &'a [Run], job: &'a str) -> impl Iterator<Item = &'a Run> + 'a {
    runs.iter().filter(move |r| r.job == job)
}

/// Compaction packed small files of both raw tables; retention removed each expired event
/// once; the rollups ran; vacuum ran and, within its grace period of 7 days (not configurable
/// for `strata serve`), deleted nothing. (Failed runs are checked at the end of the test.)
fn check_job_runs(runs: &[Run], sent: &Sent) {
    let mut expired_removed = 0;
    for table in ["link_clicks", "ai_usage"] {
        assert!(
            runs_of(runs, &format!("compact:{table}"))
                .any(|r| r.detail["files_removed"].as_u64().is_some_and(|n| n > 0)),
            "no compaction of {table} packed a file"
        );
        let removed: u64 = runs_of(runs, &format!("retention:{table}"))
            .map(|r| r.rows)
            .sum();
        assert!(removed > 0, "retention removed no expired row of {table}");
        expired_removed += removed;
    }
    assert_eq!(
        expired_removed, sent.expired,
        "retention runs removed each expired event once"
    );
    assert!(
        runs_of(runs, "rollup:click_stats_daily").next().is_some(),
        "the rollups never ran"
    );
    let vacuums: Vec<&Run> = runs
        .iter()
        .filter(|r| r.job.starts_with("vacuum:"))
        .collect();
    assert!(!vacuums.is_empty(), "vacuum never ran");
    for v in vacuums {
        assert_eq!(
            v.detail["files_removed"].as_u64(),
            Some(0),
            "vacuum deleted files within its grace period: {v:?}"
        );
    }
}

/// After the last compaction every partition of the raw tables is one file (their data is
/// far below the 128 MiB target) and, after a vacuum without grace, nothing waits for vacuum.
async fn assert_one_file_per_partition(root: &Path) {
    let storage = strata_engine::Storage::open_dir(root).await.unwrap();
    for table in ["link_clicks", "ai_usage", "dead_letters"] {
        let health = strata_engine::delta::stats::table_health(&storage, table)
            .await
            .unwrap();
        let largest = health
            .largest_partition
            .unwrap_or_else(|| panic!("{table} has no partition"));
        assert_eq!(
            largest.files, 1,
            "{table}: {} holds {} files after the last compaction",
            largest.partition, largest.files
        );
        assert_eq!(health.vacuum_files, 0, "{table}: files wait for vacuum");
    }
}

/// Both reported at once: no job run failed, and no byte a reader could reach held the
/// purged id before vacuum ran (`scan`: `scripts/gdpr_scan.py` over the root). A purge deletes
/// what could show the subject at once, old versions included (docs/operations/gdpr.md).
fn assert_no_failure_and_no_copy(runs: &[Run], scan: &Value) {
    let mut problems = Vec::new();
    let failed: Vec<&Run> = runs.iter().filter(|r| r.status == "failed").collect();
    if !failed.is_empty() {
        problems.push(format!("{} job runs failed: {failed:?}", failed.len()));
    }
    let hits = scan["hits"].as_array().unwrap();
    if !hits.is_empty() {
        problems.push(format!(
            "the purged subject was still readable under the root before the last vacuum: {} hits, the first {}",
            hits.len(),
            hits[0]
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_jobs_and_a_purge_interleaved_count_every_event_once() {
    let dir = test_dir();
    let root = dir.path().join("root");
    let storage = local_storage(&root);
    let kafka = Tansu::start(dir.path());
    // The topics, one partition each, so that the last kept event of a topic proves that
    // everything sent before it was read.
    produce(&kafka.brokers, 1, 0, 1);
    let (token, token_line) = new_token("privacy", &[Scope::Gdpr]);
    let (server, base) = serve(&storage, &token_line, &dir.path().join("serve.log"));
    let ingest = spawn(
        strata()
            .args(["ingest", "--brokers", &kafka.brokers, "--group", "soak"])
            .args(["--flush-rows", "200", "--flush-age-ms", "300"])
            .args(&storage),
        "strata ingest",
        &dir.path().join("ingest.log"),
    );
    let done = Arc::new(AtomicU64::new(0));
    let producer = {
        let (brokers, done) = (kafka.brokers.clone(), done.clone());
        std::thread::spawn(move || produce_steadily(&brokers, &done))
    };

    // Midway, with the subject in every raw table, the purge over HTTP.
    wait_for(
        "the subject's events and dead letters to be ingested",
        Duration::from_secs(120),
        || poll_row(&storage, &subject_rows()).is_some_and(|r| in_every_table(&r)),
    );
    wait_for("half the traffic", Duration::from_secs(120), || {
        done.load(Ordering::SeqCst) >= ROUNDS / 2
    });
    let c = client();
    let purge = purge_over_http(&c, &base, &token).await;
    assert_eq!(purge["receipt"]["verified"], true, "{purge}");
    assert!(int(&purge["receipt"], "rows_removed") > 0, "{purge}");

    let sent = producer.join().unwrap();
    wait_caught_up(&storage, &sent);
    wait_for(
        "retention to remove the expired days",
        Duration::from_secs(60),
        || poll_row(&storage, EXPIRED_ROWS).is_some_and(|r| int(&r, "n") == 0),
    );
    let (status, report) = ingest.stop();
    assert!(status.success(), "ingest exits 0 on SIGTERM");
    let report: Value = serde_json::from_str(report.lines().last().unwrap()).unwrap();
    // Each of the subject's messages was either removed by the purge or dropped by ingest.
    let tombstoned = int(&report, "tombstoned");
    assert!(
        tombstoned > 0,
        "no late event of the subject was dropped: {report}"
    );
    assert_eq!(
        int(&purge["receipt"], "rows_removed") + tombstoned,
        sent.subject,
        "the subject's messages: removed by the purge + dropped by ingest"
    );
    // The server's metrics heard of the commits it made: the purge's rewrites, the rollups'
    // partition replaces and the compactions, by table.
    let metrics = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (table, operation) in [
        ("link_clicks", "purge"),
        ("click_stats_daily", "replace"),
        ("link_clicks", "compaction"),
    ] {
        let counted = metrics.lines().any(|l| {
            l.starts_with("strata_delta_commits_total{")
                && l.contains(&format!("table=\"{table}\""))
                && l.contains(&format!("operation=\"{operation}\""))
                && !l.ends_with(" 0")
        });
        assert!(
            counted,
            "no {operation} commit of {table} counted:\n{metrics}"
        );
    }
    let (status, _) = server.stop();
    assert!(status.success(), "strata serve exits 0 on SIGTERM");

    assert_end_state(&storage, &sent, "after the soak");
    let runs = job_runs(&storage);
    check_job_runs(&runs, &sent);
    // Every byte under the root a reader can reach, before vacuum deletes anything.
    let scan = gdpr_scan(&root, SUBJECT);
    assert!(
        scan.status.success(),
        "{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    let scan: Value = serde_json::from_slice(&scan.stdout).unwrap();

    // A last compaction and a vacuum without grace change no row and leave one file per
    // partition.
    run_ok(
        strata()
            .args(["compact", "--min-files", "2", "--json"])
            .args(&storage),
    );
    run_ok(
        strata()
            .args(["vacuum", "--grace-hours", "0", "--json"])
            .args(&storage),
    );
    assert_end_state(&storage, &sent, "after the last compaction and vacuum");
    assert_one_file_per_partition(&root).await;

    // Checked last, so that everything above is checked whatever they find.
    assert_no_failure_and_no_copy(&runs, &scan);
}
