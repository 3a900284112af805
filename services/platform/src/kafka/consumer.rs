//! The at-least-once consumer loop.
//!
//! Up to [`MAX_IN_FLIGHT`] records are handled at once, but never two with the same key (one
//! conversation's records are handled one after another, in partition order), so waiting for
//! the broker's acknowledgements does not serialize unrelated conversations. A record's offset
//! is stored only once its handler returned (every effect it had, the records it published,
//! acknowledged) and every earlier record of its partition is done too; stored offsets are
//! committed in the background and synchronously on revoke and shutdown. A record the handler cannot process goes to the dead-letter topic with the
//! reason, and the loop keeps going. A transient failure is retried with backoff; the record's
//! offset is not stored until it succeeds, so nothing is skipped.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::headers::HeaderExtractor;
use super::producer::EventProducer;
use crate::config::KafkaConfig;
use crate::topics::{TopicSpec, DEAD_LETTER};

/// A consumed record, as a handler sees it.
pub struct Record<'a> {
    /// The topic's full name (with prefix).
    pub topic: &'a str,
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
    /// The key (the conversation id for message topics).
    pub key: Option<&'a [u8]>,
    /// The value; empty for a tombstone.
    pub payload: &'a [u8],
    /// The headers.
    pub headers: Option<&'a OwnedHeaders>,
}

/// How a handler failed.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The record can never be processed (undecodable, invalid): it goes to the dead-letter
    /// topic with this reason, and the loop moves on.
    #[error("poison record: {0}")]
    Poison(String),
    /// Processing failed for a reason that may pass (broker or downstream unavailable): the
    /// same record is retried with backoff.
    #[error("transient failure: {0}")]
    Transient(String),
}

impl From<wa_schemas::CodecError> for HandleError {
    fn from(err: wa_schemas::CodecError) -> Self {
        Self::Poison(format!("undecodable value: {err}"))
    }
}

impl From<super::PublishError> for HandleError {
    fn from(err: super::PublishError) -> Self {
        match err {
            super::PublishError::Encode(err) => Self::Poison(format!("cannot encode result: {err}")),
            super::PublishError::Broker(err) => Self::Transient(err.to_string()),
        }
    }
}

/// Processes one record. Returns once the record's effects are durable.
pub trait Handler: Send + Sync {
    /// Handles `record`.
    fn handle(&self, record: &Record<'_>) -> impl Future<Output = Result<(), HandleError>> + Send;
}

/// What a consumer loop reads and as whom.
#[derive(Debug, Clone)]
pub struct ConsumerSettings {
    /// Consumer group, without the prefix.
    pub group: String,
    /// Topics to subscribe to.
    pub topics: Vec<TopicSpec>,
    /// The service name, for logs, metrics and dead-letter headers.
    pub service: &'static str,
}

/// Commits what was stored when partitions are taken away, so the next owner starts right after
/// the last record whose effects were durable.
struct CommitOnRevoke;

impl ClientContext for CommitOnRevoke {}

impl ConsumerContext for CommitOnRevoke {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions revoked; committing");
            if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %err, "commit on revoke found nothing to commit");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(partitions) = rebalance {
            tracing::info!(partitions = partitions.count(), "partitions assigned");
        }
    }
}

/// Runs `handler` over `settings.topics` until `shutdown`, then commits and returns.
pub async fn run_consumer<H: Handler>(
    kafka: &KafkaConfig,
    settings: &ConsumerSettings,
    dead_letters: &EventProducer,
    handler: &H,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let group = kafka.group(&settings.group);
    let consumer: StreamConsumer<CommitOnRevoke> = super::group_member_config(kafka, &settings.group, settings.service)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .create_with_context(CommitOnRevoke)?;
    let topics: Vec<String> = settings.topics.iter().map(|spec| kafka.topic(spec)).collect();
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topic_refs)?;
    tracing::info!(group = %group, topics = ?topics, "consumer started");

    let mut in_flight = FuturesUnordered::new();
    let mut keys_in_flight: HashSet<(i32, Vec<u8>)> = HashSet::new();
    // Per partition, the offsets started and whether each is done, in order.
    let mut progress: HashMap<(String, i32), BTreeMap<i64, bool>> = HashMap::new();
    // A record whose key was busy, waiting for its turn.
    let mut waiting: Option<OwnedMessage> = None;
    let mut stopping = false;

    loop {
        // Once stopping, nothing new starts; a waiting record is read again after a restart.
        if let Some(message) = waiting.take_if(|m| !stopping && !keys_in_flight.contains(&key_of(m))) {
            keys_in_flight.insert(key_of(&message));
            progress
                .entry((message.topic().to_owned(), message.partition()))
                .or_default()
                .insert(message.offset(), false);
            in_flight.push(async move {
                let done = process(&message, settings, dead_letters, handler, shutdown).await;
                (message, done)
            });
        }
        let can_receive = !stopping && waiting.is_none() && in_flight.len() < MAX_IN_FLIGHT;
        tokio::select! {
            () = shutdown.cancelled(), if !stopping => stopping = true,
            Some((message, done)) = in_flight.next(), if !in_flight.is_empty() => {
                keys_in_flight.remove(&key_of(&message));
                if done {
                    finish(&consumer, &mut progress, &message);
                }
            }
            received = consumer.recv(), if can_receive => match received {
                Ok(message) => waiting = Some(message.detach()),
                Err(err) => {
                    tracing::warn!(error = %err, "consumer error");
                    // Errors repeat while the broker is away: do not spin.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            else => break,
        }
        if stopping && in_flight.is_empty() {
            break;
        }
    }

    if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %err, "final commit found nothing to commit");
    }
    tracing::info!(group = %group, "consumer stopped");
    Ok(())
}

/// At most this many records are handled at once per consumer.
pub const MAX_IN_FLIGHT: usize = 64;

/// Records with the same key are handled one at a time; a record without a key is its own.
fn key_of(message: &OwnedMessage) -> (i32, Vec<u8>) {
    match message.key() {
        Some(key) => (message.partition(), key.to_vec()),
        None => (message.partition(), message.offset().to_le_bytes().to_vec()),
    }
}

/// Marks `message` done and stores the partition's offset up to the last record before which
/// everything is done.
fn finish<C: Consumer<CommitOnRevoke>>(
    consumer: &C,
    progress: &mut HashMap<(String, i32), BTreeMap<i64, bool>>,
    message: &OwnedMessage,
) {
    let Some(offsets) = progress.get_mut(&(message.topic().to_owned(), message.partition())) else {
        return;
    };
    offsets.insert(message.offset(), true);
    let mut last_done = None;
    while let Some(entry) = offsets.first_entry() {
        if !*entry.get() {
            break;
        }
        last_done = Some(entry.remove_entry().0);
    }
    if let Some(offset) = last_done {
        if let Err(err) = consumer.store_offset(message.topic(), message.partition(), offset) {
            // The partition was revoked while the record was handled: its new owner reads it
            // again (at-least-once), which the deterministic event ids make harmless.
            tracing::warn!(error = %err, partition = message.partition(), offset, "offset not stored");
        }
    }
}

/// The span a consumed record is handled in: a child of the trace its producer put in the
/// record's `traceparent` header, so one request is one trace across services.
pub fn consume_span(record: &Record<'_>) -> tracing::Span {
    let span = tracing::info_span!(
        "consume",
        otel.kind = "consumer",
        messaging.destination = record.topic,
        messaging.partition = record.partition,
        messaging.offset = record.offset,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(record.headers))
    });
    let _ = span.set_parent(parent);
    span
}

/// Handles one record until it succeeded or was dead-lettered (true), or shutdown came first
/// (false: the record stays unstored and is read again after a restart).
async fn process<H: Handler>(
    message: &OwnedMessage,
    settings: &ConsumerSettings,
    dead_letters: &EventProducer,
    handler: &H,
    shutdown: &CancellationToken,
) -> bool {
    let record = Record {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        payload: message.payload().unwrap_or_default(),
        headers: message.headers(),
    };
    let span = consume_span(&record);

    let mut backoff = Duration::from_millis(100);
    loop {
        let outcome = handler.handle(&record).instrument(span.clone()).await;
        let label = match &outcome {
            Ok(()) => "ok",
            Err(HandleError::Poison(_)) => "dead_lettered",
            Err(HandleError::Transient(_)) => "retried",
        };
        metrics::counter!(
            "wa_records_consumed_total",
            "service" => settings.service,
            "topic" => record.topic.to_owned(),
            "outcome" => label
        )
        .increment(1);
        match outcome {
            Ok(()) => return true,
            Err(HandleError::Poison(reason)) => {
                return dead_letter(&record, &reason, settings, dead_letters, shutdown).instrument(span.clone()).await;
            }
            Err(HandleError::Transient(reason)) => {
                span.in_scope(|| tracing::warn!(reason = %reason, retry_in = ?backoff, "handler failed; retrying"));
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Publishes the record unchanged to the dead-letter topic with `dlq.*` headers naming the
/// reason and origin. Retries until the broker acknowledges (true), or shutdown (false).
pub async fn dead_letter(
    record: &Record<'_>,
    reason: &str,
    settings: &ConsumerSettings,
    producer: &EventProducer,
    shutdown: &CancellationToken,
) -> bool {
    tracing::warn!(reason = %reason, "record dead-lettered");
    let mut headers = OwnedHeaders::new();
    if let Some(original) = record.headers {
        for header in original.iter() {
            headers = headers.insert(Header { key: header.key, value: header.value });
        }
    }
    let partition = record.partition.to_string();
    let offset = record.offset.to_string();
    let failed_at = chrono::Utc::now().to_rfc3339();
    let headers = [
        ("dlq.reason", reason),
        ("dlq.topic", record.topic),
        ("dlq.partition", partition.as_str()),
        ("dlq.offset", offset.as_str()),
        ("dlq.service", settings.service),
        ("dlq.group", settings.group.as_str()),
        ("dlq.failed_at", failed_at.as_str()),
    ]
    .into_iter()
    .fold(headers, |headers, (key, value)| headers.insert(Header { key, value: Some(value) }));
    let topic = producer.topic_name(&DEAD_LETTER);
    let mut backoff = Duration::from_millis(100);
    loop {
        match producer.send(&topic, record.key, record.payload, headers.clone()).await {
            Ok(_) => return true,
            Err(err) => {
                tracing::error!(error = %err, "dead-letter publish failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}
