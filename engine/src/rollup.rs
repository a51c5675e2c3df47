//! Materialized rollups, kept correct incrementally.
//!
//! ```text
//! link_clicks / ai_usage (Delta) --changed event_dates, read from the Delta log since the last run-->
//!     rollup SQL (engine/sql/rollups/*.sql) over those dates --replace those partitions--> rollup table
//!                                                        (one commit, txn = source version consumed)
//! ```
//!
//! A rollup's source may itself be a rollup (`click_stats_daily_totals` reads
//! `click_stats_daily`, which runs first): its replaced partitions are changed days like any.
//!
//! A run reads the version of the source it last consumed from its own `txn` action
//! (`strata-rollup-<name>`), collects the `event_date` of every file added or removed since, and
//! recomputes exactly those days: late events and purges are both reflected. When the log
//! between the two versions is gone (cleaned up), or on `--rebuild`, it recomputes everything.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use chrono::NaiveDate;
use deltalake::kernel::transaction::CommitProperties;
use deltalake::kernel::Transaction;
use deltalake::protocol::SaveMode;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use serde::Serialize;
use tracing::{info, warn};

use crate::jobs::{JobRun, JobRuns};
use crate::table::{EventTable, TableSpec};
use crate::{Catalog, EngineError, Result, Storage};

/// One rollup: its table, its source and its SQL.
#[derive(Debug, Clone, Copy)]
pub struct RollupSpec {
    pub name: &'static str,
    pub source: &'static str,
    pub sql: &'static str,
    pub stats_columns: &'static [&'static str],
}

pub const ROLLUPS: &[RollupSpec] = &[
    RollupSpec {
        name: "click_stats_daily",
        source: "link_clicks",
        sql: include_str!("../sql/rollups/click_stats_daily.sql"),
        stats_columns: &[
            "category",
            "item_type",
            "source",
            "clicks",
            "human_clicks",
            "unique_users",
            "unique_sessions",
        ],
    },
    // After click_stats_daily, which is its source: the days that run replaced are the days
    // this one recomputes.
    RollupSpec {
        name: "click_stats_daily_totals",
        source: "click_stats_daily",
        sql: include_str!("../sql/rollups/click_stats_daily_totals.sql"),
        stats_columns: &["clicks", "human_clicks", "unique_users", "unique_sessions"],
    },
    RollupSpec {
        name: "click_stats_daily_items",
        source: "link_clicks",
        sql: include_str!("../sql/rollups/click_stats_daily_items.sql"),
        stats_columns: &[
            "event_date",
            "item_type",
            "category",
            "clicks",
            "unique_users",
        ],
    },
    // After click_stats_daily_items, which is its source.
    RollupSpec {
        name: "click_stats_daily_top_items",
        source: "click_stats_daily_items",
        sql: include_str!("../sql/rollups/click_stats_daily_top_items.sql"),
        stats_columns: &["event_date", "item_type", "category", "clicks"],
    },
    RollupSpec {
        name: "ai_usage_daily",
        source: "ai_usage",
        sql: include_str!("../sql/rollups/ai_usage_daily.sql"),
        stats_columns: &[
            "feature", "provider", "model", "calls", "errors", "cost_usd",
        ],
    },
];

impl RollupSpec {
    pub fn get(name: &str) -> Option<&'static RollupSpec> {
        ROLLUPS.iter().find(|r| r.name == name)
    }

    /// The `txn` app id under which each commit records the source version it consumed.
    pub fn app_id(&self) -> String {
        format!("strata-rollup-{}", self.name)
    }

    /// The SQL restricted to `dates` (all dates when None).
    pub fn sql_for(&self, dates: Option<&BTreeSet<NaiveDate>>) -> String {
        let predicate = match dates {
            None => "TRUE".to_string(),
            Some(d) => dates_predicate(d),
        };
        self.sql.replace("{dates}", &predicate)
    }
}

/// `event_date IN (DATE '…', …)`, or `FALSE` for no dates: the days a run recomputes, both in
/// its SQL and in the partitions its commit replaces.
fn dates_predicate(dates: &BTreeSet<NaiveDate>) -> String {
    if dates.is_empty() {
        return "FALSE".into();
    }
    let list: Vec<String> = dates.iter().map(|d| format!("DATE '{d}'")).collect();
    format!("event_date IN ({})", list.join(", "))
}

/// What one rollup run did; also what `job_runs` records.
#[derive(Debug, Clone, Serialize)]
pub struct RollupReport {
    pub rollup: String,
    pub source: String,
    /// Source version consumed by the previous run (None: never run).
    pub from_version: Option<u64>,
    pub to_version: Option<u64>,
    /// True when everything was recomputed.
    pub full: bool,
    pub dates: Vec<NaiveDate>,
    pub rows: usize,
    pub version: Option<u64>,
    pub elapsed_ms: u64,
}

/// Runs rollups: `.rebuild(true)` to recompute every day, `.only(name)` to run one.
pub struct RollupBuilder {
    catalog: Arc<Catalog>,
    rebuild: bool,
    only: Option<String>,
    jobs: bool,
}

impl RollupBuilder {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self {
            catalog,
            rebuild: false,
            only: None,
            jobs: true,
        }
    }

    pub fn rebuild(mut self, yes: bool) -> Self {
        self.rebuild = yes;
        self
    }

    pub fn only(mut self, name: Option<String>) -> Self {
        self.only = name;
        self
    }

    /// Whether to record the runs in `job_runs` (default true).
    pub fn record(mut self, yes: bool) -> Self {
        self.jobs = yes;
        self
    }

    pub async fn run(self) -> Result<Vec<RollupReport>> {
        if let Some(name) = &self.only {
            if RollupSpec::get(name).is_none() {
                return Err(EngineError::NotFound(format!(
                    "no rollup `{name}`; rollups are {}",
                    ROLLUPS
                        .iter()
                        .map(|r| r.name)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        let mut reports = Vec::new();
        for spec in ROLLUPS {
            if self.only.as_deref().is_some_and(|n| n != spec.name) {
                continue;
            }
            let started = chrono::Utc::now();
            let result = run_one(&self.catalog, spec, self.rebuild).await;
            if self.jobs {
                let (status, detail) = match &result {
                    Ok(r) => ("ok", serde_json::to_string(r).unwrap_or_default()),
                    Err(e) => (
                        "failed",
                        serde_json::json!({ "error": e.to_string() }).to_string(),
                    ),
                };
                let run = JobRun {
                    job: format!("rollup:{}", spec.name),
                    started_at: started,
                    finished_at: chrono::Utc::now(),
                    status: status.into(),
                    rows: result.as_ref().map_or(0, |r| r.rows as i64),
                    detail,
                };
                if let Err(e) = JobRuns::append(self.catalog.storage(), &[run]).await {
                    warn!(error = %e, "recording the rollup run failed");
                }
            }
            reports.push(result?);
        }
        self.catalog.refresh().await?;
        Ok(reports)
    }
}

async fn run_one(catalog: &Catalog, spec: &RollupSpec, rebuild: bool) -> Result<RollupReport> {
    let started = Instant::now();
    let snapshot = catalog.refresh().await?;
    let mut report = RollupReport {
        rollup: spec.name.into(),
        source: spec.source.into(),
        from_version: None,
        to_version: snapshot.version(spec.source),
        full: false,
        dates: vec![],
        rows: 0,
        version: None,
        elapsed_ms: 0,
    };
    let Some(to_version) = report.to_version else {
        info!(
            rollup = spec.name,
            "source table does not exist yet; nothing to do"
        );
        return Ok(report);
    };
    let ctx = snapshot.context(catalog.runtime(), &Default::default())?;
    let schema = output_schema(&ctx, spec).await?;
    let mut table = open_rollup(catalog.storage(), spec, schema.clone()).await?;
    let app_id = spec.app_id();
    let from = table.txn_versions(std::slice::from_ref(&app_id)).await?[&app_id];
    report.from_version = from.map(|v| v as u64);

    // A rollup whose SQL changed its columns is rebuilt, with the new schema.
    // Compared as sets: Delta keeps partition columns last.
    let stored: BTreeSet<String> = table
        .delta()
        .snapshot()?
        .schema()
        .fields()
        .map(|f| f.name().to_string())
        .collect();
    let wanted: BTreeSet<String> = schema
        .fields()
        .iter()
        .map(|f| f.name().to_string())
        .collect();
    let schema_changed = stored != wanted;
    if schema_changed {
        info!(
            rollup = spec.name,
            "columns changed; rebuilding with the new schema"
        );
    }
    let rebuild = rebuild || schema_changed;
    let dates = match (rebuild, from) {
        (false, Some(v)) if v as u64 == to_version => {
            report.elapsed_ms = started.elapsed().as_millis() as u64;
            report.version = table.version();
            return Ok(report);
        }
        (false, Some(v)) if (v as u64) < to_version => {
            changed_dates(catalog.storage(), spec.source, v as u64 + 1, to_version).await?
        }
        _ => None,
    };
    if dates.as_ref().is_some_and(|d| d.is_empty()) {
        // Source commits without files (ingest advancing offsets only): no day changed.
        report.elapsed_ms = started.elapsed().as_millis() as u64;
        report.version = table.version();
        return Ok(report);
    }
    report.full = dates.is_none();
    report.dates = dates.iter().flatten().copied().collect();

    let prepared_ms = started.elapsed().as_millis() as u64;
    let sql = spec.sql_for(dates.as_ref());
    let df = ctx.sql(&sql).await?;
    let batches: Vec<RecordBatch> = df
        .collect()
        .await
        .map_err(EngineError::from_execution)?
        .iter()
        .map(|b| normalize(b, &schema))
        .collect::<Result<_>>()?;
    report.rows = batches.iter().map(|b| b.num_rows()).sum();
    let computed_ms = started.elapsed().as_millis() as u64;

    let props = CommitProperties::default()
        .with_application_transaction(Transaction::new(&app_id, to_version as i64))
        .with_max_retries(10);
    let mut write = table
        .delta()
        .clone()
        .write(if batches.is_empty() {
            vec![RecordBatch::new_empty(schema.clone())]
        } else {
            batches
        })
        .with_save_mode(SaveMode::Overwrite)
        .with_partition_columns(["event_date"])
        .with_writer_properties(crate::writer_properties(table.spec()))
        .with_commit_properties(props);
    if schema_changed {
        write = write.with_schema_mode(deltalake::operations::write::SchemaMode::Overwrite);
    }
    if let Some(d) = &dates {
        write = write.with_replace_where(dates_predicate(d));
    }
    let written = write.await?;
    report.version = written.version();
    table.refresh().await?;
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    info!(
        rollup = spec.name,
        full = report.full,
        days = report.dates.len(),
        rows = report.rows,
        prepared_ms,
        computed_ms,
        elapsed_ms = report.elapsed_ms,
        "rollup committed"
    );
    Ok(report)
}

/// The rollup's schema as a Delta table can hold it (view types made plain).
async fn output_schema(
    ctx: &datafusion::prelude::SessionContext,
    spec: &RollupSpec,
) -> Result<SchemaRef> {
    let df = ctx.sql(&spec.sql_for(Some(&BTreeSet::new()))).await?;
    let fields: Vec<Field> = df
        .schema()
        .as_arrow()
        .fields()
        .iter()
        .map(|f| {
            let dt = plain_type(f.data_type());
            // Keys are never null; measures may be (an empty join side).
            Field::new(f.name(), dt, f.name() != "event_date")
        })
        .collect();
    Ok(Arc::new(Schema::new(fields)))
}

fn plain_type(dt: &DataType) -> DataType {
    match dt {
        DataType::Utf8View | DataType::LargeUtf8 => DataType::Utf8,
        DataType::BinaryView | DataType::LargeBinary => DataType::Binary,
        other => other.clone(),
    }
}

fn normalize(batch: &RecordBatch, schema: &SchemaRef) -> Result<RecordBatch> {
    let cols: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .zip(schema.fields())
        .map(|(c, f)| arrow::compute::cast(c, f.data_type()))
        .collect::<std::result::Result<_, _>>()?;
    Ok(RecordBatch::try_new(schema.clone(), cols)?)
}

async fn open_rollup(
    storage: &Storage,
    spec: &RollupSpec,
    schema: SchemaRef,
) -> Result<EventTable> {
    let table = EventTable::open_or_create(
        storage,
        TableSpec {
            name: spec.name,
            schema,
            partition_column: "event_date",
            sort_column: "event_date",
            stats_columns: spec.stats_columns,
            bloom_columns: &[],
            high_cardinality: &[
                "users_sketch",
                "sessions_sketch",
                "items_sketch",
                "latency_sketch",
                "item_id",
            ],
            lz4: true,
        },
    )
    .await?;
    Ok(table)
}

/// The `event_date`s of the files added or removed in versions `from..=to` of a table, read
/// from its commit files. None when a commit file is gone or a remove carries no partition
/// values: the caller then recomputes everything.
pub async fn changed_dates(
    storage: &Storage,
    table: &str,
    from: u64,
    to: u64,
) -> Result<Option<BTreeSet<NaiveDate>>> {
    let mut dates = BTreeSet::new();
    for v in from..=to {
        let path = Path::from(format!("tables/{table}/_delta_log/{v:020}.json"));
        let bytes = match storage.store().get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map_err(|e| EngineError::Internal(format!("reading {path}: {e}")))?,
            Err(object_store::Error::NotFound { .. }) => {
                warn!(
                    table,
                    version = v,
                    "commit file is gone; recomputing everything"
                );
                return Ok(None);
            }
            Err(e) => return Err(EngineError::Internal(format!("reading {path}: {e}"))),
        };
        for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let action: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| EngineError::Internal(format!("{path} is not JSON lines: {e}")))?;
            for kind in ["add", "remove"] {
                let Some(a) = action.get(kind) else { continue };
                let value = a
                    .get("partitionValues")
                    .and_then(|p| p.get("event_date"))
                    .and_then(|d| d.as_str());
                match value.map(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d")) {
                    Some(Ok(d)) => {
                        dates.insert(d);
                    }
                    _ => return Ok(None),
                }
            }
        }
    }
    Ok(Some(dates))
}

/// Creates the rollup tables that do not exist yet, empty (their schema comes from their SQL).
/// In order, the snapshot refreshed after each one created: a rollup of a rollup needs its
/// source created first.
pub(crate) async fn ensure_rollup_tables(catalog: &Catalog) -> Result<()> {
    let mut snapshot = catalog.refresh().await?;
    for spec in ROLLUPS {
        if snapshot.version(spec.name).is_some() || snapshot.version(spec.source).is_none() {
            continue;
        }
        let ctx = snapshot.context(catalog.runtime(), &Default::default())?;
        let schema = output_schema(&ctx, spec).await?;
        open_rollup(catalog.storage(), spec, schema).await?;
        snapshot = catalog.refresh().await?;
    }
    Ok(())
}
