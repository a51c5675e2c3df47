//! `job_runs`: one row per run of a background job (rollups, compaction, vacuum, retention,
//! GDPR requests), so that job health is a query like any other; and the scheduled jobs of
//! `strata serve`, run for the slot a lease holds and recorded there.
//!
//! ```text
//! scheduler (query-api) --Lease::claim--> run_scheduled(job) --rollups / maintenance--> JobRun rows
//!                                                            --JobRuns::append (one commit)--> job_runs
//! ```

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use crate::lease::Lease;
use crate::maintenance::{self, CompactOptions, JobReport, RetentionPolicy, VacuumOptions};
use crate::registry::{self, TableSpec};
use crate::table::EventTable;
use crate::{Catalog, EngineError, Result, RollupBuilder, Storage};

pub const JOB_RUNS_TABLE: &str = registry::JOB_RUNS.name;

#[derive(Debug, Clone)]
pub struct JobRun {
    /// e.g. `rollup:click_stats_daily`
    pub job: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `ok` or `failed`
    pub status: String,
    pub rows: i64,
    /// JSON with the job's report (never subject ids).
    pub detail: String,
}

pub struct JobRuns;

impl JobRuns {
    pub fn schema() -> SchemaRef {
        registry::job_runs_schema()
    }

    pub fn spec() -> TableSpec {
        registry::JOB_RUNS.spec()
    }

    pub async fn open(storage: &Storage) -> Result<EventTable> {
        EventTable::open_or_create(storage, Self::spec()).await
    }

    pub async fn append(storage: &Storage, runs: &[JobRun]) -> Result<()> {
        let mut table = Self::open(storage).await?;
        let micros = |t: &DateTime<Utc>| t.timestamp_micros();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                runs.iter().map(|r| r.job.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    runs.iter().map(|r| micros(&r.started_at)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    runs.iter().map(|r| micros(&r.finished_at)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                runs.iter().map(|r| r.status.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(runs.iter().map(|r| r.rows))),
            Arc::new(StringArray::from_iter_values(
                runs.iter().map(|r| r.detail.as_str()),
            )),
            Arc::new(Date32Array::from_iter_values(
                runs.iter()
                    .map(|r| (r.started_at.timestamp().div_euclid(86_400)) as i32),
            )),
        ];
        let batch = RecordBatch::try_new(Self::schema(), cols)?;
        table.append(&[batch], &[]).await?;
        Ok(())
    }
}

/// A job the scheduler of `strata serve` runs on its own interval, one slot at a time
/// (see [`crate::lease`]): at most one server of a root runs a slot, and a server runs one
/// job's slots one after another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduledJob {
    /// Every rollup, brought up to date (recorded as `rollup:<name>` by [`RollupBuilder`]).
    Rollups,
    /// Compaction of each maintained table (`compact:<table>`).
    Compaction,
    /// Vacuum, checkpoint and log cleanup of each maintained table (`vacuum:<table>`).
    Vacuum,
    /// Expired partitions removed per the retention policy (`retention:<table>`).
    Retention,
}

impl ScheduledJob {
    pub const ALL: [Self; 4] = [
        Self::Rollups,
        Self::Compaction,
        Self::Vacuum,
        Self::Retention,
    ];

    /// The name its leases are kept under and its log lines carry.
    pub fn name(self) -> &'static str {
        match self {
            Self::Rollups => "rollups",
            Self::Compaction => "compact",
            Self::Vacuum => "vacuum",
            Self::Retention => "retention",
        }
    }
}

/// What the scheduled maintenance jobs run with. `Default` gives each job's own defaults.
#[derive(Debug, Clone, Default)]
pub struct MaintenanceOptions {
    pub compact: CompactOptions,
    pub vacuum: VacuumOptions,
    pub retention: RetentionPolicy,
}

/// What one scheduled run did: the `job_runs` rows it wrote (rollups: the rollups run) and
/// how many of them failed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScheduledOutcome {
    pub runs: usize,
    pub failed: usize,
}

/// Runs `job` for the slot `lease` holds and records it in `job_runs`: one row per table
/// (per rollup for rollups), written in one commit, each with the slot and holder in its
/// `detail`. A failure is recorded and logged, never returned: the next slot tries again.
pub async fn run_scheduled(
    catalog: &Arc<Catalog>,
    job: ScheduledJob,
    options: &MaintenanceOptions,
    lease: &Lease,
) -> ScheduledOutcome {
    let storage = catalog.storage();
    let runs = match job {
        ScheduledJob::Rollups => return run_rollups(catalog).await,
        ScheduledJob::Compaction | ScheduledJob::Vacuum => {
            per_table(storage, job, options, lease).await
        }
        ScheduledJob::Retention => run_retention(storage, &options.retention, lease).await,
    };
    let outcome = ScheduledOutcome {
        runs: runs.len(),
        failed: runs.iter().filter(|r| r.status == FAILED).count(),
    };
    if runs.is_empty() {
        return outcome;
    }
    if let Err(e) = JobRuns::append(storage, &runs).await {
        warn!(job = job.name(), error = %e, "recording the job runs failed");
    }
    outcome
}

const OK: &str = "ok";
const FAILED: &str = "failed";

/// Rollups record their own runs ([`RollupBuilder`] writes `rollup:<name>` rows).
async fn run_rollups(catalog: &Arc<Catalog>) -> ScheduledOutcome {
    match RollupBuilder::new(catalog.clone()).run().await {
        Ok(reports) => {
            let days: usize = reports.iter().map(|r| r.dates.len()).sum();
            info!(days, "scheduled rollups done");
            ScheduledOutcome {
                runs: reports.len(),
                failed: 0,
            }
        }
        Err(e) => {
            warn!(error = %error_message(&e), "scheduled rollup failed");
            ScheduledOutcome { runs: 1, failed: 1 }
        }
    }
}

/// Runs compaction or vacuum on every maintained table in turn; one run per table, named
/// `<kind>:<table>`. (A `match` rather than a closure per job: a closure returning a future
/// that borrows its argument is not `Send` for every lifetime, which `tokio::spawn` needs.)
async fn per_table(
    storage: &Storage,
    job: ScheduledJob,
    options: &MaintenanceOptions,
    lease: &Lease,
) -> Vec<JobRun> {
    let kind = if job == ScheduledJob::Vacuum {
        "vacuum"
    } else {
        "compact"
    };
    let mut runs = Vec::new();
    for table in maintenance::maintained_tables() {
        let started_at = Utc::now();
        let result = if job == ScheduledJob::Vacuum {
            maintenance::vacuum(storage, table, &options.vacuum).await
        } else {
            maintenance::compact(storage, table, &options.compact).await
        };
        runs.push(job_run(
            format!("{kind}:{table}"),
            started_at,
            &result,
            lease,
        ));
    }
    runs
}

/// Retention over every table of the policy, today being UTC's: one run per report (each
/// named `retention:<table>` by the report), or one failed `retention` run when it could not
/// run at all.
async fn run_retention(storage: &Storage, policy: &RetentionPolicy, lease: &Lease) -> Vec<JobRun> {
    let started_at = Utc::now();
    match maintenance::retention(storage, policy, started_at.date_naive(), false).await {
        Ok(reports) => reports
            .into_iter()
            .map(|r| job_run(r.job.clone(), started_at, &Ok(r), lease))
            .collect(),
        Err(e) => vec![job_run("retention".into(), started_at, &Err(e), lease)],
    }
}

/// The `job_runs` row of one run: its report's counts (or its error) and the slot in `detail`.
fn job_run(
    job: String,
    started_at: DateTime<Utc>,
    result: &Result<JobReport>,
    lease: &Lease,
) -> JobRun {
    let mut detail = serde_json::json!({ "slot": lease.slot.number, "holder": lease.holder });
    let (status, rows) = match result {
        Ok(r) => {
            detail["files_added"] = r.files_added.into();
            detail["files_removed"] = r.files_removed.into();
            detail["bytes_added"] = r.bytes_added.into();
            detail["bytes_removed"] = r.bytes_removed.into();
            detail["partitions"] = r.partitions.clone().into();
            detail["dry_run"] = r.dry_run.into();
            (OK, i64::try_from(r.rows).unwrap_or(i64::MAX))
        }
        Err(e) => {
            let message = error_message(e);
            warn!(job = %job, error = %message, "scheduled job failed");
            detail["error"] = message.into();
            (FAILED, 0)
        }
    };
    JobRun {
        job,
        started_at,
        finished_at: Utc::now(),
        status: status.into(),
        rows,
        detail: detail.to_string(),
    }
}

/// An error as `job_runs` and the log may carry it: a failure on the data can quote a value
/// (a subject id among them), so its message is withheld.
fn error_message(e: &EngineError) -> String {
    match e {
        EngineError::Query(_) => {
            "the job failed on the data (message withheld: it may quote a value)".into()
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::lease::Slot;

    fn lease() -> Lease {
        Lease {
            job: "compact".into(),
            slot: Slot {
                number: 7,
                interval: Duration::from_secs(60),
            },
            holder: "h-1".into(),
        }
    }

    #[test]
    fn a_run_carries_its_slot_counts_and_partitions() {
        let report = JobReport {
            job: "compact:link_clicks".into(),
            rows: 12,
            files_added: 1,
            files_removed: 9,
            bytes_added: 100,
            bytes_removed: 120,
            partitions: vec!["event_date=2026-10-01".into()],
            dry_run: false,
        };
        let run = job_run(report.job.clone(), Utc::now(), &Ok(report), &lease());
        assert_eq!((run.status.as_str(), run.rows), (OK, 12));
        let detail: serde_json::Value = serde_json::from_str(&run.detail).unwrap();
        assert_eq!(detail["slot"], 7);
        assert_eq!(detail["holder"], "h-1");
        assert_eq!(detail["files_removed"], 9);
        assert_eq!(detail["bytes_added"], 100);
        assert_eq!(detail["partitions"][0], "event_date=2026-10-01");
    }

    #[test]
    fn a_failed_run_records_its_error_but_never_a_data_value() {
        let failed = Err(EngineError::Internal("listing tables/x: timeout".into()));
        let run = job_run("vacuum:x".into(), Utc::now(), &failed, &lease());
        assert_eq!((run.status.as_str(), run.rows), (FAILED, 0));
        let detail: serde_json::Value = serde_json::from_str(&run.detail).unwrap();
        assert!(detail["error"].as_str().unwrap().contains("timeout"));

        let on_data = Err(EngineError::Query("cannot cast 'user-42' to INT".into()));
        let run = job_run("compact:x".into(), Utc::now(), &on_data, &lease());
        assert!(!run.detail.contains("user-42"), "{}", run.detail);
    }
}
