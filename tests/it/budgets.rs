//! AI budgets end to end (issue 14): `strata serve` with its budgets in `STRATA_BUDGETS`,
//! spend appended with `strata gen --from`, decisions, reservations and overrides over HTTP,
//! and the signed alerts caught by a webhook receiver that lives in the test.
//!
//! ```text
//! append_ai_usage --strata gen --from--> tables/ai_usage --polled every 500 ms--> strata serve
//!   reqwest (ai, panels, admin, sql tokens) --> decision / reservations / overrides / views
//!   strata serve --POST signed alert--> Receiver (records headers + body; 500 to the first tries)
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use strata_fixtures::{Kind, Message};
use strata_schemas::AiUsage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::server::{assert_error, client, tokens, TestServer, Tokens};
use super::support::{run_ok, strata, test_dir};

const BUDGET: &str = "ai-month";
const FEATURE: &str = "search_answer";
const SECRET: &str = "test-secret-0123456789";
const ALERT_ID: &str = "x-strata-alert-id";
const RESERVATIONS: &str = "/v1/ai/budgets/reservations";
/// How long the server may take to see an append (it polls every 500 ms) or send an alert.
const WAIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(200);

// ---- HMAC-SHA256 (RFC 2104), independent of the engine's ----

fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let mut inner = Sha256::new();
    inner.update(pad(0x36));
    inner.update(message);
    let inner = inner.finalize();
    let mut outer = Sha256::new();
    outer.update(pad(0x5c));
    outer.update(inner.as_slice());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn hmac_sha256_matches_rfc_4231() {
    // Case 2, and case 6 (a key longer than the block, hashed first).
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    assert_eq!(
        hex(&hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

// ---- the webhook receiver ----

/// One request the receiver got, and what it answered.
#[derive(Debug, Clone)]
struct Hit {
    request_line: String,
    headers: BTreeMap<String, String>,
    body: String,
    status: u16,
    at: Instant,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// `threshold-75`, `forecast-100`...
    fn kind(&self) -> String {
        self.json()["kind"].as_str().unwrap_or_default().to_string()
    }

    fn alert_id(&self) -> &str {
        self.headers.get(ALERT_ID).map_or("", String::as_str)
    }
}

/// A local HTTP server on its own thread and runtime (so that no wait in a test can stall
/// it) that records every request and answers 500 to the first `failures` tries of each alert.
struct Receiver {
    url: String,
    hits: Arc<Mutex<Vec<Hit>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(failures: usize) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let hits: Arc<Mutex<Vec<Hit>>> = Arc::default();
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let recorded = hits.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(accept(listener, recorded, failures, stopped));
        });
        Self {
            url,
            hits,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    /// Waits until an alert of `kind` was answered 200; returns every request so far.
    async fn wait_delivered(&self, kind: &str, timeout: Duration) -> Vec<Hit> {
        let start = Instant::now();
        loop {
            let hits = self.hits();
            if hits.iter().any(|h| h.kind() == kind && h.status == 200) {
                return hits;
            }
            assert!(
                start.elapsed() < timeout,
                "no {kind} alert delivered in {timeout:?}: {hits:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn accept(
    listener: std::net::TcpListener,
    hits: Arc<Mutex<Vec<Hit>>>,
    failures: usize,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    tokio::spawn(answer(stream, hits.clone(), failures));
                }
            }
        }
    }
}

async fn answer(mut stream: TcpStream, hits: Arc<Mutex<Vec<Hit>>>, failures: usize) {
    let Ok((request_line, headers, body)) = read_request(&mut stream).await else {
        return;
    };
    let status = {
        let mut hits = hits.lock().unwrap();
        let id = headers.get(ALERT_ID).cloned();
        let tried = hits
            .iter()
            .filter(|h| h.headers.get(ALERT_ID) == id.as_ref())
            .count();
        let status = if tried < failures { 500 } else { 200 };
        hits.push(Hit {
            request_line,
            headers,
            body,
            status,
            at: Instant::now(),
        });
        status
    };
    let text = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let reply =
        format!("HTTP/1.1 {status} {text}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

type Request = (String, BTreeMap<String, String>, String);

/// One HTTP/1.1 request: its first line, its headers (names in lower case) and its body.
async fn read_request(stream: &mut TcpStream) -> std::io::Result<Request> {
    let eof = || std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "request cut short");
    let mut buf = Vec::new();
    let head_end = loop {
        if let Some(i) = find(&buf, b"\r\n\r\n") {
            break i;
        }
        if read_more(stream, &mut buf).await? == 0 {
            return Err(eof());
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = buf.split_off(head_end + 4);
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        while !(body.starts_with(b"0\r\n\r\n") || find(&body, b"\r\n0\r\n\r\n").is_some()) {
            if read_more(stream, &mut body).await? == 0 {
                return Err(eof());
            }
        }
        body = dechunk(&body);
    } else {
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while body.len() < len {
            if read_more(stream, &mut body).await? == 0 {
                return Err(eof());
            }
        }
        body.truncate(len);
    }
    Ok((
        request_line,
        headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut chunk = [0u8; 8192];
    let n = stream.read(&mut chunk).await?;
    buf.extend_from_slice(&chunk[..n]);
    Ok(n)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The payload of a chunked body (RFC 9112 7.1), extensions and trailers dropped.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = find(raw, b"\r\n") {
        let line = String::from_utf8_lossy(&raw[..eol]).into_owned();
        let size =
            usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(raw.len());
        out.extend_from_slice(&raw[start..end]);
        raw = &raw[(end + 2).min(raw.len())..];
    }
    out
}

/// The alert is signed `t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`, recently, and
/// does not carry the secret.
fn assert_signed(hit: &Hit, secret: &str) {
    assert!(hit.request_line.starts_with("POST /hook "), "{hit:?}");
    let header = hit
        .headers
        .get("x-strata-signature")
        .unwrap_or_else(|| panic!("no x-strata-signature: {hit:?}"));
    let part = |name: &str| {
        header
            .split(',')
            .filter_map(|p| p.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| panic!("no {name}= in the signature `{header}`"))
    };
    let (t, v1) = (part("t"), part("v1"));
    let signed_at: i64 = t.parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - signed_at).abs() < 600,
        "signed at {signed_at}"
    );
    let want = hex(&hmac_sha256(
        secret.as_bytes(),
        format!("{t}.{}", hit.body).as_bytes(),
    ));
    assert_eq!(v1, want, "bad signature on {hit:?}");
    assert!(!hit.body.contains(secret), "the alert carries the secret");
}

/// Requests per alert kind.
fn by_kind(hits: &[Hit]) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for h in hits {
        *out.entry(h.kind()).or_insert(0) += 1;
    }
    out
}

/// Every request was a signed alert of the budget; each of `thresholds` came exactly once and
/// no other threshold alert came; a forecast alert (spend early in a month extrapolates past
/// 100%) at most once.
fn assert_each_once(hook: &Receiver, thresholds: &[&str]) {
    let hits = hook.hits();
    for h in &hits {
        assert_signed(h, SECRET);
        assert_eq!(h.status, 200, "{h:?}");
        assert_eq!(h.json()["budget"], BUDGET, "{h:?}");
    }
    let kinds = by_kind(&hits);
    let got: BTreeMap<&str, usize> = kinds
        .iter()
        .filter(|(k, _)| k.starts_with("threshold-"))
        .map(|(k, n)| (k.as_str(), *n))
        .collect();
    let want: BTreeMap<&str, usize> = thresholds.iter().map(|k| (*k, 1)).collect();
    assert_eq!(got, want, "{hits:?}");
    for (kind, n) in kinds.iter().filter(|(k, _)| k.starts_with("forecast-")) {
        assert_eq!(*n, 1, "{kind} sent {n} times");
    }
    assert!(
        kinds
            .keys()
            .all(|k| k.starts_with("threshold-") || k.starts_with("forecast-")),
        "{kinds:?}"
    );
}

// ---- data, servers, requests ----

/// One `ai_usage` call: (feature, user_id, cost_usd, job_id, batch_id); "" for none.
type Usage<'a> = (&'a str, &'a str, &'a str, &'a str, &'a str);

/// Appends `calls`, made now, to the `ai_usage` table of `root` (one commit) through
/// `strata gen --from`, which replays messages shaped like `strata gen --out` writes.
fn append_ai_usage(root: &Path, calls: &[Usage<'_>]) {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
    let mut lines = String::new();
    for &(feature, user, cost, job, batch) in calls {
        let event = AiUsage {
            schema_version: 1,
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_at: now.clone(),
            user_id: some(user),
            session_id: None,
            feature: feature.to_string(),
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            input_tokens: 1200,
            output_tokens: 300,
            cost_usd: cost.to_string(),
            status: "ok".into(),
            latency_ms: Some(900),
            job_id: some(job),
            batch_id: some(batch),
        };
        let message = Message {
            kind: Kind::AiUsage,
            key: some(user).or_else(|| some(job)),
            payload: serde_json::to_string(&event).unwrap(),
            malformed: false,
            retry: false,
        };
        lines.push_str(&serde_json::to_string(&message).unwrap());
        lines.push('\n');
    }
    let file = root.with_extension(format!("usage-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::write(&file, lines).unwrap();
    run_ok(strata().args([
        "gen",
        "--from",
        file.to_str().unwrap(),
        "--storage-url",
        root.to_str().unwrap(),
    ]));
}

/// Spend the budget counts.
fn call(cost: &str) -> Usage<'_> {
    (FEATURE, "u-budget", cost, "job-budget", "")
}

/// A call outside the budget's scope, so that the tables exist before a server starts.
fn warm_up(root: &Path) {
    append_ai_usage(root, &[("other", "u-warm", "1.00", "job-warm", "")]);
}

/// The test tokens and one of scope `ai` (the AI job runner's).
struct Keys {
    t: Tokens,
    ai: String,
}

fn keys() -> Keys {
    use strata_query_api::{new_token, Scope};
    let mut t = tokens();
    let (ai, line) = new_token("runner", &[Scope::Ai]);
    t.lines.push(line);
    Keys { t, ai }
}

/// `[ai-month]`: `amount` of search_answer spend a UTC month, the default thresholds, hard,
/// alerts to `hook` when given.
fn budgets(amount: &str, hook: Option<&str>) -> String {
    let webhooks: Vec<Value> = hook
        .map(|url| json!({ "url": url, "secret": SECRET }))
        .into_iter()
        .collect();
    json!([{
        "name": BUDGET, "amount": amount, "scope": { "feature": FEATURE },
        "period": { "kind": "month", "tz": "UTC" }, "hard": true, "webhooks": webhooks,
    }])
    .to_string()
}

fn serve(root: &Path, keys: &Keys, budgets: &str, extra: &[&str]) -> TestServer {
    TestServer::start_env(root, &keys.t, extra, &[("STRATA_BUDGETS", budgets)])
}

/// A warmed-up root and one server on it with `[ai-month]` of `amount` (alerts to `hook` when
/// given) and the `extra` flags, its budgets read: what most tests start from.
struct Started {
    dir: tempfile::TempDir,
    root: PathBuf,
    keys: Keys,
    c: Client,
    server: TestServer,
}

async fn started(amount: &str, hook: Option<&Receiver>, extra: &[&str]) -> Started {
    let dir = test_dir();
    let root = dir.path().join("root");
    warm_up(&root);
    let (keys, c) = (keys(), client());
    let config = budgets(amount, hook.map(|h| h.url.as_str()));
    let server = serve(&root, &keys, &config, extra);
    wait_ready(&c, &server, &keys).await;
    Started {
        dir,
        root,
        keys,
        c,
        server,
    }
}

fn decision_path(feature: &str) -> String {
    format!("/v1/ai/budgets/decision?feature={feature}")
}

async fn decision(c: &Client, s: &TestServer, keys: &Keys, feature: &str) -> Value {
    let (status, v) = s.get_json(c, &decision_path(feature), &keys.ai).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn view(c: &Client, s: &TestServer, keys: &Keys) -> Value {
    let path = format!("/v1/ai/budgets/{BUDGET}");
    let (status, v) = s.get_json(c, &path, &keys.t.panels).await;
    assert_eq!(status, 200, "{v}");
    v
}

/// Waits for the first read of the budgets (503 until then).
async fn wait_ready(c: &Client, s: &TestServer, keys: &Keys) {
    let start = Instant::now();
    loop {
        let (status, v) = s.get_json(c, &decision_path(FEATURE), &keys.ai).await;
        if status == 200 && v["as_of"].is_string() {
            return;
        }
        assert!(status == 200 || status == 503, "{status}: {v}");
        assert!(start.elapsed() < WAIT, "the budgets were never read: {v}");
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the server's state of the budget shows `spend` (it read the appended calls).
async fn wait_spend(c: &Client, s: &TestServer, keys: &Keys, spend: &str) -> Value {
    let start = Instant::now();
    loop {
        let v = view(c, s, keys).await;
        if v["state"]["spend"] == spend {
            return v;
        }
        assert!(
            start.elapsed() < WAIT,
            "the spend never became {spend}: {v}"
        );
        tokio::time::sleep(POLL).await;
    }
}

fn assert_decision(d: &Value, action: Value, allow: bool, batch_percent: u64) {
    assert_eq!(
        (
            &d["action"],
            d["allow"].as_bool(),
            d["batch_percent"].as_u64()
        ),
        (&action, Some(allow), Some(batch_percent)),
        "{d}"
    );
    assert!(d["as_of"].is_string() && d["lag_ms"].is_u64(), "{d}");
}

/// Lets a few refreshes pass, each a chance to send an alert again: three reads of the
/// budget on each server, a second apart.
async fn let_refreshes_pass(c: &Client, servers: &[&TestServer], keys: &Keys) {
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for s in servers {
            view(c, s, keys).await;
        }
    }
}

/// The budget's alert deliveries in `job_runs`: (status, detail), none before the table exists.
async fn alert_runs(c: &Client, s: &TestServer, keys: &Keys) -> Vec<(String, Value)> {
    let q = format!("SELECT status, detail FROM job_runs WHERE job = 'budget_alert:{BUDGET}'");
    let (status, rows) = s.post_json(c, "/v1/sql", &keys.t.sql, q).await;
    if status != 200 {
        return Vec::new();
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    rows.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let detail = serde_json::from_str(&text(&r["detail"])).unwrap_or(Value::Null);
            (text(&r["status"]), detail)
        })
        .collect()
}

/// Waits until every kind in `kinds` has a delivery row in `job_runs`; returns all rows.
async fn wait_runs(
    c: &Client,
    s: &TestServer,
    keys: &Keys,
    kinds: &[&str],
) -> Vec<(String, Value)> {
    let start = Instant::now();
    loop {
        let runs = alert_runs(c, s, keys).await;
        if kinds
            .iter()
            .all(|k| runs.iter().any(|(_, d)| d["kind"] == *k))
        {
            return runs;
        }
        assert!(
            start.elapsed() < WAIT * 2,
            "no job_runs rows for {kinds:?}: {runs:?}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Reservation files under the root (one per open reservation).
fn stored_reservations(root: &Path) -> usize {
    std::fs::read_dir(root.join("_strata/budgets/reservations"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn alert_kinds(view: &Value) -> Vec<String> {
    let mut kinds: Vec<String> = view["alerts"]
        .as_array()
        .unwrap_or_else(|| panic!("no alerts in {view}"))
        .iter()
        .filter_map(|a| a["kind"].as_str())
        .filter(|k| k.starts_with("threshold-"))
        .map(String::from)
        .collect();
    kinds.sort();
    kinds
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thresholds_decisions_and_one_webhook_per_threshold() {
    let hook = Receiver::start(0);
    let Started {
        dir: _dir,
        root,
        keys,
        c,
        server,
    } = started("100.00", Some(&hook), &[]).await;

    // Scopes: the decision is the runner's (ai), the views the dashboard's (panels).
    let r = server
        .get(&c, &decision_path(FEATURE), &keys.t.panels)
        .await;
    assert_eq!(r.status(), 403);
    let (s, list) = server.get_json(&c, "/v1/ai/budgets", &keys.t.panels).await;
    assert_eq!(s, 200, "{list}");
    assert!(list["as_of"].is_string(), "{list}");
    let budgets = list["budgets"].as_array().unwrap();
    let names: Vec<&Value> = budgets.iter().map(|b| &b["name"]).collect();
    assert_eq!(names, [&json!(BUDGET)], "{list}");

    // 70%: nothing to do.
    append_ai_usage(&root, &[call("70.00")]);
    let v = wait_spend(&c, &server, &keys, "70.00").await;
    assert_eq!(v["state"]["share"], "70.00%", "{v}");
    assert_decision(
        &decision(&c, &server, &keys, FEATURE).await,
        Value::Null,
        true,
        100,
    );

    // 76%: alert.
    append_ai_usage(&root, &[call("6.00")]);
    wait_spend(&c, &server, &keys, "76.00").await;
    let d = decision(&c, &server, &keys, FEATURE).await;
    assert_decision(&d, json!("alert"), true, 100);
    assert_eq!(d["budget"], BUDGET, "{d}");
    assert!(d["reason"].as_str().unwrap().contains("76.00%"), "{d}");
    hook.wait_delivered("threshold-75", WAIT).await;

    // 91%: batches halved.
    append_ai_usage(&root, &[call("15.00")]);
    wait_spend(&c, &server, &keys, "91.00").await;
    let d = decision(&c, &server, &keys, FEATURE).await;
    assert_decision(&d, json!({ "reduce_batch": { "percent": 50 } }), true, 50);
    hook.wait_delivered("threshold-90", WAIT).await;

    // 101%: stop, for a call that names the feature and one that names nothing.
    append_ai_usage(&root, &[call("10.00")]);
    wait_spend(&c, &server, &keys, "101.00").await;
    assert_decision(
        &decision(&c, &server, &keys, FEATURE).await,
        json!("stop"),
        false,
        0,
    );
    let (s, d) = server
        .get_json(&c, "/v1/ai/budgets/decision", &keys.ai)
        .await;
    assert_eq!(s, 200, "{d}");
    assert_decision(&d, json!("stop"), false, 0);
    hook.wait_delivered("threshold-100", WAIT).await;

    // Another feature is no budget's business.
    let d = decision(&c, &server, &keys, "other").await;
    assert_decision(&d, Value::Null, true, 100);
    assert_eq!(d["reason"], "no budget covers this call", "{d}");

    let_refreshes_pass(&c, &[&server], &keys).await;
    assert_each_once(&hook, &["threshold-100", "threshold-75", "threshold-90"]);
    let v = view(&c, &server, &keys).await;
    assert_eq!(
        (&v["state"]["spend"], &v["state"]["share"], &v["amount"]),
        (&json!("101.00"), &json!("101.00%"), &json!("100.00")),
        "{v}"
    );
    assert_eq!(v["state"]["action"], "stop", "{v}");
    assert_eq!(
        alert_kinds(&v),
        ["threshold-100", "threshold-75", "threshold-90"],
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_receiver_gets_the_alert_once() {
    let hook = Receiver::start(2);
    let Started {
        dir: _dir,
        root,
        keys,
        c,
        server,
    } = started("100.00", Some(&hook), &[]).await;
    append_ai_usage(&root, &[call("76.00")]);
    wait_spend(&c, &server, &keys, "76.00").await;

    // Backoff 1 s, then 2 s: the third try comes about 3 s after the first.
    let hits = hook
        .wait_delivered("threshold-75", Duration::from_secs(40))
        .await;
    let tries: Vec<&Hit> = hits.iter().filter(|h| h.kind() == "threshold-75").collect();
    let statuses: Vec<u16> = tries.iter().map(|h| h.status).collect();
    assert_eq!(statuses, [500, 500, 200], "{tries:?}");
    let id = tries[0].alert_id();
    assert!(!id.is_empty(), "no {ALERT_ID}: {:?}", tries[0]);
    for h in &tries {
        assert_eq!(h.alert_id(), id, "a retry is the same alert");
        assert_signed(h, SECRET);
    }
    for pair in tries.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(gap >= Duration::from_millis(800), "retried after {gap:?}");
    }

    // The delivery is in job health, with its attempts.
    let runs = wait_runs(&c, &server, &keys, &["threshold-75"]).await;
    let mine: Vec<&(String, Value)> = runs
        .iter()
        .filter(|(_, d)| d["kind"] == "threshold-75")
        .collect();
    assert_eq!(mine.len(), 1, "{runs:?}");
    assert_eq!(mine[0].0, "ok", "{runs:?}");
    assert_eq!(mine[0].1["attempts"], 3, "{runs:?}");

    let_refreshes_pass(&c, &[&server], &keys).await;
    let again = hook
        .hits()
        .into_iter()
        .filter(|h| h.kind() == "threshold-75")
        .count();
    assert_eq!(again, 3, "the alert was sent again after it was delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_does_not_resend() {
    let dir = test_dir();
    let root = dir.path().join("root");
    warm_up(&root);
    let hook = Receiver::start(0);
    let (keys, c) = (keys(), client());
    let config = budgets("100.00", Some(hook.url.as_str()));
    let first = serve(&root, &keys, &config, &[]);
    wait_ready(&c, &first, &keys).await;
    append_ai_usage(&root, &[call("76.00")]);
    wait_spend(&c, &first, &keys, "76.00").await;
    hook.wait_delivered("threshold-75", WAIT).await;
    // Every alert sent (a forecast one too, perhaps) has finished: its record is final.
    let start = Instant::now();
    loop {
        let mut ids: Vec<String> = hook
            .hits()
            .iter()
            .map(|h| h.alert_id().to_string())
            .collect();
        ids.sort();
        ids.dedup();
        if alert_runs(&c, &first, &keys).await.len() >= ids.len() {
            break;
        }
        assert!(
            start.elapsed() < WAIT,
            "the deliveries never reached job_runs"
        );
        tokio::time::sleep(POLL).await;
    }
    assert!(first.stop().success());
    let sent = hook.hits().len();

    let second = serve(&root, &keys, &config, &[]);
    wait_ready(&c, &second, &keys).await;
    wait_spend(&c, &second, &keys, "76.00").await;
    assert_decision(
        &decision(&c, &second, &keys, FEATURE).await,
        json!("alert"),
        true,
        100,
    );
    // New data, no new threshold: a refresh that finds threshold-75 due and claimed.
    append_ai_usage(&root, &[call("1.00")]);
    let v = wait_spend(&c, &second, &keys, "77.00").await;
    assert_eq!(alert_kinds(&v), ["threshold-75"], "{v}");
    let_refreshes_pass(&c, &[&second], &keys).await;
    assert_eq!(
        hook.hits().len(),
        sent,
        "the restarted server sent again: {:?}",
        hook.hits()
    );
    assert_each_once(&hook, &["threshold-75"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_send_each_alert_once() {
    let dir = test_dir();
    let root = dir.path().join("root");
    warm_up(&root);
    let hook = Receiver::start(0);
    let (keys, c) = (keys(), client());
    let config = budgets("100.00", Some(hook.url.as_str()));
    let a = serve(&root, &keys, &config, &[]);
    let b = serve(&root, &keys, &config, &[]);
    for s in [&a, &b] {
        wait_ready(&c, s, &keys).await;
    }
    append_ai_usage(&root, &[call("76.00")]);
    for s in [&a, &b] {
        wait_spend(&c, s, &keys, "76.00").await;
    }
    hook.wait_delivered("threshold-75", WAIT).await;
    append_ai_usage(&root, &[call("15.00")]);
    for s in [&a, &b] {
        wait_spend(&c, s, &keys, "91.00").await;
        let d = decision(&c, s, &keys, FEATURE).await;
        assert_decision(&d, json!({ "reduce_batch": { "percent": 50 } }), true, 50);
    }
    hook.wait_delivered("threshold-90", WAIT).await;
    wait_runs(&c, &a, &keys, &["threshold-75", "threshold-90"]).await;
    let_refreshes_pass(&c, &[&a, &b], &keys).await;
    assert_each_once(&hook, &["threshold-75", "threshold-90"]);
    let runs = alert_runs(&c, &b, &keys).await;
    for kind in ["threshold-75", "threshold-90"] {
        let n = runs.iter().filter(|(_, d)| d["kind"] == kind).count();
        assert_eq!(
            n, 1,
            "{kind} delivered {n} times by the two servers: {runs:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_override_changes_the_decision_at_once_and_expires() {
    let dir = test_dir();
    let root = dir.path().join("root");
    append_ai_usage(&root, &[call("101.00")]);
    let (keys, c) = (keys(), client());
    let server = serve(&root, &keys, &budgets("100.00", None), &[]);
    wait_ready(&c, &server, &keys).await;
    wait_spend(&c, &server, &keys, "101.00").await;
    assert_decision(
        &decision(&c, &server, &keys, FEATURE).await,
        json!("stop"),
        false,
        0,
    );

    let path = format!("/v1/ai/budgets/{BUDGET}/overrides");
    let body = json!({
        "amount": "200.00", "reason": "launch week", "approver": "cfo", "ttl_secs": 4,
    })
    .to_string();
    // Only an admin may override, and only with a reason.
    for token in [&keys.t.panels, &keys.ai] {
        let r = server.post(&c, &path, token, body.clone()).await;
        assert_eq!(r.status(), 403);
    }
    let no_reason = json!({ "amount": "200.00", "approver": "cfo", "ttl_secs": 4 }).to_string();
    let (s, v) = server.post_json(&c, &path, &keys.t.admin, no_reason).await;
    assert_error(s, &v, 400, "bad_request");
    assert!(v["error"].as_str().unwrap().contains("reason"), "{v}");

    let (s, o) = server.post_json(&c, &path, &keys.t.admin, body).await;
    assert_eq!(s, 201, "{o}");
    // The very next decision: 101 of 200 is 50.5%, nothing to do.
    assert_decision(
        &decision(&c, &server, &keys, FEATURE).await,
        Value::Null,
        true,
        100,
    );
    let v = view(&c, &server, &keys).await;
    assert_eq!(
        (&v["amount"], &v["configured_amount"], &v["state"]["share"]),
        (&json!("200.00"), &json!("100.00"), &json!("50.50%")),
        "{v}"
    );
    assert_eq!(v["overrides"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["overrides"][0]["id"], o["id"], "{v}");
    assert_eq!(
        (
            &o["budget"],
            &o["amount"],
            &o["reason"],
            &o["approver"],
            &o["created_by"]
        ),
        (
            &json!(BUDGET),
            &json!("200.00"),
            &json!("launch week"),
            &json!("cfo"),
            &json!("admin")
        ),
        "{o}"
    );
    assert_eq!(o["suspend"], json!(false), "{o}");
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(o[k].as_str().unwrap()).unwrap();
    assert_eq!(
        (at("expires_at") - at("created_at")).num_seconds(),
        4,
        "{o}"
    );

    // Audited in the table.
    let q = "SELECT budget, reason, approver FROM budget_overrides".to_string();
    let (s, rows) = server.post_json(&c, "/v1/sql", &keys.t.sql, q).await;
    assert_eq!(s, 200, "{rows}");
    assert_eq!(
        rows,
        json!([{ "budget": BUDGET, "reason": "launch week", "approver": "cfo" }])
    );

    // It ends on its own.
    let start = Instant::now();
    loop {
        let d = decision(&c, &server, &keys, FEATURE).await;
        if d["action"] == "stop" {
            assert_decision(&d, json!("stop"), false, 0);
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "the override never expired: {d}"
        );
        tokio::time::sleep(POLL).await;
    }
    let v = view(&c, &server, &keys).await;
    assert_eq!(
        (&v["amount"], &v["overrides"]),
        (&json!("100.00"), &json!([])),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_reservations_never_overshoot() {
    // The per-token rate (50/s, bursts of 200) and the connection cap would answer part of
    // the burst 429 or queue it: raised, so that every answer is the ledger's.
    let limits = ["--rate-limit", "100000", "--max-connections", "4096"];
    let Started {
        dir: _dir,
        root,
        keys,
        c,
        server,
    } = started("10.00", None, &limits).await;

    let (s_ref, c_ref, ai) = (&server, &c, keys.ai.as_str());
    let answers = futures::future::join_all((0..1000).map(move |i| async move {
        let body = json!({
            "estimated_cost": "0.05", "feature": FEATURE,
            "batch_id": format!("b-{i}"), "ttl_secs": 300,
        });
        s_ref
            .post_json(c_ref, RESERVATIONS, ai, body.to_string())
            .await
    }))
    .await;
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    for (s, v) in &answers {
        *statuses.entry(*s).or_insert(0) += 1;
        match *s {
            201 => assert_eq!(v["estimated_cost"], "0.05", "{v}"),
            409 => {
                assert_error(*s, v, 409, "budget_exhausted");
                assert!(v["error"].as_str().unwrap().contains(BUDGET), "{v}");
            }
            _ => panic!("a reservation was answered {s} (a 429: raise the limits): {v}"),
        }
    }
    assert_eq!(statuses.values().sum::<usize>(), 1000);
    assert_eq!(
        (statuses.get(&201), statuses.get(&409)),
        (Some(&200), Some(&800)),
        "{statuses:?}"
    );
    let v = view(&c, &server, &keys).await;
    assert_eq!(v["held"], "10.00", "{v}");
    let stored = || stored_reservations(&root);
    assert_eq!(stored(), 200);

    // A released reservation makes room for exactly one more.
    let held = &answers.iter().find(|(s, _)| *s == 201).unwrap().1;
    let id = held["id"].as_str().unwrap().to_string();
    let r = server.delete(&c, &format!("{RESERVATIONS}/{id}"), ai).await;
    assert_eq!(r.status(), 204);
    assert_eq!(view(&c, &server, &keys).await["held"], "9.95");
    assert_eq!(stored(), 199);
    let r = server.delete(&c, &format!("{RESERVATIONS}/{id}"), ai).await;
    assert_eq!(r.status(), 404);
    let one = |batch: &str| {
        json!({ "estimated_cost": "0.05", "feature": FEATURE, "batch_id": batch }).to_string()
    };
    let (s, v) = server.post_json(&c, RESERVATIONS, ai, one("b-again")).await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = server.post_json(&c, RESERVATIONS, ai, one("b-over")).await;
    assert_error(s, &v, 409, "budget_exhausted");
    assert_eq!(view(&c, &server, &keys).await["held"], "10.00");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_say_what_to_fix() {
    let Started {
        dir: _dir,
        root,
        keys,
        c,
        server,
    } = started("100.00", None, &[]).await;

    let bad = [
        (
            json!({ "estimated_cost": "abc", "feature": FEATURE, "batch_id": "b-1" }),
            "estimated_cost",
        ),
        (
            json!({ "estimated_cost": "1.00", "batch_id": "b-1", "ttl_secs": 0 }),
            "ttl_secs",
        ),
        (
            json!({ "estimated_cost": "1.00", "batch_id": "b-1", "ttl_secs": 3601 }),
            "ttl_secs",
        ),
        (
            json!({ "estimated_cost": "1.00", "feature": FEATURE }),
            "batch_id",
        ),
    ];
    for (body, field) in bad {
        let (s, v) = server
            .post_json(&c, RESERVATIONS, &keys.ai, body.to_string())
            .await;
        assert_error(s, &v, 400, "bad_request");
        assert!(v["error"].as_str().unwrap().contains(field), "{body}: {v}");
    }
    assert_eq!(
        stored_reservations(&root),
        0,
        "a refused reservation was stored"
    );

    let (s, v) = server
        .get_json(&c, "/v1/ai/budgets/decision?feture=x", &keys.ai)
        .await;
    assert_eq!(s, 400, "{v}");

    let (s, v) = server
        .get_json(&c, "/v1/ai/budgets/nope", &keys.t.panels)
        .await;
    assert_error(s, &v, 404, "not_found");
    let body = json!({ "amount": "200.00", "reason": "r", "approver": "a", "ttl_secs": 60 });
    let (s, v) = server
        .post_json(
            &c,
            "/v1/ai/budgets/nope/overrides",
            &keys.t.admin,
            body.to_string(),
        )
        .await;
    assert_error(s, &v, 404, "not_found");
}
