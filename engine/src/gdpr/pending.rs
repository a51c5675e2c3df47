//! The files a purge commit removes, recorded before the commit until they are deleted.
//!
//! ```text
//! purge of table T (under the GDPR lock):
//!   previous records of T -> each recorded file the current version no longer holds -> delete
//!                         -> the record deleted
//!   rewrite -> record _strata/gdpr/pending/T/<request>.json (the files it will remove)
//!           -> commit (remove + add) -> delete the removed files -> the record deleted
//! ```
//!
//! A purge killed between its commit and its deletes leaves the subject in files no version
//! references: the next purge of the table (the same request resumed, or any other) deletes
//! them from its record. A record whose commit never landed names files still live: they stay.
//! Reading only the records keeps this cost flat, where searching the whole Delta log for
//! purge commits grew with every ingest commit; that search runs once per table, for purges
//! committed before the records existed (`_strata/gdpr/log-scanned/<table>` marks it done).

use std::collections::HashSet;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::delta::{layout, log};
use crate::{EngineError, Result, Storage};

/// Records that the purge `request_id` is about to remove `files` (paths relative to the
/// table) from `table`.
pub(super) async fn record(
    storage: &Storage,
    table: &str,
    request_id: &str,
    files: &[String],
) -> Result<()> {
    let path = layout::purge_pending(table, request_id);
    let body = serde_json::to_vec(files)
        .map_err(|e| EngineError::Internal(format!("encoding {path}: {e}")))?;
    storage
        .store()
        .put(&path, body.into())
        .await
        .map_err(|e| EngineError::Internal(format!("writing {path}: {e}")))?;
    Ok(())
}

/// Drops the record of purge `request_id` of `table`: its removed files are deleted, or its
/// commit did not land.
pub(super) async fn clear(storage: &Storage, table: &str, request_id: &str) -> Result<()> {
    storage
        .delete_if_present(&layout::purge_pending(table, request_id))
        .await
}

/// Deletes what earlier purges of `table` removed and did not get to delete: the files their
/// records name that the current version no longer holds (the first time, also those of purge
/// commits found in the log, marked with `marker`); returns how many files it deleted.
pub(super) async fn finish_earlier(storage: &Storage, table: &str, marker: &str) -> Result<usize> {
    let store = storage.store();
    let mut removed: Vec<String> = Vec::new();
    let scanned = layout::purge_log_scanned(table);
    let first_time = matches!(
        store.head(&scanned).await,
        Err(object_store::Error::NotFound { .. })
    );
    if first_time {
        removed.extend(log::files_removed_by_marked_commits(storage, table, marker).await?);
    }
    let dir = layout::purge_pending_dir(table);
    let listed: Vec<_> = store
        .list(Some(&dir))
        .try_collect()
        .await
        .map_err(|e| EngineError::Internal(format!("listing {dir}: {e}")))?;
    let mut records = Vec::with_capacity(listed.len());
    for meta in listed {
        let bytes = storage.read(&meta.location).await?;
        let files: Vec<String> = serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::Internal(format!("{} is not a list of files: {e}", meta.location))
        })?;
        records.push((meta.location, files));
    }
    removed.extend(records.iter().flat_map(|(_, files)| files.iter().cloned()));
    if removed.is_empty() {
        return mark_scanned(storage, table, first_time).await.map(|()| 0);
    }
    // A file the current version holds was not removed: its purge has not committed (or never
    // will); its record stays until it has.
    let live: HashSet<String> = if log::has_log(storage, table).await {
        let loaded = log::load(storage, table).await?;
        log::live_files(&loaded, "")?
            .into_iter()
            .map(|f| f.path)
            .collect()
    } else {
        HashSet::new()
    };
    let mut deleted = 0;
    for rel in removed.iter().filter(|r| !live.contains(*r)) {
        // Counted when it was there (an object store deletes a missing key without error).
        let path = layout::table_file(table, rel);
        if store.head(&path).await.is_err() {
            continue;
        }
        match store.delete(&path).await {
            Ok(()) => deleted += 1,
            Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(EngineError::Internal(format!("deleting {path}: {e}"))),
        }
    }
    for (location, files) in &records {
        if files.iter().any(|f| live.contains(f)) {
            continue;
        }
        storage.delete_if_present(location).await?;
    }
    mark_scanned(storage, table, first_time).await?;
    Ok(deleted)
}

/// Marks the table's log searched (when this was the first time).
async fn mark_scanned(storage: &Storage, table: &str, first_time: bool) -> Result<()> {
    if !first_time {
        return Ok(());
    }
    let scanned = layout::purge_log_scanned(table);
    storage
        .store()
        .put(&scanned, bytes::Bytes::from_static(b"").into())
        .await
        .map_err(|e| EngineError::Internal(format!("writing {scanned}: {e}")))?;
    Ok(())
}
