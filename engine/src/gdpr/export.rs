use std::future::{Future, IntoFuture};
use std::pin::Pin;

use arrow::array::RecordBatch;
use bytes::Bytes;
use chrono::Utc;
use object_store::path::Path;
use object_store::ObjectStoreExt;
use parquet::arrow::ArrowWriter;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::audit::AuditRecord;
use super::subject::{GdprKey, Subject};
use crate::{Catalog, EngineError, Result, Storage};

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
/// in every raw table and every dead letter naming them, as JSON lines and Parquet.
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
        let (snap, ctx) = catalog.context()?;
        let dir = format!("exports/{}", self.request_id);
        let mut files = Vec::new();
        for table in ["link_clicks", "ai_usage", "dead_letters"] {
            if snap.version(table).is_none() {
                continue;
            }
            let predicate = super::subject::sql_predicate(&self.subject, table);
            let df = ctx
                .sql(&format!("SELECT * FROM {table} WHERE {predicate}"))
                .await?;
            let schema = std::sync::Arc::new(df.schema().as_arrow().clone());
            let batches: Vec<RecordBatch> = df.collect().await?;
            let rows = batches.iter().map(|b| b.num_rows()).sum();
            // JSON lines
            let mut jsonl = Vec::new();
            {
                let mut w = arrow::json::writer::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(&mut jsonl);
                for b in &batches {
                    w.write(b)?;
                }
                w.finish()?;
            }
            // Parquet
            let mut pq = Vec::new();
            {
                let mut w = ArrowWriter::try_new(&mut pq, schema.clone(), None)
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
                for b in &batches {
                    w.write(b)
                        .map_err(|e| EngineError::Internal(e.to_string()))?;
                }
                w.close()
                    .map_err(|e| EngineError::Internal(e.to_string()))?;
            }
            for (name, bytes) in [
                (format!("{table}.jsonl"), jsonl),
                (format!("{table}.parquet"), pq),
            ] {
                let sha256 = hex::encode(Sha256::digest(&bytes));
                let size = bytes.len();
                self.storage
                    .store()
                    .put(
                        &Path::from(format!("{dir}/{name}")),
                        Bytes::from(bytes).into(),
                    )
                    .await
                    .map_err(|e| EngineError::Internal(format!("writing the export: {e}")))?;
                files.push(ExportFile {
                    name,
                    table: table.into(),
                    rows,
                    bytes: size,
                    sha256,
                });
            }
        }
        let manifest = ExportManifest {
            request_id: self.request_id.clone(),
            subject_hash: key.hash(&self.subject.user_id),
            created_at: Utc::now(),
            location: format!("{dir}/"),
            files,
            derived_without_subject_rows: crate::ROLLUPS
                .iter()
                .map(|r| r.name.to_string())
                .collect(),
        };
        let json = serde_json::to_vec_pretty(&manifest)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        self.storage
            .store()
            .put(
                &Path::from(format!("{dir}/manifest.json")),
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
}

impl IntoFuture for ExportBuilder {
    type Output = Result<ExportManifest>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}
