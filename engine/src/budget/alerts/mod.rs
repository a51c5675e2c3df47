//! Signed webhook alerts of AI budgets: each threshold (and the forecast to exceed the amount)
//! alerts once per budget period, across restarts and across servers sharing a storage root.
//!
//! ```text
//! Board --due_alerts(now)--> [Alert] (every threshold the spend reaches, the forecast)
//!   --claim--> create _strata/budgets/alerts/<budget>/<period>/<kind>.json (PutMode::Create)
//!                ok: this server sends it            AlreadyExists: sent by another / earlier
//!   --Sender::deliver--> POST to each webhook, signed, retried with backoff
//!                        record saved after every attempt: pending -> delivered | failed
//! start: unfinished(stale_after) -> the pending records a stopped sender left -> deliver again
//! ```
//!
//! `due_alerts` is pure and returns every alert the board calls for, claimed or not: the claim
//! (one conditional put) is what makes an alert go out once. Delivery is at least once per
//! webhook: a sender that stops mid-delivery leaves its record pending, and the server that
//! resumes it sends it again, so receivers deduplicate on `x-strata-alert-id`.
//!
//! Each request carries `x-strata-signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of
//! "<t>.<body>">` over the webhook's secret (Stripe's scheme): the receiver recomputes the
//! HMAC over the raw body and refuses a timestamp too far from its clock (a replay).

mod delivery;
mod record;

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Serialize, Serializer};
use serde_json::json;

use super::config::Action;
use super::decision::{Board, BudgetStanding};
use super::money::Money;
use super::state::BudgetState;

pub use delivery::{
    hmac_sha256_hex, signature_header, DeliveryOutcome, Sender, DEFAULT_BACKOFF, SIGNATURE_HEADER,
};
pub use record::{claim, job_run, records_since, save, unfinished, AlertRecord, AlertStatus};

/// How a period's start is written in alert ids and record paths.
const PERIOD_STAMP: &str = "%Y%m%dT%H%M%SZ";

/// What an alert is about: spend reaching a threshold's percent, or the forecast at the
/// period's end reaching the whole amount while spend has not yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    Threshold(u32),
    Forecast,
}

impl AlertKind {
    /// The threshold's percent; None for the forecast.
    pub fn threshold_percent(self) -> Option<u32> {
        match self {
            Self::Threshold(p) => Some(p),
            Self::Forecast => None,
        }
    }
}

/// `threshold-75`, `forecast-100`: the kind's name in ids, paths, metrics and payloads.
impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Threshold(p) => write!(f, "threshold-{p}"),
            Self::Forecast => f.write_str("forecast-100"),
        }
    }
}

/// As its name (`"threshold-90"`).
impl Serialize for AlertKind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// One alert a budget's standing calls for, before it is claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Alert {
    pub budget: String,
    pub kind: AlertKind,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub spend: Money,
    /// The effective amount (with overrides applied).
    pub amount: Money,
    pub forecast_at_end: Money,
    /// `spend` as a share of `amount` in basis points.
    pub share_bp: u64,
    /// A threshold's action as the budget applies it (a soft budget never blocks); for the
    /// forecast, the budget's current action. None when there is none, or the budget is
    /// suspended (its state then carries no action although spend reached a threshold).
    pub action: Option<Action>,
    /// The data the spend reflects.
    pub as_of: DateTime<Utc>,
}

impl Alert {
    /// `<budget>/<period start, %Y%m%dT%H%M%SZ>/<kind>`: unique per budget, period and kind.
    pub fn id(&self) -> String {
        alert_id(&self.budget, self.period_start, &self.kind.to_string())
    }

    /// The JSON POSTed to the webhooks; `sent_at` is set at each attempt.
    pub fn payload(&self) -> serde_json::Value {
        json!({
            "id": self.id(),
            "budget": self.budget,
            "kind": self.kind.to_string(),
            "threshold_percent": self.kind.threshold_percent(),
            "action": self.action,
            "spend": self.spend,
            "amount": self.amount,
            "share": share_text(self.share_bp),
            "forecast_at_end": self.forecast_at_end,
            "period_start": self.period_start,
            "period_end": self.period_end,
            "as_of": self.as_of,
            "sent_at": null,
        })
    }
}

/// The alerts `board` calls for at `now`, claimed or not (see the module's diagram): for each
/// budget with a webhook and a state of the current period, one per threshold the spend has
/// reached (each separately: a jump from 0 to 95% gives both 75 and 90), and the forecast
/// when it reaches the amount before the spend does.
///
/// Per-user states never alert: a per-user budget would send one webhook per user and
/// threshold, flooding receivers with what is one user's business; such budgets act through
/// decisions, and the API lists the users nearest their limits.
pub fn due_alerts(board: &Board, now: DateTime<Utc>) -> Vec<Alert> {
    let mut due = Vec::new();
    for standing in &board.standings {
        if standing.budget.webhooks.is_empty() {
            continue;
        }
        let Some(state) = standing.total.as_ref().filter(|s| s.is_current(now)) else {
            continue;
        };
        for t in &standing.budget.thresholds {
            if state.spend.reaches_percent(state.amount, t.percent) {
                // A state with no action although spend reached a threshold is suspended.
                let action = state.action.map(|_| standing.budget.effective(t.action));
                due.push(alert(
                    standing,
                    state,
                    AlertKind::Threshold(t.percent),
                    action,
                ));
            }
        }
        if state.forecasting
            && state.forecast_at_end.reaches_percent(state.amount, 100)
            && !state.spend.reaches_percent(state.amount, 100)
        {
            due.push(alert(standing, state, AlertKind::Forecast, state.action));
        }
    }
    due
}

fn alert(
    standing: &BudgetStanding,
    state: &BudgetState,
    kind: AlertKind,
    action: Option<Action>,
) -> Alert {
    Alert {
        budget: standing.budget.name.clone(),
        kind,
        period_start: state.period_start,
        period_end: state.period_end,
        spend: state.spend,
        amount: state.amount,
        forecast_at_end: state.forecast_at_end,
        share_bp: state.share_bp,
        action,
        as_of: state.as_of,
    }
}

/// `<budget>/<period start>/<kind>`, as [`crate::delta::layout::budget_alert_file`] lays the
/// record out under the alerts directory.
fn alert_id(budget: &str, period_start: DateTime<Utc>, kind: &str) -> String {
    format!("{budget}/{}/{kind}", period_start.format(PERIOD_STAMP))
}

/// Basis points as a percent with two decimals: `9120` is `91.20%`.
fn share_text(bp: u64) -> String {
    format!("{}.{:02}%", bp / 100, bp % 100)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::budget::config::{Budget, Scope, Webhook};
    use crate::budget::period::Period;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn hooked(name: &str, amount: &str) -> Budget {
        Budget {
            webhooks: vec![Webhook {
                url: "http://127.0.0.1:9/hook".into(),
                secret: "0123456789abcdef".into(),
            }],
            ..Budget::new(name, Money::parse(amount).unwrap())
        }
    }

    /// `b` with `spend` in September 2026 (UTC), read as of `as_of`.
    fn standing(b: Budget, spend: &str, as_of: &str) -> BudgetStanding {
        let window = Period::default().window(utc("2026-09-15T00:00:00Z"));
        let state = BudgetState::compute(&b, window, Money::parse(spend).unwrap(), utc(as_of));
        BudgetStanding {
            budget: b,
            total: Some(state),
            per_user: BTreeMap::new(),
        }
    }

    fn board(standings: Vec<BudgetStanding>) -> Board {
        Board {
            standings,
            as_of: utc("2026-09-20T00:00:00Z"),
        }
    }

    fn kinds(alerts: &[Alert]) -> Vec<String> {
        alerts.iter().map(|a| a.kind.to_string()).collect()
    }

    #[test]
    fn a_jump_past_two_thresholds_alerts_both() {
        // 95 of 100 twelve hours before the end: forecast 95 * 30 / 29.5 = 96.61, under 100.
        let at = "2026-09-30T12:00:00Z";
        let b = board(vec![standing(hooked("search", "100"), "95", at)]);
        let due = due_alerts(&b, utc(at));
        assert_eq!(kinds(&due), ["threshold-75", "threshold-90"]);
        assert_eq!(due[0].action, Some(Action::Alert));
        assert_eq!(due[1].action, Some(Action::ReduceBatch { percent: 50 }));
        assert_eq!(due[1].id(), "search/20260901T000000Z/threshold-90");
        let p = due[1].payload();
        assert_eq!(p["id"], "search/20260901T000000Z/threshold-90");
        assert_eq!(p["kind"], "threshold-90");
        assert_eq!(p["threshold_percent"], 90);
        assert_eq!(p["action"], json!({"reduce_batch": {"percent": 50}}));
        assert_eq!(
            (&p["spend"], &p["amount"]),
            (&json!("95.00"), &json!("100.00"))
        );
        assert_eq!(p["share"], "95.00%");
        assert_eq!(p["period_start"], "2026-09-01T00:00:00Z");
        assert_eq!(p["period_end"], "2026-10-01T00:00:00Z");
        assert!(p["sent_at"].is_null());
        // Under 75%: nothing.
        let b = board(vec![standing(hooked("search", "100"), "74.99", at)]);
        assert!(due_alerts(&b, utc(at)).is_empty());
    }

    #[test]
    fn no_webhook_no_total_or_an_ended_period_alerts_nothing() {
        let at = "2026-09-30T12:00:00Z";
        let silent = Budget::new("silent", Money::from_dollars(100));
        let b = board(vec![standing(silent, "150", at)]);
        assert!(due_alerts(&b, utc(at)).is_empty());

        let mut per_user = standing(hooked("per-user", "1"), "5", at);
        let user = per_user.total.take().unwrap();
        per_user.budget.scope = Scope {
            per_user: true,
            ..Scope::default()
        };
        per_user.per_user.insert("u1".into(), user);
        assert!(due_alerts(&board(vec![per_user]), utc(at)).is_empty());

        let b = board(vec![standing(hooked("search", "100"), "150", at)]);
        assert_eq!(due_alerts(&b, utc(at)).len(), 3);
        assert!(due_alerts(&b, utc("2026-10-01T00:00:00Z")).is_empty());
    }

    #[test]
    fn the_forecast_alerts_only_while_forecasting_and_under_the_amount() {
        // 70 of 100 after 19 of 30 days: 110.52 by the end.
        let at = "2026-09-20T00:00:00Z";
        let s = standing(hooked("search", "100"), "70", at);
        let due = due_alerts(&board(vec![s.clone()]), utc(at));
        assert_eq!(kinds(&due), ["forecast-100"]);
        assert_eq!(due[0].kind.threshold_percent(), None);
        assert_eq!(due[0].action, None);
        assert!(due[0].payload()["threshold_percent"].is_null());
        assert_eq!(due[0].payload()["forecast_at_end"], "110.526315789");

        let mut early = s;
        if let Some(state) = early.total.as_mut() {
            state.forecasting = false;
        }
        assert!(due_alerts(&board(vec![early]), utc(at)).is_empty());

        // At the amount already: the thresholds speak, the forecast has nothing to add.
        let full = standing(hooked("search", "100"), "100", at);
        assert_eq!(
            kinds(&due_alerts(&board(vec![full]), utc(at))),
            ["threshold-75", "threshold-90", "threshold-100"]
        );
    }

    #[test]
    fn a_suspended_budget_alerts_without_an_action() {
        let at = "2026-09-30T12:00:00Z";
        let mut s = standing(hooked("search", "100"), "80", at);
        if let Some(state) = s.total.as_mut() {
            state.action = None;
        }
        let due = due_alerts(&board(vec![s]), utc(at));
        assert_eq!(kinds(&due), ["threshold-75"]);
        assert_eq!(due[0].action, None);
    }

    #[test]
    fn kinds_and_ids_are_named_as_their_files() {
        assert_eq!(AlertKind::Threshold(75).to_string(), "threshold-75");
        assert_eq!(AlertKind::Forecast.to_string(), "forecast-100");
        assert_eq!(
            serde_json::to_value(AlertKind::Threshold(90)).unwrap(),
            json!("threshold-90")
        );
        let start = utc("2026-09-01T00:00:00Z");
        let id = alert_id("search", start, "threshold-75");
        let file = crate::delta::layout::budget_alert_file("search", start, "threshold-75");
        assert_eq!(
            file.as_ref(),
            "_strata/budgets/alerts/search/20260901T000000Z/threshold-75.json"
        );
        assert_eq!(file.as_ref(), format!("_strata/budgets/alerts/{id}.json"));
        assert_eq!(share_text(9_120), "91.20%");
        assert_eq!(share_text(5), "0.05%");
    }
}
