//! The at-least-once consumer loop.
//!
//! Up to [`ConsumerSettings::max_in_flight`] records are handled at once, but never two with the same key (one
//! conversation's records are handled one after another, in partition order), so waiting for
//! the broker's acknowledgements does not serialize unrelated conversations. A record's offset
//! is stored only once its handler returned (every effect it had, the records it published,
//! acknowledged) and every earlier record of its partition is done too; stored offsets are
//! committed in the background and synchronously on revoke and shutdown. A record the handler
//! cannot process goes to the dead-letter topic with the reason, and the loop keeps going. A
//! transient failure is retried with backoff; the record's offset is not stored until it
//! succeeds, so nothing is skipped.
//!
//! Rebalances drain ([`super::rebalance`]): when partitions are revoked, records of theirs not
//! yet started are dropped, the handlers working on them see [`Record::revoked`] cancelled (one
//! that has not reached its point of no return gives up with [`HandleError::Interrupted`]), the
//! others get up to [`REVOKE_DRAIN_TIMEOUT`] to finish, and only then are the offsets committed
//! and the partitions given up. The next owner starts right after the last record whose effects
//! were durable, and never while this member still works on the partition.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt as _};

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders, OwnedMessage};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::headers::HeaderExtractor;
use super::member::{GroupMember, Membership};
use super::producer::EventProducer;
use super::rebalance::{Assignment, DeferredRevoke, TopicPartition};
use crate::backoff::Backoff;
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
    /// Cancelled when the record's partition is being taken from this member, or the service
    /// stops. A handler that has not reached its point of no return returns
    /// [`HandleError::Interrupted`] then: the record is not done, and its partition's next
    /// owner handles it from the start.
    pub revoked: &'a CancellationToken,
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
    /// The handler gave the record up because [`Record::revoked`] was cancelled, before any
    /// effect that must not be repeated: its offset is not stored, and it is handled again
    /// (by the partition's next owner, or after a restart).
    #[error("interrupted: {0}")]
    Interrupted(String),
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

    /// Whether a record with these headers is this handler's at all. One it does not want is
    /// done as soon as it is read (its offset is stored in turn), without a span, a task or a
    /// decode: for handlers that act on a few records of a busy topic.
    fn wants(&self, _headers: Option<&OwnedHeaders>) -> bool {
        true
    }
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
    /// Kept up to date with the partitions the loop holds, for tasks beside it.
    pub assignment: Assignment,
    /// At most this many records are handled at once ([`MAX_IN_FLIGHT`] suits most handlers;
    /// one whose records mostly wait, as dispatch's wait for their sender's pace, takes more).
    pub max_in_flight: usize,
    /// How long the broker may hold this consumer's fetch (`fetch.wait.max.ms`); `None` takes
    /// `KAFKA_FETCH_WAIT_MS`. A consumer off the latency path may wait longer: on a broker that
    /// answers fetches only when the wait runs out (tansu), fewer, larger fetches cost it less.
    pub fetch_wait: Option<Duration>,
}

/// How long a revoke waits for the handlers past their point of no return before it commits
/// what is done and gives the partitions up anyway. Longer than one Twilio call with its
/// reconciliation; far shorter than the group's rebalance timeout (`max.poll.interval.ms`).
pub const REVOKE_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// At most this many records are handled at once per consumer, by default.
pub const MAX_IN_FLIGHT: usize = 64;

/// Partitions being revoked, and until when their handlers may finish.
struct Drain {
    partitions: HashSet<TopicPartition>,
    started: tokio::time::Instant,
    deadline: tokio::time::Instant,
}

/// How far a started record got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Its handler is running.
    Running,
    /// Done: its offset may be stored once every earlier one is.
    Done,
    /// Given up (revoked, stopping): neither it nor anything after it is stored.
    Abandoned,
}

/// The loop's bookkeeping, apart from the futures it polls.
#[derive(Default)]
struct Progress {
    /// Records whose key is in flight (a conversation's records go one at a time).
    keys_in_flight: HashSet<(i32, Vec<u8>)>,
    /// Per partition, the offsets started and how far each got, in order.
    offsets: HashMap<TopicPartition, BTreeMap<i64, Stage>>,
    /// Per partition, cancelled when it is revoked (children of the shutdown token).
    tokens: HashMap<TopicPartition, CancellationToken>,
}

impl Progress {
    fn token(&mut self, partition: &TopicPartition, shutdown: &CancellationToken) -> CancellationToken {
        self.tokens.entry(partition.clone()).or_insert_with(|| shutdown.child_token()).clone()
    }

    /// Whether a handler is still working on a record of `partition`.
    fn busy(&self, partition: &TopicPartition) -> bool {
        self.offsets.get(partition).is_some_and(|offsets| offsets.values().any(|stage| *stage == Stage::Running))
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
    let mut member = GroupMember::join(kafka, &settings.group, settings.service, &settings.topics, |config| {
        // Offsets are stored as records finish, and committed in the background.
        config.set("enable.auto.commit", "true").set("auto.commit.interval.ms", "1000");
        if let Some(wait) = settings.fetch_wait {
            config.set("fetch.wait.max.ms", wait.as_millis().max(1).to_string());
        }
    })?;
    let group = member.group().to_owned();

    let mut in_flight = FuturesUnordered::new();
    let mut progress = Progress::default();
    // A record whose key was busy, waiting for its turn.
    let mut waiting: Option<OwnedMessage> = None;
    let mut draining: Option<Drain> = None;
    let mut stopping = false;

    loop {
        // Once stopping, nothing new starts; a waiting record is read again after a restart.
        if let Some(message) = waiting.take_if(|m| !stopping && !progress.keys_in_flight.contains(&key_of(m))) {
            let partition = partition_of(&message);
            if draining.as_ref().is_some_and(|drain| drain.partitions.contains(&partition)) {
                // Revoked before it started: the next owner reads it.
                drop(message);
            } else {
                progress.keys_in_flight.insert(key_of(&message));
                progress.offsets.entry(partition.clone()).or_default().insert(message.offset(), Stage::Running);
                let revoked = progress.token(&partition, shutdown);
                in_flight.push(async move {
                    let done = process(&message, settings, dead_letters, handler, &revoked).await;
                    (message, done)
                });
            }
        }
        if let Some(drain) = draining.take_if(|drain| {
            drain.partitions.iter().all(|p| !progress.busy(p)) || tokio::time::Instant::now() >= drain.deadline
        }) {
            let revoked: Vec<TopicPartition> = drain.partitions.iter().cloned().collect();
            finish_revoke(&mut member, &mut progress, drain);
            settings.assignment.remove(&revoked);
        }
        let can_receive = !stopping && waiting.is_none() && in_flight.len() < settings.max_in_flight.max(1);
        let drain_deadline = draining.as_ref().map(|drain| drain.deadline);
        tokio::select! {
            () = shutdown.cancelled(), if !stopping => stopping = true,
            Some((message, done)) = in_flight.next(), if !in_flight.is_empty() => {
                progress.keys_in_flight.remove(&key_of(&message));
                finish(member.consumer(), &mut progress, &message, if done { Stage::Done } else { Stage::Abandoned });
            }
            membership = member.next(can_receive) => match membership {
                Membership::Assigned(partitions) => settings.assignment.add(&partitions),
                Membership::Revoked(partitions) => {
                    for partition in &partitions {
                        if let Some(token) = progress.tokens.remove(partition) {
                            token.cancel();
                        }
                    }
                    let now = tokio::time::Instant::now();
                    let drain = draining.get_or_insert_with(|| Drain {
                        partitions: HashSet::new(),
                        started: now,
                        deadline: now + REVOKE_DRAIN_TIMEOUT,
                    });
                    drain.partitions.extend(partitions);
                }
                Membership::Record(message) => {
                    let partition = partition_of(&message);
                    if draining.as_ref().is_some_and(|drain| drain.partitions.contains(&partition)) {
                        // Revoked: the next owner reads it.
                    } else if handler.wants(message.headers()) {
                        waiting = Some(message);
                    } else {
                        // Nothing to do: done in its turn among the records before it.
                        progress.offsets.entry(partition).or_default().insert(message.offset(), Stage::Running);
                        finish(member.consumer(), &mut progress, &message, Stage::Done);
                    }
                }
            },
            () = sleep_until(drain_deadline), if drain_deadline.is_some() => {}
        }
        if stopping && in_flight.is_empty() {
            break;
        }
    }

    if let Some(drain) = draining.take() {
        finish_revoke(&mut member, &mut progress, drain);
    }
    if let Err(err) = member.consumer().commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %err, "final commit found nothing to commit");
    }
    drop(member);
    tracing::info!(group = %group, "consumer stopped");
    Ok(())
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Commits what is done and gives the drained partitions up.
fn finish_revoke(member: &mut GroupMember, progress: &mut Progress, drain: Drain) {
    let still_running = drain.partitions.iter().filter(|p| progress.busy(p)).count();
    if still_running > 0 {
        metrics::counter!(crate::metrics::CONSUMER_DRAIN_TIMEOUTS).increment(1);
        tracing::warn!(
            partitions = still_running,
            timeout = ?REVOKE_DRAIN_TIMEOUT,
            "handlers still running after the drain timeout; giving the partitions up anyway"
        );
    }
    if let Err(err) = member.consumer().commit_consumer_state(CommitMode::Sync) {
        tracing::debug!(error = %err, "commit on revoke found nothing to commit");
    }
    for partition in &drain.partitions {
        progress.offsets.remove(partition);
    }
    let revoked: Vec<TopicPartition> = drain.partitions.into_iter().collect();
    member.give_up(&revoked);
    metrics::histogram!(crate::metrics::CONSUMER_DRAIN).record(drain.started.elapsed().as_secs_f64());
    tracing::info!(partitions = revoked.len(), elapsed = ?drain.started.elapsed(), "revoke drained and committed");
}

fn partition_of(message: &OwnedMessage) -> TopicPartition {
    (message.topic().to_owned(), message.partition())
}

/// Records with the same key are handled one at a time; a record without a key is its own.
fn key_of(message: &OwnedMessage) -> (i32, Vec<u8>) {
    match message.key() {
        Some(key) => (message.partition(), key.to_vec()),
        None => (message.partition(), message.offset().to_le_bytes().to_vec()),
    }
}

/// Records how far `message` got and stores the partition's offset up to the last record
/// before which everything is done (an abandoned record stops it: it is read again).
fn finish(consumer: &StreamConsumer<DeferredRevoke>, progress: &mut Progress, message: &OwnedMessage, stage: Stage) {
    let Some(offsets) = progress.offsets.get_mut(&partition_of(message)) else {
        return;
    };
    // A record started before its partition was revoked (and given back) is not this
    // assignment's: its successor reads it again.
    let Some(current) = offsets.get_mut(&message.offset()) else {
        return;
    };
    *current = stage;
    let mut last_done = None;
    while let Some(entry) = offsets.first_entry() {
        if *entry.get() != Stage::Done {
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
    let key = record.key.map(String::from_utf8_lossy).unwrap_or_default();
    let span = tracing::info_span!(
        "process",
        otel.name = format!("process {}", record.topic),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.destination.name = record.topic,
        messaging.kafka.message.key = %key,
        messaging.destination.partition.id = record.partition,
        messaging.kafka.offset = record.offset,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(record.headers))
    });
    let _ = span.set_parent(parent);
    span
}

/// Handles one record until it succeeded or was dead-lettered (true), or its partition was
/// revoked or the service stops first (false: the record stays unstored and is read again).
async fn process<H: Handler>(
    message: &OwnedMessage,
    settings: &ConsumerSettings,
    dead_letters: &EventProducer,
    handler: &H,
    revoked: &CancellationToken,
) -> bool {
    let record = Record {
        topic: message.topic(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key(),
        payload: message.payload().unwrap_or_default(),
        headers: message.headers(),
        revoked,
    };
    let span = consume_span(&record);

    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let outcome = handler.handle(&record).instrument(span.clone()).await;
        let label = match &outcome {
            Ok(()) => "ok",
            Err(HandleError::Poison(_)) => "dead_lettered",
            Err(HandleError::Transient(_)) => "retried",
            Err(HandleError::Interrupted(_)) => "interrupted",
        };
        metrics::counter!(
            crate::metrics::RECORDS_CONSUMED,
            "service" => settings.service,
            "topic" => record.topic.to_owned(),
            "outcome" => label
        )
        .increment(1);
        match outcome {
            Ok(()) => return true,
            Err(HandleError::Poison(reason)) => {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", reason.as_str());
                return dead_letter(&record, &reason, settings, dead_letters, revoked).instrument(span.clone()).await;
            }
            Err(HandleError::Interrupted(reason)) if revoked.is_cancelled() => {
                span.in_scope(|| tracing::info!(reason = %reason, "record given up; it will be handled again"));
                return false;
            }
            Err(HandleError::Transient(reason) | HandleError::Interrupted(reason)) => {
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", reason.as_str());
                let wait = backoff.next_wait();
                span.in_scope(|| tracing::warn!(reason = %reason, retry_in = ?wait, "handler failed; retrying"));
                tokio::select! {
                    () = revoked.cancelled() => return false,
                    () = tokio::time::sleep(wait) => {}
                }
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
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        match producer.send(&topic, record.key, record.payload, headers.clone()).await {
            Ok(_) => return true,
            Err(err) => {
                tracing::error!(error = %err, "dead-letter publish failed; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(backoff.next_wait()) => {}
                }
            }
        }
    }
}
