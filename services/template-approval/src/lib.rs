//! Template-approval: decides what may be sent.
//!
//! In this first version it passes free-form requests that the window allowed on to
//! `wa.outbound.authorized.v1`, and publishes every refusal on `wa.outbound.rejected.v1` with a
//! machine-readable reason and a message an agent can read. The template lifecycle comes next.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use uuid::Uuid;
use wa_platform::config::{self, EnvVar, KafkaConfig};
use wa_platform::kafka::{ConsumerSettings, EventProducer, HandleError, Handler, Record};
use wa_platform::service::{Bound, Service};
use wa_platform::topics::{OUTBOUND_AUTHORIZED, OUTBOUND_CHECKED, OUTBOUND_REJECTED};
use wa_platform::CancellationToken;
use wa_schemas::{Event, OutboundAuthorized, OutboundRejected, OutboundWindowChecked};

/// The service name.
pub const SERVICE: &str = "template-approval";

/// Template-approval configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
}

impl Config {
    /// Every variable template-approval reads (beyond telemetry's).
    pub const ENV: &'static [EnvVar] = KafkaConfig::ENV;
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8082";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        Ok(Self {
            http_addr: config::http_addr(Self::DEFAULT_HTTP_ADDR)?,
            kafka: KafkaConfig::from_env(),
        })
    }
}

/// What happens to a checked request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it.
    Authorize(OutboundAuthorized),
    /// Refuse it.
    Reject(OutboundRejected),
}

/// Decides on a window verdict: pure, `now` passed in.
pub fn decide(checked: OutboundWindowChecked, now: i64) -> Decision {
    let event_id = Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("wachannel:decided:{}", checked.event_id).as_bytes(),
    )
    .to_string();
    if checked.allowed {
        return Decision::Authorize(OutboundAuthorized {
            event_id,
            occurred_at: now,
            conversation_id: checked.conversation_id,
            request_id: checked.request_id,
            from: checked.from,
            to: checked.to,
            body: checked.body,
            media_urls: checked.media_urls,
            window_expires_at: checked.window_expires_at,
        });
    }
    let reason = checked
        .refusal_reason
        .unwrap_or_else(|| "window_closed".to_owned());
    let message = match (reason.as_str(), checked.window_expires_at) {
        ("no_window", _) => {
            "the customer has not written to this sender, so only an approved template may be sent"
                .to_owned()
        }
        (_, Some(expires_at)) => {
            let closed = chrono::DateTime::from_timestamp_millis(expires_at).unwrap_or_default();
            format!(
                "the customer's 24-hour window closed at {}; only an approved template may be sent",
                closed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        }
        _ => "the customer's 24-hour window is closed; only an approved template may be sent"
            .to_owned(),
    };
    Decision::Reject(OutboundRejected {
        event_id,
        occurred_at: now,
        conversation_id: checked.conversation_id,
        request_id: checked.request_id,
        from: checked.from,
        to: checked.to,
        reason,
        message,
        rejected_by: SERVICE.to_owned(),
    })
}

struct Authorize {
    producer: EventProducer,
}

impl Handler for Authorize {
    async fn handle(&self, record: &Record<'_>) -> Result<(), HandleError> {
        let checked = OutboundWindowChecked::decode(record.payload)?;
        let request_id = checked.request_id.clone();
        match decide(checked, wa_platform::now_millis()) {
            Decision::Authorize(authorized) => {
                self.producer
                    .publish(&OUTBOUND_AUTHORIZED, &authorized)
                    .await?;
                metrics::counter!("wa_outbound_decisions_total", "decision" => "authorized")
                    .increment(1);
                tracing::info!(request_id = %request_id, "outbound authorized");
            }
            Decision::Reject(rejected) => {
                self.producer.publish(&OUTBOUND_REJECTED, &rejected).await?;
                metrics::counter!("wa_outbound_decisions_total", "decision" => "rejected")
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

    async fn run(
        listener: TcpListener,
        config: Config,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let settings = ConsumerSettings {
            group: "template-approval".to_owned(),
            topics: vec![OUTBOUND_CHECKED],
            service: SERVICE,
        };
        wa_platform::service::run_consumer_service(
            listener,
            config.kafka,
            settings,
            shutdown,
            |producer| Ok(Authorize { producer }),
        )
        .await
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

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(allowed: bool, reason: Option<&str>, expires: Option<i64>) -> OutboundWindowChecked {
        OutboundWindowChecked {
            event_id: "e1".into(),
            occurred_at: 1,
            conversation_id: "c1".into(),
            request_id: "r1".into(),
            from: "whatsapp:+1".into(),
            to: "whatsapp:+2".into(),
            body: Some("hi".into()),
            media_urls: vec![],
            allowed,
            refusal_reason: reason.map(str::to_owned),
            window_expires_at: expires,
        }
    }

    #[test]
    fn allowed_free_form_is_authorized_with_its_content_and_expiry() {
        let Decision::Authorize(authorized) = decide(checked(true, None, Some(99)), 5) else {
            panic!("expected authorization");
        };
        assert_eq!(authorized.request_id, "r1");
        assert_eq!(authorized.body.as_deref(), Some("hi"));
        assert_eq!(authorized.window_expires_at, Some(99));
        assert_eq!(authorized.occurred_at, 5);
    }

    #[test]
    fn refusals_carry_reason_and_readable_message() {
        let Decision::Reject(no_window) = decide(checked(false, Some("no_window"), None), 5) else {
            panic!("expected rejection");
        };
        assert_eq!(no_window.reason, "no_window");
        assert!(no_window.message.contains("has not written"));
        let Decision::Reject(closed) = decide(checked(false, Some("window_closed"), Some(0)), 5)
        else {
            panic!("expected rejection");
        };
        assert_eq!(closed.reason, "window_closed");
        assert!(
            closed.message.contains("1970-01-01T00:00:00Z"),
            "{}",
            closed.message
        );
        assert_eq!(closed.rejected_by, "template-approval");
    }

    #[test]
    fn decisions_are_idempotent() {
        assert_eq!(
            decide(checked(true, None, None), 5),
            decide(checked(true, None, None), 5)
        );
    }
}
