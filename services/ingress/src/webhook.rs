//! `POST /twilio/inbound` and `POST /twilio/status`: Twilio's webhooks, verified by
//! [`crate::request::verify`], read by `wa-twilio`, and published before Twilio gets its 2xx.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{OriginalUri, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::Instrument as _;
use wa_platform::http::Problem;
use wa_platform::topics::{DELIVERY, IDENTITIES, INBOUND};
use wa_twilio::{inbound, signature, status, FieldError};

use crate::dedupe::Outcome;
use crate::request::{self, reject, unavailable};
use crate::NotPublished;
use crate::{identities, mask, AppState};

/// The empty TwiML document: "received, nothing to reply".
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

/// A signed webhook whose fields cannot be read: it came from Twilio, so it is kept on the
/// quarantine topic (an operator can look at it and replay it once fixed), then refused.
async fn unreadable(state: &AppState, received: &request::Received, url: &str, error: FieldError) -> Response {
    if let Err(response) = request::quarantine(state, received, url, "invalid_field", &error.to_string()).await {
        return response;
    }
    reject(received.endpoint, "invalid_field", Problem::invalid_field(&error.field, error.detail))
}

/// Verifies, reads and publishes one inbound message, once per `MessageSid`.
pub(crate) async fn inbound(
    State(state): State<Arc<AppState>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const ENDPOINT: &str = "inbound";
    let (verified, received) = match request::verify(&state, ENDPOINT, method, uri, headers, body).await {
        Ok(verified) => verified,
        Err(response) => return response,
    };
    let mut event = match inbound::inbound_event(&verified.params, wa_platform::now_millis()) {
        Ok(event) => event,
        Err(error) => return unreadable(&state, &received, &verified.url, error).await,
    };
    // A customer known by a BSUID only is keyed to the phone number it came with before.
    if let Some(phone) = identities::phone_behind(&state.identities, &event.from, event.external_user_id.as_deref()) {
        event.conversation_id = wa_schemas::conversation_id(&event.to, &phone);
    }
    let span = tracing::info_span!("inbound_webhook", message_sid = %event.message_sid, from = %mask(&event.from), to = %mask(&event.to));
    if !state.serves(&event.to) {
        let detail = format!("{} is not a sender this channel serves (INGRESS_SENDERS)", mask(&event.to));
        if let Err(response) = request::quarantine(&state, &received, &verified.url, "unknown_sender", &detail).await {
            return response;
        }
        let problem = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "unknown-sender", "unknown sender", detail);
        return span.in_scope(|| reject(ENDPOINT, "unknown_sender", problem));
    }

    // A BSUID with its phone number: the pair is durable before the message, so a later
    // message with the BSUID alone finds it.
    let link = identities::new_link(
        &state.identities,
        &event.from,
        event.external_user_id.as_deref(),
        &event.message_sid,
        event.occurred_at,
    );
    if let Some(link) = link {
        if let Err(reason) = state.publish(&IDENTITIES, &link).instrument(span.clone()).await {
            return span.in_scope(|| unavailable(ENDPOINT, reason));
        }
        state.identities.remember(&link.bsuid, &link.address);
    }
    match state
        .inbound_dedupe
        .publish_once(&event.event_id, state.publish_timeout, NotPublished::timed_out(), || {
            state.start_publish(&INBOUND, event.clone())
        })
        .instrument(span.clone())
        .await
    {
        Ok(outcome) => {
            let label = if outcome == Outcome::Published { "published" } else { "duplicate" };
            metrics::counter!(wa_platform::metrics::INGRESS_ACCEPTED, "endpoint" => ENDPOINT, "outcome" => label)
                .increment(1);
            span.in_scope(|| tracing::info!(outcome = label, "inbound message accepted"));
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML).into_response()
        }
        Err(reason) => span.in_scope(|| unavailable(ENDPOINT, reason)),
    }
}

/// Verifies, reads and publishes one status callback, as received (repeats and all: dispatch
/// folds them, and each carries a deterministic event id).
pub(crate) async fn status(
    State(state): State<Arc<AppState>>,
    method: Method,
    OriginalUri(uri): OriginalUri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    const ENDPOINT: &str = "status";
    let (verified, received) = match request::verify(&state, ENDPOINT, method, uri, headers, body).await {
        Ok(verified) => verified,
        Err(response) => return response,
    };
    let request_id = signature::query_param(&verified.url, "request_id");
    let event = match status::status_event(&verified.params, request_id, wa_platform::now_millis()) {
        Ok(event) => event,
        Err(error) => return unreadable(&state, &received, &verified.url, error).await,
    };
    let span = tracing::info_span!(
        "status_callback",
        message_sid = %event.message_sid,
        status = %event.message_status,
        request_id = event.request_id.as_deref().unwrap_or(""),
    );
    match state.publish(&DELIVERY, &event).instrument(span.clone()).await {
        Ok(()) => {
            let status =
                status::MessageStatus::parse(&event.message_status).map_or("other", status::MessageStatus::as_str);
            metrics::counter!(wa_platform::metrics::INGRESS_ACCEPTED, "endpoint" => ENDPOINT, "outcome" => "published")
                .increment(1);
            metrics::counter!(wa_platform::metrics::INGRESS_STATUS_CALLBACKS, "status" => status).increment(1);
            span.in_scope(|| tracing::info!("status callback accepted"));
            StatusCode::NO_CONTENT.into_response()
        }
        Err(reason) => span.in_scope(|| unavailable(ENDPOINT, reason)),
    }
}
