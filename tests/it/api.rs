//! The HTTP API of `strata serve`, run as the real binary on port 0.

use std::time::Duration;

use arrow::array::{Array, Int64Array};
use reqwest::header::{ACCEPT, ETAG, IF_NONE_MATCH};

use super::server::{
    assert_error, client, gen_into, json, rollup, seeded_test_root, send, tokens, TestServer,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panels_sql_formats_auth_and_cache() {
    let (_dir, root) = seeded_test_root(20_000);
    let t = tokens();
    let server = TestServer::start(&root, &t, &["--row-cap", "5000"]);
    let c = client();

    // Health, readiness, OpenAPI and metrics need no token.
    assert_eq!(
        c.get(server.url("/healthz")).send().await.unwrap().status(),
        200
    );
    let (s, ready) = json(c.get(server.url("/readyz")).send().await.unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(ready["ready"], true);
    let (_, doc) = json(c.get(server.url("/v1/openapi.json")).send().await.unwrap()).await;
    assert!(doc["paths"]["/v1/sql"]["post"].is_object());

    // 401 without or with a wrong token, 403 with a token lacking the scope.
    let r = c.get(server.url("/v1/panels")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers().contains_key("www-authenticate"));
    let (s, body) = json(r).await;
    assert_error(s, &body, 401, "unauthenticated");
    let r = server.get(&c, "/v1/panels", "wrong").await;
    assert_eq!(r.status(), 401);
    let (s, body) = server.get_json(&c, "/v1/sql?q=SELECT%201", &t.panels).await;
    assert_error(s, &body, 403, "forbidden");
    assert!(body["error"].as_str().unwrap().contains("`sql` scope"));

    // The panel list carries parameter schemas.
    let (s, list) = server.get_json(&c, "/v1/panels", &t.panels).await;
    assert_eq!(s, 200);
    let panels = list["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let top = panels.iter().find(|p| p["name"] == "top_items").unwrap();
    assert!(top["params"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == "limit" && p["type"] == "integer"));

    // Every panel answers with rows; the overview agrees with the raw events.
    let range = "from=2026-10-03&to=2026-11-01";
    for p in panels {
        let name = p["name"].as_str().unwrap();
        // Dead letters are by the day they arrived (today), not by the events' days.
        let takes_range = p["params"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["name"] == "from")
            && name != "dead_letters_daily";
        let path = if takes_range {
            format!("/v1/panels/{name}?{range}")
        } else {
            format!("/v1/panels/{name}")
        };
        let (s, body) = server.get_json(&c, &path, &t.panels).await;
        assert_eq!(s, 200, "{name}: {body}");
        assert!(
            !body["rows"].as_array().unwrap().is_empty(),
            "{name} has no rows"
        );
        assert!(
            !body["meta"]["table_versions"]
                .as_array()
                .unwrap()
                .is_empty(),
            "{name}"
        );
        // Which statement answered (top_items: the daily top lists or the full items table).
        assert!(body["meta"]["fallback"].is_boolean(), "{name}: {body}");
    }
    let overview_path = format!("/v1/panels/overview?{range}");
    let r = server.get(&c, &overview_path, &t.panels).await;
    let etag = r.headers()[ETAG].to_str().unwrap().to_string();
    let (_, overview) = json(r).await;
    assert_eq!(
        overview["meta"]["cached"], true,
        "second answer comes from the cache"
    );
    let raw = sql_json(&c, &server, &t.sql, "SELECT count(*) AS n FROM link_clicks WHERE event_date BETWEEN DATE '2026-10-03' AND DATE '2026-11-01'").await;
    assert_eq!(overview["rows"][0]["clicks"], raw[0]["n"]);

    // If-None-Match with the current ETag: 304.
    let revalidate = server
        .get_with(&c, &overview_path, &t.panels)
        .header(IF_NONE_MATCH, &etag);
    assert_eq!(send(revalidate).await.status(), 304);

    // Bad parameters and unknown panels: 4xx that say what to fix.
    let (s, body) = server
        .get_json(&c, "/v1/panels/overview?from=yesterday", &t.panels)
        .await;
    assert_error(s, &body, 400, "bad_parameter");
    assert!(body["error"].as_str().unwrap().contains("YYYY-MM-DD"));
    let (s, _) = server.get_json(&c, "/v1/panels/nope", &t.panels).await;
    assert_eq!(s, 404);

    // SQL formats, by parameter and by Accept.
    let q =
        "SELECT event_date, count(*) AS n FROM link_clicks GROUP BY event_date ORDER BY event_date";
    let days = sql_json(&c, &server, &t.sql, q).await;
    assert_eq!(days.len(), 30);
    let r = server.post(&c, "/v1/sql?format=jsonl", &t.sql, q).await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-strata-query-id"));
    assert_eq!(r.text().await.unwrap().lines().count(), 30);
    let as_csv = server
        .post_with(&c, "/v1/sql", &t.sql)
        .header(ACCEPT, "text/csv")
        .body(q);
    let r = send(as_csv).await;
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/csv"));
    let csv = r.text().await.unwrap();
    assert_eq!(csv.lines().next(), Some("event_date,n"));
    assert_eq!(csv.lines().count(), 31);
    let r = server.post(&c, "/v1/sql?format=arrow", &t.sql, q).await;
    let bytes = r.bytes().await.unwrap();
    let reader =
        arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes.to_vec()), None)
            .unwrap();
    let rows: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(rows, 30);
    let as_parquet = server
        .post_with(&c, "/v1/sql", &t.sql)
        .header(ACCEPT, "application/vnd.apache.parquet")
        .body(q);
    let bytes = send(as_parquet).await.bytes().await.unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .unwrap()
        .build()
        .unwrap();
    let mut total = 0i64;
    for b in reader {
        let b = b.unwrap();
        let n = b.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        total += (0..n.len()).map(|i| n.value(i)).sum::<i64>();
    }
    let all = sql_json(&c, &server, &t.sql, "SELECT count(*) AS n FROM link_clicks").await;
    assert_eq!(serde_json::Value::from(total), all[0]["n"]);
    // JSON body form.
    let json_body = server
        .post_with(&c, "/v1/sql", &t.sql)
        .header("content-type", "application/json")
        .body(r#"{"sql": "SELECT 41 + 1 AS answer", "format": "json"}"#);
    let (_, v) = json(send(json_body).await).await;
    assert_eq!(v[0]["answer"], 42);

    // The row cap cuts big results.
    let r = server
        .get(
            &c,
            "/v1/sql?format=jsonl&q=SELECT%20event_id%20FROM%20link_clicks",
            &t.sql,
        )
        .await;
    assert_eq!(r.headers()["x-strata-row-cap"], "5000");
    assert_eq!(r.text().await.unwrap().lines().count(), 5000);

    // A new commit invalidates: new events and a rollup change the overview and its ETag.
    let before = overview["rows"][0]["clicks"].as_i64().unwrap();
    gen_into(&root, 8, 2000, &["--days", "10"]);
    rollup(&root);
    let revalidate = server
        .get_with(&c, &overview_path, &t.panels)
        .header(IF_NONE_MATCH, &etag);
    let r = send(revalidate).await;
    assert_eq!(r.status(), 200, "a stale ETag must not give 304");
    assert_ne!(r.headers()[ETAG].to_str().unwrap(), etag);
    let (_, after) = json(r).await;
    assert_eq!(after["meta"]["cached"], false);
    assert!(after["rows"][0]["clicks"].as_i64().unwrap() > before);

    // Metrics count requests by route and panel, and cache hits.
    let text = server.metrics(&c).await;
    assert!(text.contains("strata_http_server_request_duration_seconds_count{http_request_method=\"GET\",http_response_status_code=\"200\",http_route=\"/v1/panels/{name}\"}"));
    assert!(
        text.contains("strata_query_duration_seconds_count{panel=\"overview\",surface=\"panel\"}")
    );
    assert!(text.contains("strata_cache_hits_total"));
    assert!(text.contains("strata_query_errors_total{code=\"forbidden\""));

    // No SQL text or parameters in the log.
    let log = server.logs();
    assert!(!log.contains("SELECT"), "the log holds SQL text");
    assert!(server.stop().success());
}

async fn sql_json(
    c: &reqwest::Client,
    server: &TestServer,
    token: &str,
    q: &str,
) -> Vec<serde_json::Value> {
    let (s, v) = server.post_json(c, "/v1/sql", token, q.to_string()).await;
    assert_eq!(s, 200, "{q}: {v}");
    v.as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_statements_limits_cancellation_and_rate_limits() {
    let (dir, root) = seeded_test_root(2_000);
    let t = tokens();
    let c = client();
    let server = TestServer::start(
        &root,
        &t,
        &["--query-memory-mb", "16", "--query-timeout-secs", "60"],
    );
    let post = |q: &str| server.post_json(&c, "/v1/sql", &t.sql, q.to_string());
    // Each attack is a 400 with a message, and nothing reaches the filesystem.
    let escape = dir.path().join("escape.csv");
    let attacks = [
        format!("COPY (SELECT 1) TO '{}'", escape.display()),
        "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'".into(),
        "INSERT INTO link_clicks SELECT * FROM link_clicks".into(),
        "DELETE FROM link_clicks".into(),
        "UPDATE link_clicks SET category = 'x'".into(),
        "DROP TABLE link_clicks".into(),
        "CREATE TABLE t AS SELECT 1".into(),
        "CREATE VIEW v AS SELECT 1".into(),
        "SET datafusion.execution.target_partitions = 1".into(),
        "SELECT 1; SELECT 2".into(),
        "SELECT * FROM '/etc/passwd'".into(),
        "SELECT * FROM read_csv('/etc/passwd')".into(),
        "SELECT * FROM read_parquet('/etc/passwd')".into(),
        "SELECT * FROM parquet_metadata('/etc/passwd')".into(),
        format!("EXPLAIN COPY (SELECT 1) TO '{}'", escape.display()),
    ];
    for a in &attacks {
        let (s, body) = post(a).await;
        assert_eq!(s, 400, "{a}: {body}");
        let code = body["code"].as_str().unwrap();
        assert!(
            code == "statement_not_allowed" || code == "bad_sql",
            "{a}: {body}"
        );
        assert!(!body["error"].as_str().unwrap().is_empty());
    }
    assert!(!escape.exists(), "COPY wrote a file");
    let (s, body) = post("SELEC 1").await;
    assert_error(s, &body, 400, "bad_sql");
    let (s, body) = post("SELECT nope FROM link_clicks").await;
    assert_eq!(s, 400);
    assert!(body["error"].as_str().unwrap().contains("nope"), "{body}");

    // Memory limit: a big sort fails cleanly with 422.
    let (s, body) =
        post("SELECT * FROM generate_series(1, 20000000) AS t(v) ORDER BY v DESC").await;
    assert_error(s, &body, 422, "limit_exceeded");

    // Cancellation by id: the running query ends as cancelled.
    let slow = "SELECT count(*) FROM generate_series(1, 100000000000) AS t(v) WHERE v % 7 = 3";
    let running = {
        let req = server
            .post_with(&c, "/v1/sql", &t.sql)
            .header("x-strata-query-id", "slow-1")
            .body(slow);
        tokio::spawn(async move { json(req.send().await.unwrap()).await })
    };
    let every = Duration::from_millis(50);
    let running_1 = "strata_queries_running 1";
    server
        .await_metric(
            &c,
            running_1,
            every,
            600,
            "the slow query never showed as running",
        )
        .await;
    let r = server.delete(&c, "/v1/queries/slow-1", &t.sql).await;
    assert_eq!(r.status(), 204);
    let (s, body) = running.await.unwrap();
    assert_error(s, &body, 400, "cancelled");
    let r = server.delete(&c, "/v1/queries/slow-1", &t.sql).await;
    assert_eq!(r.status(), 404);

    // Cancellation by hanging up: the query stops running.
    let req = server
        .post_with(&c, "/v1/sql", &t.sql)
        .header("x-strata-query-id", "slow-2")
        .body(slow);
    let hung = tokio::spawn(async move { req.send().await });
    let what = "the second slow query never showed as running";
    server.await_metric(&c, running_1, every, 600, what).await;
    hung.abort();
    let what = "the query kept running after the client hung up";
    server
        .await_metric(&c, "strata_queries_running 0", every, 600, what)
        .await;
    drop(server);

    // Timeout: a short limit gives 408.
    let server = TestServer::start(
        &root,
        &t,
        &["--query-timeout-secs", "1", "--rate-limit", "1"],
    );
    let (s, body) = server.post_json(&c, "/v1/sql", &t.admin, slow).await;
    assert_error(s, &body, 408, "query_timeout");

    // Rate limit: one request per second with a burst of 4; the admin token is already one down.
    let mut limited = None;
    for _ in 0..10 {
        let r = server.get(&c, "/v1/panels", &t.admin).await;
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("no 429 after 10 rapid requests at 1/s");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    // Another token has its own bucket.
    let r = server.get(&c, "/v1/panels", &t.panels).await;
    assert_eq!(r.status(), 200);
}
