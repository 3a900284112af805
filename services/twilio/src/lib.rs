//! Twilio's webhook wire formats, with no IO: request signatures ([`signature`]), the
//! parameters of form and JSON bodies ([`params`]), and the WhatsApp fields of inbound messages
//! and status callbacks turned into the channel's events ([`inbound`], [`status`]), and what
//! Twilio's error codes mean ([`errors`]), the limits an outbound message must keep ([`limits`]),
//! and the Content API's approval statuses ([`content`]).
//!
//! With the `client` feature (on by default), the REST clients too: the Messages API
//! (`messages_api`, used by outbound-dispatch) and the Content API (`content_api`, used by
//! template-approval), next to the wire formats they speak. The fuzz target builds without it.
//!
//! Kept apart from the services so that the parsers can be fuzzed (`tests/fuzz`) and so that
//! the simulator and the tests sign requests with the very code ingress verifies them with.

pub mod content;
#[cfg(feature = "client")]
pub mod content_api;
pub mod errors;
pub mod inbound;
pub mod limits;
#[cfg(feature = "client")]
pub mod messages_api;
pub mod params;
pub mod signature;
pub mod status;
#[cfg(feature = "client")]
pub mod traced;

/// A webhook parameter that is missing or malformed, named as Twilio names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The parameter, e.g. `MessageSid`.
    pub field: String,
    /// What is wrong with it.
    pub detail: String,
}

impl FieldError {
    pub(crate) fn new(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self { field: field.into(), detail: detail.into() }
    }
}

/// Reads a required address parameter (`From`, `To`) into its canonical form.
pub(crate) fn address_field(name: &str, value: &str) -> Result<String, FieldError> {
    wa_schemas::WhatsAppAddress::parse(value)
        .map(wa_schemas::WhatsAppAddress::into_string)
        .map_err(|error| FieldError::new(name, format!("{name} is not a WhatsApp address: {error}")))
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.detail)
    }
}

impl std::error::Error for FieldError {}

/// The `StatusCallback` URL dispatch puts on each message: ingress's status endpoint with the
/// request id in the query, so the callback names the request it belongs to.
pub fn status_callback_url(status_endpoint: &str, request_id: &str) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new()).append_pair("request_id", request_id).finish();
    let separator = if status_endpoint.contains('?') { '&' } else { '?' };
    format!("{status_endpoint}{separator}{query}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_callback_url_round_trips_the_request_id() {
        let url = super::status_callback_url("https://wa.example.com/twilio/status", "crm/42 ü&x");
        assert_eq!(super::signature::query_param(&url, "request_id").as_deref(), Some("crm/42 ü&x"));
        let url = super::status_callback_url("https://wa.example.com/twilio/status?tenant=a", "r1");
        assert_eq!(url, "https://wa.example.com/twilio/status?tenant=a&request_id=r1");
    }
}
