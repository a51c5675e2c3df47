//! A `strata serve` process on port 0 over a root with generated events, and a small client:
//! requests carry a token the way every caller of the API does, so the tests say only what
//! differs (path, token, body, extra headers).

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::header::AUTHORIZATION;
use reqwest::{Body, Client, RequestBuilder, Response};
use serde_json::Value;

use super::support::{run_ok, spawn, strata, test_dir, wait_for, Proc};

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

/// Runs `strata gen` into `root`: `events` events of `seed` on the days up to 2026-11-01;
/// `extra` flags (`--days`, `--malformed-rate`, ...) go after the event count.
pub fn gen_into(root: &Path, seed: u64, events: u64, extra: &[&str]) {
    let (seed, events) = (seed.to_string(), events.to_string());
    let mut args = vec!["gen", "--seed", seed.as_str(), "--events", events.as_str()];
    args.extend_from_slice(extra);
    args.extend([
        "--end-date",
        "2026-11-01",
        "--storage-url",
        root.to_str().unwrap(),
    ]);
    run_ok(strata().args(args));
}

/// Runs the rollups over `root` once.
pub fn rollup(root: &Path) {
    run_ok(strata().args(["rollup", "--storage-url", root.to_str().unwrap()]));
}

/// Writes `events` generated events (seed 7, 30 days to 2026-11-01) into `root` and runs the rollups.
pub fn seed_root(root: &Path, events: u64) {
    seed_root_with(root, events, &[]);
}

/// `seed_root` with more `strata gen` flags (`--malformed-rate`, ...).
pub fn seed_root_with(root: &Path, events: u64, extra: &[&str]) {
    gen_into(root, 7, events, extra);
    rollup(root);
}

/// A fresh test directory and its `root` subfolder seeded by `seed_root`. Keep the directory
/// alive (bind it to a named variable) for as long as the root is used.
pub fn seeded_test_root(events: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = test_dir();
    let root = dir.path().join("root");
    seed_root(&root, events);
    (dir, root)
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
            "--compact-interval-secs",
            "0",
            "--vacuum-interval-secs",
            "0",
            "--retention-interval-secs",
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

    /// A GET of `path` carrying `token`, for a request that needs more (headers, query).
    pub fn get_with(&self, c: &Client, path: &str, token: &str) -> RequestBuilder {
        c.get(self.url(path)).header(AUTHORIZATION, bearer(token))
    }

    /// A POST to `path` carrying `token`, for a request that needs more (headers, body).
    pub fn post_with(&self, c: &Client, path: &str, token: &str) -> RequestBuilder {
        c.post(self.url(path)).header(AUTHORIZATION, bearer(token))
    }

    /// GET `path` with `token`.
    pub async fn get(&self, c: &Client, path: &str, token: &str) -> Response {
        get_as(c, self.url(path), token).await
    }

    /// GET `path` with `token`: the status and the JSON body.
    pub async fn get_json(&self, c: &Client, path: &str, token: &str) -> (u16, Value) {
        json(self.get(c, path, token).await).await
    }

    /// POST `body` to `path` with `token`.
    pub async fn post(
        &self,
        c: &Client,
        path: &str,
        token: &str,
        body: impl Into<Body>,
    ) -> Response {
        send(self.post_with(c, path, token).body(body)).await
    }

    /// POST `body` to `path` with `token`: the status and the JSON body.
    pub async fn post_json(
        &self,
        c: &Client,
        path: &str,
        token: &str,
        body: impl Into<Body>,
    ) -> (u16, Value) {
        json(self.post(c, path, token, body).await).await
    }

    /// DELETE `path` with `token`.
    pub async fn delete(&self, c: &Client, path: &str, token: &str) -> Response {
        send(
            c.delete(self.url(path))
                .header(AUTHORIZATION, bearer(token)),
        )
        .await
    }

    /// The `/metrics` text (it needs no token).
    pub async fn metrics(&self, c: &Client) -> String {
        send(c.get(self.url("/metrics")))
            .await
            .text()
            .await
            .unwrap()
    }

    /// Polls `/metrics` every `every` until it holds `needle`; panics with `what` once `tries`
    /// polls have not found it.
    pub async fn await_metric(
        &self,
        c: &Client,
        needle: &str,
        every: Duration,
        tries: u32,
        what: &str,
    ) {
        let mut waited = 0;
        while !self.metrics(c).await.contains(needle) {
            tokio::time::sleep(every).await;
            waited += 1;
            assert!(waited < tries, "{what}");
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- strata serve log ---\n{}", self.logs());
        }
    }
}

pub fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(120))
        .build()
        .unwrap()
}

/// The `Authorization` value that presents `token`.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Sends `req`; a transport error fails the test.
pub async fn send(req: RequestBuilder) -> Response {
    req.send().await.unwrap()
}

/// GET `url` (of any server, not only a `TestServer`) with `token`.
pub async fn get_as(c: &Client, url: String, token: &str) -> Response {
    send(c.get(url).header(AUTHORIZATION, bearer(token))).await
}

pub async fn json(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap();
    let v = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)));
    (status, v)
}

/// Asserts an error answer: its status and its `code`, showing the body when they differ.
pub fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(
        (status, body["code"].as_str()),
        (want_status, Some(want_code)),
        "{body}"
    );
}
