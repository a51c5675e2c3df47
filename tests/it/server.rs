//! A `strata serve` process on port 0 over a root with generated events, and a small client.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::support::{run_ok, spawn, strata, wait_for, Proc};

pub struct TestServer {
    pub base: String,
    pub log: PathBuf,
    proc: Option<Proc>,
}

/// Tokens of the test servers: (token, config line).
pub struct Tokens {
    pub admin: String,
    pub panels: String,
    pub sql: String,
    pub lines: Vec<String>,
}

pub fn tokens() -> Tokens {
    use strata_query_api::{new_token, Scope};
    let (admin, a) = new_token("admin", &[Scope::Admin]);
    let (panels, p) = new_token("dash", &[Scope::Panels]);
    let (sql, s) = new_token("analyst", &[Scope::Sql, Scope::Panels]);
    Tokens {
        admin,
        panels,
        sql,
        lines: vec![a, p, s],
    }
}

/// Writes `events` generated events (seed 7, 30 days to 2026-11-01) into `root` and runs the rollups.
pub fn seed_root(root: &Path, events: u64) {
    run_ok(strata().args([
        "gen",
        "--seed",
        "7",
        "--events",
        &events.to_string(),
        "--end-date",
        "2026-11-01",
        "--storage-url",
        root.to_str().unwrap(),
    ]));
    run_ok(strata().args(["rollup", "--storage-url", root.to_str().unwrap()]));
}

impl TestServer {
    pub fn start(root: &Path, tokens: &Tokens, extra: &[&str]) -> Self {
        Self::start_env(root, tokens, extra, &[])
    }

    pub fn start_env(root: &Path, tokens: &Tokens, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let log = root.with_extension(format!("serve-{}.log", uuid::Uuid::new_v4()));
        let mut cmd = strata();
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--storage-url",
            root.to_str().unwrap(),
            "--rollup-interval-secs",
            "0",
            "--refresh-ms",
            "0",
        ])
        .args(extra)
        .env("STRATA_TOKENS", tokens.lines.join(","))
        .envs(env.iter().copied());
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

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up.
    pub fn kill9(mut self) {
        self.proc.take().unwrap().kill9();
    }

    /// SIGTERM and the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.proc.take().unwrap().stop().0
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- strata serve log ---\n{}", self.logs());
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

pub async fn json(resp: reqwest::Response) -> (u16, serde_json::Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}
