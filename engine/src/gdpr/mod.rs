//! GDPR/CCPA: export and purge of one data subject, tombstones against late events, receipts.
//!
//! ```text
//! purge(subject) -> for each raw table: bloom filters skip files -> scan candidates -> rewrite
//!                   the files that hold the subject -> one commit (remove + add) -> delete the
//!                   removed files at once -> rollups recompute the touched days -> verify 0 rows
//!                -> tombstone (keyed hash, request time) that ingest consults
//!                -> receipt in `gdpr_audit` (keyed hash only, never the id)
//! ```

mod audit;
mod export;
mod purge;
mod requests;
mod subject;
mod tombstone;

pub use audit::{AuditRecord, GDPR_AUDIT_TABLE};
pub use export::{ExportBuilder, ExportManifest};
pub use purge::{PurgeBuilder, PurgeReceipt, PurgeTimings, TablePurge};
pub use requests::{GdprRequest, RequestKind, RequestStatus, RequestStore};
pub use subject::{GdprKey, Subject};
pub use tombstone::{Tombstones, TOMBSTONES_TABLE};
