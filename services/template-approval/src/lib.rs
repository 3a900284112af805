//! Template-approval: the WhatsApp template lifecycle, and what may be sent.
//!
//! - Templates per (name, language) are an event-sourced aggregate ([`template`]); their events
//!   are the topic `wa.templates.v1`, from which the service rebuilds its state at start.
//! - An admin API registers, submits, replaces, pauses, disables and deletes them; a sync with
//!   Twilio's Content API turns Meta's decisions (approved, rejected, paused, disabled) into
//!   events.
//! - For each window verdict on `wa.outbound.checked.v1` it publishes
//!   `wa.outbound.authorized.v1` (with the rendered `ContentSid` + `ContentVariables` for
//!   templates) or `wa.outbound.rejected.v1` with a machine-readable reason ([`authorize`]).

mod admin;
pub mod authorize;
pub mod languages;
mod store;
mod sync;
pub mod template;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use wa_platform::config::{self, EnvVar, KafkaConfig};
use wa_platform::kafka::{ConsumerSettings, EventProducer, HandleError, Handler, Record};
use wa_platform::service::{Bound, Prepared, Service};
use wa_platform::topics::{OUTBOUND_AUTHORIZED, OUTBOUND_CHECKED, OUTBOUND_REJECTED};
use wa_platform::CancellationToken;
use wa_schemas::{Event, OutboundWindowChecked};

use crate::authorize::{Decision, Fallbacks};
use crate::store::Store;

/// The service name.
pub const SERVICE: &str = "template-approval";

const ADMIN_TOKENS: EnvVar = EnvVar {
    name: "TEMPLATE_ADMIN_TOKENS",
    default: None,
    doc: "comma-separated bearer tokens for the admin API; unset: open, allowed only on a loopback HTTP_ADDR (or with TEMPLATE_ALLOW_UNAUTHENTICATED=true)",
};
const ALLOW_UNAUTHENTICATED: EnvVar = EnvVar {
    name: "TEMPLATE_ALLOW_UNAUTHENTICATED",
    default: Some("false"),
    doc: "true lets template-approval serve its admin API without TEMPLATE_ADMIN_TOKENS off loopback; otherwise it refuses to start",
};
const CONTENT_BASE_URL: EnvVar = EnvVar {
    name: "TWILIO_CONTENT_BASE_URL",
    default: Some("https://content.twilio.com"),
    doc: "base URL of Twilio's Content API; the simulator's URL locally",
};
const SYNC_INTERVAL_MS: EnvVar = EnvVar {
    name: "TEMPLATE_SYNC_INTERVAL_MS",
    default: Some("60000"),
    doc: "how often approval statuses of pending, approved and paused templates are fetched from Twilio",
};
const LANGUAGE_FALLBACKS: EnvVar = EnvVar {
    name: "TEMPLATE_LANGUAGE_FALLBACKS",
    default: Some(""),
    doc: "fallback chains, e.g. pt_BR:pt:en,es_MX:es:en: the first approved language of the chain is sent",
};

/// Template-approval configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
    /// Admin API bearer tokens; empty means open.
    pub admin_tokens: Vec<String>,
    /// Twilio Content API base URL.
    pub content_base_url: String,
    /// Basic-auth user for Twilio (account SID or API key SID).
    pub auth_username: String,
    /// Basic-auth password for Twilio (auth token or API key secret).
    pub auth_password: String,
    /// Status sync period.
    pub sync_interval: Duration,
    /// Language fallback chains.
    pub fallbacks: Fallbacks,
}

impl Config {
    /// Every variable template-approval reads (beyond telemetry's).
    pub const ENV: &'static [EnvVar] = &[
        config::KAFKA_BOOTSTRAP_SERVERS,
        config::WA_TOPIC_PREFIX,
        config::KAFKA_FETCH_WAIT_MS,
        config::KAFKA_SECURITY_PROTOCOL,
        config::KAFKA_SASL_MECHANISM,
        config::KAFKA_SASL_USERNAME,
        config::KAFKA_SASL_PASSWORD,
        config::KAFKA_SSL_CA_LOCATION,
        config::KAFKA_GROUP_INSTANCE_ID,
        ADMIN_TOKENS,
        ALLOW_UNAUTHENTICATED,
        CONTENT_BASE_URL,
        config::TWILIO_ACCOUNT_SID,
        config::TWILIO_AUTH_TOKEN,
        config::TWILIO_API_KEY_SID,
        config::TWILIO_API_KEY_SECRET,
        SYNC_INTERVAL_MS,
        LANGUAGE_FALLBACKS,
    ];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8082";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        let http_addr = config::http_addr(Self::DEFAULT_HTTP_ADDR)?;
        let (auth_username, auth_password) = config::twilio_credentials(http_addr)?;
        let fallbacks_text = config::var_or(&LANGUAGE_FALLBACKS);
        let fallbacks = Fallbacks::parse(&fallbacks_text).map_err(|reason| config::ConfigError {
            name: LANGUAGE_FALLBACKS.name,
            value: fallbacks_text.clone(),
            reason,
        })?;
        let admin_tokens = config::list(&ADMIN_TOKENS);
        config::require_tokens_off_loopback(http_addr, &admin_tokens, &ADMIN_TOKENS, &ALLOW_UNAUTHENTICATED)?;
        Ok(Self {
            http_addr,
            kafka: KafkaConfig::from_env()?,
            admin_tokens,
            content_base_url: config::var_or(&CONTENT_BASE_URL),
            auth_username,
            auth_password,
            sync_interval: Duration::from_millis(config::parse(&SYNC_INTERVAL_MS)?),
            fallbacks,
        })
    }
}

/// Turns window verdicts into authorizations or refusals.
struct Authorize {
    producer: EventProducer,
    store: Arc<Store>,
    fallbacks: Fallbacks,
}

impl Handler for Authorize {
    async fn handle(&self, record: &Record<'_>) -> Result<(), HandleError> {
        let checked = OutboundWindowChecked::decode(record.payload)?;
        if checked.template.is_some() {
            // A template approved or paused a moment ago must count.
            self.store.catch_up().await.map_err(HandleError::Transient)?;
        }
        let request_id = checked.request_id.clone();
        let now = wa_platform::now_millis();
        let decision = self.store.read(|templates| authorize::decide(checked, templates, &self.fallbacks, now));
        match decision {
            Decision::Authorize(authorized) => {
                self.producer.publish(&OUTBOUND_AUTHORIZED, &authorized).await?;
                metrics::counter!("wa_outbound_decisions_total", "decision" => "authorized").increment(1);
                tracing::info!(request_id = %request_id, template = authorized.template_name.as_deref().unwrap_or(""), "outbound authorized");
            }
            Decision::Reject(rejected) => {
                self.producer.publish(&OUTBOUND_REJECTED, &rejected).await?;
                metrics::counter!("wa_outbound_decisions_total", "decision" => "rejected", "reason" => rejected.reason.clone())
                    .increment(1);
                tracing::info!(request_id = %request_id, reason = %rejected.reason, "outbound rejected");
            }
        }
        Ok(())
    }
}

/// The template-approval service.
pub struct TemplateApproval;

impl Service for TemplateApproval {
    const NAME: &'static str = SERVICE;
    type Config = Config;

    fn http_addr(config: &Config) -> SocketAddr {
        config.http_addr
    }

    async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        if config.admin_tokens.is_empty() {
            tracing::warn!("TEMPLATE_ADMIN_TOKENS is unset: the admin API accepts requests without a token");
        }
        let content = sync::ContentClient::new(&config.content_base_url, &config.auth_username, &config.auth_password)?;
        let admin = Arc::new(admin::AdminState {
            store: tokio::sync::OnceCell::new(),
            tokens: config.admin_tokens.clone(),
            content: content.clone(),
        });
        let routes = admin::routes(admin.clone());
        let settings = ConsumerSettings {
            group: "template-approval".to_owned(),
            topics: vec![OUTBOUND_CHECKED],
            service: SERVICE,
            assignment: Default::default(),
            max_in_flight: wa_platform::kafka::MAX_IN_FLIGHT,
        };
        let kafka = config.kafka.clone();
        let setup = move |producer: EventProducer, background: CancellationToken| async move {
            let store = Store::start(&config.kafka, producer.clone()).await?;
            let following = {
                let store = store.clone();
                let stop = background.clone();
                tokio::spawn(async move { store.run(stop).await })
            };
            store.wait_caught_up(&background).await;
            let _ = admin.store.set(store.clone());
            let syncing = {
                let store = store.clone();
                tokio::spawn(async move {
                    sync::run(store, content, config.sync_interval, background).await;
                    Ok(())
                })
            };
            let handler = Authorize { producer, store, fallbacks: config.fallbacks };
            Ok(Prepared { handler, background: vec![following, syncing] })
        };
        wa_platform::service::run_consumer_service(listener, routes, kafka, settings, shutdown, setup).await
    }
}

/// Binds the HTTP listener (port 0 picks a free one).
pub async fn bind(config: Config) -> anyhow::Result<Bound<TemplateApproval>> {
    Bound::bind(config).await
}

/// Binds and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    wa_platform::service::run::<TemplateApproval>(config, shutdown).await
}
