//! Session state, rebuilt by projecting `wa.inbound.v1` from its beginning.
//!
//! The projection reads every partition of the inbound topic (no consumer group: each instance
//! holds the whole state in this skeleton) and folds customer messages into windows. Before a
//! verdict, [`Projection::catch_up`] waits until the projection has read everything the broker
//! had acknowledged at that moment, so a reply sent right after the customer's message sees it
//! even though the two travel on different topics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use tokio::sync::watch;
use wa_platform::config::KafkaConfig;
use wa_platform::topics::INBOUND;
use wa_platform::CancellationToken;
use wa_schemas::{Event, InboundMessageReceived};

use crate::window::{apply_customer_message, Window};

const METADATA_TIMEOUT: Duration = Duration::from_secs(5);

/// Windows by conversation id, and how far the inbound topic has been read.
pub(crate) struct Projection {
    topic: String,
    windows: Mutex<HashMap<String, Window>>,
    /// Next offset to read, per partition.
    positions: watch::Sender<Vec<i64>>,
    /// A client for watermark queries.
    metadata: Arc<BaseConsumer>,
}

impl Projection {
    /// Connects, and starts reading the inbound topic from its beginning.
    pub(crate) async fn start(kafka: &KafkaConfig) -> anyhow::Result<(Arc<Self>, StreamConsumer)> {
        let topic = kafka.topic(&INBOUND);
        let metadata: Arc<BaseConsumer> =
            Arc::new(wa_platform::kafka::client_config(kafka, "session-window-metadata").create()?);
        let lookup = metadata.clone();
        let lookup_topic = topic.clone();
        let lows = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<i64>> {
            let meta = lookup.fetch_metadata(Some(&lookup_topic), METADATA_TIMEOUT)?;
            let partitions = meta
                .topics()
                .first()
                .map(|t| t.partitions().len())
                .filter(|n| *n > 0)
                .ok_or_else(|| anyhow::anyhow!("topic {lookup_topic} does not exist"))?;
            (0..partitions)
                .map(|p| {
                    Ok(lookup
                        .fetch_watermarks(&lookup_topic, p as i32, METADATA_TIMEOUT)?
                        .0)
                })
                .collect()
        })
        .await??;

        let consumer: StreamConsumer =
            wa_platform::kafka::client_config(kafka, "session-window-projection")
                .set("group.id", kafka.group("session-window-projection"))
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .create()?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..lows.len() {
            assignment.add_partition_offset(&topic, partition as i32, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        tracing::info!(topic = %topic, partitions = lows.len(), "projecting from the beginning");
        let (positions, _) = watch::channel(lows);
        let projection = Arc::new(Self {
            topic,
            windows: Mutex::default(),
            positions,
            metadata,
        });
        Ok((projection, consumer))
    }

    /// The conversation's window, if the customer ever wrote.
    pub(crate) fn window(&self, conversation_id: &str) -> Option<Window> {
        self.windows
            .lock()
            .expect("windows lock")
            .get(conversation_id)
            .copied()
    }

    /// Folds inbound events until `shutdown`.
    pub(crate) async fn run(
        &self,
        consumer: StreamConsumer,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                message = consumer.recv() => message,
            };
            let message = match message {
                Ok(message) => message,
                Err(err) => {
                    tracing::warn!(error = %err, "projection consumer error");
                    continue;
                }
            };
            match InboundMessageReceived::decode(message.payload().unwrap_or_default()) {
                Ok(event) => {
                    let mut windows = self.windows.lock().expect("windows lock");
                    let current = windows.get(&event.conversation_id).copied();
                    windows.insert(
                        event.conversation_id.clone(),
                        apply_customer_message(current, event.occurred_at),
                    );
                    metrics::gauge!("wa_session_conversations").set(windows.len() as f64);
                }
                Err(err) => {
                    // Not ours to dead-letter (we hold no group offsets; every instance replays
                    // it): surface it for an operator instead.
                    metrics::counter!("wa_session_projection_undecodable_total").increment(1);
                    tracing::error!(partition = message.partition(), offset = message.offset(), error = %err, "undecodable inbound record skipped by projection");
                }
            }
            let partition = message.partition() as usize;
            let next = message.offset() + 1;
            self.positions.send_modify(|positions| {
                if let Some(position) = positions.get_mut(partition) {
                    *position = (*position).max(next);
                }
            });
        }
    }

    /// Waits until every inbound record the broker holds now has been projected.
    pub(crate) async fn catch_up(&self, timeout: Duration) -> Result<(), String> {
        let metadata = self.metadata.clone();
        let topic = self.topic.clone();
        let partitions = self.positions.borrow().len();
        let highs = tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    metadata
                        .fetch_watermarks(&topic, p as i32, METADATA_TIMEOUT)
                        .map(|(_, high)| high)
                })
                .collect::<Result<Vec<i64>, _>>()
        })
        .await
        .map_err(|err| err.to_string())?
        .map_err(|err| format!("cannot read inbound watermarks: {err}"))?;
        let mut positions = self.positions.subscribe();
        let reached = async {
            positions
                .wait_for(|positions| positions.iter().zip(&highs).all(|(pos, high)| pos >= high))
                .await
                .map(|_| ())
        };
        match tokio::time::timeout(timeout, reached).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err("projection stopped".to_owned()),
            Err(_) => Err(format!(
                "projection did not catch up with {} within {timeout:?}",
                self.topic
            )),
        }
    }
}
