use std::future::{Future, IntoFuture};
use std::pin::Pin;

use std::time::Instant;

use arrow::array::RecordBatch;
use chrono::Utc;
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::Serialize;
use tracing::{info, warn};

use super::audit::AuditRecord;
use super::marker::commit_tombstone_marker;
use super::rewrite::purge_table;
use super::subject::{GdprKey, Subject};
use super::tombstone::Tombstones;
use crate::delta::layout;
use crate::registry::{self, TableSpec};
use crate::rollup::PurgedRows;
use crate::{Catalog, EngineError, Result, RollupBuilder, Storage};

/// Test hook: when `STRATA_TEST_PAUSE_AT` names this step, the purge stops here for good (a
/// crash test kills the process at that point). Steps, in order: `tombstone`,
/// `commit:<table>` (after that table's commit, before its removed files are deleted; reached
/// only when the table holds rows of the subject), `rollups`, `verify`.
pub(super) async fn pause_point(step: &str) {
    if std::env::var("STRATA_TEST_PAUSE_AT").is_ok_and(|s| s == step) {
        tracing::warn!(step, "purge paused by STRATA_TEST_PAUSE_AT");
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
        }
    }
}

/// Rewrite rounds a purge makes while its verification still finds rows of the subject
/// (a writer that does not go through the tombstone fence, a commit in flight), before it
/// gives up and fails, keeping the request's ids so that it can be run again.
const MAX_ROUNDS: usize = 3;

/// What a purge did to one table.
#[derive(Debug, Clone, Serialize, Default)]
pub struct TablePurge {
    pub table: String,
    pub version_before: Option<u64>,
    pub version_after: Option<u64>,
    pub files_in_table: usize,
    /// Files whose bloom filters could hold the subject (read in full).
    pub files_scanned: usize,
    pub files_rewritten: usize,
    pub rows_removed: usize,
    pub bytes_rewritten: i64,
    /// Removed files deleted from storage right away (no time travel back to them).
    pub files_vacuumed: usize,
    /// Wall time of this table's scan, rewrite, commit and deletes.
    pub elapsed_ms: u64,
    /// The subject's rows the commit `version_after` removed: the rollups recompute only the
    /// groups they were in. Never in a receipt.
    #[serde(skip)]
    pub(crate) subject_rows: Vec<RecordBatch>,
}

/// The receipt of a purge: what was done and the proof that nothing is left.
#[derive(Debug, Clone, Serialize)]
pub struct PurgeReceipt {
    pub request_id: String,
    pub subject_hash: String,
    pub requested_at: chrono::DateTime<Utc>,
    pub finished_at: chrono::DateTime<Utc>,
    pub tables: Vec<TablePurge>,
    pub rows_removed: usize,
    /// Days of the rollups recomputed.
    pub rollup_days_recomputed: usize,
    /// Earlier exports of the subject, deleted with everything else.
    pub exports_deleted: usize,
    /// Rows of the subject found in every table after the purge, by table: all zero.
    pub verification: Vec<(String, i64)>,
    pub verified: bool,
    /// The `gdpr_tombstones` version of this purge's tombstones: the marker committed to every
    /// raw table before its scan (ingest commits after it were filtered with them).
    pub tombstones_version: u64,
    /// Rewrite rounds: more than one when a verification found rows committed meanwhile.
    pub rounds: usize,
    /// Where the time went, in milliseconds: rewrite (all tables), rollups, verification.
    pub timings_ms: PurgeTimings,
}

#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct PurgeTimings {
    pub rewrite: u64,
    pub rollups: u64,
    pub verify: u64,
    pub total: u64,
}

/// `PurgeBuilder::new(storage, subject).requested_by("dpo").await -> PurgeReceipt`
pub struct PurgeBuilder {
    storage: Storage,
    subject: Subject,
    key: Option<GdprKey>,
    requested_by: String,
    request_id: String,
    requested_at: Option<chrono::DateTime<Utc>>,
}

impl PurgeBuilder {
    pub fn new(storage: &Storage, subject: Subject) -> Self {
        Self {
            storage: storage.clone(),
            subject,
            key: None,
            requested_by: "cli".into(),
            request_id: uuid::Uuid::new_v4().to_string(),
            requested_at: None,
        }
    }

    /// When the request was made (a resumed request keeps its original time, which is what
    /// its tombstone compares late events with).
    pub fn requested_at(mut self, at: chrono::DateTime<Utc>) -> Self {
        self.requested_at = Some(at);
        self
    }

    pub fn requested_by(mut self, who: impl Into<String>) -> Self {
        self.requested_by = who.into();
        self
    }

    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = id.into();
        self
    }

    pub fn key(mut self, key: GdprKey) -> Self {
        self.key = Some(key);
        self
    }

    async fn execute(self) -> Result<PurgeReceipt> {
        self.subject.validate()?;
        let requested_at = self.requested_at.unwrap_or_else(Utc::now);
        let key = match &self.key {
            Some(k) => k.clone(),
            None => GdprKey::load_or_create(&self.storage).await?,
        };
        let subject_hash = key.hash(&self.subject.user_id);
        // Tombstones first: from now on ingest drops late events of the subject.
        let hashes: Vec<String> = self.subject.ids().iter().map(|id| key.hash(id)).collect();
        let tombstones_version = Tombstones::add(
            &self.storage,
            &hashes,
            requested_at.timestamp_micros(),
            &self.request_id,
        )
        .await?;
        pause_point("tombstone").await;

        let started = Instant::now();
        // The subject-bearing tables of the registry: rollups and system tables hold no ids.
        let specs: Vec<TableSpec> = registry::subject_bearing().map(|t| t.spec()).collect();
        // The marker, in every raw table, before any scan: a commit of rows filtered without
        // these tombstones either lands before it (and the scan below sees it) or is refused
        // (see `marker.rs`). A table that does not exist yet is created with it.
        for spec in &specs {
            commit_tombstone_marker(&self.storage, spec.clone(), tombstones_version).await?;
        }
        let mut done = self.rewrite_rounds(&specs, &subject_hash).await?;
        done.timings.total = started.elapsed().as_millis() as u64;
        let verified = done.verification.iter().all(|(_, n)| *n == 0);
        let receipt = PurgeReceipt {
            request_id: self.request_id.clone(),
            subject_hash: subject_hash.clone(),
            requested_at,
            finished_at: Utc::now(),
            rows_removed: done.tables.iter().map(|t| t.rows_removed).sum(),
            tables: done.tables,
            rollup_days_recomputed: done.rollup_days_recomputed,
            exports_deleted: done.exports_deleted,
            verified,
            verification: done.verification,
            tombstones_version,
            rounds: done.rounds,
            timings_ms: done.timings,
        };
        AuditRecord {
            request_id: self.request_id,
            kind: "purge".into(),
            subject_hash,
            requested_by: self.requested_by,
            requested_at,
            finished_at: receipt.finished_at,
            status: if verified { "done" } else { "failed" }.into(),
            receipt: serde_json::to_string(&receipt).unwrap_or_default(),
        }
        .append(&self.storage)
        .await?;
        info!(
            rows_removed = receipt.rows_removed,
            verified,
            rounds = receipt.rounds,
            "purge finished"
        );
        if !verified {
            return Err(incomplete(&receipt));
        }
        Ok(receipt)
    }

    /// Rewrites every table of `specs`, deletes the subject's exports, recomputes the rollups
    /// and verifies; again while the verification finds rows of the subject, up to
    /// [`MAX_ROUNDS`] rounds.
    async fn rewrite_rounds(&self, specs: &[TableSpec], subject_hash: &str) -> Result<Rounds> {
        let ms = |t: Instant| t.elapsed().as_millis() as u64;
        let mut done = Rounds::default();
        while done.rounds < MAX_ROUNDS {
            done.rounds += 1;
            let step = Instant::now();
            // The raw tables are independent (one commit each): they are purged concurrently.
            let mut round = futures::future::try_join_all(
                specs
                    .iter()
                    .map(|spec| purge_table(&self.storage, &self.subject, spec, &self.request_id)),
            )
            .await?;
            let purged = purged_rows(&mut round);
            add_round(&mut done.tables, round);
            done.exports_deleted += delete_exports_of(&self.storage, subject_hash).await?;
            done.timings.rewrite += ms(step);
            pause_point("rollups").await;
            // Rollups recompute the days whose files changed; the catalog sees the new versions.
            let step = Instant::now();
            let catalog = Catalog::open(&self.storage).await?;
            let rollups = RollupBuilder::new(catalog.clone())
                .purged(purged)
                .run()
                .await?;
            done.rollup_days_recomputed += rollups.iter().map(|r| r.dates.len()).sum::<usize>();
            done.timings.rollups += ms(step);
            pause_point("verify").await;
            let step = Instant::now();
            done.verification = verify_fresh(&catalog, &self.subject).await?;
            done.timings.verify += ms(step);
            if done.verification.iter().all(|(_, n)| *n == 0) {
                break;
            }
            warn!(
                round = done.rounds,
                "purge verification found rows of the subject; rewriting again"
            );
        }
        Ok(done)
    }
}

/// What the rewrite rounds of a purge came to.
#[derive(Default)]
struct Rounds {
    tables: Vec<TablePurge>,
    exports_deleted: usize,
    rollup_days_recomputed: usize,
    verification: Vec<(String, i64)>,
    rounds: usize,
    timings: PurgeTimings,
}

/// The error of a purge whose last verification still found rows of the subject.
fn incomplete(receipt: &PurgeReceipt) -> EngineError {
    EngineError::Internal(format!(
        "the purge is incomplete: after {} rewrite rounds, rows of the subject are \
         still in {}; the request keeps its ids and can be run again",
        receipt.rounds,
        receipt
            .verification
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(t, n)| format!("{t} ({n} rows)"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The subject's rows each table's commit in this round removed, taken out of its report.
fn purged_rows(round: &mut [TablePurge]) -> Vec<PurgedRows> {
    round
        .iter_mut()
        .filter(|t| !t.subject_rows.is_empty())
        .filter_map(|t| {
            Some(PurgedRows {
                table: t.table.clone(),
                version: t.version_after?,
                rows: std::mem::take(&mut t.subject_rows),
            })
        })
        .collect()
}

/// Adds one round's per-table reports to the totals (the first round's `version_before` and
/// file count stay; the last round's `version_after` wins).
fn add_round(totals: &mut Vec<TablePurge>, round: Vec<TablePurge>) {
    for r in round {
        match totals.iter_mut().find(|t| t.table == r.table) {
            None => totals.push(r),
            Some(t) => {
                t.version_before = t.version_before.or(r.version_before);
                t.version_after = r.version_after.or(t.version_after);
                t.files_scanned += r.files_scanned;
                t.files_rewritten += r.files_rewritten;
                t.rows_removed += r.rows_removed;
                t.bytes_rewritten += r.bytes_rewritten;
                t.files_vacuumed += r.files_vacuumed;
                t.elapsed_ms += r.elapsed_ms;
            }
        }
    }
}

impl IntoFuture for PurgeBuilder {
    type Output = Result<PurgeReceipt>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.execute())
    }
}

/// Rows of the subject left in each subject-bearing table of the registry (rollups and system
/// tables hold no subject ids).
/// [`verify`] on a freshly refreshed snapshot; again on a newer one when a file it read was
/// deleted meanwhile (a retention run, a compaction's leftovers, another purge).
async fn verify_fresh(catalog: &Catalog, subject: &Subject) -> Result<Vec<(String, i64)>> {
    let mut tries = 0;
    loop {
        catalog.refresh().await?;
        match verify(catalog, subject).await {
            Err(e) if e.is_missing_file() && tries < 5 => tries += 1,
            other => return other,
        }
    }
}

async fn verify(catalog: &Catalog, subject: &Subject) -> Result<Vec<(String, i64)>> {
    let (snap, ctx) = catalog.context()?;
    // One count per table, all at once.
    let counts = registry::subject_bearing()
        .map(|t| t.name)
        .filter(|table| snap.version(table).is_some())
        .map(|table| {
            let ctx = ctx.clone();
            async move {
                let predicate = super::subject::sql_predicate(subject, table);
                let batches = ctx
                    .sql(&format!("SELECT count(*) FROM {table} WHERE {predicate}"))
                    .await?
                    .collect()
                    .await?;
                Ok::<_, EngineError>((table.to_string(), crate::scalar_i64(&batches).unwrap_or(0)))
            }
        });
    futures::future::try_join_all(counts).await
}

/// Deletes every export whose manifest names the subject's hash.
async fn delete_exports_of(storage: &Storage, subject_hash: &str) -> Result<usize> {
    let store = storage.store();
    let listing = match store
        .list_with_delimiter(Some(&layout::exports_dir()))
        .await
    {
        Ok(l) => l,
        Err(object_store::Error::NotFound { .. }) => return Ok(0),
        Err(e) => return Err(EngineError::Internal(format!("listing exports: {e}"))),
    };
    let mut deleted = 0;
    for dir in listing.common_prefixes {
        let manifest = dir.clone().join(layout::EXPORT_MANIFEST);
        let Ok(r) = store.get(&manifest).await else {
            continue;
        };
        let Ok(bytes) = r.bytes().await else { continue };
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
        if v["subject_hash"].as_str() != Some(subject_hash) {
            continue;
        }
        let files: Vec<_> = store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        for f in files {
            store
                .delete(&f.location)
                .await
                .map_err(|e| EngineError::Internal(e.to_string()))?;
        }
        deleted += 1;
    }
    Ok(deleted)
}
