//! A real Prometheus (Debian's `prometheus` package, which `scripts/test.sh` installs) scrapes
//! `strata serve` every second with the shipped alert rules (`ops/prometheus/alerts.yml`)
//! loaded: the target is up, the request, job and table series arrive, and every rule group
//! is loaded and evaluates with health `ok`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::Value;

use super::server::{client, seeded_test_root, tokens, TestServer};
use super::support::{free_port, spawn, Proc};

/// The bound of every wait on Prometheus.
const WAIT: Duration = Duration::from_secs(60);

/// The `prometheus` binary: `STRATA_PROMETHEUS_BIN`, else the one on `PATH`. Missing, the
/// test fails (never skips): the suite is meant to run with it.
fn prometheus_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("STRATA_PROMETHEUS_BIN") {
        return PathBuf::from(p);
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("prometheus"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`prometheus` not found: run the suite with `bash scripts/test.sh`, which installs \
                 Debian's prometheus package (or set STRATA_PROMETHEUS_BIN)"
            )
        })
}

/// The shipped alert rules.
fn alert_rules() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("ops/prometheus/alerts.yml")
}

/// The names of the rule groups of `alerts.yml` (`  - name: ...` lines).
fn rule_groups(rules: &Path) -> Vec<String> {
    std::fs::read_to_string(rules)
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("  - name: "))
        .map(|n| n.trim().to_string())
        .collect()
}

/// A Prometheus server on a free port with its own storage, scraping `target` (host:port)
/// every second as job `strata`, with `rules` loaded; killed on drop.
struct Prometheus {
    base: String,
    log: PathBuf,
    _proc: Proc,
}

impl Prometheus {
    fn start(dir: &Path, target: &str, rules: &Path) -> Self {
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 scrape_configs:\n  - job_name: strata\n    metrics_path: /metrics\n    \
                 static_configs:\n      - targets: [\"{target}\"]\n",
                rules = rules.display(),
            ),
        )
        .unwrap();
        let port = free_port();
        let log = dir.join("prometheus.log");
        let mut cmd = Command::new(prometheus_bin());
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"));
        let proc = spawn(&mut cmd, "prometheus", &log);
        Self {
            base: format!("http://127.0.0.1:{port}"),
            log,
            _proc: proc,
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET /api/v1/<path>`: its `data`, or None while Prometheus does not answer yet.
    async fn api(&self, c: &Client, path: &str, query: &[(&str, &str)]) -> Option<Value> {
        let resp = c
            .get(format!("{}/api/v1/{path}", self.base))
            .query(query)
            .send()
            .await
            .ok()?;
        let body: Value = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
        assert_eq!(body["status"], "success", "{path} {query:?}: {body}");
        Some(body["data"].clone())
    }

    /// The result vector of instant query `q` (empty while Prometheus does not answer).
    async fn query(&self, c: &Client, q: &str) -> Vec<Value> {
        self.api(c, "query", &[("query", q)])
            .await
            .and_then(|d| d["result"].as_array().cloned())
            .unwrap_or_default()
    }

    /// Whether `condition` holds now.
    async fn holds(&self, c: &Client, condition: &Condition<'_>) -> bool {
        match condition {
            Condition::Up => {
                let up = self.query(c, "up{job=\"strata\"}").await;
                up.len() == 1 && up[0]["value"][1] == "1"
            }
            Condition::Series(q) => !self.query(c, q).await.is_empty(),
            Condition::RulesOk(groups) => match self.api(c, "rules", &[]).await {
                Some(data) => loaded_groups(&data) == *groups && all_rules_ok(&data),
                None => false,
            },
        }
    }

    /// Polls `condition` every 500 ms until it holds; fails with the log after [`WAIT`].
    async fn await_until(&self, c: &Client, condition: Condition<'_>) {
        let start = Instant::now();
        while !self.holds(c, &condition).await {
            assert!(
                start.elapsed() < WAIT,
                "timed out after {WAIT:?} waiting for {condition:?}\n--- prometheus log ---\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// What the test waits for Prometheus to show.
#[derive(Debug)]
enum Condition<'a> {
    /// `up{job="strata"} == 1`: the last scrape of `strata serve` succeeded.
    Up,
    /// The instant query has at least one series.
    Series(&'a str),
    /// Exactly these rule groups (sorted) are loaded and every rule has health `ok`.
    RulesOk(&'a [String]),
}

/// The names of the rule groups in `data` (of `/api/v1/rules`), sorted.
fn loaded_groups(data: &Value) -> Vec<String> {
    let mut names: Vec<String> = data["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["name"].as_str().map(str::to_string))
        .collect();
    names.sort();
    names
}

/// Whether every rule of every group in `data` (of `/api/v1/rules`) has health `ok`; a rule
/// whose evaluation failed fails the test at once, with its error.
fn all_rules_ok(data: &Value) -> bool {
    let groups = data["groups"].as_array().cloned().unwrap_or_default();
    let mut ok = !groups.is_empty();
    for group in &groups {
        for rule in group["rules"].as_array().into_iter().flatten() {
            assert_ne!(
                rule["health"], "err",
                "rule {} of group {} does not evaluate: {}",
                rule["name"], group["name"], rule["lastError"]
            );
            ok &= rule["health"] == "ok";
        }
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_serve_and_the_alert_rules_evaluate() {
    let (dir, root) = seeded_test_root(2_000);
    let t = tokens();
    let server = TestServer::start(&root, &t, &[]);
    let c = client();
    let rules = alert_rules();
    let target = server
        .base
        .strip_prefix("http://")
        .expect("the server's base is http://host:port")
        .to_string();
    let prometheus = Prometheus::start(dir.path(), &target, &rules);

    // A few requests, so that the request histogram has series: a panel list, a SQL query
    // and an unknown route.
    for (path, token) in [
        ("/v1/panels", &t.panels),
        ("/v1/sql?q=SELECT%201", &t.sql),
        ("/no/such/route", &t.panels),
    ] {
        let status = server.get(&c, path, token).await.status();
        assert!(status.as_u16() < 500, "{path}: {status}");
    }

    prometheus.await_until(&c, Condition::Up).await;
    for series in [
        "strata_http_server_request_duration_seconds_count{job=\"strata\",http_route=\"/v1/sql\",http_request_method=\"GET\",http_response_status_code=\"200\"}",
        "strata_http_server_request_duration_seconds_count{http_response_status_code=\"404\"}",
        "strata_query_duration_seconds_count{surface=\"sql\"}",
        "strata_job_runs_total{job_name=\"rollups\"}",
        "strata_table_files{table=\"link_clicks\"}",
    ] {
        prometheus.await_until(&c, Condition::Series(series)).await;
    }

    // Every group of the shipped rules is loaded, and every rule evaluates.
    let mut groups = rule_groups(&rules);
    groups.sort();
    assert!(groups.len() >= 4, "{groups:?}");
    prometheus
        .await_until(&c, Condition::RulesOk(&groups))
        .await;
    assert!(server.stop().success());
}
