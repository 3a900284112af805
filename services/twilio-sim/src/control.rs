//! The simulator's own routes under `/sim/`: what it accepted, its statistics, its behaviour
//! (switchable at run time), and customers' messages posted to ingress as signed webhooks.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use crate::{media, Behaviour, Sim, SimMessage, Stats};

pub(crate) async fn list_messages(State(sim): State<Arc<Sim>>) -> Json<Vec<SimMessage>> {
    Json(sim.messages.lock().expect("messages lock").clone())
}

pub(crate) async fn get_stats(State(sim): State<Arc<Sim>>) -> Json<Stats> {
    Json(sim.stats.lock().expect("stats lock").clone())
}

pub(crate) async fn get_behaviour(State(sim): State<Arc<Sim>>) -> Json<Behaviour> {
    Json(sim.behaviour())
}

/// Replaces the fields the JSON object names; 422 with the reason for anything else.
pub(crate) async fn patch_behaviour(State(sim): State<Arc<Sim>>, Json(patch): Json<serde_json::Value>) -> Response {
    let Some(fields) = patch.as_object() else {
        return (StatusCode::UNPROCESSABLE_ENTITY, "expected a JSON object of behaviour fields").into_response();
    };
    let mut behaviour = sim.behaviour.lock().expect("behaviour lock");
    let mut merged = serde_json::to_value(&*behaviour).unwrap_or_default();
    for (key, value) in fields {
        merged[key] = value.clone();
    }
    match serde_json::from_value::<Behaviour>(merged) {
        Ok(updated) => {
            *behaviour = updated.clone();
            Json(updated).into_response()
        }
        Err(err) => (StatusCode::UNPROCESSABLE_ENTITY, err.to_string()).into_response(),
    }
}

/// A customer's message for `POST /sim/inbound`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InboundRequest {
    /// The customer, `whatsapp:+E164` or `whatsapp:<BSUID>`.
    from: String,
    /// The business sender.
    to: String,
    #[serde(default)]
    body: String,
    /// The MessageSid; generated when absent.
    message_sid: Option<String>,
    /// More webhook parameters (e.g. `ButtonPayload`, `ReferralCtwaClid`).
    #[serde(default)]
    params: Vec<(String, String)>,
    /// Where to post it; the configured webhook URL when absent.
    url: Option<String>,
    /// Media the customer sends: served behind Basic auth at Twilio's Media resource path.
    #[serde(default)]
    media: Vec<media::CustomerMedia>,
}

/// Posts a customer's message to ingress as Twilio would (signed), and opens the customer's
/// window in the simulator.
pub(crate) async fn post_inbound(State(sim): State<Arc<Sim>>, Json(request): Json<InboundRequest>) -> Response {
    let sid = request.message_sid.unwrap_or_else(|| format!("SM{}", uuid::Uuid::new_v4().simple()));
    let wa_id = request.from.trim_start_matches("whatsapp:").trim_start_matches('+').to_owned();
    let mut params: Vec<(String, String)> = [
        ("SmsMessageSid", sid.as_str()),
        ("NumMedia", "0"),
        ("ProfileName", "Simulated Customer"),
        ("MessageType", "text"),
        ("SmsSid", sid.as_str()),
        ("WaId", wa_id.as_str()),
        ("SmsStatus", "received"),
        ("Body", request.body.as_str()),
        ("To", request.to.as_str()),
        ("NumSegments", "1"),
        ("ReferralNumMedia", "0"),
        ("MessageSid", sid.as_str()),
        ("AccountSid", sim.config.account_sid.as_str()),
        ("From", request.from.as_str()),
        ("ApiVersion", "2010-04-01"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let media = media::attach(&sim, &sid, &request.media, &mut params);
    for (name, value) in request.params {
        params.retain(|(k, _)| *k != name);
        params.push((name, value));
    }
    sim.windows.lock().expect("windows lock").customer_wrote(&request.from, &request.to, std::time::Instant::now());
    let url = request.url.unwrap_or_else(|| sim.config.inbound_webhook_url.clone());
    let signed = wa_twilio::signature::compute(&sim.config.auth_token, &url, &params);
    let answer = sim.client.post(&url).header(wa_twilio::signature::HEADER, signed).form(&params).send().await;
    let webhook_status = answer.map_or(0, |response| response.status().as_u16());
    Json(json!({ "message_sid": sid, "webhook_status": webhook_status, "media": media })).into_response()
}
