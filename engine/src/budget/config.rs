//! What a budget is, as the config file declares it, and the checks that make a declared
//! budget safe to act on.
//!
//! ```text
//! strata.toml [[budgets]] --serde--> Budget --validate()--> state (spend, share, forecast)
//!                                                        --> decisions (the actions below)
//! ```

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::money::Money;
use super::period::Period;
use crate::{EngineError, Result};

/// Longest budget name: it is a path segment, a metrics label and part of alert records.
const MAX_NAME_LEN: usize = 64;
/// Thresholds are percents of the amount, up to ten times it (an alert at 200% of a soft budget).
const MAX_THRESHOLD_PERCENT: u32 = 1000;
/// A webhook's HMAC secret must be at least this long to be worth signing with.
const MIN_SECRET_LEN: usize = 16;

/// One budget: a limit on AI spend over a period, for all usage or a slice of it, with what
/// to do as spend climbs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// `[a-z0-9][a-z0-9_-]*`, at most 64 characters: it names the budget in URLs and metrics.
    pub name: String,
    /// Which usage counts; all of it by default.
    #[serde(default)]
    pub scope: Scope,
    /// The limit per period, in USD.
    pub amount: Money,
    /// A month of UTC by default.
    #[serde(default)]
    pub period: Period,
    /// Ascending by percent, each action at least as severe as the one before.
    #[serde(default = "default_thresholds")]
    pub thresholds: Vec<Threshold>,
    /// A hard budget acts as configured; a soft one never blocks calls (see [`Budget::effective`]).
    #[serde(default = "hard_by_default")]
    pub hard: bool,
    #[serde(default)]
    pub webhooks: Vec<Webhook>,
}

/// Which `ai_usage` events a budget counts: those matching every filter given. With
/// `per_user`, each user gets the amount separately (events without a user count for none).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Scope {
    pub feature: Option<String>,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub per_user: bool,
}

/// At `percent` % of the amount, take `action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub percent: u32,
    pub action: Action,
}

/// What a crossed threshold asks of the AI job runner, from mildest to most severe:
/// `alert < reduce_batch (larger percent milder) < pause_queue < stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// Notify only; calls go on as before.
    Alert,
    /// Keep running with batches cut to `percent` % of their usual size (1..=99).
    ReduceBatch { percent: u32 },
    /// Start no new batch until spend, the period or an override allows it; running work may
    /// finish.
    PauseQueue,
    /// No more calls this period.
    Stop,
}

/// Where a budget's alerts go: POSTed JSON signed with HMAC-SHA256 over `secret`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub url: String,
    pub secret: String,
}

impl Budget {
    /// A budget of `amount` over all AI usage with the defaults: a UTC month, thresholds
    /// 75% alert, 90% reduce batches to 50%, 100% stop; hard; no webhooks.
    pub fn new(name: impl Into<String>, amount: Money) -> Self {
        Self {
            name: name.into(),
            scope: Scope::default(),
            amount,
            period: Period::default(),
            thresholds: default_thresholds(),
            hard: true,
            webhooks: vec![],
        }
    }

    /// Checks everything serde cannot: the name, the amount, the thresholds and the
    /// webhooks. The error names the budget and the field, and says what is expected.
    pub fn validate(&self) -> Result<()> {
        let fail = |what: String| {
            Err(EngineError::config(format!(
                "budget `{}`: {what}",
                self.name
            )))
        };
        if let Err(why) = check_name(&self.name) {
            return Err(EngineError::config(format!(
                "budget name `{}`: {why}",
                self.name
            )));
        }
        if !self.amount.is_positive() {
            return fail(format!(
                "amount must be more than zero, not {}",
                self.amount
            ));
        }
        for (field, value) in [
            ("scope.feature", &self.scope.feature),
            ("scope.provider", &self.scope.provider),
            ("scope.model", &self.scope.model),
        ] {
            if value.as_deref().is_some_and(str::is_empty) {
                return fail(format!(
                    "{field} is empty; leave it out to count every value"
                ));
            }
        }
        if let Err(why) = check_thresholds(&self.thresholds) {
            return fail(why);
        }
        for (i, hook) in self.webhooks.iter().enumerate() {
            if let Err(why) = hook.check() {
                return fail(format!("webhooks[{i}]: {why}"));
            }
        }
        Ok(())
    }

    /// The action a crossed threshold asks for, as this budget applies it: a soft budget never
    /// blocks, so its `pause_queue` and `stop` act as `alert` (it still reduces batches).
    pub fn effective(&self, action: Action) -> Action {
        if !self.hard && action.blocks() {
            Action::Alert
        } else {
            action
        }
    }
}

/// Validates every budget and that their names are unique.
pub fn validate_budgets(budgets: &[Budget]) -> Result<()> {
    let mut names = BTreeSet::new();
    for b in budgets {
        b.validate()?;
        if !names.insert(b.name.as_str()) {
            return Err(EngineError::config(format!(
                "budget `{}` is declared twice; budget names must be unique",
                b.name
            )));
        }
    }
    Ok(())
}

impl Action {
    /// Whether the action keeps a call from running now.
    pub fn blocks(self) -> bool {
        matches!(self, Self::PauseQueue | Self::Stop)
    }

    /// The share of its usual batch size the caller may run: 100 to alert, 0 to pause or stop.
    pub fn batch_percent(self) -> u32 {
        match self {
            Self::Alert => 100,
            Self::ReduceBatch { percent } => percent,
            Self::PauseQueue | Self::Stop => 0,
        }
    }

    /// Severity as a sortable key: the kind first, then a smaller batch as more severe. Every
    /// distinct action has a distinct key, so the order agrees with equality.
    fn severity(self) -> (u8, u32) {
        match self {
            Self::Alert => (0, 0),
            Self::ReduceBatch { percent } => (1, u32::MAX - percent),
            Self::PauseQueue => (2, 0),
            Self::Stop => (3, 0),
        }
    }
}

impl Ord for Action {
    fn cmp(&self, other: &Self) -> Ordering {
        self.severity().cmp(&other.severity())
    }
}

impl PartialOrd for Action {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Alert => f.write_str("alert"),
            Self::ReduceBatch { percent } => write!(f, "reduce batches to {percent}%"),
            Self::PauseQueue => f.write_str("pause the queue"),
            Self::Stop => f.write_str("stop"),
        }
    }
}

impl Webhook {
    fn check(&self) -> std::result::Result<(), String> {
        match url::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            _ => return Err("url must be an http:// or https:// URL".into()),
        }
        if self.secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "secret must be at least {MIN_SECRET_LEN} characters (it signs every alert)"
            ));
        }
        Ok(())
    }
}

/// Never prints the secret: a config dump or a log line must not leak it.
impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &self.url)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// 75% alert, 90% reduce batches to 50%, 100% stop.
pub fn default_thresholds() -> Vec<Threshold> {
    vec![
        Threshold {
            percent: 75,
            action: Action::Alert,
        },
        Threshold {
            percent: 90,
            action: Action::ReduceBatch { percent: 50 },
        },
        Threshold {
            percent: 100,
            action: Action::Stop,
        },
    ]
}

fn hard_by_default() -> bool {
    true
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok_first || !ok_rest || name.len() > MAX_NAME_LEN {
        return Err(format!(
            "use 1 to {MAX_NAME_LEN} of a-z, 0-9, `_` and `-`, starting with a letter or digit"
        ));
    }
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "`{name}` is a word of the budget routes (/v1/ai/budgets/{name}); choose another name"
        ));
    }
    Ok(())
}

/// Names a budget may not take: the fixed words under `/v1/ai/budgets/`.
pub const RESERVED_NAMES: &[&str] = &["decision", "reservations"];

fn check_thresholds(thresholds: &[Threshold]) -> std::result::Result<(), String> {
    if thresholds.is_empty() {
        return Err(
            "thresholds is empty; leave it out for the defaults (75% alert, 90% reduce batches to 50%, 100% stop)"
                .into(),
        );
    }
    for (i, t) in thresholds.iter().enumerate() {
        if !(1..=MAX_THRESHOLD_PERCENT).contains(&t.percent) {
            return Err(format!(
                "thresholds[{i}]: percent must be 1 to {MAX_THRESHOLD_PERCENT}, not {}",
                t.percent
            ));
        }
        if let Action::ReduceBatch { percent } = t.action {
            if !(1..=99).contains(&percent) {
                return Err(format!(
                    "thresholds[{i}]: reduce_batch percent must be 1 to 99, not {percent}"
                ));
            }
        }
        if let Some(prev) = i.checked_sub(1).map(|p| &thresholds[p]) {
            if t.percent <= prev.percent {
                return Err(format!(
                    "thresholds must ascend: {}% comes after {}%",
                    t.percent, prev.percent
                ));
            }
            if t.action < prev.action {
                return Err(format!(
                    "thresholds must not get milder: {}% ({}) comes after {}% ({})",
                    t.percent, t.action, prev.percent, prev.action
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::period::PeriodKind;
    use serde_json::json;

    fn budget(v: serde_json::Value) -> Budget {
        serde_json::from_value(v).unwrap()
    }

    fn invalid(v: serde_json::Value) -> String {
        budget(v).validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_a_hard_utc_month_with_75_90_100() {
        let b = budget(json!({"name": "ai-monthly", "amount": "500.00"}));
        assert_eq!(b, Budget::new("ai-monthly", Money::from_dollars(500)));
        assert_eq!(b.period.kind, PeriodKind::Month);
        assert_eq!(b.period.tz, chrono_tz::Tz::UTC);
        assert!(b.hard);
        assert_eq!(
            b.thresholds.iter().map(|t| t.percent).collect::<Vec<_>>(),
            [75, 90, 100]
        );
        assert_eq!(b.thresholds[1].action, Action::ReduceBatch { percent: 50 });
        b.validate().unwrap();
    }

    #[test]
    fn reads_every_field() {
        let b = budget(json!({
            "name": "search-per-user",
            "scope": {"feature": "search_answer", "provider": "openai", "per_user": true},
            "amount": "2.50",
            "period": {"kind": "day", "tz": "Europe/Berlin"},
            "thresholds": [
                {"percent": 80, "action": "alert"},
                {"percent": 95, "action": {"reduce_batch": {"percent": 25}}},
                {"percent": 100, "action": "pause_queue"}
            ],
            "hard": false,
            "webhooks": [{"url": "https://hooks.example.com/budget", "secret": "0123456789abcdef"}]
        }));
        b.validate().unwrap();
        assert_eq!(b.scope.feature.as_deref(), Some("search_answer"));
        assert!(b.scope.per_user && b.scope.model.is_none());
        assert_eq!(b.amount.to_string(), "2.50");
        assert_eq!(b.thresholds[2].action, Action::PauseQueue);
        assert!(
            !format!("{b:?}").contains("0123456789abcdef"),
            "Debug hides secrets"
        );
    }

    #[test]
    fn refuses_unknown_fields_and_float_amounts() {
        let typo = json!({"name": "a", "amount": "1", "treshold": []});
        assert!(serde_json::from_value::<Budget>(typo).is_err());
        let float = json!({"name": "a", "amount": 1.5});
        let e = serde_json::from_value::<Budget>(float)
            .unwrap_err()
            .to_string();
        assert!(e.contains("strings"), "{e}");
    }

    #[test]
    fn validation_says_what_is_wrong() {
        let cases = [
            (json!({"name": "Ai Budget", "amount": "1"}), "a-z"),
            (json!({"name": "", "amount": "1"}), "a-z"),
            (json!({"name": "-x", "amount": "1"}), "starting"),
            (json!({"name": "x".repeat(65), "amount": "1"}), "64"),
            (json!({"name": "a", "amount": "0"}), "more than zero"),
            (
                json!({"name": "a", "amount": "1", "scope": {"model": ""}}),
                "scope.model",
            ),
            (
                json!({"name": "a", "amount": "1", "thresholds": []}),
                "defaults",
            ),
            (
                json!({"name": "a", "amount": "1", "thresholds": [
                    {"percent": 90, "action": "alert"}, {"percent": 75, "action": "stop"}]}),
                "ascend",
            ),
            (
                json!({"name": "a", "amount": "1", "thresholds": [
                    {"percent": 75, "action": "alert"}, {"percent": 75, "action": "stop"}]}),
                "ascend",
            ),
            (
                json!({"name": "a", "amount": "1", "thresholds": [{"percent": 0, "action": "alert"}]}),
                "1 to 1000",
            ),
            (
                json!({"name": "a", "amount": "1", "thresholds": [{"percent": 1001, "action": "alert"}]}),
                "1 to 1000",
            ),
            (
                json!({"name": "a", "amount": "1", "thresholds": [
                    {"percent": 90, "action": "stop"}, {"percent": 100, "action": "alert"}]}),
                "milder",
            ),
            (
                json!({"name": "a", "amount": "1", "thresholds": [
                    {"percent": 90, "action": {"reduce_batch": {"percent": 100}}}]}),
                "1 to 99",
            ),
            (
                json!({"name": "a", "amount": "1", "webhooks": [{"url": "ftp://x", "secret": "0123456789abcdef"}]}),
                "http",
            ),
            (
                json!({"name": "a", "amount": "1", "webhooks": [{"url": "https://x.example", "secret": "short"}]}),
                "16",
            ),
        ];
        for (v, expected) in cases {
            let e = invalid(v.clone());
            assert!(e.contains(expected), "{v}: {e}");
        }
        let zone = json!({"name": "a", "amount": "1", "period": {"tz": "Europe/Berln"}});
        let e = serde_json::from_value::<Budget>(zone)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown time zone"), "{e}");
        let twice = [
            Budget::new("a", Money::from_dollars(1)),
            Budget::new("a", Money::from_dollars(2)),
        ];
        assert!(validate_budgets(&twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn actions_order_by_severity() {
        let mut all = vec![
            Action::Stop,
            Action::ReduceBatch { percent: 25 },
            Action::Alert,
            Action::PauseQueue,
            Action::ReduceBatch { percent: 50 },
        ];
        all.sort();
        assert_eq!(
            all,
            [
                Action::Alert,
                Action::ReduceBatch { percent: 50 },
                Action::ReduceBatch { percent: 25 },
                Action::PauseQueue,
                Action::Stop,
            ]
        );
        assert_eq!(
            Action::ReduceBatch { percent: 50 }.to_string(),
            "reduce batches to 50%"
        );
    }

    #[test]
    fn a_soft_budget_never_blocks() {
        let mut b = Budget::new("soft", Money::from_dollars(1));
        b.hard = false;
        assert_eq!(b.effective(Action::Stop), Action::Alert);
        assert_eq!(b.effective(Action::PauseQueue), Action::Alert);
        let reduce = Action::ReduceBatch { percent: 50 };
        assert_eq!(b.effective(reduce), reduce);
        b.hard = true;
        assert_eq!(b.effective(Action::Stop), Action::Stop);
    }
}
