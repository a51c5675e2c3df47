//! AI budgets, the engine core: what a budget is, its periods in its own time zone, exact
//! money, the spend read from the `ai_usage` tables, each budget's state and forecast, and the
//! decision a caller must follow.
//!
//! ```text
//! config [[budgets]] -> Budget (config.rs, validated)
//!       Period::window(now) (period.rs) -> [start, end) in UTC
//!       read_spend on a catalog snapshot (spend.rs): ai_usage_daily + ai_usage -> Money
//!       BudgetState::compute (state.rs): share, burn, forecast, exhaustion, threshold, action
//!       Board::decide(call, now) (decision.rs) -> Decision { action, budget, reason, as_of, lag }
//! ```
//!
//! Everything past the spend read is pure: a server recomputes the states after each ingest
//! commit and answers decisions from the [`Board`] it keeps in memory ([`BudgetService`]).
//! Around it: audited overrides (overrides.rs), reservations of spend in flight
//! (reservations.rs) and signed webhook alerts sent once per threshold per period (alerts.rs).

pub mod alerts;
mod config;
mod decision;
mod money;
pub mod overrides;
mod period;
pub mod reservations;
mod service;
mod spend;
mod state;

pub use config::{
    default_thresholds, validate_budgets, Action, Budget, Scope, Threshold, Webhook, RESERVED_NAMES,
};
pub use decision::{Board, BudgetStanding, Call, Decision};
pub use money::{Money, MoneyError, MONEY_SCALE};
pub use overrides::{Override, OverrideRequest};
pub use period::{parse_tz, Period, PeriodKind, PeriodWindow};
pub use reservations::{Refusal, Reservation, ReservationRequest};
pub use service::{
    BudgetObserver, BudgetReport, BudgetService, BudgetsView, Reserved, POLL_INTERVAL,
};
pub use spend::{
    per_user_spend_sql, read_spend, spend_sql, BudgetSpend, RollupCoverage, SpendReport,
    SpendRequest, DAILY_ROLLUP, EVENTS_TABLE,
};
pub use state::{BudgetState, MIN_FORECAST_SECS};

/// Re-exported so that callers name the time zone type budgets use.
pub use chrono_tz::Tz;
