//! Outbound-dispatch: sends authorized messages through Twilio's Messages API, never twice, and
//! publishes every outcome and every forward delivery move on `wa.outbound.dispatched.v1`.
//!
//! - **No duplicate sends**: a ledger of request ids, projected from dispatch's own output
//!   topic and restored at start, is checked before every send. A `sending` marker is made
//!   durable before Twilio is called; a send whose answer never came (timeout, dropped
//!   connection, crash) stays unconfirmed and is never repeated: its status callback resolves
//!   it (`sent`), or after `DISPATCH_IN_DOUBT_AFTER_MS` it is published `in_doubt` for the CRM
//!   and operators to decide.
//! - **Retries**: throttling (429, 20429, 63018), 5xx and unreachable Twilio are retried with
//!   exponential backoff and jitter up to a deadline; permanent errors fail at once with a reason
//!   by error code. A free-form message whose window has closed since it was authorized fails
//!   without calling Twilio.
//! - **Delivery status**: status callbacks (`wa.delivery.v1`, from ingress) are folded into each
//!   request's entry; each forward move (queued < sent < delivered < read; failed and
//!   undelivered final) is published once as `status_changed`.

mod ledger;
pub mod rate;
pub mod twilio;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use uuid::Uuid;
use wa_platform::config::{self, EnvVar, KafkaConfig};
use wa_platform::kafka::TopicFollower;
use wa_platform::kafka::{ConsumerSettings, EventProducer, HandleError, Handler, Record};
use wa_platform::service::{Bound, Prepared, Service};
use wa_platform::topics::{DELIVERY, OUTBOUND_AUTHORIZED, OUTBOUND_DISPATCHED};
use wa_platform::CancellationToken;
use wa_schemas::{DeliveryStatusReceived, Event, OutboundAuthorized, OutboundDispatched};

use crate::ledger::{moves_forward, Ledger, Stage};
use crate::rate::{RateLimiter, Rates};

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
const SENDER_RATE: EnvVar = EnvVar {
    name: "DISPATCH_SENDER_RATE",
    default: Some("80"),
    doc: "messages per second per WhatsApp sender (Twilio's default limit is 80)",
};
const SENDER_RATES: EnvVar = EnvVar {
    name: "DISPATCH_SENDER_RATES",
    default: None,
    doc: "per-sender overrides: whatsapp:+14155238886=20,whatsapp:+14155238887=200",
};
const ACCOUNT_RATE: EnvVar = EnvVar {
    name: "DISPATCH_ACCOUNT_RATE",
    default: Some("0"),
    doc: "messages per second for the whole account across senders; 0 for no account limit",
};
const INSTANCES: EnvVar = EnvVar {
    name: "DISPATCH_INSTANCES",
    default: Some("1"),
    doc: "how many dispatch instances run: each paces at the rates divided by this, so together they never exceed them",
};
const MESSAGING_SERVICE_SID: EnvVar = EnvVar {
    name: "TWILIO_MESSAGING_SERVICE_SID",
    default: None,
    doc: "an MG... Messaging Service to send through (with From naming the sender)",
};
const IN_DOUBT_AFTER_MS: EnvVar = EnvVar {
    name: "DISPATCH_IN_DOUBT_AFTER_MS",
    default: Some("300000"),
    doc: "how long a send without an answer waits for its status callback before it is published in_doubt",
};
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
    /// An unconfirmed send is published `in_doubt` after this long.
    pub in_doubt_after: Duration,
    /// Sending rates (for all instances together).
    pub rates: Rates,
    /// How many dispatch instances share the rates.
    pub instances: u32,
    /// A Messaging Service to send through.
    pub messaging_service_sid: Option<String>,
}

impl Config {
    /// Every variable outbound-dispatch reads (beyond telemetry's).
    pub const ENV: &'static [EnvVar] = &[
        config::KAFKA_BOOTSTRAP_SERVERS,
        config::WA_TOPIC_PREFIX,
        config::KAFKA_GROUP_INSTANCE_ID,
        API_BASE_URL,
        config::TWILIO_ACCOUNT_SID,
        config::TWILIO_AUTH_TOKEN,
        config::TWILIO_API_KEY_SID,
        config::TWILIO_API_KEY_SECRET,
        STATUS_CALLBACK_URL,
        REQUEST_TIMEOUT_MS,
        RETRY_DEADLINE_MS,
        IN_DOUBT_AFTER_MS,
        SENDER_RATE,
        SENDER_RATES,
        ACCOUNT_RATE,
        INSTANCES,
        MESSAGING_SERVICE_SID,
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
            in_doubt_after: Duration::from_millis(config::parse(&IN_DOUBT_AFTER_MS)?),
            rates: Rates {
                per_sender: config::parse(&SENDER_RATE)?,
                senders: Rates::parse_overrides(&config::var_or(&SENDER_RATES)).map_err(|reason| {
                    config::ConfigError { name: SENDER_RATES.name, value: config::var_or(&SENDER_RATES), reason }
                })?,
                account: config::parse(&ACCOUNT_RATE)?,
            },
            instances: config::parse(&INSTANCES)?,
            messaging_service_sid: config::var(MESSAGING_SERVICE_SID.name),
        })
    }
}

/// The result of trying to send one message.
#[derive(Debug)]
enum Attempted {
    Sent {
        sid: String,
        status: String,
        attempts: i32,
    },
    Failed {
        reason: &'static str,
        error: Option<TwilioError>,
        attempts: i32,
    },
    /// Sent, but no answer: Twilio may have created it.
    Unconfirmed {
        error: TwilioError,
        attempts: i32,
    },
    /// Stopped between retries; nothing was sent.
    Interrupted,
}

struct Dispatch {
    producer: EventProducer,
    twilio: TwilioClient,
    config: Config,
    ledger: Arc<Ledger>,
    limiter: RateLimiter,
    delivery_topic: String,
    stop: CancellationToken,
}

/// Marks a request as being sent by this process until dropped.
struct Working<'a> {
    ledger: &'a Ledger,
    request_id: &'a str,
}

impl<'a> Working<'a> {
    fn start(ledger: &'a Ledger, request_id: &'a str) -> Self {
        ledger.working_on(request_id, true);
        Self { ledger, request_id }
    }
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.ledger.working_on(self.request_id, false);
    }
}

/// What every event about a request repeats.
struct Identity<'a> {
    conversation_id: &'a str,
    request_id: &'a str,
    from: &'a str,
    to: &'a str,
}

impl Identity<'_> {
    /// An event about this request; its id is derived from the request, the outcome and the
    /// status, so the same move published twice (two instances, a redelivery) has one id.
    fn event(&self, outcome: &str, status: Option<&str>) -> OutboundDispatched {
        let name = format!("wachannel:dispatched:{}:{outcome}:{}", self.request_id, status.unwrap_or_default());
        OutboundDispatched {
            event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()).to_string(),
            occurred_at: wa_platform::now_millis(),
            conversation_id: self.conversation_id.to_owned(),
            request_id: self.request_id.to_owned(),
            from: self.from.to_owned(),
            to: self.to.to_owned(),
            outcome: outcome.to_owned(),
            message_sid: None,
            twilio_status: status.map(str::to_owned),
            error_code: None,
            error_message: None,
            failure_reason: None,
            attempts: 0,
        }
    }
}

impl Dispatch {
    /// Publishes one of dispatch's events and writes it through to the ledger.
    async fn publish(&self, event: OutboundDispatched) -> Result<(), HandleError> {
        self.producer.publish(&OUTBOUND_DISPATCHED, &event).await?;
        self.ledger.apply(&event);
        Ok(())
    }

    async fn send_with_retries(&self, authorized: &OutboundAuthorized) -> Attempted {
        let message = OutgoingMessage {
            from: &authorized.from,
            to: &authorized.to,
            body: authorized.body.as_deref(),
            media_urls: &authorized.media_urls,
            content_sid: authorized.content_sid.as_deref(),
            content_variables: authorized.content_variables.as_deref(),
            messaging_service_sid: self.config.messaging_service_sid.as_deref(),
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
            // The first attempt's slot was taken before the marker was written.
            if attempts > 1 {
                tokio::select! {
                    () = self.stop.cancelled() => return Attempted::Interrupted,
                    () = self.limiter.acquire(&authorized.from) => {}
                }
            }
            let error = match self.twilio.send(&message).await {
                Ok(resource) => {
                    self.limiter.succeeded(&authorized.from);
                    return Attempted::Sent { sid: resource.sid, status: resource.status, attempts };
                }
                Err(error) if error.is_in_doubt() => return Attempted::Unconfirmed { error, attempts },
                Err(error) if !error.is_retryable() => {
                    return Attempted::Failed { reason: error.failure_reason(), error: Some(error), attempts }
                }
                Err(error) => error,
            };
            if error.is_throttling() {
                self.limiter.throttled(&authorized.from);
            }
            let wait = backoff.mul_f64(0.5 + fastrand::f64());
            if started.elapsed() + wait > self.config.retry_deadline {
                return Attempted::Failed { reason: "retries_exhausted", error: Some(error), attempts };
            }
            metrics::counter!("wa_dispatch_retries_total", "throttled" => error.is_throttling().to_string())
                .increment(1);
            tracing::warn!(error = %error, attempts, retry_in = ?wait, "send failed; retrying");
            tokio::select! {
                () = self.stop.cancelled() => return Attempted::Interrupted,
                () = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Sends one authorized message unless the ledger knows its request.
    async fn dispatch(&self, authorized: OutboundAuthorized) -> Result<(), HandleError> {
        let identity = Identity {
            conversation_id: &authorized.conversation_id,
            request_id: &authorized.request_id,
            from: &authorized.from,
            to: &authorized.to,
        };
        if let Some(entry) = self.ledger.get(&authorized.request_id) {
            let stage = format!("{:?}", entry.stage).to_lowercase();
            metrics::counter!("wa_dispatch_duplicates_skipped_total").increment(1);
            tracing::info!(request_id = %authorized.request_id, stage = %stage, "request already dispatched; not sent again");
            return Ok(());
        }
        // Free-form content needs the window still open; templates do not.
        if let (None, Some(expires_at)) = (&authorized.content_sid, authorized.window_expires_at) {
            if wa_platform::now_millis() >= expires_at {
                let mut failed = identity.event("failed", None);
                failed.failure_reason = Some("window_closed".to_owned());
                return self.outcome(failed).await;
            }
        }
        // The marker is durable before Twilio is called: after a crash, the request is known
        // to be in flight and is not sent again.
        // While this process works on the send (retries included) it is not in doubt; the
        // guard ends that when this function returns, after the outcome is durable.
        let working = Working::start(&self.ledger, &authorized.request_id);
        // Wait for the sender's pace first, so the marker is written right before the call:
        // a crash while waiting leaves nothing in doubt.
        tokio::select! {
            () = self.stop.cancelled() => return Err(HandleError::Transient("stopping before the send".to_owned())),
            () = self.limiter.acquire(&authorized.from) => {}
        }
        self.publish(identity.event("sending", None)).await?;
        let event = match self.send_with_retries(&authorized).await {
            Attempted::Sent { sid, status, attempts } => {
                let mut sent = identity.event("sent", None);
                sent.message_sid = Some(sid);
                sent.twilio_status = Some(status);
                sent.attempts = attempts;
                sent
            }
            Attempted::Failed { reason, error, attempts } => {
                let mut failed = identity.event("failed", None);
                failed.failure_reason = Some(reason.to_owned());
                failed.error_code = error.as_ref().and_then(TwilioError::code);
                failed.error_message = error.map(|err| err.to_string());
                failed.attempts = attempts;
                failed
            }
            Attempted::Unconfirmed { error, attempts } => {
                drop(working);
                metrics::counter!("wa_dispatch_outcomes_total", "outcome" => "unconfirmed", "reason" => "no_answer")
                    .increment(1);
                tracing::warn!(request_id = %authorized.request_id, attempts, error = %error,
                    "no answer from twilio; the send is unconfirmed and will not be repeated");
                return Ok(());
            }
            Attempted::Interrupted => {
                // Nothing was sent: release the marker so the redelivered record is sent.
                self.publish(identity.event("released", None)).await?;
                return Err(HandleError::Transient("stopping between retries".to_owned()));
            }
        };
        self.outcome(event).await
    }

    async fn outcome(&self, event: OutboundDispatched) -> Result<(), HandleError> {
        let reason = event.failure_reason.clone().unwrap_or_else(|| "none".to_owned());
        metrics::counter!("wa_dispatch_outcomes_total", "outcome" => event.outcome.clone(), "reason" => reason.clone())
            .increment(1);
        tracing::info!(request_id = %event.request_id, outcome = %event.outcome, attempts = event.attempts, reason = %reason, "dispatched");
        self.publish(event).await
    }

    /// Folds one status callback into its request: resolves an unconfirmed send, and publishes
    /// a forward move.
    async fn fold(&self, delivery: DeliveryStatusReceived) -> Result<(), HandleError> {
        let request_id = delivery.request_id.clone().or_else(|| self.ledger.request_of(&delivery.message_sid));
        let Some(request_id) = request_id else {
            metrics::counter!("wa_dispatch_callbacks_total", "outcome" => "unknown_request").increment(1);
            return Ok(());
        };
        let entry = self.ledger.get(&request_id);
        let identity = Identity {
            conversation_id: entry.as_ref().map_or(&delivery.conversation_id, |e| &e.conversation_id),
            request_id: &request_id,
            from: entry.as_ref().map_or(&delivery.from, |e| &e.from),
            to: entry.as_ref().map_or(&delivery.to, |e| &e.to),
        };
        let unconfirmed = entry.as_ref().is_some_and(|e| matches!(e.stage, Stage::Sending | Stage::InDoubt));
        // A send still under way here will publish its own outcome from Twilio's answer.
        if unconfirmed && !self.ledger.is_working_on(&request_id) {
            // The answer that never came: Twilio did create the message.
            let mut sent = identity.event("sent", None);
            sent.message_sid = Some(delivery.message_sid.clone());
            sent.twilio_status = Some("resolved_by_callback".to_owned());
            self.outcome(sent).await?;
        }
        let current = entry.as_ref().and_then(|e| e.status.clone());
        if !moves_forward(current.as_deref(), &delivery.message_status) {
            metrics::counter!("wa_dispatch_callbacks_total", "outcome" => "not_forward").increment(1);
            return Ok(());
        }
        let mut moved = identity.event("status_changed", Some(&delivery.message_status));
        moved.message_sid = Some(delivery.message_sid.clone());
        moved.error_code = delivery.error_code.as_deref().and_then(|code| code.parse().ok());
        moved.error_message = delivery.channel_status_message.clone().or(delivery.error_message.clone());
        metrics::counter!("wa_dispatch_callbacks_total", "outcome" => "moved").increment(1);
        self.publish(moved).await
    }
}

impl Handler for Dispatch {
    async fn handle(&self, record: &Record<'_>) -> Result<(), HandleError> {
        if record.topic == self.delivery_topic {
            return self.fold(DeliveryStatusReceived::decode(record.payload)?).await;
        }
        self.dispatch(OutboundAuthorized::decode(record.payload)?).await
    }
}

/// Publishes `in_doubt` for sends unconfirmed past `after`, until `stop`.
async fn watch_unconfirmed(
    producer: EventProducer,
    ledger: Arc<Ledger>,
    after: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let after_ms = i64::try_from(after.as_millis()).unwrap_or(i64::MAX);
    let period = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        tokio::select! {
            () = stop.cancelled() => return Ok(()),
            () = tokio::time::sleep(period) => {}
        }
        for (request_id, entry) in ledger.unconfirmed_since(wa_platform::now_millis().saturating_sub(after_ms)) {
            let identity = Identity {
                conversation_id: &entry.conversation_id,
                request_id: &request_id,
                from: &entry.from,
                to: &entry.to,
            };
            let mut in_doubt = identity.event("in_doubt", None);
            in_doubt.failure_reason = Some("no_answer".to_owned());
            in_doubt.error_message = Some(format!(
                "no answer from Twilio and no status callback within {after:?}; it may or may not have been sent"
            ));
            match producer.publish(&OUTBOUND_DISPATCHED, &in_doubt).await {
                Ok(_) => {
                    ledger.apply(&in_doubt);
                    metrics::counter!("wa_dispatch_outcomes_total", "outcome" => "in_doubt", "reason" => "no_answer")
                        .increment(1);
                    tracing::warn!(request_id = %request_id, "send published in doubt");
                }
                Err(err) => tracing::warn!(request_id = %request_id, error = %err, "cannot publish in_doubt yet"),
            }
        }
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
            topics: vec![OUTBOUND_AUTHORIZED, DELIVERY],
            service: SERVICE,
        };
        let kafka = config.kafka.clone();
        let stop = shutdown.clone();
        let setup = move |producer: EventProducer, background: CancellationToken| async move {
            let twilio = TwilioClient::new(
                &config.twilio_base_url,
                &config.account_sid,
                &config.auth_username,
                &config.auth_password,
                config.request_timeout,
            )?;
            // The ledger: replay dispatch's own output, then follow it (other instances' writes).
            let ledger = Arc::new(Ledger::default());
            let follower =
                TopicFollower::start(&config.kafka, &OUTBOUND_DISPATCHED, "outbound-dispatch-ledger").await?;
            let following = {
                let (ledger, follower, stop) = (ledger.clone(), follower.clone(), background.clone());
                tokio::spawn(async move {
                    follower
                        .run(stop, |record| {
                            if let Ok(event) =
                                OutboundDispatched::decode(rdkafka::Message::payload(record).unwrap_or_default())
                            {
                                ledger.apply(&event);
                            }
                        })
                        .await
                })
            };
            follower.wait_caught_up(&background).await;
            tracing::info!(requests = ledger.len(), "ledger restored");
            let watching = tokio::spawn(watch_unconfirmed(
                producer.clone(),
                ledger.clone(),
                config.in_doubt_after,
                background.clone(),
            ));
            let delivery_topic = config.kafka.topic(&DELIVERY);
            let limiter = RateLimiter::new(config.rates.per_instance(config.instances));
            let handler = Dispatch { producer, twilio, config, ledger, limiter, delivery_topic, stop };
            Ok(Prepared { handler, background: vec![following, watching] })
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
        assert!(TwilioError::Unreachable("refused".into()).is_retryable());
        assert!(!TwilioError::NoAnswer("reset".into()).is_retryable());
        assert!(api(400, Some(63018)).is_retryable());
        assert!(!api(400, Some(63016)).is_retryable());
        assert!(!api(400, Some(21211)).is_retryable());
        assert!(!api(401, Some(20003)).is_retryable());
    }

    #[test]
    fn permanent_errors_are_classified_by_code() {
        let api = |code| TwilioError::Api { status: 400, code: Some(code), message: String::new() };
        assert_eq!(api(63016).failure_reason(), "outside_window");
        assert_eq!(api(21211).failure_reason(), "invalid_number");
        assert_eq!(api(63024).failure_reason(), "invalid_recipient");
        assert_eq!(api(63014).failure_reason(), "blocked");
        assert_eq!(api(21610).failure_reason(), "unsubscribed");
        assert_eq!(api(63041).failure_reason(), "template_paused");
        assert_eq!(api(12345).failure_reason(), "twilio_rejected");
    }
}
