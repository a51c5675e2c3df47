//! `job_runs`: one row per run of a background job (rollups, compaction, GDPR requests), so
//! that job health is a query like any other.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Array, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, Utc};

use crate::registry::{self, TableSpec};
use crate::table::EventTable;
use crate::{Result, Storage};

pub const JOB_RUNS_TABLE: &str = registry::JOB_RUNS.name;

#[derive(Debug, Clone)]
pub struct JobRun {
    /// e.g. `rollup:click_stats_daily`
    pub job: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `ok` or `failed`
    pub status: String,
    pub rows: i64,
    /// JSON with the job's report (never subject ids).
    pub detail: String,
}

pub struct JobRuns;

impl JobRuns {
    pub fn schema() -> SchemaRef {
        registry::job_runs_schema()
    }

    pub fn spec() -> TableSpec {
        registry::JOB_RUNS.spec()
    }

    pub async fn open(storage: &Storage) -> Result<EventTable> {
        EventTable::open_or_create(storage, Self::spec()).await
    }

    pub async fn append(storage: &Storage, runs: &[JobRun]) -> Result<()> {
        let mut table = Self::open(storage).await?;
        let micros = |t: &DateTime<Utc>| t.timestamp_micros();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                runs.iter().map(|r| r.job.as_str()),
            )),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    runs.iter().map(|r| micros(&r.started_at)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(
                    runs.iter().map(|r| micros(&r.finished_at)),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(StringArray::from_iter_values(
                runs.iter().map(|r| r.status.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(runs.iter().map(|r| r.rows))),
            Arc::new(StringArray::from_iter_values(
                runs.iter().map(|r| r.detail.as_str()),
            )),
            Arc::new(Date32Array::from_iter_values(
                runs.iter()
                    .map(|r| (r.started_at.timestamp().div_euclid(86_400)) as i32),
            )),
        ];
        let batch = RecordBatch::try_new(Self::schema(), cols)?;
        table.append(&[batch], &[]).await?;
        Ok(())
    }
}
