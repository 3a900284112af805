//! `POST /v1/outbound`: the CRM asks to send an agent's message.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use tracing::Instrument as _;
use uuid::Uuid;
use wa_platform::http::{bearer_authorized, json_body, Problem};
use wa_platform::topics::OUTBOUND_REQUESTED;
use wa_schemas::{conversation_id, OutboundRequested, TemplateRequest, WhatsAppAddress};

use crate::dedupe::Outcome;
use crate::request::{read_body, refuse_until_ready, reject, unavailable};
use crate::NotPublished;
use crate::{mask, AppState};

use wa_twilio::limits::{template_value_problem, MAX_BODY_CHARS, MAX_MEDIA};

/// Longest `request_id`, in characters.
const MAX_REQUEST_ID_CHARS: usize = 128;

/// The CRM's request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutboundRequest {
    /// Idempotency key; generated when absent.
    request_id: Option<String>,
    /// Business sender, `whatsapp:+E164`.
    from: String,
    /// Customer address.
    to: String,
    /// Free-form text.
    body: Option<String>,
    /// Media URLs.
    #[serde(default)]
    media_urls: Vec<String>,
    /// A template instead of free-form content.
    template: Option<TemplateRequest>,
    /// The CRM's own pairs (agent, case, tags), carried on every event the request causes.
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Most metadata pairs a request may carry.
const MAX_METADATA_PAIRS: usize = 16;
/// Longest metadata key, in characters.
const MAX_METADATA_KEY_CHARS: usize = 64;
/// Longest metadata value, in characters.
const MAX_METADATA_VALUE_CHARS: usize = 256;

/// What the CRM gets back.
#[derive(Debug, Serialize)]
struct Accepted {
    request_id: String,
    conversation_id: String,
    /// `accepted`, or `duplicate` when this `request_id` was accepted before (the first
    /// request's content stands).
    status: &'static str,
}

const ENDPOINT: &str = "outbound";

/// Validates the request and publishes it, once per `request_id`.
pub(crate) async fn create(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    if !bearer_authorized(&state.api_tokens, &headers) {
        return reject(ENDPOINT, "unauthorized", Problem::unauthorized());
    }
    if let Some(response) = refuse_until_ready(&state, ENDPOINT) {
        return response;
    }
    let body = match read_body(&state, ENDPOINT, body).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let request: OutboundRequest = match json_body(&headers, &body) {
        Ok(request) => request,
        Err(problem) if problem.status() == StatusCode::UNSUPPORTED_MEDIA_TYPE => {
            return reject(ENDPOINT, "content_type", problem)
        }
        Err(problem) => return reject(ENDPOINT, "malformed_body", problem),
    };
    let mut event = match validate(request) {
        Ok(event) => event,
        Err(problem) => return reject(ENDPOINT, "invalid_field", problem),
    };
    // A reply to a BSUID joins the conversation of the phone number it came with.
    if let Some(phone) = crate::identities::phone_behind(&state.identities, &event.to, None) {
        event.conversation_id = conversation_id(&event.from, &phone);
    }
    if !state.serves(&event.from) {
        let problem = Problem::invalid_field(
            "from",
            format!("{} is not a sender this channel serves (INGRESS_SENDERS)", mask(&event.from)),
        );
        return reject(ENDPOINT, "unknown_sender", problem);
    }
    let span = tracing::info_span!("outbound_request", request_id = %event.request_id, to = %mask(&event.to));
    match state
        .outbound_dedupe
        .publish_once(&event.event_id, state.publish_timeout, NotPublished::timed_out(), || {
            state.start_publish(&OUTBOUND_REQUESTED, event.clone())
        })
        .instrument(span.clone())
        .await
    {
        Ok(outcome) => {
            let (status, code) = match outcome {
                Outcome::Published => ("accepted", StatusCode::ACCEPTED),
                Outcome::Duplicate => ("duplicate", StatusCode::OK),
            };
            metrics::counter!(wa_platform::metrics::INGRESS_ACCEPTED, "endpoint" => ENDPOINT, "outcome" => status)
                .increment(1);
            span.in_scope(|| tracing::info!(outcome = status, "outbound request accepted"));
            let accepted = Accepted { request_id: event.request_id, conversation_id: event.conversation_id, status };
            (code, Json(accepted)).into_response()
        }
        Err(reason) => span.in_scope(|| unavailable(ENDPOINT, reason)),
    }
}

fn validate(request: OutboundRequest) -> Result<OutboundRequested, Problem> {
    let from = WhatsAppAddress::parse(&request.from).map(WhatsAppAddress::into_string).map_err(|error| {
        Problem::invalid_field("from", format!("from must be the business's WhatsApp sender: {error}"))
    })?;
    let to = WhatsAppAddress::parse(&request.to).map(WhatsAppAddress::into_string).map_err(|error| {
        Problem::invalid_field("to", format!("to must be the customer's WhatsApp address: {error}"))
    })?;
    let body = request.body.filter(|body| !body.trim().is_empty());
    if let Some(template) = &request.template {
        if body.is_some() || !request.media_urls.is_empty() {
            return Err(Problem::invalid_field("template", "send either a template or a body and media, not both"));
        }
        if template.name.trim().is_empty() {
            return Err(Problem::invalid_field("template.name", "the template name is required"));
        }
        if template.language.trim().is_empty() {
            return Err(Problem::invalid_field(
                "template.language",
                "the template language is required, e.g. en or pt_BR",
            ));
        }
        for (key, value) in &template.variables {
            if let Some(problem) = template_value_problem(value) {
                return Err(Problem::invalid_field(
                    &format!("template.variables.{key}"),
                    format!("the value of {{{{{key}}}}} {problem}"),
                ));
            }
        }
    } else if body.is_none() && request.media_urls.is_empty() {
        return Err(Problem::invalid_field("body", "a body, media URLs or a template is required"));
    }
    if let Some(body) = &body {
        let chars = body.chars().count();
        if chars > MAX_BODY_CHARS {
            return Err(Problem::invalid_field(
                "body",
                format!("body has {chars} characters; Twilio accepts at most {MAX_BODY_CHARS} (error 21617)"),
            ));
        }
    }
    if request.media_urls.len() > MAX_MEDIA {
        return Err(Problem::invalid_field(
            "media_urls",
            format!(
                "{} media URLs given; WhatsApp delivers {MAX_MEDIA} per message: send the others as further messages",
                request.media_urls.len()
            ),
        ));
    }
    if let Some(bad) =
        request.media_urls.iter().find(|url| !(url.starts_with("https://") || url.starts_with("http://")))
    {
        return Err(Problem::invalid_field("media_urls", format!("{bad:?} is not an http(s) URL")));
    }
    if request.metadata.len() > MAX_METADATA_PAIRS {
        return Err(Problem::invalid_field(
            "metadata",
            format!("metadata has {} pairs; at most {MAX_METADATA_PAIRS} are kept", request.metadata.len()),
        ));
    }
    for (key, value) in &request.metadata {
        let key_chars = key.chars().count();
        if key.trim().is_empty() || key_chars > MAX_METADATA_KEY_CHARS || key.chars().any(char::is_control) {
            return Err(Problem::invalid_field(
                "metadata",
                format!("metadata keys are 1 to {MAX_METADATA_KEY_CHARS} printable characters; {key:?} is not"),
            ));
        }
        if value.chars().count() > MAX_METADATA_VALUE_CHARS {
            return Err(Problem::invalid_field(
                &format!("metadata.{key}"),
                format!("metadata values are at most {MAX_METADATA_VALUE_CHARS} characters"),
            ));
        }
    }
    let request_id = match request.request_id {
        Some(id)
            if id.trim().is_empty()
                || id.chars().count() > MAX_REQUEST_ID_CHARS
                || id.chars().any(char::is_control) =>
        {
            return Err(Problem::invalid_field(
                "request_id",
                format!("request_id must be 1 to {MAX_REQUEST_ID_CHARS} printable characters"),
            ))
        }
        Some(id) => id,
        None => Uuid::new_v4().to_string(),
    };
    Ok(OutboundRequested {
        event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("wachannel:outbound:{request_id}").as_bytes()).to_string(),
        occurred_at: wa_platform::now_millis(),
        conversation_id: conversation_id(&from, &to),
        request_id,
        from,
        to,
        body,
        media_urls: request.media_urls,
        template: request.template,
        metadata: request.metadata,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> Result<OutboundRequested, serde_json::Value> {
        let request: OutboundRequest = serde_json::from_value(json).unwrap();
        validate(request).map_err(|problem| serde_json::to_value(problem).unwrap())
    }

    #[test]
    fn a_valid_request_becomes_an_event_keyed_by_conversation() {
        let event = request(serde_json::json!({
            "request_id": "r1", "from": "+14155238886", "to": "whatsapp:+15551234567", "body": "hi"
        }))
        .unwrap();
        assert_eq!(event.from, "whatsapp:+14155238886");
        assert_eq!(event.conversation_id, conversation_id("whatsapp:+14155238886", "whatsapp:+15551234567"));
        assert_eq!(event.request_id, "r1");
        assert!(event.metadata.is_empty());
        let with = request(serde_json::json!({
            "from": "whatsapp:+14155238886", "to": "whatsapp:+15551234567", "body": "hi",
            "metadata": {"agent": "ana", "case": "x".repeat(256)}
        }))
        .unwrap();
        assert_eq!(with.metadata["agent"], "ana");
        // One customer, however the CRM wrote the number.
        for to in ["15551234567", "whatsapp:1 (555) 123-4567", "+1.555.123.4567"] {
            let again = request(serde_json::json!({"from": "whatsapp:+14155238886", "to": to, "body": "hi"})).unwrap();
            assert_eq!((again.to.as_str(), &again.conversation_id), ("whatsapp:+15551234567", &event.conversation_id));
        }
    }

    #[test]
    fn problems_name_the_field() {
        let cases = [
            (serde_json::json!({"from": "", "to": "whatsapp:+442079460958", "body": "x"}), "from"),
            (serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:not-a-number", "body": "x"}), "to"),
            (serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:+1", "body": "x"}), "to"),
            (serde_json::json!({"from": "whatsapp:+14155238886", "to": "+1234567890123456", "body": "x"}), "to"),
            (serde_json::json!({"from": "whatsapp:+0441234567", "to": "whatsapp:+442079460958", "body": "x"}), "from"),
            (serde_json::json!({"from": "whatsapp:+14155238886", "to": " ", "body": "x"}), "to"),
            (serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958"}), "body"),
            (
                serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958", "body": "x".repeat(1601)}),
                "body",
            ),
            (
                serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958",
                    "media_urls": ["https://example.com/a.jpg", "https://example.com/b.jpg"]}),
                "media_urls",
            ),
            (
                serde_json::json!({"request_id": "x".repeat(129), "from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958", "body": "x"}),
                "request_id",
            ),
            (
                serde_json::json!({"request_id": "a\nb", "from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958", "body": "x"}),
                "request_id",
            ),
            (
                serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958",
                    "template": {"name": "t", "language": "en", "variables": {"1": "two\nlines"}}}),
                "template.variables.1",
            ),
            (
                serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958", "media_urls": ["ftp://x"]}),
                "media_urls",
            ),
            (
                serde_json::json!({"request_id": "", "from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958", "body": "x"}),
                "request_id",
            ),
            (
                serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958", "body": "x",
                    "template": {"name": "t", "language": "en", "variables": {}}}),
                "template",
            ),
            (
                serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958",
                    "template": {"name": "t", "language": " ", "variables": {}}}),
                "template.language",
            ),
        ];
        let many: serde_json::Map<String, serde_json::Value> =
            (0..17).map(|i| (format!("k{i}"), serde_json::json!("v"))).collect();
        let base = || serde_json::json!({"from": "whatsapp:+14155238886", "to": "whatsapp:+442079460958", "body": "x"});
        let with_metadata = |metadata: serde_json::Value| {
            let mut request = base();
            request["metadata"] = metadata;
            request
        };
        let cases = cases.into_iter().chain([
            (with_metadata(serde_json::Value::Object(many)), "metadata"),
            (with_metadata(serde_json::json!({"k".repeat(65): "v"})), "metadata"),
            (with_metadata(serde_json::json!({"": "v"})), "metadata"),
            (with_metadata(serde_json::json!({"case": "x".repeat(257)})), "metadata.case"),
        ]);
        for (json, field) in cases {
            assert_eq!(request(json).unwrap_err()["field"], field);
        }
    }
}
