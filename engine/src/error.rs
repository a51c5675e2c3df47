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
    /// The statement is valid but not allowed here (not read-only, reads a file, ...).
    #[error("{0}")]
    Refused(String),
    /// A request parameter is wrong; the message names it and says what is expected.
    #[error("{0}")]
    Param(String),
    /// No such panel, table, request, ...
    #[error("{0}")]
    NotFound(String),
    /// The query hit a limit (memory, rows, time).
    #[error("{0}")]
    Limit(String),
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

    /// Sorts an execution error: a memory limit is the caller's to fix, the rest is ours.
    pub fn from_execution(e: datafusion::error::DataFusionError) -> Self {
        match e.find_root() {
            datafusion::error::DataFusionError::ResourcesExhausted(m) => Self::Limit(format!(
                "the query needs more memory than its limit allows ({m}); narrow it or aggregate more"
            )),
            _ => Self::DataFusion(e),
        }
    }

    /// True when the caller, not the engine, must change something.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            Self::Config(_)
                | Self::Sql(_)
                | Self::Refused(_)
                | Self::Param(_)
                | Self::NotFound(_)
                | Self::Limit(_)
        )
    }
}
