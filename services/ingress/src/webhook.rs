//! `POST /twilio/inbound`: Twilio's incoming-message webhook.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;
use wa_platform::http::Problem;
use wa_platform::topics::INBOUND;
use wa_platform::twilio_signature;
use wa_schemas::{conversation_id, normalize_whatsapp_address, InboundMessageReceived, Media};

use crate::dedupe::Outcome;
use crate::{mask, AppState};

/// The empty TwiML document: "received, nothing to reply".
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

fn rejected(reason: &'static str, problem: Problem) -> Response {
    metrics::counter!("wa_webhooks_rejected_total", "reason" => reason).increment(1);
    problem.into_response()
}

/// Verifies, parses and publishes one inbound message.
pub(crate) async fn inbound(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded") {
        return rejected(
            "content_type",
            Problem::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-content-type",
                "unsupported content type",
                format!("expected application/x-www-form-urlencoded, got {content_type:?}"),
            ),
        );
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();

    let Some(signature) = headers.get(twilio_signature::HEADER).and_then(|v| v.to_str().ok()) else {
        tracing::warn!("webhook without signature refused");
        return rejected(
            "signature_missing",
            Problem::new(
                StatusCode::FORBIDDEN,
                "signature-missing",
                "signature missing",
                "X-Twilio-Signature header is required",
            ),
        );
    };
    let path = uri.path_and_query().map_or("/twilio/inbound", |pq| pq.as_str());
    let url = format!("{}{}", state.public_url, path);
    if !twilio_signature::verify(&state.auth_tokens, &url, &params, signature) {
        tracing::warn!(url = %url, "webhook with invalid signature refused");
        return rejected(
            "signature_invalid",
            Problem::new(
                StatusCode::FORBIDDEN,
                "signature-invalid",
                "signature invalid",
                format!("X-Twilio-Signature does not match {url} and the posted parameters"),
            ),
        );
    }

    let event = match parse_inbound(&params) {
        Ok(event) => event,
        Err(problem) => return rejected("invalid_form", problem),
    };
    let span = tracing::info_span!("inbound_webhook", message_sid = %event.message_sid, from = %mask(&event.from));

    let publish = || async {
        tokio::time::timeout(state.publish_timeout, state.producer.publish(&INBOUND, &event))
            .await
            .map_err(|_| "broker did not acknowledge in time".to_owned())?
            .map(|_| ())
            .map_err(|err| err.to_string())
    };
    match tracing::Instrument::instrument(state.dedupe.publish_once(&event.message_sid, publish), span.clone()).await {
        Ok(outcome) => {
            let label = if outcome == Outcome::Published { "published" } else { "duplicate" };
            metrics::counter!("wa_webhooks_accepted_total", "outcome" => label).increment(1);
            span.in_scope(|| tracing::info!(outcome = label, "inbound message accepted"));
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response()
        }
        Err(reason) => {
            span.in_scope(
                || tracing::error!(reason = %reason, "inbound message not durable; answering 503 so Twilio retries"),
            );
            rejected("broker_unavailable", Problem::unavailable(reason))
        }
    }
}

/// The webhook's parameters as an event. Known fields are typed; every other one is kept in
/// `other_params`.
fn parse_inbound(params: &[(String, String)]) -> Result<InboundMessageReceived, Problem> {
    let mut fields: HashMap<&str, &str> = HashMap::new();
    for (name, value) in params {
        fields.insert(name, value);
    }
    let required = |name: &'static str| -> Result<String, Problem> {
        fields
            .get(name)
            .filter(|value| !value.trim().is_empty())
            .map(|value| (*value).to_owned())
            .ok_or_else(|| Problem::invalid_field(name, format!("{name} is required")))
    };
    let optional = |name: &str| fields.get(name).filter(|v| !v.is_empty()).map(|v| (*v).to_owned());

    let message_sid = required("MessageSid")?;
    let account_sid = required("AccountSid")?;
    let from = normalize_whatsapp_address(&required("From")?)
        .ok_or_else(|| Problem::invalid_field("From", "From is not an address"))?;
    let to = normalize_whatsapp_address(&required("To")?)
        .ok_or_else(|| Problem::invalid_field("To", "To is not an address"))?;
    let num_media: usize = match fields.get("NumMedia") {
        None | Some(&"") => 0,
        Some(n) => n.parse().map_err(|_| Problem::invalid_field("NumMedia", "NumMedia must be a whole number"))?,
    };
    let mut media = Vec::with_capacity(num_media.min(10));
    let mut consumed: Vec<String> = Vec::new();
    for index in 0..num_media.min(10) {
        let url_key = format!("MediaUrl{index}");
        let type_key = format!("MediaContentType{index}");
        let url = fields.get(url_key.as_str()).ok_or_else(|| {
            Problem::invalid_field(&url_key, format!("NumMedia={num_media} but {url_key} is missing"))
        })?;
        media.push(Media {
            url: (*url).to_owned(),
            content_type: fields.get(type_key.as_str()).map(|v| (*v).to_owned()).unwrap_or_default(),
        });
        consumed.push(url_key);
        consumed.push(type_key);
    }
    const TYPED: [&str; 10] = [
        "MessageSid",
        "AccountSid",
        "MessagingServiceSid",
        "From",
        "To",
        "Body",
        "NumMedia",
        "ProfileName",
        "WaId",
        "MessageType",
    ];
    let other_params = params
        .iter()
        .filter(|(name, _)| !TYPED.contains(&name.as_str()) && !consumed.contains(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    Ok(InboundMessageReceived {
        event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("wachannel:inbound:{message_sid}").as_bytes()).to_string(),
        occurred_at: wa_platform::now_millis(),
        conversation_id: conversation_id(&to, &from),
        messaging_service_sid: optional("MessagingServiceSid"),
        body: fields.get("Body").map(|v| (*v).to_owned()).unwrap_or_default(),
        profile_name: optional("ProfileName"),
        wa_id: optional("WaId"),
        message_type: optional("MessageType"),
        message_sid,
        account_sid,
        from,
        to,
        media,
        other_params,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    const BASE: &[(&str, &str)] = &[
        ("MessageSid", "SM1"),
        ("AccountSid", "AC1"),
        ("From", "whatsapp:+15551234567"),
        ("To", "whatsapp:+14155238886"),
        ("Body", "hello"),
    ];

    #[test]
    fn typed_fields_media_and_unknown_parameters_are_all_kept() {
        let mut form = params(BASE);
        form.extend(params(&[
            ("NumMedia", "1"),
            ("MediaUrl0", "https://api.twilio.com/m/1"),
            ("MediaContentType0", "image/png"),
            ("ProfileName", "Ana"),
            ("SomethingNew", "42"),
        ]));
        let event = parse_inbound(&form).unwrap();
        assert_eq!(event.body, "hello");
        assert_eq!(
            event.media,
            vec![Media { url: "https://api.twilio.com/m/1".into(), content_type: "image/png".into() }]
        );
        assert_eq!(event.profile_name.as_deref(), Some("Ana"));
        assert_eq!(event.other_params.get("SomethingNew").map(String::as_str), Some("42"));
        assert!(!event.other_params.contains_key("MediaUrl0"));
        assert_eq!(event.conversation_id, conversation_id("whatsapp:+14155238886", "whatsapp:+15551234567"));
    }

    #[test]
    fn the_same_sid_gives_the_same_event_id() {
        let a = parse_inbound(&params(BASE)).unwrap();
        let b = parse_inbound(&params(BASE)).unwrap();
        assert_eq!(a.event_id, b.event_id);
    }

    #[test]
    fn missing_fields_are_named() {
        for missing in ["MessageSid", "AccountSid", "From", "To"] {
            let form: Vec<_> = params(BASE).into_iter().filter(|(k, _)| k != missing).collect();
            let problem = parse_inbound(&form).unwrap_err();
            let json = serde_json::to_value(&problem).unwrap();
            assert_eq!(json["field"], missing);
            assert_eq!(json["status"], 422);
        }
        let mut form = params(BASE);
        form.push(("NumMedia".into(), "2".into()));
        form.push(("MediaUrl0".into(), "u".into()));
        let json = serde_json::to_value(parse_inbound(&form).unwrap_err()).unwrap();
        assert_eq!(json["field"], "MediaUrl1");
    }
}
