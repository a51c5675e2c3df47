use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Date32Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, SchemaRef};
use datafusion::prelude::SessionContext;
use deltalake::DeltaTableError;

use crate::delta::log;
use crate::registry::{self, TableSpec};
use crate::table::EventTable;
use crate::{Result, Storage};

pub const TOMBSTONES_TABLE: &str = registry::GDPR_TOMBSTONES.name;

/// Keyed hashes of purged subjects and when the purge was asked for. Ingest drops events of
/// such a subject that occurred before that time and arrive after it.
#[derive(Debug, Clone, Default)]
pub struct Tombstones {
    /// subject hash -> requested_at (µs since the epoch); the latest request wins.
    pub by_hash: HashMap<String, i64>,
    pub version: Option<u64>,
}

impl Tombstones {
    pub fn schema() -> SchemaRef {
        registry::gdpr_tombstones_schema()
    }

    fn spec() -> TableSpec {
        registry::GDPR_TOMBSTONES.spec()
    }

    /// Records the tombstones of one request; returns the table version that holds them
    /// (what the purge's marker names, see `marker.rs`).
    pub async fn add(
        storage: &Storage,
        hashes: &[String],
        requested_at_us: i64,
        request_id: &str,
    ) -> Result<u64> {
        let mut table = EventTable::open_or_create(storage, Self::spec()).await?;
        let n = hashes.len();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(hashes)),
            Arc::new(
                TimestampMicrosecondArray::from(vec![requested_at_us; n]).with_timezone("UTC"),
            ),
            Arc::new(StringArray::from(vec![request_id; n])),
            Arc::new(Date32Array::from(vec![
                (requested_at_us.div_euclid(86_400_000_000))
                    as i32;
                n
            ])),
        ];
        let done = table
            .append(&[RecordBatch::try_new(Self::schema(), cols)?], &[])
            .await?;
        Ok(done.version)
    }

    /// Every tombstone of the root (an empty set when there is none yet), or None when the
    /// table is still at `known` (ingest polls this: only the tombstone table is read, never
    /// the whole catalog).
    pub async fn load_if_changed(storage: &Storage, known: Option<u64>) -> Result<Option<Self>> {
        // Until the first purge there is no table: listing its log first (one list a poll,
        // only then) spares every poll the Delta loader's error-level log of a missing table.
        if known.is_none() && !log::has_log(storage, TOMBSTONES_TABLE).await {
            return Ok(None);
        }
        let table = match log::load(storage, TOMBSTONES_TABLE).await {
            Ok(t) => t,
            // No purge yet: no table. A local root has no directory either, which the Delta
            // loader reports as an invalid location rather than "not a table"; the log is
            // listed only then, off the path of every poll.
            Err(e) => {
                let no_log = matches!(e, DeltaTableError::NotATable(_))
                    || !log::has_log(storage, TOMBSTONES_TABLE).await;
                if no_log {
                    return Ok(known.is_some().then(Self::default));
                }
                return Err(e.into());
            }
        };
        if table.version().is_some() && table.version() == known {
            return Ok(None);
        }
        let ctx = SessionContext::new();
        table.update_datafusion_session(&ctx.state())?;
        ctx.register_table("t", table.table_provider().await?)?;
        let batches = ctx
            .sql("SELECT subject_hash, CAST(requested_at AS BIGINT) FROM t")
            .await?
            .collect()
            .await?;
        let mut by_hash = HashMap::new();
        for b in batches {
            let h = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
            let h = h.as_any().downcast_ref::<StringArray>().expect("Utf8");
            let t = b
                .column(1)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .expect("BIGINT");
            for i in 0..b.num_rows() {
                if h.is_valid(i) && t.is_valid(i) {
                    let e = by_hash.entry(h.value(i).to_string()).or_insert(i64::MIN);
                    *e = (*e).max(t.value(i));
                }
            }
        }
        Ok(Some(Self {
            by_hash,
            version: table.version(),
        }))
    }
}
