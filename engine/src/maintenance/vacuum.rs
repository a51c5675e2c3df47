//! Vacuum: deletes the data files of a table that its current version no longer references,
//! once their grace period is over, then writes a checkpoint when enough commits piled up and
//! cleans log entries past the log retention.
//!
//! ```text
//! list <root>/tables/<name>/ (data files only) -> load the latest version
//!   referenced by it ---------------------------------------> kept, always
//!   removed by a commit (a tombstone) ----------------------> deleted grace after the removal
//!   referenced by no commit (a killed writer's leftover, or ---> deleted grace after it was
//!   a removal whose tombstone left the checkpoints)              written (last_modified)
//! then: >= checkpoint_every commits since the last checkpoint -> checkpoint
//!       log entries older than max(log retention, grace) and a checkpoint -> deleted
//! ```
//!
//! The listing comes first and the log is loaded after it, so a file committed while the
//! listing ran is referenced by the version loaded. A file written but not committed yet is
//! young: the grace period must exceed the longest time a write takes to commit. A GDPR purge
//! does not wait for vacuum: it deletes the files it removed at once.
//!
//! Why not delta-rs's `vacuum`: it commits `VACUUM START`/`END` entries outside
//! [`crate::delta::commit`], and its dry run lists paths without sizes; the rule above is the
//! same as its full mode's.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use object_store::path::Path;
use object_store::ObjectMeta;
use tracing::info;

use super::{millis, JobReport, MaintainedTable, VacuumOptions};
use crate::delta::{commit, layout, log};
use crate::{Result, Storage};

/// Vacuums table `table` (see the module doc): deletes what is past its grace period (or, with
/// `opts.dry_run`, only lists it), then checkpoints and cleans the log.
pub async fn vacuum(storage: &Storage, table: &str, opts: &VacuumOptions) -> Result<JobReport> {
    vacuum_at(storage, table, opts, Utc::now()).await
}

/// [`vacuum`] as if it were `now` (tests move time forward).
pub(crate) async fn vacuum_at(
    storage: &Storage,
    name: &str,
    opts: &VacuumOptions,
    now: DateTime<Utc>,
) -> Result<JobReport> {
    let mut report = JobReport::new("vacuum", name);
    report.dry_run = opts.dry_run;
    let Some(mut table) = MaintainedTable::open(storage, name).await? else {
        return Ok(report);
    };
    let cutoff_ms = now.timestamp_millis().saturating_sub(millis(opts.grace));
    let expired = expired_files(storage, &mut table, cutoff_ms).await?;
    let column = table.decl.partition_column;
    for f in &expired {
        report.files_removed += 1;
        report.bytes_removed += f.size;
        if let Some(p) = layout::relative_to_table(name, &f.location).and_then(|rel| {
            rel.split('/')
                .find(|seg| seg.starts_with(&format!("{column}=")))
        }) {
            report.partitions.push(p.to_string());
        }
    }
    if opts.dry_run {
        return Ok(report.finish());
    }
    for f in &expired {
        storage.delete_if_present(&f.location).await?;
    }
    checkpoint_and_clean(storage, &table, opts, now).await?;
    info!(
        table = name,
        files = report.files_removed,
        bytes = report.bytes_removed,
        "vacuumed"
    );
    Ok(report.finish())
}

/// The data files under the table's directory that its latest version does not reference
/// and whose grace period ended before `cutoff_ms`.
async fn expired_files(
    storage: &Storage,
    table: &mut MaintainedTable,
    cutoff_ms: i64,
) -> Result<Vec<ObjectMeta>> {
    let name = table.name();
    let listed = log::stored_data_files(storage, name).await?;
    // After the listing: every file committed before it ended is referenced here.
    table.delta.update_state().await?;
    let referenced: HashSet<Path> = table
        .live_files()?
        .iter()
        .map(|f| layout::table_file(name, &f.path))
        .collect();
    let removed_at: HashMap<Path, Option<i64>> = log::tombstones(&table.delta)
        .await?
        .into_iter()
        .map(|(path, at)| (layout::table_file(name, &path), at))
        .collect();
    Ok(listed
        .into_iter()
        .filter(|meta| !referenced.contains(&meta.location))
        .filter(|meta| {
            let since_ms = match removed_at.get(&meta.location) {
                Some(Some(removed)) => *removed,
                _ => meta.last_modified.timestamp_millis(),
            };
            since_ms < cutoff_ms
        })
        .collect())
}

/// A checkpoint once `opts.checkpoint_every` commits landed since the last one, then the
/// log entries older than the log retention (never less than the grace period, so that a
/// removal's entry outlives its file) deleted.
async fn checkpoint_and_clean(
    storage: &Storage,
    table: &MaintainedTable,
    opts: &VacuumOptions,
    now: DateTime<Utc>,
) -> Result<()> {
    let name = table.name();
    let version = table.delta.version().unwrap_or(0);
    let since = match log::last_checkpoint(storage, name).await? {
        Some(last) => version.saturating_sub(last),
        None => version + 1,
    };
    if version > 0 && since >= opts.checkpoint_every.max(1) {
        commit::checkpoint(&table.delta).await?;
        info!(table = name, version, "checkpoint written");
    }
    let retention = opts.log_retention.max(opts.grace);
    let cutoff_ms = now.timestamp_millis().saturating_sub(millis(retention));
    let cleaned = commit::clean_expired_log(&table.delta, cutoff_ms).await?;
    if cleaned > 0 {
        info!(
            table = name,
            entries = cleaned,
            "expired log entries deleted"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::maintenance::test_support::*;
    use crate::maintenance::{compact, CompactOptions};

    const DAY: &str = "2026-10-01";

    /// Sets the modification time of a local file to `age` ago.
    fn age(path: &std::path::Path, age: Duration) {
        std::fs::File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(SystemTime::now() - age)
            .unwrap();
    }

    #[tokio::test]
    async fn deletes_what_is_past_its_grace_and_never_a_referenced_file() {
        let root = root().await;
        append_files(&root.storage, DAY, 0, 3, 20).await;
        let two = CompactOptions {
            min_files: 2,
            ..Default::default()
        };
        assert_eq!(
            compact(&root.storage, CLICKS, &two)
                .await
                .unwrap()
                .files_removed,
            3
        );
        let partition = format!("event_date={DAY}");
        let old_orphan = root.file(CLICKS, &format!("{partition}/part-killed-old.parquet"));
        let young_orphan = root.file(CLICKS, &format!("{partition}/part-killed-young.parquet"));
        std::fs::write(&old_orphan, b"left by a killed writer").unwrap();
        std::fs::write(&young_orphan, b"being written").unwrap();
        age(&old_orphan, Duration::from_secs(8 * 86_400));
        let live_file = root.file(CLICKS, &live(&root.storage, CLICKS).await[0].path);
        age(&live_file, Duration::from_secs(30 * 86_400));

        // Now: only the old orphan is past its grace (the compacted files were removed just now).
        let opts = VacuumOptions {
            checkpoint_every: 1,
            ..Default::default()
        };
        let report = vacuum(&root.storage, CLICKS, &opts).await.unwrap();
        assert_eq!(report.job, "vacuum:link_clicks");
        assert_eq!(report.files_removed, 1);
        assert_eq!(report.partitions, vec![partition.clone()]);
        assert!(!old_orphan.exists());
        assert!(young_orphan.exists() && live_file.exists());
        assert_eq!(root.files_on_disk(CLICKS, &partition), 5);
        assert!(root
            .dir
            .path()
            .join("tables/link_clicks/_delta_log/_last_checkpoint")
            .exists());

        // Eight days later: the removed files and the young orphan too; a dry run lists them.
        let later = Utc::now() + chrono::Duration::days(8);
        let dry = VacuumOptions {
            dry_run: true,
            ..Default::default()
        };
        let listed = vacuum_at(&root.storage, CLICKS, &dry, later).await.unwrap();
        assert!(listed.dry_run);
        assert_eq!(listed.files_removed, 4);
        assert_eq!(
            root.files_on_disk(CLICKS, &partition),
            5,
            "a dry run deletes nothing"
        );
        let done = vacuum_at(&root.storage, CLICKS, &VacuumOptions::default(), later)
            .await
            .unwrap();
        assert_eq!(done.files_removed, 4);
        assert!(done.bytes_removed > 0);
        assert_eq!(root.files_on_disk(CLICKS, &partition), 1);
        assert!(live_file.exists());
        assert_eq!(
            count(&root.storage, "SELECT count(*) FROM link_clicks").await,
            60
        );
    }
}
