//! A Twilio simulator for tests and the local run, speaking Twilio's wire formats.
//!
//! - `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`: the Messages API. Form body,
//!   HTTP Basic auth (account SID + auth token), Twilio's message resource JSON (201) with an
//!   `SM…` sid, and Twilio's error JSON (`code`, `message`, `more_info`, `status`).
//! - `GET` on the same URL: the account's messages, newest first, filtered by `To`, `From`,
//!   `DateSent`, `DateSent<` and `DateSent>` (by day, GMT) and paged as Twilio pages
//!   (`PageSize`, `Page`, `PageToken`, `next_page_uri`).
//! - `GET /sim/messages`: every accepted message, for assertions, with all its form
//!   parameters.
//! - The Content API's WhatsApp approvals: `POST /v1/Content/{sid}/ApprovalRequests/whatsapp`
//!   (submit; status `received`), `GET /v1/Content/{sid}/ApprovalRequests` and the paged
//!   `GET /v1/ContentAndApprovals`, in Twilio's shapes; tests move a template through Meta's decisions with
//!   `POST /sim/content/{sid}/approval` (`{"status": "approved"}`, `"paused"`, ...).
//!
//! - Status callbacks to each message's `StatusCallback`, signed with `X-Twilio-Signature`:
//!   `queued`, `sent`, `delivered`, `read`; or `undelivered`/`failed` with an error code.
//! - `POST /sim/inbound`: a customer's WhatsApp message, posted to ingress as a signed webhook;
//!   it also opens the customer's 24-hour window in the simulator.
//! - `GET /sim/stats`: faults injected per endpoint and messages rate-limited.
//! - `GET`/`PATCH /sim/behaviour`: per-sender rate limit (429 with 20429 beyond it), the
//!   window rule (63016), undeliverable recipients, callback delay, reordering and duplicates,
//!   and faults per endpoint (error rate, latency, dropped connections), switchable at run time.
//! - `HEAD`/`GET /sim/media/{name}?type=…&size=…`: media files of a chosen type and size, for
//!   dispatch's media check (see `media.rs`).
//! - Customers' media (`"media": [{"content_type": …, "size": …}]` on `POST /sim/inbound`):
//!   `GET`/`DELETE /2010-04-01/Accounts/{sid}/Messages/{sid}/Media/{sid}` behind Basic auth, the
//!   `GET` redirecting to the bytes as Twilio's does.
//!
//! Production never talks to it: dispatch's `TWILIO_API_BASE_URL` points at api.twilio.com.

mod behaviour;
mod callbacks;
mod media;

pub use behaviour::{Behaviour, Fault};

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
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

use crate::behaviour::{Injected, RateLimits, Windows};
use crate::callbacks::{Fate, Plan};

/// The service name.
pub const SERVICE: &str = "twilio-sim";

const INBOUND_WEBHOOK_URL: EnvVar = EnvVar {
    name: "SIM_INBOUND_WEBHOOK_URL",
    default: Some("http://127.0.0.1:8080/twilio/inbound"),
    doc: "where POST /sim/inbound delivers customers' messages: ingress's webhook URL",
};

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// The account it accepts.
    pub account_sid: String,
    /// The account's auth token.
    pub auth_token: String,
    /// Where `POST /sim/inbound` posts webhooks unless the request names a URL.
    pub inbound_webhook_url: String,
}

impl Config {
    /// Every variable the simulator reads.
    pub const ENV: &'static [EnvVar] = &[config::TWILIO_ACCOUNT_SID, config::TWILIO_AUTH_TOKEN, INBOUND_WEBHOOK_URL];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8090";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        Ok(Self {
            http_addr: config::http_addr(Self::DEFAULT_HTTP_ADDR)?,
            account_sid: config::var_or(&config::TWILIO_ACCOUNT_SID),
            auth_token: config::var_or(&config::TWILIO_AUTH_TOKEN),
            inbound_webhook_url: config::var_or(&INBOUND_WEBHOOK_URL),
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
    /// Where the message ends: `read`, `undelivered` or `failed`.
    pub fate: String,
    /// Each status callback sent, with the HTTP status it got (0: not delivered).
    pub callbacks: Vec<(String, u16)>,
    /// How the API answered the request that created it: `201`, or the injected fault
    /// (`error_after_create`: a 500; `dropped`: no answer).
    pub answered: String,
    /// The message resource, as the API returns it (its status follows the callbacks).
    pub resource: serde_json::Value,
}

pub(crate) struct Sim {
    config: Config,
    messages: Mutex<Vec<SimMessage>>,
    /// WhatsApp approval of each Content SID.
    approvals: Mutex<HashMap<String, Approval>>,
    behaviour: Mutex<Behaviour>,
    stats: Mutex<Stats>,
    rate_limits: Mutex<RateLimits>,
    windows: Mutex<Windows>,
    client: reqwest::Client,
    /// Media the simulated customers sent, by media sid (`ME…`): content type and bytes.
    customer_media: Mutex<HashMap<String, (String, Vec<u8>)>>,
    /// This simulator's base URL, for the media URLs it hands out.
    base_url: String,
}

/// What this simulator did, for assertions (`GET /sim/stats`).
#[derive(Debug, Clone, Default, Serialize)]
struct Stats {
    /// Errors and dropped connections injected, per endpoint.
    faults_injected: HashMap<String, u64>,
    /// Messages refused with 429 / 20429.
    rate_limited: u64,
    /// Messages accepted.
    messages: u64,
}

impl Sim {
    fn behaviour(&self) -> Behaviour {
        self.behaviour.lock().expect("behaviour lock").clone()
    }

    /// Applies `endpoint`'s faults: waits its latency, then says what to do.
    async fn inject(&self, endpoint: &str) -> Injected {
        let fault = self.behaviour.lock().expect("behaviour lock").faults.get(endpoint).cloned();
        let Some(fault) = fault else {
            return Injected::None;
        };
        if fault.latency_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(fault.latency_ms)).await;
        }
        let injected = fault.decide();
        if injected != Injected::None {
            metrics::counter!("twilio_sim_faults_injected_total", "endpoint" => endpoint.to_owned()).increment(1);
            *self.stats.lock().expect("stats lock").faults_injected.entry(endpoint.to_owned()).or_default() += 1;
        }
        injected
    }
}

/// Twilio's error for an injected status.
fn injected_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match status.as_u16() {
        429 => twilio_error(status, 20429, "Too Many Requests"),
        500 => twilio_error(status, 20500, "Internal Server Error"),
        _ => twilio_error(status, 20503, "Service Unavailable"),
    }
}

/// A response whose body fails at once: the client sees the connection drop.
fn dropped_connection() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped by fault injection"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(failing))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
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

/// What every Content API call goes through first: injected faults, then authentication.
async fn content_prelude(sim: &Sim, headers: &HeaderMap) -> Option<Response> {
    match sim.inject("content").await {
        Injected::Error(status) => return Some(injected_error(status)),
        Injected::ErrorAfterCreate => return Some(injected_error(500)),
        Injected::Drop => return Some(dropped_connection()),
        Injected::None => {}
    }
    (!authenticated(sim, headers)).then(|| twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"))
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
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
    }
    if !wa_twilio::content::is_content_sid(&sid) {
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
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
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
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
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
pub(crate) fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
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
    if decoded == expected.as_bytes() {
        return true;
    }
    let behaviour = sim.behaviour.lock().expect("behaviour lock");
    behaviour.api_keys.iter().any(|(sid, secret)| decoded == format!("{sid}:{secret}").as_bytes())
}

/// Twilio's answer to a Messages API call with wrong credentials or another account's path.
pub(crate) fn messages_account(sim: &Sim, headers: &HeaderMap, account_sid: &str) -> Option<Response> {
    if !authenticated(sim, headers) {
        return Some(twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"));
    }
    (account_sid != sim.config.account_sid).then(|| {
        twilio_error(
            StatusCode::NOT_FOUND,
            20404,
            &format!("The requested resource /2010-04-01/Accounts/{account_sid}/Messages.json was not found"),
        )
    })
}

async fn create_message(
    State(sim): State<Arc<Sim>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let injected = sim.inject("messages").await;
    if let Injected::Error(status) = injected {
        return injected_error(status);
    }
    if let Some(refused) = messages_account(&sim, &headers, &account_sid) {
        return refused;
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
    let behaviour = sim.behaviour();
    if let Some(code) = behaviour.refuse.get(to) {
        let message = match code {
            21211 => format!("The 'To' number {to} is not a valid phone number."),
            21610 => "Attempt to send to unsubscribed recipient".to_owned(),
            63014 => "Message could not be delivered because the user blocked the business".to_owned(),
            _ => format!("The message to {to} was refused."),
        };
        return twilio_error(StatusCode::BAD_REQUEST, *code, &message);
    }
    let sender = service.or(from).unwrap_or_default();
    let now = std::time::Instant::now();
    if !sim.rate_limits.lock().expect("rate limits lock").try_acquire(sender, behaviour.rate_limit_per_sender, now) {
        metrics::counter!("twilio_sim_rate_limited_total").increment(1);
        sim.stats.lock().expect("stats lock").rate_limited += 1;
        return twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
    }
    let free_form = get("ContentSid").is_none();
    let fate = if behaviour.enforce_window
        && free_form
        && !sim.windows.lock().expect("windows lock").open(from.unwrap_or_default(), to, now)
    {
        Fate::Failed(63016)
    } else if let Some(code) = behaviour.undeliverable.get(to) {
        Fate::Undelivered(*code)
    } else {
        Fate::Read
    };
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    let now = chrono::Utc::now();
    // Twilio's dates are RFC 2822 in GMT ("+0000"), whole seconds.
    let date = now.format("%a, %d %b %Y %H:%M:%S +0000").to_string();
    let resource = json!({
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": get("Body").unwrap_or(""),
        "date_created": date,
        // The simulator hands a message to WhatsApp at once.
        "date_sent": date,
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
    let message = SimMessage {
        sid: sid.clone(),
        account_sid: account_sid.clone(),
        params: params.clone(),
        received_at: now.to_rfc3339(),
        fate: fate.final_status().to_owned(),
        callbacks: Vec::new(),
        answered: match injected {
            Injected::ErrorAfterCreate => "error_after_create",
            Injected::Drop => "dropped",
            _ => "201",
        }
        .to_owned(),
        resource: resource.clone(),
    };
    sim.messages.lock().expect("messages lock").push(message);
    sim.stats.lock().expect("stats lock").messages += 1;
    metrics::counter!("twilio_sim_messages_accepted_total").increment(1);
    if let Some(url) = get("StatusCallback") {
        let mut identity = vec![
            ("MessageSid".to_owned(), sid.clone()),
            ("SmsSid".to_owned(), sid.clone()),
            ("AccountSid".to_owned(), account_sid),
            ("From".to_owned(), from.unwrap_or_default().to_owned()),
            ("To".to_owned(), to.to_owned()),
        ];
        if let Some(service) = service {
            identity.push(("MessagingServiceSid".to_owned(), service.to_owned()));
        }
        let plan = Plan { url: url.to_owned(), identity, fate };
        let sim = sim.clone();
        tokio::spawn(async move {
            let status_of = |sim: &Sim, status: &str| {
                let mut messages = sim.messages.lock().expect("messages lock");
                if let Some(message) = messages.iter_mut().find(|m| m.sid == sid) {
                    message.resource["status"] = json!(status);
                }
            };
            let results = callbacks::send(&sim.client, &sim.config.auth_token, &plan, &behaviour, |status| {
                status_of(&sim, status)
            })
            .await;
            let mut messages = sim.messages.lock().expect("messages lock");
            if let Some(message) = messages.iter_mut().find(|m| m.sid == sid) {
                message.callbacks = results;
            }
        });
    }
    match injected {
        Injected::Drop => dropped_connection(),
        Injected::ErrorAfterCreate => injected_error(500),
        _ => (StatusCode::CREATED, Json(resource)).into_response(),
    }
}

/// The day of a `DateSent` filter value: `YYYY-MM-DD`, or a date-time (Twilio's helper
/// libraries send ISO 8601), whose day counts.
fn filter_day(value: &str) -> Option<chrono::NaiveDate> {
    let value = value.trim();
    chrono::NaiveDate::parse_from_str(value.get(..10)?, "%Y-%m-%d").ok()
}

/// The day (GMT) of an RFC 2822 date of a message resource.
fn resource_day(value: &serde_json::Value) -> Option<chrono::NaiveDate> {
    let text = value.as_str()?;
    chrono::DateTime::parse_from_rfc2822(text).ok().map(|at| at.with_timezone(&chrono::Utc).date_naive())
}

/// `GET /2010-04-01/Accounts/{AccountSid}/Messages.json`: the account's messages, newest
/// first, filtered by `To`, `From` and `DateSent` (by day; `DateSent>` on or after,
/// `DateSent<` on or before), in pages of `PageSize` (default 50, at most 1000) with
/// `PageToken` (the offset) and Twilio's page fields.
async fn list_messages_api(
    State(sim): State<Arc<Sim>>,
    Path(account_sid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match sim.inject("messages_list").await {
        Injected::Error(status) => return injected_error(status),
        Injected::ErrorAfterCreate => return injected_error(500),
        Injected::Drop => return dropped_connection(),
        Injected::None => {}
    }
    if let Some(refused) = messages_account(&sim, &headers, &account_sid) {
        return refused;
    }
    let mut days = Vec::new();
    for (name, compare) in [
        ("DateSent", std::cmp::Ordering::Equal),
        ("DateSent>", std::cmp::Ordering::Greater),
        ("DateSent<", std::cmp::Ordering::Less),
    ] {
        if let Some(value) = query.get(name) {
            let Some(day) = filter_day(value) else {
                return twilio_error(StatusCode::BAD_REQUEST, 20001, &format!("Invalid {name}: {value}"));
            };
            days.push((compare, day));
        }
    }
    let page_size: usize = query.get("PageSize").and_then(|v| v.parse().ok()).unwrap_or(50).clamp(1, 1000);
    let offset: usize =
        query.get("PageToken").and_then(|v| v.strip_prefix("PA")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let wanted =
        |field: &str, value: &serde_json::Value| query.get(field).is_none_or(|want| value.as_str() == Some(want));
    let matching: Vec<serde_json::Value> = sim
        .messages
        .lock()
        .expect("messages lock")
        .iter()
        .rev()
        .map(|message| message.resource.clone())
        .filter(|resource| wanted("To", &resource["to"]) && wanted("From", &resource["from"]))
        .filter(|resource| {
            let sent = resource_day(&resource["date_sent"]);
            days.iter().all(|(compare, day)| {
                sent.is_some_and(|sent| match compare {
                    std::cmp::Ordering::Equal => sent == *day,
                    std::cmp::Ordering::Greater => sent >= *day,
                    std::cmp::Ordering::Less => sent <= *day,
                })
            })
        })
        .collect();
    let page: Vec<serde_json::Value> = matching.iter().skip(offset).take(page_size).cloned().collect();
    let base = format!("/2010-04-01/Accounts/{account_sid}/Messages.json");
    let filters: String = {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for name in ["To", "From", "DateSent", "DateSent<", "DateSent>"] {
            if let Some(value) = query.get(name) {
                serializer.append_pair(name, value);
            }
        }
        serializer.append_pair("PageSize", &page_size.to_string());
        serializer.finish()
    };
    let next = (offset + page_size < matching.len())
        .then(|| format!("{base}?{filters}&Page={}&PageToken=PA{}", offset / page_size + 1, offset + page_size));
    Json(json!({
        "messages": page,
        "end": (offset + page.len()).saturating_sub(1),
        "first_page_uri": format!("{base}?{filters}&Page=0"),
        "next_page_uri": next,
        "page": offset / page_size,
        "page_size": page_size,
        "previous_page_uri": null,
        "start": offset,
        "uri": format!("{base}?{filters}&Page={}&PageToken=PA{offset}", offset / page_size),
    }))
    .into_response()
}

async fn list_messages(State(sim): State<Arc<Sim>>) -> Json<Vec<SimMessage>> {
    Json(sim.messages.lock().expect("messages lock").clone())
}

async fn get_stats(State(sim): State<Arc<Sim>>) -> Json<Stats> {
    Json(sim.stats.lock().expect("stats lock").clone())
}

async fn get_behaviour(State(sim): State<Arc<Sim>>) -> Json<Behaviour> {
    Json(sim.behaviour())
}

/// Replaces the fields the JSON object names; 422 with the reason for anything else.
async fn patch_behaviour(State(sim): State<Arc<Sim>>, Json(patch): Json<serde_json::Value>) -> Response {
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
struct InboundRequest {
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
async fn post_inbound(State(sim): State<Arc<Sim>>, Json(request): Json<InboundRequest>) -> Response {
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

/// The simulator.
pub struct TwilioSim;

impl Service for TwilioSim {
    const NAME: &'static str = SERVICE;
    type Config = Config;

    fn http_addr(config: &Config) -> SocketAddr {
        config.http_addr
    }

    async fn run(listener: TcpListener, config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        let sim = Arc::new(Sim {
            config,
            messages: Mutex::default(),
            approvals: Mutex::default(),
            behaviour: Mutex::default(),
            stats: Mutex::default(),
            rate_limits: Mutex::default(),
            windows: Mutex::default(),
            client: reqwest::Client::builder().timeout(std::time::Duration::from_secs(10)).build()?,
            customer_media: Mutex::default(),
            base_url: format!("http://{}", listener.local_addr()?),
        });
        let routes = Router::new()
            .route("/2010-04-01/Accounts/{account_sid}/Messages.json", post(create_message).get(list_messages_api))
            .route("/v1/Content/{sid}/ApprovalRequests/whatsapp", post(submit_approval))
            .route("/v1/Content/{sid}/ApprovalRequests", get(fetch_approval))
            .route("/v1/ContentAndApprovals", get(list_approvals))
            .route("/sim/content/{sid}/approval", post(set_approval))
            .route("/sim/messages", get(list_messages))
            .route("/sim/behaviour", get(get_behaviour).patch(patch_behaviour))
            .route("/sim/inbound", post(post_inbound))
            .route("/sim/stats", get(get_stats))
            .route("/sim/media/{name}", get(media::get).head(media::head))
            .route(
                "/2010-04-01/Accounts/{account_sid}/Messages/{message_sid}/Media/{media_sid}",
                get(media::customer_media).delete(media::delete_customer_media),
            )
            .route("/sim/media-bytes/{media_sid}", get(media::customer_media_bytes))
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
