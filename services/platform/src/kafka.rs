//! Kafka plumbing over librdkafka: client settings, topic administration, the event producer,
//! the at-least-once consumer loop with its dead-letter topic, and record headers.

mod admin;
mod consumer;
mod follower;
mod headers;
mod member;
mod probe;
mod producer;
mod reader;
pub mod rebalance;

use rdkafka::ClientConfig;

pub use admin::{ensure_topics, wait_for_broker};
pub use consumer::{
    consume_span, dead_letter, run_consumer, ConsumerSettings, HandleError, Handler, Record, MAX_IN_FLIGHT,
    REVOKE_DRAIN_TIMEOUT,
};
pub use follower::{partition_ranges, patiently, TopicFollower};
pub use headers::{
    current_traceparent, header_pairs, header_str, link_current_span, HeaderExtractor, AVRO_CONTENT_TYPE, CE_ID,
    CE_SOURCE, CE_SUBJECT, CE_TIME, CE_TYPE, TRACEPARENT,
};
pub use member::{GroupMember, Membership};
pub use probe::{watch_broker, PROBE_INTERVAL, PROBE_TIMEOUT};
pub use producer::{DeliveryFaults, EventProducer, PublishError, Queued, DELIVERY_TIMEOUT};
pub use reader::{read_partitions_to_end, read_to_end, Progress};

use crate::config::KafkaConfig;

/// Client settings every producer, consumer and admin client starts from.
pub fn client_config(kafka: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", client_id)
        // librdkafka's own logs go through `tracing` at their level; keep them short.
        .set("log.connection.close", "false");
    for (key, value) in &kafka.security {
        config.set(*key, value);
    }
    // librdkafka's own debug contexts (e.g. `cgrp,topic`), for operators chasing a broker issue.
    if let Some(debug) = crate::config::var(crate::config::KAFKA_DEBUG.name) {
        config.set("debug", debug);
    }
    config
}

/// Settings of a consumer-group member that stores its own offsets: `group` (prefixed),
/// reading from the earliest offset when none is committed, and static membership when
/// `KAFKA_GROUP_INSTANCE_ID` is set. A static member keeps its partitions while it restarts,
/// and the broker waits 120 s before giving them away; a dynamic member is replaced after 10 s
/// of silence (decision 26).
pub fn group_member_config(kafka: &KafkaConfig, group: &str, client_id: &str) -> ClientConfig {
    let mut config = client_config(kafka, client_id);
    let session_timeout_ms = match &kafka.group_instance_id {
        Some(instance) => {
            config.set("group.instance.id", instance);
            "120000"
        }
        None => "10000",
    };
    config
        .set("group.id", kafka.group(group))
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", session_timeout_ms)
        .set("heartbeat.interval.ms", "1000")
        // Statistics carry each partition's lag (exported as `wa_consumer_lag`).
        .set("statistics.interval.ms", "5000")
        .set("fetch.wait.max.ms", kafka.fetch_wait.as_millis().max(1).to_string());
    config
}

#[cfg(test)]
mod security_tests {
    use rdkafka::producer::BaseProducer;

    use super::*;

    /// The librdkafka built into the services speaks TLS and SASL/SCRAM: a client with those
    /// settings is created (a build without SSL support refuses `sasl_ssl` here).
    #[test]
    fn clients_take_tls_and_sasl_settings() {
        let mut kafka = KafkaConfig::new("127.0.0.1:1", "");
        kafka.security = vec![
            ("security.protocol", "sasl_ssl".to_owned()),
            ("sasl.mechanism", "SCRAM-SHA-256".to_owned()),
            ("sasl.username", "wachannel".to_owned()),
            ("sasl.password", "secret".to_owned()),
        ];
        let config = client_config(&kafka, "security-test");
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        let created: Result<BaseProducer, _> = config.create();
        assert!(created.is_ok(), "{:?}", created.err());
    }
}
