//! Materialized rollups, kept correct incrementally.
//!
//! ```text
//! link_clicks / ai_usage (Delta) --changed event_dates, read from the Delta log since the last run-->
//!     rollup SQL (engine/sql/rollups/*.sql) over those dates --replace those partitions--> rollup table
//!                                                        (one commit, txn = source version consumed)
//! ```
//!
//! The rollups are declared in the registry ([`crate::registry::ROLLUPS`]); this module runs
//! them. A rollup's source may itself be a rollup (`click_stats_daily_totals` reads
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
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::prelude::SessionContext;
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tracing::{info, warn};

mod purged;
mod source;

pub use purged::PurgedRows;

use crate::catalog::Snapshot;
use crate::delta::commit::{self, PartitionReplace};
use crate::delta::log::changed_dates;
use crate::jobs::{JobRun, JobRuns};
use crate::literal::date_literal;
use crate::registry::{RollupSpec, ROLLUPS};
use crate::table::EventTable;
use crate::writer::writer_properties;
use crate::{Catalog, EngineError, QueryLimits, Result, Storage};

impl RollupSpec {
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
    let list: Vec<String> = dates.iter().map(|d| date_literal(*d)).collect();
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
    /// True when the days were recomputed for a purged subject's groups only and those
    /// groups' rows spliced into the stored days (see `rollup/purged.rs`).
    pub subject_groups_only: bool,
    pub dates: Vec<NaiveDate>,
    /// Rows computed: the days' rows, or only the subject's groups' when
    /// `subject_groups_only`.
    pub rows: usize,
    pub version: Option<u64>,
    pub elapsed_ms: u64,
}

impl RollupReport {
    /// A report of a run that has done nothing yet.
    fn start(spec: &RollupSpec, to_version: Option<u64>) -> Self {
        Self {
            rollup: spec.name.into(),
            source: spec.source.into(),
            from_version: None,
            to_version,
            full: false,
            subject_groups_only: false,
            dates: vec![],
            rows: 0,
            version: None,
            elapsed_ms: 0,
        }
    }
}

/// Runs rollups: `.rebuild(true)` to recompute every day, `.only(name)` to run one.
pub struct RollupBuilder {
    catalog: Arc<Catalog>,
    rebuild: bool,
    only: Option<String>,
    jobs: bool,
    purged: Vec<PurgedRows>,
}

impl RollupBuilder {
    pub fn new(catalog: Arc<Catalog>) -> Self {
        Self {
            catalog,
            rebuild: false,
            only: None,
            jobs: true,
            purged: Vec::new(),
        }
    }

    /// The rows a purge just removed from raw tables: a rollup whose only change since its
    /// last run is that purge recomputes the subject's groups only.
    pub fn purged(mut self, rows: Vec<PurgedRows>) -> Self {
        self.purged = rows;
        self
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
        let selected: Vec<&'static RollupSpec> = ROLLUPS
            .iter()
            .filter(|spec| self.only.as_deref().is_none_or(|n| n == spec.name))
            .collect();
        // A purge's rollups recompute a few days each: its chains (a rollup, then the rollups
        // of that rollup) run at once, so that one's commit overlaps another's computing.
        // Other runs (a rebuild computes every day, each already on every core) run one
        // rollup at a time, so that one rollup's days are in memory at once. Every rollup's
        // statements run under the jobs' pool of the storage (`--jobs-memory-mb`), apart from
        // the queries' pool.
        let chains = if self.purged.is_empty() {
            vec![selected]
        } else {
            chains(&selected)
        };
        let outcomes =
            futures::future::join_all(chains.into_iter().map(|chain| self.run_chain(chain))).await;
        let mut outcomes: Vec<_> = outcomes.into_iter().flatten().collect();
        outcomes.sort_by_key(|(spec, _)| ROLLUPS.iter().position(|r| r.name == spec.name));
        let mut reports = Vec::new();
        for (_, result) in outcomes {
            reports.push(result?);
        }
        self.catalog.refresh().await?;
        Ok(reports)
    }

    /// Runs `chain` in order (each rollup's source is the one before it or a table), recording
    /// each run; stops at the first failure.
    async fn run_chain(
        &self,
        chain: Vec<&'static RollupSpec>,
    ) -> Vec<(&'static RollupSpec, Result<RollupReport>)> {
        let mut outcomes = Vec::new();
        // The rows a purge removed from raw tables, then the rollup rows each splice removed:
        // a rollup of a spliced rollup recomputes the groups of those.
        let mut purged_rows = self.purged.clone();
        for spec in chain {
            let started = chrono::Utc::now();
            let purged = purged_rows.iter().find(|p| p.table == spec.source);
            let mut spliced = None;
            let mut result = run_one(&self.catalog, spec, self.rebuild, purged, &mut spliced).await;
            if matches!(&result, Err(e) if e.is_missing_file()) {
                // A purge, retention or vacuum deleted a file of the snapshot this run read:
                // once more, on a fresh one.
                let _ = self.catalog.refresh().await;
                result = run_one(&self.catalog, spec, self.rebuild, purged, &mut spliced).await;
            }
            purged_rows.extend(spliced);
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
            let failed = result.is_err();
            outcomes.push((spec, result));
            if failed {
                break;
            }
        }
        outcomes
    }
}

/// `specs` (in registry order) as chains: a rollup joins the chain of the rollup it reads,
/// any other starts its own.
fn chains(specs: &[&'static RollupSpec]) -> Vec<Vec<&'static RollupSpec>> {
    let mut chains: Vec<Vec<&'static RollupSpec>> = Vec::new();
    for spec in specs {
        match chains
            .iter_mut()
            .find(|c| c.iter().any(|s| s.name == spec.source))
        {
            Some(chain) => chain.push(spec),
            None => chains.push(vec![spec]),
        }
    }
    chains
}

async fn run_one(
    catalog: &Catalog,
    spec: &'static RollupSpec,
    rebuild: bool,
    purged: Option<&PurgedRows>,
    spliced_out: &mut Option<PurgedRows>,
) -> Result<RollupReport> {
    let started = Instant::now();
    let ms = || started.elapsed().as_millis() as u64;
    let snapshot = catalog.refresh().await?;
    let mut report = RollupReport::start(spec, snapshot.version(spec.source));
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
    let plan = plan_run(
        catalog.storage(),
        spec,
        &table,
        &schema,
        rebuild,
        to_version,
    )
    .await?;
    report.from_version = plan.from;
    let dates = match plan.work {
        Work::Nothing => {
            report.elapsed_ms = ms();
            report.version = table.version();
            return Ok(report);
        }
        Work::Days(dates) => Some(dates),
        Work::Everything => None,
    };
    report.full = dates.is_none();
    report.dates = dates.iter().flatten().copied().collect();

    let prepared_ms = ms();
    // The source's files at the version this run computes: what every day's statement scans.
    let entry = snapshot.tables.get(spec.source).ok_or_else(|| {
        EngineError::Internal(format!("{}: source {} not loaded", spec.name, spec.source))
    })?;
    let partition_column = crate::registry::get(spec.source)
        .map_or(strata_schemas::PARTITION_COLUMN, |d| d.partition_column);
    let source = Arc::new(source::SourceFiles::new(
        catalog.storage(),
        spec.source,
        &entry.provider.schema(),
        partition_column,
        &crate::delta::log::live_files(&entry.delta, partition_column)?,
    )?);
    let days = match &dates {
        Some(d) => d.clone(),
        None => source.days(),
    };
    let groups = match (&dates, purged) {
        (Some(days), Some(p)) => {
            let quiet = plan.quiet_before_last;
            purged::subject_groups(spec, plan.from, quiet, to_version, p, days).await?
        }
        _ => None,
    };
    let grouped_ms = ms();
    let columns: String = schema
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect::<Vec<_>>()
        .join(", ");
    let replace = PartitionReplace {
        app_id: spec.app_id(),
        version: to_version as i64,
        replace_where: dates.as_ref().map(dates_predicate),
        new_schema: plan.schema_changed,
    };
    let mut computed_ms = ms();
    if let Some(groups) = &groups {
        // A purge's days: only the subject's groups are computed, and spliced into the
        // stored days in place of their old rows.
        let fresh = |day| vec![purged::fresh_statement(spec, day, &groups[&day], &columns)];
        let sink = DaySink::Collect;
        let fresh = compute(
            &snapshot,
            catalog.runtime(),
            &source,
            &days,
            fresh,
            &schema,
            sink,
        )
        .await?;
        report.rows = fresh.rows;
        computed_ms = ms();
        if let Some((version, removed)) = purged::splice_days(
            catalog.storage(),
            spec,
            &table,
            groups,
            fresh.batches,
            &replace,
        )
        .await?
        {
            report.version = Some(version);
            report.subject_groups_only = true;
            *spliced_out = Some(removed);
        }
    }
    if !report.subject_groups_only {
        let statements = |day: NaiveDate| match &groups {
            Some(g) => purged::day_statements(spec, day, &g[&day], &columns),
            None => vec![spec.sql_for(Some(&BTreeSet::from([day])))],
        };
        // New columns: delta-rs' write path changes the table's schema with the rows, so
        // they are collected for it; otherwise each day's task writes its own files.
        let sink = if plan.schema_changed {
            DaySink::Collect
        } else {
            DaySink::Write(Box::new((table.delta().clone(), table.spec().clone())))
        };
        let computed = compute(
            &snapshot,
            catalog.runtime(),
            &source,
            &days,
            statements,
            &schema,
            sink,
        )
        .await?;
        report.rows = computed.rows;
        computed_ms = ms();
        if plan.schema_changed {
            let mut batches = computed.batches;
            if batches.is_empty() {
                batches.push(RecordBatch::new_empty(schema.clone()));
            }
            report.version =
                commit::replace_partitions(table.delta(), table.spec(), batches, replace).await?;
        } else {
            let partitions: Option<BTreeSet<String>> = dates.as_ref().map(|d| {
                d.iter()
                    .map(|day| day.format("%Y-%m-%d").to_string())
                    .collect()
            });
            report.version = commit::replace_with_files(
                catalog.storage(),
                table.delta(),
                table.spec(),
                partitions.as_ref(),
                computed.adds,
                &replace,
            )
            .await?;
        }
    }
    table.refresh().await?;
    report.elapsed_ms = ms();
    info!(
        rollup = spec.name,
        full = report.full,
        subject_groups_only = report.subject_groups_only,
        days = report.dates.len(),
        rows = report.rows,
        prepared_ms,
        grouped_ms,
        computed_ms,
        elapsed_ms = report.elapsed_ms,
        "rollup committed"
    );
    Ok(report)
}

/// What a run recomputes.
enum Work {
    /// Nothing: the source has not changed, or only by commits without files (ingest
    /// advancing offsets only).
    Nothing,
    /// These days.
    Days(BTreeSet<NaiveDate>),
    /// Every day: a first run, a rebuild, new columns, or a log that cannot say which days.
    Everything,
}

/// What a run starts from and must do.
struct Plan {
    /// The source version the previous run consumed (None: never run).
    from: Option<u64>,
    /// The rollup's SQL changed its columns: it is rebuilt with the new schema.
    schema_changed: bool,
    /// Of the source commits this run consumes, all but the last changed no rows (a purge's
    /// tombstone marker before its commit): what a purge's run of the subject's groups needs.
    quiet_before_last: bool,
    work: Work,
}

/// Reads the source version the rollup last consumed from its own `txn`, and the days whose
/// files changed in the source since.
async fn plan_run(
    storage: &Storage,
    spec: &RollupSpec,
    table: &EventTable,
    schema: &SchemaRef,
    rebuild: bool,
    to_version: u64,
) -> Result<Plan> {
    let app_id = spec.app_id();
    let from = table.txn_versions(std::slice::from_ref(&app_id)).await?[&app_id];
    let schema_changed = columns_changed(table, schema)?;
    if schema_changed {
        info!(
            rollup = spec.name,
            "columns changed; rebuilding with the new schema"
        );
    }
    let mut quiet_before_last = false;
    let work = match (rebuild || schema_changed, from) {
        (false, Some(v)) if v as u64 == to_version => Work::Nothing,
        (false, Some(v)) if (v as u64) < to_version => {
            // The last commit apart from the ones before it (each commit file read once): a
            // purge's run needs to know that only the last one changed rows.
            let first = v as u64 + 1;
            let before = if first < to_version {
                changed_dates(storage, spec.source, first, to_version - 1).await?
            } else {
                Some(BTreeSet::new())
            };
            let last = match before {
                Some(_) => changed_dates(storage, spec.source, to_version, to_version).await?,
                None => None,
            };
            match (before, last) {
                (Some(before), Some(last)) => {
                    quiet_before_last = before.is_empty();
                    let dates: BTreeSet<NaiveDate> = before.into_iter().chain(last).collect();
                    if dates.is_empty() {
                        Work::Nothing
                    } else {
                        Work::Days(dates)
                    }
                }
                _ => Work::Everything,
            }
        }
        _ => Work::Everything,
    };
    Ok(Plan {
        from: from.map(|v| v as u64),
        schema_changed,
        quiet_before_last,
        work,
    })
}

/// Whether the rollup's columns differ from the table's. Compared as sets: Delta keeps
/// partition columns last.
fn columns_changed(table: &EventTable, schema: &SchemaRef) -> Result<bool> {
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
    Ok(stored != wanted)
}

/// Where [`compute`] puts each day's rows.
#[derive(Clone)]
enum DaySink {
    /// Kept in memory and returned.
    Collect,
    /// Written at once as the day's files of this table (returned as add actions).
    Write(Box<(deltalake::DeltaTable, crate::TableSpec)>),
}

/// What [`compute`] made of the days.
#[derive(Default)]
struct Computed {
    /// The rows, in the days' order ([`DaySink::Collect`]).
    batches: Vec<RecordBatch>,
    /// The files written ([`DaySink::Write`]).
    adds: Vec<deltalake::kernel::Add>,
    rows: usize,
}

/// Rows per batch in a rollup day's statements. A day of the per-item rollup groups ~530k rows
/// into ~300k groups, and pays the grouping's work per batch (hashing, accumulator calls, the
/// Parquet reader's buffers) once a batch: at DataFusion's 8,192 rows its rebuild took 6%
/// longer and 4% more CPU than at 64k; the other rollups see no difference (docs/benchmarks.md,
/// "2026-12-03 (night)"). A batch stays small beside a day's hash table.
const ROLLUP_BATCH_ROWS: usize = 65_536;

/// The rollup's rows for `days`, in `schema`: the rows of `statements(day)` for each day,
/// collected or written as `sink` says.
///
/// Days never share a group, so each day is its own statements on one partition: a single
/// aggregation with a hash table of that day's groups, no repartitioning and no merging of
/// partial states (which for the per-item rollup carried every group's visitor hashes across
/// partitions twice). As many days run at once as there are cores, each on its own task, which
/// also writes the day's file as soon as it is computed (so that encoding one day overlaps
/// computing the next, and no day waits in memory for the others); fewer days than cores (an
/// incremental run of today) share the cores out as partitions.
async fn compute(
    snapshot: &Snapshot,
    runtime: &RuntimeEnv,
    source: &Arc<source::SourceFiles>,
    days: &BTreeSet<NaiveDate>,
    statements: impl Fn(NaiveDate) -> Vec<String>,
    schema: &SchemaRef,
    sink: DaySink,
) -> Result<Computed> {
    let cores = strata_schemas::cores();
    let limits = QueryLimits {
        target_partitions: (cores / days.len().max(1)).max(1),
        batch_rows: Some(ROLLUP_BATCH_ROWS),
        ..Default::default()
    };
    let ctx = snapshot.context(runtime, &limits)?;
    ctx.deregister_table(source.name())?;
    ctx.register_table(source.name(), source.clone())?;
    // Collected first: a lazy iterator of futures is not Send across the await below.
    let tasks: Vec<_> = days
        .iter()
        .map(|&day| {
            let ctx = ctx.clone();
            let sqls = statements(day);
            let (schema, sink) = (schema.clone(), sink.clone());
            async move {
                tokio::spawn(async move {
                    let mut batches = Vec::new();
                    for sql in sqls {
                        let df = ctx.sql(&sql).await?;
                        for batch in df.collect().await.map_err(EngineError::from_execution)? {
                            batches.push(normalize(&batch, &schema)?);
                        }
                    }
                    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
                    let mut adds = Vec::new();
                    if let DaySink::Write(target) = &sink {
                        if rows > 0 {
                            let (delta, spec) = target.as_ref();
                            let mut writer = RecordBatchWriter::for_table(delta)?
                                .with_writer_properties(writer_properties(spec, rows));
                            for batch in batches.drain(..) {
                                writer.write(batch).await?;
                            }
                            adds = writer.flush().await?;
                        }
                    }
                    Ok::<_, EngineError>((day, batches, adds, rows))
                })
                .await
                .map_err(|e| EngineError::Internal(format!("a rollup day's task failed: {e}")))?
            }
        })
        .collect();
    let mut per_day: Vec<_> = futures::stream::iter(tasks)
        .buffer_unordered(cores)
        .try_collect()
        .await?;
    per_day.sort_by_key(|(day, ..)| *day);
    let mut out = Computed::default();
    for (_, batches, adds, rows) in per_day {
        out.batches.extend(batches);
        out.adds.extend(adds);
        out.rows += rows;
    }
    Ok(out)
}

/// The rollup's schema as a Delta table can hold it (view types made plain).
async fn output_schema(ctx: &SessionContext, spec: &RollupSpec) -> Result<SchemaRef> {
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
    spec: &'static RollupSpec,
    schema: SchemaRef,
) -> Result<EventTable> {
    let mut table = EventTable::open_or_create(storage, spec.table().spec_with(schema)).await?;
    // The rollup's run is its table's writer.
    table.align_stats_columns().await?;
    Ok(table)
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
