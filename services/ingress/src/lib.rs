//! Ingress: where Twilio and the CRM meet the channel.
//!
//! - `POST /twilio/inbound`: Twilio's WhatsApp message webhook. Verifies `X-Twilio-Signature`
//!   (form or JSON body), publishes `wa.inbound.v1` once per `MessageSid` (across retries,
//!   restarts and instances), and answers 200 with empty TwiML only after the broker
//!   acknowledged the event.
//! - `POST /twilio/status`: Twilio's status callbacks, published to `wa.delivery.v1` as received.
//! - `POST /v1/outbound`: the CRM's JSON API for agent replies; publishes
//!   `wa.outbound.requested.v1` once per `request_id` and answers 202.
//!
//! Webhooks refused for their signature or an unknown sender are kept whole on
//! `wa.ingress.quarantine.v1`, so a misconfigured proxy cannot silently drop customer messages.

mod dedupe;
mod identities;
mod media;
mod outbound_api;
mod request;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;
use tracing::Instrument as _;
use wa_platform::config::{self, EnvVar, KafkaConfig};
use wa_platform::http::Health;
use wa_platform::kafka::EventProducer;
use wa_platform::service::{Bound, Service};
use wa_platform::topics::{INBOUND, OUTBOUND_REQUESTED};
use wa_platform::CancellationToken;

/// The service name, in logs, metrics and CloudEvents `source`.
pub const SERVICE: &str = "ingress";

const PUBLIC_URL: EnvVar = EnvVar {
    name: "INGRESS_PUBLIC_URL",
    default: None,
    doc: "the public base URL Twilio calls (e.g. https://wa.example.com, or https://example.com/wa behind a proxy that strips /wa); signatures are checked against it. Unset: the request's Host (or X-Forwarded-* when trusted)",
};
const TRUST_FORWARDED: EnvVar = EnvVar {
    name: "INGRESS_TRUST_FORWARDED_HEADERS",
    default: Some("false"),
    doc: "true behind a reverse proxy that sets X-Forwarded-Proto and X-Forwarded-Host: the signed URL is rebuilt from them when INGRESS_PUBLIC_URL is unset. Never enable without such a proxy",
};
const EXTRA_AUTH_TOKENS: EnvVar = EnvVar {
    name: "TWILIO_PREVIOUS_AUTH_TOKENS",
    default: None,
    doc: "comma-separated older auth tokens still accepted on webhooks while a token rotation is under way",
};
const API_TOKENS: EnvVar = EnvVar {
    name: "INGRESS_API_TOKENS",
    default: None,
    doc: "comma-separated bearer tokens the CRM must present on /v1/outbound; unset: open, allowed only on a loopback HTTP_ADDR (or with INGRESS_ALLOW_UNAUTHENTICATED=true)",
};
const ALLOW_UNAUTHENTICATED: EnvVar = EnvVar {
    name: "INGRESS_ALLOW_UNAUTHENTICATED",
    default: Some("false"),
    doc: "true lets ingress serve /v1/outbound without INGRESS_API_TOKENS off loopback (behind a gateway that authenticates); otherwise it refuses to start",
};
const SENDERS: EnvVar = EnvVar {
    name: "INGRESS_SENDERS",
    default: None,
    doc: "comma-separated business WhatsApp senders this channel serves (whatsapp:+14155238886,...); webhooks to others are quarantined and CRM requests from others refused. Unset: any",
};
const PUBLISH_TIMEOUT_MS: EnvVar = EnvVar {
    name: "INGRESS_PUBLISH_TIMEOUT_MS",
    default: Some("5000"),
    doc: "how long a request waits for the broker's acknowledgement before answering 503 (Twilio gives up after 15 s)",
};
const MAX_IN_FLIGHT: EnvVar = EnvVar {
    name: "INGRESS_MAX_IN_FLIGHT",
    default: Some("256"),
    doc: "most publishes waiting for the broker at once; beyond it requests get 503 with Retry-After at once instead of queuing into the publish timeout",
};
const MAX_BODY_BYTES: EnvVar = EnvVar {
    name: "INGRESS_MAX_BODY_BYTES",
    default: Some("65536"),
    doc: "largest request body accepted; larger ones get 413",
};
const QUARANTINE_BUDGET: EnvVar = EnvVar {
    name: "INGRESS_QUARANTINE_BUDGET_BYTES_PER_MIN",
    default: Some("5242880"),
    doc: "most bytes of refused webhooks kept on the quarantine topic per minute (refilled continuously); beyond it they are refused without being kept, and counted. 0 keeps none",
};
const DEDUPE_HORIZON_HOURS: EnvVar = EnvVar {
    name: "INGRESS_DEDUPE_HORIZON_HOURS",
    default: Some("24"),
    doc: "how far back a MessageSid or request_id counts as already published (replayed from the topics at start)",
};
const DEDUPE_CAPACITY: EnvVar = EnvVar {
    name: "INGRESS_DEDUPE_CAPACITY",
    default: Some("2000000"),
    doc: "most ids remembered per topic within the horizon (about 60 bytes each); the oldest are forgotten first",
};

/// Ingress configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
    /// Public base URL Twilio calls; `None` means the request's own host.
    pub public_url: Option<String>,
    /// Whether `X-Forwarded-Proto`/`X-Forwarded-Host` name the public URL.
    pub trust_forwarded_headers: bool,
    /// The Twilio account whose webhooks are served (`AccountSid`).
    pub account_sid: String,
    /// Auth tokens accepted on webhook signatures: the current one first.
    pub auth_tokens: Vec<String>,
    /// Bearer tokens for the CRM API; empty means open.
    pub api_tokens: Vec<String>,
    /// Business senders served (normalized); empty means any.
    pub senders: Vec<String>,
    /// Bound on waiting for the broker per request.
    pub publish_timeout: Duration,
    /// Most publishes waiting for the broker at once (at least 1).
    pub max_in_flight: usize,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Most bytes of refused webhooks quarantined per minute.
    pub quarantine_budget_per_minute: u64,
    /// Where customers' media is stored (`MEDIA_STORE_URL`).
    pub media_store_url: String,
    /// Whether media is deleted at Twilio once stored.
    pub media_delete_at_twilio: bool,
    /// Basic-auth user and password for downloading media from Twilio.
    pub twilio_credentials: (String, String),
    /// How long a published id counts as a duplicate.
    pub dedupe_horizon: Duration,
    /// Most ids remembered per topic.
    pub dedupe_capacity: usize,
}

impl Config {
    /// Every variable ingress reads (beyond telemetry's).
    pub const ENV: &'static [EnvVar] = &[
        config::KAFKA_BOOTSTRAP_SERVERS,
        config::WA_TOPIC_PREFIX,
        config::KAFKA_FETCH_WAIT_MS,
        config::KAFKA_SECURITY_PROTOCOL,
        config::KAFKA_SASL_MECHANISM,
        config::KAFKA_SASL_USERNAME,
        config::KAFKA_SASL_PASSWORD,
        config::KAFKA_SSL_CA_LOCATION,
        config::TWILIO_ACCOUNT_SID,
        config::TWILIO_AUTH_TOKEN,
        config::TWILIO_API_KEY_SID,
        config::TWILIO_API_KEY_SECRET,
        EXTRA_AUTH_TOKENS,
        PUBLIC_URL,
        TRUST_FORWARDED,
        API_TOKENS,
        ALLOW_UNAUTHENTICATED,
        SENDERS,
        PUBLISH_TIMEOUT_MS,
        MAX_IN_FLIGHT,
        MAX_BODY_BYTES,
        QUARANTINE_BUDGET,
        media::STORE_URL,
        media::DELETE_AT_TWILIO,
        DEDUPE_HORIZON_HOURS,
        DEDUPE_CAPACITY,
    ];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8080";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        let http_addr = config::http_addr(Self::DEFAULT_HTTP_ADDR)?;
        let mut auth_tokens = vec![config::twilio_auth_token_off_loopback(http_addr)?];
        let api_tokens = config::list(&API_TOKENS);
        config::require_tokens_off_loopback(http_addr, &api_tokens, &API_TOKENS, &ALLOW_UNAUTHENTICATED)?;
        auth_tokens.extend(config::list(&EXTRA_AUTH_TOKENS));
        let senders = config::list(&SENDERS)
            .iter()
            .map(|sender| {
                wa_schemas::WhatsAppAddress::parse(sender).map(String::from).map_err(|error| config::ConfigError {
                    name: SENDERS.name,
                    value: sender.clone(),
                    reason: format!("not a WhatsApp address: {error}"),
                })
            })
            .collect::<Result<_, _>>()?;
        let max_in_flight: usize = config::parse_in(&MAX_IN_FLIGHT, 1..=1_000_000)?;
        let (media_store_url, media_delete_at_twilio) = media::from_env()?;
        Ok(Self {
            http_addr,
            kafka: KafkaConfig::from_env()?,
            public_url: config::var(PUBLIC_URL.name),
            trust_forwarded_headers: config::parse(&TRUST_FORWARDED)?,
            account_sid: config::var_or(&config::TWILIO_ACCOUNT_SID),
            auth_tokens,
            api_tokens,
            senders,
            publish_timeout: Duration::from_millis(config::parse(&PUBLISH_TIMEOUT_MS)?),
            max_in_flight,
            max_body_bytes: config::parse(&MAX_BODY_BYTES)?,
            quarantine_budget_per_minute: config::parse_in(&QUARANTINE_BUDGET, 0..=1 << 40)?,
            media_store_url,
            media_delete_at_twilio,
            twilio_credentials: config::twilio_credentials(http_addr)?,
            dedupe_horizon: Duration::from_secs(3600 * config::parse::<u64>(&DEDUPE_HORIZON_HOURS)?),
            dedupe_capacity: config::parse(&DEDUPE_CAPACITY)?,
        })
    }

    /// A configuration for tests and embedding: everything at its default except the broker,
    /// the auth token and an HTTP address (port 0 picks a free one).
    pub fn new(http_addr: SocketAddr, kafka: KafkaConfig, auth_token: &str) -> Self {
        Self {
            http_addr,
            kafka,
            public_url: None,
            trust_forwarded_headers: false,
            account_sid: config::TWILIO_ACCOUNT_SID.default.unwrap_or_default().to_owned(),
            auth_tokens: vec![auth_token.to_owned()],
            api_tokens: vec![],
            senders: vec![],
            publish_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            max_body_bytes: 64 * 1024,
            quarantine_budget_per_minute: 5 * 1024 * 1024,
            media_store_url: media::STORE_URL.default.unwrap_or_default().to_owned(),
            media_delete_at_twilio: false,
            twilio_credentials: (
                config::TWILIO_ACCOUNT_SID.default.unwrap_or_default().to_owned(),
                auth_token.to_owned(),
            ),
            dedupe_horizon: Duration::from_secs(24 * 3600),
            dedupe_capacity: 2_000_000,
        }
    }
}

/// What request handlers share.
pub(crate) struct AppState {
    pub(crate) producer: EventProducer,
    pub(crate) urls: request::PublicUrl,
    pub(crate) account_sid: String,
    pub(crate) auth_tokens: Vec<String>,
    pub(crate) api_tokens: Vec<String>,
    pub(crate) senders: Vec<String>,
    pub(crate) publish_timeout: Duration,
    /// One permit per publish waiting for the broker.
    pub(crate) publishes: Arc<tokio::sync::Semaphore>,
    pub(crate) max_in_flight: usize,
    pub(crate) max_body_bytes: usize,
    pub(crate) quarantine_budget: request::QuarantineBudget,
    pub(crate) inbound_dedupe: Arc<dedupe::Deduplicator<NotPublished>>,
    pub(crate) outbound_dedupe: Arc<dedupe::Deduplicator<NotPublished>>,
    /// BSUIDs seen with phone numbers.
    pub(crate) identities: Arc<identities::Identities>,
    pub(crate) health: Arc<Health>,
}

impl AppState {
    /// Publishes `event` and waits for the broker's acknowledgement, at most the publish
    /// timeout; refused at once when `max_in_flight` publishes are already waiting.
    pub(crate) async fn publish<E: wa_schemas::Event + Clone + Send + Sync + 'static>(
        &self,
        topic: &'static wa_platform::topics::TopicSpec,
        event: &E,
    ) -> Result<(), NotPublished> {
        let started = self.start_publish(topic, event.clone())?;
        tokio::time::timeout(self.publish_timeout, started).await.unwrap_or_else(|_| Err(NotPublished::timed_out()))
    }

    /// Starts publishing `event`, refused at once when `max_in_flight` publishes are already
    /// waiting for the broker. The publish keeps its place among them until the broker
    /// answers, whoever stopped waiting for it.
    pub(crate) fn start_publish<E: wa_schemas::Event + Send + Sync + 'static>(
        &self,
        topic: &'static wa_platform::topics::TopicSpec,
        event: E,
    ) -> Result<dedupe::Started<NotPublished>, NotPublished> {
        let Ok(permit) = self.publishes.clone().try_acquire_owned() else {
            return Err(NotPublished::Overloaded { limit: self.max_in_flight });
        };
        metrics::gauge!("wa_ingress_publishes_in_flight").increment(1.0);
        let producer = self.producer.clone();
        // The record's trace context comes from the current span: the publish keeps the
        // request's span wherever it runs (its own task, when it outlives the request).
        let span = tracing::Span::current();
        Ok(Box::pin(
            async move {
                let result = producer.publish(topic, &event).await;
                metrics::gauge!("wa_ingress_publishes_in_flight").decrement(1.0);
                drop(permit);
                result.map(|_| ()).map_err(|err| NotPublished::NotDurable(err.to_string()))
            }
            .instrument(span),
        ))
    }

    /// Whether `sender` is a business sender this channel serves.
    pub(crate) fn serves(&self, sender: &str) -> bool {
        self.senders.is_empty() || self.senders.iter().any(|served| served == sender)
    }
}

/// Why a request's event was not published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum NotPublished {
    /// `limit` publishes were already waiting for the broker: shed at once.
    Overloaded { limit: usize },
    /// The broker did not acknowledge it (the reason).
    NotDurable(String),
}

impl NotPublished {
    /// No acknowledgement within the publish timeout.
    pub(crate) fn timed_out() -> Self {
        Self::NotDurable("broker did not acknowledge in time".to_owned())
    }
}

/// The ingress service.
pub struct Ingress;

impl Service for Ingress {
    const NAME: &'static str = SERVICE;
    type Config = Config;

    fn http_addr(config: &Config) -> SocketAddr {
        config.http_addr
    }

    /// Serves until `shutdown`, then flushes the producer. Requests get 503 until the dedupe
    /// replay has caught up.
    async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        let bound = format!("http://{}", listener.local_addr()?);
        // Twilio gets its answer within the publish timeout, but librdkafka keeps trying longer:
        // a delivery librdkafka gives up makes an idempotent producer bump its epoch, which
        // tansu 0.6 cannot take (decision 37), and a record that lands after the 503 is only a
        // duplicate of Twilio's retry, with the same event id.
        let delivery_timeout = config.publish_timeout.max(wa_platform::kafka::DELIVERY_TIMEOUT);
        let producer = EventProducer::new(&config.kafka, "wachannel/ingress", delivery_timeout)?;
        if config.api_tokens.is_empty() {
            tracing::warn!("INGRESS_API_TOKENS is unset: /v1/outbound accepts requests without a token");
        }
        // A store that cannot be opened stops ingress at start, not at the first photo.
        let media_store = media::Store::open(&config.media_store_url)?;
        let health = Health::new();
        let state = Arc::new(AppState {
            producer: producer.clone(),
            urls: request::PublicUrl::new(config.public_url.as_deref(), config.trust_forwarded_headers, &bound),
            account_sid: config.account_sid.clone(),
            auth_tokens: config.auth_tokens.clone(),
            api_tokens: config.api_tokens.clone(),
            senders: config.senders.clone(),
            publish_timeout: config.publish_timeout,
            publishes: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight)),
            max_in_flight: config.max_in_flight,
            max_body_bytes: config.max_body_bytes,
            quarantine_budget: request::QuarantineBudget::new(
                config.quarantine_budget_per_minute,
                std::time::Instant::now(),
            ),
            inbound_dedupe: Arc::new(dedupe::Deduplicator::new(config.dedupe_horizon, config.dedupe_capacity)),
            outbound_dedupe: Arc::new(dedupe::Deduplicator::new(config.dedupe_horizon, config.dedupe_capacity)),
            identities: Arc::default(),
            health: health.clone(),
        });
        let routes = Router::new()
            .route("/twilio/inbound", post(webhook::inbound))
            .route("/twilio/status", post(webhook::status))
            .route("/v1/outbound", post(outbound_api::create))
            .with_state(state.clone());
        let stopped = shutdown.clone();
        let worker = async move {
            tokio::select! {
                connected = wa_platform::kafka::wait_for_broker(&config.kafka, Duration::from_secs(60)) => connected?,
                () = stopped.cancelled() => return Ok(()),
            }
            let followers = [
                state.inbound_dedupe.follow(&config.kafka, &INBOUND, &stopped).await?,
                state.outbound_dedupe.follow(&config.kafka, &OUTBOUND_REQUESTED, &stopped).await?,
                state.identities.follow(&config.kafka, &stopped).await?,
            ];
            state.health.set_ready(!stopped.is_cancelled());
            let probe = wa_platform::kafka::watch_broker(
                config.kafka.clone(),
                OUTBOUND_REQUESTED,
                state.health.clone(),
                stopped.clone(),
            );
            // Customers' media, downloaded and stored beside the webhooks, never in their way.
            let keeper = media::MediaKeeper {
                store: media_store,
                http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
                credentials: config.twilio_credentials.clone(),
                delete_at_twilio: config.media_delete_at_twilio,
                producer: producer.clone(),
            };
            let media_settings = wa_platform::kafka::ConsumerSettings {
                group: "ingress-media".to_owned(),
                topics: vec![INBOUND],
                service: SERVICE,
                assignment: Default::default(),
                max_in_flight: 16,
            };
            let keeping =
                wa_platform::kafka::run_consumer(&config.kafka, &media_settings, &producer, &keeper, &stopped);
            let (probed, kept) = tokio::join!(probe, keeping);
            probed?;
            kept?;
            for follower in followers {
                follower.await??;
            }
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

/// Masks an address for logs: `whatsapp:+15551234567` becomes `whatsapp:+155******67`.
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
        assert_eq!(super::mask("whatsapp:US.13491208655302741918"), "whatsapp:US.1*****************18");
        assert_eq!(super::mask("ab"), "ab");
    }
}
