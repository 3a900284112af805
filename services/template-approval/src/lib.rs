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
mod config;
pub mod languages;
mod store;
mod sync;
pub mod template;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use wa_platform::kafka::{ConsumerSettings, EventProducer, HandleError, Handler, Record};
use wa_platform::service::{Bound, Prepared, Service};
use wa_platform::topics::{OUTBOUND_AUTHORIZED, OUTBOUND_CHECKED, OUTBOUND_REJECTED};
use wa_platform::CancellationToken;
use wa_schemas::{Event, OutboundWindowChecked};

use crate::authorize::{Decision, Policy};
use crate::store::Store;

pub use crate::config::Config;

/// The service name.
pub const SERVICE: &str = "template-approval";

/// Turns window verdicts into authorizations or refusals.
struct Authorize {
    producer: EventProducer,
    store: Arc<Store>,
    policy: Policy,
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
        let decision = self.store.read(|templates| authorize::decide(checked, templates, &self.policy, now));
        match decision {
            Decision::Authorize(authorized) => {
                self.producer.publish(&OUTBOUND_AUTHORIZED, &authorized).await?;
                metrics::counter!(wa_platform::metrics::OUTBOUND_DECISIONS, "decision" => "authorized").increment(1);
                tracing::info!(request_id = %request_id, template = authorized.template_name.as_deref().unwrap_or(""), "outbound authorized");
            }
            Decision::Reject(rejected) => {
                self.producer.publish(&OUTBOUND_REJECTED, &rejected).await?;
                metrics::counter!(wa_platform::metrics::OUTBOUND_DECISIONS, "decision" => "rejected", "reason" => rejected.reason.clone())
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
        let content = wa_twilio::content_api::ContentClient::new(
            &config.content_base_url,
            &config.auth_username,
            &config.auth_password,
        )?;
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
            fetch_wait: None,
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
            let handler = Authorize { producer, store, policy: config.policy };
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
