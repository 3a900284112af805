//! A Twilio simulator for tests and the local run, speaking Twilio's wire formats.
//!
//! - `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`: the Messages API. Form body,
//!   HTTP Basic auth (account SID + auth token), Twilio's message resource JSON (201) with an
//!   `SM…` sid, and Twilio's error JSON (`code`, `message`, `more_info`, `status`).
//! - `GET /sim/messages`: every accepted message, for assertions, with all its form
//!   parameters.
//! - The Content API's WhatsApp approvals: `POST /v1/Content/{sid}/ApprovalRequests/whatsapp`
//!   (submit; status `received`), `GET /v1/Content/{sid}/ApprovalRequests` and the paged
//!   `GET /v1/ContentAndApprovals`, in Twilio's shapes; tests move a template through Meta's decisions with
//!   `POST /sim/content/{sid}/approval` (`{"status": "approved"}`, `"paused"`, ...).
//!
//! Production never talks to it: dispatch's `TWILIO_API_BASE_URL` points at api.twilio.com.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::net::TcpListener;
use wa_platform::config::{self, EnvVar};
use wa_platform::http::Health;
use wa_platform::service::{Bound, Service};
use wa_platform::CancellationToken;

/// The service name.
pub const SERVICE: &str = "twilio-sim";

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// The account it accepts.
    pub account_sid: String,
    /// The account's auth token.
    pub auth_token: String,
}

impl Config {
    /// Every variable the simulator reads.
    pub const ENV: &'static [EnvVar] = &[config::TWILIO_ACCOUNT_SID, config::TWILIO_AUTH_TOKEN];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8090";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        Ok(Self {
            http_addr: config::http_addr(Self::DEFAULT_HTTP_ADDR)?,
            account_sid: config::var_or(&config::TWILIO_ACCOUNT_SID),
            auth_token: config::var_or(&config::TWILIO_AUTH_TOKEN),
        })
    }
}

/// A message the simulator accepted.
#[derive(Debug, Clone, Serialize)]
pub struct SimMessage {
    /// The sid it was given.
    pub sid: String,
    /// The account it was sent on.
    pub account_sid: String,
    /// Every form parameter, in the order sent (repeated ones like `MediaUrl` included).
    pub params: Vec<(String, String)>,
    /// When it was accepted, RFC 3339.
    pub received_at: String,
}

struct Sim {
    config: Config,
    messages: Mutex<Vec<SimMessage>>,
    /// WhatsApp approval of each Content SID.
    approvals: Mutex<HashMap<String, Approval>>,
}

/// The WhatsApp approval of one content.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Approval {
    #[serde(default)]
    name: String,
    #[serde(default)]
    category: String,
    status: String,
    #[serde(default)]
    rejection_reason: String,
}

impl Approval {
    fn json(&self) -> serde_json::Value {
        json!({
            "type": "whatsapp",
            "name": self.name,
            "category": self.category,
            "content_type": "twilio/text",
            "status": self.status,
            "rejection_reason": self.rejection_reason,
            "allow_category_change": true,
        })
    }
}

fn is_content_sid(sid: &str) -> bool {
    sid.len() == 34 && sid.starts_with("HX") && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

fn content_not_found(sid: &str) -> Response {
    twilio_error(StatusCode::NOT_FOUND, 20404, &format!("The requested resource /v1/Content/{sid} was not found"))
}

async fn submit_approval(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authenticated(&sim, &headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    if !is_content_sid(&sid) {
        return content_not_found(&sid);
    }
    #[derive(Deserialize)]
    struct Submission {
        name: String,
        category: String,
    }
    let Ok(submission) = serde_json::from_slice::<Submission>(&body) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            20001,
            "Invalid approval request: name and category are required",
        );
    };
    let approval = Approval {
        name: submission.name,
        category: submission.category,
        status: "received".to_owned(),
        rejection_reason: String::new(),
    };
    let json = approval.json();
    sim.approvals.lock().expect("approvals lock").insert(sid, approval);
    let created = json!({
        "name": json["name"], "category": json["category"], "content_type": json["content_type"],
        "status": json["status"], "rejection_reason": json["rejection_reason"], "allow_category_change": true,
    });
    (StatusCode::CREATED, Json(created)).into_response()
}

async fn fetch_approval(State(sim): State<Arc<Sim>>, Path(sid): Path<String>, headers: HeaderMap) -> Response {
    if !authenticated(&sim, &headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let Some(approval) = sim.approvals.lock().expect("approvals lock").get(&sid).cloned() else {
        return content_not_found(&sid);
    };
    Json(json!({
        "sid": sid,
        "account_sid": sim.config.account_sid,
        "whatsapp": approval.json(),
        "url": format!("https://content.twilio.com/v1/Content/{sid}/ApprovalRequests"),
    }))
    .into_response()
}

/// `GET /v1/ContentAndApprovals`: every submitted content with its WhatsApp approval, in pages
/// (`PageSize`, default 50, at most 1000; `PageToken` is the offset), with Twilio's `meta`.
async fn list_approvals(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if !authenticated(&sim, &headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let page_size: usize = query.get("PageSize").and_then(|v| v.parse().ok()).unwrap_or(50).clamp(1, 1000);
    let offset: usize =
        query.get("PageToken").and_then(|v| v.strip_prefix("PA")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut approvals: Vec<(String, Approval)> =
        sim.approvals.lock().expect("approvals lock").iter().map(|(sid, a)| (sid.clone(), a.clone())).collect();
    approvals.sort_by(|a, b| a.0.cmp(&b.0));
    let base = "https://content.twilio.com/v1/ContentAndApprovals";
    let contents: Vec<serde_json::Value> = approvals
        .iter()
        .skip(offset)
        .take(page_size)
        .map(|(sid, approval)| {
            json!({
                "sid": sid,
                "account_sid": sim.config.account_sid,
                "friendly_name": approval.name,
                "language": "en",
                "variables": {},
                "types": {},
                "approval_requests": approval.json(),
            })
        })
        .collect();
    let next = (offset + page_size < approvals.len())
        .then(|| format!("{base}?PageSize={page_size}&PageToken=PA{}", offset + page_size));
    Json(json!({
        "contents": contents,
        "meta": {
            "page": offset / page_size,
            "page_size": page_size,
            "first_page_url": format!("{base}?PageSize={page_size}&Page=0"),
            "previous_page_url": null,
            "next_page_url": next,
            "url": format!("{base}?PageSize={page_size}&PageToken=PA{offset}"),
            "key": "contents",
        },
    }))
    .into_response()
}

/// Test control: Meta's decision on a content (`approved`, `rejected`, `paused`, `disabled`...).
async fn set_approval(State(sim): State<Arc<Sim>>, Path(sid): Path<String>, Json(change): Json<Approval>) -> Response {
    let mut approvals = sim.approvals.lock().expect("approvals lock");
    let approval = approvals.entry(sid).or_insert_with(|| change.clone());
    approval.status = change.status;
    approval.rejection_reason = change.rejection_reason;
    Json(approval.json()).into_response()
}

/// Twilio's error response.
fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    let body = json!({
        "code": code,
        "message": message,
        "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
        "status": status.as_u16(),
    });
    (status, Json(body)).into_response()
}

fn authenticated(sim: &Sim, headers: &HeaderMap) -> bool {
    let Some(encoded) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Basic "))
    else {
        return false;
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let expected = format!("{}:{}", sim.config.account_sid, sim.config.auth_token);
    decoded == expected.as_bytes()
}

async fn create_message(
    State(sim): State<Arc<Sim>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !authenticated(&sim, &headers) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    if account_sid != sim.config.account_sid {
        return twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{account_sid}/Messages.json was not found"),
        );
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let Some(to) = get("To") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21604, "A 'To' phone number is required.");
    };
    let from = get("From");
    let service = get("MessagingServiceSid");
    if from.is_none() && service.is_none() {
        return twilio_error(StatusCode::BAD_REQUEST, 21603, "A 'From' phone number is required.");
    }
    let media: Vec<&str> = params.iter().filter(|(k, _)| k == "MediaUrl").map(|(_, v)| v.as_str()).collect();
    if get("Body").is_none() && media.is_empty() && get("ContentSid").is_none() {
        return twilio_error(StatusCode::BAD_REQUEST, 21619, "A text message body or media urls must be specified.");
    }
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    let now = chrono::Utc::now();
    let date = now.to_rfc2822();
    let resource = json!({
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": get("Body").unwrap_or(""),
        "date_created": date,
        "date_sent": null,
        "date_updated": date,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from.unwrap_or(""),
        "messaging_service_sid": service,
        "num_media": media.len().to_string(),
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": if service.is_some() && from.is_none() { "accepted" } else { "queued" },
        "subresource_uris": { "media": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json") },
        "to": to,
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"),
    });
    let message = SimMessage { sid, account_sid, params: params.clone(), received_at: now.to_rfc3339() };
    sim.messages.lock().expect("messages lock").push(message);
    metrics::counter!("twilio_sim_messages_accepted_total").increment(1);
    (StatusCode::CREATED, Json(resource)).into_response()
}

async fn list_messages(State(sim): State<Arc<Sim>>) -> Json<Vec<SimMessage>> {
    Json(sim.messages.lock().expect("messages lock").clone())
}

/// The simulator.
pub struct TwilioSim;

impl Service for TwilioSim {
    const NAME: &'static str = SERVICE;
    type Config = Config;

    fn http_addr(config: &Config) -> SocketAddr {
        config.http_addr
    }

    async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        let sim = Arc::new(Sim { config, messages: Mutex::default(), approvals: Mutex::default() });
        let routes = Router::new()
            .route("/2010-04-01/Accounts/{account_sid}/Messages.json", post(create_message))
            .route("/v1/Content/{sid}/ApprovalRequests/whatsapp", post(submit_approval))
            .route("/v1/Content/{sid}/ApprovalRequests", get(fetch_approval))
            .route("/v1/ContentAndApprovals", get(list_approvals))
            .route("/sim/content/{sid}/approval", post(set_approval))
            .route("/sim/messages", get(list_messages))
            .with_state(sim);
        let health = Health::new();
        health.set_ready(true);
        let stopped = shutdown.clone();
        let worker = async move {
            stopped.cancelled().await;
            Ok(())
        };
        wa_platform::service::run_until_stopped(SERVICE, listener, routes, health, shutdown, worker).await
    }
}

/// Binds the HTTP listener (port 0 picks a free one).
pub async fn bind(config: Config) -> anyhow::Result<Bound<TwilioSim>> {
    Bound::bind(config).await
}

/// Binds and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    wa_platform::service::run::<TwilioSim>(config, shutdown).await
}
