//! Dashboard panels: named SQL (engine/sql/panels/*.sql) with typed parameters, answered from
//! the rollups and cached by the versions of the tables they read.
//!
//! ```text
//! GET /v1/panels/top_items?from=..&limit=5
//!     -> Panels::request: the panel (once, by name) + PanelParams (validated by PARAMS)
//!     -> PanelRequest::prepare(snapshot): statement bound once, versions, ETag, cache key
//!     -> PreparedPanel::run: hit: cached batches | miss: DataFusion, then cached
//! ```
//!
//! - `spec`: [`Panel`], a panel file's header and statements, parsed once at startup.
//! - `params`: [`ParamSpec`] for every parameter ([`PARAMS`]) and the validated values.
//! - `render`: binding values into a statement (the one place they meet SQL text).
//! - `run`: [`PreparedPanel`] and the answer, [`PanelResult`].
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

mod params;
mod render;
mod run;
mod spec;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

pub use params::{PanelParams, ParamKind, ParamRule, ParamSpec, ParamValue, Period, PARAMS};
pub use run::{PanelResult, PreparedPanel};
pub use spec::Panel;

use crate::cache::ResultCache;
use crate::catalog::{QueryLimits, Snapshot};
use crate::{Catalog, EngineError, Result};

const FILES: &[(&str, &str)] = &[
    ("overview", include_str!("../../sql/panels/overview.sql")),
    (
        "clicks_by_day",
        include_str!("../../sql/panels/clicks_by_day.sql"),
    ),
    (
        "per_category",
        include_str!("../../sql/panels/per_category.sql"),
    ),
    ("top_items", include_str!("../../sql/panels/top_items.sql")),
    (
        "traffic_sources",
        include_str!("../../sql/panels/traffic_sources.sql"),
    ),
    (
        "marketplace_directory",
        include_str!("../../sql/panels/marketplace_directory.sql"),
    ),
    (
        "source_share",
        include_str!("../../sql/panels/source_share.sql"),
    ),
    ("ai_usage", include_str!("../../sql/panels/ai_usage.sql")),
    (
        "ai_spend_by_day",
        include_str!("../../sql/panels/ai_spend_by_day.sql"),
    ),
    (
        "job_health_tables",
        include_str!("../../sql/panels/job_health_tables.sql"),
    ),
    (
        "dead_letters_daily",
        include_str!("../../sql/panels/dead_letters_daily.sql"),
    ),
    (
        "rollup_runs",
        include_str!("../../sql/panels/rollup_runs.sql"),
    ),
    (
        "table_health",
        include_str!("../../sql/panels/table_health.sql"),
    ),
];

/// Every panel, and the cache they share with SQL over HTTP.
pub struct Panels {
    panels: BTreeMap<&'static str, Panel>,
    cache: Arc<ResultCache>,
}

/// A panel request resolved once: the panel, found by name, and its validated parameters.
pub struct PanelRequest<'a> {
    pub panel: &'a Panel,
    pub params: PanelParams,
    cache: &'a ResultCache,
}

impl<'a> PanelRequest<'a> {
    /// Binds the request on `snapshot`: the statement is rendered here, once, and the ETag and
    /// the cache key come from it.
    pub fn prepare(&self, snapshot: Arc<Snapshot>) -> PreparedPanel<'a> {
        PreparedPanel::new(self.panel, &self.params, self.cache, snapshot)
    }
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

    /// Every parameter at least one panel takes, in [`PARAMS`] order.
    pub fn params(&self) -> impl Iterator<Item = &'static ParamSpec> + '_ {
        PARAMS
            .iter()
            .filter(|spec| self.list().any(|p| p.takes(spec.name)))
    }

    pub fn get(&self, name: &str) -> Result<&Panel> {
        self.panels.get(name).ok_or_else(|| {
            EngineError::NotFound(format!(
                "no panel `{name}`; panels are {}",
                self.panels.keys().copied().collect::<Vec<_>>().join(", ")
            ))
        })
    }

    /// The panel `name` (NotFound when there is none) with the query-string `pairs` validated
    /// for it (today is UTC's).
    pub fn request(&self, name: &str, pairs: &[(String, String)]) -> Result<PanelRequest<'_>> {
        let panel = self.get(name)?;
        let params = PanelParams::parse(panel, pairs, Utc::now().date_naive())?;
        Ok(PanelRequest {
            panel,
            params,
            cache: &self.cache,
        })
    }

    pub fn parse_params(&self, name: &str, pairs: &[(String, String)]) -> Result<PanelParams> {
        Ok(self.request(name, pairs)?.params)
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
        let panel = self.get(name)?;
        let snapshot = catalog.fresh_snapshot(max_age).await?;
        PreparedPanel::new(panel, params, &self.cache, snapshot)
            .run(catalog, limits)
            .await
    }
}

/// What the panel unit tests share: every panel file loaded, a fixed day to resolve periods
/// from, and query pairs as a request carries them.
#[cfg(test)]
mod test_support {
    use std::sync::Arc;

    use super::Panels;
    use crate::cache::ResultCache;

    pub(super) fn panels() -> Panels {
        Panels::new(Arc::new(ResultCache::new(1 << 20))).unwrap()
    }

    pub(super) fn today() -> chrono::NaiveDate {
        chrono::NaiveDate::from_ymd_opt(2026, 11, 25).unwrap()
    }

    pub(super) fn pairs(s: &[(&str, &str)]) -> Vec<(String, String)> {
        s.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::run::PROVEN_COLUMN;
    use super::spec::FALLBACK_LINE;
    use super::test_support::panels;
    use super::*;

    #[test]
    fn every_panel_file_parses() {
        let panels = panels();
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
        // Every parameter is taken by some panel (else it is dead weight in the documents).
        assert_eq!(panels.params().count(), PARAMS.len());
    }

    #[test]
    fn a_panel_with_a_fallback_is_two_statements() {
        let panels = panels();
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
    fn a_request_resolves_its_panel_and_checks_its_params() {
        let panels = panels();
        let pairs = vec![("limit".to_string(), "3".to_string())];
        let request = panels.request("top_items", &pairs).unwrap();
        assert_eq!(request.panel.name, "top_items");
        assert_eq!(request.params.value("limit"), Some(&ParamValue::Integer(3)));
        let prepared = request.prepare(Arc::new(Snapshot::default()));
        let again = request.prepare(Arc::new(Snapshot::default()));
        assert_eq!(prepared.etag(), again.etag(), "same binding, same ETag");
        assert!(matches!(
            panels.request("nope", &pairs),
            Err(EngineError::NotFound(_))
        ));
        assert!(matches!(
            panels.request("overview", &pairs),
            Err(EngineError::Param(_))
        ));
    }
}
