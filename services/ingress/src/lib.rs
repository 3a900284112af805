//! Ingress: where Twilio and the CRM meet the channel.
//!
//! - `POST /twilio/inbound`: Twilio's WhatsApp webhook. Verifies `X-Twilio-Signature`, publishes
//!   `wa.inbound.v1` (acknowledged by the broker) and only then answers 200 with empty TwiML. A
//!   retried webhook with the same `MessageSid` is not published twice.
//! - `POST /v1/outbound`: the CRM's JSON API for agent replies; publishes
//!   `wa.outbound.requested.v1` and answers 202.

mod dedupe;
mod outbound_api;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;
use wa_platform::config::{self, EnvVar, KafkaConfig};
use wa_platform::http::Health;
use wa_platform::kafka::EventProducer;
use wa_platform::service::{Bound, Service};
use wa_platform::CancellationToken;

/// The service name, in logs, metrics and CloudEvents `source`.
pub const SERVICE: &str = "ingress";

const PUBLIC_URL: EnvVar = EnvVar {
    name: "INGRESS_PUBLIC_URL",
    default: None,
    doc: "the public base URL Twilio calls (e.g. https://wa.example.com), used to verify signatures; defaults to http://<HTTP_ADDR>",
};
const EXTRA_AUTH_TOKENS: EnvVar = EnvVar {
    name: "TWILIO_PREVIOUS_AUTH_TOKENS",
    default: None,
    doc: "comma-separated older auth tokens still accepted on webhooks while a token rotation is under way",
};
const API_TOKENS: EnvVar = EnvVar {
    name: "INGRESS_API_TOKENS",
    default: None,
    doc: "comma-separated bearer tokens the CRM must present on /v1/outbound; the API is open when unset (local use only)",
};
const PUBLISH_TIMEOUT_MS: EnvVar = EnvVar {
    name: "INGRESS_PUBLISH_TIMEOUT_MS",
    default: Some("8000"),
    doc: "how long a webhook waits for the broker's acknowledgement before answering 503 (Twilio gives up after 15 s)",
};
const MAX_BODY_BYTES: EnvVar = EnvVar {
    name: "INGRESS_MAX_BODY_BYTES",
    default: Some("65536"),
    doc: "largest request body accepted; larger ones get 413",
};
const DEDUPE_CAPACITY: EnvVar = EnvVar {
    name: "INGRESS_DEDUPE_CAPACITY",
    default: Some("100000"),
    doc: "how many recent MessageSids are remembered to drop retried webhooks",
};

/// Ingress configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
    /// Public base URL Twilio calls; `None` means `http://<bound address>`.
    pub public_url: Option<String>,
    /// Auth tokens accepted on webhook signatures: the current one first.
    pub auth_tokens: Vec<String>,
    /// Bearer tokens for the CRM API; empty means open.
    pub api_tokens: Vec<String>,
    /// Bound on waiting for the broker per request.
    pub publish_timeout: Duration,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Recent MessageSids remembered for deduplication.
    pub dedupe_capacity: usize,
}

impl Config {
    /// Every variable ingress reads (beyond telemetry's).
    pub const ENV: &'static [EnvVar] = &[
        config::KAFKA_BOOTSTRAP_SERVERS,
        config::WA_TOPIC_PREFIX,
        config::TWILIO_AUTH_TOKEN,
        EXTRA_AUTH_TOKENS,
        PUBLIC_URL,
        API_TOKENS,
        PUBLISH_TIMEOUT_MS,
        MAX_BODY_BYTES,
        DEDUPE_CAPACITY,
    ];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8080";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        let mut auth_tokens = vec![config::var_or(&config::TWILIO_AUTH_TOKEN)];
        auth_tokens.extend(config::list(&EXTRA_AUTH_TOKENS));
        Ok(Self {
            http_addr: config::http_addr(Self::DEFAULT_HTTP_ADDR)?,
            kafka: KafkaConfig::from_env(),
            public_url: config::var(PUBLIC_URL.name),
            auth_tokens,
            api_tokens: config::list(&API_TOKENS),
            publish_timeout: Duration::from_millis(config::parse(&PUBLISH_TIMEOUT_MS)?),
            max_body_bytes: config::parse(&MAX_BODY_BYTES)?,
            dedupe_capacity: config::parse(&DEDUPE_CAPACITY)?,
        })
    }
}

/// What request handlers share.
pub(crate) struct AppState {
    pub(crate) producer: EventProducer,
    pub(crate) public_url: String,
    pub(crate) auth_tokens: Vec<String>,
    pub(crate) api_tokens: Vec<String>,
    pub(crate) publish_timeout: Duration,
    pub(crate) dedupe: dedupe::RecentMessages,
}

/// The ingress service.
pub struct Ingress;

impl Service for Ingress {
    const NAME: &'static str = SERVICE;
    type Config = Config;

    fn http_addr(config: &Config) -> SocketAddr {
        config.http_addr
    }

    /// Serves until `shutdown`, then flushes the producer.
    async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        let public_url = config
            .public_url
            .clone()
            .unwrap_or_else(|| format!("http://{}", listener.local_addr().expect("bound")))
            .trim_end_matches('/')
            .to_owned();
        let producer = EventProducer::new(&config.kafka, "wachannel/ingress", config.publish_timeout)?;
        if config.api_tokens.is_empty() {
            tracing::warn!("INGRESS_API_TOKENS is unset: /v1/outbound accepts requests without a token");
        }
        let state = Arc::new(AppState {
            producer: producer.clone(),
            public_url,
            auth_tokens: config.auth_tokens.clone(),
            api_tokens: config.api_tokens.clone(),
            publish_timeout: config.publish_timeout,
            dedupe: dedupe::RecentMessages::new(config.dedupe_capacity),
        });
        let routes = Router::new()
            .route("/twilio/inbound", post(webhook::inbound))
            .route("/v1/outbound", post(outbound_api::create))
            .layer(DefaultBodyLimit::max(config.max_body_bytes))
            .with_state(state);
        let health = Health::new();
        let ready = health.clone();
        let stopped = shutdown.clone();
        let worker = async move {
            wa_platform::kafka::wait_for_broker(&config.kafka, Duration::from_secs(60)).await?;
            ready.set_ready(true);
            stopped.cancelled().await;
            producer.flush(Duration::from_secs(10));
            Ok(())
        };
        wa_platform::service::run_until_stopped(SERVICE, listener, routes, health, shutdown, worker).await
    }
}

/// Binds the HTTP listener (port 0 picks a free one).
pub async fn bind(config: Config) -> anyhow::Result<Bound<Ingress>> {
    Bound::bind(config).await
}

/// Binds and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    wa_platform::service::run::<Ingress>(config, shutdown).await
}

/// Masks an address for logs: `whatsapp:+15551234567` becomes `whatsapp:+155*****67`.
pub(crate) fn mask(address: &str) -> String {
    let chars: Vec<char> = address.chars().collect();
    let keep_end = 2.min(chars.len());
    let keep_start = (chars.len().saturating_sub(keep_end)).min(address.find(':').map_or(0, |i| i + 1) + 4);
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| if i < keep_start || i >= chars.len() - keep_end { *c } else { '*' })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn masks_the_middle_of_addresses() {
        assert_eq!(super::mask("whatsapp:+15551234567"), "whatsapp:+155******67");
        assert_eq!(super::mask("+15551234567"), "+155******67");
        assert_eq!(super::mask("ab"), "ab");
    }
}
