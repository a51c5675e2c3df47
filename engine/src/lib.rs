//! Tables, storage, the SQL session, rollups, panels and the result cache: everything that
//! reads or writes Delta tables.
//!
//! ```text
//! ingest --(batches + txn offsets)--> [ engine: Storage -> EventTable.append ] --> <root>/tables/<name>
//!                                     [ engine: RollupBuilder ] -- changed days --> rollup tables
//! strata sql / query-api -----------> [ engine: Catalog -> Snapshot -> read-only DataFusion ]
//!                                     [ engine: Panels (named SQL) + ResultCache by version ]
//! ```
//!
//! The storage root is a URL (`./data` by default, or `s3://`, `gs://`, `az://`); every table
//! lives at `<root>/tables/<name>` as a Delta Lake table.

mod bounded;
pub mod budget;
mod cache;
mod catalog;
pub mod delta;
mod error;
mod format;
pub mod gdpr;
mod jobs;
pub mod lease;
mod literal;
pub mod maintenance;
pub mod memory;
mod panel;
pub mod pg;
mod readonly;
mod redact;
pub mod registry;
mod rollup;
mod session;
pub mod sketch;
mod storage;
mod table;
mod text;
mod writer;

pub use cache::{CachedResult, ResultCache};
pub use catalog::{Catalog, QueryLimits, Snapshot, TableEntry};
pub use delta::commit::{AppendOutcome, RawAppend, TxnUpdate, TOMBSTONE_MARKER_APP_ID};
pub use delta::layout;
pub use delta::log::changed_dates;
pub use error::{EngineError, Result};
pub use format::{write_batches, OutputFormat};
pub use jobs::{
    run_scheduled, JobRun, JobRuns, MaintenanceOptions, ScheduledJob, ScheduledOutcome,
    JOB_RUNS_TABLE,
};
pub use panel::{
    Panel, PanelParams, PanelRequest, PanelResult, Panels, ParamKind, ParamRule, ParamSpec,
    ParamValue, Period, PreparedPanel, PARAMS,
};
pub use readonly::{
    check_size, check_statement, is_deterministic, is_explain, plan_read_only, tables_read,
};
pub use redact::Redactor;
pub use registry::{RollupSpec, TableSpec, ROLLUPS};
pub use rollup::{PurgedRows, RollupBuilder, RollupReport};
pub use session::{scalar_i64, PlannedQuery, SqlSession};
pub use storage::{Storage, StorageOptions};
pub use table::EventTable;
pub use writer::writer_properties;

/// Re-exported so that callers name one Delta version.
pub use deltalake;

/// Creates every table Strata serves from the start (the registry's tables created at start:
/// event tables, dead letters, job runs, then the rollups) that does not exist yet, empty, so
/// that panels and SQL find them from the first request.
pub async fn ensure_tables(storage: &Storage) -> Result<()> {
    use registry::Creation;
    for decl in registry::TABLES {
        if decl.creation == Creation::AtStart {
            EventTable::open_or_create(storage, decl.spec()).await?;
        }
    }
    let catalog = Catalog::open(storage).await?;
    rollup::ensure_rollup_tables(&catalog).await
}
