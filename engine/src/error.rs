use deltalake::DeltaTableError;

/// Errors of the engine. `Config` and `Sql` are the user's to fix; `Delta`, `Arrow` and
/// `Internal` are ours or the storage's.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A setting is wrong (bad URL, unwritable root, ...). The message says what to fix.
    #[error("{0}")]
    Config(String),
    /// The statement is wrong (syntax, unknown table, ...).
    #[error("{0}")]
    Sql(String),
    /// Another writer owns a Kafka partition this commit was about to advance.
    #[error("fenced: `{app_id}` is at {found:?} in the table, this writer expected {expected:?}")]
    Fenced {
        app_id: String,
        expected: Option<i64>,
        found: Option<i64>,
    },
    #[error("delta: {0}")]
    Delta(#[from] DeltaTableError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("datafusion: {0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl EngineError {
    pub fn config(msg: impl Into<String>) -> Self {
        Self::Config(msg.into())
    }
}
