//! Outbound-dispatch: sends authorized messages through Twilio's Messages API, never twice, and
//! publishes every outcome and every forward delivery move on `wa.outbound.dispatched.v1`.
//!
//! - **Claims**: a ledger of request ids, projected from dispatch's own output topic and
//!   restored at start, is checked before and after the sender's pace wait. A send is then
//!   claimed with a `sending` marker (instance and claim id) and goes to Twilio only when that
//!   claim is the first one read back from the partition: two instances (a rebalance, a
//!   redelivery) never both send. A revoked partition's handlers give their claims back
//!   (`released`) unless they are already calling Twilio.
//! - **Ambiguous answers**: only what Twilio did not create is retried (429, 503, 20429,
//!   63018, no connection), with backoff and jitter up to a deadline. A 500/502/504 or an
//!   answer lost after the request was written is looked up in Twilio's Messages list: found,
//!   it is `sent` with that sid; not found, it is `in_doubt` and never sent again
//!   automatically. A crash between the claim and the answer is settled by the status callback
//!   (its URL names the request) or published `in_doubt` after `DISPATCH_IN_DOUBT_AFTER_MS`.
//! - **Errors by code**: permanent errors fail at once with the reason `wa_twilio::errors`
//!   gives their code, in Twilio's answer and in status callbacks alike. A free-form message
//!   whose window has closed since it was authorized fails without calling Twilio.
//! - **Delivery status**: status callbacks (`wa.delivery.v1`, from ingress) are folded into each
//!   request's entry; each forward move (queued < sent < delivered < read; failed and
//!   undelivered final, with their `failure_reason`) is published once as `status_changed`.

mod config;
mod dispatch;
mod ledger;
mod lifecycle;
mod media;
pub mod rate;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use wa_platform::kafka::TopicFollower;
use wa_platform::kafka::{ConsumerSettings, EventProducer};
use wa_platform::service::{Bound, Prepared, Service};
use wa_platform::topics::{DELIVERY, OUTBOUND_AUTHORIZED, OUTBOUND_DISPATCHED};
use wa_platform::CancellationToken;
use wa_schemas::{DispatchOutcome, Event, OutboundDispatched};
use wa_twilio::messages_api::TwilioClient;

use crate::dispatch::{Dispatch, Identity};
use crate::ledger::Ledger;
use crate::rate::RateLimiter;

pub use crate::config::{instance_id, Config};

/// The service name.
pub const SERVICE: &str = "outbound-dispatch";

/// The partitions of `wa.outbound.authorized.v1` this instance holds: it settles the claims
/// left on them (their requests are its to send), never another live instance's.
struct Owned {
    assignment: wa_platform::kafka::rebalance::Assignment,
    topic: String,
}

/// Publishes `in_doubt` for sends claimed on partitions this instance holds and unconfirmed
/// past `after` (their claimant died, or never got an answer), until `stop`.
async fn watch_unconfirmed(
    producer: EventProducer,
    ledger: Arc<Ledger>,
    owned: Owned,
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
        let unconfirmed = ledger.unconfirmed_since(wa_platform::now_millis().saturating_sub(after_ms));
        for (request_id, entry) in
            unconfirmed.into_iter().filter(|(_, e)| owned.assignment.contains(&owned.topic, e.partition))
        {
            let identity = Identity {
                conversation_id: &entry.conversation_id,
                request_id: &request_id,
                from: &entry.from,
                to: &entry.to,
                metadata: &entry.metadata,
                pricing: (entry.pricing_category.as_deref(), entry.pricing_type.as_deref()),
            };
            let mut in_doubt = identity.event(DispatchOutcome::InDoubt, None);
            in_doubt.claim_id = entry.claim.as_ref().map(|claim| claim.id.clone());
            in_doubt.failure_reason = Some("no_answer".to_owned());
            in_doubt.error_message = Some(format!(
                "no answer from Twilio and no status callback within {after:?}; it may or may not have been sent"
            ));
            match producer.publish(&OUTBOUND_DISPATCHED, &in_doubt).await {
                Ok(_) => {
                    ledger.apply(&in_doubt);
                    metrics::counter!(wa_platform::metrics::DISPATCH_OUTCOMES, "outcome" => DispatchOutcome::InDoubt.as_str(), "reason" => "no_answer")
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
        let assignment = wa_platform::kafka::rebalance::Assignment::default();
        let settings = ConsumerSettings {
            group: "outbound-dispatch".to_owned(),
            topics: vec![OUTBOUND_AUTHORIZED, DELIVERY],
            service: SERVICE,
            assignment: assignment.clone(),
            // Most of a send is waiting (for the sender's pace, the claim's read-back, Twilio):
            // many conversations at once keep every sender's pace filled.
            max_in_flight: 512,
            fetch_wait: None,
        };
        let kafka = config.kafka.clone();
        let setup = move |producer: EventProducer, background: CancellationToken| async move {
            let twilio = TwilioClient::new(
                &config.twilio_base_url,
                &config.account_sid,
                &config.auth_username,
                &config.auth_password,
                config.request_timeout,
            )?;
            // The ledger: replay dispatch's own output, then follow it (other instances' writes).
            // Every claim is read back through it before a send, one fetch wait later.
            let ledger = Arc::new(Ledger::default());
            let follower =
                TopicFollower::start_since(&config.kafka, &OUTBOUND_DISPATCHED, "outbound-dispatch-ledger", None)
                    .await?;
            let following = {
                let (ledger, follower, stop) = (ledger.clone(), follower.clone(), background.clone());
                tokio::spawn(async move {
                    follower
                        .run(stop, |record| {
                            if let Ok(event) =
                                OutboundDispatched::decode(rdkafka::Message::payload(record).unwrap_or_default())
                            {
                                ledger.apply_read(&event, rdkafka::Message::partition(record));
                                if event.kind() == Some(DispatchOutcome::Sent) {
                                    let headers = rdkafka::Message::headers(record);
                                    let traceparent = wa_platform::kafka::header_str(headers, "traceparent");
                                    ledger.remember_trace(&event.request_id, traceparent.map(str::to_owned));
                                }
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
                Owned { assignment, topic: config.kafka.topic(&OUTBOUND_AUTHORIZED) },
                config.in_doubt_after,
                background.clone(),
            ));
            let delivery_topic = config.kafka.topic(&DELIVERY);
            let limiter = RateLimiter::new(config.rates.per_instance(config.instances));
            let media_http = reqwest::Client::builder().user_agent("wachannel-dispatch (media check)").build()?;
            let handler = Dispatch { producer, twilio, config, ledger, follower, limiter, delivery_topic, media_http };
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
