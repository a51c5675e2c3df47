//! The one owner of the storage layout and the Delta log: paths under the root ([`layout`]),
//! reading the log (`log`: versions, `txn` versions, files added and removed, changed
//! partitions), and every commit (`commit`: create, fenced append, `txn` raise, partition
//! replace, remove + add). Nothing else spells a path or builds a commit.
//!
//! ```text
//! EventTable / rollups / GDPR --ask--> delta::commit --CommitBuilder / write--> <root>/tables/<name>/_delta_log
//! catalog / rollups / purge ----ask--> delta::log -----reads----------------->  (the same log)
//! ```

pub(crate) mod commit;
pub mod layout;
pub(crate) mod log;
pub mod stats;

pub use commit::{set_commit_observer, CommitObserver, Operation as CommitOperation};
