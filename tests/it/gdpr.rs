//! GDPR export and purge through the CLI, checked outside Strata.

use std::path::Path;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;

use super::gdpr_support::{
    click, copy_dir, dead_letters_of, gdpr_scan, purge_cli, rows_of, wait_done,
};
use super::server::{
    assert_error, client, json, seed_root_with, seeded_test_root, send, tokens, TestServer, Tokens,
};
use super::support::{
    count, int, local_storage, run_ok, spawn, sql, strata, test_dir, wait_for, Tansu,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_erases_the_subject_everywhere_and_late_events_stay_out() {
    let (dir, root) = seeded_test_root(20_000);
    let storage = local_storage(&root);
    // A typical subject (a few clicks and AI calls), and another one for a bystander export.
    let pick = sql(
        &storage,
        "SELECT c.user_id AS u, count(*) AS n FROM link_clicks c JOIN (SELECT DISTINCT user_id FROM ai_usage) a ON c.user_id = a.user_id GROUP BY c.user_id HAVING count(*) BETWEEN 2 AND 8 ORDER BY n DESC, u LIMIT 2",
    );
    let subject = pick[0]["u"].as_str().unwrap().to_string();
    let other = pick[1]["u"].as_str().unwrap().to_string();
    // With the dead letters about them: keyed by them, or naming them in the raw payload.
    let [clicks_of, ai_of, dead_of] = rows_of(&storage, &subject);
    assert!(clicks_of > 0 && ai_of > 0);
    let total = |t: &str| count(&storage, &format!("SELECT count(*) AS n FROM {t}"));
    let (clicks_before, ai_before) = (total("link_clicks"), total("ai_usage"));

    // Export: files per table with the subject's rows and checksums.
    let out = dir.path().join("export");
    let manifest: Value = serde_json::from_str(&run_ok(
        strata()
            .args([
                "gdpr",
                "export",
                "--subject",
                &subject,
                "--out",
                out.to_str().unwrap(),
            ])
            .args(&storage),
    ))
    .unwrap();
    // Named relative to the storage root, never by where the server keeps it.
    assert_eq!(
        manifest["location"],
        format!("exports/{}/", manifest["request_id"].as_str().unwrap())
    );
    assert!(
        !manifest.to_string().contains(root.to_str().unwrap()),
        "the manifest names the storage location: {manifest}"
    );
    let files = manifest["files"].as_array().unwrap();
    let file_rows = |name: &str| {
        files.iter().find(|f| f["name"] == name).unwrap()["rows"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(file_rows("link_clicks.jsonl"), clicks_of);
    assert_eq!(file_rows("ai_usage.parquet"), ai_of);
    assert_eq!(file_rows("dead_letters.jsonl"), dead_of);
    for f in files {
        let path = out.join(f["name"].as_str().unwrap());
        let sum = std::process::Command::new("sha256sum")
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&sum.stdout).starts_with(f["sha256"].as_str().unwrap()),
            "{}",
            path.display()
        );
    }
    assert_eq!(
        std::fs::read_to_string(out.join("link_clicks.jsonl"))
            .unwrap()
            .lines()
            .count() as u64,
        clicks_of
    );
    run_ok(
        strata()
            .args(["gdpr", "export", "--subject", &other])
            .args(&storage),
    );

    // A server answering from cache before the purge.
    let t = tokens();
    let server = TestServer::start(&root, &t, &[]);
    let c = client();
    let sql_http = |q: String| {
        let req = server.post_with(&c, "/v1/sql", &t.sql).body(q);
        async move {
            let r = send(req).await;
            let cache = r.headers()["x-strata-cache"].to_str().unwrap().to_string();
            (json(r).await.1, cache)
        }
    };
    let subject_rows = format!("SELECT count(*) AS n FROM link_clicks WHERE user_id = '{subject}'");
    sql_http(subject_rows.clone()).await;
    let (v, cache) = sql_http(subject_rows.clone()).await;
    assert_eq!(
        (v[0]["n"].as_u64().unwrap(), cache.as_str()),
        (clicks_of, "hit")
    );
    let overview = || async {
        let path = "/v1/panels/overview?from=2026-10-03&to=2026-11-01";
        let (_, v) = server.get_json(&c, path, &t.panels).await;
        v["rows"][0]["clicks"].as_u64().unwrap()
    };
    let panel_before = overview().await;

    // Purge.
    let receipt = purge_cli(&storage, &subject, "dpo@example.invalid");
    assert_eq!(receipt["verified"], true, "{receipt}");
    assert_eq!(
        receipt["rows_removed"].as_u64().unwrap(),
        clicks_of + ai_of + dead_of,
        "{receipt}"
    );
    assert_eq!(receipt["exports_deleted"], 1);
    for tbl in receipt["tables"].as_array().unwrap() {
        let (total, scanned, rewritten) = (
            int(tbl, "files_in_table"),
            int(tbl, "files_scanned"),
            int(tbl, "files_rewritten"),
        );
        assert!(rewritten <= scanned && scanned <= total, "{tbl}");
        if tbl["table"] != "dead_letters" {
            assert!(scanned < total, "bloom filters skipped no file: {tbl}");
            assert_eq!(int(tbl, "files_vacuumed"), rewritten, "{tbl}");
        }
    }
    assert!(
        !receipt.to_string().contains(&subject),
        "the receipt names the subject"
    );
    // Other subjects lose nothing.
    assert_eq!(total("link_clicks"), clicks_before - clicks_of);
    assert_eq!(total("ai_usage"), ai_before - ai_of);

    // No byte a reader can reach holds the id: every Parquet file read by pyarrow, every other
    // file searched as bytes.
    let scan = gdpr_scan(&root, &subject);
    assert!(
        scan.status.success(),
        "{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    let scan: Value = serde_json::from_slice(&scan.stdout).unwrap();
    assert!(scan["parquet_files"].as_u64().unwrap() > 10);
    assert_eq!(
        scan["hits"],
        serde_json::json!([]),
        "the id is still readable: {scan}"
    );
    // The bystander's export is still there.
    let other_hits = gdpr_scan(&root.join("exports"), &other);
    assert!(String::from_utf8_lossy(&other_hits.stdout).contains("\"cell\""));

    // Cached answers do not outlive the purge; rollups equal the raw events.
    tokio::time::sleep(Duration::from_millis(600)).await; // past the server's refresh interval
    let (v, cache) = sql_http(subject_rows.clone()).await;
    assert_eq!((v[0]["n"].as_u64().unwrap(), cache.as_str()), (0, "miss"));
    assert!(overview().await < panel_before);
    let (v, _) = sql_http("SELECT (SELECT sum(clicks) FROM click_stats_daily) - (SELECT count(*) FROM link_clicks) AS d".into()).await;
    assert_eq!(v[0]["d"], 0);
    drop(server);

    // Late events through Kafka: one that occurred before the request is dropped, one after is
    // kept; a malformed one about the subject never becomes a dead letter.
    let tansu = Tansu::start(dir.path());
    run_ok(strata().args([
        "gen",
        "--kafka",
        &tansu.brokers,
        "--create-topics",
        "--partitions",
        "1",
        "--events",
        "1",
        "--end-date",
        "2026-11-01",
    ]));
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &tansu.brokers)
        .create()
        .unwrap();
    let send_click = |key: &str, payload: &str| {
        producer
            .send(BaseRecord::to("clicks").key(key).payload(payload))
            .unwrap();
    };
    let now = chrono::Utc::now();
    for (i, at) in [
        (1, now - chrono::Duration::days(2)),
        (2, now + chrono::Duration::minutes(1)),
    ] {
        send_click(&subject, &click(&subject, &format!("late-{i}"), at));
    }
    let malformed = serde_json::json!({
        "schema_version": 1, "occurred_at": (now - chrono::Duration::days(2)).to_rfc3339(),
        "user_id": subject, "item_id": "mar-1"
    })
    .to_string();
    send_click(&subject, &malformed);
    // Sent last: once it is in the table, everything before it on the partition was read.
    let last = click(&subject, "late-3", now + chrono::Duration::minutes(1));
    send_click("u-bystander", &last);
    producer.flush(Duration::from_secs(10)).unwrap();
    let ingest = spawn(
        strata()
            .args([
                "ingest",
                "--brokers",
                &tansu.brokers,
                "--group",
                "late",
                "--flush-age-ms",
                "500",
            ])
            .args(&storage),
        "strata ingest",
        &dir.path().join("ingest.log"),
    );
    wait_for(
        "the late events to be ingested",
        Duration::from_secs(60),
        || {
            count(
                &storage,
                "SELECT count(*) AS n FROM link_clicks WHERE session_id = 'late-3'",
            ) >= 1
        },
    );
    let (status, report) = ingest.stop();
    assert!(status.success());
    let report: Value = serde_json::from_str(report.lines().last().unwrap()).unwrap();
    assert_eq!(
        report["tombstoned"], 2,
        "the late click and dead letter: {report}"
    );
    let kept = sql(
        &storage,
        "SELECT session_id AS s FROM link_clicks WHERE session_id LIKE 'late-%' ORDER BY s",
    );
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert_eq!(kept[0]["s"], "late-2");
    assert_eq!(count(&storage, &dead_letters_of(&subject)), 0);
    let log = std::fs::read_to_string(dir.path().join("ingest.log")).unwrap();
    assert!(!log.contains(&subject), "the ingest log names the subject");
}

/// Every step a purge can stop at (`STRATA_TEST_PAUSE_AT`), in order.
const PAUSE_POINTS: [&str; 6] = [
    "tombstone",
    "commit:link_clicks",
    "commit:ai_usage",
    "commit:dead_letters",
    "rollups",
    "verify",
];

/// What the seeded root holds, in all and of the subject.
#[derive(Clone, Copy)]
struct Before {
    clicks: u64,
    ai: u64,
    dead: u64,
    clicks_of: u64,
    ai_of: u64,
    dead_of: u64,
}

/// Export over HTTP, scopes, and what a request may name (the id rule).
async fn export_and_refusals(
    c: &reqwest::Client,
    server: &TestServer,
    t: &Tokens,
    subject: &str,
    before: Before,
) {
    let body = serde_json::json!({ "subject": subject }).to_string();
    let (s, accepted) = server
        .post_json(c, "/v1/gdpr/exports", &t.admin, body.clone())
        .await;
    assert_eq!(s, 202, "{accepted}");
    let export_id = accepted["request_id"].as_str().unwrap().to_string();
    let done = wait_done(c, server, &t.admin, &export_id).await;
    assert!(
        !done.to_string().contains(subject),
        "the request names the subject: {done}"
    );
    assert_eq!(
        done["receipt"]["location"],
        format!("exports/{export_id}/"),
        "{done}"
    );
    let file_path = format!("/v1/gdpr/exports/{export_id}/files/link_clicks.jsonl");
    let file = server.get(c, &file_path, &t.admin).await;
    assert_eq!(file.status(), 200);
    assert_eq!(
        file.text().await.unwrap().lines().count() as u64,
        before.clicks_of
    );
    // Scope: a panels token may not purge; a bad body says what to send.
    let r = server
        .post(c, "/v1/gdpr/purges", &t.panels, body.clone())
        .await;
    assert_eq!(r.status(), 403);
    let (s, v) = server.post_json(c, "/v1/gdpr/purges", &t.admin, "{}").await;
    assert_error(s, &v, 400, "bad_body");
    // Ids that would match what they do not name, or too many of them: refused, and the
    // refusal does not repeat the id.
    for bad in [
        serde_json::json!({ "subject": "" }),
        serde_json::json!({ "subject": "u" }),
        serde_json::json!({ "subject": "1234" }),
        serde_json::json!({ "subject": "null" }),
        serde_json::json!({ "subject": "user_id" }),
        serde_json::json!({ "subject": "u 5" }),
        serde_json::json!({ "subject": subject, "session_ids": [""] }),
    ] {
        let (s, v) = server
            .post_json(c, "/v1/gdpr/purges", &t.admin, bad.to_string())
            .await;
        assert_eq!(s, 400, "{bad}: {v}");
        assert!(v["error"].as_str().unwrap().contains("id rule"), "{v}");
    }
    let many: Vec<String> = (0..40_000).map(|i| format!("a-{i}")).collect();
    let body = serde_json::json!({ "subject": subject, "anonymous_ids": many }).to_string();
    let (s, v) = server.post_json(c, "/v1/gdpr/purges", &t.admin, body).await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("at most 100 ids"),
        "{v}"
    );
}

/// A purge over HTTP stopped for good at `point`, the server killed (SIGKILL) and restarted
/// without the hook: the durable request is resumed and completes. Returns the restarted
/// server and the finished request.
async fn crash_at(
    point: &str,
    root: &Path,
    subject: &str,
    before: Before,
    first: bool,
) -> (TestServer, Value) {
    let storage = local_storage(root);
    let t = tokens();
    let c = client();
    let server = TestServer::start_env(root, &t, &[], &[("STRATA_TEST_PAUSE_AT", point)]);
    if first {
        export_and_refusals(&c, &server, &t, subject, before).await;
    }
    let body = serde_json::json!({ "subject": subject }).to_string();
    let (s, accepted) = server
        .post_json(&c, "/v1/gdpr/purges", &t.admin, body)
        .await;
    assert_eq!(s, 202, "{accepted}");
    let purge_id = accepted["request_id"].as_str().unwrap().to_string();
    wait_for(
        &format!("the purge to reach its pause point {point}"),
        Duration::from_secs(60),
        || {
            server
                .logs()
                .contains("purge paused by STRATA_TEST_PAUSE_AT")
        },
    );
    server.kill9();
    // Mid-purge: each table holds all of the subject's rows or none (one atomic commit per
    // table; the three are purged concurrently): none in the table whose commit the purge
    // stopped after, none anywhere once it reached the rollups.
    let full = [before.clicks_of, before.ai_of, before.dead_of];
    let mid = rows_of(&storage, subject);
    for (i, table) in ["link_clicks", "ai_usage", "dead_letters"]
        .iter()
        .enumerate()
    {
        let want_none =
            point == format!("commit:{table}") || point == "rollups" || point == "verify";
        if want_none {
            assert_eq!(mid[i], 0, "{table} at {point}");
        } else if point == "tombstone" {
            assert_eq!(mid[i], full[i], "{table} at {point}");
        } else {
            assert!(
                mid[i] == 0 || mid[i] == full[i],
                "{table} at {point}: {} of {}",
                mid[i],
                full[i]
            );
        }
    }

    // A restarted server resumes the request and finishes it.
    let server = TestServer::start(root, &t, &[]);
    let done = wait_done(&c, &server, &t.admin, &purge_id).await;
    assert_eq!(done["receipt"]["verified"], true, "{point}: {done}");
    assert!(
        !done.to_string().contains(subject),
        "the request names the subject: {done}"
    );
    for leak in [root.to_str().unwrap(), "file://"] {
        assert!(
            !done.to_string().contains(leak),
            "the request names the storage location: {done}"
        );
    }
    assert_eq!(rows_of(&storage, subject), [0, 0, 0], "{point}");
    let total = |t: &str| count(&storage, &format!("SELECT count(*) AS n FROM {t}"));
    assert_eq!(
        total("link_clicks"),
        before.clicks - before.clicks_of,
        "{point}"
    );
    assert_eq!(total("ai_usage"), before.ai - before.ai_of, "{point}");
    assert_eq!(
        total("dead_letters"),
        before.dead - before.dead_of,
        "{point}"
    );
    let vacuumed: u64 = done["receipt"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| int(t, "files_vacuumed"))
        .sum();
    // Stopped before its deletes (or before its commits, which the resumed run makes): the
    // resumed purge deletes the removed files. Stopped later, they were gone already.
    if point != "rollups" && point != "verify" {
        assert!(
            vacuumed > 0,
            "{point}: the files removed before the crash were not deleted: {done}"
        );
    }
    let scan: Value = serde_json::from_slice(&gdpr_scan(root, subject).stdout).unwrap();
    assert_eq!(scan["hits"], serde_json::json!([]), "{point}: {scan}");
    (server, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdpr_over_http_is_durable_across_a_crash_at_every_step() {
    let dir = test_dir();
    let seeded = dir.path().join("seeded");
    // With 5% malformed messages, keyed by their subject like the good ones, so that most
    // subjects have dead letters too.
    seed_root_with(&seeded, 5_000, &["--malformed-rate", "0.05"]);
    let storage = local_storage(&seeded);
    // A subject with clicks, AI calls and dead letters keyed by them, so that the purge
    // commits to every raw table and every pause point is reached.
    let subject = sql(
        &storage,
        "SELECT c.user_id AS u FROM link_clicks c \
         JOIN (SELECT DISTINCT user_id FROM ai_usage) a ON c.user_id = a.user_id \
         JOIN (SELECT DISTINCT key FROM dead_letters) d ON c.user_id = d.key \
         GROUP BY c.user_id ORDER BY count(*), u LIMIT 1",
    )[0]["u"]
        .as_str()
        .unwrap()
        .to_string();
    let total = |t: &str| count(&storage, &format!("SELECT count(*) AS n FROM {t}"));
    let [clicks_of, ai_of, dead_of] = rows_of(&storage, &subject);
    let before = Before {
        clicks: total("link_clicks"),
        ai: total("ai_usage"),
        dead: total("dead_letters"),
        clicks_of,
        ai_of,
        dead_of,
    };
    assert!(clicks_of > 0 && ai_of > 0 && dead_of > 0);

    for (i, point) in PAUSE_POINTS.iter().enumerate() {
        // Each point on its own copy of the seeded root.
        let root = dir.path().join(point.replace(':', "-"));
        copy_dir(&seeded, &root);
        let (server, _) = crash_at(point, &root, &subject, before, i == 0).await;
        if i == 1 {
            // Asking again is harmless.
            let t = tokens();
            let c = client();
            drop(server);
            let server = TestServer::start(&root, &t, &[]);
            let body = serde_json::json!({ "subject": subject }).to_string();
            let (_, again) = server
                .post_json(&c, "/v1/gdpr/purges", &t.admin, body)
                .await;
            let again =
                wait_done(&c, &server, &t.admin, again["request_id"].as_str().unwrap()).await;
            assert_eq!(again["receipt"]["rows_removed"], 0);
            assert_eq!(again["receipt"]["verified"], true);
            assert_eq!(
                count(
                    &local_storage(&root),
                    "SELECT count(*) AS n FROM link_clicks"
                ),
                before.clicks - before.clicks_of
            );
        }
    }
}
