//! GDPR/CCPA: export and purge of one data subject, tombstones against late events, receipts.
//!
//! ```text
//! purge(subject) -> tombstone (keyed hashes, request time) that ingest consults
//!                -> marker txn(strata-gdpr-tombstones, tombstone version) in every raw table:
//!                   ingest commits filtered with older tombstones are refused from here on
//!                -> for each raw table: bloom filters skip files -> scan candidates -> rewrite
//!                   the files that hold the subject -> one commit (remove + add) -> delete the
//!                   removed files at once
//!                -> rollups recompute the touched days -> verify 0 rows (else rewrite again,
//!                   up to 3 rounds, else the request fails and keeps its ids to be run again)
//!                -> receipt in `gdpr_audit` (keyed hash only, never the id)
//! ```
//!
//! Ids are checked by [`Subject::validate`] (the id rule) before anything is stored. Every
//! request, over HTTP or from the CLI, goes through [`GdprService`]: recorded in the durable
//! [`RequestStore`] first, run one at a time, resumed by a restarted server until it is done.

mod audit;
mod export;
mod leftovers;
mod lifecycle;
mod marker;
mod pending;
mod purge;
mod requests;
mod rewrite;
mod subject;
mod tombstone;

pub use audit::{AuditRecord, GDPR_AUDIT_TABLE};
pub use export::{ExportBuilder, ExportManifest};
pub use lifecycle::{ExportFileLookup, GdprService, PurgeHook, RequestRun};
pub use purge::{PurgeBuilder, PurgeReceipt, PurgeTimings, TablePurge};
pub use requests::{GdprReceipt, GdprRequest, RequestKind, RequestStatus, RequestStore};
pub use subject::{id_tokens, GdprKey, Subject, MAX_IDS_PER_REQUEST};
pub use tombstone::{Tombstones, TOMBSTONES_TABLE};
