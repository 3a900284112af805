//! Reading session facts out of message records: the one place the live projection and the
//! rebuild share, so both fold the same facts.

use uuid::Uuid;
use wa_schemas::{
    CodecError, ConsentChange, ConsentChanged, DispatchOutcome, Event, InboundMessageReceived, OutboundDispatched,
};
use wa_twilio::status::MessageStatus;

use crate::session::{Consent, Fact, Keywords};

/// A fact with where it came from.
pub(crate) struct ReadFact {
    /// The conversation (the record key).
    pub conversation_id: String,
    /// What happened.
    pub fact: Fact,
    /// When, Unix millis.
    pub at: i64,
    /// The event that carried it.
    pub event_id: String,
    /// For consent changes: the keyword or the Twilio error.
    pub reason: Option<String>,
}

/// The topic a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// `wa.inbound.v1`: customer messages.
    Inbound,
    /// `wa.outbound.dispatched.v1`: the business's sends, and sends the customer refused or
    /// Meta held back.
    Dispatched,
    /// `wa.consent.v1`: consent facts kept forever (read by the rebuild).
    Consent,
}

/// The Twilio error of a dispatch event that reports a failure: a `failed` send, or a
/// `status_changed` to `failed` or `undelivered` (whether the error came in Twilio's answer or
/// in a status callback). 21610 and 63014 say the customer refused the business's messages;
/// 63049 that Meta held a marketing message back.
fn failure_code(event: &OutboundDispatched) -> Option<i32> {
    let failed = match event.kind() {
        Some(DispatchOutcome::Failed) => true,
        Some(DispatchOutcome::StatusChanged) => {
            event.twilio_status.as_deref().and_then(MessageStatus::parse).is_some_and(MessageStatus::is_failure)
        }
        _ => false,
    };
    event.error_code.filter(|_| failed)
}

/// The fact in a record from `source`; `None` for dispatch events other than a send the
/// customer refused.
pub(crate) fn read(source: Source, payload: &[u8], keywords: &Keywords) -> Result<Option<ReadFact>, CodecError> {
    match source {
        Source::Inbound => {
            let event = InboundMessageReceived::decode(payload)?;
            let consent = keywords.classify(&event.body);
            let fact = Fact::CustomerMessage {
                id: Uuid::parse_str(&event.event_id).ok(),
                at: event.occurred_at,
                referral: event.referral.is_some(),
                consent: consent.as_ref().map(|(c, _)| *c),
            };
            Ok(Some(ReadFact {
                conversation_id: event.conversation_id,
                fact,
                at: event.occurred_at,
                event_id: event.event_id,
                reason: consent.map(|(_, keyword)| keyword),
            }))
        }
        Source::Dispatched => {
            let event = OutboundDispatched::decode(payload)?;
            let fact = match failure_code(&event) {
                Some(code) if wa_twilio::errors::is_consent(code) => {
                    Fact::SendRefusedByCustomer { at: event.occurred_at }
                }
                Some(wa_twilio::errors::MARKETING_LIMITED) => Fact::MarketingLimited { at: event.occurred_at },
                _ if event.kind() == Some(DispatchOutcome::Sent) => Fact::BusinessReplied { at: event.occurred_at },
                _ => return Ok(None),
            };
            Ok(Some(ReadFact {
                reason: event.error_code.map(|code| format!("twilio_error_{code}")),
                fact,
                at: event.occurred_at,
                conversation_id: event.conversation_id,
                event_id: event.event_id,
            }))
        }
        Source::Consent => {
            let event = ConsentChanged::decode(payload)?;
            let consent = match ConsentChange::parse(&event.consent) {
                Some(ConsentChange::OptedOut) => Consent::OptOut,
                Some(ConsentChange::OptedIn) => Consent::OptIn,
                None => return Err(CodecError::Avro(format!("unknown consent {:?}", event.consent))),
            };
            Ok(Some(ReadFact {
                fact: Fact::ConsentRecorded { at: event.occurred_at, consent },
                at: event.occurred_at,
                conversation_id: event.conversation_id,
                event_id: event.cause_event_id,
                reason: Some(event.reason),
            }))
        }
    }
}

/// The record kept on `wa.consent.v1` for a fact that moved the latest opt-out or opt-in. Its
/// id derives from the event that carried the fact, so a fact read twice gives one id.
pub(crate) fn consent_record(conversation_id: &str, consent: Consent, read: &ReadFact) -> ConsentChanged {
    let kind = match consent {
        Consent::OptOut => ConsentChange::OptedOut,
        Consent::OptIn => ConsentChange::OptedIn,
    };
    ConsentChanged {
        event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("wachannel:consent:{}:{kind}", read.event_id).as_bytes())
            .to_string(),
        occurred_at: read.at,
        conversation_id: conversation_id.to_owned(),
        consent: kind.as_str().to_owned(),
        reason: read.reason.clone().unwrap_or_default(),
        cause_event_id: read.event_id.clone(),
    }
}
