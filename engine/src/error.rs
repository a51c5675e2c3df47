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
    /// The statement is valid but failed on the data while it ran (division by zero, a bad
    /// cast, a bad regular expression, corrupt sketch bytes, ...): the caller's to fix. The
    /// message may quote a data value: it goes to the caller, never to the log.
    #[error("the query failed: {0}")]
    Query(String),
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

    /// Sorts an execution error: a memory limit or a failure on the data (a bad cast, division
    /// by zero, a bad pattern, ...) is the caller's to fix; storage, I/O and internal errors
    /// are ours.
    pub fn from_execution(e: datafusion::error::DataFusionError) -> Self {
        use datafusion::error::DataFusionError as D;
        let root = e.find_root();
        match root {
            // A job's pool names its own setting and what to do.
            D::ResourcesExhausted(m) if m.contains(crate::memory::JOBS_MEMORY_FLAG) => {
                Self::Limit(m.clone())
            }
            D::ResourcesExhausted(m) => Self::Limit(format!(
                "the query needs more memory than its limit allows ({m}); narrow it or aggregate more"
            )),
            D::ArrowError(a, _) if arrow_is_users(a) => Self::Query(a.to_string()),
            D::Execution(m) | D::Plan(m) | D::NotImplemented(m) | D::Configuration(m) => {
                Self::Query(m.clone())
            }
            D::SchemaError(..) | D::SQL(..) => Self::Query(root.to_string()),
            // Functions report their argument errors (a bad regular expression, ...) as
            // external errors; storage failures come as their own types and stay ours.
            D::External(x) => match x.downcast_ref::<arrow::error::ArrowError>() {
                Some(a) if arrow_is_users(a) => Self::Query(a.to_string()),
                Some(_) => Self::DataFusion(e),
                None if x.is::<object_store::Error>()
                    || x.is::<std::io::Error>()
                    || x.is::<deltalake::DeltaTableError>()
                    || x.is::<parquet::errors::ParquetError>() =>
                {
                    Self::DataFusion(e)
                }
                None => Self::Query(x.to_string()),
            },
            _ => Self::DataFusion(e),
        }
    }

    /// A short name of the error's kind that never quotes a value: what a log line may carry.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Config(_) => "config",
            Self::Sql(_) => "sql",
            Self::Refused(_) => "refused",
            Self::Param(_) => "param",
            Self::NotFound(_) => "not_found",
            Self::Limit(_) => "limit",
            Self::Query(_) => "query",
            Self::Fenced { .. } => "fenced",
            Self::Delta(_) => "delta",
            Self::Arrow(_) => "arrow",
            Self::DataFusion(_) => "datafusion",
            Self::Internal(_) => "internal",
        }
    }

    /// True when a data file a read named was deleted meanwhile (a purge, a retention run or a
    /// vacuum between loading a snapshot and reading its files): the same work on a fresh
    /// snapshot reads the files that replaced it.
    pub fn is_missing_file(&self) -> bool {
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(err) = cur {
            if let Some(object_store::Error::NotFound { .. }) = err.downcast_ref() {
                return true;
            }
            cur = err.source();
        }
        // Not every layer keeps its source: object_store's message says it.
        let text = self.to_string();
        matches!(
            self,
            Self::DataFusion(_) | Self::Delta(_) | Self::Internal(_)
        ) && text.contains("Object at location")
            && text.contains("not found")
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
                | Self::Query(_)
        )
    }
}

/// Arrow errors that come from the values a statement computes on, not from storage.
fn arrow_is_users(e: &arrow::error::ArrowError) -> bool {
    use arrow::error::ArrowError as A;
    matches!(
        e,
        A::CastError(_)
            | A::DivideByZero
            | A::ArithmeticOverflow(_)
            | A::ComputeError(_)
            | A::InvalidArgumentError(_)
            | A::ParseError(_)
            | A::SchemaError(_)
            | A::NotYetImplemented(_)
            | A::JsonError(_)
            | A::CsvError(_)
            | A::DictionaryKeyOverflowError
            | A::RunEndIndexOverflowError
            | A::OffsetOverflowError(_)
    )
}
