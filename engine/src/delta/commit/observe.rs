//! Who hears about commits: one observer per process (a server's metrics), told of every
//! commit this process makes through [`super`] and of every conflict it lost, by table and
//! operation. Without one (the CLI, tests) nothing is told. Ingest counts its own commits in
//! its metrics; a server registers this for the rollups, purges and maintenance it runs.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// What a commit was, as a bounded label: `append`, `replace` (rollup partitions), `purge`,
/// `compaction`, `retention`.
pub type Operation = &'static str;

/// Told of the commits of this process.
pub trait CommitObserver: Send + Sync {
    /// A commit of `table` landed, `elapsed` after its attempt began.
    fn committed(&self, table: &str, operation: Operation, elapsed: Duration);
    /// A commit of `table` lost a conflict with another writer (it is retried or dropped).
    fn conflicted(&self, table: &str, operation: Operation);
}

static OBSERVER: OnceLock<Arc<dyn CommitObserver>> = OnceLock::new();

/// Sets the observer of this process; false when one was set already (the first one stays:
/// one process serves one registry).
pub fn set_commit_observer(observer: Arc<dyn CommitObserver>) -> bool {
    OBSERVER.set(observer).is_ok()
}

pub(crate) fn committed(table: &str, operation: Operation, started: Instant) {
    if let Some(o) = OBSERVER.get() {
        o.committed(table, operation, started.elapsed());
    }
}

pub(crate) fn conflicted(table: &str, operation: Operation) {
    if let Some(o) = OBSERVER.get() {
        o.conflicted(table, operation);
    }
}
