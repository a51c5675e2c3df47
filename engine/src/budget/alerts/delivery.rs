//! Sending a claimed alert: signed POSTs to each of the budget's webhooks, retried with
//! backoff until a 2xx, the record saved after every attempt.
//!
//! ```text
//! for each webhook:  POST --5xx / timeout--> sleep backoff[0] --> POST ... (backoff.len() + 1 tries)
//!                         --2xx--> next webhook
//! every attempt:     record.attempts += 1, last_error, updated_at -> save (overwrite)
//! the end:           delivered (every webhook answered 2xx) | failed -> save
//! ```

use std::time::Duration;

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use tracing::{info, warn};

use super::record::{save, AlertRecord, AlertStatus};
use crate::budget::config::Webhook;
use crate::{EngineError, Result, Storage};

/// Pauses between the attempts at one webhook: 1, 2, 4, 8, 16 and 32 seconds, so seven
/// attempts over about a minute.
pub const DEFAULT_BACKOFF: [Duration; 6] = [
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(32),
];
/// `t=<unix seconds>,v1=<hex HMAC-SHA256 over "<t>.<body>">`.
pub const SIGNATURE_HEADER: &str = "x-strata-signature";
/// The alert's id, for receivers to deduplicate on (delivery is at least once).
const ALERT_ID_HEADER: &str = "x-strata-alert-id";
const USER_AGENT: &str = "strata-budget-alerts";
/// At most this much of a failed response's body is kept in `last_error`.
const MAX_BODY_CHARS: usize = 200;
/// Reading of a failed response's body stops past this many bytes.
const MAX_BODY_BYTES: usize = 4096;
/// A transport error's text is cut to this length.
const MAX_ERROR_CHARS: usize = 300;

/// HMAC-SHA256 of `message` under `key`, as lowercase hex.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    // HMAC takes a key of any length (a longer one is hashed first): this cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// The `x-strata-signature` value of `body` sent at `timestamp` (Unix seconds):
/// `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>" under secret>`.
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    format!(
        "t={timestamp},v1={}",
        hmac_sha256_hex(secret.as_bytes(), &message)
    )
}

/// Sends claimed alerts; cheap to clone (the HTTP client is shared).
#[derive(Debug, Clone)]
pub struct Sender {
    client: reqwest::Client,
    /// The pause before each retry at one webhook.
    backoff: Vec<Duration>,
    /// The limit on one request, connecting included.
    timeout: Duration,
}

/// What one delivery did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeliveryOutcome {
    /// Every webhook answered 2xx.
    pub delivered: bool,
    /// Requests made by this delivery.
    pub attempts: u32,
    /// Of them, those without a 2xx.
    pub failed_attempts: u32,
}

/// Why one attempt failed.
enum Failure {
    Status { code: u16, body: String },
    Transport(String),
}

impl Sender {
    /// A sender that retries after each pause of `backoff` and gives each request `timeout`.
    pub fn new(backoff: Vec<Duration>, timeout: Duration) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(USER_AGENT)
            // A redirect would take the signed alert somewhere the operator did not configure.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| {
                EngineError::Internal(format!("building the HTTP client of budget alerts: {e}"))
            })?;
        Ok(Self {
            client,
            backoff,
            timeout,
        })
    }

    /// POSTs `record`'s payload to each webhook until it answers 2xx, with
    /// `backoff.len() + 1` attempts per webhook; saves the record after every attempt (a failed
    /// save is logged and delivery goes on) and once more with the final status: `delivered`
    /// when every webhook answered 2xx, `failed` otherwise. `now` stamps the attempts.
    pub async fn deliver(
        &self,
        storage: &Storage,
        webhooks: &[Webhook],
        record: &mut AlertRecord,
        now: impl Fn() -> DateTime<Utc>,
    ) -> DeliveryOutcome {
        let mut outcome = DeliveryOutcome::default();
        // The error of the first webhook that never answered 2xx: a later success keeps it.
        let mut first_failure = webhooks
            .is_empty()
            .then(|| "the budget has no webhook any more".to_string());
        for (i, hook) in webhooks.iter().enumerate() {
            let (delivered, attempts) = self.deliver_to(storage, i + 1, hook, record, &now).await;
            outcome.attempts += attempts;
            outcome.failed_attempts += attempts - u32::from(delivered);
            if !delivered && first_failure.is_none() {
                first_failure = record.last_error.clone();
            }
        }
        outcome.delivered = first_failure.is_none();
        let at = now();
        record.updated_at = at;
        if outcome.delivered {
            record.status = AlertStatus::Delivered;
            record.delivered_at = Some(at);
            record.last_error = None;
            info!(budget = %record.budget, kind = %record.kind, attempts = outcome.attempts, "budget alert delivered");
        } else {
            record.status = AlertStatus::Failed;
            record.last_error = first_failure;
            warn!(budget = %record.budget, kind = %record.kind, attempts = outcome.attempts, "budget alert not delivered to every webhook");
        }
        if let Err(e) = save(storage, record).await {
            warn!(budget = %record.budget, kind = %record.kind, error = %e, "saving an alert's outcome failed");
        }
        outcome
    }

    /// The attempts at one webhook (`number` counts from 1): whether one answered 2xx, and
    /// how many were made.
    async fn deliver_to(
        &self,
        storage: &Storage,
        number: usize,
        hook: &Webhook,
        record: &mut AlertRecord,
        now: &impl Fn() -> DateTime<Utc>,
    ) -> (bool, u32) {
        let host = host_of(&hook.url);
        let pauses = std::iter::once(Duration::ZERO).chain(self.backoff.iter().copied());
        let mut made = 0;
        for (attempt, pause) in pauses.enumerate() {
            if !pause.is_zero() {
                tokio::time::sleep(pause).await;
            }
            let result = self.post(hook, record, now()).await;
            made += 1;
            record.attempts = record.attempts.saturating_add(1);
            record.updated_at = now();
            let ok = match result {
                Ok(()) => {
                    record.last_error = None;
                    true
                }
                Err(failure) => {
                    failure.log(record, &host, attempt + 1);
                    record.last_error =
                        Some(format!("webhook {number} ({host}): {}", failure.text()));
                    false
                }
            };
            if let Err(e) = save(storage, record).await {
                warn!(budget = %record.budget, kind = %record.kind, error = %e, "saving an alert's attempt failed; delivery goes on");
            }
            if ok {
                return (true, made);
            }
        }
        (false, made)
    }

    /// One signed POST of the payload, stamped `sent_at`.
    async fn post(
        &self,
        hook: &Webhook,
        record: &mut AlertRecord,
        sent_at: DateTime<Utc>,
    ) -> std::result::Result<(), Failure> {
        if let Some(fields) = record.payload.as_object_mut() {
            fields.insert("sent_at".into(), serde_json::json!(sent_at));
        }
        let body = serde_json::to_vec(&record.payload)
            .map_err(|e| Failure::Transport(format!("encoding the payload: {e}")))?;
        let signature = signature_header(&hook.secret, sent_at.timestamp(), &body);
        let response = self
            .client
            .post(&hook.url)
            .timeout(self.timeout)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(ALERT_ID_HEADER, record.id.as_str())
            .header(SIGNATURE_HEADER, signature)
            .body(body)
            .send()
            .await
            .map_err(transport_error)?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        Err(Failure::Status {
            code: status.as_u16(),
            body: body_start(response).await,
        })
    }
}

impl Failure {
    /// A warning naming the budget, the kind and the webhook's host, never its URL.
    fn log(&self, record: &AlertRecord, host: &str, attempt: usize) {
        let (budget, kind) = (&record.budget, &record.kind);
        match self {
            Self::Status { code, .. } => {
                warn!(budget = %budget, kind = %kind, host, attempt, status = code, "alert webhook answered with an error");
            }
            Self::Transport(e) => {
                warn!(budget = %budget, kind = %kind, host, attempt, error = %e, "alert webhook unreachable");
            }
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Status { code, body } if body.is_empty() => format!("HTTP {code}"),
            Self::Status { code, body } => format!("HTTP {code}: {body}"),
            Self::Transport(e) => e.clone(),
        }
    }
}

/// The error with its causes, without the URL (its query may hold a token).
fn transport_error(e: reqwest::Error) -> Failure {
    let e = e.without_url();
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else {
        e.to_string()
    };
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = std::error::Error::source(cause);
    }
    Failure::Transport(clip(&text, MAX_ERROR_CHARS))
}

/// The first [`MAX_BODY_CHARS`] characters of a response's body.
async fn body_start(mut response: reqwest::Response) -> String {
    let mut bytes = Vec::new();
    while bytes.len() < MAX_BODY_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    clip(String::from_utf8_lossy(&bytes).trim(), MAX_BODY_CHARS)
}

/// `text` cut to `max` characters, with `…` when it was longer.
fn clip(text: &str, max: usize) -> String {
    let mut out: String = text.chars().take(max).collect();
    if text.chars().nth(max).is_some() {
        out.push('…');
    }
    out
}

/// The webhook's host: all of its URL that logs and records may name.
fn host_of(url: &str) -> String {
    url::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_else(|| "an unparsable URL".into())
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::super::record::{claim, records_since};
    use super::super::{Alert, AlertKind};
    use super::*;
    use crate::budget::config::Action;
    use crate::budget::money::Money;

    const SECRET: &str = "0123456789abcdef";

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        // Test case 1.
        assert_eq!(
            hmac_sha256_hex(&[0x0b; 20], b"Hi There"),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        // Test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_signature_covers_the_timestamp_and_the_body() {
        // HMAC-SHA256 of `1800000000.{"a":1}` under SECRET, computed with Python's hmac.
        assert_eq!(
            signature_header(SECRET, 1_800_000_000, br#"{"a":1}"#),
            "t=1800000000,v1=d3e17924cac4a72ca2ee9e5700df170fdb5733eaf69ecd909fb0c18a962b03a5"
        );
        assert_ne!(
            signature_header(SECRET, 1_800_000_001, br#"{"a":1}"#),
            signature_header(SECRET, 1_800_000_000, br#"{"a":1}"#)
        );
    }

    #[test]
    fn errors_name_the_host_and_keep_bodies_short() {
        assert_eq!(
            host_of("https://hooks.example.com/b?token=x"),
            "hooks.example.com"
        );
        assert_eq!(clip("abc", 2), "ab…");
        assert_eq!(clip("ab", 2), "ab");
    }

    fn alert() -> Alert {
        let at = |s: i64| DateTime::<Utc>::from_timestamp(s, 0).unwrap();
        Alert {
            budget: "search".into(),
            kind: AlertKind::Threshold(90),
            period_start: at(1_788_220_800), // 2026-09-01T00:00:00Z
            period_end: at(1_790_812_800),   // 2026-10-01T00:00:00Z
            spend: Money::from_dollars(91),
            amount: Money::from_dollars(100),
            forecast_at_end: Money::from_dollars(120),
            share_bp: 9_100,
            action: Some(Action::ReduceBatch { percent: 50 }),
            as_of: at(1_789_000_000),
        }
    }

    /// A request as the receiver read it: lowercase header names, raw body.
    struct Received {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Received {
        fn header(&self, name: &str) -> &str {
            self.headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("no {name} header"))
        }
    }

    /// A webhook receiver answering its n-th connection with `replies[n]` (status, body),
    /// closing each; its URL carries a query the records must never show.
    async fn receiver(
        replies: Vec<(u16, String)>,
    ) -> (String, tokio::task::JoinHandle<Vec<Received>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/hook?token=query-token",
            listener.local_addr().unwrap()
        );
        let task = tokio::spawn(async move {
            let mut got = Vec::new();
            for (status, body) in replies {
                let (mut socket, _) = listener.accept().await.unwrap();
                got.push(read_request(&mut socket).await);
                let reply = format!(
                    "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    if status == 200 { "OK" } else { "Error" },
                    body.len()
                );
                socket.write_all(reply.as_bytes()).await.unwrap();
                socket.shutdown().await.unwrap();
            }
            got
        });
        (url, task)
    }

    async fn read_request(socket: &mut TcpStream) -> Received {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before its headers ended");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..head_end].to_vec()).unwrap();
        let headers: Vec<(String, String)> = head
            .lines()
            .skip(1)
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let length: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .map_or(0, |(_, v)| v.parse().unwrap());
        while buf.len() < head_end + length {
            let n = socket.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the client closed before its body ended");
            buf.extend_from_slice(&chunk[..n]);
        }
        Received {
            headers,
            body: buf[head_end..head_end + length].to_vec(),
        }
    }

    fn hook(url: String) -> Webhook {
        Webhook {
            url,
            secret: SECRET.into(),
        }
    }

    #[tokio::test]
    async fn retries_until_a_2xx_and_signs_every_request() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        let boom = (500, "boom".to_string());
        let (url, task) = receiver(vec![boom.clone(), boom, (200, "ok".into())]).await;
        let mut record = claim(&storage, &alert(), "server-a", Utc::now())
            .await
            .unwrap()
            .unwrap();
        let sender = Sender::new(vec![Duration::ZERO; 2], Duration::from_secs(10)).unwrap();

        let outcome = sender
            .deliver(&storage, &[hook(url)], &mut record, Utc::now)
            .await;
        assert_eq!(
            outcome,
            DeliveryOutcome {
                delivered: true,
                attempts: 3,
                failed_attempts: 2
            }
        );
        let got = task.await.unwrap();
        assert_eq!(got.len(), 3);

        let stored = records_since(&storage, "search", record.period_start)
            .await
            .unwrap();
        assert_eq!(stored.len(), 1);
        let stored = &stored[0];
        assert_eq!(
            (stored.status, stored.attempts),
            (AlertStatus::Delivered, 3)
        );
        assert_eq!(stored.last_error, None);
        assert!(stored.delivered_at.is_some());

        let last = &got[2];
        assert_eq!(
            last.header("x-strata-alert-id"),
            "search/20260901T000000Z/threshold-90"
        );
        assert_eq!(last.header("content-type"), "application/json");
        assert_eq!(last.header("user-agent"), "strata-budget-alerts");
        let (t, v1) = last
            .header("x-strata-signature")
            .strip_prefix("t=")
            .and_then(|s| s.split_once(",v1="))
            .expect("t=<timestamp>,v1=<hex>");
        let mut signed = format!("{t}.").into_bytes();
        signed.extend_from_slice(&last.body);
        assert_eq!(v1, hmac_sha256_hex(SECRET.as_bytes(), &signed));

        let body: serde_json::Value = serde_json::from_slice(&last.body).unwrap();
        assert_eq!(body["kind"], "threshold-90");
        assert_eq!(body["share"], "91.00%");
        let sent_at = DateTime::parse_from_rfc3339(body["sent_at"].as_str().unwrap()).unwrap();
        assert_eq!(sent_at.timestamp().to_string(), t);
        // The record keeps what was sent last.
        assert_eq!(stored.payload, body);
    }

    #[tokio::test]
    async fn one_failing_webhook_fails_the_alert_and_its_error_is_kept_short() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        let long = (503, "x".repeat(500));
        let (failing, first) = receiver(vec![long.clone(), long]).await;
        let (working, second) = receiver(vec![(200, String::new())]).await;
        let mut record = claim(&storage, &alert(), "server-a", Utc::now())
            .await
            .unwrap()
            .unwrap();
        let sender = Sender::new(vec![Duration::ZERO], Duration::from_secs(10)).unwrap();

        let outcome = sender
            .deliver(
                &storage,
                &[hook(failing), hook(working)],
                &mut record,
                Utc::now,
            )
            .await;
        assert_eq!(
            outcome,
            DeliveryOutcome {
                delivered: false,
                attempts: 3,
                failed_attempts: 2
            }
        );
        assert_eq!(
            (first.await.unwrap().len(), second.await.unwrap().len()),
            (2, 1)
        );
        let stored = records_since(&storage, "search", record.period_start)
            .await
            .unwrap();
        assert_eq!(
            (stored[0].status, stored[0].attempts),
            (AlertStatus::Failed, 3)
        );
        let error = stored[0].last_error.clone().unwrap();
        assert!(
            error.starts_with("webhook 1 (127.0.0.1): HTTP 503: xxx"),
            "{error}"
        );
        assert_eq!(error.matches('x').count(), MAX_BODY_CHARS);
        assert!(
            !error.contains("query-token") && !error.contains("/hook"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_unreachable_webhook_fails_after_every_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        // A port nothing listens on any more.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = format!("http://127.0.0.1:{port}/hook?token=query-token");
        let mut record = claim(&storage, &alert(), "server-a", Utc::now())
            .await
            .unwrap()
            .unwrap();
        let sender = Sender::new(vec![Duration::ZERO], Duration::from_secs(10)).unwrap();

        let outcome = sender
            .deliver(&storage, &[hook(url)], &mut record, Utc::now)
            .await;
        assert!(!outcome.delivered);
        assert_eq!((outcome.attempts, outcome.failed_attempts), (2, 2));
        assert_eq!((record.status, record.attempts), (AlertStatus::Failed, 2));
        let error = record.last_error.clone().unwrap();
        assert!(error.starts_with("webhook 1 (127.0.0.1): "), "{error}");
        assert!(
            !error.contains("query-token") && !error.contains(SECRET),
            "{error}"
        );
    }
}
