//! Copies of a subject's rows that no table version references any more but that are still in
//! storage: files a compaction (or another rewrite) removed and vacuum has not deleted yet (it
//! waits out its grace period), and files a killed writer left that no commit references. A
//! purge must not leave the subject in them: each one that holds a row of the subject is
//! deleted by the purge, at once, like the files the purge itself removes.
//!
//! ```text
//! list tables/<name>/ -> data files not in the current version
//!   -> removed by a commit (a tombstone), or never committed and older than ORPHAN_MIN_AGE
//!   -> bloom filters, then the rows: holds the subject? -> delete
//! ```
//!
//! A file never committed and younger than [`ORPHAN_MIN_AGE`] may be an append in flight: it is
//! left alone. Its commit is fenced by the tombstone marker and refiltered (see `marker.rs`),
//! and a later purge or vacuum finds it if it stays an orphan. A file that another version still
//! names is only unreferenced by the current one: a reader of that older version can no longer
//! read it in full, as with the purge's own removed files.

use std::collections::HashSet;
use std::time::Duration;

use object_store::ObjectStoreExt;

use super::rewrite::read_if_may_hold;
use super::subject::Subject;
use crate::delta::{layout, log};
use crate::registry::TableSpec;
use crate::{Result, Storage};

/// How old a file no commit references must be before a purge treats it as a killed writer's
/// leftover rather than an append in flight (an ingest flush writes and commits in seconds).
pub const ORPHAN_MIN_AGE: Duration = Duration::from_secs(15 * 60);

/// Deletes every unreferenced file of `spec`'s table that holds a row of `subject`; returns
/// how many it deleted.
pub(super) async fn delete_unreferenced_copies(
    storage: &Storage,
    subject: &Subject,
    spec: &TableSpec,
) -> Result<usize> {
    if !log::has_log(storage, spec.name).await {
        return Ok(0);
    }
    let table = log::load(storage, spec.name).await?;
    let live: HashSet<String> = log::live_files(&table, spec.partition_column)?
        .into_iter()
        .map(|f| f.path)
        .collect();
    let removed = log::tombstones(&table).await?;
    let cutoff = chrono::Utc::now()
        - chrono::Duration::from_std(ORPHAN_MIN_AGE).unwrap_or(chrono::Duration::zero());
    let mut deleted = 0;
    for meta in log::stored_data_files(storage, spec.name).await? {
        let Some(rel) = layout::relative_to_table(spec.name, &meta.location) else {
            continue;
        };
        if live.contains(rel) {
            continue;
        }
        let orphan = !removed.contains_key(rel);
        if orphan && meta.last_modified > cutoff {
            continue;
        }
        if holds_subject(storage, &meta, subject, spec).await? {
            storage.delete_if_present(&meta.location).await?;
            deleted += 1;
        }
    }
    Ok(deleted)
}

/// Whether any row of the file is the subject's: its bloom filters first, then its rows. A
/// file deleted meanwhile (a vacuum, another purge) holds nothing.
async fn holds_subject(
    storage: &Storage,
    meta: &object_store::ObjectMeta,
    subject: &Subject,
    spec: &TableSpec,
) -> Result<bool> {
    match read_holds_subject(storage, meta, subject, spec).await {
        Ok(holds) => Ok(holds),
        Err(_) if storage.store().head(&meta.location).await.is_err() => Ok(false),
        Err(e) => Err(e),
    }
}

async fn read_holds_subject(
    storage: &Storage,
    meta: &object_store::ObjectMeta,
    subject: &Subject,
    spec: &TableSpec,
) -> Result<bool> {
    let columns = subject.columns(spec.name);
    let store = storage.store().clone();
    let Some(batches) = read_if_may_hold(store, &meta.location, meta.size, &columns).await? else {
        return Ok(false);
    };
    for b in &batches {
        if subject.matches(spec.name, b)?.true_count() > 0 {
            return Ok(true);
        }
    }
    Ok(false)
}
