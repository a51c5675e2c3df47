//! The HTTP layer of `strata serve` under attack: bodies sent to callers who are refused,
//! oversized bodies, malformed requests, label floods, request floods, stalled headers and
//! connection hogs.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use reqwest::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use serde_json::Value;

use super::server::{
    assert_error, bearer, client, json, seeded_test_root, send, tokens, TestServer,
};

const TWO_MB: usize = 2 << 20;

fn host(server: &TestServer) -> &str {
    server.base.trim_start_matches("http://")
}

/// A response read off a raw socket.
struct RawResponse {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn json(&self) -> Value {
        assert!(
            self.header("content-type")
                .is_some_and(|v| v.starts_with("application/json")),
            "not a JSON response: {}",
            self.head
        );
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {}\n{}",
                self.head,
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// Sends `head` on a new connection and `body` from another thread (the server may answer
/// and close before it took it all, so write errors are expected), then reads one response;
/// panics when none has arrived `within`.
fn exchange(
    server: &TestServer,
    head: &str,
    body: Option<Vec<u8>>,
    within: Duration,
) -> RawResponse {
    let mut stream = TcpStream::connect(host(server)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let writer = body.map(|body| {
        let mut w = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            for chunk in body.chunks(64 << 10) {
                if w.write_all(chunk).is_err() {
                    return;
                }
            }
        })
    });
    let started = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 16 << 10];
    let response = loop {
        if let Some(r) = parse_response(&got) {
            break r;
        }
        let left = within.saturating_sub(started.elapsed());
        assert!(
            !left.is_zero(),
            "no response within {within:?}; got: {}",
            String::from_utf8_lossy(&got)
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => match parse_response(&got) {
                Some(r) => break r,
                None => panic!(
                    "the server closed the connection without a response; got: {}",
                    String::from_utf8_lossy(&got)
                ),
            },
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!(
                "reading the response failed ({e}); got: {}",
                String::from_utf8_lossy(&got)
            ),
        }
    };
    // Unblocks the writer if the server stopped reading without closing.
    let _ = stream.shutdown(Shutdown::Both);
    if let Some(w) = writer {
        w.join().unwrap();
    }
    response
}

/// A complete response (head and `Content-Length` bytes of body) at the start of `bytes`.
fn parse_response(bytes: &[u8]) -> Option<RawResponse> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let mut r = RawResponse {
        status,
        head,
        body: Vec::new(),
    };
    let len: usize = r.header("content-length")?.parse().ok()?;
    let body = &bytes[end + 4..];
    if body.len() < len {
        return None;
    }
    r.body = body[..len].to_vec();
    Some(r)
}

/// `body` as HTTP/1.1 chunks of 64 KiB.
fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 1000 + 16);
    for chunk in body.chunks(64 << 10) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_are_refused_before_they_are_read_and_capped_at_1_mib() {
    let (_dir, root) = seeded_test_root(2_000);
    let t = tokens();
    let server = TestServer::start(&root, &t, &[]);
    let sql_head = |auth: &str, length: &str| {
        format!(
            "POST /v1/sql HTTP/1.1\r\nHost: {}\r\nContent-Type: text/plain\r\n{auth}{length}Connection: close\r\n\r\n",
            host(&server)
        )
    };
    let two_mb = format!("Content-Length: {TWO_MB}\r\n");

    // 2 MB announced and none sent: only a server that checks the token first answers at all.
    let wrong = "Authorization: Bearer strata_0000\r\n";
    for auth in ["", wrong] {
        let r = exchange(
            &server,
            &sql_head(auth, &two_mb),
            None,
            Duration::from_secs(10),
        );
        assert_error(r.status, &r.json(), 401, "unauthenticated");
    }
    // And with the 2 MB sent.
    let r = exchange(
        &server,
        &sql_head("", &two_mb),
        Some(vec![b'x'; TWO_MB]),
        Duration::from_secs(20),
    );
    assert!(r.status == 401 || r.status == 413, "{}", r.head);
    assert!(r.json()["code"].is_string());
    let c = client();
    assert_eq!(
        c.get(server.url("/healthz")).send().await.unwrap().status(),
        200
    );

    // With a valid token: a declared 2 MB is refused unread, a chunked one once 1 MiB is in.
    let token = format!("Authorization: {}\r\n", bearer(&t.sql));
    for (length, body) in [
        (two_mb.as_str(), vec![b'x'; TWO_MB]),
        (
            "Transfer-Encoding: chunked\r\n",
            chunked(&vec![b'x'; TWO_MB]),
        ),
    ] {
        let r = exchange(
            &server,
            &sql_head(&token, length),
            Some(body),
            Duration::from_secs(20),
        );
        let body = r.json();
        assert_error(r.status, &body, 413, "payload_too_large");
        assert!(!body["error"].as_str().unwrap().is_empty());
    }

    // The token itself works, and so does the server.
    let (s, rows) = server
        .post_json(
            &c,
            "/v1/sql",
            &t.sql,
            "SELECT count(*) AS n FROM link_clicks",
        )
        .await;
    assert_eq!(s, 200, "{rows}");
    assert!(rows[0]["n"].as_u64().is_some_and(|n| n > 0), "{rows}");
    assert_eq!(
        c.get(server.url("/healthz")).send().await.unwrap().status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_json_with_a_code() {
    let (_dir, root) = seeded_test_root(2_000);
    let t = tokens();
    let server = TestServer::start(&root, &t, &[]);
    let c = client();
    let is_json = |r: &reqwest::Response| {
        r.headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"))
    };

    // A query string axum's `Query` refuses (a field given twice).
    let r = server
        .get(&c, "/v1/sql?q=SELECT%201&q=SELECT%202", &t.sql)
        .await;
    assert!(is_json(&r), "{:?}", r.headers());
    let (s, body) = json(r).await;
    assert_error(s, &body, 400, "bad_request");
    assert!(!body["error"].as_str().unwrap().is_empty());

    // A panel parameter that is not a number, given twice.
    let (s, body) = server
        .get_json(&c, "/v1/panels/top_items?limit=abc&limit=1", &t.panels)
        .await;
    assert_eq!(s, 400, "{body}");
    assert!(
        body["code"].is_string() && body["error"].is_string(),
        "{body}"
    );

    // A GDPR request whose body is not JSON.
    let not_json = server
        .post_with(&c, "/v1/gdpr/purges", &t.admin)
        .header(CONTENT_TYPE, "application/json")
        .body("{\"subject\": ");
    let (s, body) = json(send(not_json).await).await;
    assert_error(s, &body, 400, "bad_body");

    // 405, public and authenticated, with its Allow header kept.
    let r = c.delete(server.url("/healthz")).send().await.unwrap();
    assert!(r.headers().contains_key(ALLOW), "{:?}", r.headers());
    assert!(is_json(&r), "{:?}", r.headers());
    let (s, body) = json(r).await;
    assert_error(s, &body, 405, "method_not_allowed");
    let put = c
        .put(server.url("/v1/sql"))
        .header(AUTHORIZATION, bearer(&t.sql))
        .body("SELECT 1");
    let (s, body) = json(send(put).await).await;
    assert_error(s, &body, 405, "method_not_allowed");

    // 404.
    let (s, body) = json(c.get(server.url("/v2/nothing")).send().await.unwrap()).await;
    assert_error(s, &body, 404, "not_found");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_panel_names_do_not_become_metric_labels() {
    let (_dir, root) = seeded_test_root(2_000);
    let t = tokens();
    let server = TestServer::start(&root, &t, &[]);
    let c = client();
    let names: Vec<String> = (0..50)
        .map(|i| format!("probe{i}x{}", uuid::Uuid::new_v4().simple()))
        .collect();
    for name in &names {
        let (s, body) = server
            .get_json(&c, &format!("/v1/panels/{name}"), &t.panels)
            .await;
        assert_error(s, &body, 404, "not_found");
    }
    let overview = "/v1/panels/overview?from=2026-10-03&to=2026-11-01";
    let r = server.get(&c, overview, &t.panels).await;
    assert_eq!(r.status(), 200);
    let text = server.metrics(&c).await;
    for name in &names {
        assert!(!text.contains(name.as_str()), "{name} is a label value");
    }
    // The 404s are counted under the matched route, never under the name asked for; only a
    // panel that ran is a label value (of the query duration).
    let not_found = text.lines().any(|l| {
        l.starts_with("strata_http_server_request_duration_seconds_count{")
            && l.contains("http_route=\"/v1/panels/{name}\"")
            && l.contains("http_response_status_code=\"404\"")
            && l.ends_with(" 50")
    });
    assert!(not_found, "{text}");
    assert!(text.contains("panel=\"overview\""), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_without_a_valid_token_gets_429() {
    let (_dir, root) = seeded_test_root(2_000);
    let t = tokens();
    // 5 requests per second, bursts of 25.
    let server = TestServer::start(&root, &t, &["--peer-rate-limit", "5"]);
    let c = client();

    // Guessing tokens: 401 while the address's budget lasts, then 429.
    let mut statuses = Vec::new();
    let mut limited = None;
    for _ in 0..200 {
        let r = server.get(&c, "/v1/panels", "strata_guess").await;
        statuses.push(r.status().as_u16());
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.unwrap_or_else(|| panic!("no 429 after 200 guesses: {statuses:?}"));
    assert_eq!(statuses[0], 401);
    assert!(
        statuses[..statuses.len() - 1].iter().all(|s| *s == 401),
        "{statuses:?}"
    );
    let retry: u64 = r.headers()[RETRY_AFTER].to_str().unwrap().parse().unwrap();
    assert!(retry >= 1);
    let (_, body) = json(r).await;
    assert_eq!(body["code"], "rate_limited");

    // Public routes share the budget.
    let mut limited = None;
    for _ in 0..200 {
        let r = c.get(server.url("/healthz")).send().await.unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status(), 200);
    }
    let r = limited.expect("no 429 after 200 requests to /healthz at 5/s");
    assert!(r.headers().contains_key(RETRY_AFTER));
    let (_, body) = json(r).await;
    assert_eq!(body["code"], "rate_limited");

    // A valid token is limited by its own bucket, not the address's.
    let r = server.get(&c, "/v1/panels", &t.panels).await;
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_are_cut_and_connections_are_capped() {
    let (_dir, root) = seeded_test_root(2_000);
    let t = tokens();
    let half_a_header = b"GET /healthz HTTP/1.1\r\nHost: strata\r\nX-Slow: ";

    // A client that sends half a header and stalls is cut at the header timeout, and others
    // are served meanwhile.
    let server = TestServer::start(&root, &t, &["--header-timeout-secs", "2"]);
    let mut stalled = TcpStream::connect(host(&server)).unwrap();
    stalled.write_all(half_a_header).unwrap();
    let started = Instant::now();
    let r = client().get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2));
    let closed_after = wait_closed(&mut stalled, started, Duration::from_secs(15));
    assert!(
        closed_after >= Duration::from_millis(1500) && closed_after < Duration::from_secs(8),
        "the stalled connection was closed after {closed_after:?}, not at the 2 s header timeout"
    );
    assert_eq!(
        client()
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(server);

    // With one connection allowed, a client holding it makes the next one wait until it is cut.
    let server = TestServer::start(
        &root,
        &t,
        &["--header-timeout-secs", "2", "--max-connections", "1"],
    );
    let mut hog = TcpStream::connect(host(&server)).unwrap();
    hog.write_all(half_a_header).unwrap();
    let started = Instant::now();
    let r = client().get(server.url("/healthz")).send().await.unwrap();
    let waited = started.elapsed();
    assert_eq!(r.status(), 200);
    assert!(
        waited >= Duration::from_millis(1500),
        "served after {waited:?} while the only connection slot was held"
    );
    wait_closed(&mut hog, started, Duration::from_secs(15));
}

/// How long after `since` the server closed `stream` (EOF or reset); panics when it is still
/// open `limit` after `since`.
fn wait_closed(stream: &mut TcpStream, since: Instant, limit: Duration) -> Duration {
    let mut buf = [0u8; 1024];
    loop {
        let left = limit.saturating_sub(since.elapsed());
        assert!(
            !left.is_zero(),
            "the server kept the connection open for {limit:?}"
        );
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return since.elapsed(),
            // A response (hyper may answer the timeout), then the close.
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return since.elapsed(),
        }
    }
}
