//! Dashboard panels: named SQL (engine/sql/panels/*.sql) with typed parameters, answered from
//! the rollups and cached by the versions of the tables they read.
//!
//! ```text
//! GET /v1/panels/top_items?from=..&limit=5 -> PanelParams (validated) -> SQL with literals
//!     -> cache key (panel, params, table versions) -> hit: cached batches | miss: DataFusion
//! ```
//!
//! Each file opens with a header: `-- title:`, `-- description:`, `-- params:` (the parameters
//! it takes), `-- reads:` (the tables whose versions key its cache; `*` for all) and optionally
//! `-- cache: no`.
//!
//! A panel may answer from a compact structure that proves its answer or says it cannot: its
//! statement then ends with a boolean column `proven`, and a line `-- fallback` is followed by
//! the statement that answers from the full data. The fallback runs only when the first
//! statement returns no row or a row with `proven` false; either way the answer has the same
//! columns (`proven` is dropped), and `PanelResult::fallback` says which one answered.
//!
//! `-- current:` names derived rollups (computed from another rollup, like the totals or the
//! top lists); `{current}` in the SQL becomes `TRUE` when each of them was computed from the
//! version of its source in the same snapshot and `FALSE` in the moment between the two commits
//! of a rollup run, so that the SQL reads the source then and is never a run behind it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use chrono::{Days, NaiveDate, Utc};
use datafusion::prelude::SessionContext;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cache::{CachedResult, ResultCache};
use crate::catalog::{QueryLimits, Snapshot};
use crate::readonly::plan_read_only;
use crate::{Catalog, EngineError, Result};

const FILES: &[(&str, &str)] = &[
    ("overview", include_str!("../sql/panels/overview.sql")),
    (
        "clicks_by_day",
        include_str!("../sql/panels/clicks_by_day.sql"),
    ),
    (
        "per_category",
        include_str!("../sql/panels/per_category.sql"),
    ),
    ("top_items", include_str!("../sql/panels/top_items.sql")),
    (
        "traffic_sources",
        include_str!("../sql/panels/traffic_sources.sql"),
    ),
    (
        "marketplace_directory",
        include_str!("../sql/panels/marketplace_directory.sql"),
    ),
    (
        "source_share",
        include_str!("../sql/panels/source_share.sql"),
    ),
    ("ai_usage", include_str!("../sql/panels/ai_usage.sql")),
    (
        "ai_spend_by_day",
        include_str!("../sql/panels/ai_spend_by_day.sql"),
    ),
    (
        "job_health_tables",
        include_str!("../sql/panels/job_health_tables.sql"),
    ),
    (
        "dead_letters_daily",
        include_str!("../sql/panels/dead_letters_daily.sql"),
    ),
    ("rollup_runs", include_str!("../sql/panels/rollup_runs.sql")),
];

/// The longest period a panel may cover.
pub const MAX_DAYS: u64 = 400;
pub const DEFAULT_DAYS: u64 = 30;
pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 10;

/// A parameter a panel can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    Date,
    Text,
    Integer,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParamSpec {
    pub name: &'static str,
    #[serde(rename = "type")]
    pub kind: ParamKind,
    pub required: bool,
    pub default: Option<String>,
    pub description: &'static str,
}

fn param_spec(name: &str) -> Option<ParamSpec> {
    let (name, kind, default, description) = match name {
        "from" => (
            "from",
            ParamKind::Date,
            Some(format!("`to` minus {} days", DEFAULT_DAYS - 1)),
            "first day (YYYY-MM-DD, UTC), inclusive",
        ),
        "to" => (
            "to",
            ParamKind::Date,
            Some("today (UTC)".into()),
            "last day (YYYY-MM-DD, UTC), inclusive",
        ),
        "category" => ("category", ParamKind::Text, None, "only this category"),
        "item_type" => (
            "item_type",
            ParamKind::Text,
            None,
            "only this item type (marketplace_listing, directory_site, ...)",
        ),
        "source" => (
            "source",
            ParamKind::Text,
            None,
            "only this traffic source (homepage, search, ...)",
        ),
        "feature" => ("feature", ParamKind::Text, None, "only this AI feature"),
        "model" => ("model", ParamKind::Text, None, "only this AI model"),
        "limit" => (
            "limit",
            ParamKind::Integer,
            Some(DEFAULT_LIMIT.to_string()),
            "rows to return (1-1000)",
        ),
        _ => return None,
    };
    Some(ParamSpec {
        name,
        kind,
        required: false,
        default,
        description,
    })
}

/// One panel, parsed from its SQL file.
#[derive(Debug, Clone, Serialize)]
pub struct Panel {
    pub name: &'static str,
    pub title: String,
    pub description: String,
    pub params: Vec<ParamSpec>,
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

/// The line that separates a panel's statement from its fallback.
const FALLBACK_LINE: &str = "-- fallback";
/// The column by which a panel's first statement says its answer is proven.
const PROVEN_COLUMN: &str = "proven";

impl Panel {
    fn parse(name: &'static str, text: &'static str) -> Result<Self> {
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
                            param_spec(p).ok_or_else(|| {
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

    fn takes(&self, param: &str) -> bool {
        self.params.iter().any(|p| p.name == param)
    }

    /// The statement with the parameters in place, as SQL literals of their validated types,
    /// and `{current}` as given (see [`Panel::is_current`]).
    pub fn render(&self, p: &PanelParams, current: bool) -> String {
        Self::render_sql(self.sql, p, Some(current))
    }

    /// The fallback statement with the parameters in place, if the panel has one.
    pub fn render_fallback(&self, p: &PanelParams) -> Option<String> {
        self.fallback.map(|sql| Self::render_sql(sql, p, None))
    }

    /// Whether the derived rollups of `-- current:` are current with their sources in `snapshot`.
    pub fn is_current(&self, snapshot: &Snapshot) -> bool {
        self.current.iter().all(|t| snapshot.is_current(t))
    }

    /// One pass over the statement: each `{name}` placeholder is replaced by its value, and
    /// the text that went in is never read again, so a value holding another placeholder's
    /// name stays a value. Text values go in as hex bytes cast to text (`CAST(X'..' AS
    /// VARCHAR)`): no quote, backslash or comment in a value can end the literal, whatever the
    /// dialect's escaping rules. Dates and integers are validated before they get here.
    /// `current` renders `{current}` (a fallback has none, and gets None).
    fn render_sql(sql: &str, p: &PanelParams, current: Option<bool>) -> String {
        let text = |v: &Option<String>| match v {
            Some(s) => format!("CAST(X'{}' AS VARCHAR)", hex::encode(s.as_bytes())),
            None => "CAST(NULL AS VARCHAR)".into(),
        };
        let days = (p.to - p.from).num_days() as u64 + 1;
        let prev_from = p.from.checked_sub_days(Days::new(days)).unwrap_or(p.from);
        let value = |name: &str| -> Option<String> {
            Some(match name {
                "from" => format!("DATE '{}'", p.from),
                "to" => format!("DATE '{}'", p.to),
                "prev_from" => format!("DATE '{prev_from}'"),
                "category" => text(&p.category),
                "item_type" => text(&p.item_type),
                "source" => text(&p.source),
                "feature" => text(&p.feature),
                "model" => text(&p.model),
                "limit" => p.limit.to_string(),
                "current" => return current.map(|c| if c { "TRUE" } else { "FALSE" }.into()),
                _ => return None,
            })
        };
        render_placeholders(sql, value)
    }
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

/// Validated panel parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct PanelParams {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub category: Option<String>,
    pub item_type: Option<String>,
    pub source: Option<String>,
    pub feature: Option<String>,
    pub model: Option<String>,
    pub limit: i64,
}

impl PanelParams {
    /// Parses query-string pairs for `panel`; every mistake is a [`EngineError::Param`] that
    /// names the parameter and what it takes.
    pub fn parse(panel: &Panel, pairs: &[(String, String)], today: NaiveDate) -> Result<Self> {
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
        let date = |k: &str| -> Result<Option<NaiveDate>> {
            seen.get(k)
                .map(|v| {
                    NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| {
                        EngineError::Param(format!("`{k}` must be a date YYYY-MM-DD, got `{v}`"))
                    })
                })
                .transpose()
        };
        let to = date("to")?.unwrap_or(today);
        let from = date("from")?.unwrap_or_else(|| {
            to.checked_sub_days(Days::new(DEFAULT_DAYS - 1))
                .unwrap_or(to)
        });
        if from > to {
            return Err(EngineError::Param(format!(
                "`from` ({from}) is after `to` ({to})"
            )));
        }
        if (to - from).num_days() as u64 >= MAX_DAYS {
            return Err(EngineError::Param(format!(
                "the period is longer than {MAX_DAYS} days; narrow `from`..`to`"
            )));
        }
        let text = |k: &str| -> Result<Option<String>> {
            match seen.get(k) {
                None => Ok(None),
                Some(&"") => Ok(None),
                Some(v) if v.len() > 200 || v.chars().any(char::is_control) => Err(
                    EngineError::Param(format!("`{k}` must be at most 200 printable characters")),
                ),
                Some(v) => Ok(Some(v.to_string())),
            }
        };
        let limit = match seen.get("limit") {
            None => DEFAULT_LIMIT,
            Some(v) => match v.parse::<i64>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(EngineError::Param(format!(
                        "`limit` must be an integer from 1 to {MAX_LIMIT}, got `{v}`"
                    )))
                }
            },
        };
        Ok(Self {
            from,
            to,
            category: text("category")?,
            item_type: text("item_type")?,
            source: text("source")?,
            feature: text("feature")?,
            model: text("model")?,
            limit,
        })
    }
}

/// A panel's answer.
#[derive(Debug, Clone)]
pub struct PanelResult {
    pub panel: &'static str,
    pub schema: SchemaRef,
    pub batches: Arc<Vec<RecordBatch>>,
    /// `table@version` of every table the answer was computed from.
    pub versions: Vec<String>,
    pub cached: bool,
    /// Answered by the panel's fallback statement (its first one could not prove its answer).
    pub fallback: bool,
    pub elapsed: Duration,
    /// Strong validator: panel, parameters and table versions.
    pub etag: String,
}

/// Every panel, and the cache they share with SQL over HTTP.
pub struct Panels {
    panels: BTreeMap<&'static str, Panel>,
    cache: Arc<ResultCache>,
}

impl Panels {
    pub fn new(cache: Arc<ResultCache>) -> Result<Self> {
        let panels = FILES
            .iter()
            .map(|(name, sql)| Ok((*name, Panel::parse(name, sql)?)))
            .collect::<Result<_>>()?;
        Ok(Self { panels, cache })
    }

    pub fn list(&self) -> impl Iterator<Item = &Panel> {
        self.panels.values()
    }

    pub fn get(&self, name: &str) -> Result<&Panel> {
        self.panels.get(name).ok_or_else(|| {
            EngineError::NotFound(format!(
                "no panel `{name}`; panels are {}",
                self.panels.keys().copied().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    pub fn parse_params(&self, name: &str, pairs: &[(String, String)]) -> Result<PanelParams> {
        PanelParams::parse(self.get(name)?, pairs, Utc::now().date_naive())
    }

    /// The versions and ETag a panel answer would carry on `snapshot`, without running it:
    /// enough to answer `If-None-Match`.
    pub fn etag(
        &self,
        name: &str,
        params: &PanelParams,
        snapshot: &Snapshot,
    ) -> Result<(Vec<String>, String)> {
        let panel = self.get(name)?;
        let sql = panel.render(params, panel.is_current(snapshot));
        let versions = versions(panel, snapshot);
        let etag = etag_of(panel, &sql, &versions);
        Ok((versions, etag))
    }

    /// Answers a panel on the catalog's snapshot (refreshed when older than `max_age`).
    pub async fn run(
        &self,
        catalog: &Catalog,
        name: &str,
        params: &PanelParams,
        limits: &QueryLimits,
        max_age: Duration,
    ) -> Result<PanelResult> {
        let started = Instant::now();
        let panel = self.get(name)?;
        let snapshot = catalog.fresh_snapshot(max_age).await?;
        // Rendered once: the statement keys the cache and the ETag.
        let sql = panel.render(params, panel.is_current(&snapshot));
        let versions = versions(panel, &snapshot);
        let etag = etag_of(panel, &sql, &versions);
        let key = format!("panel\n{sql}\n{}", versions.join(","));
        if panel.cacheable {
            if let Some(hit) = self.cache.get(&key) {
                return Ok(PanelResult {
                    panel: panel.name,
                    schema: hit.schema.clone(),
                    batches: hit.batches.clone(),
                    versions,
                    cached: true,
                    fallback: hit.fallback,
                    elapsed: started.elapsed(),
                    etag,
                });
            }
        }
        let ctx = snapshot.context(catalog.runtime(), limits)?;
        let known: BTreeSet<String> = snapshot.tables.keys().cloned().collect();
        let (mut schema, mut batches) = collect(&ctx, &known, name, &sql).await?;
        let mut fallback = false;
        if let Some(full) = panel.render_fallback(params) {
            match proven(&schema, &batches) {
                Some(answer) => (schema, batches) = answer?,
                None => {
                    fallback = true;
                    (schema, batches) = collect(&ctx, &known, name, &full).await?;
                }
            }
        }
        let batches = Arc::new(batches);
        if panel.cacheable {
            self.cache.insert(
                key,
                CachedResult::new(schema.clone(), batches.clone()).with_fallback(fallback),
            );
        }
        Ok(PanelResult {
            panel: panel.name,
            schema,
            batches,
            versions,
            cached: false,
            fallback,
            elapsed: started.elapsed(),
            etag,
        })
    }
}

/// Plans a panel statement through the same read-only gate as SQL over HTTP and runs it.
async fn collect(
    ctx: &SessionContext,
    known: &BTreeSet<String>,
    name: &str,
    sql: &str,
) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let (df, _) = plan_read_only(ctx, sql, known).await.map_err(|e| match e {
        // Parameters are values: a statement that does not plan or is refused is our bug.
        EngineError::Sql(m) | EngineError::Refused(m) => {
            EngineError::Internal(format!("panel {name} does not plan: {m}"))
        }
        other => other,
    })?;
    let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
    let batches = df.collect().await.map_err(EngineError::from_execution)?;
    Ok((schema, batches))
}

/// The answer without its `proven` column when it has rows and every row is proven; None when
/// the fallback must answer.
fn proven(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Option<Result<(SchemaRef, Vec<RecordBatch>)>> {
    let Ok(at) = schema.index_of(PROVEN_COLUMN) else {
        return Some(Err(EngineError::Internal(format!(
            "a panel with a fallback must return a `{PROVEN_COLUMN}` column"
        ))));
    };
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let all = batches.iter().all(|b| {
        b.column(at)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .is_some_and(|p| p.null_count() == 0 && p.true_count() == p.len())
    });
    if rows == 0 || !all {
        return None;
    }
    let keep: Vec<usize> = (0..schema.fields().len()).filter(|&i| i != at).collect();
    let answer = schema
        .project(&keep)
        .map_err(EngineError::from)
        .and_then(|s| {
            let batches = batches
                .iter()
                .map(|b| b.project(&keep).map_err(EngineError::from))
                .collect::<Result<Vec<_>>>()?;
            Ok((Arc::new(s), batches))
        });
    Some(answer)
}

/// Strong validator of an answer: the panel, its rendered statement and the table versions.
fn etag_of(panel: &Panel, sql: &str, versions: &[String]) -> String {
    let mut h = Sha256::new();
    h.update(panel.name.as_bytes());
    h.update(sql.as_bytes());
    for v in versions {
        h.update(v.as_bytes());
    }
    if !panel.cacheable {
        // Time-dependent answers are never the same twice.
        h.update(Utc::now().timestamp_millis().to_le_bytes());
    }
    format!("\"{}\"", &hex::encode(h.finalize())[..32])
}

fn versions(panel: &Panel, snapshot: &Snapshot) -> Vec<String> {
    if panel.all_tables {
        let names: BTreeSet<&str> = snapshot.tables.keys().map(String::as_str).collect();
        snapshot.versions_of(names)
    } else {
        snapshot.versions_of(panel.reads.iter().map(String::as_str))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_panel_file_parses() {
        let panels = Panels::new(Arc::new(ResultCache::new(1 << 20))).unwrap();
        assert_eq!(panels.list().count(), FILES.len());
        for p in panels.list() {
            assert!(
                !p.title.is_empty() && !p.description.is_empty(),
                "{}",
                p.name
            );
            assert!(
                p.all_tables || !p.reads.is_empty(),
                "{} reads nothing",
                p.name
            );
        }
    }

    #[test]
    fn a_panel_with_a_fallback_is_two_statements() {
        let panels = Panels::new(Arc::new(ResultCache::new(1 << 20))).unwrap();
        let top = panels.get("top_items").unwrap();
        let fallback = top.fallback.expect("top_items has a fallback");
        assert!(top.sql.contains("AS proven"));
        assert!(!top.sql.contains(&format!("\n{FALLBACK_LINE}\n")));
        assert!(fallback.trim_start().starts_with("WITH f AS"), "{fallback}");
        assert!(!fallback.contains(PROVEN_COLUMN));
        assert_eq!(top.reads.len(), 2, "both tables key the cache");
        assert!(panels.get("overview").unwrap().fallback.is_none());
    }

    #[test]
    fn only_an_answer_proven_on_every_row_is_used() {
        use arrow::array::{ArrayRef, Int64Array};
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("clicks", DataType::Int64, false),
            Field::new(PROVEN_COLUMN, DataType::Boolean, true),
        ]));
        let batch = |proven: Vec<Option<bool>>| {
            let n = proven.len() as i64;
            RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(Int64Array::from_iter_values(0..n)) as ArrayRef,
                    Arc::new(BooleanArray::from(proven)),
                ],
            )
            .unwrap()
        };
        let (s, b) = proven(&schema, &[batch(vec![Some(true), Some(true)])])
            .unwrap()
            .unwrap();
        assert_eq!(s.fields().len(), 1);
        assert_eq!(b[0].num_rows(), 2);
        assert!(proven(&schema, &[batch(vec![Some(true), Some(false)])]).is_none());
        assert!(proven(&schema, &[batch(vec![Some(true), None])]).is_none());
        assert!(proven(&schema, &[batch(vec![])]).is_none());
        assert!(proven(&schema, &[]).is_none());
        let without = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        assert!(proven(&without, &[]).unwrap().is_err());
    }

    #[test]
    fn params_are_validated_with_messages_that_say_what_to_fix() {
        let panels = Panels::new(Arc::new(ResultCache::new(1 << 20))).unwrap();
        let top = panels.get("top_items").unwrap();
        let today = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        let p = PanelParams::parse(top, &[], today).unwrap();
        assert_eq!(p.to, today);
        assert_eq!((p.to - p.from).num_days(), 29);
        assert_eq!(p.limit, DEFAULT_LIMIT);
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
    fn a_value_is_never_read_as_sql_or_as_another_placeholder() {
        let panels = Panels::new(Arc::new(ResultCache::new(1 << 20))).unwrap();
        let today = NaiveDate::from_ymd_opt(2026, 11, 25).unwrap();
        for panel in panels.list() {
            let text: Vec<&str> = panel
                .params
                .iter()
                .filter(|p| p.kind == ParamKind::Text)
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
}
