//! Overrides of a budget: a new amount, or its blocking actions suspended, approved by a
//! person, for a reason, until an expiry. Stored in the `budget_overrides` Delta table, which is
//! only ever appended to: the table is the audit trail of every change of a budget.
//!
//! ```text
//! POST /v1/ai/budgets/{name}/overrides (admin) --OverrideRequest::check--> Override
//!      --append (one commit)--> budget_overrides --read_active--> apply(budget, overrides, now)
//! ```
//!
//! Of the active overrides of a budget (created, not yet expired) the newest wins; an override
//! ends on its own at `expires_at`, and there is no other way to end one early than a newer
//! override (which is audited like the first).

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Decimal128Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::config::Budget;
use super::money::Money;
use crate::catalog::Snapshot;
use crate::registry::{self, TableSpec};
use crate::table::EventTable;
use crate::{Catalog, EngineError, QueryLimits, Result, Storage};

pub const OVERRIDES_TABLE: &str = registry::BUDGET_OVERRIDES.name;
/// The longest an override may last: a change meant for longer belongs in the configuration.
pub const MAX_OVERRIDE_DAYS: i64 = 90;
/// The longest reason or approver text kept.
pub const MAX_OVERRIDE_TEXT: usize = 500;

/// One override as stored and served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Override {
    pub id: String,
    pub budget: String,
    /// The amount that replaces the configured one while the override lasts.
    pub amount: Option<Money>,
    /// The budget blocks no call while the override lasts (it still alerts).
    pub suspend: bool,
    pub reason: String,
    pub approver: String,
    /// The token that made the override.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// What a client asks for; [`OverrideRequest::check`] turns it into an [`Override`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideRequest {
    pub amount: Option<Money>,
    #[serde(default)]
    pub suspend: bool,
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub approver: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub ttl_secs: Option<u64>,
}

impl OverrideRequest {
    /// The override of `budget` this request makes at `now`, or what to fix (one message).
    pub fn check(
        self,
        budget: &str,
        created_by: &str,
        now: DateTime<Utc>,
    ) -> std::result::Result<Override, String> {
        if self.amount.is_none() && !self.suspend {
            return Err("give a new `amount` or `suspend: true` (or both)".into());
        }
        if self.amount.is_some_and(|a| !a.is_positive()) {
            return Err("`amount` must be more than zero".into());
        }
        for (field, text) in [("reason", &self.reason), ("approver", &self.approver)] {
            if text.trim().is_empty() {
                return Err(format!("`{field}` is required: every override is audited"));
            }
            if text.chars().count() > MAX_OVERRIDE_TEXT {
                return Err(format!(
                    "`{field}` may be at most {MAX_OVERRIDE_TEXT} characters"
                ));
            }
        }
        let expires_at = match (self.expires_at, self.ttl_secs) {
            (Some(_), Some(_)) => return Err("give `expires_at` or `ttl_secs`, not both".into()),
            (Some(at), None) => at,
            (None, Some(secs)) => i64::try_from(secs)
                .ok()
                .and_then(TimeDelta::try_seconds)
                .and_then(|d| now.checked_add_signed(d))
                .ok_or("`ttl_secs` is too large")?,
            (None, None) => {
                return Err(
                    "an override must expire: give `expires_at` (RFC 3339) or `ttl_secs`".into(),
                )
            }
        };
        if expires_at <= now {
            return Err("`expires_at` must be in the future".into());
        }
        if expires_at - now > TimeDelta::days(MAX_OVERRIDE_DAYS) {
            return Err(format!(
                "an override may last at most {MAX_OVERRIDE_DAYS} days; change the budget in the configuration for longer"
            ));
        }
        Ok(Override {
            id: uuid::Uuid::new_v4().to_string(),
            budget: budget.to_string(),
            amount: self.amount,
            suspend: self.suspend,
            reason: self.reason.trim().to_string(),
            approver: self.approver.trim().to_string(),
            created_by: created_by.to_string(),
            created_at: now,
            expires_at,
        })
    }
}

impl Override {
    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        self.created_at <= now && now < self.expires_at
    }
}

/// The budget as the active overrides make it at `now`: the newest active override of this
/// budget replaces the amount (when it gives one) and may suspend its blocking actions (a
/// suspended budget acts as a soft one: it alerts and reduces batches, never pauses or stops).
/// Also returns the override applied.
pub fn apply<'a>(
    budget: &Budget,
    overrides: &'a [Override],
    now: DateTime<Utc>,
) -> (Budget, Option<&'a Override>) {
    let newest = overrides
        .iter()
        .filter(|o| o.budget == budget.name && o.is_active(now))
        .max_by_key(|o| (o.created_at, o.id.clone()));
    let mut effective = budget.clone();
    if let Some(o) = newest {
        if let Some(amount) = o.amount {
            effective.amount = amount;
        }
        if o.suspend {
            effective.hard = false;
        }
    }
    (effective, newest)
}

fn spec() -> TableSpec {
    registry::BUDGET_OVERRIDES.spec()
}

/// Appends `o` to the `budget_overrides` table (one commit).
pub async fn append(storage: &Storage, o: &Override) -> Result<()> {
    let mut table = EventTable::open_or_create(storage, spec()).await?;
    let micros = |t: DateTime<Utc>| t.timestamp_micros();
    let amount =
        Decimal128Array::from(vec![o.amount.map(Money::nanos)]).with_precision_and_scale(18, 9)?;
    let cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![o.id.as_str()])),
        Arc::new(StringArray::from(vec![o.budget.as_str()])),
        Arc::new(amount),
        Arc::new(BooleanArray::from(vec![o.suspend])),
        Arc::new(StringArray::from(vec![o.reason.as_str()])),
        Arc::new(StringArray::from(vec![o.approver.as_str()])),
        Arc::new(StringArray::from(vec![o.created_by.as_str()])),
        Arc::new(TimestampMicrosecondArray::from(vec![micros(o.created_at)]).with_timezone("UTC")),
        Arc::new(TimestampMicrosecondArray::from(vec![micros(o.expires_at)]).with_timezone("UTC")),
        Arc::new(Date32Array::from(vec![
            o.created_at.timestamp().div_euclid(86_400) as i32,
        ])),
    ];
    let batch = RecordBatch::try_new(registry::budget_overrides_schema(), cols)?;
    table.append(&[batch], &[]).await?;
    Ok(())
}

/// The overrides on `snapshot` that have not expired at `now`, oldest first.
pub async fn read_active(
    catalog: &Catalog,
    snapshot: Arc<Snapshot>,
    limits: &QueryLimits,
    now: DateTime<Utc>,
) -> Result<Vec<Override>> {
    if snapshot.version(OVERRIDES_TABLE).is_none() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT override_id, budget, amount, suspend, reason, approver, created_by, \
         created_at, expires_at FROM {OVERRIDES_TABLE} WHERE expires_at > {} \
         ORDER BY created_at, override_id",
        super::spend::timestamp_literal(now)
    );
    let batches = super::spend::run(catalog, &snapshot, limits, &sql).await?;
    let mut out = Vec::new();
    for b in &batches {
        out.extend(rows(b)?);
    }
    Ok(out)
}

fn rows(b: &RecordBatch) -> Result<Vec<Override>> {
    let text = |i: usize| crate::text::utf8(b.column(i), b.schema().field(i).name());
    let time = |i: usize| -> Result<&TimestampMicrosecondArray> {
        b.column(i)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .ok_or_else(|| {
                EngineError::Internal(format!("budget_overrides column {i} is not a timestamp"))
            })
    };
    let amounts = super::spend::amounts(b.column(2))?;
    let suspend = b
        .column(3)
        .as_any()
        .downcast_ref::<BooleanArray>()
        .ok_or_else(|| EngineError::Internal("budget_overrides.suspend is not boolean".into()))?;
    let (id, budget, reason, approver, by) = (text(0)?, text(1)?, text(4)?, text(5)?, text(6)?);
    let (id, budget, reason, approver, by) = (&id, &budget, &reason, &approver, &by);
    let (created, expires) = (time(7)?, time(8)?);
    let at = |a: &TimestampMicrosecondArray, i: usize| {
        DateTime::from_timestamp_micros(a.value(i))
            .ok_or_else(|| EngineError::Internal("budget_overrides holds a bad timestamp".into()))
    };
    (0..b.num_rows())
        .map(|i| {
            Ok(Override {
                id: id.value(i).to_string(),
                budget: budget.value(i).to_string(),
                amount: amounts[i],
                suspend: suspend.is_valid(i) && suspend.value(i),
                reason: reason.value(i).to_string(),
                approver: approver.value(i).to_string(),
                created_by: by.value(i).to_string(),
                created_at: at(created, i)?,
                expires_at: at(expires, i)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn request() -> OverrideRequest {
        OverrideRequest {
            amount: Some(Money::parse("900").unwrap()),
            reason: "launch week".into(),
            approver: "cfo".into(),
            ttl_secs: Some(3600),
            ..OverrideRequest::default()
        }
    }

    #[test]
    fn a_request_needs_a_change_a_reason_an_approver_and_an_expiry() {
        let now = utc("2026-09-20T10:00:00Z");
        let o = request().check("search", "ops", now).unwrap();
        assert_eq!(o.expires_at, utc("2026-09-20T11:00:00Z"));
        assert_eq!(
            (o.budget.as_str(), o.created_by.as_str()),
            ("search", "ops")
        );
        let fails = |r: OverrideRequest, needle: &str| {
            let e = r.check("search", "ops", now).unwrap_err();
            assert!(e.contains(needle), "{e}");
        };
        fails(
            OverrideRequest {
                amount: None,
                ..request()
            },
            "`amount` or `suspend: true`",
        );
        fails(
            OverrideRequest {
                reason: " ".into(),
                ..request()
            },
            "`reason` is required",
        );
        fails(
            OverrideRequest {
                approver: String::new(),
                ..request()
            },
            "`approver` is required",
        );
        fails(
            OverrideRequest {
                ttl_secs: None,
                ..request()
            },
            "must expire",
        );
        fails(
            OverrideRequest {
                ttl_secs: Some(91 * 86_400),
                ..request()
            },
            "at most 90 days",
        );
        fails(
            OverrideRequest {
                ttl_secs: None,
                expires_at: Some(utc("2026-09-20T09:00:00Z")),
                ..request()
            },
            "in the future",
        );
        fails(
            OverrideRequest {
                amount: Some(Money::ZERO),
                ..request()
            },
            "more than zero",
        );
    }

    #[test]
    fn the_newest_active_override_of_the_budget_applies_until_it_expires() {
        let now = utc("2026-09-20T10:00:00Z");
        let budget = Budget::new("search", Money::parse("100").unwrap());
        let make = |budget: &str, amount: &str, at: &str, until: &str, suspend: bool| Override {
            id: format!("{budget}-{amount}"),
            budget: budget.into(),
            amount: Some(Money::parse(amount).unwrap()),
            suspend,
            reason: "r".into(),
            approver: "a".into(),
            created_by: "t".into(),
            created_at: utc(at),
            expires_at: utc(until),
        };
        let list = vec![
            make(
                "search",
                "200",
                "2026-09-20T08:00:00Z",
                "2026-09-21T00:00:00Z",
                false,
            ),
            make(
                "search",
                "300",
                "2026-09-20T09:00:00Z",
                "2026-09-21T00:00:00Z",
                true,
            ),
            make(
                "search",
                "400",
                "2026-09-19T09:00:00Z",
                "2026-09-20T09:59:59Z",
                false,
            ),
            make(
                "other",
                "500",
                "2026-09-20T09:30:00Z",
                "2026-09-21T00:00:00Z",
                false,
            ),
        ];
        let (b, applied) = apply(&budget, &list, now);
        assert_eq!(b.amount, Money::parse("300").unwrap());
        assert!(!b.hard);
        assert_eq!(applied.map(|o| o.id.as_str()), Some("search-300"));
        // After both expire, the configured budget is back.
        let (b, applied) = apply(&budget, &list, utc("2026-09-21T00:00:00Z"));
        assert_eq!((b.amount, b.hard, applied), (budget.amount, true, None));
    }
}
