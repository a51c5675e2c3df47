use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::ParamValues;
use datafusion::prelude::{DataFrame, SessionContext};

use crate::catalog::{QueryLimits, Snapshot};
use crate::readonly::{is_deterministic, is_explain, plan_read_only};
use crate::redact::Redactor;
use crate::{Catalog, EngineError, Result, Storage};

/// One read-only statement planned on one snapshot of the catalog.
pub struct PlannedQuery {
    pub snapshot: Arc<Snapshot>,
    pub ctx: SessionContext,
    pub df: DataFrame,
    /// `table@version` of every table it reads: the cache key's and the ETag's part.
    pub versions: Vec<String>,
    /// Whether its answer may be cached by `versions`: it reads at least one table, only
    /// versioned tables of the catalog (not `strata_tables`, `information_schema` or a
    /// generator), and calls only deterministic functions (no `now()`, `random()`).
    pub cacheable: bool,
    /// For EXPLAIN: strips the storage location from the plan text it returns.
    pub redactor: Option<Redactor>,
}

impl PlannedQuery {
    pub async fn plan(
        catalog: &Catalog,
        sql: &str,
        limits: &QueryLimits,
        snapshot: Arc<Snapshot>,
    ) -> Result<Self> {
        let ctx = snapshot.context(catalog.runtime(), limits)?;
        let known = snapshot.tables.keys().cloned().collect();
        let (df, read) = plan_read_only(&ctx, sql, &known).await?;
        let versions = snapshot.versions_of(read.iter().map(String::as_str));
        let plan = df.logical_plan();
        let explain = is_explain(plan);
        let cacheable = !explain
            && !read.is_empty()
            && read.iter().all(|t| snapshot.tables.contains_key(t))
            && is_deterministic(plan);
        let redactor = explain.then(|| Redactor::for_root(catalog.storage().root()));
        Ok(Self {
            snapshot,
            ctx,
            df,
            versions,
            cacheable,
            redactor,
        })
    }

    /// Binds the values of `$1`, `$2`, ... (a prepared statement's parameters). A value of
    /// the wrong type or a missing one is the caller's error.
    pub fn bind(mut self, params: ParamValues) -> Result<Self> {
        self.df = self
            .df
            .with_param_values(params)
            .map_err(|e| EngineError::Param(format!("the statement's parameters: {e}")))?;
        Ok(self)
    }

    /// The type of each parameter of the statement, `$1` first (None where the plan does not
    /// tell); empty when it has none. Parameters must be numbered `$1` to `$n`.
    pub fn parameter_types(&self) -> Result<Vec<Option<DataType>>> {
        let found = self
            .df
            .logical_plan()
            .get_parameter_types()
            .map_err(|e| EngineError::Sql(e.to_string()))?;
        let mut out = vec![None; found.len()];
        for (id, ty) in found {
            let n = id
                .strip_prefix('$')
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| (1..=out.len()).contains(n))
                .ok_or_else(|| {
                    EngineError::Sql(format!(
                        "parameter `{id}`: number the parameters $1 to ${}",
                        out.len()
                    ))
                })?;
            out[n - 1] = ty;
        }
        Ok(out)
    }

    pub fn schema(&self) -> SchemaRef {
        Arc::new(self.df.schema().as_arrow().clone())
    }

    /// The result cache's key for the answer of `sql` (the text this was planned from): the
    /// statement and the versions it read; None when the answer bypasses the cache.
    pub fn cache_key(&self, sql: &str) -> Option<String> {
        self.cacheable
            .then(|| format!("sql\n{sql}\n{}", self.versions.join(",")))
    }
}

/// The first value of the first column as an integer (a `count(*)` and the like); None when
/// the result is empty, null or not a number.
pub fn scalar_i64(batches: &[RecordBatch]) -> Option<i64> {
    let batch = batches.iter().find(|b| b.num_rows() > 0)?;
    let col = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Int64).ok()?;
    let col = col.as_any().downcast_ref::<arrow::array::Int64Array>()?;
    arrow::array::Array::is_valid(col, 0).then(|| col.value(0))
}

/// The analyst's session of `strata sql`: every table under the root, read-only.
pub struct SqlSession {
    catalog: Arc<Catalog>,
}

impl SqlSession {
    pub async fn open(storage: &Storage) -> Result<Self> {
        Ok(Self {
            catalog: Catalog::open(storage).await?,
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    pub fn tables(&self) -> Vec<String> {
        self.catalog.snapshot().tables.keys().cloned().collect()
    }

    /// Picks up commits made since the last statement.
    pub async fn refresh(&self) -> Result<()> {
        self.catalog.refresh().await.map(|_| ())
    }

    /// Runs one read-only statement and returns its single integer ([`scalar_i64`]).
    pub async fn query_i64(&self, sql: &str) -> Result<Option<i64>> {
        Ok(scalar_i64(&self.query(sql).await?.1))
    }

    /// Plans and runs one read-only statement, collecting the result.
    pub async fn query(&self, sql: &str) -> Result<(SchemaRef, Vec<RecordBatch>)> {
        let q = PlannedQuery::plan(
            &self.catalog,
            sql,
            &QueryLimits::default(),
            self.catalog.snapshot(),
        )
        .await?;
        let schema = q.schema();
        let batches = q.df.collect().await.map_err(EngineError::from_execution)?;
        Ok((schema, batches))
    }
}
