//! The metrics of the AI budgets: each budget's spend, share and held amount after each
//! refresh, decisions by action, reservations by outcome, alerts and their attempts. Labels
//! are budget names (from the configuration), actions and outcomes: fixed sets.

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry};
use strata_engine::budget::Board;
use strata_engine::budget::{BudgetObserver, BudgetStanding, Decision, Money};

pub struct BudgetMetrics {
    spend: GaugeVec,
    share: GaugeVec,
    held: GaugeVec,
    decisions: IntCounterVec,
    reservations: IntCounterVec,
    alerts: IntCounterVec,
    attempts: IntCounterVec,
}

fn usd(m: Money) -> f64 {
    // Display only: a gauge is a float by nature; every decision uses the exact amount.
    m.nanos() as f64 / 1e9
}

impl BudgetMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let gauge = |name: &str, help: &str| -> prometheus::Result<GaugeVec> {
            let g = GaugeVec::new(Opts::new(name, help), &["budget"])?;
            registry.register(Box::new(g.clone()))?;
            Ok(g)
        };
        let counter =
            |name: &str, help: &str, labels: &[&str]| -> prometheus::Result<IntCounterVec> {
                let c = IntCounterVec::new(Opts::new(name, help), labels)?;
                registry.register(Box::new(c.clone()))?;
                Ok(c)
            };
        let m = Self {
            spend: gauge(
                "strata_budget_spend_usd",
                "Spend of each AI budget in its current period (a per-user budget: the sum over its users), USD.",
            )?,
            share: gauge(
                "strata_budget_share_ratio",
                "Spend of each AI budget as a share of its (overridden) amount; 1 is 100%.",
            )?,
            held: gauge(
                "strata_budget_held_usd",
                "Spend held by open reservations covering each AI budget, USD.",
            )?,
            decisions: counter(
                "strata_budget_decisions_total",
                "Budget decisions answered, by the budget that decided (none: no budget acted) and action (allow when none).",
                &["budget", "action"],
            )?,
            reservations: counter(
                "strata_budget_reservations_total",
                "Reservations by outcome: held, refused, settled (its event arrived), expired, released.",
                &["outcome"],
            )?,
            alerts: counter(
                "strata_budget_alerts_total",
                "Budget alerts this server sent, by budget, kind (threshold-75, forecast-100, ...) and outcome (delivered, failed).",
                &["budget", "kind", "outcome"],
            )?,
            attempts: counter(
                "strata_budget_alert_attempts_total",
                "Webhook POSTs of budget alerts, by outcome (ok: a 2xx; error: anything else, then retried).",
                &["outcome"],
            )?,
        };
        for outcome in ["held", "refused", "settled", "expired", "released"] {
            m.reservations.with_label_values(&[outcome]);
        }
        for outcome in ["ok", "error"] {
            m.attempts.with_label_values(&[outcome]);
        }
        Ok(m)
    }
}

fn action_label(d: &Decision) -> &'static str {
    use strata_engine::budget::Action;
    match d.action {
        None => "allow",
        Some(Action::Alert) => "alert",
        Some(Action::ReduceBatch { .. }) => "reduce_batch",
        Some(Action::PauseQueue) => "pause_queue",
        Some(Action::Stop) => "stop",
    }
}

impl BudgetObserver for BudgetMetrics {
    fn states(&self, board: &Board, held: &dyn Fn(&BudgetStanding) -> Money) {
        for s in &board.standings {
            let name = s.budget.name.as_str();
            let spend = match &s.total {
                Some(t) => t.spend,
                None => s.per_user.values().fold(Money::ZERO, |acc, u| {
                    acc.checked_add(u.spend).unwrap_or(acc)
                }),
            };
            self.spend.with_label_values(&[name]).set(usd(spend));
            let amount = usd(s.budget.amount);
            if amount > 0.0 && s.total.is_some() {
                self.share
                    .with_label_values(&[name])
                    .set(usd(spend) / amount);
            }
            self.held.with_label_values(&[name]).set(usd(held(s)));
        }
    }

    fn decision(&self, d: &Decision) {
        self.decisions
            .with_label_values(&[d.budget.as_deref().unwrap_or("none"), action_label(d)])
            .inc();
    }

    fn reservation(&self, outcome: &'static str, count: u64) {
        self.reservations
            .with_label_values(&[outcome])
            .inc_by(count);
    }

    fn alert(&self, budget: &str, kind: &str, delivered: bool, attempts: u32, failed: u32) {
        let outcome = if delivered { "delivered" } else { "failed" };
        self.alerts
            .with_label_values(&[budget, kind, outcome])
            .inc();
        let ok = attempts.saturating_sub(failed);
        self.attempts
            .with_label_values(&["ok"])
            .inc_by(u64::from(ok));
        self.attempts
            .with_label_values(&["error"])
            .inc_by(u64::from(failed));
    }
}
