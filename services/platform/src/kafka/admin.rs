//! Topic creation and broker readiness.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::topics::TopicSpec;

/// Waits until the broker answers a metadata request, up to `deadline`.
pub async fn wait_for_broker(kafka: &KafkaConfig, deadline: Duration) -> anyhow::Result<()> {
    let consumer: BaseConsumer = super::client_config(kafka, "wa-wait-for-broker").create()?;
    let started = Instant::now();
    let consumer = std::sync::Arc::new(consumer);
    loop {
        let probe = consumer.clone();
        let answered =
            tokio::task::spawn_blocking(move || probe.fetch_metadata(None, Duration::from_secs(2)).map(|_| ())).await?;
        match answered {
            Ok(()) => return Ok(()),
            Err(err) if started.elapsed() < deadline => {
                tracing::debug!(error = %err, "broker not answering yet");
            }
            Err(err) => {
                anyhow::bail!("kafka broker at {} did not answer within {deadline:?}: {err}", kafka.bootstrap_servers)
            }
        }
    }
}

/// Creates the topics that do not exist yet (with the prefix). Existing ones are left alone.
pub async fn ensure_topics(kafka: &KafkaConfig, specs: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = super::client_config(kafka, "wa-admin").create()?;
    let names: Vec<String> = specs.iter().map(|spec| kafka.topic(spec)).collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&names)
        .map(|(spec, name)| {
            spec.configs
                .iter()
                .fold(NewTopic::new(name, spec.partitions, TopicReplication::Fixed(-1)), |topic, (key, value)| {
                    topic.set(key, value)
                })
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin.create_topics(&new_topics, &options).await?;
    for result in results {
        match result {
            Ok(name) => tracing::info!(topic = %name, "topic created"),
            Err((name, RDKafkaErrorCode::TopicAlreadyExists)) => {
                tracing::debug!(topic = %name, "topic exists")
            }
            Err((name, code)) => anyhow::bail!("creating topic {name} failed: {code}"),
        }
    }
    Ok(())
}
