//! Reading session facts out of message records: the one place the live projection and the
//! rebuild share, so both fold the same facts.

use wa_schemas::{CodecError, Event, InboundMessageReceived, OutboundDispatched};

use crate::session::{Fact, Keywords};

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

/// The fact in a record of `wa.inbound.v1` (`inbound`) or `wa.outbound.dispatched.v1`;
/// `None` for dispatch outcomes other than a send the customer refused (21610, 63014).
pub(crate) fn read(inbound: bool, payload: &[u8], keywords: &Keywords) -> Result<Option<ReadFact>, CodecError> {
    if inbound {
        let event = InboundMessageReceived::decode(payload)?;
        let consent = keywords.classify(&event.body);
        let fact = Fact::CustomerMessage {
            at: event.occurred_at,
            referral: event.referral.is_some(),
            consent: consent.as_ref().map(|(c, _)| *c),
        };
        return Ok(Some(ReadFact {
            conversation_id: event.conversation_id,
            fact,
            at: event.occurred_at,
            event_id: event.event_id,
            reason: consent.map(|(_, keyword)| keyword),
        }));
    }
    let event = OutboundDispatched::decode(payload)?;
    let refused = event.outcome == "failed" && matches!(event.error_code, Some(21610 | 63014));
    Ok(refused.then(|| ReadFact {
        reason: Some(format!("twilio_error_{}", event.error_code.unwrap_or_default())),
        fact: Fact::SendRefusedByCustomer { at: event.occurred_at },
        at: event.occurred_at,
        conversation_id: event.conversation_id,
        event_id: event.event_id,
    }))
}
