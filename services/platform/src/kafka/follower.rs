//! Following a topic from its beginning, for a service that holds the topic's whole state in
//! memory (session windows, templates), and knowing when it has caught up with the broker.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::BorrowedMessage;
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::topics::TopicSpec;

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// A metadata or watermark query, asked up to three times: a broker slow to answer one (under
/// load, or electing a leader) is not a reason to fail a whole read.
pub fn patiently<T>(query: impl Fn() -> rdkafka::error::KafkaResult<T>) -> rdkafka::error::KafkaResult<T> {
    let mut attempt = 1;
    loop {
        match query() {
            Ok(answer) => return Ok(answer),
            Err(err) if attempt < 3 => {
                tracing::warn!(error = %err, attempt, "broker query failed; asking again");
                std::thread::sleep(std::time::Duration::from_millis(200));
                attempt += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Where each partition of `topic` starts for a reader of the records at or after `since` (Unix
/// millis; `None`: the beginning), and where it ends now: `(start, high watermark)` by
/// partition. Should the broker fail to look the time up, the start is the beginning: never
/// less than asked. Blocking.
pub fn partition_ranges(client: &BaseConsumer, topic: &str, since: Option<i64>) -> anyhow::Result<Vec<(i64, i64)>> {
    let meta = patiently(|| client.fetch_metadata(Some(topic), METADATA_TIMEOUT))?;
    let partitions = meta
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .filter(|n| *n > 0)
        .ok_or_else(|| anyhow::anyhow!("topic {topic} does not exist"))?;
    let watermarks = (0..partitions)
        .map(|p| patiently(|| client.fetch_watermarks(topic, p as i32, METADATA_TIMEOUT)))
        .collect::<Result<Vec<(i64, i64)>, _>>()?;
    let Some(since) = since else {
        return Ok(watermarks);
    };
    let mut query = TopicPartitionList::new();
    for partition in 0..partitions {
        query.add_partition_offset(topic, partition as i32, Offset::Offset(since))?;
    }
    let found = match client.offsets_for_times(query, METADATA_TIMEOUT) {
        Ok(found) => found,
        Err(err) => {
            tracing::warn!(topic, error = %err, "offsets for times failed; reading from the beginning");
            return Ok(watermarks);
        }
    };
    Ok(watermarks
        .iter()
        .enumerate()
        .map(|(partition, (low, high))| {
            let start = match found.find_partition(topic, partition as i32).map(|e| (e.error(), e.offset())) {
                Some((Ok(()), Offset::Offset(offset))) => offset.clamp(*low, *high),
                Some((Ok(()), Offset::End)) => *high,
                _ => *low,
            };
            (start, *high)
        })
        .collect())
}

/// Reads every partition of one topic from its beginning (no consumer group, nothing
/// committed) and tracks how far it has read.
pub struct TopicFollower {
    topic: String,
    consumer: StreamConsumer,
    /// Next offset to read, per partition.
    positions: watch::Sender<Vec<i64>>,
    /// A client for watermark queries.
    metadata: Arc<BaseConsumer>,
}

impl TopicFollower {
    /// Connects and assigns every partition of `spec` from its beginning.
    pub async fn start(kafka: &KafkaConfig, spec: &TopicSpec, client_id: &str) -> anyhow::Result<Arc<Self>> {
        Self::start_since(kafka, spec, client_id, None).await
    }

    /// Connects and assigns every partition of `spec` from the first record at or after
    /// `since` (Unix millis), or from the beginning when `since` is `None`. Should the broker
    /// fail to look the time up, it reads from the beginning: never less than asked.
    pub async fn start_since(
        kafka: &KafkaConfig,
        spec: &TopicSpec,
        client_id: &str,
        since: Option<i64>,
    ) -> anyhow::Result<Arc<Self>> {
        let topic = kafka.topic(spec);
        let metadata: Arc<BaseConsumer> = Arc::new(super::client_config(kafka, client_id).create()?);
        let lookup = metadata.clone();
        let lookup_topic = topic.clone();
        let starts = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<i64>> {
            Ok(partition_ranges(&lookup, &lookup_topic, since)?.into_iter().map(|(start, _)| start).collect())
        })
        .await??;
        let mut config = super::client_config(kafka, client_id);
        config
            .set("group.id", kafka.group(client_id))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("fetch.wait.max.ms", kafka.fetch_wait.as_millis().max(1).to_string());
        let consumer: StreamConsumer = config.create()?;
        let mut assignment = TopicPartitionList::new();
        for (partition, start) in starts.iter().enumerate() {
            assignment.add_partition_offset(&topic, partition as i32, Offset::Offset(*start))?;
        }
        consumer.assign(&assignment)?;
        tracing::info!(topic = %topic, partitions = starts.len(), ?since, "following");
        let (positions, _) = watch::channel(starts);
        Ok(Arc::new(Self { topic, consumer, positions, metadata }))
    }

    /// The followed topic's full name.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Hands every record to `apply`, in partition order, until `shutdown`.
    pub async fn run(
        &self,
        shutdown: CancellationToken,
        mut apply: impl FnMut(&BorrowedMessage<'_>) + Send,
    ) -> anyhow::Result<()> {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = self.consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(err) => {
                    tracing::warn!(topic = %self.topic, error = %err, "follower consumer error");
                    tokio::select! {
                        () = shutdown.cancelled() => return Ok(()),
                        () = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    }
                }
            };
            apply(&message);
            let partition = message.partition() as usize;
            let next = message.offset() + 1;
            self.positions.send_modify(|positions| {
                if let Some(position) = positions.get_mut(partition) {
                    *position = (*position).max(next);
                }
            });
        }
    }

    /// Waits until the record at `offset` of `partition` has been applied (read back), up to
    /// `timeout`.
    pub async fn wait_until_read(&self, partition: i32, offset: i64, timeout: Duration) -> Result<(), String> {
        let mut positions = self.positions.subscribe();
        let index = usize::try_from(partition).map_err(|_| format!("no partition {partition}"))?;
        let reached = async {
            positions.wait_for(|positions| positions.get(index).is_some_and(|next| *next > offset)).await.map(|_| ())
        };
        match tokio::time::timeout(timeout, reached).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("follower stopped".to_owned()),
            Err(_) => Err(format!("{} partition {partition} not read up to {offset} within {timeout:?}", self.topic)),
        }
    }

    /// Waits until the follower has caught up with what the broker held at start (the initial
    /// replay), or until `stop`.
    pub async fn wait_caught_up(&self, stop: &CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                caught_up = self.catch_up(Duration::from_secs(30)) => match caught_up {
                    Ok(()) => return,
                    Err(reason) => tracing::warn!(topic = %self.topic, reason = %reason, "still replaying"),
                },
            }
        }
    }

    /// Waits until every record the broker holds now has been applied.
    pub async fn catch_up(&self, timeout: Duration) -> Result<(), String> {
        let metadata = self.metadata.clone();
        let topic = self.topic.clone();
        let partitions = self.positions.borrow().len();
        let highs = tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    patiently(|| metadata.fetch_watermarks(&topic, p as i32, METADATA_TIMEOUT)).map(|(_, high)| high)
                })
                .collect::<Result<Vec<i64>, _>>()
        })
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| format!("cannot read watermarks of {}: {err}", self.topic))?;
        let mut positions = self.positions.subscribe();
        let reached = async {
            positions
                .wait_for(|positions| positions.iter().zip(&highs).all(|(pos, high)| pos >= high))
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(timeout, reached).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err("follower stopped".to_owned()),
            Err(_) => Err(format!("did not catch up with {} within {timeout:?}", self.topic)),
        }
    }
}
