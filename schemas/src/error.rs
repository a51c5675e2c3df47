use arrow::error::ArrowError;

/// Errors of the schemas crate. A bad *event* is not an error: it becomes a [`crate::Reject`].
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// Our bug: a schema or kernel call failed on data we produced ourselves.
    #[error("internal schema error: {0}")]
    Internal(#[from] ArrowError),
    /// The caller named something that does not exist.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = SchemaError> = std::result::Result<T, E>;
