//! The parameters a panel can take, as data: one [`ParamSpec`] per parameter in [`PARAMS`]
//! (its name, type, default and bounds), and [`PanelParams`], a request's values after they
//! passed those bounds. Parsing, binding ([`super::render`]), the panel list and the OpenAPI
//! document all read [`PARAMS`], so a new parameter is one entry there plus its use in a
//! panel file (`-- params:` and `{name}`).

use std::collections::BTreeMap;

use chrono::{Days, NaiveDate};
use serde::ser::SerializeStruct;
use serde::Serialize;

use super::spec::Panel;
use crate::{EngineError, Result};

/// The longest period a panel may cover.
pub const MAX_DAYS: u64 = 400;
/// The period a panel covers when the request gives no `from`.
pub const DEFAULT_DAYS: u64 = 30;
pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 10;
/// The most a text parameter may hold, in bytes.
const MAX_TEXT_BYTES: usize = 200;

/// The parameters that make the period, checked together by [`Period::parse`].
const FROM: &str = "from";
const TO: &str = "to";

/// Every parameter a panel may take, in the order their values are checked (after the
/// period) and documented.
pub const PARAMS: &[ParamSpec] = &[
    ParamSpec {
        name: FROM,
        rule: ParamRule::PeriodStart,
        description: "first day (YYYY-MM-DD, UTC), inclusive",
    },
    ParamSpec {
        name: TO,
        rule: ParamRule::PeriodEnd,
        description: "last day (YYYY-MM-DD, UTC), inclusive",
    },
    ParamSpec {
        name: "limit",
        rule: ParamRule::Integer {
            min: 1,
            max: MAX_LIMIT,
            default: DEFAULT_LIMIT,
        },
        description: "rows to return (1-1000)",
    },
    ParamSpec::text("category", "only this category"),
    ParamSpec::text(
        "item_type",
        "only this item type (marketplace_listing, directory_site, ...)",
    ),
    ParamSpec::text("source", "only this traffic source (homepage, search, ...)"),
    ParamSpec::text("feature", "only this AI feature"),
    ParamSpec::text("model", "only this AI model"),
];

/// The spec of parameter `name`, if there is one.
pub(super) fn spec(name: &str) -> Option<&'static ParamSpec> {
    PARAMS.iter().find(|p| p.name == name)
}

/// The type of a parameter, as the panel list and the OpenAPI document name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    Date,
    Text,
    Integer,
}

/// What a parameter's value must be, and what it is when the request leaves it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParamRule {
    /// The first day of the period; default `to` minus `DEFAULT_DAYS - 1` days.
    PeriodStart,
    /// The last day of the period; default today (UTC).
    PeriodEnd,
    /// At most `max_bytes` bytes and no control character; absent or empty is no filter.
    Text { max_bytes: usize },
    /// An integer within `min..=max`.
    Integer { min: i64, max: i64, default: i64 },
}

/// One parameter a panel can take. Every parameter is optional: it has a default, or its
/// absence means "no filter".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamSpec {
    pub name: &'static str,
    pub rule: ParamRule,
    pub description: &'static str,
}

impl ParamSpec {
    const fn text(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            rule: ParamRule::Text {
                max_bytes: MAX_TEXT_BYTES,
            },
            description,
        }
    }

    pub fn kind(&self) -> ParamKind {
        match self.rule {
            ParamRule::PeriodStart | ParamRule::PeriodEnd => ParamKind::Date,
            ParamRule::Text { .. } => ParamKind::Text,
            ParamRule::Integer { .. } => ParamKind::Integer,
        }
    }

    /// The default in words, for people and documents; None when absence means no filter.
    pub fn default_text(&self) -> Option<String> {
        match self.rule {
            ParamRule::PeriodStart => Some(format!("`{TO}` minus {} days", DEFAULT_DAYS - 1)),
            ParamRule::PeriodEnd => Some("today (UTC)".into()),
            ParamRule::Text { .. } => None,
            ParamRule::Integer { default, .. } => Some(default.to_string()),
        }
    }

    /// The validated value of this parameter from what the request gave (None: not given);
    /// None for the two ends of the period, which [`Period::parse`] checks together.
    fn value(&self, given: Option<&str>) -> Result<Option<ParamValue>> {
        let k = self.name;
        let value = match self.rule {
            ParamRule::PeriodStart | ParamRule::PeriodEnd => return Ok(None),
            ParamRule::Text { max_bytes } => ParamValue::Text(match given {
                None | Some("") => None,
                Some(v) if v.len() > max_bytes || v.chars().any(char::is_control) => {
                    return Err(EngineError::Param(format!(
                        "`{k}` must be at most {max_bytes} printable characters"
                    )))
                }
                Some(v) => Some(v.to_string()),
            }),
            ParamRule::Integer { min, max, default } => ParamValue::Integer(match given {
                None => default,
                Some(v) => match v.parse::<i64>() {
                    Ok(n) if (min..=max).contains(&n) => n,
                    _ => {
                        return Err(EngineError::Param(format!(
                            "`{k}` must be an integer from {min} to {max}, got `{v}`"
                        )))
                    }
                },
            }),
        };
        Ok(Some(value))
    }
}

/// As `GET /v1/panels` lists it: `{name, type, required, default, description}`.
impl Serialize for ParamSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("ParamSpec", 5)?;
        st.serialize_field("name", self.name)?;
        st.serialize_field("type", &self.kind())?;
        st.serialize_field("required", &false)?;
        st.serialize_field("default", &self.default_text())?;
        st.serialize_field("description", self.description)?;
        st.end()
    }
}

/// The days a panel covers, both inclusive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Period {
    pub from: NaiveDate,
    pub to: NaiveDate,
}

impl Period {
    /// `to` (default today) first, since `from` defaults to a day before it; then the order
    /// and the length of the period.
    fn parse(from: Option<&str>, to: Option<&str>, today: NaiveDate) -> Result<Self> {
        let date = |k: &str, v: Option<&str>| -> Result<Option<NaiveDate>> {
            v.map(|v| {
                NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                    EngineError::Param(format!("`{k}` must be a date YYYY-MM-DD, got `{v}`"))
                })
            })
            .transpose()
        };
        let to = date(TO, to)?.unwrap_or(today);
        let from = date(FROM, from)?.unwrap_or_else(|| {
            to.checked_sub_days(Days::new(DEFAULT_DAYS - 1))
                .unwrap_or(to)
        });
        if from > to {
            return Err(EngineError::Param(format!(
                "`{FROM}` ({from}) is after `{TO}` ({to})"
            )));
        }
        if (to - from).num_days() as u64 >= MAX_DAYS {
            return Err(EngineError::Param(format!(
                "the period is longer than {MAX_DAYS} days; narrow `{FROM}`..`{TO}`"
            )));
        }
        Ok(Self { from, to })
    }

    /// The first day of the period of the same length just before this one (for trends).
    pub fn prev_from(&self) -> NaiveDate {
        let days = (self.to - self.from).num_days() as u64 + 1;
        self.from
            .checked_sub_days(Days::new(days))
            .unwrap_or(self.from)
    }

    /// The end of the period parameter `rule` names, if it names one.
    pub(super) fn end(&self, rule: ParamRule) -> Option<NaiveDate> {
        match rule {
            ParamRule::PeriodStart => Some(self.from),
            ParamRule::PeriodEnd => Some(self.to),
            _ => None,
        }
    }
}

/// A validated value of a parameter besides the period.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum ParamValue {
    /// None: not given (no filter).
    Text(Option<String>),
    Integer(i64),
}

/// Validated panel parameters: the period, and every other parameter of [`PARAMS`] (given or
/// its default), so that a statement binds the same values whichever of them it uses.
/// Serializes as one object, `{from, to, limit, category, ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PanelParams {
    #[serde(flatten)]
    pub period: Period,
    #[serde(flatten)]
    pub(super) values: BTreeMap<&'static str, ParamValue>,
}

impl PanelParams {
    /// Parses query-string pairs for `panel`; every mistake is a [`EngineError::Param`] that
    /// names the parameter and what it takes. Checked in order: the names, the period, then
    /// each other parameter in [`PARAMS`] order.
    pub fn parse(panel: &Panel, pairs: &[(String, String)], today: NaiveDate) -> Result<Self> {
        let given = given(panel, pairs)?;
        let period = Period::parse(given.get(FROM).copied(), given.get(TO).copied(), today)?;
        let mut values = BTreeMap::new();
        for spec in PARAMS {
            if let Some(value) = spec.value(given.get(spec.name).copied())? {
                values.insert(spec.name, value);
            }
        }
        Ok(Self { period, values })
    }

    /// The value of parameter `name` besides the period (a default when it was not given).
    pub fn value(&self, name: &str) -> Option<&ParamValue> {
        self.values.get(name)
    }
}

/// The pairs by name, each a parameter `panel` takes, none twice.
fn given<'a>(panel: &Panel, pairs: &'a [(String, String)]) -> Result<BTreeMap<&'a str, &'a str>> {
    let mut seen = BTreeMap::new();
    for (k, v) in pairs {
        if !panel.takes(k) {
            let names: Vec<&str> = panel.params.iter().map(|p| p.name).collect();
            return Err(EngineError::Param(format!(
                "panel `{}` takes no parameter `{k}`; it takes: {}",
                panel.name,
                if names.is_empty() {
                    "none".into()
                } else {
                    names.join(", ")
                }
            )));
        }
        if seen.insert(k.as_str(), v.as_str()).is_some() {
            return Err(EngineError::Param(format!(
                "parameter `{k}` is given twice"
            )));
        }
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::panel::test_support::{pairs, panels, today};

    #[test]
    fn params_are_validated_with_messages_that_say_what_to_fix() {
        let panels = panels();
        let top = panels.get("top_items").unwrap();
        let today = today();
        let p = PanelParams::parse(top, &[], today).unwrap();
        assert_eq!(p.period.to, today);
        assert_eq!((p.period.to - p.period.from).num_days(), 29);
        assert_eq!(p.value("limit"), Some(&ParamValue::Integer(DEFAULT_LIMIT)));
        for (bad, needle) in [
            (vec![("from", "yesterday")], "YYYY-MM-DD"),
            (vec![("from", "2026-11-02"), ("to", "2026-11-01")], "after"),
            (vec![("limit", "0")], "1 to 1000"),
            (vec![("source", "x")], "takes no parameter `source`"),
            (vec![("from", "2020-01-01")], "longer than"),
        ] {
            let e = PanelParams::parse(top, &pairs(&bad), today).unwrap_err();
            assert!(matches!(e, EngineError::Param(_)), "{e}");
            assert!(e.to_string().contains(needle), "{e}");
        }
        let quoted = PanelParams::parse(top, &pairs(&[("category", "it's")]), today).unwrap();
        assert!(top
            .render(&quoted, true)
            .contains(&format!("X'{}'", hex::encode("it's"))));
    }

    #[test]
    fn the_list_shows_each_parameter_with_its_type_and_default() {
        let limit = serde_json::to_value(spec("limit").unwrap()).unwrap();
        assert_eq!(
            limit,
            serde_json::json!({ "name": "limit", "type": "integer", "required": false,
                "default": "10", "description": "rows to return (1-1000)" })
        );
        let from = serde_json::to_value(spec("from").unwrap()).unwrap();
        assert_eq!(from["type"], "date");
        assert_eq!(from["default"], "`to` minus 29 days");
        assert!(serde_json::to_value(spec("category").unwrap()).unwrap()["default"].is_null());
        let today = today();
        let panels = panels();
        let p = PanelParams::parse(panels.get("top_items").unwrap(), &[], today).unwrap();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({ "from": "2026-10-27", "to": "2026-11-25", "limit": 10,
                "category": null, "item_type": null, "source": null, "feature": null,
                "model": null })
        );
    }
}
