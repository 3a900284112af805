//! Twilio's message status callback into [`DeliveryStatusReceived`]. Every status is accepted,
//! including ones Twilio may add later: the callback is published as received, and folding
//! statuses into a message's state (only forward) is dispatch's job.

use std::collections::HashMap;

use uuid::Uuid;
use wa_schemas::{conversation_id, DeliveryStatusReceived};

use crate::params::by_name;
use crate::FieldError;

wa_schemas::wire_strings! {
    /// A message's status as Twilio reports it (`MessageStatus` on callbacks, `status` in the
    /// Messages API): every value of Twilio's `message_enum_status`. Callbacks are published
    /// as received, whatever their status; this type is how the channel reads one.
    pub enum MessageStatus {
        /// Outbound: waiting in Twilio's queue.
        Queued = "queued",
        /// Outbound: being handed to WhatsApp.
        Sending = "sending",
        /// Outbound: WhatsApp took it.
        Sent = "sent",
        /// Outbound: on the customer's phone.
        Delivered = "delivered",
        /// Outbound: the customer opened it.
        Read = "read",
        /// Outbound: Twilio could not send it (`ErrorCode`).
        Failed = "failed",
        /// Outbound: WhatsApp could not deliver it (`ErrorCode`).
        Undelivered = "undelivered",
        /// Outbound through a Messaging Service: accepted, sender not yet chosen.
        Accepted = "accepted",
        /// Outbound: scheduled for later.
        Scheduled = "scheduled",
        /// Outbound: a scheduled message canceled.
        Canceled = "canceled",
        /// Outbound, SMS only: some segments delivered.
        PartiallyDelivered = "partially_delivered",
        /// Inbound: being received.
        Receiving = "receiving",
        /// Inbound: received.
        Received = "received",
    }
}

impl MessageStatus {
    /// Where an outbound message is in its life: a later status has a higher rank. `None` for
    /// statuses that do not move an outbound message (inbound ones, `partially_delivered`).
    pub const fn rank(self) -> Option<u8> {
        Some(match self {
            Self::Accepted | Self::Scheduled => 1,
            Self::Queued => 2,
            Self::Sending => 3,
            Self::Sent => 4,
            Self::Delivered => 5,
            Self::Read => 6,
            Self::Failed | Self::Undelivered | Self::Canceled => 7,
            Self::PartiallyDelivered | Self::Receiving | Self::Received => return None,
        })
    }

    /// Whether nothing moves a message after it.
    pub const fn is_final(self) -> bool {
        matches!(self, Self::Read | Self::Failed | Self::Undelivered | Self::Canceled)
    }

    /// Whether the message did not reach the customer (`failed`, `undelivered`).
    pub const fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Undelivered)
    }

    /// Whether `next` (Twilio's string) moves a message forward from `current`: a known
    /// status of a higher rank, after a status that is not final.
    pub fn moves_forward(current: Option<&str>, next: &str) -> bool {
        let Some(next_rank) = Self::parse(next).and_then(Self::rank) else {
            return false;
        };
        let Some(current) = current else { return true };
        match Self::parse(current) {
            Some(current) if current.is_final() => false,
            // After a status this build does not know, any known one moves the message.
            current => current.and_then(Self::rank).is_none_or(|rank| next_rank > rank),
        }
    }
}

const TYPED: &[&str] = &[
    "MessageSid",
    "AccountSid",
    "MessagingServiceSid",
    "From",
    "To",
    "MessageStatus",
    "ErrorCode",
    "ErrorMessage",
    "ChannelStatusMessage",
    "EventType",
];

/// The event id of a callback: the same callback posted twice has the same id.
pub fn event_id(message_sid: &str, status: &str, error_code: Option<&str>, event_type: Option<&str>) -> String {
    let name = format!(
        "wachannel:delivery:{message_sid}:{status}:{}:{}",
        error_code.unwrap_or_default(),
        event_type.unwrap_or_default()
    );
    Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()).to_string()
}

/// Reads a status callback received at `received_at`; `request_id` is the one on the callback
/// URL, if any.
pub fn status_event(
    params: &[(String, String)],
    request_id: Option<String>,
    received_at: i64,
) -> Result<DeliveryStatusReceived, FieldError> {
    let fields = by_name(params);
    let optional =
        |name: &str| fields.get(name).filter(|value| !value.trim().is_empty()).map(|value| (*value).to_owned());
    let required = |name: &str| optional(name).ok_or_else(|| FieldError::new(name, format!("{name} is required")));
    let message_sid = required("MessageSid")?;
    let account_sid = required("AccountSid")?;
    // `SmsStatus` is the older name of the same value; some callbacks carry only it.
    let message_status = optional("MessageStatus")
        .or_else(|| optional("SmsStatus"))
        .ok_or_else(|| FieldError::new("MessageStatus", "MessageStatus is required"))?
        .trim()
        .to_ascii_lowercase();
    let from = crate::address_field("From", &required("From")?)?;
    let to = crate::address_field("To", &required("To")?)?;
    let error_code = optional("ErrorCode").map(|code| code.trim().to_owned()).filter(|code| code != "0");
    let event_type = optional("EventType");
    let other_params: HashMap<String, String> = params
        .iter()
        .filter(|(name, _)| !TYPED.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Ok(DeliveryStatusReceived {
        event_id: event_id(&message_sid, &message_status, error_code.as_deref(), event_type.as_deref()),
        occurred_at: received_at,
        conversation_id: conversation_id(&from, &to),
        request_id: request_id.filter(|id| !id.is_empty()),
        messaging_service_sid: optional("MessagingServiceSid"),
        error_message: optional("ErrorMessage"),
        channel_status_message: optional("ChannelStatusMessage"),
        message_sid,
        account_sid,
        from,
        to,
        message_status,
        error_code,
        event_type,
        other_params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn callback(status: &str) -> Vec<(String, String)> {
        params(&[
            ("MessageSid", "SM1"),
            ("AccountSid", "AC1"),
            ("From", "whatsapp:+14155238886"),
            ("To", "whatsapp:+15551234567"),
            ("MessageStatus", status),
            ("SmsStatus", status),
            ("ApiVersion", "2010-04-01"),
        ])
    }

    #[test]
    fn every_documented_status_and_unknown_ones_are_accepted() {
        for status in MessageStatus::ALL.iter().map(|status| status.as_str()).chain(["some_future_status"]) {
            let event = status_event(&callback(status), Some("r1".into()), 5).unwrap();
            assert_eq!(event.message_status, status);
            assert_eq!(event.request_id.as_deref(), Some("r1"));
            assert_eq!(event.conversation_id, conversation_id("whatsapp:+14155238886", "whatsapp:+15551234567"));
            assert_eq!(event.other_params.get("SmsStatus").map(String::as_str), Some(status));
        }
    }

    #[test]
    fn errors_read_receipts_and_channel_messages_are_typed() {
        let mut form = callback("undelivered");
        form.extend(params(&[
            ("ErrorCode", "63024"),
            ("ErrorMessage", "Invalid recipient"),
            ("ChannelStatusMessage", "Message undeliverable"),
            ("EventType", "UNDELIVERED"),
            ("ChannelPrefix", "whatsapp"),
        ]));
        let event = status_event(&form, None, 0).unwrap();
        assert_eq!(event.error_code.as_deref(), Some("63024"));
        assert_eq!(event.error_message.as_deref(), Some("Invalid recipient"));
        assert_eq!(event.channel_status_message.as_deref(), Some("Message undeliverable"));
        assert_eq!(event.event_type.as_deref(), Some("UNDELIVERED"));
        assert_eq!(event.other_params.get("ChannelPrefix").map(String::as_str), Some("whatsapp"));
        assert_eq!(event.request_id, None);
    }

    #[test]
    fn statuses_only_move_forward_and_stop_at_final_ones() {
        let moves = MessageStatus::moves_forward;
        assert!(moves(None, "queued"));
        assert!(moves(Some("queued"), "delivered"));
        assert!(!moves(Some("delivered"), "sent"));
        assert!(!moves(Some("delivered"), "delivered"));
        assert!(moves(Some("delivered"), "read"));
        assert!(!moves(Some("read"), "failed"));
        assert!(!moves(Some("undelivered"), "read"));
        assert!(moves(Some("sent"), "undelivered"));
        assert!(!moves(Some("sent"), "some_future_status"));
        assert!(!moves(Some("sent"), "received"), "an inbound status never moves an outbound message");
    }

    #[test]
    fn the_same_callback_twice_has_one_event_id_and_each_status_its_own() {
        let a = status_event(&callback("read"), None, 1).unwrap();
        let b = status_event(&callback("read"), None, 2).unwrap();
        let c = status_event(&callback("delivered"), None, 2).unwrap();
        assert_eq!(a.event_id, b.event_id);
        assert_ne!(a.event_id, c.event_id);
    }

    #[test]
    fn missing_fields_are_named() {
        for missing in ["MessageSid", "AccountSid", "From", "To"] {
            let form: Vec<_> = callback("sent").into_iter().filter(|(k, _)| k != missing).collect();
            assert_eq!(status_event(&form, None, 0).unwrap_err().field, missing);
        }
        let form: Vec<_> =
            callback("sent").into_iter().filter(|(k, _)| k != "MessageStatus" && k != "SmsStatus").collect();
        assert_eq!(status_event(&form, None, 0).unwrap_err().field, "MessageStatus");
    }
}
