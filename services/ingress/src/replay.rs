//! Replaying a quarantined webhook: ingress refused it (its signature did not match the URL it
//! was checked against, or its sender was not served) and kept it whole. Once the cause is
//! fixed, an operator republishes it (`wactl quarantine replay`): the signature is verified again
//! against the public URL Twilio called, the message is read exactly as ingress reads a webhook,
//! keeps its original receive time, and is published to `wa.inbound.v1` unless a message with
//! its `MessageSid` already is (never twice).

use std::time::Duration;

use wa_platform::config::{self, KafkaConfig};
use wa_platform::kafka::EventProducer;
use wa_platform::topics::{IDENTITIES, INBOUND};
use wa_schemas::{Event as _, IdentityLinked, InboundMessageReceived, QuarantinedRequest};
use wa_twilio::{inbound, params, signature};

use crate::identities::{phone_behind, Identities};

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replayed {
    /// Published to `wa.inbound.v1` (the `MessageSid`).
    Published(String),
    /// A message with this `MessageSid` is already on `wa.inbound.v1`: nothing published.
    AlreadyPublished(String),
}

/// Why a quarantined request cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Only inbound messages are replayed.
    #[error("only inbound message webhooks (/twilio/inbound) are replayed; this one was {0}")]
    NotAnInboundMessage(String),
    /// Its body is not a webhook's.
    #[error("the body cannot be read as a webhook: {0}")]
    Unreadable(String),
    /// Its signature does not match the URL given either.
    #[error("the signature does not match {0} with the configured auth tokens either")]
    SignatureInvalid(String),
    /// The broker failed.
    #[error("{0}")]
    Broker(String),
}

/// The auth tokens ingress accepts on webhook signatures, from the same variables:
/// `TWILIO_AUTH_TOKEN` and, during a rotation, `TWILIO_PREVIOUS_AUTH_TOKENS`.
pub fn auth_tokens_from_env() -> Vec<String> {
    let mut tokens = vec![config::var_or(&config::TWILIO_AUTH_TOKEN)];
    tokens.extend(config::list(&crate::config::EXTRA_AUTH_TOKENS));
    tokens
}

/// Replays `quarantined` as if Twilio had called `public_base_url` (e.g. `https://wa.example.com`)
/// and ingress had verified it with `auth_tokens`.
pub async fn replay_quarantined(
    kafka: &KafkaConfig,
    auth_tokens: &[String],
    public_base_url: &str,
    quarantined: &QuarantinedRequest,
) -> Result<Replayed, ReplayError> {
    let path = quarantined.path.as_str();
    if !path.split('?').next().is_some_and(|p| p.ends_with("/twilio/inbound")) {
        return Err(ReplayError::NotAnInboundMessage(path.to_owned()));
    }
    let url = format!("{}{path}", public_base_url.trim_end_matches('/'));
    let header = |name: &str| {
        quarantined.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    };
    let json = header("content-type").is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json"));
    let parsed = if json { params::parse_json(&quarantined.body) } else { params::parse_form(&quarantined.body) };
    let params = parsed.map_err(|err| ReplayError::Unreadable(err.to_string()))?;
    let presented = header(signature::HEADER).ok_or_else(|| ReplayError::SignatureInvalid(url.clone()))?;
    let valid = if json {
        signature::verify_json(auth_tokens, &url, &quarantined.body, presented)
    } else {
        signature::verify(auth_tokens, &url, &params, presented)
    };
    if !valid {
        return Err(ReplayError::SignatureInvalid(url));
    }
    let mut event = inbound::inbound_event(&params, quarantined.occurred_at)
        .map_err(|err| ReplayError::Unreadable(format!("{}: {}", err.field, err.detail)))?;
    let broker = |err: anyhow::Error| ReplayError::Broker(format!("{err:#}"));
    // A customer known by a BSUID only is keyed to the phone number it came with before.
    let identities = Identities::default();
    let links = read_all(kafka, &IDENTITIES, |payload| IdentityLinked::decode(payload).ok()).await.map_err(broker)?;
    for link in links {
        identities.remember(&link.bsuid, &link.address);
    }
    if let Some(phone) = phone_behind(&identities, &event.from, event.external_user_id.as_deref()) {
        event.conversation_id = wa_schemas::conversation_id(&event.to, &phone);
    }
    let event_id = event.event_id.clone();
    let copies = read_all(kafka, &INBOUND, move |payload| {
        InboundMessageReceived::decode(payload).ok().filter(|e| e.event_id == event_id).map(|_| ())
    })
    .await
    .map_err(broker)?;
    if !copies.is_empty() {
        return Ok(Replayed::AlreadyPublished(event.message_sid));
    }
    let producer = EventProducer::new(kafka, "wachannel/ingress", Duration::from_secs(30)).map_err(broker)?;
    producer.publish(&INBOUND, &event).await.map_err(|e| broker(e.into()))?;
    Ok(Replayed::Published(event.message_sid))
}

/// Reads `spec` to its end on a blocking thread, keeping what `keep` finds in each value.
async fn read_all<T: Send + 'static>(
    kafka: &KafkaConfig,
    spec: &'static wa_platform::topics::TopicSpec,
    keep: impl Fn(&[u8]) -> Option<T> + Send + 'static,
) -> anyhow::Result<Vec<T>> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || {
        let mut kept = Vec::new();
        wa_platform::kafka::read_to_end(
            &kafka,
            "ingress-replay",
            &[kafka.topic(spec)],
            None,
            |record| kept.extend(keep(rdkafka::Message::payload(record).unwrap_or_default())),
            |_| {},
        )?;
        Ok(kept)
    })
    .await?
}
