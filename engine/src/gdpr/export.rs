use std::future::{Future, IntoFuture};
use std::pin::Pin;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use chrono::Utc;
use datafusion::prelude::SessionContext;
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::audit::AuditRecord;
use super::subject::{GdprKey, Subject};
use crate::delta::layout;
use crate::registry::{self, Role};
use crate::{Catalog, EngineError, Result, Storage};

/// Reads of one table an export makes before it gives up on files deleted under it.
const READ_ATTEMPTS: usize = 5;

/// One exported file.
#[derive(Debug, Clone, Serialize)]
pub struct ExportFile {
    pub name: String,
    pub table: String,
    pub rows: usize,
    pub bytes: usize,
    pub sha256: String,
}

/// `manifest.json` of an export: what was found, where, with checksums.
#[derive(Debug, Clone, Serialize)]
pub struct ExportManifest {
    pub request_id: String,
    pub subject_hash: String,
    pub created_at: chrono::DateTime<Utc>,
    /// `exports/<request_id>/`, relative to the storage root (whose location is never
    /// shown to a client).
    pub location: String,
    pub files: Vec<ExportFile>,
    /// Derived tables that hold no per-subject rows (nothing to export from them).
    pub derived_without_subject_rows: Vec<String>,
}

/// `ExportBuilder::new(storage, subject).await -> ExportManifest`: every row about the subject
/// in every subject-bearing table of the registry (the raw tables, and every dead letter
/// naming them), as JSON lines and Parquet.
pub struct ExportBuilder {
    storage: Storage,
    subject: Subject,
    request_id: String,
    requested_by: String,
}

impl ExportBuilder {
    pub fn new(storage: &Storage, subject: Subject) -> Self {
        Self {
            storage: storage.clone(),
            subject,
            request_id: uuid::Uuid::new_v4().to_string(),
            requested_by: "cli".into(),
        }
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    pub fn requested_by(mut self, who: impl Into<String>) -> Self {
        self.requested_by = who.into();
        self
    }

    async fn execute(self) -> Result<ExportManifest> {
        self.subject.validate()?;
        let requested_at = Utc::now();
        let key = GdprKey::load_or_create(&self.storage).await?;
        let catalog = Catalog::open(&self.storage).await?;
        let (snap, mut ctx) = catalog.context()?;
        let mut files = Vec::new();
        // Every subject-bearing table of the registry that exists.
        for table in registry::subject_bearing().map(|t| t.name) {
            if snap.version(table).is_none() {
                continue;
            }
            let (batches, schema) = self.rows_fresh(&catalog, &mut ctx, table).await?;
            let rows = batches.iter().map(|b| b.num_rows()).sum();
            for (name, bytes) in [
                (format!("{table}.jsonl"), json_lines(&batches)?),
                (format!("{table}.parquet"), parquet_file(&batches, schema)?),
            ] {
                files.push(self.put(name, table, rows, bytes).await?);
            }
        }
        let manifest = ExportManifest {
            request_id: self.request_id.clone(),
            subject_hash: key.hash(&self.subject.user_id),
            created_at: Utc::now(),
            location: layout::export_location(&self.request_id),
            files,
            derived_without_subject_rows: registry::tables()
                .filter(|t| matches!(t.role, Role::Rollup(_)))
                .map(|t| t.name.to_string())
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.storage
            .store()
            .put(
                &layout::export_manifest(&self.request_id),
                Bytes::from(json).into(),
            )
            .await
            .map_err(|e| EngineError::Internal(format!("writing the manifest: {e}")))?;
        AuditRecord {
            request_id: self.request_id,
            kind: "export".into(),
            subject_hash: manifest.subject_hash.clone(),
            requested_by: self.requested_by,
            requested_at,
            finished_at: manifest.created_at,
            status: "done".into(),
            receipt: serde_json::to_string(&manifest).unwrap_or_default(),
        }
        .append(&self.storage)
        .await?;
        Ok(manifest)
    }

    /// [`Self::rows_of`], again on a fresh snapshot (`ctx` replaced) when a file of the snapshot
    /// was deleted while it was read: a purge of another subject, a retention run or a vacuum
    /// delete files at once, and an export must not fail because one ran beside it.
    async fn rows_fresh(
        &self,
        catalog: &Catalog,
        ctx: &mut SessionContext,
        table: &str,
    ) -> Result<(Vec<RecordBatch>, SchemaRef)> {
        let mut attempt = 1;
        loop {
            match self.rows_of(ctx, table).await {
                Err(e) if e.is_missing_file() && attempt < READ_ATTEMPTS => {
                    attempt += 1;
                    catalog.refresh().await?;
                    *ctx = catalog.context()?.1;
                }
                other => return other,
            }
        }
    }

    /// The subject's rows of `table`, with their schema.
    async fn rows_of(
        &self,
        ctx: &SessionContext,
        table: &str,
    ) -> Result<(Vec<RecordBatch>, SchemaRef)> {
        let predicate = super::subject::sql_predicate(&self.subject, table);
        let df = ctx
            .sql(&format!("SELECT * FROM {table} WHERE {predicate}"))
            .await?;
        let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
        Ok((df.collect().await?, schema))
    }

    /// Writes one file of the export.
    async fn put(
        &self,
        name: String,
        table: &str,
        rows: usize,
        bytes: Vec<u8>,
    ) -> Result<ExportFile> {
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let size = bytes.len();
        self.storage
            .store()
            .put(
                &layout::export_file(&self.request_id, &name),
                Bytes::from(bytes).into(),
            )
            .await
            .map_err(|e| EngineError::Internal(format!("writing the export: {e}")))?;
        Ok(ExportFile {
            name,
            table: table.into(),
            rows,
            bytes: size,
            sha256,
        })
    }
}

/// `batches` as JSON lines (nulls written out).
fn json_lines(batches: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut jsonl = Vec::new();
    {
        let mut w = arrow::json::writer::WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, arrow::json::writer::LineDelimited>(&mut jsonl);
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(jsonl)
}

/// `batches` as one Parquet file.
fn parquet_file(batches: &[RecordBatch], schema: SchemaRef) -> Result<Vec<u8>> {
    let mut pq = Vec::new();
    let mut w = ArrowWriter::try_new(&mut pq, schema, None)
        .map_err(|e| EngineError::Internal(e.to_string()))?;
    for b in batches {
        w.write(b)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
    }
    w.close()
        .map_err(|e| EngineError::Internal(e.to_string()))?;
    Ok(pq)
}

impl IntoFuture for ExportBuilder {
    type Output = Result<ExportManifest>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maintenance::test_support::*;

    #[tokio::test]
    async fn a_file_deleted_under_the_read_is_read_again_on_a_fresh_snapshot() {
        let root = root().await;
        append_files(&root.storage, "2026-10-01", 0, 3, 20).await;
        let catalog = Catalog::open(&root.storage).await.unwrap();
        let (_, mut ctx) = catalog.context().unwrap();
        // After the snapshot was taken, a purge of other subjects removes one of the three
        // files and deletes it at once.
        purge_a_file(&root, "2026-10-01", true).await;

        // u-1 holds 4 rows of each file: the two files left.
        let export = ExportBuilder::new(&root.storage, Subject::new("u-1"));
        let (rows, _) = export.rows_fresh(&catalog, &mut ctx, CLICKS).await.unwrap();
        assert_eq!(rows.iter().map(RecordBatch::num_rows).sum::<usize>(), 8);
    }
}
