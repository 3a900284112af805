//! Reading topics to the ends they have now: the one reader that rebuilds, tools and tests use
//! to see a topic whole, and that session-window restores its partitions' state with.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;

/// How long a watermark lookup may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// How far a replay has come.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Records read.
    pub events: u64,
    /// Records to read in all (the topics' ends when the replay started).
    pub total: u64,
    /// Time since the replay started.
    pub elapsed: Duration,
}

impl Progress {
    /// Records per second so far.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Records still to read.
    pub fn lag(&self) -> u64 {
        self.total.saturating_sub(self.events)
    }
}

/// Reads `topics` (full names) from `since` (or their beginning) to the ends they had when it
/// started, handing every record written at or after `since` to `on_record` in each
/// partition's order, and reporting progress about four times a second. `client_id` names the
/// reader (and its unused consumer group). Blocking: run it on a blocking thread.
pub fn read_to_end(
    kafka: &KafkaConfig,
    client_id: &str,
    topics: &[String],
    since: Option<i64>,
    on_record: impl FnMut(&BorrowedMessage<'_>),
    on_progress: impl FnMut(&Progress),
) -> anyhow::Result<Progress> {
    let consumer = reader(kafka, client_id)?;
    let mut ranges = Vec::new();
    for topic in topics {
        // The broker's time index only gives a place to start (tansu answers the beginning):
        // records written before `since` are skipped while reading.
        for (partition, range) in super::partition_ranges(&consumer, topic, since)?.into_iter().enumerate() {
            ranges.push(((topic.clone(), partition as i32), range));
        }
    }
    let (progress, _) = drain(&consumer, ranges, since, None, on_record, on_progress)?;
    Ok(progress)
}

/// Reads `partitions` of `topic` (a full name) from their beginning to the ends they have when
/// it starts, handing every record to `on_record` in each partition's order: how a service
/// restores the state it keeps on a compacted topic for the partitions it was assigned.
/// Returns false when `stop` was cancelled before the ends were reached. Blocking.
pub fn read_partitions_to_end(
    kafka: &KafkaConfig,
    client_id: &str,
    topic: &str,
    partitions: &[i32],
    stop: &CancellationToken,
    on_record: impl FnMut(&BorrowedMessage<'_>),
) -> anyhow::Result<bool> {
    let consumer = reader(kafka, client_id)?;
    let mut ranges = Vec::new();
    for &partition in partitions {
        let range = consumer.fetch_watermarks(topic, partition, METADATA_TIMEOUT)?;
        ranges.push(((topic.to_owned(), partition), range));
    }
    let (_, complete) = drain(&consumer, ranges, None, Some(stop), on_record, |_| {})?;
    Ok(complete)
}

/// A consumer for reading to known ends, outside any group's offsets.
fn reader(kafka: &KafkaConfig, client_id: &str) -> anyhow::Result<BaseConsumer> {
    Ok(super::client_config(kafka, client_id)
        .set("group.id", kafka.group(client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // Reading to a known end: the broker need not hold fetches back for more.
        .set("fetch.wait.max.ms", "10")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .set("queued.min.messages", "200000")
        .create()?)
}

/// Reads each `(topic, partition)` from its start to its end (`(start, end)`, end exclusive),
/// skipping records written before `since`; stops early when `stop` is cancelled. The progress,
/// and whether every range was read to its end.
fn drain(
    consumer: &BaseConsumer,
    ranges: Vec<((String, i32), (i64, i64))>,
    since: Option<i64>,
    stop: Option<&CancellationToken>,
    mut on_record: impl FnMut(&BorrowedMessage<'_>),
    mut on_progress: impl FnMut(&Progress),
) -> anyhow::Result<(Progress, bool)> {
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut total = 0u64;
    for ((topic, partition), (start, end)) in ranges {
        if end > start {
            assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
            total += (end - start) as u64;
            ends.insert((topic, partition), end);
        }
    }
    let started = Instant::now();
    let mut progress = Progress { events: 0, total, elapsed: Duration::ZERO };
    if ends.is_empty() {
        return Ok((progress, true));
    }
    consumer.assign(&assignment)?;
    let limits = ends.clone();
    let mut last_report = Instant::now();
    while !ends.is_empty() {
        if stop.is_some_and(CancellationToken::is_cancelled) {
            return Ok((progress, false));
        }
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                let key = (message.topic().to_owned(), message.partition());
                if limits.get(&key).is_none_or(|end| message.offset() >= *end) {
                    // Written after the read started (on a partition already read to its end).
                    continue;
                }
                progress.events += 1;
                let before_since =
                    since.is_some_and(|since| message.timestamp().to_millis().is_some_and(|at| at < since));
                if !before_since {
                    on_record(&message);
                }
                if ends.get(&key).is_some_and(|end| message.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
            }
            Some(Err(err)) => tracing::warn!(error = %err, "replay read failed; retrying"),
            None => {}
        }
        if last_report.elapsed() >= Duration::from_millis(250) {
            progress.elapsed = started.elapsed();
            on_progress(&progress);
            last_report = Instant::now();
        }
    }
    progress.elapsed = started.elapsed();
    on_progress(&progress);
    Ok((progress, true))
}
