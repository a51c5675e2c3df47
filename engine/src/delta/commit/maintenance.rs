//! Keeping a table's log short: checkpoints, and the cleanup of log entries a checkpoint made
//! unnecessary.

use deltalake::DeltaTable;

use crate::Result;

/// Writes a checkpoint of the loaded version of `table` (loading replays no commit before it).
pub(crate) async fn checkpoint(table: &DeltaTable) -> Result<()> {
    deltalake::checkpoints::create_checkpoint(table, None).await?;
    Ok(())
}

/// Deletes the log entries of `table` older than `cutoff_ms` (ms since the epoch) that a
/// checkpoint before the cutoff makes unnecessary (the table loads the same); how many went.
pub(crate) async fn clean_expired_log(table: &DeltaTable, cutoff_ms: i64) -> Result<usize> {
    let version = table.version().unwrap_or(0);
    let log_store = table.log_store();
    let cleaned = deltalake::checkpoints::cleanup_expired_logs_for(
        version,
        log_store.as_ref(),
        cutoff_ms,
        None,
    )
    .await?;
    Ok(cleaned)
}
