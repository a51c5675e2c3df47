//! Retention: each table keeps its rows for a window of days; whole partitions older than it
//! are removed in one commit per table, then their files are deleted at once. They are
//! expired personal data (clicks, AI usage, dead letters name people), so they do not wait
//! for vacuum's grace period the way a compaction's removed files do.
//!
//! ```text
//! policy (days per table, None = kept) -> for each table with a window:
//!   live files whose partition date < today - window -> (dry run: report them)
//!   -> one commit removing them (marked: rollups keep the days derived from them)
//!   -> delete the files -> report (partitions, files, bytes, rows)
//! ```
//!
//! The default windows are declared with each table, in the registry
//! ([`crate::registry::TableDecl::retention_days`]).
//!
//! Rollup days whose source days expired are kept: the retention commit carries
//! [`crate::delta::commit::RETENTION_MARKER`], which the log reader leaves out of the days a
//! rollup recomputes. A full rollup rebuild recomputes from the source that is left, and so
//! drops them.

use std::collections::BTreeMap;

use chrono::NaiveDate;
use tracing::{debug, info};

use super::{JobReport, MaintainedTable};
use crate::delta::log::LiveFile;
use crate::delta::{commit, layout};
use crate::registry::{self, TableDecl};
use crate::{EngineError, Result, Storage};

/// Commit attempts per table before giving up when other writers keep committing first.
const MAX_ATTEMPTS: u32 = 10;

/// How many days each table keeps (None: kept for ever).
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    pub days: BTreeMap<String, Option<u32>>,
}

impl Default for RetentionPolicy {
    /// Every table Strata owns with the window its registry declaration states
    /// ([`TableDecl::retention_days`]; rollups are kept).
    fn default() -> Self {
        let days = registry::tables()
            .map(|t| (t.name.to_string(), t.retention_days))
            .collect();
        Self { days }
    }
}

impl RetentionPolicy {
    /// The window of table `name` in days (None: kept for ever, or not named).
    pub fn for_table(&self, name: &str) -> Option<u32> {
        self.days.get(name).copied().flatten()
    }
}

/// Removes every partition older than its table's window on `today` (or, `dry_run`, lists
/// them): one report per table that had something to remove. A policy naming a table Strata
/// does not own is refused.
pub async fn retention(
    storage: &Storage,
    policy: &RetentionPolicy,
    today: NaiveDate,
    dry_run: bool,
) -> Result<Vec<JobReport>> {
    if let Some(unknown) = policy.days.keys().find(|n| registry::get(n).is_none()) {
        return Err(EngineError::config(format!(
            "retention names `{unknown}`, which is not a table of Strata's"
        )));
    }
    let mut reports = Vec::new();
    for decl in registry::tables() {
        let Some(days) = policy.for_table(decl.name) else {
            continue;
        };
        let Some(cutoff) = today.checked_sub_days(chrono::Days::new(u64::from(days))) else {
            continue;
        };
        if let Some(report) = expire(storage, decl, cutoff, dry_run).await? {
            reports.push(report);
        }
    }
    Ok(reports)
}

/// Removes the partitions of `decl` dated before `cutoff`; None when there are none.
async fn expire(
    storage: &Storage,
    decl: TableDecl,
    cutoff: NaiveDate,
    dry_run: bool,
) -> Result<Option<JobReport>> {
    let name = decl.name;
    for attempt in 1..=MAX_ATTEMPTS {
        let Some(table) = MaintainedTable::open(storage, name).await? else {
            return Ok(None);
        };
        let expired: Vec<LiveFile> = table
            .live_files()?
            .into_iter()
            .filter(|f| f.day().is_some_and(|d| d < cutoff))
            .collect();
        if expired.is_empty() {
            return Ok(None);
        }
        let mut report = JobReport::new("retention", name);
        report.dry_run = dry_run;
        for f in &expired {
            report.count_removed(decl.partition_column, f);
        }
        let report = report.finish();
        if dry_run {
            return Ok(Some(report));
        }
        let removes = expired
            .iter()
            .map(|f| commit::removal_of(f, decl.partition_column, true))
            .collect();
        let cutoff_text = format!("{} < {cutoff}", decl.partition_column);
        match commit::commit_expiry(&table.delta, name, removes, &cutoff_text).await? {
            Some(version) => {
                delete_files(storage, name, &expired).await?;
                info!(
                    table = name,
                    version,
                    partitions = report.partitions.len(),
                    files = report.files_removed,
                    "expired partitions removed"
                );
                return Ok(Some(report));
            }
            None => debug!(
                table = name,
                attempt, "retention commit conflicted; reading the log again"
            ),
        }
    }
    Err(EngineError::Internal(format!(
        "retention of {name}: other writers kept committing first ({MAX_ATTEMPTS} attempts)"
    )))
}

/// Deletes the expired files at once (they hold expired personal data).
async fn delete_files(storage: &Storage, table: &str, files: &[LiveFile]) -> Result<()> {
    for f in files {
        storage
            .delete_if_present(&layout::table_file(table, &f.path))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maintenance::test_support::*;
    use crate::registry::ROLLUPS;
    use crate::{Catalog, RollupBuilder};

    #[test]
    fn defaults() {
        let p = RetentionPolicy::default();
        assert_eq!(p.for_table("link_clicks"), Some(400));
        assert_eq!(p.for_table("ai_usage"), Some(762));
        assert_eq!(p.for_table("dead_letters"), Some(30));
        assert_eq!(p.for_table("job_runs"), Some(90));
        assert_eq!(p.for_table("gdpr_audit"), None);
        assert_eq!(p.for_table("gdpr_tombstones"), None);
        for r in ROLLUPS {
            assert_eq!(p.for_table(r.name), None, "{} is kept", r.name);
            assert!(p.days.contains_key(r.name));
        }
        for t in registry::TABLES {
            assert!(p.days.contains_key(t.name), "{} has no default", t.name);
        }
    }

    async fn rollups(storage: &Storage) {
        crate::ensure_tables(storage).await.unwrap();
        let catalog = Catalog::open(storage).await.unwrap();
        RollupBuilder::new(catalog)
            .record(false)
            .run()
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn dry_run_lists_and_a_real_run_removes_exactly_the_expired_days() {
        let root = root().await;
        let days = [
            "2026-01-01",
            "2026-01-02",
            "2026-01-03",
            "2026-01-04",
            "2026-01-05",
        ];
        for (tag, day) in days.iter().enumerate() {
            append(&root.storage, clicks(day, tag as u32, 10)).await;
        }
        rollups(&root.storage).await;
        // link_clicks keeps 400 days: on this day, 2026-01-03 is the first day kept.
        let today = NaiveDate::from_ymd_opt(2027, 2, 7).unwrap();
        assert_eq!(
            today - chrono::Duration::days(400),
            NaiveDate::from_ymd_opt(2026, 1, 3).unwrap()
        );
        let expired: Vec<String> = ["2026-01-01", "2026-01-02"]
            .iter()
            .map(|d| format!("event_date={d}"))
            .collect();
        let policy = RetentionPolicy::default();
        let clicks_report = |reports: Vec<JobReport>| {
            reports
                .into_iter()
                .find(|r| r.job == "retention:link_clicks")
                .unwrap()
        };

        let dry = clicks_report(
            retention(&root.storage, &policy, today, true)
                .await
                .unwrap(),
        );
        assert!(dry.dry_run);
        assert_eq!(dry.partitions, expired);
        assert_eq!((dry.files_removed, dry.rows), (2, 20));
        assert!(dry.bytes_removed > 0);
        let all = "SELECT count(*) FROM link_clicks";
        assert_eq!(
            count(&root.storage, all).await,
            50,
            "a dry run removes nothing"
        );

        let done = clicks_report(
            retention(&root.storage, &policy, today, false)
                .await
                .unwrap(),
        );
        assert!(!done.dry_run);
        assert_eq!(done.partitions, expired);
        assert_eq!(count(&root.storage, all).await, 30);
        assert_eq!(
            count(
                &root.storage,
                "SELECT count(*) FROM link_clicks WHERE event_date < DATE '2026-01-03'"
            )
            .await,
            0
        );
        assert_eq!(
            root.files_on_disk(CLICKS, &expired[0]),
            0,
            "deleted at once"
        );
        assert_eq!(root.files_on_disk(CLICKS, "event_date=2026-01-03"), 1);

        // The rollup days of the expired days stay, also after the rollups run again.
        rollups(&root.storage).await;
        let rollup_days = "SELECT count(DISTINCT event_date) FROM click_stats_daily";
        assert_eq!(count(&root.storage, rollup_days).await, 5);
        let again = retention(&root.storage, &policy, today, false)
            .await
            .unwrap();
        assert!(again.iter().all(|r| r.job != "retention:link_clicks"));
    }

    #[tokio::test]
    async fn a_policy_for_an_unknown_table_is_refused() {
        let root = root().await;
        let mut policy = RetentionPolicy::default();
        policy.days.insert("nope".into(), Some(1));
        let today = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        assert!(matches!(
            retention(&root.storage, &policy, today, true).await,
            Err(EngineError::Config(_))
        ));
    }
}
