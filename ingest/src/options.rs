use std::time::Duration;

use strata_schemas::EventKind;

/// Which topic feeds which table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicBinding {
    pub topic: String,
    pub kind: EventKind,
}

/// Settings of one ingest process. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Kafka bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group; also part of the Delta `txn` app ids.
    pub group: String,
    pub topics: Vec<TopicBinding>,
    /// Flush when this many messages are buffered.
    pub flush_rows: usize,
    /// Flush when this many payload bytes are buffered.
    pub flush_bytes: usize,
    /// Flush when the oldest buffered message is this old.
    pub flush_age: Duration,
    /// Event ids remembered per partition to drop producer retries.
    pub dedupe_window: usize,
    /// How long to wait for the brokers at start-up.
    pub connect_timeout: Duration,
    /// Extra librdkafka settings (`security.protocol`, `sasl.*`, ...).
    pub kafka_config: Vec<(String, String)>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group: "strata".into(),
            topics: EventKind::ALL
                .into_iter()
                .map(|kind| TopicBinding {
                    topic: kind.default_topic().into(),
                    kind,
                })
                .collect(),
            flush_rows: 200_000,
            flush_bytes: 64 * 1024 * 1024,
            flush_age: Duration::from_secs(10),
            dedupe_window: 200_000,
            connect_timeout: Duration::from_secs(10),
            kafka_config: vec![],
        }
    }
}

impl IngestOptions {
    pub fn kind_of(&self, topic: &str) -> Option<EventKind> {
        self.topics
            .iter()
            .find(|t| t.topic == topic)
            .map(|t| t.kind)
    }
}
