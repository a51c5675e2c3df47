//! The state of a budget in its current period, computed from its spend and the clock: a pure
//! function, so the server can recompute every budget after each ingest commit in memory.
//!
//! ```text
//! Budget + PeriodWindow + spend (spend.rs) + as_of --compute--> BudgetState
//!     share, burn per day, forecast at period end, exhaustion, crossed threshold, action
//! ```
//!
//! The forecast is linear: spend so far over the time elapsed so far, extended to the whole
//! period, in integer arithmetic over nano-dollars and seconds. Time elapsed is measured to
//! `as_of` (the data the spend reflects), not to the clock, so that ingest lag does not read
//! as a slower burn.

use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;

use super::config::{Action, Budget, Threshold};
use super::money::Money;
use super::period::PeriodWindow;

/// No forecast before this much of a period has elapsed. In the first minutes one call
/// extrapolates to absurd figures (a $5 call at 00:05 on the 1st is a $45,000 month), which
/// would put a "forecast to exceed" alert on every budget at every reset; an hour holds enough
/// calls for a burn rate that means something, and is short next to a day, week or month.
pub const MIN_FORECAST_SECS: i64 = 3600;
const SECS_PER_DAY: i128 = 86_400;

/// One budget (or one user's share of a per-user budget) in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BudgetState {
    pub name: String,
    /// Whose spend this is, for a per-user budget.
    pub user_id: Option<String>,
    pub amount: Money,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Spend in the period up to `as_of`.
    pub spend: Money,
    /// `spend` as a share of `amount` in basis points (1/100 %), rounded down.
    pub share_bp: u64,
    /// Whether the burn rate, forecast and projected exhaustion are extrapolated yet (false
    /// in the first hour of a period, see [`MIN_FORECAST_SECS`]).
    pub forecasting: bool,
    /// Average spend per day so far (zero until `forecasting`).
    pub burn_per_day: Money,
    /// Spend at the period's end at the burn so far (`spend` until `forecasting`).
    pub forecast_at_end: Money,
    /// When spend reaches `amount` at the burn so far: in the past when it already has (an
    /// estimate of when), None when the forecast stays under the amount this period.
    pub exhaustion_at: Option<DateTime<Utc>>,
    /// The highest threshold spend has reached.
    pub crossed: Option<Threshold>,
    /// The most severe action of the thresholds reached, as the budget applies it
    /// ([`Budget::effective`]: a soft budget never blocks). None: nothing to do.
    pub action: Option<Action>,
    /// When the next period starts and spend counts from zero again.
    pub resets_at: DateTime<Utc>,
    /// The data `spend` reflects (the commit time of the events table it was read from).
    pub as_of: DateTime<Utc>,
}

impl BudgetState {
    /// The state of `budget` in `window` with `spend` read from data as of `as_of`.
    pub fn compute(
        budget: &Budget,
        window: PeriodWindow,
        spend: Money,
        as_of: DateTime<Utc>,
    ) -> Self {
        let amount = budget.amount;
        let observed = as_of.max(window.start).min(window.end);
        let elapsed = (observed - window.start).num_seconds();
        let period = window.length().num_seconds();
        let forecasting = elapsed >= MIN_FORECAST_SECS;
        let (burn_per_day, forecast_at_end) = if forecasting {
            (
                spend.saturating_mul_div(SECS_PER_DAY, i128::from(elapsed)),
                spend.saturating_mul_div(i128::from(period), i128::from(elapsed)),
            )
        } else {
            (Money::ZERO, spend)
        };
        let crossed = budget
            .thresholds
            .iter()
            .filter(|t| spend.reaches_percent(amount, t.percent))
            .max_by_key(|t| t.percent)
            .copied();
        let action = budget
            .thresholds
            .iter()
            .filter(|t| spend.reaches_percent(amount, t.percent))
            .map(|t| budget.effective(t.action))
            .max();
        Self {
            name: budget.name.clone(),
            user_id: None,
            amount,
            period_start: window.start,
            period_end: window.end,
            spend,
            share_bp: spend.basis_points_of(amount).unwrap_or(u64::MAX),
            forecasting,
            burn_per_day,
            forecast_at_end,
            exhaustion_at: exhaustion(window, elapsed, spend, amount, forecasting),
            crossed,
            action,
            resets_at: window.end,
            as_of,
        }
    }

    /// The state of one user's share of a per-user budget.
    pub fn for_user(
        budget: &Budget,
        user_id: &str,
        window: PeriodWindow,
        spend: Money,
        as_of: DateTime<Utc>,
    ) -> Self {
        Self {
            user_id: Some(user_id.to_string()),
            ..Self::compute(budget, window, spend, as_of)
        }
    }

    /// Whether this state is of the period holding `now` (false once the period has reset).
    pub fn is_current(&self, now: DateTime<Utc>) -> bool {
        self.period_start <= now && now < self.period_end
    }

    /// The share as a percent with two decimals, `91.20%`.
    pub fn share_text(&self) -> String {
        format!("{}.{:02}%", self.share_bp / 100, self.share_bp % 100)
    }
}

/// When spend reaches `amount` on the line through the period's start and `(elapsed, spend)`:
/// `start + elapsed * amount / spend`. Reached already: that moment (at or before now), even in
/// the first hour, since it is no forecast. Not reached: only when forecasting and before the
/// period ends.
fn exhaustion(
    window: PeriodWindow,
    elapsed: i64,
    spend: Money,
    amount: Money,
    forecasting: bool,
) -> Option<DateTime<Utc>> {
    if !spend.is_positive() || !amount.is_positive() {
        return None;
    }
    let reached = spend >= amount;
    if !reached && !forecasting {
        return None;
    }
    let secs = i128::from(elapsed).checked_mul(amount.nanos())? / spend.nanos();
    let at = window
        .start
        .checked_add_signed(TimeDelta::try_seconds(i64::try_from(secs).ok()?)?)?;
    (reached || at < window.end).then_some(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::period::Period;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn dollars(s: &str) -> Money {
        Money::parse(s).unwrap()
    }

    /// September 2026 in UTC: 30 days.
    fn september() -> PeriodWindow {
        Period::default().window(utc("2026-09-15T00:00:00Z"))
    }

    fn state(b: &Budget, spend: &str, as_of: &str) -> BudgetState {
        BudgetState::compute(b, september(), dollars(spend), utc(as_of))
    }

    #[test]
    fn forecasts_linearly_from_the_burn_so_far() {
        let b = Budget::new("ai", dollars("300"));
        // 60 dollars in 5 days: 12 a day, 360 by the end, 300 reached after 25 days.
        let s = state(&b, "60", "2026-09-06T00:00:00Z");
        assert!(s.forecasting);
        assert_eq!(s.burn_per_day, dollars("12"));
        assert_eq!(s.forecast_at_end, dollars("360"));
        assert_eq!(s.exhaustion_at, Some(utc("2026-09-26T00:00:00Z")));
        assert_eq!(s.share_bp, 2_000);
        assert_eq!(s.share_text(), "20.00%");
        assert_eq!((s.crossed, s.action), (None, None));
        assert_eq!(s.resets_at, utc("2026-10-01T00:00:00Z"));
        // 50 in 5 days reaches exactly 300 at the end: not exhausted within the period.
        let s = state(&b, "50", "2026-09-06T00:00:00Z");
        assert_eq!(s.forecast_at_end, dollars("300"));
        assert_eq!(s.exhaustion_at, None);
        // Nothing spent: nothing forecast.
        let s = state(&b, "0", "2026-09-06T00:00:00Z");
        assert_eq!((s.forecast_at_end, s.exhaustion_at), (Money::ZERO, None));
    }

    #[test]
    fn burn_and_forecast_stay_exact() {
        let b = Budget::new("ai", dollars("1"));
        // 0.000000001 over one day of thirty: exactly 0.00000003 by the end.
        let s = state(&b, "0.000000001", "2026-09-02T00:00:00Z");
        assert_eq!(s.burn_per_day.to_string(), "0.000000001");
        assert_eq!(s.forecast_at_end.to_string(), "0.00000003");
    }

    #[test]
    fn no_forecast_in_the_first_hour() {
        let b = Budget::new("ai", dollars("300"));
        let s = state(&b, "5", "2026-09-01T00:30:00Z");
        assert!(!s.forecasting);
        assert_eq!(s.burn_per_day, Money::ZERO);
        assert_eq!(s.forecast_at_end, dollars("5"));
        assert_eq!(s.exhaustion_at, None);
        // An hour in, it forecasts.
        assert!(state(&b, "5", "2026-09-01T01:00:00Z").forecasting);
        // Data from before the period (no commit since the reset) is no time elapsed.
        let s = state(&b, "0", "2026-08-31T23:00:00Z");
        assert!(!s.forecasting);
        // Exhausted already in the first hour: when, by the line, is no forecast.
        let s = state(&b, "400", "2026-09-01T00:40:00Z");
        assert_eq!(s.exhaustion_at, Some(utc("2026-09-01T00:30:00Z")));
    }

    #[test]
    fn crosses_thresholds_exactly() {
        let b = Budget::new("ai", dollars("300"));
        let at = "2026-09-20T00:00:00Z";
        let s = state(&b, "224.999999999", at);
        assert_eq!(s.crossed, None);
        let s = state(&b, "225", at);
        assert_eq!(s.crossed.map(|t| t.percent), Some(75));
        assert_eq!(s.action, Some(Action::Alert));
        let s = state(&b, "270", at);
        assert_eq!(s.crossed.map(|t| t.percent), Some(90));
        assert_eq!(s.action, Some(Action::ReduceBatch { percent: 50 }));
        let s = state(&b, "300", at);
        assert_eq!(s.action, Some(Action::Stop));
        assert_eq!(s.share_bp, 10_000);
        let s = state(&b, "450", at);
        assert_eq!(s.share_text(), "150.00%");
        assert_eq!(s.exhaustion_at, Some(utc("2026-09-13T16:00:00Z")));
    }

    #[test]
    fn a_soft_budget_keeps_its_reduction_past_100() {
        let mut b = Budget::new("ai", dollars("300"));
        b.hard = false;
        let s = state(&b, "330", "2026-09-20T00:00:00Z");
        assert_eq!(
            s.crossed.map(|t| (t.percent, t.action)),
            Some((100, Action::Stop))
        );
        assert_eq!(s.action, Some(Action::ReduceBatch { percent: 50 }));
    }

    #[test]
    fn per_user_states_name_the_user_and_go_stale_at_the_reset() {
        let b = Budget::new("ai", dollars("3"));
        let s = BudgetState::for_user(
            &b,
            "u1",
            september(),
            dollars("1"),
            utc("2026-09-10T00:00:00Z"),
        );
        assert_eq!(s.user_id.as_deref(), Some("u1"));
        assert!(s.is_current(utc("2026-09-30T23:59:59Z")));
        assert!(!s.is_current(utc("2026-10-01T00:00:00Z")));
    }
}
