/// Errors that stop ingest. Bad events never are errors: they go to dead letters.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A setting is wrong or a dependency is unreachable; the message says what to fix.
    #[error("{0}")]
    Config(String),
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Engine(#[from] strata_engine::EngineError),
    #[error("decode: {0}")]
    Schema(#[from] strata_schemas::SchemaError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("internal: {0}")]
    Internal(String),
}

pub type Result<T, E = IngestError> = std::result::Result<T, E>;
