//! Tables, storage and the SQL session: everything that reads or writes Delta tables.
//!
//! ```text
//! ingest --(batches + txn offsets)--> [ engine: Storage -> EventTable.append ] --> <root>/tables/<name>
//! strata sql / query-api ----------> [ engine: SqlSession (DataFusion over Delta) ]
//! ```
//!
//! The storage root is a URL (`./data` by default, or `s3://`, `gs://`, `az://`); every table
//! lives at `<root>/tables/<name>` as a Delta Lake table.

mod error;
mod format;
mod session;
mod storage;
mod table;
mod writer;

pub use error::{EngineError, Result};
pub use format::{write_batches, OutputFormat};
pub use session::SqlSession;
pub use storage::{Storage, StorageOptions};
pub use table::{AppendOutcome, EventTable, TableSpec, TxnUpdate};
pub use writer::writer_properties;

/// Re-exported so that callers name one Delta version.
pub use deltalake;
