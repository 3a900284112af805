//! Reading topics to the ends they have now: the one reader that rebuilds, tools and tests use
//! to see a topic whole.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;

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
    mut on_record: impl FnMut(&BorrowedMessage<'_>),
    mut on_progress: impl FnMut(&Progress),
) -> anyhow::Result<Progress> {
    let consumer: BaseConsumer = super::client_config(kafka, client_id)
        .set("group.id", kafka.group(client_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .set("queued.min.messages", "200000")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut total = 0u64;
    for topic in topics {
        // The broker's time index only gives a place to start (tansu answers the beginning):
        // records written before `since` are skipped below.
        for (partition, (start, end)) in super::partition_ranges(&consumer, topic, since)?.into_iter().enumerate() {
            if end > start {
                assignment.add_partition_offset(topic, partition as i32, Offset::Offset(start))?;
                ends.insert((topic.clone(), partition as i32), end);
                total += (end - start) as u64;
            }
        }
    }
    let started = Instant::now();
    let mut progress = Progress { events: 0, total, elapsed: Duration::ZERO };
    if ends.is_empty() {
        return Ok(progress);
    }
    consumer.assign(&assignment)?;
    let limits = ends.clone();
    let mut last_report = Instant::now();
    while !ends.is_empty() {
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
    Ok(progress)
}
