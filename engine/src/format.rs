use std::io::Write;

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;

use crate::{EngineError, Result};

/// How `strata sql` prints a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Table,
    Csv,
    /// One JSON object per row (JSON lines).
    Json,
}

impl std::str::FromStr for OutputFormat {
    type Err = EngineError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "table" => Ok(Self::Table),
            "csv" => Ok(Self::Csv),
            "json" | "jsonl" => Ok(Self::Json),
            other => Err(EngineError::config(format!(
                "unknown format `{other}`; use table, csv or json"
            ))),
        }
    }
}

pub fn write_batches(
    out: &mut dyn Write,
    format: OutputFormat,
    schema: &Schema,
    batches: &[RecordBatch],
) -> Result<()> {
    match format {
        OutputFormat::Table => {
            let shown = arrow::util::pretty::pretty_format_batches(batches)?;
            if batches.iter().all(|b| b.num_rows() == 0) {
                let names: Vec<_> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                writeln!(out, "{}\n(0 rows)", names.join(" | ")).map_err(io)?;
            } else {
                writeln!(out, "{shown}").map_err(io)?;
            }
        }
        OutputFormat::Csv => {
            let mut w = arrow::csv::WriterBuilder::new()
                .with_header(true)
                .build(&mut *out);
            if batches.is_empty() {
                w.write(&RecordBatch::new_empty(std::sync::Arc::new(schema.clone())))?;
            }
            for b in batches {
                w.write(b)?;
            }
        }
        OutputFormat::Json => {
            let mut w = arrow::json::LineDelimitedWriter::new(&mut *out);
            for b in batches {
                w.write(b)?;
            }
            w.finish()?;
        }
    }
    Ok(())
}

fn io(e: std::io::Error) -> EngineError {
    EngineError::Internal(format!("writing output: {e}"))
}
