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

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Date32Type};
use chrono::NaiveDate;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use crate::delta::log::changed_dates;
use crate::literal::text_literal;
use crate::registry::RollupSpec;
use crate::{sketch, EngineError, Result, Storage};

/// The rows a purge removed from a source table in its commit `version`.
#[derive(Debug, Clone)]
pub struct PurgedRows {
    pub table: String,
    pub version: u64,
    /// In the table's schema (with `event_date`).
    pub rows: Vec<RecordBatch>,
}

/// Per day of `days`, the predicate on the rollup's group columns that selects the groups
/// `purged`'s rows were in; None when this run cannot be limited to them: the rollup has no
/// group columns (a rollup of a rollup), the run goes past the purge's commit, or a commit
/// between the one the rollup consumed and the purge's changed rows.
pub(super) async fn group_predicates(
    storage: &Storage,
    spec: &RollupSpec,
    consumed: Option<u64>,
    to_version: u64,
    purged: &PurgedRows,
    days: &BTreeSet<NaiveDate>,
) -> Result<Option<BTreeMap<NaiveDate, String>>> {
    let Some(consumed) = consumed else {
        return Ok(None);
    };
    if spec.group_columns.is_empty()
        || purged.table != spec.source
        || purged.version != to_version
        || purged.rows.is_empty()
        || consumed >= to_version
    {
        return Ok(None);
    }
    if consumed + 1 < to_version {
        match changed_dates(storage, spec.source, consumed + 1, to_version - 1).await? {
            Some(changed) if changed.is_empty() => {}
            _ => return Ok(None),
        }
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
    let mut per_day: BTreeMap<NaiveDate, Vec<String>> = BTreeMap::new();
    for batch in &groups {
        for (day, group) in group_conditions(spec, batch)? {
            per_day.entry(day).or_default().push(group);
        }
    }
    // Every day the commit changed holds rows of the subject; a day without a group would
    // mean rows the rollup does not see: recompute the days whole.
    if days.iter().any(|d| !per_day.contains_key(d)) {
        return Ok(None);
    }
    Ok(Some(
        per_day
            .into_iter()
            .map(|(day, groups)| (day, groups.join(" OR ")))
            .collect(),
    ))
}

/// Each row of `batch` (rollup rows) as its day and `(col = value AND ...)` over the rollup's
/// group columns.
fn group_conditions(spec: &RollupSpec, batch: &RecordBatch) -> Result<Vec<(NaiveDate, String)>> {
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
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("the epoch");
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let day = epoch
            .checked_add_signed(chrono::TimeDelta::days(i64::from(dates.value(row))))
            .ok_or_else(|| EngineError::Internal(format!("{}: date out of range", spec.name)))?;
        let conditions: Vec<String> = spec
            .group_columns
            .iter()
            .zip(&keys)
            .map(|(name, values)| {
                if values.is_null(row) {
                    format!("\"{name}\" IS NULL")
                } else {
                    format!("\"{name}\" = {}", text_literal(values.value(row)))
                }
            })
            .collect();
        out.push((day, format!("({})", conditions.join(" AND "))));
    }
    Ok(out)
}

/// The two statements that make day `day` of the rollup: its stored rows outside the groups
/// `groups` selects, and its SQL over the source filtered to those groups; `columns` is the
/// rollup's column list in its schema's order.
pub(super) fn day_statements(
    spec: &RollupSpec,
    day: NaiveDate,
    groups: &str,
    columns: &str,
) -> Vec<String> {
    let date = crate::literal::date_literal(day);
    vec![
        format!(
            "SELECT {columns} FROM \"{}\" WHERE event_date = {date} AND NOT ({groups})",
            spec.name
        ),
        format!(
            "SELECT {columns} FROM (\n{}\n) AS fresh WHERE {groups}",
            spec.sql_for(Some(&BTreeSet::from([day])))
        ),
    ]
}
