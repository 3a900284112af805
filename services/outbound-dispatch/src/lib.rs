//! Outbound-dispatch: sends authorized messages through Twilio's Messages API and publishes
//! every outcome on `wa.outbound.dispatched.v1`.
//!
//! Retryable failures (429, 5xx, no answer) are retried with exponential backoff and jitter up
//! to a deadline; permanent ones (Twilio 4xx codes) fail at once. A free-form message whose
//! window has closed since it was authorized is failed without calling Twilio.

pub mod twilio;

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use uuid::Uuid;
use wa_platform::config::{self, EnvVar, KafkaConfig};
use wa_platform::kafka::{ConsumerSettings, EventProducer, HandleError, Handler, Record};
use wa_platform::service::{Bound, Prepared, Service};
use wa_platform::topics::{OUTBOUND_AUTHORIZED, OUTBOUND_DISPATCHED};
use wa_platform::CancellationToken;
use wa_schemas::{Event, OutboundAuthorized, OutboundDispatched};

use crate::twilio::{OutgoingMessage, TwilioClient, TwilioError};

/// The service name.
pub const SERVICE: &str = "outbound-dispatch";

const API_BASE_URL: EnvVar = EnvVar {
    name: "TWILIO_API_BASE_URL",
    default: Some("https://api.twilio.com"),
    doc: "base URL of Twilio's REST API; the simulator's URL (http://127.0.0.1:8090) locally",
};
const STATUS_CALLBACK_URL: EnvVar = EnvVar {
    name: "DISPATCH_STATUS_CALLBACK_URL",
    default: None,
    doc: "public URL of ingress's status-callback endpoint; request_id is appended as a query parameter",
};
const REQUEST_TIMEOUT_MS: EnvVar =
    EnvVar { name: "DISPATCH_REQUEST_TIMEOUT_MS", default: Some("10000"), doc: "timeout of one HTTP call to Twilio" };
const RETRY_DEADLINE_MS: EnvVar = EnvVar {
    name: "DISPATCH_RETRY_DEADLINE_MS",
    default: Some("60000"),
    doc: "how long retryable failures are retried before the send is failed as retries_exhausted",
};

/// Outbound-dispatch configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
    /// Twilio REST base URL.
    pub twilio_base_url: String,
    /// Account SID (in the URL path).
    pub account_sid: String,
    /// Basic-auth user: account SID or API key SID.
    pub auth_username: String,
    /// Basic-auth password: auth token or API key secret.
    pub auth_password: String,
    /// Status callback base URL.
    pub status_callback_url: Option<String>,
    /// Timeout of one HTTP call.
    pub request_timeout: Duration,
    /// Give up retrying after this long.
    pub retry_deadline: Duration,
}

impl Config {
    /// Every variable outbound-dispatch reads (beyond telemetry's).
    pub const ENV: &'static [EnvVar] = &[
        config::KAFKA_BOOTSTRAP_SERVERS,
        config::WA_TOPIC_PREFIX,
        API_BASE_URL,
        config::TWILIO_ACCOUNT_SID,
        config::TWILIO_AUTH_TOKEN,
        config::TWILIO_API_KEY_SID,
        config::TWILIO_API_KEY_SECRET,
        STATUS_CALLBACK_URL,
        REQUEST_TIMEOUT_MS,
        RETRY_DEADLINE_MS,
    ];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8083";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        let account_sid = config::var_or(&config::TWILIO_ACCOUNT_SID);
        let (auth_username, auth_password) = config::twilio_credentials()?;
        Ok(Self {
            http_addr: config::http_addr(Self::DEFAULT_HTTP_ADDR)?,
            kafka: KafkaConfig::from_env(),
            twilio_base_url: config::var_or(&API_BASE_URL),
            account_sid,
            auth_username,
            auth_password,
            status_callback_url: config::var(STATUS_CALLBACK_URL.name),
            request_timeout: Duration::from_millis(config::parse(&REQUEST_TIMEOUT_MS)?),
            retry_deadline: Duration::from_millis(config::parse(&RETRY_DEADLINE_MS)?),
        })
    }
}

/// The result of trying to send one message.
#[derive(Debug)]
enum Attempted {
    Sent { sid: String, status: String, attempts: i32 },
    Failed { reason: &'static str, error: Option<TwilioError>, attempts: i32 },
}

struct Dispatch {
    producer: EventProducer,
    twilio: TwilioClient,
    config: Config,
}

impl Dispatch {
    async fn send_with_retries(&self, authorized: &OutboundAuthorized) -> Attempted {
        // Free-form content needs the window still open; templates do not.
        if let (None, Some(expires_at)) = (&authorized.content_sid, authorized.window_expires_at) {
            if wa_platform::now_millis() >= expires_at {
                return Attempted::Failed { reason: "window_closed", error: None, attempts: 0 };
            }
        }
        let message = OutgoingMessage {
            from: &authorized.from,
            to: &authorized.to,
            body: authorized.body.as_deref(),
            media_urls: &authorized.media_urls,
            content_sid: authorized.content_sid.as_deref(),
            content_variables: authorized.content_variables.as_deref(),
            status_callback: self
                .config
                .status_callback_url
                .as_ref()
                .map(|base| wa_twilio::status_callback_url(base, &authorized.request_id)),
        };
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.twilio.send(&message).await {
                Ok(resource) => return Attempted::Sent { sid: resource.sid, status: resource.status, attempts },
                Err(err) if !err.is_retryable() => {
                    return Attempted::Failed { reason: "twilio_rejected", error: Some(err), attempts }
                }
                Err(err) => {
                    let wait = backoff.mul_f64(0.5 + fastrand::f64());
                    if started.elapsed() + wait > self.config.retry_deadline {
                        return Attempted::Failed { reason: "retries_exhausted", error: Some(err), attempts };
                    }
                    metrics::counter!("wa_dispatch_retries_total").increment(1);
                    tracing::warn!(error = %err, attempts, retry_in = ?wait, "send failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

impl Handler for Dispatch {
    async fn handle(&self, record: &Record<'_>) -> Result<(), HandleError> {
        let authorized = OutboundAuthorized::decode(record.payload)?;
        let attempted = self.send_with_retries(&authorized).await;
        let (outcome, message_sid, twilio_status, error, failure_reason, attempts) = match attempted {
            Attempted::Sent { sid, status, attempts } => ("sent", Some(sid), Some(status), None, None, attempts),
            Attempted::Failed { reason, error, attempts } => ("failed", None, None, error, Some(reason), attempts),
        };
        metrics::counter!("wa_dispatch_outcomes_total", "outcome" => outcome, "reason" => failure_reason.unwrap_or("none"))
            .increment(1);
        tracing::info!(request_id = %authorized.request_id, outcome, attempts, reason = failure_reason.unwrap_or(""), "dispatched");
        let dispatched = OutboundDispatched {
            event_id: Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("wachannel:dispatched:{}", authorized.event_id()).as_bytes(),
            )
            .to_string(),
            occurred_at: wa_platform::now_millis(),
            conversation_id: authorized.conversation_id,
            request_id: authorized.request_id,
            from: authorized.from,
            to: authorized.to,
            outcome: outcome.to_owned(),
            message_sid,
            twilio_status,
            error_code: error.as_ref().and_then(TwilioError::code),
            error_message: error.map(|err| err.to_string()),
            failure_reason: failure_reason.map(str::to_owned),
            attempts,
        };
        self.producer.publish(&OUTBOUND_DISPATCHED, &dispatched).await?;
        Ok(())
    }
}

/// The outbound-dispatch service.
pub struct OutboundDispatch;

impl Service for OutboundDispatch {
    const NAME: &'static str = SERVICE;
    type Config = Config;

    fn http_addr(config: &Config) -> SocketAddr {
        config.http_addr
    }

    async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = ConsumerSettings {
            group: "outbound-dispatch".to_owned(),
            topics: vec![OUTBOUND_AUTHORIZED],
            service: SERVICE,
        };
        let kafka = config.kafka.clone();
        let setup = move |producer, _background| async move {
            let twilio = TwilioClient::new(
                &config.twilio_base_url,
                &config.account_sid,
                &config.auth_username,
                &config.auth_password,
                config.request_timeout,
            )?;
            Ok(Prepared { handler: Dispatch { producer, twilio, config }, background: vec![] })
        };
        wa_platform::service::run_consumer_service(listener, Router::new(), kafka, settings, shutdown, setup).await
    }
}

/// Binds the HTTP listener (port 0 picks a free one).
pub async fn bind(config: Config) -> anyhow::Result<Bound<OutboundDispatch>> {
    Bound::bind(config).await
}

/// Binds and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    wa_platform::service::run::<OutboundDispatch>(config, shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_throttling_server_errors_and_no_answer() {
        let api = |status, code| TwilioError::Api { status, code, message: String::new() };
        assert!(api(429, Some(20429)).is_retryable());
        assert!(api(503, None).is_retryable());
        assert!(TwilioError::Transport("reset".into()).is_retryable());
        assert!(!api(400, Some(63016)).is_retryable());
        assert!(!api(400, Some(21211)).is_retryable());
        assert!(!api(401, Some(20003)).is_retryable());
    }
}
