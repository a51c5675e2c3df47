use std::time::Duration;

use strata_schemas::EventKind;

/// Which topic feeds which table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicBinding {
    pub topic: String,
    pub kind: EventKind,
}

/// Settings of one ingest process. `Default` gives the documented defaults; each is declared
/// once, as a `DEFAULT_*` constant below, which the CLI flags read too.
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
    /// Static group membership (`group.instance.id`): a restarted process with the same id
    /// takes its partitions back at once instead of waiting for the broker to expire its
    /// old member. None (the default): dynamic membership. No two live processes may share
    /// one; the broker fences the older, which then stops with an error.
    pub group_instance_id: Option<String>,
}

impl IngestOptions {
    pub const DEFAULT_BROKERS: &'static str = "127.0.0.1:9092";
    pub const DEFAULT_GROUP: &'static str = "strata";
    pub const DEFAULT_FLUSH_ROWS: usize = 200_000;
    pub const DEFAULT_FLUSH_BYTES: usize = 64 * 1024 * 1024;
    pub const DEFAULT_FLUSH_AGE: Duration = Duration::from_secs(10);
    pub const DEFAULT_DEDUPE_WINDOW: usize = 200_000;
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

    pub fn kind_of(&self, topic: &str) -> Option<EventKind> {
        self.topics
            .iter()
            .find(|t| t.topic == topic)
            .map(|t| t.kind)
    }
}

impl Default for IngestOptions {
    fn default() -> Self {
        Self {
            brokers: Self::DEFAULT_BROKERS.into(),
            group: Self::DEFAULT_GROUP.into(),
            topics: EventKind::ALL
                .into_iter()
                .map(|kind| TopicBinding {
                    topic: kind.default_topic().into(),
                    kind,
                })
                .collect(),
            flush_rows: Self::DEFAULT_FLUSH_ROWS,
            flush_bytes: Self::DEFAULT_FLUSH_BYTES,
            flush_age: Self::DEFAULT_FLUSH_AGE,
            dedupe_window: Self::DEFAULT_DEDUPE_WINDOW,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            kafka_config: vec![],
            group_instance_id: None,
        }
    }
}
