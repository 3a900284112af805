//! Creates every topic of the channel (those in `wa_platform::topics::ALL`) on
//! `KAFKA_BOOTSTRAP_SERVERS`, leaving existing ones alone. The init step of a deployment.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = wa_platform::telemetry::init("wa-topics")?;
    let kafka = wa_platform::config::KafkaConfig::from_env()?;
    wa_platform::kafka::wait_for_broker(&kafka, Duration::from_secs(120)).await?;
    wa_platform::kafka::ensure_topics(&kafka, wa_platform::topics::ALL).await?;
    for spec in wa_platform::topics::ALL {
        tracing::info!(topic = %kafka.topic(spec), partitions = spec.partitions, "topic ready");
    }
    Ok(())
}
