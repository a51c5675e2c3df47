//! Producing generated messages to Kafka and creating topics: the load side of `strata bench
//! ingest`, also used by `strata gen --kafka` and `strata demo`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;

/// Creates the topics if missing (an existing topic is fine).
pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("creating Kafka admin client")?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new, &opts).await.with_context(|| {
        format!("cannot create topics on `{brokers}`; is the broker reachable?")
    })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => anyhow::bail!("creating topic `{t}`: {e}"),
        }
    }
    Ok(())
}

#[derive(Default)]
pub struct DeliveryCounts {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
}

pub struct CountingContext(pub Arc<DeliveryCounts>);

impl ClientContext for CountingContext {}

impl ProducerContext for CountingContext {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.0.ok.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                tracing::warn!(error = %e, "delivery failed");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

/// A producer tuned for throughput; retries are librdkafka's (no idempotence: not every
/// broker we test against offers it, and Strata drops retried event ids itself).
pub fn producer(
    brokers: &str,
) -> anyhow::Result<(ThreadedProducer<CountingContext>, Arc<DeliveryCounts>)> {
    let counts = Arc::new(DeliveryCounts::default());
    let p = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "60000")
        .create_with_context(CountingContext(counts.clone()))
        .with_context(|| format!("creating Kafka producer for `{brokers}`"))?;
    Ok((p, counts))
}

/// Sends one message, waiting while the local queue is full.
pub fn send(
    p: &ThreadedProducer<CountingContext>,
    topic: &str,
    key: Option<&str>,
    payload: &str,
) -> anyhow::Result<()> {
    let mut record = BaseRecord::to(topic).payload(payload);
    if let Some(k) = key {
        record = record.key(k);
    }
    loop {
        match p.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err((e, _)) => return Err(e).context("producing"),
        }
    }
}

/// Waits for every queued message, failing if any was not delivered.
pub fn finish(
    p: &ThreadedProducer<CountingContext>,
    counts: &DeliveryCounts,
) -> anyhow::Result<u64> {
    p.flush(Duration::from_secs(120))
        .context("flushing producer")?;
    let failed = counts.failed.load(Ordering::Relaxed);
    anyhow::ensure!(failed == 0, "{failed} messages were not delivered");
    Ok(counts.ok.load(Ordering::Relaxed))
}
