//! Answering a panel: [`PreparedPanel`] binds a request once on one snapshot (statement,
//! table versions, ETag and cache key all from that one binding), then answers from the cache
//! or runs the statement (and, when it cannot prove its answer, the fallback).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{Array, BooleanArray, RecordBatch};
use arrow::datatypes::SchemaRef;
use chrono::Utc;
use datafusion::prelude::SessionContext;
use sha2::{Digest, Sha256};

use super::params::PanelParams;
use super::spec::Panel;
use crate::cache::{CachedResult, ResultCache};
use crate::catalog::{QueryLimits, Snapshot};
use crate::readonly::plan_read_only;
use crate::{Catalog, EngineError, Result};

/// The column by which a panel's first statement says its answer is proven.
pub(super) const PROVEN_COLUMN: &str = "proven";

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

/// One panel request bound on one snapshot. Its ETag answers `If-None-Match` without running
/// anything, and [`PreparedPanel::run`] answers with that same ETag, from the same snapshot.
pub struct PreparedPanel<'a> {
    panel: &'a Panel,
    cache: &'a ResultCache,
    snapshot: Arc<Snapshot>,
    /// The statement with the values bound and `{current}` as of `snapshot`.
    statement: String,
    fallback: Option<String>,
    versions: Vec<String>,
    etag: String,
    /// None when the panel's answers are not cached.
    cache_key: Option<String>,
}

/// The columns and rows of an answer, and whether the fallback gave them.
struct Answer {
    schema: SchemaRef,
    batches: Arc<Vec<RecordBatch>>,
    fallback: bool,
}

impl<'a> PreparedPanel<'a> {
    pub(super) fn new(
        panel: &'a Panel,
        params: &PanelParams,
        cache: &'a ResultCache,
        snapshot: Arc<Snapshot>,
    ) -> Self {
        let statement = panel.render(params, panel.is_current(&snapshot));
        let versions = panel.versions(&snapshot);
        let etag = etag_of(panel, &statement, &versions);
        let cache_key = panel
            .cacheable
            .then(|| format!("panel\n{statement}\n{}", versions.join(",")));
        Self {
            panel,
            cache,
            fallback: panel.render_fallback(params),
            snapshot,
            statement,
            versions,
            etag,
            cache_key,
        }
    }

    /// The ETag the answer carries.
    pub fn etag(&self) -> &str {
        &self.etag
    }

    /// Answers from the cache, or runs the statement on the snapshot and caches the answer.
    pub async fn run(self, catalog: &Catalog, limits: &QueryLimits) -> Result<PanelResult> {
        let started = Instant::now();
        let hit = self.cache_key.as_ref().and_then(|k| self.cache.get(k));
        let cached = hit.is_some();
        let answer = match hit {
            Some(hit) => Answer {
                schema: hit.schema.clone(),
                batches: hit.batches.clone(),
                fallback: hit.fallback,
            },
            None => {
                let answer = self.compute(catalog, limits).await?;
                if let Some(key) = &self.cache_key {
                    self.cache.insert(
                        key.clone(),
                        CachedResult::new(answer.schema.clone(), answer.batches.clone())
                            .with_fallback(answer.fallback),
                    );
                }
                answer
            }
        };
        Ok(PanelResult {
            panel: self.panel.name,
            schema: answer.schema,
            batches: answer.batches,
            versions: self.versions,
            cached,
            fallback: answer.fallback,
            elapsed: started.elapsed(),
            etag: self.etag,
        })
    }

    /// Runs the statement, and the fallback when the statement cannot prove its answer.
    async fn compute(&self, catalog: &Catalog, limits: &QueryLimits) -> Result<Answer> {
        let ctx = self.snapshot.context(catalog.runtime(), limits)?;
        let known: BTreeSet<String> = self.snapshot.tables.keys().cloned().collect();
        let name = self.panel.name;
        let (mut schema, mut batches) = collect(&ctx, &known, name, &self.statement).await?;
        let mut fallback = false;
        if let Some(full) = &self.fallback {
            match proven(&schema, &batches) {
                Some(answer) => (schema, batches) = answer?,
                None => {
                    fallback = true;
                    (schema, batches) = collect(&ctx, &known, name, full).await?;
                }
            }
        }
        Ok(Answer {
            schema,
            batches: Arc::new(batches),
            fallback,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
