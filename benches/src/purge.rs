//! `strata bench purge`: time to erase one median subject, and how much was rewritten.
//! It really purges that subject from the root it is given.

use std::fmt;
use std::time::Instant;

use anyhow::Context;
use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::DataType;
use serde_json::json;
use strata_engine::gdpr::{PurgeBuilder, PurgeReceipt, Subject};
use strata_engine::{SqlSession, Storage};

/// The subject with the median number of clicks (ties broken by id).
const MEDIAN_SUBJECT_SQL: &str = "WITH u AS (SELECT user_id, count(*) AS n FROM link_clicks WHERE user_id IS NOT NULL GROUP BY user_id), \
     r AS (SELECT user_id, n, row_number() OVER (ORDER BY n, user_id) AS i, count(*) OVER () AS c FROM u) \
     SELECT user_id, n FROM r WHERE i = (c + 1) / 2";

/// What a run measured; `Display` is the text report, [`PurgeResults::to_json`] the JSON one.
#[derive(Debug)]
pub struct PurgeResults {
    pub seconds: f64,
    pub receipt: PurgeReceipt,
}

impl PurgeResults {
    pub fn to_json(&self) -> serde_json::Value {
        json!({ "seconds": self.seconds, "receipt": self.receipt })
    }
}

/// Purges the median subject of `storage`; progress goes to stderr.
pub async fn run(storage: &Storage) -> anyhow::Result<PurgeResults> {
    let median = MedianSubject::find(storage).await?;
    eprintln!("bench purge: median subject has {} clicks", median.clicks);
    let started = Instant::now();
    let receipt = PurgeBuilder::new(storage, Subject::new(median.user_id))
        .requested_by("bench")
        .await?;
    Ok(PurgeResults {
        seconds: started.elapsed().as_secs_f64(),
        receipt,
    })
}

/// The subject with the median number of clicks.
struct MedianSubject {
    user_id: String,
    clicks: i64,
}

impl MedianSubject {
    async fn find(storage: &Storage) -> anyhow::Result<Self> {
        let session = SqlSession::open(storage).await?;
        let (_, batches) = session.query(MEDIAN_SUBJECT_SQL).await?;
        let b = batches.first().context("no users in link_clicks")?;
        let user = arrow::compute::cast(b.column(0), &DataType::Utf8)?;
        let user = user
            .as_any()
            .downcast_ref::<StringArray>()
            .context("user id")?
            .value(0)
            .to_string();
        let clicks = b
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .context("count")?
            .value(0);
        Ok(Self {
            user_id: user,
            clicks,
        })
    }
}

impl fmt::Display for PurgeResults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let receipt = &self.receipt;
        writeln!(
            f,
            "purge of one median subject: {:.2} s, {} rows removed, verified {}",
            self.seconds, receipt.rows_removed, receipt.verified
        )?;
        let t = &receipt.timings_ms;
        writeln!(
            f,
            "time: rewrite {} ms, rollups {} ms ({} rollup days), verification {} ms",
            t.rewrite, t.rollups, receipt.rollup_days_recomputed, t.verify
        )?;
        writeln!(
            f,
            "{:<14} {:>8} {:>8} {:>10} {:>14}",
            "table", "files", "scanned", "rewritten", "bytes rewritten"
        )?;
        for t in &receipt.tables {
            writeln!(
                f,
                "{:<14} {:>8} {:>8} {:>10} {:>14}",
                t.table, t.files_in_table, t.files_scanned, t.files_rewritten, t.bytes_rewritten
            )?;
        }
        Ok(())
    }
}
