//! The channel's event contract: one Avro schema per event (the `.avsc` files beside this crate
//! are the source of truth), typed Rust records for them, and Avro single-object encoding.
//!
//! Every record value on a channel topic is `C3 01`, the schema's CRC-64-AVRO fingerprint
//! (8 bytes, little-endian), then the Avro binary datum, exactly as the Avro specification's
//! "single-object encoding" says. Any consumer can therefore decode a value with nothing but the
//! files in `schemas/`: look the fingerprint up among their parsing canonical forms.

mod address;
mod content_sid;
mod ids;
mod kinds;

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;

use apache_avro::rabin::Rabin;
use apache_avro::Schema;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use address::{AddressError, WhatsAppAddress};
pub use content_sid::{ContentSid, ContentSidError};
pub use ids::conversation_id;
pub use kinds::{
    Actor, AuthorizationRule, ConsentChange, DispatchOutcome, PricingCategory, PricingType, RejectionReason,
    SessionChange, TemplateChange,
};

/// The two marker bytes that open every single-object encoded value.
pub const SINGLE_OBJECT_MAGIC: [u8; 2] = [0xC3, 0x01];

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The value does not start with `C3 01` and a fingerprint.
    #[error("not an avro single-object encoded value ({0})")]
    NotSingleObject(&'static str),
    /// The fingerprint names no schema in `schemas/`.
    #[error("unknown writer schema fingerprint {0:016x}")]
    UnknownFingerprint(u64),
    /// The writer schema is known but is another event type than the one expected.
    #[error("value is a {found}, expected a {expected}")]
    WrongType {
        /// full name of the schema that wrote the value
        found: String,
        /// full name of the schema the reader asked for
        expected: String,
    },
    /// The Avro library refused the datum.
    #[error("avro: {0}")]
    Avro(String),
}

impl From<apache_avro::Error> for CodecError {
    fn from(err: apache_avro::Error) -> Self {
        Self::Avro(err.to_string())
    }
}

/// A parsed schema with its fingerprint, built once per process.
pub struct SchemaInfo {
    /// The parsed schema.
    pub schema: Schema,
    /// The full name, e.g. `wachannel.v1.InboundMessageReceived`.
    pub full_name: String,
    /// CRC-64-AVRO (Rabin) fingerprint of the parsing canonical form.
    pub fingerprint: u64,
    /// The `.avsc` text.
    pub source: &'static str,
    /// Reads values written with this schema, its names resolved once rather than per value.
    reader: apache_avro::GenericSingleObjectReader,
}

impl std::fmt::Debug for SchemaInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaInfo")
            .field("full_name", &self.full_name)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl SchemaInfo {
    fn parse(source: &'static str) -> Self {
        let schema = Schema::parse_str(source).expect("schemas/*.avsc are valid avro");
        let full_name = match &schema {
            Schema::Record(record) => record.name.fullname(None),
            _ => panic!("every event schema is a record"),
        };
        let digest = schema.fingerprint::<Rabin>();
        let fingerprint =
            u64::from_le_bytes(digest.bytes.as_slice().try_into().expect("rabin fingerprints are 8 bytes"));
        let reader = apache_avro::GenericSingleObjectReader::new(schema.clone()).expect("schemas/*.avsc resolve");
        Self { schema, full_name, fingerprint, source, reader }
    }

    /// Decodes a single-object value written with this schema (header included) into Avro's
    /// value tree, refusing trailing bytes.
    fn read_value(&self, bytes: &[u8]) -> Result<apache_avro::types::Value, CodecError> {
        let mut rest = bytes;
        let value = self.reader.read_value(&mut rest)?;
        if !rest.is_empty() {
            return Err(CodecError::Avro(format!("{} trailing bytes after the datum", rest.len())));
        }
        Ok(value)
    }

    /// The 10-byte header that opens each value written with this schema.
    pub fn header(&self) -> [u8; 10] {
        let mut header = [0u8; 10];
        header[..2].copy_from_slice(&SINGLE_OBJECT_MAGIC);
        header[2..].copy_from_slice(&self.fingerprint.to_le_bytes());
        header
    }
}

/// An event of the channel: a serde record with its schema and CloudEvents type.
pub trait Event: Serialize + DeserializeOwned {
    /// The `.avsc` text of this event's schema.
    const SCHEMA: &'static str;
    /// The CloudEvents `ce_type`, e.g. `wachannel.inbound.message.received.v1`.
    const CE_TYPE: &'static str;

    /// The parsed schema and fingerprint.
    fn schema_info() -> &'static SchemaInfo;
    /// The event's unique id.
    fn event_id(&self) -> &str;
    /// The record key: the conversation id for message events.
    fn key(&self) -> &str;
    /// When the event happened, in Unix milliseconds.
    fn occurred_at(&self) -> i64;

    /// CloudEvents extension attributes as the headers that carry them beside the value
    /// (`ce_<name>`, value), so that a consumer can tell what a record holds without decoding it.
    fn extension_headers(&self) -> Vec<(&'static str, String)> {
        Vec::new()
    }

    /// Encodes the event as an Avro single-object value.
    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let info = Self::schema_info();
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&info.header());
        // Serializes straight into the buffer against the schema (no intermediate value tree):
        // several times cheaper than to_value + resolve + to_avro_datum. It writes fields in
        // the struct's order, so every struct lists its fields in its schema's order (the
        // fastavro tests compare bytes for every schema).
        apache_avro::write_avro_datum_ref(&info.schema, self, &mut out)?;
        Ok(out)
    }

    /// Decodes an Avro single-object value written with this event's schema (or an older
    /// version of it listed in `schemas/`).
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let (writer, _) = split_single_object(bytes)?;
        let reader = Self::schema_info();
        if writer.full_name != reader.full_name {
            return Err(CodecError::WrongType { found: writer.full_name.clone(), expected: reader.full_name.clone() });
        }
        let mut value = writer.read_value(bytes)?;
        if writer.fingerprint != reader.fingerprint {
            // Written with an earlier version: resolved against the current one.
            value = value.resolve(&reader.schema)?;
        }
        Ok(apache_avro::from_value(&value)?)
    }
}

/// Splits a single-object value into its writer schema and the datum bytes.
pub fn split_single_object(bytes: &[u8]) -> Result<(&'static SchemaInfo, &[u8]), CodecError> {
    if bytes.len() < 10 {
        return Err(CodecError::NotSingleObject("shorter than the 10-byte header"));
    }
    if bytes[..2] != SINGLE_OBJECT_MAGIC {
        return Err(CodecError::NotSingleObject("missing the C3 01 marker"));
    }
    let fingerprint = u64::from_le_bytes(bytes[2..10].try_into().expect("8 bytes"));
    let writer = registry().get(&fingerprint).ok_or(CodecError::UnknownFingerprint(fingerprint))?;
    Ok((writer, &bytes[10..]))
}

/// Decodes any channel value into JSON, with the writer schema's full name: what an analytics
/// consumer that knows only the `.avsc` files can do.
pub fn decode_to_json(bytes: &[u8]) -> Result<(String, serde_json::Value), CodecError> {
    let (writer, _) = split_single_object(bytes)?;
    let value = writer.read_value(bytes)?;
    let json = serde_json::Value::try_from(value)?;
    Ok((writer.full_name.clone(), json))
}

/// Earlier versions of the schemas (`schemas/history/`), kept so that values written before a
/// schema changed still decode: a reader resolves them against the current version.
pub const HISTORY: &[(&str, &str)] = &[
    ("history/inbound_message_received.1.avsc", include_str!("../history/inbound_message_received.1.avsc")),
    ("history/inbound_message_received.2.avsc", include_str!("../history/inbound_message_received.2.avsc")),
    ("history/outbound_dispatched.1.avsc", include_str!("../history/outbound_dispatched.1.avsc")),
    ("history/session_state.1.avsc", include_str!("../history/session_state.1.avsc")),
    ("history/outbound_requested.1.avsc", include_str!("../history/outbound_requested.1.avsc")),
    ("history/outbound_window_checked.1.avsc", include_str!("../history/outbound_window_checked.1.avsc")),
    ("history/outbound_authorized.1.avsc", include_str!("../history/outbound_authorized.1.avsc")),
    ("history/outbound_rejected.1.avsc", include_str!("../history/outbound_rejected.1.avsc")),
    ("history/outbound_dispatched.2.avsc", include_str!("../history/outbound_dispatched.2.avsc")),
    ("history/template_event.1.avsc", include_str!("../history/template_event.1.avsc")),
    ("history/outbound_window_checked.2.avsc", include_str!("../history/outbound_window_checked.2.avsc")),
    ("history/outbound_authorized.2.avsc", include_str!("../history/outbound_authorized.2.avsc")),
    ("history/session_state.2.avsc", include_str!("../history/session_state.2.avsc")),
    ("history/outbound_dispatched.3.avsc", include_str!("../history/outbound_dispatched.3.avsc")),
];

/// The parsed earlier versions, in the order of [`HISTORY`].
pub fn history_schemas() -> &'static [SchemaInfo] {
    static PARSED: OnceLock<Vec<SchemaInfo>> = OnceLock::new();
    PARSED.get_or_init(|| HISTORY.iter().map(|(_, source)| SchemaInfo::parse(source)).collect())
}

/// Every schema in `schemas/`, current and earlier versions, by fingerprint.
pub fn registry() -> &'static HashMap<u64, &'static SchemaInfo> {
    static REGISTRY: OnceLock<HashMap<u64, &'static SchemaInfo>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        all_schemas().into_iter().chain(history_schemas()).map(|info| (info.fingerprint, info)).collect()
    })
}

/// Every event schema, in a fixed order.
pub fn all_schemas() -> [&'static SchemaInfo; 15] {
    [
        InboundMessageReceived::schema_info(),
        DeliveryStatusReceived::schema_info(),
        QuarantinedRequest::schema_info(),
        OutboundRequested::schema_info(),
        OutboundWindowChecked::schema_info(),
        OutboundAuthorized::schema_info(),
        OutboundRejected::schema_info(),
        OutboundDispatched::schema_info(),
        TemplateEvent::schema_info(),
        SessionState::schema_info(),
        SessionEvent::schema_info(),
        PartitionOwner::schema_info(),
        ConsentChanged::schema_info(),
        IdentityLinked::schema_info(),
        InboundMediaStored::schema_info(),
    ]
}

macro_rules! event {
    ($ty:ident, $file:literal, $ce_type:literal) => {
        event!($ty, $file, $ce_type, conversation_id);
    };
    ($ty:ident, $file:literal, $ce_type:literal, $key:ident $(, $extra:item)*) => {
        impl Event for $ty {
            const SCHEMA: &'static str = include_str!(concat!("../", $file));
            const CE_TYPE: &'static str = $ce_type;

            fn schema_info() -> &'static SchemaInfo {
                static INFO: OnceLock<SchemaInfo> = OnceLock::new();
                INFO.get_or_init(|| SchemaInfo::parse(Self::SCHEMA))
            }
            fn event_id(&self) -> &str {
                &self.event_id
            }
            fn key(&self) -> &str {
                &self.$key
            }
            fn occurred_at(&self) -> i64 {
                self.occurred_at
            }
            $($extra)*
        }
    };
}

/// A template the CRM asks to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateRequest {
    /// Registered template name.
    pub name: String,
    /// Requested language (e.g. `pt_BR`).
    pub language: String,
    /// Values by variable number (`"1"` → `"Ana"`).
    pub variables: BTreeMap<String, String>,
}

/// A change in a template's lifecycle (topic `wa.templates.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateEvent {
    /// Unique id of this event.
    pub event_id: String,
    /// When it happened, Unix millis.
    pub occurred_at: i64,
    /// `<name>:<language>` (record key).
    pub template_id: String,
    /// What happened: a [`TemplateChange`]'s wire string (read it with [`TemplateEvent::change`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// Template name.
    pub name: String,
    /// Language code.
    pub language: String,
    /// Version (1, then +1 per replacement).
    pub version: i32,
    /// Category, when registered or replaced.
    pub category: Option<String>,
    /// Twilio Content SID, when registered or replaced.
    pub content_sid: Option<String>,
    /// Body with `{{n}}` variables, when registered or replaced.
    pub body: Option<String>,
    /// Example value per variable.
    pub examples: BTreeMap<String, String>,
    /// Why (rejections, pauses, disables).
    pub reason: Option<String>,
    /// The content's types (Twilio's `types` object as JSON), when registered, replaced or
    /// updated.
    pub content_types: Option<String>,
    /// The category before a re-categorization.
    pub previous_category: Option<String>,
    /// Who made the change: an [`Actor`]'s wire string.
    pub actor: String,
}
event!(TemplateEvent, "template_event.avsc", "wachannel.template.changed.v1", template_id);

/// A media attachment of an inbound message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Media {
    /// Twilio's URL of the media.
    pub url: String,
    /// Its MIME type.
    pub content_type: String,
}

/// A location the customer shared.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Location {
    /// `Latitude`.
    pub latitude: f64,
    /// `Longitude`.
    pub longitude: f64,
    /// `Address`.
    pub address: Option<String>,
    /// `Label`.
    pub label: Option<String>,
}

/// Click-to-WhatsApp referral data (the `Referral*` webhook parameters).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Referral {
    /// `ReferralSourceId`.
    pub source_id: Option<String>,
    /// `ReferralSourceType` (`ad` or `post`).
    pub source_type: Option<String>,
    /// `ReferralSourceUrl`.
    pub source_url: Option<String>,
    /// `ReferralHeadline`.
    pub headline: Option<String>,
    /// `ReferralBody`.
    pub body: Option<String>,
    /// `ReferralCtwaClid`, the click id.
    pub ctwa_clid: Option<String>,
    /// `ReferralMediaId`.
    pub media_id: Option<String>,
    /// `ReferralMediaUrl`.
    pub media_url: Option<String>,
    /// `ReferralMediaContentType`.
    pub media_content_type: Option<String>,
    /// `ReferralNumMedia`.
    pub num_media: Option<String>,
}

/// A customer's WhatsApp message, as Twilio posted it (topic `wa.inbound.v1`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct InboundMessageReceived {
    /// Unique id of this event; derived from the MessageSid, so a retried webhook has the same.
    pub event_id: String,
    /// When ingress received it, Unix millis.
    pub occurred_at: i64,
    /// Conversation id (record key).
    pub conversation_id: String,
    /// Twilio MessageSid.
    pub message_sid: String,
    /// Twilio AccountSid.
    pub account_sid: String,
    /// Twilio MessagingServiceSid, when the number belongs to one.
    pub messaging_service_sid: Option<String>,
    /// Customer address.
    pub from: String,
    /// Business sender address.
    pub to: String,
    /// Message text (empty for media-only messages).
    pub body: String,
    /// Media attachments.
    pub media: Vec<Media>,
    /// The customer's WhatsApp profile name.
    pub profile_name: Option<String>,
    /// The customer's WhatsApp id.
    pub wa_id: Option<String>,
    /// Twilio's MessageType (text, image, button, location, ...).
    pub message_type: Option<String>,
    /// Every other webhook parameter, verbatim.
    pub other_params: HashMap<String, String>,
    /// `Forwarded`: the customer forwarded this message.
    pub forwarded: Option<bool>,
    /// `FrequentlyForwarded`.
    pub frequently_forwarded: Option<bool>,
    /// `ButtonText` of a quick-reply button press.
    pub button_text: Option<String>,
    /// `ButtonPayload`.
    pub button_payload: Option<String>,
    /// `ButtonType`.
    pub button_type: Option<String>,
    /// `InteractiveData` (JSON text).
    pub interactive_data: Option<String>,
    /// `FlowData` (JSON text).
    pub flow_data: Option<String>,
    /// A shared location.
    pub location: Option<Location>,
    /// The click-to-WhatsApp ad or post the customer came from.
    pub referral: Option<Referral>,
    /// `OriginalRepliedMessageSid`: the message this one replies to.
    pub original_replied_message_sid: Option<String>,
    /// `OriginalRepliedMessageSender`.
    pub original_replied_message_sender: Option<String>,
    /// `ExternalUserId`: the customer's business-scoped user id (BSUID).
    #[serde(default)]
    pub external_user_id: Option<String>,
    /// `ParentExternalUserId`: the parent BSUID across the business's portfolios.
    #[serde(default)]
    pub parent_external_user_id: Option<String>,
    /// `ProfileUsername`: the customer's WhatsApp username.
    #[serde(default)]
    pub profile_username: Option<String>,
}
event!(
    InboundMessageReceived,
    "inbound_message_received.avsc",
    "wachannel.inbound.message.received.v1",
    conversation_id,
    /// `mediacount`: how many media items the message carries (the media keeper passes
    /// records without media by without decoding them).
    fn extension_headers(&self) -> Vec<(&'static str, String)> {
        vec![(MEDIA_COUNT_HEADER, self.media.len().to_string())]
    }
);

/// The header of the CloudEvents extension attribute `mediacount` on `wa.inbound.v1` records:
/// how many media items the message carries.
pub const MEDIA_COUNT_HEADER: &str = "ce_mediacount";

/// A Twilio status callback for a message we sent (topic `wa.delivery.v1`). Published as
/// received: out of order and repeated callbacks included.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DeliveryStatusReceived {
    /// UUIDv5 of (MessageSid, MessageStatus, ErrorCode, EventType).
    pub event_id: String,
    /// When ingress received the callback, Unix millis.
    pub occurred_at: i64,
    /// Conversation id (record key).
    pub conversation_id: String,
    /// The outbound request id from the `StatusCallback` URL.
    pub request_id: Option<String>,
    /// Twilio MessageSid.
    pub message_sid: String,
    /// Twilio AccountSid.
    pub account_sid: String,
    /// Twilio MessagingServiceSid.
    pub messaging_service_sid: Option<String>,
    /// Business sender address.
    pub from: String,
    /// Customer address.
    pub to: String,
    /// `MessageStatus`, lowercased; unknown values are kept.
    pub message_status: String,
    /// `ErrorCode`.
    pub error_code: Option<String>,
    /// `ErrorMessage`.
    pub error_message: Option<String>,
    /// `ChannelStatusMessage`.
    pub channel_status_message: Option<String>,
    /// `EventType` (e.g. `READ`).
    pub event_type: Option<String>,
    /// Every other callback parameter, verbatim.
    pub other_params: HashMap<String, String>,
}
event!(DeliveryStatusReceived, "delivery_status_received.avsc", "wachannel.delivery.status.received.v1");

/// A webhook ingress refused although it may carry a customer's message (topic
/// `wa.ingress.quarantine.v1`), kept whole so operators can inspect and replay it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct QuarantinedRequest {
    /// Unique id of this event (also the record key).
    pub event_id: String,
    /// When ingress received the request, Unix millis.
    pub occurred_at: i64,
    /// `signature_missing`, `signature_invalid` or `unknown_sender`.
    pub reason: String,
    /// What exactly was wrong.
    pub detail: String,
    /// HTTP method.
    pub method: String,
    /// Path and query as received.
    pub path: String,
    /// The full URL the signature was computed over.
    pub checked_url: String,
    /// The request headers that matter for diagnosis.
    pub headers: HashMap<String, String>,
    /// The body, unchanged.
    #[serde(with = "apache_avro::serde_avro_bytes")]
    pub body: Vec<u8>,
}
event!(QuarantinedRequest, "quarantined_request.avsc", "wachannel.ingress.quarantined.v1", event_id);

/// An agent's message the CRM asks to send (topic `wa.outbound.requested.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRequested {
    /// Unique id of this event.
    pub event_id: String,
    /// When the request was accepted, Unix millis.
    pub occurred_at: i64,
    /// Conversation id (record key).
    pub conversation_id: String,
    /// The CRM's idempotency key.
    pub request_id: String,
    /// Business sender address.
    pub from: String,
    /// Customer address.
    pub to: String,
    /// Free-form text.
    pub body: Option<String>,
    /// Media URLs.
    pub media_urls: Vec<String>,
    /// A template send instead of free-form content.
    pub template: Option<TemplateRequest>,
    /// The CRM's metadata of the request (agent, case, tags), carried unchanged.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
event!(OutboundRequested, "outbound_requested.avsc", "wachannel.outbound.requested.v1");

/// session-window's verdict on an outbound request (topic `wa.outbound.checked.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundWindowChecked {
    /// Unique id of this event.
    pub event_id: String,
    /// When the check was made, Unix millis.
    pub occurred_at: i64,
    /// Conversation id (record key).
    pub conversation_id: String,
    /// The CRM's idempotency key.
    pub request_id: String,
    /// Business sender address.
    pub from: String,
    /// Customer address.
    pub to: String,
    /// Free-form text.
    pub body: Option<String>,
    /// Media URLs.
    pub media_urls: Vec<String>,
    /// A template send instead of free-form content.
    pub template: Option<TemplateRequest>,
    /// Whether the window allows a free-form send.
    pub allowed: bool,
    /// Why not, when not allowed: a [`RejectionReason`]'s wire string (`no_window`,
    /// `window_closed`, `opted_out`).
    pub refusal_reason: Option<String>,
    /// When the window closes, Unix millis, if there is one.
    pub window_expires_at: Option<i64>,
    /// Whether the customer opted out of marketing messages.
    pub opted_out: bool,
    /// The latest time Meta declined a marketing message to this customer (63049).
    pub marketing_limited_at: Option<i64>,
    /// Whether the customer's window is open now (less the safety margin), whatever is asked.
    pub window_open: bool,
    /// Whether a free entry point is open now, or this reply opens one.
    pub entry_point_open: bool,
    /// The CRM's metadata of the request (agent, case, tags), carried unchanged.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
event!(OutboundWindowChecked, "outbound_window_checked.avsc", "wachannel.outbound.checked.v1");

/// A message cleared for sending (topic `wa.outbound.authorized.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundAuthorized {
    /// Unique id of this event.
    pub event_id: String,
    /// When it was authorized, Unix millis.
    pub occurred_at: i64,
    /// Conversation id (record key).
    pub conversation_id: String,
    /// The CRM's idempotency key.
    pub request_id: String,
    /// Business sender address.
    pub from: String,
    /// Customer address.
    pub to: String,
    /// Free-form text.
    pub body: Option<String>,
    /// Media URLs.
    pub media_urls: Vec<String>,
    /// When the window closes, Unix millis; dispatch re-checks it for free-form sends.
    pub window_expires_at: Option<i64>,
    /// Twilio Content SID of the template version to send.
    pub content_sid: Option<String>,
    /// Twilio ContentVariables (a JSON object).
    pub content_variables: Option<String>,
    /// The template's name.
    pub template_name: Option<String>,
    /// The language sent (after fallback).
    pub template_language: Option<String>,
    /// The template body with its variables filled in.
    pub preview: Option<String>,
    /// Which rule allowed it: an [`AuthorizationRule`]'s wire string.
    pub rule: Option<String>,
    /// How Meta prices it: a [`PricingCategory`]'s wire string.
    pub pricing_category: Option<String>,
    /// Free or charged: a [`PricingType`]'s wire string.
    pub pricing_type: Option<String>,
    /// The CRM's metadata of the request (agent, case, tags), carried unchanged.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
event!(OutboundAuthorized, "outbound_authorized.avsc", "wachannel.outbound.authorized.v1");

/// An outbound request refused before it reached Twilio (topic `wa.outbound.rejected.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundRejected {
    /// Unique id of this event.
    pub event_id: String,
    /// When it was refused, Unix millis.
    pub occurred_at: i64,
    /// Conversation id (record key).
    pub conversation_id: String,
    /// The CRM's idempotency key.
    pub request_id: String,
    /// Business sender address.
    pub from: String,
    /// Customer address.
    pub to: String,
    /// Machine-readable reason: a [`RejectionReason`]'s wire string.
    pub reason: String,
    /// Human-readable explanation.
    pub message: String,
    /// The service that refused it.
    pub rejected_by: String,
    /// The CRM's metadata of the request (agent, case, tags), carried unchanged.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
event!(OutboundRejected, "outbound_rejected.avsc", "wachannel.outbound.rejected.v1");

/// The outcome of a send to Twilio (topic `wa.outbound.dispatched.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboundDispatched {
    /// Unique id of this event.
    pub event_id: String,
    /// When the outcome was known, Unix millis.
    pub occurred_at: i64,
    /// Conversation id (record key).
    pub conversation_id: String,
    /// The CRM's idempotency key.
    pub request_id: String,
    /// Business sender address.
    pub from: String,
    /// Customer address.
    pub to: String,
    /// What happened: a [`DispatchOutcome`]'s wire string (read it with [`OutboundDispatched::kind`]).
    pub outcome: String,
    /// Twilio's message sid when sent.
    pub message_sid: Option<String>,
    /// Twilio's status in its response.
    pub twilio_status: Option<String>,
    /// Twilio's error code when failed.
    pub error_code: Option<i32>,
    /// Twilio's error message when failed.
    pub error_message: Option<String>,
    /// Why it failed (or was undelivered): `window_closed`, `retries_exhausted`, or the reason
    /// of Twilio's error code (`wa_twilio::errors`); why it is in doubt: `no_answer` or
    /// `ambiguous_answer`.
    pub failure_reason: Option<String>,
    /// HTTP attempts made.
    pub attempts: i32,
    /// The claim: on `sending` and `released` its id, on outcomes the claim that sent.
    pub claim_id: Option<String>,
    /// On `sending`: the dispatch instance that claims the send.
    pub claimed_by: Option<String>,
    /// How Meta prices it: a [`PricingCategory`]'s wire string.
    pub pricing_category: Option<String>,
    /// Free or charged: a [`PricingType`]'s wire string.
    pub pricing_type: Option<String>,
    /// The CRM's metadata of the request (agent, case, tags), carried unchanged.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}
event!(OutboundDispatched, "outbound_dispatched.avsc", "wachannel.outbound.dispatched.v1");

/// One of a customer's latest messages, as a session state remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentMessage {
    /// The `InboundMessageReceived` event id.
    pub event_id: String,
    /// When ingress received it, Unix millis.
    pub received_at: i64,
}

/// A conversation's whole session state (topic `wa.sessions.v1`, compacted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// UUIDv5 of the conversation and this state.
    pub event_id: String,
    /// The latest moment this state reflects, Unix millis.
    pub occurred_at: i64,
    /// The conversation (the record key).
    pub conversation_id: String,
    /// When the customer last wrote.
    pub last_customer_message_at: Option<i64>,
    /// When the 24-hour window closes.
    pub window_expires_at: Option<i64>,
    /// When the 72-hour free entry point closes.
    pub entry_point_expires_at: Option<i64>,
    /// The customer opted out of marketing messages.
    pub opted_out: bool,
    /// The latest opt-out.
    pub opted_out_at: Option<i64>,
    /// The latest opt-in.
    pub opted_in_at: Option<i64>,
    /// Which notice of the current window was published: none, expiring or closed.
    pub notified: String,
    /// The customer's latest messages, latest first: a replay is recognised by its id.
    pub recent_messages: Vec<RecentMessage>,
    /// The customer's latest message from a click-to-WhatsApp ad or Page button.
    pub last_referral_at: Option<i64>,
    /// When the business's latest messages were sent (at most 4, latest first).
    pub business_replies: Vec<i64>,
    /// The latest time Meta declined a marketing message to this customer (63049).
    pub marketing_limited_at: Option<i64>,
}
event!(SessionState, "session_state.avsc", "wachannel.session.state.v1");

/// A change in a conversation's session (topic `wa.session.events.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEvent {
    /// UUIDv5 of the conversation, the type and the cause.
    pub event_id: String,
    /// When it happened, Unix millis.
    pub occurred_at: i64,
    /// The conversation (the record key).
    pub conversation_id: String,
    /// What happened: a [`SessionChange`]'s wire string (read it with [`SessionEvent::change`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// When the 24-hour window closes, after this event.
    pub window_expires_at: Option<i64>,
    /// When the 72-hour free entry point closes, after this event.
    pub entry_point_expires_at: Option<i64>,
    /// The inbound or dispatch event that caused it.
    pub cause_event_id: Option<String>,
    /// For consent changes: the keyword or the Twilio error.
    pub reason: Option<String>,
}
event!(SessionEvent, "session_event.avsc", "wachannel.session.event.v1");

/// Which session-window instance owns a partition (topic `wa.session.owners.v1`, compacted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionOwner {
    /// Unique id of this event.
    pub event_id: String,
    /// When the instance took the partition, Unix millis.
    pub occurred_at: i64,
    /// The partition number as text (the record key).
    pub partition_key: String,
    /// The partition of the message topics.
    pub partition: i32,
    /// The owning instance's HTTP base URL.
    pub owner_url: String,
}
event!(PartitionOwner, "partition_owner.avsc", "wachannel.session.owner.v1", partition_key);

/// One customer media item, stored (topic `wa.inbound.media.v1`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboundMediaStored {
    /// UUIDv5 of the message sid and the index.
    pub event_id: String,
    /// When it was stored, Unix millis.
    pub occurred_at: i64,
    /// The message's conversation (the record key).
    pub conversation_id: String,
    /// The message the media came with.
    pub message_sid: String,
    /// Which item of the message.
    pub index: i32,
    /// Its content type.
    pub content_type: String,
    /// Bytes stored.
    pub size: i64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// Where it is stored.
    pub url: String,
    /// Whether it was deleted at Twilio once stored.
    #[serde(default)]
    pub deleted_at_twilio: bool,
}
event!(InboundMediaStored, "inbound_media_stored.avsc", "wachannel.inbound.media.stored.v1");

/// A BSUID seen with a phone number (topic `wa.identities.v1`, compacted, keyed by BSUID).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityLinked {
    /// UUIDv5 of the BSUID and the address.
    pub event_id: String,
    /// When ingress saw the pair, Unix millis.
    pub occurred_at: i64,
    /// The business-scoped user id (the record key).
    pub bsuid: String,
    /// The phone address it came with, `whatsapp:+E164`.
    pub address: String,
    /// The webhook that carried both.
    pub message_sid: String,
}
event!(IdentityLinked, "identity_linked.avsc", "wachannel.identity.linked.v1", bsuid);

/// A customer's opt-out or opt-in (topic `wa.consent.v1`, kept forever).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsentChanged {
    /// UUIDv5 of the fact that carried it.
    pub event_id: String,
    /// When the customer opted out or in, Unix millis.
    pub occurred_at: i64,
    /// The conversation (the record key).
    pub conversation_id: String,
    /// `opted_out` or `opted_in`.
    pub consent: String,
    /// The keyword, or `twilio_error_21610` / `twilio_error_63014`.
    pub reason: String,
    /// The inbound message or dispatch event that carried it.
    pub cause_event_id: String,
}
event!(ConsentChanged, "consent_changed.avsc", "wachannel.consent.changed.v1");
