//! Kafka plumbing over librdkafka: client settings, topic administration, the event producer,
//! the at-least-once consumer loop with its dead-letter topic, and record headers.

mod admin;
mod consumer;
mod follower;
mod headers;
mod producer;

use rdkafka::ClientConfig;

pub use admin::{ensure_topics, wait_for_broker};
pub use consumer::{
    consume_span, dead_letter, run_consumer, ConsumerSettings, HandleError, Handler, Record, MAX_IN_FLIGHT,
};
pub use follower::TopicFollower;
pub use headers::{
    header_str, HeaderExtractor, AVRO_CONTENT_TYPE, CE_ID, CE_SOURCE, CE_SUBJECT, CE_TIME, CE_TYPE, TRACEPARENT,
};
pub use producer::{EventProducer, PublishError, Queued};

use crate::config::KafkaConfig;

/// Client settings every producer, consumer and admin client starts from.
pub fn client_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        // librdkafka's own logs go through `tracing` at their level; keep them short.
        .set("log.connection.close", "false");
    // librdkafka's own debug contexts (e.g. `cgrp,topic`), for operators chasing a broker issue.
    if let Some(debug) = crate::config::var("KAFKA_DEBUG") {
        config.set("debug", debug);
    }
    config
}
