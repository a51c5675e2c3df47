//! Spend of each budget over its period, read on one catalog snapshot, exact to the
//! nano-dollar.
//!
//! ```text
//! [start, end) of a period (UTC instants, any zone)
//!   whole UTC days inside it, the rollup current for them --> ai_usage_daily by event_date
//!   partial days at the edges, days the rollup lags on     --> ai_usage by occurred_at
//!   ---UNION ALL, sum as Decimal128(38, 9)---> Money
//! per-user budgets: ai_usage only (the rollup has no user), grouped by user_id
//! ```
//!
//! A rollup day is used only when the rollup was computed from a version of `ai_usage` whose
//! files for that day are the snapshot's too: the days whose files changed between the two
//! versions (late events, purges, a commit the rollup has not run after yet) are read from the
//! raw events, so a spend is always that of the snapshot's `ai_usage`, never stale and never
//! counted twice. Filters go in as SQL literals; text as hex bytes cast to text, which no quote
//! in a value can end. No statement casts to a float.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Decimal128Array, RecordBatch};
use arrow::datatypes::DataType;
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use tracing::debug;

use super::config::{Budget, Scope};
use super::money::{Money, MONEY_SCALE};
use super::period::PeriodWindow;
use crate::literal::{date_literal, text_literal};
use crate::{
    changed_dates, Catalog, EngineError, PlannedQuery, QueryLimits, Result, Snapshot, Storage,
};

/// The raw AI usage events.
pub const EVENTS_TABLE: &str = "ai_usage";
/// Their daily rollup by feature, provider and model.
pub const DAILY_ROLLUP: &str = "ai_usage_daily";
/// The type every spend is summed and read as: the widest decimal at `cost_usd`'s scale.
const SPEND_TYPE_SQL: &str = "DECIMAL(38, 9)";
/// Continuation lines of a `WHERE` in the subquery of [`spend_sql`], and at the top level.
const INNER_INDENT: &str = "      ";
const OUTER_INDENT: &str = "  ";

/// Which whole UTC days the rollup may answer for on a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollupCoverage {
    /// Every day but these, whose `ai_usage` files changed between the version the rollup was
    /// computed from and the snapshot's: they are read from the raw events.
    AllExcept(BTreeSet<NaiveDate>),
    /// No usable rollup (not there, never run, or the log between its version and the
    /// snapshot's is gone): every day is read from the raw events.
    Unavailable,
}

/// One budget's period to read.
#[derive(Debug, Clone, Copy)]
pub struct SpendRequest<'a> {
    pub budget: &'a Budget,
    pub window: PeriodWindow,
}

/// One budget's spend in its period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetSpend {
    pub budget: String,
    pub window: PeriodWindow,
    /// All the budget's spend (for a per-user budget, the sum over its users).
    pub total: Money,
    /// Per user, for a per-user budget (users with spend only); empty otherwise.
    pub per_user: BTreeMap<String, Money>,
}

/// The spend of a set of budgets on one snapshot.
#[derive(Debug, Clone)]
pub struct SpendReport {
    pub spends: Vec<BudgetSpend>,
    /// The version of `ai_usage` read (None: the table does not exist yet).
    pub events_version: Option<u64>,
    /// When that version was committed: the data the spends reflect.
    pub as_of: Option<DateTime<Utc>>,
    pub coverage: RollupCoverage,
}

impl RollupCoverage {
    /// What the rollup in `snapshot` covers, from the `txn` version it was computed from and
    /// the `ai_usage` log between that version and the snapshot's.
    pub async fn of(storage: &Storage, snapshot: &Snapshot) -> Result<Self> {
        let (Some(events), Some(rollup)) = (
            snapshot.version(EVENTS_TABLE),
            snapshot.tables.get(DAILY_ROLLUP),
        ) else {
            return Ok(Self::Unavailable);
        };
        let Some(consumed) = rollup.consumed else {
            return Ok(Self::Unavailable);
        };
        if consumed == events {
            return Ok(Self::AllExcept(BTreeSet::new()));
        }
        // The rollup may be behind the snapshot's events, or (refreshed a moment later)
        // ahead of them: either way the days changed in between differ.
        let (from, to) = (consumed.min(events) + 1, consumed.max(events));
        Ok(
            match changed_dates(storage, EVENTS_TABLE, from, to).await? {
                Some(days) => Self::AllExcept(days),
                None => Self::Unavailable,
            },
        )
    }
}

/// Reads the spend of every request on `snapshot`: one statement per budget, each through the
/// read-only gate, under `limits`.
pub async fn read_spend(
    catalog: &Catalog,
    snapshot: Arc<Snapshot>,
    limits: &QueryLimits,
    requests: &[SpendRequest<'_>],
) -> Result<SpendReport> {
    let events = snapshot.tables.get(EVENTS_TABLE);
    let mut report = SpendReport {
        spends: Vec::with_capacity(requests.len()),
        events_version: events.map(|t| t.version),
        as_of: events
            .and_then(|t| t.committed_at_ms)
            .and_then(DateTime::from_timestamp_millis),
        coverage: RollupCoverage::Unavailable,
    };
    if events.is_none() {
        // No AI usage yet: every budget has spent nothing.
        report.spends = requests.iter().map(BudgetSpend::nothing).collect();
        return Ok(report);
    }
    report.coverage = RollupCoverage::of(catalog.storage(), &snapshot).await?;
    for r in requests {
        let started = std::time::Instant::now();
        let spend = if r.budget.scope.per_user {
            let sql = per_user_spend_sql(&r.budget.scope, r.window);
            let per_user = user_amounts(&run(catalog, &snapshot, limits, &sql).await?)?;
            let total = per_user
                .values()
                .try_fold(Money::ZERO, |acc, m| acc.checked_add(*m))
                .ok_or_else(|| EngineError::Internal("budget spend overflows".into()))?;
            BudgetSpend {
                total,
                per_user,
                ..BudgetSpend::nothing(r)
            }
        } else {
            let sql = spend_sql(&r.budget.scope, r.window, &report.coverage);
            let total = single_amount(&run(catalog, &snapshot, limits, &sql).await?)?;
            BudgetSpend {
                total,
                ..BudgetSpend::nothing(r)
            }
        };
        debug!(
            budget = %r.budget.name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "budget spend read"
        );
        report.spends.push(spend);
    }
    Ok(report)
}

impl BudgetSpend {
    fn nothing(r: &SpendRequest<'_>) -> Self {
        Self {
            budget: r.budget.name.clone(),
            window: r.window,
            total: Money::ZERO,
            per_user: BTreeMap::new(),
        }
    }
}

/// The statement summing the spend of `scope` over `window`: whole UTC days the rollup covers
/// from `ai_usage_daily`, everything else from `ai_usage`. One row, column `spend`.
pub fn spend_sql(scope: &Scope, window: PeriodWindow, coverage: &RollupCoverage) -> String {
    let filters = scope_filters(scope, INNER_INDENT);
    let raw_window = raw_window_predicate(window, INNER_INDENT);
    let rows = match rollup_days_predicate(window, coverage) {
        Some(days) => format!(
            "    SELECT cost_usd FROM {DAILY_ROLLUP}\n    WHERE {days}{filters}\n    UNION ALL\n    SELECT cost_usd FROM {EVENTS_TABLE}\n    WHERE {raw_window}\n      AND NOT ({days}){filters}"
        ),
        None => format!("    SELECT cost_usd FROM {EVENTS_TABLE}\n    WHERE {raw_window}{filters}"),
    };
    format!(
        "SELECT coalesce(CAST(sum(cost_usd) AS {SPEND_TYPE_SQL}), CAST(0 AS {SPEND_TYPE_SQL})) AS spend\nFROM (\n{rows}\n) AS budget_rows"
    )
}

/// The statement summing the spend of a per-user `scope` over `window` per user, from the raw
/// events (the rollup has no user). Events without a user count for no one. Columns
/// `user_id`, `spend`; ordered by user.
pub fn per_user_spend_sql(scope: &Scope, window: PeriodWindow) -> String {
    let filters = scope_filters(scope, OUTER_INDENT);
    let raw_window = raw_window_predicate(window, OUTER_INDENT);
    format!(
        "SELECT user_id, CAST(sum(cost_usd) AS {SPEND_TYPE_SQL}) AS spend\nFROM {EVENTS_TABLE}\nWHERE {raw_window}\n{OUTER_INDENT}AND user_id IS NOT NULL{filters}\nGROUP BY user_id\nORDER BY user_id"
    )
}

/// `[start, end)` on `occurred_at`, with the `event_date` partitions it can touch (the
/// partition column is the UTC date of `occurred_at`) so that only those are scanned.
fn raw_window_predicate(window: PeriodWindow, indent: &str) -> String {
    format!(
        "occurred_at >= {} AND occurred_at < {}\n{indent}AND event_date >= {} AND event_date <= {}",
        timestamp_literal(window.start),
        timestamp_literal(window.end),
        date_literal(window.start.date_naive()),
        date_literal(window.end.date_naive()),
    )
}

/// The whole UTC days inside `window` that the rollup answers for, as a predicate on
/// `event_date`; None when there are none.
fn rollup_days_predicate(window: PeriodWindow, coverage: &RollupCoverage) -> Option<String> {
    let RollupCoverage::AllExcept(stale) = coverage else {
        return None;
    };
    let (first, end) = whole_utc_days(window)?;
    let mut days = format!(
        "event_date >= {} AND event_date < {}",
        date_literal(first),
        date_literal(end)
    );
    let stale: Vec<String> = stale.range(first..end).map(|d| date_literal(*d)).collect();
    if !stale.is_empty() {
        days.push_str(&format!(" AND event_date NOT IN ({})", stale.join(", ")));
    }
    Some(days)
}

/// `[first, end)`: the UTC dates whose whole day lies inside `window`; None when none does.
fn whole_utc_days(window: PeriodWindow) -> Option<(NaiveDate, NaiveDate)> {
    let start = window.start.naive_utc();
    let first = if start.time() == NaiveTime::MIN {
        start.date()
    } else {
        start.date().succ_opt()?
    };
    // A day ends inside the window when its successor starts at or before the window's end.
    let end = window.end.date_naive();
    (first < end).then_some((first, end))
}

/// ` AND column = value` for each filter of the scope, each on its own line after `indent`.
fn scope_filters(scope: &Scope, indent: &str) -> String {
    [
        ("feature", &scope.feature),
        ("provider", &scope.provider),
        ("model", &scope.model),
    ]
    .into_iter()
    .filter_map(|(column, value)| {
        value
            .as_deref()
            .map(|v| format!("\n{indent}AND {column} = {}", text_literal(v)))
    })
    .collect()
}

/// A UTC instant as a timestamp literal without a zone: compared with the `UTC` column, it is
/// read as UTC.
pub(super) fn timestamp_literal(at: DateTime<Utc>) -> String {
    format!(
        "TIMESTAMP '{}'",
        at.naive_utc().format("%Y-%m-%d %H:%M:%S%.f")
    )
}

pub(super) async fn run(
    catalog: &Catalog,
    snapshot: &Arc<Snapshot>,
    limits: &QueryLimits,
    sql: &str,
) -> Result<Vec<RecordBatch>> {
    let q = PlannedQuery::plan(catalog, sql, limits, snapshot.clone()).await?;
    q.df.collect().await.map_err(EngineError::from_execution)
}

/// The one amount of a [`spend_sql`] result.
fn single_amount(batches: &[RecordBatch]) -> Result<Money> {
    let Some(batch) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok(Money::ZERO);
    };
    Ok(amounts(batch.column(0))?
        .first()
        .copied()
        .flatten()
        .unwrap_or(Money::ZERO))
}

/// The `(user_id, spend)` rows of a [`per_user_spend_sql`] result.
fn user_amounts(batches: &[RecordBatch]) -> Result<BTreeMap<String, Money>> {
    let mut out = BTreeMap::new();
    for b in batches {
        let users = crate::text::utf8(b.column(0), "user_id")?;
        for (i, spend) in amounts(b.column(1))?.into_iter().enumerate() {
            if let (true, Some(spend)) = (users.is_valid(i), spend) {
                out.insert(users.value(i).to_string(), spend);
            }
        }
    }
    Ok(out)
}

/// A decimal column at `cost_usd`'s scale as amounts. The cast only widens the precision: a
/// scale other than 9 is refused, since rescaling could round.
pub(super) fn amounts(column: &ArrayRef) -> Result<Vec<Option<Money>>> {
    match column.data_type() {
        DataType::Decimal128(_, scale) if i64::from(*scale) == i64::from(MONEY_SCALE) => {}
        other => {
            return Err(EngineError::Internal(format!(
                "a spend must be a decimal of scale {MONEY_SCALE}, not {other}"
            )))
        }
    }
    let wide = arrow::compute::cast(column, &DataType::Decimal128(38, MONEY_SCALE as i8))?;
    let wide = wide
        .as_any()
        .downcast_ref::<Decimal128Array>()
        .ok_or_else(|| EngineError::Internal("a spend is not a Decimal128".into()))?;
    Ok((0..wide.len())
        .map(|i| wide.is_valid(i).then(|| Money::from_nanos(wide.value(i))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::period::{parse_tz, Period, PeriodKind};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn window(kind: PeriodKind, tz: &str, at: &str) -> PeriodWindow {
        Period::new(kind, parse_tz(tz).unwrap()).window(utc(at))
    }

    fn october(tz: &str) -> PeriodWindow {
        window(PeriodKind::Month, tz, "2026-10-15T12:00:00Z")
    }

    fn day(d: &str) -> NaiveDate {
        d.parse().unwrap()
    }

    fn current() -> RollupCoverage {
        RollupCoverage::AllExcept(BTreeSet::new())
    }

    fn scope(feature: Option<&str>, model: Option<&str>, per_user: bool) -> Scope {
        Scope {
            feature: feature.map(String::from),
            model: model.map(String::from),
            per_user,
            ..Scope::default()
        }
    }

    /// The statements `tests/slt/budget_spend.slt` runs over the fixture, in its order.
    fn slt_statements() -> Vec<String> {
        let all = Scope::default();
        let oct_2 = RollupCoverage::AllExcept(BTreeSet::from([day("2026-10-02")]));
        vec![
            spend_sql(&all, october("Europe/Berlin"), &current()),
            spend_sql(&all, october("America/Anchorage"), &current()),
            spend_sql(&all, october("Pacific/Marquesas"), &current()),
            spend_sql(
                &all,
                window(PeriodKind::Day, "America/Anchorage", "2026-10-01T12:00:00Z"),
                &current(),
            ),
            spend_sql(&all, october("Europe/Berlin"), &oct_2),
            spend_sql(&all, october("Europe/Berlin"), &RollupCoverage::Unavailable),
            spend_sql(
                &scope(Some("search_answer"), None, false),
                october("Europe/Berlin"),
                &current(),
            ),
            spend_sql(
                &scope(None, Some("x' OR 1=1 --"), false),
                october("Europe/Berlin"),
                &current(),
            ),
            per_user_spend_sql(&scope(None, None, true), october("Europe/Berlin")),
            per_user_spend_sql(
                &scope(Some("search_answer"), None, true),
                october("Europe/Berlin"),
            ),
        ]
    }

    fn words(s: &str) -> String {
        s.split_whitespace().collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn the_slt_file_pins_the_statements_this_module_renders() {
        let slt = words(include_str!("../../tests/slt/budget_spend.slt"));
        let mut from = 0;
        for sql in slt_statements() {
            let sql = words(&sql);
            let Some(at) = slt[from..].find(&sql) else {
                panic!("budget_spend.slt does not run (in this order):\n{sql}");
            };
            from += at + sql.len();
        }
    }

    #[test]
    fn whole_days_come_from_the_rollup_and_the_edges_from_raw_events() {
        // October in Berlin: [Sep 30 22:00, Oct 31 23:00) UTC; whole days Oct 1 to Oct 30.
        let sql = spend_sql(&Scope::default(), october("Europe/Berlin"), &current());
        assert!(sql.contains(
            "FROM ai_usage_daily\n    WHERE event_date >= DATE '2026-10-01' AND event_date < DATE '2026-10-31'"
        ), "{sql}");
        assert!(sql.contains("occurred_at >= TIMESTAMP '2026-09-30 22:00:00' AND occurred_at < TIMESTAMP '2026-10-31 23:00:00'"), "{sql}");
        assert!(
            sql.contains("AND event_date >= DATE '2026-09-30' AND event_date <= DATE '2026-10-31'"),
            "{sql}"
        );
        assert!(!sql.to_lowercase().contains("double") && !sql.to_lowercase().contains("float"));
        // A UTC month is whole days only, and the raw branch reads none of them.
        let w = october("UTC");
        assert_eq!(
            whole_utc_days(w),
            Some((day("2026-10-01"), day("2026-11-01")))
        );
        // A day of a zone off UTC holds no whole UTC day: raw events only.
        let w = window(PeriodKind::Day, "Asia/Kolkata", "2026-10-01T12:00:00Z");
        assert_eq!(whole_utc_days(w), None);
        assert!(!spend_sql(&Scope::default(), w, &current()).contains(DAILY_ROLLUP));
    }

    #[test]
    fn days_the_rollup_lags_on_are_read_raw() {
        let stale = RollupCoverage::AllExcept(BTreeSet::from([
            day("2026-09-01"),
            day("2026-10-02"),
            day("2026-10-05"),
        ]));
        let sql = spend_sql(&Scope::default(), october("Europe/Berlin"), &stale);
        // Only the stale days inside the whole-day range are listed.
        assert!(
            sql.contains("AND event_date NOT IN (DATE '2026-10-02', DATE '2026-10-05')"),
            "{sql}"
        );
        assert!(!sql.contains("2026-09-01"), "{sql}");
        let sql = spend_sql(
            &Scope::default(),
            october("Europe/Berlin"),
            &RollupCoverage::Unavailable,
        );
        assert!(!sql.contains(DAILY_ROLLUP), "{sql}");
    }

    #[test]
    fn filter_values_never_reach_the_sql_as_text() {
        for evil in [
            "x' OR 1=1 --",
            "') UNION SELECT user_id FROM ai_usage /*",
            "a\\'b",
        ] {
            let s = Scope {
                feature: Some(evil.into()),
                provider: Some(evil.into()),
                model: Some(evil.into()),
                per_user: false,
            };
            for sql in [
                spend_sql(&s, october("UTC"), &current()),
                per_user_spend_sql(&s, october("UTC")),
            ] {
                assert!(!sql.contains(evil), "{sql}");
                assert!(sql.contains(&text_literal(evil)));
            }
        }
    }

    #[test]
    fn timestamps_keep_sub_second_instants() {
        assert_eq!(
            timestamp_literal(utc("2026-10-01T08:00:00.25Z")),
            "TIMESTAMP '2026-10-01 08:00:00.250'"
        );
        assert_eq!(
            timestamp_literal(utc("2026-10-01T08:00:00Z")),
            "TIMESTAMP '2026-10-01 08:00:00'"
        );
    }

    #[test]
    fn reads_amounts_at_scale_nine_only() {
        let exact: ArrayRef = Arc::new(
            Decimal128Array::from(vec![Some(3_280_000), None])
                .with_precision_and_scale(38, 9)
                .unwrap(),
        );
        let got = amounts(&exact).unwrap();
        assert_eq!(got, vec![Some(Money::parse("0.00328").unwrap()), None]);
        let narrow: ArrayRef = Arc::new(
            Decimal128Array::from(vec![Some(1)])
                .with_precision_and_scale(18, 9)
                .unwrap(),
        );
        assert_eq!(amounts(&narrow).unwrap(), vec![Some(Money::from_nanos(1))]);
        let other_scale: ArrayRef = Arc::new(
            Decimal128Array::from(vec![Some(1)])
                .with_precision_and_scale(38, 2)
                .unwrap(),
        );
        assert!(amounts(&other_scale).is_err());
    }
}
