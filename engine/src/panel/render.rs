//! Binding: a panel's statement with its validated parameters in place as SQL literals of
//! their types. This is the only place a request's values meet SQL text.
//!
//! One pass over the statement: each `{name}` placeholder is replaced by its value, and the
//! text that went in is never read again, so a value holding another placeholder's name stays
//! a value. Text values go in as hex bytes cast to text (`CAST(X'..' AS VARCHAR)`): no quote,
//! backslash or comment in a value can end the literal, whatever the dialect's escaping rules.
//! Dates and integers were validated ([`super::params`]) before they get here.

use super::params::{self, PanelParams, ParamValue};
use super::spec::Panel;
use crate::literal::{date_literal, text_literal};

/// Derived from the period: the first day of the previous period of the same length.
const PREV_FROM: &str = "prev_from";
/// Whether the derived rollups of `-- current:` are current (see [`Panel::is_current`]).
const CURRENT: &str = "current";

impl Panel {
    /// The statement with the parameters in place, as SQL literals of their validated types,
    /// and `{current}` as given (see [`Panel::is_current`]).
    pub fn render(&self, p: &PanelParams, current: bool) -> String {
        bind(self.sql, p, Some(current))
    }

    /// The fallback statement with the parameters in place, if the panel has one.
    pub fn render_fallback(&self, p: &PanelParams) -> Option<String> {
        self.fallback.map(|sql| bind(sql, p, None))
    }
}

/// `sql` with every parameter of [`params::PARAMS`], `{prev_from}` and (when given)
/// `{current}` in place; a fallback has no `{current}` and gets None.
fn bind(sql: &str, p: &PanelParams, current: Option<bool>) -> String {
    render_placeholders(sql, |name| match name {
        PREV_FROM => Some(date_literal(p.period.prev_from())),
        CURRENT => current.map(|c| if c { "TRUE" } else { "FALSE" }.into()),
        _ => literal(p, name),
    })
}

/// The SQL literal of parameter `name`; None for a name that is no parameter.
fn literal(p: &PanelParams, name: &str) -> Option<String> {
    let spec = params::spec(name)?;
    if let Some(day) = p.period.end(spec.rule) {
        return Some(date_literal(day));
    }
    Some(match p.value(spec.name)? {
        ParamValue::Text(Some(s)) => text_literal(s),
        ParamValue::Text(None) => "CAST(NULL AS VARCHAR)".into(),
        ParamValue::Integer(n) => n.to_string(),
    })
}

/// Replaces each `{name}` of `sql` for which `value` has an answer, in one left-to-right pass;
/// other braces are copied as they are.
fn render_placeholders(sql: &str, value: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(sql.len() + 64);
    let mut rest = sql;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let name_len = after
            .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
            .unwrap_or(after.len());
        let replaced = (after[name_len..].starts_with('}'))
            .then(|| value(&after[..name_len]))
            .flatten();
        match replaced {
            Some(v) => {
                out.push_str(&v);
                rest = &after[name_len + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::panel::test_support::{pairs, panels, today};
    use crate::panel::ParamKind;

    #[test]
    fn a_value_is_never_read_as_sql_or_as_another_placeholder() {
        let panels = panels();
        let today = today();
        for panel in panels.list() {
            let text: Vec<&str> = panel
                .params
                .iter()
                .filter(|p| p.kind() == ParamKind::Text)
                .map(|p| p.name)
                .collect();
            for evil in [
                "{item_type}",
                "{current}{limit}{from}",
                "x' OR 1=1 --",
                "x\\' UNION SELECT user_id FROM link_clicks --",
                "') UNION SELECT payload FROM dead_letters /*",
            ] {
                let given: Vec<(&str, &str)> = text.iter().map(|k| (*k, evil)).collect();
                let p = PanelParams::parse(panel, &pairs(&given), today).unwrap();
                for sql in [Some(panel.render(&p, true)), panel.render_fallback(&p)]
                    .into_iter()
                    .flatten()
                {
                    assert!(!sql.contains(evil), "{}: {sql}", panel.name);
                    assert!(!sql.contains("user_id FROM"), "{}", panel.name);
                    assert!(
                        !sql.contains('{'),
                        "{}: a placeholder is left: {sql}",
                        panel.name
                    );
                }
            }
        }
        assert_eq!(
            render_placeholders("a {x} {y} {z} {x", |n| (n == "x")
                .then(|| "{y}".to_string())),
            "a {y} {y} {z} {x"
        );
    }

    #[test]
    fn derived_placeholders_are_no_parameter_names() {
        for name in [PREV_FROM, CURRENT] {
            assert!(params::spec(name).is_none(), "{name}");
        }
    }
}
