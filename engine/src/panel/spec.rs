//! A panel as data: [`Panel`], parsed once at startup from its SQL file's header (`-- title:`,
//! `-- description:`, `-- params:`, `-- reads:`, `-- current:`, `-- cache:`) and the
//! statements below it.

use serde::Serialize;

use super::params::{self, ParamSpec};
use crate::catalog::Snapshot;
use crate::{EngineError, Result};

/// The line that separates a panel's statement from its fallback.
pub(super) const FALLBACK_LINE: &str = "-- fallback";

/// One panel, parsed from its SQL file.
#[derive(Debug, Clone, Serialize)]
pub struct Panel {
    pub name: &'static str,
    pub title: String,
    pub description: String,
    /// What it takes, each an entry of [`params::PARAMS`].
    pub params: Vec<&'static ParamSpec>,
    /// Tables whose versions key the cache (empty with `all_tables`).
    pub reads: Vec<String>,
    #[serde(skip)]
    pub all_tables: bool,
    pub cacheable: bool,
    #[serde(skip)]
    pub sql: &'static str,
    /// The statement that answers when `sql` cannot prove its answer.
    #[serde(skip)]
    pub fallback: Option<&'static str>,
    /// Derived rollups whose currency `{current}` renders.
    #[serde(skip)]
    pub current: Vec<String>,
}

impl Panel {
    pub(super) fn parse(name: &'static str, text: &'static str) -> Result<Self> {
        let (sql, fallback) = match text.find(&format!("\n{FALLBACK_LINE}\n")) {
            Some(at) => (&text[..at + 1], Some(&text[at + FALLBACK_LINE.len() + 2..])),
            None => (text, None),
        };
        let mut panel = Panel {
            name,
            title: name.to_string(),
            description: String::new(),
            params: vec![],
            reads: vec![],
            all_tables: false,
            cacheable: true,
            sql,
            fallback,
            current: vec![],
        };
        for line in sql.lines().map_while(|l| l.strip_prefix("--")) {
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim();
            let list = || {
                value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>()
            };
            match key.trim() {
                "title" => panel.title = value.into(),
                "description" => panel.description = value.into(),
                "params" => {
                    panel.params = list()
                        .iter()
                        .map(|p| {
                            params::spec(p).ok_or_else(|| {
                                EngineError::Internal(format!(
                                    "panel {name}: unknown parameter {p}"
                                ))
                            })
                        })
                        .collect::<Result<_>>()?
                }
                "reads" if value == "*" => panel.all_tables = true,
                "reads" => panel.reads = list(),
                "cache" => panel.cacheable = value != "no",
                "current" => panel.current = list(),
                _ => {}
            }
        }
        Ok(panel)
    }

    pub(super) fn takes(&self, param: &str) -> bool {
        self.params.iter().any(|p| p.name == param)
    }

    /// Whether the derived rollups of `-- current:` are current with their sources in `snapshot`.
    pub fn is_current(&self, snapshot: &Snapshot) -> bool {
        self.current.iter().all(|t| snapshot.is_current(t))
    }

    /// `table@version` of every table whose versions key this panel's answer on `snapshot`.
    pub fn versions(&self, snapshot: &Snapshot) -> Vec<String> {
        if self.all_tables {
            snapshot.versions_of(snapshot.tables.keys().map(String::as_str))
        } else {
            snapshot.versions_of(self.reads.iter().map(String::as_str))
        }
    }
}
