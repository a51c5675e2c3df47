//! GDPR export and purge through the CLI, checked outside Strata.

use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use reqwest::header::AUTHORIZATION;
use serde_json::Value;

use super::server::{client, json, seed_root, tokens, TestServer};
use super::support::{int, python, run_ok, spawn, sql, strata, test_dir, wait_for, Tansu};

fn count(storage: &[String], q: &str) -> u64 {
    int(&sql(storage, q)[0], "n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purge_erases_the_subject_everywhere_and_late_events_stay_out() {
    let dir = test_dir();
    let root = dir.path().join("root");
    seed_root(&root, 20_000);
    let storage = vec![
        "--storage-url".to_string(),
        root.to_str().unwrap().to_string(),
    ];
    // A typical subject (a few clicks and AI calls), and another one for a bystander export.
    let pick = sql(
        &storage,
        "SELECT c.user_id AS u, count(*) AS n FROM link_clicks c JOIN (SELECT DISTINCT user_id FROM ai_usage) a ON c.user_id = a.user_id GROUP BY c.user_id HAVING count(*) BETWEEN 2 AND 8 ORDER BY n DESC, u LIMIT 2",
    );
    let subject = pick[0]["u"].as_str().unwrap().to_string();
    let other = pick[1]["u"].as_str().unwrap().to_string();
    let q = |t: &str| format!("SELECT count(*) AS n FROM {t} WHERE user_id = '{subject}'");
    let (clicks_of, ai_of) = (
        count(&storage, &q("link_clicks")),
        count(&storage, &q("ai_usage")),
    );
    assert!(clicks_of > 0 && ai_of > 0);
    // Dead letters about them: keyed by them, or naming them in the raw payload.
    let dead_of = count(
        &storage,
        &format!("SELECT count(*) AS n FROM dead_letters WHERE key = '{subject}' OR regexp_like(payload, '(^|[^A-Za-z0-9_-]){subject}([^A-Za-z0-9_-]|$)')"),
    );
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
    let files = manifest["files"].as_array().unwrap();
    let rows_of = |name: &str| {
        files.iter().find(|f| f["name"] == name).unwrap()["rows"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(rows_of("link_clicks.jsonl"), clicks_of);
    assert_eq!(rows_of("ai_usage.parquet"), ai_of);
    assert_eq!(rows_of("dead_letters.jsonl"), dead_of);
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
        let c = c.clone();
        let (url, token) = (server.url("/v1/sql"), t.sql.clone());
        async move {
            let r = c
                .post(url)
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .body(q)
                .send()
                .await
                .unwrap();
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
        let r = c
            .get(server.url("/v1/panels/overview?from=2026-10-03&to=2026-11-01"))
            .header(AUTHORIZATION, format!("Bearer {}", t.panels))
            .send()
            .await
            .unwrap();
        json(r).await.1["rows"][0]["clicks"].as_u64().unwrap()
    };
    let panel_before = overview().await;

    // Purge.
    let receipt: Value = serde_json::from_str(&run_ok(
        strata()
            .args([
                "gdpr",
                "purge",
                "--subject",
                &subject,
                "--requested-by",
                "dpo@example.invalid",
            ])
            .args(&storage),
    ))
    .unwrap();
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
    let scan = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gdpr_scan.py"))
        .arg(&root)
        .arg(&subject)
        .output()
        .unwrap();
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
    let other_hits = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gdpr_scan.py"))
        .arg(root.join("exports"))
        .arg(&other)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&other_hits.stdout).contains("\"cell\""));

    // Cached answers do not outlive the purge; rollups equal the raw events.
    tokio::time::sleep(Duration::from_millis(600)).await; // past the server's refresh interval
    let (v, cache) = sql_http(subject_rows.clone()).await;
    assert_eq!((v[0]["n"].as_u64().unwrap(), cache.as_str()), (0, "miss"));
    assert!(overview().await < panel_before);
    let (v, _) = sql_http("SELECT (SELECT sum(clicks) FROM click_stats_daily) - (SELECT count(*) FROM link_clicks) AS d".into()).await;
    assert_eq!(v[0]["d"], 0);
    drop(server);

    // Late events through Kafka: one that occurred before the request is dropped, one after is kept.
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
    let now = chrono::Utc::now();
    for (i, at) in [
        (1, now - chrono::Duration::days(2)),
        (2, now + chrono::Duration::minutes(1)),
    ] {
        let payload = serde_json::json!({
            "schema_version": 1, "event_id": uuid::Uuid::new_v4().to_string(),
            "occurred_at": at.to_rfc3339(), "user_id": subject, "session_id": format!("late-{i}"),
            "item_id": "mar-1", "item_type": "marketplace_listing", "category": "home",
            "source": "search", "target_url": "/x"
        })
        .to_string();
        producer
            .send(
                BaseRecord::to("clicks")
                    .key(subject.as_str())
                    .payload(&payload),
            )
            .unwrap();
    }
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
                "SELECT count(*) AS n FROM link_clicks WHERE session_id LIKE 'late-%'",
            ) >= 1
        },
    );
    let (status, report) = ingest.stop();
    assert!(status.success());
    let report: Value = serde_json::from_str(report.lines().last().unwrap()).unwrap();
    assert_eq!(report["tombstoned"], 1, "{report}");
    let kept = sql(
        &storage,
        "SELECT session_id AS s FROM link_clicks WHERE session_id LIKE 'late-%'",
    );
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["s"], "late-2");
    let log = std::fs::read_to_string(dir.path().join("ingest.log")).unwrap();
    assert!(!log.contains(&subject), "the ingest log names the subject");
}

async fn wait_done(c: &reqwest::Client, server: &TestServer, token: &str, id: &str) -> Value {
    for _ in 0..1200 {
        let r = c
            .get(server.url(&format!("/v1/gdpr/requests/{id}")))
            .header(AUTHORIZATION, format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        let (s, v) = json(r).await;
        assert_eq!(s, 200, "{v}");
        match v["status"].as_str().unwrap() {
            "done" => return v,
            "failed" => panic!("request failed: {v}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("request {id} did not finish");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gdpr_over_http_is_durable_across_a_crash_mid_purge() {
    let dir = test_dir();
    let root = dir.path().join("root");
    seed_root(&root, 5_000);
    let storage = vec![
        "--storage-url".to_string(),
        root.to_str().unwrap().to_string(),
    ];
    let subject = sql(
        &storage,
        "SELECT c.user_id AS u FROM link_clicks c JOIN (SELECT DISTINCT user_id FROM ai_usage) a ON c.user_id = a.user_id GROUP BY c.user_id HAVING count(*) BETWEEN 2 AND 8 ORDER BY u LIMIT 1",
    )[0]["u"]
        .as_str()
        .unwrap()
        .to_string();
    let of = |t: &str| {
        count(
            &storage,
            &format!("SELECT count(*) AS n FROM {t} WHERE user_id = '{subject}'"),
        )
    };
    let total = |t: &str| count(&storage, &format!("SELECT count(*) AS n FROM {t}"));
    let (clicks_of, ai_of) = (of("link_clicks"), of("ai_usage"));
    let (clicks_before, ai_before) = (total("link_clicks"), total("ai_usage"));
    let t = tokens();
    let c = client();
    let body = serde_json::json!({ "subject": subject }).to_string();

    // The purge stops right after its first commit (link_clicks), before deleting the files it
    // removed; the server is then killed.
    let server = TestServer::start_env(
        &root,
        &t,
        &[],
        &[("STRATA_TEST_PAUSE_AT", "commit:link_clicks")],
    );
    // Export first, and download a file of it.
    let r = c
        .post(server.url("/v1/gdpr/exports"))
        .header(AUTHORIZATION, format!("Bearer {}", t.admin))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (s, accepted) = json(r).await;
    assert_eq!(s, 202, "{accepted}");
    let export_id = accepted["request_id"].as_str().unwrap().to_string();
    let done = wait_done(&c, &server, &t.admin, &export_id).await;
    assert!(
        !done.to_string().contains(&subject),
        "the request names the subject: {done}"
    );
    let file = c
        .get(server.url(&format!(
            "/v1/gdpr/exports/{export_id}/files/link_clicks.jsonl"
        )))
        .header(AUTHORIZATION, format!("Bearer {}", t.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(file.status(), 200);
    assert_eq!(file.text().await.unwrap().lines().count() as u64, clicks_of);
    // Scope: a panels token may not purge; a bad body says what to send.
    let r = c
        .post(server.url("/v1/gdpr/purges"))
        .header(AUTHORIZATION, format!("Bearer {}", t.panels))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .post(server.url("/v1/gdpr/purges"))
        .header(AUTHORIZATION, format!("Bearer {}", t.admin))
        .body("{}")
        .send()
        .await
        .unwrap();
    let (s, v) = json(r).await;
    assert_eq!((s, v["code"].as_str()), (400, Some("bad_body")));

    let r = c
        .post(server.url("/v1/gdpr/purges"))
        .header(AUTHORIZATION, format!("Bearer {}", t.admin))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (s, accepted) = json(r).await;
    assert_eq!(s, 202);
    let purge_id = accepted["request_id"].as_str().unwrap().to_string();
    wait_for(
        "the purge to reach its pause point",
        Duration::from_secs(60),
        || {
            server
                .logs()
                .contains("purge paused by STRATA_TEST_PAUSE_AT")
        },
    );
    server.kill9();
    // Mid-purge: link_clicks is already without the subject (one atomic commit), but its removed
    // files are not deleted yet and no rollup day was recomputed. ai_usage is purged
    // concurrently: all of the subject's rows or none of them, never a part.
    assert_eq!(of("link_clicks"), 0);
    let ai_mid = of("ai_usage");
    assert!(
        ai_mid == ai_of || ai_mid == 0,
        "ai_usage mid-purge: {ai_mid} of {ai_of}"
    );

    // A restarted server resumes the request and finishes it.
    let server = TestServer::start(&root, &t, &[]);
    let done = wait_done(&c, &server, &t.admin, &purge_id).await;
    assert_eq!(done["receipt"]["verified"], true, "{done}");
    assert!(
        !done.to_string().contains(&subject),
        "the request names the subject: {done}"
    );
    assert_eq!(total("link_clicks"), clicks_before - clicks_of);
    assert_eq!(total("ai_usage"), ai_before - ai_of);
    let vacuumed: u64 = done["receipt"]["tables"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| int(t, "files_vacuumed"))
        .sum();
    assert!(
        vacuumed > 0,
        "the files removed before the crash were not deleted: {done}"
    );
    let scan = std::process::Command::new(python())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/gdpr_scan.py"))
        .arg(&root)
        .arg(&subject)
        .output()
        .unwrap();
    let scan: Value = serde_json::from_slice(&scan.stdout).unwrap();
    assert_eq!(scan["hits"], serde_json::json!([]), "{scan}");
    // Asking again is harmless.
    let r = c
        .post(server.url("/v1/gdpr/purges"))
        .header(AUTHORIZATION, format!("Bearer {}", t.admin))
        .body(body)
        .send()
        .await
        .unwrap();
    let (_, again) = json(r).await;
    let again = wait_done(&c, &server, &t.admin, again["request_id"].as_str().unwrap()).await;
    assert_eq!(again["receipt"]["rows_removed"], 0);
    assert_eq!(again["receipt"]["verified"], true);
    assert_eq!(total("link_clicks"), clicks_before - clicks_of);
}
