//! What the GDPR tests share: where a subject's rows are, raw click events about them, a purge
//! through the CLI, the scan of a root for their id, and waiting on a request made over HTTP.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

use super::server::TestServer;
use super::support::{count, python_script, run_ok, strata};

/// Dead letters about `subject`: keyed by them, or naming them in the raw payload.
pub fn dead_letters_of(subject: &str) -> String {
    format!("SELECT count(*) AS n FROM dead_letters WHERE key = '{subject}' OR regexp_like(payload, '(^|[^A-Za-z0-9_-]){subject}([^A-Za-z0-9_-]|$)')")
}

/// Rows of the subject in link_clicks, ai_usage and dead_letters.
pub fn rows_of(storage: &[String], subject: &str) -> [u64; 3] {
    let of = |t: &str| {
        count(
            storage,
            &format!("SELECT count(*) AS n FROM {t} WHERE user_id = '{subject}'"),
        )
    };
    [
        of("link_clicks"),
        of("ai_usage"),
        count(storage, &dead_letters_of(subject)),
    ]
}

/// A valid click by `user` as the producers send it, in `session`.
pub fn click(user: &str, session: &str, occurred_at: chrono::DateTime<chrono::Utc>) -> String {
    json!({
        "schema_version": 1, "event_id": uuid::Uuid::new_v4().to_string(),
        "occurred_at": occurred_at.to_rfc3339(), "user_id": user, "session_id": session,
        "item_id": "mar-1", "item_type": "marketplace_listing", "category": "home",
        "source": "search", "target_url": "/x"
    })
    .to_string()
}

/// `strata gdpr purge` of `subject`: the receipt it prints.
pub fn purge_cli(storage: &[String], subject: &str, requested_by: &str) -> Value {
    serde_json::from_str(&run_ok(
        strata()
            .args([
                "gdpr",
                "purge",
                "--subject",
                subject,
                "--requested-by",
                requested_by,
            ])
            .args(storage),
    ))
    .unwrap()
}

/// `scripts/gdpr_scan.py` over `dir`: every Parquet file read by pyarrow, every other file
/// searched as bytes, for `subject`.
pub fn gdpr_scan(dir: &Path, subject: &str) -> Output {
    python_script("gdpr_scan.py")
        .arg(dir)
        .arg(subject)
        .output()
        .unwrap()
}

/// Polls a GDPR request until it is done (and returns it); panics when it failed or is still
/// running after two minutes.
pub async fn wait_done(c: &reqwest::Client, server: &TestServer, token: &str, id: &str) -> Value {
    for _ in 0..1200 {
        let (s, v) = server
            .get_json(c, &format!("/v1/gdpr/requests/{id}"), token)
            .await;
        assert_eq!(s, 200, "{v}");
        match v["status"].as_str().unwrap() {
            "done" => return v,
            "failed" => panic!("request failed: {v}"),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    panic!("request {id} did not finish");
}

pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}
