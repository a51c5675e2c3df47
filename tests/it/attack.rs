//! The attack suite: the real `strata serve` tried as an attacker would, class by class. Each
//! case asserts the exact status and that the server still answers afterwards.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::time::Duration;

use serde_json::Value;

use super::server::{client, gen_into, json, seeded_test_root, send, tokens, TestServer, Tokens};

async fn healthy(_c: &reqwest::Client, server: &TestServer) {
    // A fresh connection: the one an oversized request used may have been closed by the
    // server, which is what it should do, not a sign that it is down.
    let r = client().get(server.url("/healthz")).send().await;
    assert!(
        r.is_ok_and(|r| r.status() == 200),
        "the server is down; log:\n{}",
        server.logs()
    );
}

async fn post_sql(
    c: &reqwest::Client,
    server: &TestServer,
    token: &str,
    q: &str,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let r = server.post(c, "/v1/sql", token, q.to_string()).await;
    let headers = r.headers().clone();
    let (s, v) = json(r).await;
    (s, v, headers)
}

/// Every user id and anonymous id in the root, and a dead-letter payload fragment: what a
/// `panels` token must never see.
async fn secrets(c: &reqwest::Client, server: &TestServer, t: &Tokens) -> BTreeSet<String> {
    let (s, v, _) = post_sql(
        c,
        server,
        &t.admin,
        "SELECT DISTINCT user_id AS v FROM link_clicks WHERE user_id IS NOT NULL \
         UNION SELECT DISTINCT anonymous_id FROM link_clicks WHERE anonymous_id IS NOT NULL \
         UNION SELECT DISTINCT user_id FROM ai_usage WHERE user_id IS NOT NULL",
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let ids: BTreeSet<String> = v
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["v"].as_str().map(String::from))
        .collect();
    assert!(ids.len() > 50, "the seeded root has subjects");
    ids
}

/// Whole-token occurrences of any secret in a response body.
fn leaked<'a>(body: &str, secrets: &'a BTreeSet<String>) -> Vec<&'a str> {
    let tokens: BTreeSet<&str> = body
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .collect();
    secrets
        .iter()
        .filter(|s| tokens.contains(s.as_str()))
        .map(String::as_str)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panels_token_cannot_read_raw_rows_through_any_parameter() {
    let (_dir, root) = seeded_test_root(3_000);
    let t = tokens();
    let server = TestServer::start(&root, &t, &["--rate-limit", "100000"]);
    let c = client();
    let secrets = secrets(&c, &server, &t).await;

    let (s, list) = server.get_json(&c, "/v1/panels", &t.panels).await;
    assert_eq!(s, 200);
    let panels = list["panels"].as_array().unwrap().clone();
    assert!(panels.len() >= 10);
    let payloads = [
        "' UNION SELECT user_id, user_id, user_id FROM link_clicks --",
        "x' OR 1=1 --",
        "{item_type}",
        "{category}') UNION SELECT user_id FROM link_clicks --",
        "\\' OR user_id IS NOT NULL --",
        "'||(SELECT max(user_id) FROM link_clicks)||'",
        "x'; SELECT payload FROM dead_letters; --",
        "/* */ OR TRUE",
        "$1",
        "{current}",
        "{limit}",
    ];
    let mut tried = 0;
    for p in &panels {
        let name = p["name"].as_str().unwrap();
        let params: Vec<(String, String)> = p["params"]
            .as_array()
            .unwrap()
            .iter()
            .map(|q| {
                (
                    q["name"].as_str().unwrap().to_string(),
                    q["type"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        // The columns a benign request answers with: an attack must not add any.
        let period: Vec<(&str, &str)> = [("from", "2026-10-01"), ("to", "2026-11-01")]
            .into_iter()
            .filter(|(k, _)| params.iter().any(|(p, _)| p == k))
            .collect();
        let path = format!("/v1/panels/{name}");
        let benign_req = server.get_with(&c, &path, &t.panels).query(&period);
        let (s, benign) = json(send(benign_req).await).await;
        assert_eq!(s, 200, "{name}: {benign}");
        for (param, kind) in &params {
            // Text parameters get every payload; the others too (they must be refused).
            for evil in &payloads {
                // One parameter, and the payload in every parameter at once (so that a value
                // holding another placeholder's name meets that placeholder's value).
                for all in [false, true] {
                    let mut req = server.get_with(&c, &path, &t.panels);
                    let pairs: Vec<(&str, &str)> = if all {
                        params
                            .iter()
                            .filter(|(_, kind)| kind == "text")
                            .map(|(k, _)| (k.as_str(), *evil))
                            .collect()
                    } else {
                        vec![(param.as_str(), *evil)]
                    };
                    req = req.query(&pairs);
                    let r = req.send().await.unwrap();
                    let status = r.status().as_u16();
                    let text = r.text().await.unwrap();
                    tried += 1;
                    let expected: &[u16] = if kind == "text" || all {
                        &[200]
                    } else {
                        &[400]
                    };
                    assert!(
                        expected.contains(&status),
                        "{name} {pairs:?}: {status} {text}"
                    );
                    let found = leaked(&text, &secrets);
                    assert!(
                        found.is_empty(),
                        "{name} {pairs:?} leaked {found:?}: {text}"
                    );
                    assert!(!text.contains("\"payload\""), "{name} {pairs:?}: {text}");
                    if status == 200 {
                        let v: Value = serde_json::from_str(&text).unwrap();
                        assert_eq!(
                            v["columns"], benign["columns"],
                            "{name} {pairs:?} changed the answer's columns"
                        );
                    }
                }
            }
        }
    }
    assert!(tried > 100, "only {tried} attempts");
    healthy(&c, &server).await;
    // The metrics name panels only by known names.
    let metrics = server.metrics(&c).await;
    assert!(!metrics.contains("UNION"), "a payload became a label");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_statement_takes_the_server_down_and_user_errors_are_400() {
    let (_dir, root) = seeded_test_root(2_000);
    let t = tokens();
    let server = TestServer::start(&root, &t, &["--rate-limit", "100000"]);
    let c = client();

    // Huge expression trees are refused before anything recurses over them.
    let chain = |op: &str, n: usize| {
        let terms: Vec<String> = (0..n).map(|i| format!("category = 'c{i}'")).collect();
        format!("SELECT count(*) FROM link_clicks WHERE {}", terms.join(op))
    };
    let plus = format!("SELECT {}", vec!["1"; 200_000].join("+"));
    let nested = format!("SELECT {}1{}", "(".repeat(5_000), ")".repeat(5_000));
    let unions = vec!["SELECT 1"; 20_000].join(" UNION ALL ");
    for big in [chain(" OR ", 60_000), plus, nested, unions] {
        let r = server.post(&c, "/v1/sql", &t.sql, big.clone()).await;
        let status = r.status().as_u16();
        let (_, v) = json(r).await;
        assert!(status == 422 || status == 413, "{status}: {v}");
        assert!(v["code"].is_string(), "{v}");
        healthy(&c, &server).await;
    }
    // Below the bound (2,000 operators), a long chain runs: 900 terms of two operators each.
    let (s, v, _) = post_sql(&c, &server, &t.sql, &chain(" OR ", 900)).await;
    assert_eq!(s, 200, "{v}");

    // Mistakes that only show at execution are 400 with the message; the log never carries
    // the value a cast failed on (it may be a subject id).
    let (s, v, _) = post_sql(
        &c,
        &server,
        &t.sql,
        "SELECT user_id FROM link_clicks WHERE user_id IS NOT NULL ORDER BY user_id LIMIT 1",
    )
    .await;
    assert_eq!(s, 200);
    let some_user = v[0]["user_id"].as_str().unwrap().to_string();
    for (q, needle) in [
        ("SELECT 1 / 0", "zero"),
        (
            "SELECT count(*) / (count(*) - count(*)) FROM link_clicks",
            "zero",
        ),
        (
            "SELECT CAST(user_id AS INT) FROM link_clicks WHERE user_id IS NOT NULL",
            "",
        ),
        ("SELECT CAST('not a number' AS INT)", ""),
        ("SELECT regexp_like(category, '(') FROM link_clicks", ""),
        ("SELECT arrow_cast(1, 'NoSuchType')", ""),
        ("SELECT hll_count(X'00FFFFFFFF')", ""),
        ("SELECT latency_quantile(X'0102', 0.5)", ""),
        ("SELECT repeat('x', 2000000000)", "allowed"),
        ("SELECT lpad('x', 2000000000)", "allowed"),
        (
            "SELECT rpad(category, 1000000000, 'y') FROM link_clicks",
            "allowed",
        ),
        ("SELECT range(100000000000)", "allowed"),
        (
            "SELECT array_repeat(user_id, 1000000000) FROM link_clicks",
            "allowed",
        ),
    ] {
        let (s, v, _) = post_sql(&c, &server, &t.sql, q).await;
        assert_eq!(s, 400, "{q}: {v}");
        assert!(v["code"].is_string() && v["error"].is_string(), "{q}: {v}");
        assert!(
            v["error"].as_str().unwrap().to_lowercase().contains(needle),
            "{q}: {v}"
        );
        healthy(&c, &server).await;
    }
    let logs = server.logs();
    assert!(
        !logs.contains(&some_user),
        "the log names a subject id:\n{logs}"
    );

    // The earlier refused-statement list still holds.
    for q in [
        "COPY (SELECT 1) TO '/tmp/strata-escape.csv'",
        "CREATE EXTERNAL TABLE pw STORED AS CSV LOCATION '/etc/passwd'",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM read_parquet('/etc/passwd')",
        "INSERT INTO link_clicks SELECT * FROM link_clicks",
        "SET datafusion.execution.target_partitions = 1",
        "SELECT 1; SELECT 2",
    ] {
        let (s, v, _) = post_sql(&c, &server, &t.sql, q).await;
        assert_eq!(s, 400, "{q}: {v}");
    }
    assert!(!std::path::Path::new("/tmp/strata-escape.csv").exists());

    // No answer reveals where the data lives.
    let abs = std::fs::canonicalize(&root).unwrap();
    let abs = abs.to_str().unwrap().trim_start_matches('/');
    let mut named_a_file = false;
    for q in [
        "EXPLAIN SELECT * FROM link_clicks WHERE category = 'x'",
        "EXPLAIN SELECT * FROM link_clicks",
        "EXPLAIN VERBOSE SELECT count(*) FROM ai_usage",
        "EXPLAIN ANALYZE SELECT count(*) FROM link_clicks",
    ] {
        let r = server.post(&c, "/v1/sql?format=csv", &t.sql, q).await;
        assert_eq!(r.status(), 200, "{q}");
        let text = r.text().await.unwrap();
        named_a_file |= text.contains("tables/link_clicks/") || text.contains("tables/ai_usage/");
        assert!(
            !text.contains(abs) && !text.contains("file://"),
            "{q} reveals the root: {text}"
        );
    }
    // Not vacuous: a plan does name the files it reads, relative to the root.
    assert!(named_a_file, "no EXPLAIN named a file");
    healthy(&c, &server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_serves_only_what_cannot_change() {
    let (_dir, root) = seeded_test_root(2_000);
    let t = tokens();
    // The test server reads with `--refresh-ms 0`: every request looks for new commits.
    let server = TestServer::start(&root, &t, &[]);
    let c = client();
    let cache = |h: &reqwest::header::HeaderMap| {
        h.get("x-strata-cache")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    // Time, randomness, the tables view and no table at all are computed every time.
    for q in [
        "SELECT now() AS v",
        "SELECT random() AS v",
        "SELECT count(*) AS v FROM strata_tables",
        "SELECT 1 AS v",
        "SELECT count(*) AS v, max(now()) AS t FROM link_clicks",
    ] {
        let (s, first, h1) = post_sql(&c, &server, &t.sql, q).await;
        assert_eq!(s, 200, "{q}: {first}");
        assert_eq!(cache(&h1), "bypass", "{q}");
        let (_, _, h2) = post_sql(&c, &server, &t.sql, q).await;
        assert_eq!(cache(&h2), "bypass", "{q}");
    }
    let (_, a, _) = post_sql(&c, &server, &t.sql, "SELECT random() AS v").await;
    let (_, b, _) = post_sql(&c, &server, &t.sql, "SELECT random() AS v").await;
    assert_ne!(a, b, "random() was served twice");
    // A versioned table is cached, and a commit by another process is seen.
    let q = "SELECT count(*) AS n FROM link_clicks";
    let (_, before, h1) = post_sql(&c, &server, &t.sql, q).await;
    assert_eq!(cache(&h1), "miss");
    let (_, again, h2) = post_sql(&c, &server, &t.sql, q).await;
    assert_eq!((cache(&h2).as_str(), &again), ("hit", &before));
    let versions = h2["x-strata-table-versions"].to_str().unwrap().to_string();
    assert!(versions.starts_with("link_clicks@"), "{versions}");
    gen_into(&root, 8, 500, &[]);
    let (_, after, h3) = post_sql(&c, &server, &t.sql, q).await;
    assert_eq!(cache(&h3), "miss", "a new version is a new key");
    assert!(after[0]["n"].as_u64() > before[0]["n"].as_u64());
    assert_ne!(h3["x-strata-table-versions"].to_str().unwrap(), versions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_and_a_slow_reader_are_bounded() {
    let (_dir, root) = seeded_test_root(2_000);
    let t = tokens();
    let server = TestServer::start(
        &root,
        &t,
        &[
            "--max-queries",
            "2",
            "--queue-wait-ms",
            "200",
            "--query-timeout-secs",
            "4",
            "--rate-limit",
            "100000",
        ],
    );
    let c = client();
    // A burst of 16 slow queries against 2 slots: some are turned away with 503 and
    // Retry-After, none fails otherwise, and the server answers throughout.
    let slow = "SELECT count(*) AS n FROM generate_series(1, 3000000000) AS t(v) WHERE v % 7 = 3";
    let mut burst = Vec::new();
    for _ in 0..16 {
        let req = server.post_with(&c, "/v1/sql", &t.sql).body(slow);
        burst.push(tokio::spawn(async move {
            let r = req.send().await.unwrap();
            let retry = r.headers().get("retry-after").is_some();
            let (s, v) = json(r).await;
            (s, v, retry)
        }));
    }
    let mut shed = 0;
    for b in burst {
        let (s, v, retry) = b.await.unwrap();
        match s {
            503 => {
                assert!(retry, "503 without Retry-After: {v}");
                assert_eq!(v["code"], "overloaded", "{v}");
                shed += 1;
            }
            408 | 200 => {}
            other => panic!("{other}: {v}"),
        }
    }
    assert!(
        shed >= 10,
        "only {shed} of 16 were turned away with 2 slots"
    );
    healthy(&c, &server).await;

    // A client that stops reading a large answer holds neither the query nor its slot past
    // the time limit.
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    let body = "SELECT v, repeat('x', 200) AS pad FROM generate_series(1, 50000000) AS t(v)";
    write!(
        stream,
        "POST /v1/sql?format=csv HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\n\r\n{}",
        t.sql,
        body.len(),
        body
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 512];
    let n = stream.read(&mut head).unwrap();
    assert!(String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 200"));
    // ... and now the client reads nothing more.
    assert!(server
        .metrics(&c)
        .await
        .contains("strata_queries_running 1"));
    let what = "the unread query still holds its slot 15 s after a 4 s limit";
    let every = Duration::from_millis(100);
    server
        .await_metric(&c, "strata_queries_running 0", every, 150, what)
        .await;
    // Both slots are free again: two queries run at once.
    let q = "SELECT count(*) AS n FROM link_clicks";
    let (a, b) = tokio::join!(
        post_sql(&c, &server, &t.sql, q),
        post_sql(&c, &server, &t.sql, q)
    );
    assert_eq!((a.0, b.0), (200, 200));
    drop(stream);
}
