//! Readiness that tells the truth about the broker: a service whose broker does not answer is
//! not ready, even though it is running.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::http::Health;
use crate::topics::TopicSpec;

/// How often the broker is asked.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(5);
/// How long one question may take before the broker counts as not serving.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the broker, every [`PROBE_INTERVAL`], for the offsets of partition 0 of `topic` (a
/// question its storage answers, as it does produce and fetch requests). An answer missing
/// after [`PROBE_TIMEOUT`], or an error, makes `health` report the broker as the reason the
/// service is not ready (`/readyz` answers 503 with it); the next answer makes it ready again.
/// Logs each change and exports it as the gauge `wa_broker_serving` (1 or 0). Runs until
/// `stop`.
pub async fn watch_broker(
    kafka: KafkaConfig,
    topic: TopicSpec,
    health: Arc<Health>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let client: Arc<BaseConsumer> = Arc::new(
        super::client_config(&kafka, "broker-probe")
            // The probe's own connection gives up as fast as the probe does.
            .set("socket.timeout.ms", PROBE_TIMEOUT.as_millis().to_string())
            .create()?,
    );
    let name = kafka.topic(&topic);
    loop {
        let (client, asked) = (client.clone(), name.clone());
        let answer = tokio::task::spawn_blocking(move || client.fetch_watermarks(&asked, 0, PROBE_TIMEOUT)).await?;
        let problem = answer.err().map(|err| format!("the broker did not answer for {name} within 5 s: {err}"));
        match (&problem, health.broker_problem()) {
            (Some(problem), None) => tracing::error!(reason = %problem, "broker not serving; not ready"),
            (None, Some(_)) => tracing::info!("broker serving again; ready"),
            _ => {}
        }
        metrics::gauge!(crate::metrics::BROKER_SERVING).set(if problem.is_some() { 0.0 } else { 1.0 });
        health.set_broker_problem(problem);
        tokio::select! {
            () = tokio::time::sleep(PROBE_INTERVAL) => {}
            () = stop.cancelled() => return Ok(()),
        }
    }
}
