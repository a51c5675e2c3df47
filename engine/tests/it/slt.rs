use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::DataType;
use arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{DBOutput, DefaultColumnType};
use strata_engine::{Catalog, Panels, QueryLimits, ResultCache, SqlSession};

use crate::support::fixture;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DbError(String);

/// Runs SQL read-only over the fixture, and `PANEL name k=v ...` through the panel registry.
/// `columns=a,b` (not a panel parameter) keeps only those columns of a panel's answer, for
/// panels whose other columns depend on the clock.
struct StrataDb {
    catalog: Arc<Catalog>,
    session: Arc<SqlSession>,
    panels: Arc<Panels>,
}

#[async_trait::async_trait]
impl sqllogictest::AsyncDB for StrataDb {
    type Error = DbError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, DbError> {
        let err = |e: strata_engine::EngineError| DbError(e.to_string());
        let batches: Vec<RecordBatch> = if let Some(rest) = sql.trim().strip_prefix("PANEL ") {
            let mut words = rest.split_whitespace();
            let name = words.next().unwrap_or_default();
            let mut pairs: Vec<(String, String)> = words
                .map(|w| {
                    let (k, v) = w.split_once('=').expect("PANEL params are k=v");
                    (k.to_string(), v.to_string())
                })
                .collect();
            let columns: Option<Vec<String>> = pairs
                .iter()
                .position(|(k, _)| k == "columns")
                .map(|at| pairs.remove(at).1.split(',').map(String::from).collect());
            let params = self.panels.parse_params(name, &pairs).map_err(err)?;
            let r = self
                .panels
                .run(
                    &self.catalog,
                    name,
                    &params,
                    &QueryLimits::default(),
                    Duration::ZERO,
                )
                .await
                .map_err(err)?;
            match columns {
                None => r.batches.as_ref().clone(),
                Some(names) => {
                    let at: Vec<usize> = names
                        .iter()
                        .map(|n| r.schema.index_of(n).expect("a column of the panel"))
                        .collect();
                    r.batches.iter().map(|b| b.project(&at).unwrap()).collect()
                }
            }
        } else {
            self.session.query(sql).await.map_err(err)?.1
        };
        Ok(to_output(&batches))
    }

    async fn shutdown(&mut self) {}
}

fn to_output(batches: &[RecordBatch]) -> DBOutput<DefaultColumnType> {
    let Some(first) = batches.first() else {
        return DBOutput::Rows {
            types: vec![],
            rows: vec![],
        };
    };
    let types = first
        .schema()
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            t if t.is_integer() => DefaultColumnType::Integer,
            DataType::Float16
            | DataType::Float32
            | DataType::Float64
            | DataType::Decimal128(..) => DefaultColumnType::FloatingPoint,
            _ => DefaultColumnType::Text,
        })
        .collect();
    let opts = FormatOptions::default().with_null("NULL");
    let mut rows = vec![];
    for b in batches {
        let fmts: Vec<_> = b
            .columns()
            .iter()
            .map(|c| ArrayFormatter::try_new(c.as_ref(), &opts).unwrap())
            .collect();
        for r in 0..b.num_rows() {
            rows.push(fmts.iter().map(|f| f.value(r).to_string()).collect());
        }
    }
    DBOutput::Rows { types, rows }
}

fn slt_files() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "slt"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollups_and_panels_mean_what_the_slt_files_say() {
    let fx = fixture().await;
    let session = Arc::new(SqlSession::open(&fx.storage).await.unwrap());
    let panels = Arc::new(Panels::new(Arc::new(ResultCache::new(16 << 20))).unwrap());
    let complete = std::env::var("STRATA_SLT_COMPLETE").is_ok();
    let files = slt_files();
    assert!(files.len() >= 4, "slt files missing");
    for file in files {
        let (catalog, session, panels) = (fx.catalog.clone(), session.clone(), panels.clone());
        let mut runner = sqllogictest::Runner::new(move || {
            let db = StrataDb {
                catalog: catalog.clone(),
                session: session.clone(),
                panels: panels.clone(),
            };
            async move { Ok::<_, DbError>(db) }
        });
        if complete {
            runner
                .update_test_file(
                    &file,
                    " ",
                    sqllogictest::default_validator,
                    sqllogictest::default_normalizer,
                    sqllogictest::default_column_validator,
                )
                .await
                .unwrap();
        } else if let Err(e) = runner.run_file_async(&file).await {
            panic!("{}: {e}", file.display());
        }
    }
}
