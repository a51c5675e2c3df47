//! A purge's rollup days, recomputed for the subject's groups only.
//!
//! ```text
//! purge commit v on link_clicks (the subject's rows removed from days D)
//!   --the subject's rows through the rollup's own SQL--> the groups they were in, per day
//!   --per day d in D--> rollup rows of d outside those groups (kept as stored)
//!                       + the rollup's SQL over d, filtered to those groups (recomputed)
//!   --replace the partitions D, txn = v--> rollup
//! ```
//!
//! Exact because nothing else changed: the run has consumed every source commit before the
//! purge's but commits that changed no rows (the purge's tombstone marker), so a group the
//! subject was not in holds the same rows as when its stored row was computed. Any other
//! change in between (ingest, a compaction's rewrite, another purge) and the days are
//! recomputed whole, as in any run. The filter on the group columns of the rollup's output
//! reaches the source scan (DataFusion pushes it below the grouping), so a day costs a
//! filtered scan of the source instead of its whole grouping.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type};
use chrono::NaiveDate;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use deltalake::kernel::{Add, Remove};
use deltalake::writer::{DeltaWriter, RecordBatchWriter};
use futures::{StreamExt, TryStreamExt};

use crate::delta::commit::{self, PartitionReplace};
use crate::delta::layout;
use crate::delta::log::{self, LiveFile};
use crate::literal::text_literal;
use crate::registry::{RollupSpec, TableSpec};
use crate::table::EventTable;
use crate::writer::{splice, writer_properties};
use crate::{sketch, EngineError, Result, Storage};

/// The rows a purge removed from a source table in its commit `version`.
#[derive(Debug, Clone)]
pub struct PurgedRows {
    pub table: String,
    pub version: u64,
    /// In the table's schema (with `event_date`).
    pub rows: Vec<RecordBatch>,
}

/// The groups of a rollup day that a purged subject's rows were in.
#[derive(Debug, Clone, Default)]
pub(super) struct DayGroups {
    /// Each group's values of the rollup's group columns (None: null), in the order of
    /// [`RollupSpec::group_columns`].
    keys: Vec<Vec<Option<String>>>,
}

impl DayGroups {
    /// `("col" = 'v' AND ...) OR ...`: the predicate on the group columns that selects them.
    pub fn predicate(&self, spec: &RollupSpec) -> String {
        self.keys
            .iter()
            .map(|key| {
                let conditions: Vec<String> = spec
                    .group_columns
                    .iter()
                    .zip(key)
                    .map(|(name, value)| match value {
                        None => format!("\"{name}\" IS NULL"),
                        Some(v) => format!("\"{name}\" = {}", text_literal(v)),
                    })
                    .collect();
                format!("({})", conditions.join(" AND "))
            })
            .collect::<Vec<_>>()
            .join(" OR ")
    }

    /// Which rows of `batch` (rollup rows holding at least the group columns) are in these
    /// groups: the same test as [`DayGroups::predicate`], on values read from a stored file.
    pub fn matches(&self, spec: &RollupSpec, batch: &RecordBatch) -> Result<BooleanArray> {
        let columns = spec
            .group_columns
            .iter()
            .map(|c| {
                let column = batch.column_by_name(c).ok_or_else(|| {
                    EngineError::Internal(format!("{}: no column {c}", spec.name))
                })?;
                crate::text::utf8(column, c)
            })
            .collect::<Result<Vec<_>>>()?;
        fn value(c: &arrow::array::StringArray, row: usize) -> Option<&str> {
            (!c.is_null(row)).then(|| c.value(row))
        }
        Ok((0..batch.num_rows())
            .map(|row| {
                Some(self.keys.iter().any(|key| {
                    key.iter()
                        .zip(&columns)
                        .all(|(want, column)| want.as_deref() == value(column, row))
                }))
            })
            .collect())
    }
}

/// Per day of `days`, the rollup groups `purged`'s rows were in; None when this run cannot be
/// limited to them: the rollup has no group columns, the run goes past the purge's commit (or,
/// for a rollup of a rollup, its source's splice), or a commit between the one the rollup
/// consumed and that one changed rows (`quiet_before_last` false: the run's plan read those
/// commits).
pub(super) async fn subject_groups(
    spec: &RollupSpec,
    consumed: Option<u64>,
    quiet_before_last: bool,
    to_version: u64,
    purged: &PurgedRows,
    days: &BTreeSet<NaiveDate>,
) -> Result<Option<BTreeMap<NaiveDate, DayGroups>>> {
    let Some(consumed) = consumed else {
        return Ok(None);
    };
    if spec.group_columns.is_empty()
        || purged.table != spec.source
        || purged.version != to_version
        || purged.rows.is_empty()
        || consumed >= to_version
        || !quiet_before_last
    {
        return Ok(None);
    }
    // The subject's rows through the rollup's own SQL: their groups, keyed as the rollup keys
    // them (its coalesces and all).
    let ctx = SessionContext::new();
    sketch::register(&ctx);
    let rows = MemTable::try_new(purged.rows[0].schema(), vec![purged.rows.clone()])?;
    ctx.register_table(spec.source, Arc::new(rows))?;
    let groups = ctx
        .sql(&spec.sql_for(Some(days)))
        .await?
        .collect()
        .await
        .map_err(EngineError::from_execution)?;
    let mut per_day: BTreeMap<NaiveDate, DayGroups> = BTreeMap::new();
    for batch in &groups {
        for (day, key) in group_keys(spec, batch)? {
            per_day.entry(day).or_default().keys.push(key);
        }
    }
    // Every day the commit changed holds rows of the subject; a day without a group would
    // mean rows the rollup does not see: recompute the days whole.
    if days.iter().any(|d| !per_day.contains_key(d)) {
        return Ok(None);
    }
    Ok(Some(per_day))
}

/// Each row of `batch` (rollup rows) as its day and its values of the rollup's group columns.
fn group_keys(
    spec: &RollupSpec,
    batch: &RecordBatch,
) -> Result<Vec<(NaiveDate, Vec<Option<String>>)>> {
    let column = |name: &str| {
        batch
            .column_by_name(name)
            .ok_or_else(|| EngineError::Internal(format!("{}: no column {name}", spec.name)))
    };
    let dates = arrow::compute::cast(column("event_date")?, &DataType::Date32)?;
    let dates = dates.as_primitive::<Date32Type>();
    let keys = spec
        .group_columns
        .iter()
        .map(|c| crate::text::utf8(column(c)?, c))
        .collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let day = Date32Type::to_naive_date_opt(dates.value(row))
            .ok_or_else(|| EngineError::Internal(format!("{}: date out of range", spec.name)))?;
        let key = keys
            .iter()
            .map(|values| (!values.is_null(row)).then(|| values.value(row).to_string()))
            .collect();
        out.push((day, key));
    }
    Ok(out)
}

/// The two statements that make day `day` of the rollup whole: its stored rows outside
/// `groups`, and [`fresh_statement`]; `columns` is the rollup's column list in its schema's
/// order.
pub(super) fn day_statements(
    spec: &RollupSpec,
    day: NaiveDate,
    groups: &DayGroups,
    columns: &str,
) -> Vec<String> {
    let date = crate::literal::date_literal(day);
    vec![
        format!(
            "SELECT {columns} FROM \"{}\" WHERE event_date = {date} AND NOT ({})",
            spec.name,
            groups.predicate(spec)
        ),
        fresh_statement(spec, day, groups, columns),
    ]
}

/// The rollup's SQL over day `day` of the source, filtered to `groups`: their rows recomputed
/// (a group only the subject made is gone).
pub(super) fn fresh_statement(
    spec: &RollupSpec,
    day: NaiveDate,
    groups: &DayGroups,
    columns: &str,
) -> String {
    let predicate = groups.predicate(spec);
    let mut scope = super::dates_predicate(&BTreeSet::from([day]));
    if spec.groups_in_source {
        scope = format!("{scope} AND ({predicate})");
    }
    format!(
        "SELECT {columns} FROM (\n{}\n) AS fresh WHERE {predicate}",
        spec.sql.replace("{dates}", &scope),
    )
}

/// The days of rollup `table` in `groups` with those groups' rows replaced by `fresh` (the
/// groups recomputed), in one commit recording `replace`'s `txn`: each stored file of those
/// days that holds one of the groups is spliced without their rows (only its row groups that
/// held them are decoded and encoded again, see [`crate::writer::splice`]; its other rows stay
/// as they are encoded), and `fresh` is written as new files. None when the commit lost a
/// conflict (nothing committed): the caller replaces the days whole. With the new version
/// come the rollup rows the commit removed (with their day): the rows of this rollup a
/// rollup of it recomputes the groups of.
pub(super) async fn splice_days(
    storage: &Storage,
    spec: &'static RollupSpec,
    table: &EventTable,
    groups: &BTreeMap<NaiveDate, DayGroups>,
    fresh: Vec<RecordBatch>,
    replace: &PartitionReplace,
) -> Result<Option<(u64, PurgedRows)>> {
    let delta = table.delta();
    let tspec = table.spec().clone();
    // A spliced file keeps the bounds of the statistics its add action carries.
    let stats = log::file_stats(delta)?;
    let mut tasks = Vec::new();
    for file in log::live_files(delta, tspec.partition_column)? {
        let Some(day) = file.day() else {
            continue;
        };
        let Some(day_groups) = groups.get(&day).cloned() else {
            continue;
        };
        let old_stats = stats.get(&file.path).cloned().flatten();
        let (storage, tspec) = (storage.clone(), tspec.clone());
        tasks.push(async move {
            tokio::spawn(async move {
                splice_file(&storage, spec, &tspec, file, &day_groups, old_stats).await
            })
            .await
            .map_err(|e| EngineError::Internal(format!("a rollup splice task failed: {e}")))?
        });
    }
    let spliced: Vec<Option<FileSplice>> = futures::stream::iter(tasks)
        .buffer_unordered(strata_schemas::cores())
        .try_collect()
        .await?;
    let mut removes = Vec::new();
    let mut adds = Vec::new();
    let mut removed_rows = Vec::new();
    let mut encoded = 0;
    for file in spliced.into_iter().flatten() {
        removes.push(file.remove);
        adds.extend(file.add);
        removed_rows.extend(file.removed);
        encoded += file.row_groups_encoded;
    }
    let fresh_rows: usize = fresh.iter().map(RecordBatch::num_rows).sum();
    if fresh_rows > 0 {
        let mut writer = RecordBatchWriter::for_table(delta)?
            .with_writer_properties(writer_properties(&tspec, fresh_rows));
        for batch in fresh {
            writer.write(batch).await?;
        }
        adds.extend(writer.flush().await?);
    }
    tracing::debug!(
        rollup = spec.name,
        files_spliced = removes.len(),
        row_groups_encoded = encoded,
        fresh_rows,
        "rollup days spliced"
    );
    let committed =
        commit::splice_partitions(storage, delta, &tspec, removes, adds, replace).await?;
    Ok(committed.map(|version| {
        let rows = PurgedRows {
            table: spec.name.into(),
            version,
            rows: removed_rows,
        };
        (version, rows)
    }))
}

/// One rollup file spliced.
struct FileSplice {
    remove: Remove,
    /// The file without the groups' rows (None when none was left).
    add: Option<Add>,
    /// The rows removed, in the table's schema (with their day).
    removed: Vec<RecordBatch>,
    row_groups_encoded: usize,
}

/// Rollup file `file` without the rows of `groups`; None when it holds none of them.
async fn splice_file(
    storage: &Storage,
    spec: &RollupSpec,
    tspec: &TableSpec,
    file: LiveFile,
    groups: &DayGroups,
    old_stats: Option<String>,
) -> Result<Option<FileSplice>> {
    let bytes = storage
        .read(&layout::table_file(tspec.name, &file.path))
        .await?;
    let matches = |batch: &RecordBatch| groups.matches(spec, batch);
    let candidates = splice::row_groups_with(&bytes, spec.group_columns, matches)?;
    if candidates.is_empty() {
        return Ok(None);
    }
    let rows = usize::try_from(file.rows.unwrap_or(0)).unwrap_or(0);
    let spliced =
        splice::without_rows(&bytes, &candidates, writer_properties(tspec, rows), matches)?;
    if spliced.removed_rows() == 0 {
        return Ok(None);
    }
    let partition = file.partition.clone().unwrap_or_default();
    let add = match spliced.file {
        Some((bytes, metadata)) => Some(
            splice::SplicedFile {
                partition: &partition,
                old_stats: old_stats.as_deref(),
                rows: spliced.rows,
                bytes,
                metadata: &metadata,
            }
            .store(storage.store(), tspec)
            .await?,
        ),
        None => None,
    };
    let day = file.day().ok_or_else(|| {
        EngineError::Internal(format!("{}: bad partition value {partition}", file.path))
    })?;
    let days = Date32Type::from_naive_date(day);
    let removed = spliced
        .removed
        .into_iter()
        .map(|b| splice::with_partition(b, tspec, days))
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(FileSplice {
        remove: commit::removal_of(&file, tspec.partition_column, true),
        add,
        removed,
        row_groups_encoded: spliced.row_groups_encoded,
    }))
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;
    use crate::registry::ROLLUPS;

    /// What a stored file's rows match is what the fresh statement's predicate selects, nulls
    /// included: the rows a splice removes are the rows the recomputation puts back.
    #[tokio::test]
    async fn stored_rows_match_exactly_what_the_predicate_selects() {
        let spec = ROLLUPS.iter().find(|r| r.name == "ai_usage_daily").unwrap();
        let text = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v));
        let schema = Arc::new(Schema::new(vec![
            Field::new("feature", DataType::Utf8, true),
            Field::new("provider", DataType::Utf8, true),
            Field::new("model", DataType::Utf8, true),
            Field::new("n", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                text(vec![Some("chat"), Some("chat"), None, None, Some("it's")]),
                text(vec![Some("p"), Some("p"), Some("p"), Some("p"), Some("p")]),
                text(vec![Some("m"), None, Some("m"), Some("x"), None]),
                Arc::new(Int64Array::from(vec![0, 1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let groups = DayGroups {
            keys: vec![
                vec![Some("chat".into()), Some("p".into()), None],
                vec![None, Some("p".into()), Some("m".into())],
                vec![Some("it's".into()), Some("p".into()), None],
            ],
        };
        let matched: Vec<bool> = groups
            .matches(spec, &batch)
            .unwrap()
            .iter()
            .flatten()
            .collect();
        assert_eq!(matched, [false, true, true, false, true]);

        let ctx = SessionContext::new();
        ctx.register_batch("t", batch).unwrap();
        let selected = ctx
            .sql(&format!(
                "SELECT n FROM t WHERE {} ORDER BY n",
                groups.predicate(spec)
            ))
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let n: Vec<i64> = selected
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<arrow::datatypes::Int64Type>()
                    .values()
                    .to_vec()
            })
            .collect();
        assert_eq!(n, [1, 2, 4]);
    }
}
