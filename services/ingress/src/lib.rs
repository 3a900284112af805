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

mod config;
mod dedupe;
mod identities;
mod media;
mod outbound_api;
pub mod replay;
mod request;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::post;
use axum::Router;
use tokio::net::TcpListener;
use tracing::Instrument as _;
use wa_platform::http::Health;
use wa_platform::kafka::EventProducer;
use wa_platform::service::{Bound, Service};
use wa_platform::topics::{INBOUND, OUTBOUND_REQUESTED};
use wa_platform::CancellationToken;

pub use crate::config::Config;

/// The service name, in logs, metrics and CloudEvents `source`.
pub const SERVICE: &str = "ingress";

/// How long the broker may hold the fetches of ingress's readers of its own topics (the media
/// keeper, the dedupe followers): they are off the requests' path, and on tansu, whose fetches
/// wait their time out, fewer and larger fetches cost the broker less. Apache Kafka answers as
/// soon as records arrive, so nothing waits longer there.
pub const BACKGROUND_FETCH_WAIT: Duration = Duration::from_millis(500);

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
        metrics::gauge!(wa_platform::metrics::INGRESS_PUBLISHES_IN_FLIGHT).increment(1.0);
        let producer = self.producer.clone();
        // The record's trace context comes from the current span: the publish keeps the
        // request's span wherever it runs (its own task, when it outlives the request).
        let span = tracing::Span::current();
        Ok(Box::pin(
            async move {
                let result = producer.publish(topic, &event).await;
                metrics::gauge!(wa_platform::metrics::INGRESS_PUBLISHES_IN_FLIGHT).decrement(1.0);
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
        let producer = EventProducer::new(&config.kafka, "wachannel/ingress", delivery_timeout)?
            .with_faults(config.delivery_faults.clone());
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
                // Off the webhooks' path: media waits up to half a second more to be fetched,
                // and the broker serves the keeper a tenth of the fetches.
                fetch_wait: Some(BACKGROUND_FETCH_WAIT),
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
