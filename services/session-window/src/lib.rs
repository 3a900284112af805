//! Session-window: the 24-hour customer-service window.
//!
//! Projects `wa.inbound.v1` into per-conversation windows and answers every
//! `wa.outbound.requested.v1` record with a verdict on `wa.outbound.checked.v1`.

mod projection;
pub mod window;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use uuid::Uuid;
use wa_platform::config::{self, EnvVar, KafkaConfig};
use wa_platform::kafka::{ConsumerSettings, EventProducer, HandleError, Handler, Record};
use wa_platform::service::{Bound, Prepared, Service};
use wa_platform::topics::{OUTBOUND_CHECKED, OUTBOUND_REQUESTED};
use wa_platform::CancellationToken;
use wa_schemas::{Event, OutboundRequested, OutboundWindowChecked};

use crate::projection::Projection;

/// The service name.
pub const SERVICE: &str = "session-window";

const SAFETY_MARGIN_MS: EnvVar = EnvVar {
    name: "SESSION_SAFETY_MARGIN_MS",
    default: Some("60000"),
    doc: "free-form sends are refused this long before the window closes, so they do not reach Twilio after it",
};
const CATCH_UP_TIMEOUT_MS: EnvVar = EnvVar {
    name: "SESSION_CATCH_UP_TIMEOUT_MS",
    default: Some("10000"),
    doc: "how long a verdict waits for the projection to read the latest inbound messages before retrying",
};

/// Session-window configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
    /// Refuse free-form sends this long before the window closes.
    pub safety_margin: Duration,
    /// Bound on waiting for the projection before a verdict.
    pub catch_up_timeout: Duration,
}

impl Config {
    /// Every variable session-window reads (beyond telemetry's).
    pub const ENV: &'static [EnvVar] = &[
        config::KAFKA_BOOTSTRAP_SERVERS,
        config::WA_TOPIC_PREFIX,
        config::KAFKA_GROUP_INSTANCE_ID,
        SAFETY_MARGIN_MS,
        CATCH_UP_TIMEOUT_MS,
    ];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8081";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        Ok(Self {
            http_addr: config::http_addr(Self::DEFAULT_HTTP_ADDR)?,
            kafka: KafkaConfig::from_env(),
            safety_margin: Duration::from_millis(config::parse(&SAFETY_MARGIN_MS)?),
            catch_up_timeout: Duration::from_millis(config::parse(&CATCH_UP_TIMEOUT_MS)?),
        })
    }
}

/// Checks outbound requests against the projected windows.
struct CheckWindow {
    projection: Arc<Projection>,
    producer: EventProducer,
    config: Config,
}

impl Handler for CheckWindow {
    async fn handle(&self, record: &Record<'_>) -> Result<(), HandleError> {
        let request = OutboundRequested::decode(record.payload)?;
        self.projection.catch_up(self.config.catch_up_timeout).await.map_err(HandleError::Transient)?;
        let window = self.projection.window(&request.conversation_id);
        let now = wa_platform::now_millis();
        let margin = i64::try_from(self.config.safety_margin.as_millis()).unwrap_or(i64::MAX);
        // The window limits free-form content only; templates may be sent at any time (their
        // approval is template-approval's to check).
        let verdict =
            if request.template.is_some() { Ok(()) } else { window::check_free_form(window.as_ref(), now, margin) };
        metrics::counter!("wa_session_verdicts_total", "verdict" => verdict.map_or_else(|r| r.code(), |()| "allowed"))
            .increment(1);
        tracing::info!(request_id = %request.request_id, allowed = verdict.is_ok(), "window checked");
        let checked = OutboundWindowChecked {
            event_id: Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("wachannel:checked:{}", request.event_id()).as_bytes(),
            )
            .to_string(),
            occurred_at: now,
            conversation_id: request.conversation_id,
            request_id: request.request_id,
            from: request.from,
            to: request.to,
            body: request.body,
            media_urls: request.media_urls,
            template: request.template,
            allowed: verdict.is_ok(),
            refusal_reason: verdict.err().map(|refusal| refusal.code().to_owned()),
            window_expires_at: window.map(|w| w.expires_at),
            opted_out: false,
        };
        self.producer.publish(&OUTBOUND_CHECKED, &checked).await?;
        Ok(())
    }
}

/// The session-window service.
pub struct SessionWindow;

impl Service for SessionWindow {
    const NAME: &'static str = SERVICE;
    type Config = Config;

    fn http_addr(config: &Config) -> SocketAddr {
        config.http_addr
    }

    /// Projects and checks until `shutdown`.
    async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings =
            ConsumerSettings { group: "session-window".to_owned(), topics: vec![OUTBOUND_REQUESTED], service: SERVICE };
        let kafka = config.kafka.clone();
        let setup = move |producer, background: CancellationToken| async move {
            let projection = Projection::start(&config.kafka).await?;
            let projecting = {
                let projection = projection.clone();
                let stop = background.clone();
                tokio::spawn(async move { projection.run(stop).await })
            };
            // Ready once the state holds everything published before start.
            projection.wait_caught_up(&background).await;
            Ok(Prepared { handler: CheckWindow { projection, producer, config }, background: vec![projecting] })
        };
        wa_platform::service::run_consumer_service(listener, Router::new(), kafka, settings, shutdown, setup).await
    }
}

/// Binds the HTTP listener (port 0 picks a free one).
pub async fn bind(config: Config) -> anyhow::Result<Bound<SessionWindow>> {
    Bound::bind(config).await
}

/// Binds and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    wa_platform::service::run::<SessionWindow>(config, shutdown).await
}
