//! Reading and writing the channel's topics: records as the broker holds them, waiting for
//! the one a test expects, reading a topic to its end.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use wa_platform::config::KafkaConfig;
use wa_platform::topics::{self, TopicSpec};
use wa_schemas::Event;

use crate::{Channel, EVENT_TIMEOUT};

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers (last value wins).
    pub headers: HashMap<String, String>,
}

impl RawRecord {
    /// Decodes the value as `E`.
    pub fn decode<E: Event>(&self) -> E {
        E::decode(&self.payload).unwrap_or_else(|err| panic!("record at {} is not decodable: {err}", self.offset))
    }

    /// The trace id of the record's `traceparent` header.
    pub fn trace_id(&self) -> Option<String> {
        let traceparent = self.headers.get("traceparent")?;
        traceparent.split('-').nth(1).map(str::to_owned)
    }
}

impl Channel {
    /// Produces raw bytes to a topic of this channel, as a CRM producer or a faulty client would.
    pub async fn produce_raw(&self, spec: &TopicSpec, key: &str, payload: &[u8]) {
        let producer = wa_platform::kafka::EventProducer::new(&self.kafka, "e2e-tests", Duration::from_secs(120))
            .expect("producer");
        let topic = self.topic(spec);
        producer.send_raw(&topic, Some(key.as_bytes()), payload).await.expect("raw record acknowledged");
    }

    /// Publishes an event to a topic of this channel, as a service would.
    pub async fn publish<E: Event>(&self, spec: &TopicSpec, event: &E) {
        let producer = wa_platform::kafka::EventProducer::new(&self.kafka, "e2e-tests", Duration::from_secs(120))
            .expect("producer");
        producer.publish(spec, event).await.expect("event acknowledged");
    }

    /// Reads a topic from the beginning until a record matches `matches`; fails after
    /// [`EVENT_TIMEOUT`].
    pub async fn await_record(&self, spec: &TopicSpec, matches: impl FnMut(&RawRecord) -> bool) -> RawRecord {
        self.await_record_within(spec, EVENT_TIMEOUT, matches).await
    }

    /// [`Channel::await_record`] with its own time limit (after a burst, say, when the broker
    /// may still be catching up).
    pub async fn await_record_within(
        &self,
        spec: &TopicSpec,
        timeout: Duration,
        mut matches: impl FnMut(&RawRecord) -> bool,
    ) -> RawRecord {
        let topic = self.topic(spec);
        let consumer = assign_from_beginning(&self.kafka, &topic).await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("no matching record on {topic} within {timeout:?}"))
                .expect("consume");
            let record = raw(&message);
            if matches(&record) {
                return record;
            }
        }
    }

    /// The outcome dispatch published for `request_id`: `sent`, `failed` or `in_doubt` (not
    /// the `sending` marker nor later status moves).
    pub async fn dispatch_outcome(&self, request_id: &str) -> wa_schemas::OutboundDispatched {
        self.dispatch_outcome_within(request_id, EVENT_TIMEOUT).await
    }

    /// [`Channel::dispatch_outcome`] with its own time limit.
    pub async fn dispatch_outcome_within(&self, request_id: &str, within: Duration) -> wa_schemas::OutboundDispatched {
        self.await_record_within(&topics::OUTBOUND_DISPATCHED, within, |r| {
            let event: wa_schemas::OutboundDispatched = r.decode();
            event.request_id == request_id && event.kind().is_some_and(wa_schemas::DispatchOutcome::is_terminal)
        })
        .await
        .decode()
    }

    /// Publishes `events` with one producer, all queued at once, and waits for the broker.
    pub async fn publish_all<E: Event>(&self, spec: &TopicSpec, events: &[E]) {
        let producer = wa_platform::kafka::EventProducer::new(&self.kafka, "e2e-tests", Duration::from_secs(120))
            .expect("producer");
        let mut queued = Vec::with_capacity(events.len());
        for event in events {
            queued.push(producer.enqueue(spec, event, None).await.expect("queued"));
        }
        for record in queued {
            record.acknowledged().await.expect("the broker acknowledges");
        }
    }

    /// Waits until `count` distinct events (by event id) on `spec` match `matches`, and returns
    /// them.
    pub async fn await_all<E: Event>(&self, spec: &TopicSpec, count: usize, matches: impl Fn(&E) -> bool) -> Vec<E> {
        let topic = self.topic(spec);
        let consumer = assign_from_beginning(&self.kafka, &topic).await;
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        let mut found: HashMap<String, E> = HashMap::new();
        while found.len() < count {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{} of {count} matching events on {topic} within {EVENT_TIMEOUT:?}", found.len())
                })
                .expect("consume");
            let event: E = raw(&message).decode();
            if matches(&event) {
                found.insert(event.event_id().to_owned(), event);
            }
        }
        found.into_values().collect()
    }

    /// Every record on a topic up to its end as of now.
    /// Fails when the broker delivers nothing for [`EVENT_TIMEOUT`] (a long topic may take
    /// longer as a whole); a broker too busy to answer its metadata is asked again.
    pub async fn read_to_end(&self, spec: &TopicSpec) -> Vec<RawRecord> {
        let started = tokio::time::Instant::now();
        loop {
            match self.try_read_to_end(spec).await {
                Ok(records) => return records,
                Err(err) if started.elapsed() < EVENT_TIMEOUT => {
                    tracing::warn!(topic = %self.topic(spec), error = %err, "reading to the end failed; again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => panic!("{} could not be read to its end: {err:#}", self.topic(spec)),
            }
        }
    }

    async fn try_read_to_end(&self, spec: &TopicSpec) -> anyhow::Result<Vec<RawRecord>> {
        let (kafka, topic) = (self.kafka.clone(), self.topic(spec));
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = read.clone();
        let mut reader = tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            let keep = |m: &rdkafka::message::BorrowedMessage<'_>| {
                records.push(raw(m));
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            };
            wa_platform::kafka::read_to_end(&kafka, "e2e-reader", &[topic], None, keep, |_| {}).map(|_| records)
        });
        let mut seen = (0, tokio::time::Instant::now());
        loop {
            match tokio::time::timeout(Duration::from_secs(1), &mut reader).await {
                Ok(done) => return done.expect("reader task"),
                Err(_) => {
                    let now = read.load(std::sync::atomic::Ordering::Relaxed);
                    if now != seen.0 {
                        seen = (now, tokio::time::Instant::now());
                    }
                    assert!(
                        seen.1.elapsed() < EVENT_TIMEOUT,
                        "{} did not deliver up to its high watermarks",
                        self.topic(spec)
                    );
                }
            }
        }
    }
}

fn raw(message: &rdkafka::message::BorrowedMessage<'_>) -> RawRecord {
    let headers = wa_platform::kafka::header_pairs(message.headers()).into_iter().collect();
    RawRecord {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

async fn watermarks(kafka: &KafkaConfig, topic: &str) -> Vec<i64> {
    let client: Arc<BaseConsumer> =
        Arc::new(wa_platform::kafka::client_config(kafka, "e2e-watermarks").create().expect("client"));
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let metadata =
            wa_platform::kafka::patiently(|| client.fetch_metadata(Some(&topic), timeout)).expect("metadata");
        let partitions = metadata.topics()[0].partitions().len() as i32;
        (0..partitions)
            .map(|p| {
                wa_platform::kafka::patiently(|| client.fetch_watermarks(&topic, p, timeout)).expect("watermarks").1
            })
            .collect()
    })
    .await
    .expect("watermark lookup")
}

/// A consumer of every partition of `topic` from its beginning, for tests that follow a topic
/// as it grows.
pub async fn follow_from_beginning(kafka: &KafkaConfig, topic: &str) -> StreamConsumer {
    assign_from_beginning(kafka, topic).await
}

async fn assign_from_beginning(kafka: &KafkaConfig, topic: &str) -> StreamConsumer {
    let partitions = watermarks(kafka, topic).await.len() as i32;
    let consumer: StreamConsumer = wa_platform::kafka::client_config(kafka, "e2e-reader")
        .set("group.id", format!("{}e2e-reader-{}", kafka.topic_prefix, uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}
