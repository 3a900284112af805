//! The event producer: idempotent, acks=all, events keyed by conversation id.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tracing::Instrument as _;
use wa_schemas::{CodecError, Event};

use crate::config::KafkaConfig;
use crate::topics::TopicSpec;

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The event could not be encoded (a bug, not a broker problem).
    #[error("encoding failed: {0}")]
    Encode(#[from] CodecError),
    /// The broker did not acknowledge the record in time.
    #[error("broker did not acknowledge: {0}")]
    Broker(#[from] rdkafka::error::KafkaError),
}

/// A record queued by [`EventProducer::enqueue`], not yet acknowledged.
pub struct Queued(Delivery);

enum Delivery {
    Pending(rdkafka::producer::DeliveryFuture),
    /// Failed before it left (an injected fault).
    Failed(rdkafka::error::KafkaError),
}

impl Queued {
    /// Waits for the broker's acknowledgement; returns (partition, offset).
    pub async fn acknowledged(self) -> Result<(i32, i64), PublishError> {
        let pending = match self.0 {
            Delivery::Pending(pending) => pending,
            Delivery::Failed(err) => return Err(PublishError::Broker(err)),
        };
        match pending.await {
            Ok(Ok(delivery)) => Ok((delivery.partition, delivery.offset)),
            Ok(Err((err, _))) => Err(PublishError::Broker(err)),
            Err(_) => Err(PublishError::Broker(rdkafka::error::KafkaError::Canceled)),
        }
    }
}

/// Topics whose deliveries fail on purpose: fault injection for tests of what a service does
/// when the broker does not take its output. Empty (and without effect) unless a test fills
/// it; a failing record is never sent and its delivery reports a timeout.
#[derive(Debug, Clone, Default)]
pub struct DeliveryFaults(Arc<Mutex<HashSet<String>>>);

impl DeliveryFaults {
    /// Makes every delivery to `topic` (the full name) fail, or succeed again.
    pub fn set_failing(&self, topic: &str, failing: bool) {
        let mut topics = self.0.lock().expect("faults lock");
        if failing {
            topics.insert(topic.to_owned());
        } else {
            topics.remove(topic);
        }
    }

    fn fails(&self, topic: &str) -> bool {
        let topics = self.0.lock().expect("faults lock");
        !topics.is_empty() && topics.contains(topic)
    }
}

fn injected_failure() -> rdkafka::error::KafkaError {
    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut)
}

/// How long librdkafka keeps trying to deliver a record before giving it up: longer than any
/// caller waits for an acknowledgement. An idempotent producer that gives a record up bumps its
/// epoch, which tansu 0.6's SQLite engine cannot take (it panics and stops serving; decision
/// 37), so an overloaded broker must slow producers down rather than make them give up.
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(120);

/// Publishes events, each acknowledged by all in-sync replicas before `publish` returns.
#[derive(Clone)]
pub struct EventProducer {
    inner: FutureProducer,
    /// Shared, not copied, by the clones each publish task holds.
    kafka: Arc<KafkaConfig>,
    source: Arc<str>,
    faults: DeliveryFaults,
}

impl EventProducer {
    /// A producer for `source` (the CloudEvents source, e.g. `wachannel/ingress`).
    /// `delivery_timeout` bounds how long one publish may take before it fails.
    pub fn new(kafka: &KafkaConfig, source: &str, delivery_timeout: Duration) -> anyhow::Result<Self> {
        let inner: FutureProducer = super::client_config(kafka, source)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            // Java-compatible partitioning, so CRM producers written in Java put a conversation
            // on the same partition as we do.
            .set("partitioner", "murmur2_random")
            // Up to 5 ms to fill a batch: fewer, larger produce requests cut the broker's
            // per-request cost, which dominates tail latency under load (docs/benchmarks.md).
            .set("linger.ms", "5")
            .set("message.timeout.ms", delivery_timeout.as_millis().to_string())
            .create()?;
        Ok(Self { inner, kafka: Arc::new(kafka.clone()), source: Arc::from(source), faults: DeliveryFaults::default() })
    }

    /// The same producer, with deliveries to the topics `faults` names failing (tests).
    pub fn with_faults(mut self, faults: DeliveryFaults) -> Self {
        self.faults = faults;
        self
    }

    /// Publishes `event` to `topic`, keyed by its key (the conversation id for message events), and waits for the broker's
    /// acknowledgement. Returns (partition, offset).
    pub async fn publish<E: Event>(&self, topic: &TopicSpec, event: &E) -> Result<(i32, i64), PublishError> {
        let payload = event.encode()?;
        let name = self.kafka.topic(topic);
        let span = send_span(&name, event.key());
        // The record carries the send span's context: its consumers' spans are its children.
        let headers = span.in_scope(|| super::headers::event_headers(event, &self.source));
        let result = self.send(&name, Some(event.key().as_bytes()), &payload, headers).instrument(span.clone()).await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        metrics::counter!(crate::metrics::EVENTS_PUBLISHED, "topic" => topic.name, "outcome" => outcome).increment(1);
        match &result {
            Ok((partition, offset)) => {
                span.record("messaging.destination.partition.id", partition.to_string());
                span.record("messaging.kafka.offset", offset);
            }
            Err(err) => {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", err.to_string());
            }
        }
        result.map_err(PublishError::from)
    }

    /// Queues `event` for `topic` without waiting for the broker: the returned [`Queued`]
    /// resolves once it is acknowledged. `partition` overrides the key's partition (state
    /// snapshots go to the partition of the input they were computed from). Waits for room
    /// when the local queue is full.
    pub async fn enqueue<E: Event>(
        &self,
        topic: &TopicSpec,
        event: &E,
        partition: Option<i32>,
    ) -> Result<Queued, PublishError> {
        let payload = event.encode()?;
        let name = self.kafka.topic(topic);
        let span = send_span(&name, event.key());
        let headers = span.in_scope(|| super::headers::event_headers(event, &self.source));
        Ok(self.enqueue_record(&name, event.key().as_bytes(), Some(&payload), headers, partition).await?)
    }

    /// Queues a record (`None` payload: a tombstone) without waiting for the broker.
    pub async fn enqueue_record(
        &self,
        topic: &str,
        key: &[u8],
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
        partition: Option<i32>,
    ) -> Result<Queued, rdkafka::error::KafkaError> {
        if self.faults.fails(topic) {
            return Ok(Queued(Delivery::Failed(injected_failure())));
        }
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).key(key).headers(headers.clone());
            if let Some(payload) = payload {
                record = record.payload(payload);
            }
            if let Some(partition) = partition {
                record = record.partition(partition);
            }
            match self.inner.send_result(record) {
                Ok(delivery) => return Ok(Queued(Delivery::Pending(delivery))),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    _,
                )) => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((err, _)) => return Err(err),
            }
        }
    }

    /// Publishes raw bytes (dead letters keep the original value).
    pub(crate) async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(i32, i64), rdkafka::error::KafkaError> {
        if self.faults.fails(topic) {
            return Err(injected_failure());
        }
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).payload(payload).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        match self.inner.send(record, Timeout::Never).await {
            Ok(delivery) => Ok((delivery.partition, delivery.offset)),
            Err((err, _message)) => Err(err),
        }
    }

    /// Publishes raw bytes with no headers: for tools and tests that play a foreign producer.
    pub async fn send_raw(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: &[u8],
    ) -> Result<(i32, i64), rdkafka::error::KafkaError> {
        self.send(topic, key, payload, OwnedHeaders::new()).await
    }

    /// The prefixed name of a topic.
    pub fn topic_name(&self, topic: &TopicSpec) -> String {
        self.kafka.topic(topic)
    }

    /// Waits for every queued record to be acknowledged, up to `timeout`; false when some
    /// were not.
    pub fn flush_all(&self, timeout: Duration) -> bool {
        match self.inner.flush(timeout) {
            Ok(()) => true,
            Err(err) => {
                tracing::error!(error = %err, "producer flush failed");
                false
            }
        }
    }

    /// Waits for every queued record to be acknowledged, up to `timeout`.
    pub fn flush(&self, timeout: Duration) {
        if let Err(err) = self.inner.flush(timeout) {
            tracing::error!(error = %err, "producer flush failed; queued records may be lost");
        }
    }
}

/// The producer span of one record (OpenTelemetry's messaging conventions): `send <topic>`.
pub(crate) fn send_span(topic: &str, key: &str) -> tracing::Span {
    tracing::info_span!(
        "send",
        otel.name = format!("send {topic}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.operation.type = "send",
        messaging.destination.name = topic,
        messaging.kafka.message.key = key,
        messaging.destination.partition.id = tracing::field::Empty,
        messaging.kafka.offset = tracing::field::Empty,
    )
}
