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
//! - The Content API: content created, fetched, updated, deleted and listed (`/v1/Content`,
//!   every content type), WhatsApp approval requests with their category
//!   (`POST /v1/Content/{sid}/ApprovalRequests/whatsapp`, status `received`;
//!   `GET /v1/Content/{sid}/ApprovalRequests`) and the paged `GET /v1/ContentAndApprovals`, in
//!   Twilio's shapes; tests play Meta's decisions and re-categorizations with
//!   `POST /sim/content/{sid}/approval` (`{"status": "approved"}`, `{"category": "MARKETING"}`).
//!   A message whose `ContentSid` the account does not hold is refused with 21655.
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
mod config;
mod content;
mod control;
mod media;
mod messages;

pub use behaviour::{Behaviour, Fault};
pub use config::Config;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde::Serialize;
use serde_json::json;
use tokio::net::TcpListener;
use wa_platform::http::Health;
use wa_platform::service::{Bound, Service};
use wa_platform::CancellationToken;

use crate::behaviour::{Injected, RateLimits, Windows};
use crate::content::Approval;

/// The service name.
pub const SERVICE: &str = "twilio-sim";

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
    /// The account's content, by Content SID.
    contents: Mutex<std::collections::BTreeMap<String, content::StoredContent>>,
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
pub(crate) struct Stats {
    /// Errors and dropped connections injected, per endpoint.
    faults_injected: HashMap<String, u64>,
    /// Messages refused with 429 / 20429.
    rate_limited: u64,
    /// Messages accepted.
    messages: u64,
}

impl Sim {
    pub(crate) fn behaviour(&self) -> Behaviour {
        self.behaviour.lock().expect("behaviour lock").clone()
    }

    /// Applies `endpoint`'s faults: waits its latency, then says what to do.
    pub(crate) async fn inject(&self, endpoint: &str) -> Injected {
        let fault = self.behaviour.lock().expect("behaviour lock").faults.get(endpoint).cloned();
        let Some(fault) = fault else {
            return Injected::None;
        };
        if fault.latency_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(fault.latency_ms)).await;
        }
        let injected = fault.decide();
        if injected != Injected::None {
            metrics::counter!(wa_platform::metrics::SIM_FAULTS_INJECTED, "endpoint" => endpoint.to_owned())
                .increment(1);
            *self.stats.lock().expect("stats lock").faults_injected.entry(endpoint.to_owned()).or_default() += 1;
        }
        injected
    }
}

/// Twilio's error for an injected status.
pub(crate) fn injected_error(status: u16) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match status.as_u16() {
        429 => twilio_error(status, 20429, "Too Many Requests"),
        500 => twilio_error(status, 20500, "Internal Server Error"),
        _ => twilio_error(status, 20503, "Service Unavailable"),
    }
}

/// A response whose body fails at once: the client sees the connection drop.
pub(crate) fn dropped_connection() -> Response {
    let failing = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("connection dropped by fault injection"))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(failing))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
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

pub(crate) fn authenticated(sim: &Sim, headers: &HeaderMap) -> bool {
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
            contents: Mutex::default(),
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
            .route(
                "/2010-04-01/Accounts/{account_sid}/Messages.json",
                post(messages::create_message).get(messages::list_messages_api),
            )
            .route("/v1/Content", post(content::create_content).get(content::list_content))
            .route(
                "/v1/Content/{sid}",
                get(content::fetch_content).put(content::update_content).delete(content::delete_content),
            )
            .route("/v1/Content/{sid}/ApprovalRequests/whatsapp", post(content::submit_approval))
            .route("/v1/Content/{sid}/ApprovalRequests", get(content::fetch_approval))
            .route("/v1/ContentAndApprovals", get(content::list_approvals))
            .route("/sim/content/{sid}/approval", post(content::set_approval))
            .route("/sim/messages", get(control::list_messages))
            .route("/sim/behaviour", get(control::get_behaviour).patch(control::patch_behaviour))
            .route("/sim/inbound", post(control::post_inbound))
            .route("/sim/stats", get(control::get_stats))
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
