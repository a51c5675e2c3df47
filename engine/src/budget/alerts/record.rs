//! An alert's record in the storage root: created once by the server that claims the alert,
//! then overwritten with each delivery attempt's outcome.
//!
//! ```text
//! claim:  put_opts(<budget>/<period>/<kind>.json, PutMode::Create) -> Some(record) | None (AlreadyExists)
//! save:   put_opts(same path, overwrite)                           after every attempt
//! read:   records_since(budget, period start) (the API) / unfinished(stale_after) (a restart)
//! ```

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{GetOptions, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use tracing::{debug, warn};

use super::{Alert, PERIOD_STAMP};
use crate::delta::layout::{budget_alert_file, budget_alerts_dir};
use crate::jobs::JobRun;
use crate::{EngineError, Result, Storage};

/// Where an alert's delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Claimed; being sent (or its sender stopped: see [`unfinished`]).
    Pending,
    /// Every webhook answered 2xx.
    Delivered,
    /// Some webhook never answered 2xx within its attempts.
    Failed,
}

/// What an alert's file holds, and what the API lists under a budget's `alerts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AlertRecord {
    /// `<budget>/<period start, %Y%m%dT%H%M%SZ>/<kind>`; sent as `x-strata-alert-id`.
    pub id: String,
    pub budget: String,
    /// `threshold-75`, `forecast-100`, ...
    pub kind: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// The holder id of the server that claimed (or resumed) it.
    pub claimed_by: String,
    pub claimed_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub status: AlertStatus,
    /// Requests made, over every webhook and every delivery of it.
    pub attempts: u32,
    /// The last failure: the webhook's number and host, and the status with the start of the
    /// response body or the transport error. Never the URL's path or query, nor the secret.
    pub last_error: Option<String>,
    pub delivered_at: Option<DateTime<Utc>>,
    /// The JSON POSTed (as of the last attempt).
    pub payload: serde_json::Value,
}

/// Claims `alert` for `holder` by creating its record: `Some` when this call created it,
/// `None` when it exists already (another server or an earlier run claimed it).
pub async fn claim(
    storage: &Storage,
    alert: &Alert,
    holder: &str,
    now: DateTime<Utc>,
) -> Result<Option<AlertRecord>> {
    let kind = alert.kind.to_string();
    let record = AlertRecord {
        id: alert.id(),
        budget: alert.budget.clone(),
        kind: kind.clone(),
        period_start: alert.period_start,
        period_end: alert.period_end,
        claimed_by: holder.to_string(),
        claimed_at: now,
        updated_at: now,
        status: AlertStatus::Pending,
        attempts: 0,
        last_error: None,
        delivered_at: None,
        payload: alert.payload(),
    };
    let path = budget_alert_file(&alert.budget, alert.period_start, &kind);
    let what = format!("claiming alert {path}");
    if storage
        .create_if_absent(&path, PutPayload::from(encode(&record)?), &what)
        .await?
    {
        Ok(Some(record))
    } else {
        debug!(budget = %alert.budget, kind = %kind, "alert already claimed");
        Ok(None)
    }
}

/// Overwrites the record's file with `record`.
pub async fn save(storage: &Storage, record: &AlertRecord) -> Result<()> {
    let path = record_path(record);
    storage
        .store()
        .put_opts(
            &path,
            PutPayload::from(encode(record)?),
            PutOptions::default(),
        )
        .await
        .map_err(|e| EngineError::Internal(format!("saving alert {path}: {e}")))?;
    Ok(())
}

/// The alerts of `budget`'s period starting at `period_start`, oldest claim first.
pub async fn records_since(
    storage: &Storage,
    budget: &str,
    period_start: DateTime<Utc>,
) -> Result<Vec<AlertRecord>> {
    let dir = budget_alerts_dir()
        .join(budget)
        .join(period_start.format(PERIOD_STAMP).to_string());
    let mut records = read_all(storage, &dir).await?;
    oldest_first(&mut records);
    Ok(records)
}

/// The records still `pending` and untouched for longer than `stale_after`: their sender
/// stopped mid-delivery (a crash, a restart), and the caller sends them again.
pub async fn unfinished(
    storage: &Storage,
    stale_after: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<AlertRecord>> {
    let Some(cutoff) = TimeDelta::from_std(stale_after)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
    else {
        return Ok(Vec::new());
    };
    let mut records = read_all(storage, &budget_alerts_dir()).await?;
    records.retain(|r| r.status == AlertStatus::Pending && r.updated_at < cutoff);
    oldest_first(&mut records);
    Ok(records)
}

/// The `job_runs` row of one delivery: job `budget_alert:<budget>`, one row per attempt.
pub fn job_run(record: &AlertRecord, started: DateTime<Utc>, finished: DateTime<Utc>) -> JobRun {
    let ok = record.status == AlertStatus::Delivered;
    let detail = serde_json::json!({
        "kind": record.kind,
        "attempts": record.attempts,
        "period_start": record.period_start,
        "status": record.status,
    });
    JobRun {
        job: format!("budget_alert:{}", record.budget),
        started_at: started,
        finished_at: finished,
        status: if ok { "ok" } else { "failed" }.into(),
        rows: i64::from(record.attempts),
        detail: detail.to_string(),
    }
}

/// Oldest claim first; the id breaks ties (alerts claimed in one refresh).
fn oldest_first(records: &mut [AlertRecord]) {
    records.sort_by(|a, b| {
        a.claimed_at
            .cmp(&b.claimed_at)
            .then_with(|| a.id.cmp(&b.id))
    });
}

fn record_path(record: &AlertRecord) -> Path {
    budget_alert_file(&record.budget, record.period_start, &record.kind)
}

fn encode(record: &AlertRecord) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(record)
        .map_err(|e| EngineError::Internal(format!("encoding alert {}: {e}", record.id)))
}

/// Every record under `dir` (recursively). A file that cannot be read as a record is
/// skipped with a warning: one bad file must not hide the others.
async fn read_all(storage: &Storage, dir: &Path) -> Result<Vec<AlertRecord>> {
    let store = storage.store();
    let listed: std::result::Result<Vec<_>, _> = store.list(Some(dir)).try_collect().await;
    let entries = match listed {
        Ok(entries) => entries,
        Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
        Err(e) => {
            return Err(EngineError::Internal(format!(
                "listing alerts under {dir}: {e}"
            )))
        }
    };
    let mut records = Vec::with_capacity(entries.len());
    for entry in entries {
        if !entry
            .location
            .filename()
            .is_some_and(|f| f.ends_with(".json"))
        {
            continue;
        }
        let read = match store.get_opts(&entry.location, GetOptions::default()).await {
            Ok(got) => got.bytes().await,
            Err(e) => Err(e),
        };
        let parsed = match read {
            Ok(bytes) => serde_json::from_slice::<AlertRecord>(&bytes).map_err(|e| e.to_string()),
            // Deleted between the listing and the read.
            Err(object_store::Error::NotFound { .. }) => continue,
            Err(e) => {
                return Err(EngineError::Internal(format!(
                    "reading alert {}: {e}",
                    entry.location
                )))
            }
        };
        match parsed {
            Ok(record) => records.push(record),
            Err(e) => {
                warn!(path = %entry.location, error = %e, "skipping an unreadable alert record")
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::super::{alert_id, AlertKind};
    use super::*;
    use crate::budget::money::Money;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn alert(kind: AlertKind) -> Alert {
        Alert {
            budget: "search".into(),
            kind,
            period_start: at(1_788_220_800), // 2026-09-01T00:00:00Z
            period_end: at(1_790_812_800),   // 2026-10-01T00:00:00Z
            spend: Money::from_dollars(80),
            amount: Money::from_dollars(100),
            forecast_at_end: Money::from_dollars(90),
            share_bp: 8_000,
            action: None,
            as_of: at(1_789_000_000),
        }
    }

    #[tokio::test]
    async fn an_alert_is_claimed_once() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        let now = at(1_789_000_100);
        let a = alert(AlertKind::Threshold(75));

        let won = claim(&storage, &a, "server-a", now)
            .await
            .unwrap()
            .expect("the first claim wins");
        assert_eq!(won.id, "search/20260901T000000Z/threshold-75");
        assert_eq!((won.status, won.attempts), (AlertStatus::Pending, 0));
        assert!(claim(&storage, &a, "server-b", now)
            .await
            .unwrap()
            .is_none());
        assert!(claim(&storage, &a, "server-a", now)
            .await
            .unwrap()
            .is_none());
        // Another kind of the same period is its own alert.
        let f = claim(&storage, &alert(AlertKind::Forecast), "server-b", now)
            .await
            .unwrap()
            .expect("the forecast is another alert");
        assert_eq!(f.id, "search/20260901T000000Z/forecast-100");

        // The file says who claimed it, and holds the payload.
        let text = std::fs::read_to_string(
            dir.path()
                .join("_strata/budgets/alerts/search/20260901T000000Z/threshold-75.json"),
        )
        .unwrap();
        let stored: AlertRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(stored.claimed_by, "server-a");
        assert_eq!(stored.payload["share"], "80.00%");
        assert!(text.contains("\"status\": \"pending\""), "{text}");

        let listed = records_since(&storage, "search", a.period_start)
            .await
            .unwrap();
        let ids: Vec<&str> = listed.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "search/20260901T000000Z/forecast-100",
                "search/20260901T000000Z/threshold-75"
            ]
        );
        assert!(records_since(&storage, "search", a.period_end)
            .await
            .unwrap()
            .is_empty());
        assert!(records_since(&storage, "other", a.period_start)
            .await
            .unwrap()
            .is_empty());
    }

    #[tokio::test]
    async fn pending_records_go_stale_and_finished_ones_never() {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open_dir(dir.path()).await.unwrap();
        assert!(
            unfinished(&storage, Duration::from_secs(60), at(1_789_000_000))
                .await
                .unwrap()
                .is_empty()
        );
        let now = at(1_789_000_000);
        let pending = claim(&storage, &alert(AlertKind::Threshold(75)), "a", now)
            .await
            .unwrap()
            .unwrap();
        let mut done = claim(&storage, &alert(AlertKind::Threshold(90)), "a", now)
            .await
            .unwrap()
            .unwrap();
        done.status = AlertStatus::Delivered;
        done.attempts = 1;
        save(&storage, &done).await.unwrap();

        let stale_after = Duration::from_secs(60);
        let soon = unfinished(&storage, stale_after, at(1_789_000_030))
            .await
            .unwrap();
        assert!(soon.is_empty());
        let later = unfinished(&storage, stale_after, at(1_789_000_061))
            .await
            .unwrap();
        assert_eq!(later, vec![pending]);

        let reread = records_since(&storage, "search", done.period_start)
            .await
            .unwrap();
        assert_eq!(reread.len(), 2);
        assert!(reread.contains(&done));
    }

    #[test]
    fn a_delivery_is_one_job_run() {
        let mut r = AlertRecord {
            id: alert_id("search", at(1_788_220_800), "threshold-90"),
            budget: "search".into(),
            kind: "threshold-90".into(),
            period_start: at(1_788_220_800),
            period_end: at(1_790_812_800),
            claimed_by: "a".into(),
            claimed_at: at(1_789_000_000),
            updated_at: at(1_789_000_003),
            status: AlertStatus::Delivered,
            attempts: 3,
            last_error: None,
            delivered_at: Some(at(1_789_000_003)),
            payload: serde_json::json!({}),
        };
        let run = job_run(&r, at(1_789_000_000), at(1_789_000_004));
        assert_eq!(run.job, "budget_alert:search");
        assert_eq!((run.status.as_str(), run.rows), ("ok", 3));
        let detail: serde_json::Value = serde_json::from_str(&run.detail).unwrap();
        assert_eq!(
            detail,
            serde_json::json!({"kind": "threshold-90", "attempts": 3,
                "period_start": "2026-09-01T00:00:00Z", "status": "delivered"})
        );
        r.status = AlertStatus::Failed;
        assert_eq!(job_run(&r, at(0), at(1)).status, "failed");
    }
}
