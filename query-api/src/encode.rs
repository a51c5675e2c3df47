//! Result formats of SQL over HTTP, each written batch by batch so a response streams.

use std::io::Write;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::writer::{JsonArray, LineDelimited, Writer as JsonWriter, WriterBuilder};
use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use parking_lot::Mutex;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use tokio::sync::mpsc;

use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    JsonLines,
    Csv,
    Arrow,
    Parquet,
}

impl Format {
    pub const NAMES: &'static str = "json, jsonl, csv, arrow, parquet";

    pub fn from_name(s: &str) -> Result<Self, ApiError> {
        match s {
            "json" => Ok(Self::Json),
            "jsonl" | "ndjson" => Ok(Self::JsonLines),
            "csv" => Ok(Self::Csv),
            "arrow" => Ok(Self::Arrow),
            "parquet" => Ok(Self::Parquet),
            other => Err(ApiError::bad_request(
                "bad_format",
                format!("unknown format `{other}`; formats are {}", Self::NAMES),
            )),
        }
    }

    /// From an `Accept` header; None when it names nothing we serve (then JSON).
    pub fn from_accept(accept: &str) -> Option<Self> {
        accept
            .split(',')
            .find_map(|part| match part.split(';').next().unwrap_or("").trim() {
                "application/json" => Some(Self::Json),
                "application/x-ndjson" | "application/jsonl" => Some(Self::JsonLines),
                "text/csv" => Some(Self::Csv),
                "application/vnd.apache.arrow.stream" => Some(Self::Arrow),
                "application/vnd.apache.parquet" | "application/x-parquet" => Some(Self::Parquet),
                _ => None,
            })
    }

    /// The format the request asks for: by name (`?format=` or the body), else by `Accept`,
    /// else JSON.
    pub fn choose(headers: &HeaderMap, name: Option<String>) -> Result<Self, ApiError> {
        if let Some(f) = name {
            return Self::from_name(&f);
        }
        Ok(headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .and_then(Self::from_accept)
            .unwrap_or(Self::Json))
    }

    pub fn content_type(&self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::JsonLines => "application/x-ndjson",
            Self::Csv => "text/csv; charset=utf-8",
            Self::Arrow => "application/vnd.apache.arrow.stream",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }
}

/// A chunk of a streamed response body, or the error that cuts it.
pub type Chunk = Result<Bytes, std::io::Error>;

/// A response body that streams the chunks sent to `rx`, ending when every sender is gone.
pub fn streamed_body(mut rx: mpsc::Receiver<Chunk>) -> Body {
    Body::from_stream(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// A `Write` whose bytes are taken out after each batch.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn take(&self) -> Bytes {
        Bytes::from(std::mem::take(&mut *self.0.lock()))
    }
}

enum Inner {
    Json(JsonWriter<Shared, JsonArray>),
    JsonLines(JsonWriter<Shared, LineDelimited>),
    Csv(arrow::csv::Writer<Shared>),
    Arrow(arrow::ipc::writer::StreamWriter<Shared>),
    Parquet(ArrowWriter<Shared>),
}

/// Encodes batches into one format; `write` and `finish` return the bytes ready to send.
pub struct Encoder {
    buf: Shared,
    inner: Inner,
}

impl Encoder {
    pub fn new(format: Format, schema: &SchemaRef) -> Result<Self, arrow::error::ArrowError> {
        let buf = Shared::default();
        let inner = match format {
            Format::Json => Inner::Json(
                WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, JsonArray>(buf.clone()),
            ),
            Format::JsonLines => Inner::JsonLines(
                WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, LineDelimited>(buf.clone()),
            ),
            Format::Csv => Inner::Csv(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(buf.clone()),
            ),
            Format::Arrow => Inner::Arrow(arrow::ipc::writer::StreamWriter::try_new(
                buf.clone(),
                schema,
            )?),
            Format::Parquet => Inner::Parquet(
                ArrowWriter::try_new(
                    buf.clone(),
                    schema.clone(),
                    Some(
                        WriterProperties::builder()
                            .set_compression(Compression::ZSTD(ZstdLevel::default()))
                            .build(),
                    ),
                )
                .map_err(|e| arrow::error::ArrowError::ExternalError(Box::new(e)))?,
            ),
        };
        Ok(Self { buf, inner })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<Bytes, arrow::error::ArrowError> {
        match &mut self.inner {
            Inner::Json(w) => w.write(batch)?,
            Inner::JsonLines(w) => w.write(batch)?,
            Inner::Csv(w) => w.write(batch)?,
            Inner::Arrow(w) => w.write(batch)?,
            Inner::Parquet(w) => {
                w.write(batch).map_err(ext)?;
                // One row group per batch keeps memory flat while streaming.
                w.flush().map_err(ext)?;
            }
        }
        Ok(self.buf.take())
    }

    pub fn finish(self) -> Result<Bytes, arrow::error::ArrowError> {
        match self.inner {
            Inner::Json(mut w) => w.finish()?,
            Inner::JsonLines(mut w) => w.finish()?,
            Inner::Csv(_) => {}
            Inner::Arrow(mut w) => w.finish()?,
            Inner::Parquet(w) => {
                w.close().map_err(ext)?;
            }
        }
        Ok(self.buf.take())
    }
}

fn ext(e: parquet::errors::ParquetError) -> arrow::error::ArrowError {
    arrow::error::ArrowError::ExternalError(Box::new(e))
}

/// Rows as JSON objects (for panel answers, which are small).
pub fn rows_json(
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<serde_json::Value, ApiError> {
    let mut enc =
        Encoder::new(Format::Json, schema).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut out = Vec::new();
    for b in batches {
        out.extend_from_slice(
            &enc.write(b)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
        );
    }
    out.extend_from_slice(
        &enc.finish()
            .map_err(|e| ApiError::Internal(e.to_string()))?,
    );
    serde_json::from_slice(&out).map_err(|e| ApiError::Internal(e.to_string()))
}
