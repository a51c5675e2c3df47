//! What the AI job runner must do before its next batch, across every budget that covers the
//! call: a pure function of the budgets' states, so the server can answer from memory.
//!
//! ```text
//! Call { feature, provider, model, user_id } --Board::decide(now)--> Decision
//!     every covering budget's current state -> its action -> the most severe wins
//! ```
//!
//! Rules:
//! - A budget covers a call when each of its scope's filters matches the call's field, or the
//!   call leaves that field out: a caller cannot slip past a budget by not saying what it runs.
//! - A per-user budget covers only calls that name a user, and acts on that user's state.
//! - A state of a period that has ended counts as nothing: the new period starts clean even
//!   before its first state is computed.
//! - The most severe action wins (`alert < reduce_batch < pause_queue < stop`, a smaller batch
//!   more severe); a tie goes to the budget with the larger share, then the first by name.
//! - A soft budget never blocks: its states already carry `pause_queue` and `stop` as `alert`
//!   (see [`Budget::effective`]), so it throttles at most by reducing batches.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::config::{Action, Budget, Scope};
use super::state::BudgetState;

/// The fields of the AI call a decision is asked for; a field left out is unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Call {
    pub feature: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub user_id: Option<String>,
}

/// What the caller must do now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// None: go ahead as usual. `alert` also lets the call run.
    pub action: Option<Action>,
    /// The budget whose action this is.
    pub budget: Option<String>,
    pub reason: String,
    /// The data the decision reflects (the events table's commit time).
    pub as_of: DateTime<Utc>,
    /// How far `as_of` is behind the clock when the decision was made.
    pub lag: Duration,
}

/// One budget with its current states: the whole budget's, or each user's of a per-user
/// budget (a user without spend this period has no state and nothing to do).
#[derive(Debug, Clone)]
pub struct BudgetStanding {
    pub budget: Budget,
    pub total: Option<BudgetState>,
    pub per_user: BTreeMap<String, BudgetState>,
}

/// Every budget's standing on one version of the data: what decisions are answered from.
#[derive(Debug, Clone)]
pub struct Board {
    pub standings: Vec<BudgetStanding>,
    pub as_of: DateTime<Utc>,
}

impl Scope {
    /// Whether a budget with this scope counts `call` (see the module's rules).
    pub fn covers(&self, call: &Call) -> bool {
        let matches = |filter: &Option<String>, field: &Option<String>| match (filter, field) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        };
        matches(&self.feature, &call.feature)
            && matches(&self.provider, &call.provider)
            && matches(&self.model, &call.model)
            && (!self.per_user || call.user_id.is_some())
    }
}

impl Decision {
    /// The share of its usual batch size the caller may run now: 100 unless throttled.
    pub fn batch_percent(&self) -> u32 {
        self.action.map_or(100, Action::batch_percent)
    }

    /// Whether the caller may start its batch at all.
    pub fn allows(&self) -> bool {
        !self.action.is_some_and(Action::blocks)
    }
}

/// The state that speaks for one standing in a decision, and whose it is.
struct Candidate<'a> {
    budget: &'a Budget,
    state: &'a BudgetState,
    action: Action,
}

impl Board {
    /// The action `call` must take at `now`.
    pub fn decide(&self, call: &Call, now: DateTime<Utc>) -> Decision {
        let covering: Vec<&BudgetStanding> = self
            .standings
            .iter()
            .filter(|s| s.budget.scope.covers(call))
            .collect();
        let worst = covering
            .iter()
            .copied()
            .filter_map(|s| candidate(s, call, now))
            .max_by(|a, b| {
                (a.action, a.state.share_bp)
                    .cmp(&(b.action, b.state.share_bp))
                    // Equal: the first by name wins, so it must compare greater.
                    .then_with(|| b.budget.name.cmp(&a.budget.name))
            });
        let reason = match &worst {
            Some(c) => reason_for(c),
            None if covering.is_empty() => "no budget covers this call".to_string(),
            None => format!(
                "{} covering this call {} crossed a threshold this period",
                plural(covering.len(), "budget"),
                if covering.len() == 1 {
                    "has not"
                } else {
                    "have not"
                },
            ),
        };
        Decision {
            action: worst.as_ref().map(|c| c.action),
            budget: worst.as_ref().map(|c| c.budget.name.clone()),
            reason,
            as_of: self.as_of,
            lag: (now - self.as_of).to_std().unwrap_or(Duration::ZERO),
        }
    }
}

/// The standing's current state for `call` with an action, if it has one.
fn candidate<'a>(
    standing: &'a BudgetStanding,
    call: &Call,
    now: DateTime<Utc>,
) -> Option<Candidate<'a>> {
    let state = if standing.budget.scope.per_user {
        standing.per_user.get(call.user_id.as_deref()?)?
    } else {
        standing.total.as_ref()?
    };
    if !state.is_current(now) {
        return None;
    }
    Some(Candidate {
        budget: &standing.budget,
        state,
        action: state.action?,
    })
}

/// Which budget, whose share, how far along, and the threshold crossed, with a note when a
/// soft budget softened its threshold's action; for example: budget `search` is at 95.00% of
/// 100.00 USD this month (threshold 90%: reduce batches to 50%).
fn reason_for(c: &Candidate<'_>) -> String {
    let whose = if c.state.user_id.is_some() {
        " (this user's share)"
    } else {
        ""
    };
    let mut reason = format!(
        "budget `{}`{whose} is at {} of {} USD this {}",
        c.budget.name,
        c.state.share_text(),
        c.state.amount,
        c.budget.period.kind,
    );
    if let Some(t) = c.state.crossed {
        reason.push_str(&format!(" (threshold {}%: {})", t.percent, t.action));
        if t.action != c.budget.effective(t.action) {
            reason.push_str(&format!(
                "; a soft budget does not {}, it applies {}",
                t.action, c.action
            ));
        }
    }
    reason
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::money::Money;
    use crate::budget::period::{Period, PeriodWindow};

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn now() -> DateTime<Utc> {
        utc("2026-09-20T00:00:00Z")
    }

    fn window() -> PeriodWindow {
        Period::default().window(now())
    }

    fn budget(name: &str, amount: &str, scope: Scope) -> Budget {
        Budget {
            scope,
            ..Budget::new(name, Money::parse(amount).unwrap())
        }
    }

    fn standing(b: Budget, spend: &str) -> BudgetStanding {
        let state = BudgetState::compute(&b, window(), Money::parse(spend).unwrap(), now());
        BudgetStanding {
            budget: b,
            total: Some(state),
            per_user: BTreeMap::new(),
        }
    }

    fn board(standings: Vec<BudgetStanding>) -> Board {
        Board {
            standings,
            as_of: utc("2026-09-19T23:59:58Z"),
        }
    }

    fn feature(f: &str) -> Scope {
        Scope {
            feature: Some(f.into()),
            ..Scope::default()
        }
    }

    fn call(feature: &str) -> Call {
        Call {
            feature: Some(feature.into()),
            ..Call::default()
        }
    }

    #[test]
    fn the_most_severe_action_wins() {
        let b = board(vec![
            standing(budget("all-ai", "1000", Scope::default()), "760"),
            standing(budget("search", "100", feature("search_answer")), "95"),
            standing(budget("writer", "100", feature("listing_writer")), "100"),
        ]);
        let d = b.decide(&call("search_answer"), now());
        assert_eq!(d.action, Some(Action::ReduceBatch { percent: 50 }));
        assert_eq!(d.budget.as_deref(), Some("search"));
        assert_eq!(d.batch_percent(), 50);
        assert!(d.allows());
        assert_eq!(
            d.reason,
            "budget `search` is at 95.00% of 100.00 USD this month (threshold 90%: reduce batches to 50%)"
        );
        assert_eq!(d.lag, Duration::from_secs(2));
        assert_eq!(d.as_of, utc("2026-09-19T23:59:58Z"));
        let d = b.decide(&call("listing_writer"), now());
        assert_eq!((d.action, d.allows()), (Some(Action::Stop), false));
        let d = b.decide(&call("tagging"), now());
        assert_eq!(d.action, Some(Action::Alert));
        assert_eq!(d.budget.as_deref(), Some("all-ai"));
        // A call that does not say its feature is covered by every budget.
        assert_eq!(b.decide(&Call::default(), now()).action, Some(Action::Stop));
    }

    #[test]
    fn nothing_to_do_says_why() {
        let b = board(vec![standing(
            budget("search", "100", feature("search_answer")),
            "10",
        )]);
        let d = b.decide(&call("search_answer"), now());
        assert_eq!((d.action, d.budget.clone()), (None, None));
        assert_eq!(
            d.reason,
            "1 budget covering this call has not crossed a threshold this period"
        );
        assert_eq!(d.batch_percent(), 100);
        let d = b.decide(&call("listing_writer"), now());
        assert_eq!(d.reason, "no budget covers this call");
        assert_eq!(board(vec![]).decide(&call("x"), now()).action, None);
    }

    #[test]
    fn ties_go_to_the_larger_share_then_the_name() {
        let b = board(vec![
            standing(budget("b", "100", Scope::default()), "80"),
            standing(budget("a", "100", Scope::default()), "80"),
            standing(budget("c", "100", Scope::default()), "85"),
        ]);
        assert_eq!(b.decide(&call("x"), now()).budget.as_deref(), Some("c"));
        let b = board(vec![
            standing(budget("b", "100", Scope::default()), "80"),
            standing(budget("a", "100", Scope::default()), "80"),
        ]);
        assert_eq!(b.decide(&call("x"), now()).budget.as_deref(), Some("a"));
    }

    #[test]
    fn a_soft_budget_throttles_but_never_stops() {
        let mut soft = budget("soft", "100", Scope::default());
        soft.hard = false;
        let b = board(vec![standing(soft, "120")]);
        let d = b.decide(&call("x"), now());
        assert_eq!(d.action, Some(Action::ReduceBatch { percent: 50 }));
        assert!(d.allows());
        assert!(d.reason.ends_with("(threshold 100%: stop); a soft budget does not stop, it applies reduce batches to 50%"), "{}", d.reason);
    }

    #[test]
    fn per_user_budgets_act_on_the_callers_share() {
        let b = budget(
            "per-user",
            "1",
            Scope {
                per_user: true,
                ..Scope::default()
            },
        );
        let u1 = BudgetState::for_user(&b, "u1", window(), Money::parse("1.5").unwrap(), now());
        let board = board(vec![BudgetStanding {
            budget: b,
            total: None,
            per_user: BTreeMap::from([("u1".to_string(), u1)]),
        }]);
        let as_user = |u: Option<&str>| Call {
            user_id: u.map(String::from),
            ..Call::default()
        };
        let d = board.decide(&as_user(Some("u1")), now());
        assert_eq!(d.action, Some(Action::Stop));
        assert!(
            d.reason.contains("(this user's share) is at 150.00%"),
            "{}",
            d.reason
        );
        assert_eq!(board.decide(&as_user(Some("u2")), now()).action, None);
        let d = board.decide(&as_user(None), now());
        assert_eq!(
            (d.action, d.reason.as_str()),
            (None, "no budget covers this call")
        );
    }

    #[test]
    fn the_next_period_starts_clean() {
        let b = board(vec![standing(budget("ai", "100", Scope::default()), "100")]);
        assert_eq!(b.decide(&call("x"), now()).action, Some(Action::Stop));
        let next_month = utc("2026-10-01T00:00:00Z");
        assert_eq!(b.decide(&call("x"), next_month).action, None);
    }

    #[test]
    fn scopes_match_every_filter_given() {
        let s = Scope {
            feature: Some("search_answer".into()),
            model: Some("gpt-4.1-mini".into()),
            ..Scope::default()
        };
        let c = |f: &str, m: &str| Call {
            feature: Some(f.into()),
            model: Some(m.into()),
            provider: Some("openai".into()),
            user_id: None,
        };
        assert!(s.covers(&c("search_answer", "gpt-4.1-mini")));
        assert!(!s.covers(&c("search_answer", "claude-haiku")));
        assert!(!s.covers(&c("listing_writer", "gpt-4.1-mini")));
        assert!(Scope::default().covers(&Call::default()));
    }
}
