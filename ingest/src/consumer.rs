use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::Mutex;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;
use tracing::{info, warn};

use crate::{IngestError, IngestOptions, Result};

/// A change of assignment, handed from librdkafka's callback to the consumer loop, which
/// does the async work (reading offsets from the tables, seeking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RebalanceEvent {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
}

pub(crate) struct IngestContext {
    events: Mutex<Sender<RebalanceEvent>>,
    /// High watermark per (topic, partition), from librdkafka's periodic statistics.
    pub(crate) high_watermarks: Mutex<HashMap<(String, i32), i64>>,
}

impl ClientContext for IngestContext {
    fn stats(&self, statistics: Statistics) {
        let Ok(mut marks) = self.high_watermarks.lock() else {
            return;
        };
        for (name, topic) in statistics.topics {
            for (partition, p) in topic.partitions {
                if partition >= 0 && p.hi_offset >= 0 {
                    marks.insert((name.clone(), partition), p.hi_offset);
                }
            }
        }
    }
}

impl ConsumerContext for IngestContext {
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let event = match rebalance {
            Rebalance::Assign(tpl) => RebalanceEvent::Assigned(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect(),
            ),
            Rebalance::Revoke(tpl) => RebalanceEvent::Revoked(
                tpl.elements()
                    .iter()
                    .map(|e| (e.topic().to_string(), e.partition()))
                    .collect(),
            ),
            Rebalance::Error(e) => {
                warn!(error = %e, "rebalance error");
                return;
            }
        };
        info!(?event, "rebalance");
        if let Ok(tx) = self.events.lock() {
            let _ = tx.send(event);
        }
    }
}

pub(crate) type IngestConsumer = StreamConsumer<IngestContext>;

/// Creates the consumer, proves the brokers are reachable and the topics exist, and
/// subscribes. Each failure names the setting to fix.
pub(crate) fn connect(
    opts: &IngestOptions,
    events: Sender<RebalanceEvent>,
) -> Result<IngestConsumer> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &opts.brokers)
        .set("group.id", &opts.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("allow.auto.create.topics", "false")
        .set("enable.partition.eof", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("max.poll.interval.ms", "300000")
        .set("fetch.max.bytes", "52428800")
        .set("queued.max.messages.kbytes", "65536")
        .set("statistics.interval.ms", "5000")
        .set("client.id", "strata-ingest");
    if let Some(id) = &opts.group_instance_id {
        config.set("group.instance.id", id);
    }
    for (k, v) in &opts.kafka_config {
        config.set(k, v);
    }
    let context = IngestContext {
        events: Mutex::new(events),
        high_watermarks: Mutex::default(),
    };
    let consumer: IngestConsumer = config
        .create_with_context(context)
        .map_err(|e| IngestError::Config(format!("Kafka client settings rejected: {e}")))?;

    let metadata = consumer.fetch_metadata(None, opts.connect_timeout).map_err(|e| {
        IngestError::Config(format!(
            "cannot reach Kafka at `{}` within {:?} ({e}); check --brokers / STRATA_BROKERS and that the broker is running",
            opts.brokers, opts.connect_timeout
        ))
    })?;
    for binding in &opts.topics {
        let found = metadata.topics().iter().find(|t| t.name() == binding.topic);
        let ok = match found {
            Some(t) => t.error().is_none() && !t.partitions().is_empty(),
            None => false,
        };
        if !ok {
            return Err(IngestError::Config(format!(
                "topic `{}` does not exist on `{}`; create it (the generator can: `strata gen --kafka {} --create-topics`) or choose another with --{}-topic",
                binding.topic,
                opts.brokers,
                opts.brokers,
                match binding.kind {
                    strata_schemas::EventKind::LinkClick => "click",
                    strata_schemas::EventKind::AiUsage => "ai-usage",
                }
            )));
        }
    }
    let topics: Vec<&str> = opts.topics.iter().map(|t| t.topic.as_str()).collect();
    consumer.subscribe(&topics)?;
    info!(
        brokers = %opts.brokers,
        group = %opts.group,
        group_instance_id = ?opts.group_instance_id,
        ?topics,
        "subscribed"
    );
    Ok(consumer)
}

/// Errors from `recv` that mean "try again" rather than "stop". A fatal error leaves the
/// client unusable (librdkafka's rule); with static membership it is how a process learns
/// that another one took its `group.instance.id`.
pub(crate) fn is_transient(e: &KafkaError) -> bool {
    if matches!(e, KafkaError::MessageConsumptionFatal(_)) {
        return false;
    }
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::FencedInstanceId) => {
            false
        }
        Some(_) | None => !matches!(
            e,
            KafkaError::ClientCreation(_) | KafkaError::Subscription(_)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_and_fenced_errors_stop_ingest() {
        assert!(!is_transient(&KafkaError::MessageConsumptionFatal(
            RDKafkaErrorCode::Fatal
        )));
        assert!(!is_transient(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::FencedInstanceId
        )));
        assert!(is_transient(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
    }
}
