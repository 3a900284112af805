//! Session-window: the 24-hour customer-service window, the 72-hour free entry point and
//! opt-out, as a partitioned, restorable projection of message events.
//!
//! Reads `wa.inbound.v1`, `wa.outbound.dispatched.v1` and `wa.outbound.requested.v1` in one
//! consumer group; answers every request with a verdict on `wa.outbound.checked.v1`; keeps each
//! conversation's state on the compacted `wa.sessions.v1` and announces window changes on
//! `wa.session.events.v1`. `session-window rebuild` recomputes the state from the message topics.

mod events;
mod facts;
mod projector;
pub mod rebuild;
pub mod session;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio::net::TcpListener;
use uuid::Uuid;
use wa_platform::config::{self, ConfigError, EnvVar, KafkaConfig};
use wa_platform::http::{Health, Problem};
use wa_platform::service::{Bound, Service};
use wa_platform::CancellationToken;

use crate::projector::{Projector, Shared};
use crate::session::{Content, Keywords, OptOutScope};

/// The service name.
pub const SERVICE: &str = "session-window";

const SAFETY_MARGIN_MS: EnvVar = EnvVar {
    name: "SESSION_SAFETY_MARGIN_MS",
    default: Some("60000"),
    doc: "free-form sends are refused this long before the window closes, so they do not reach Twilio after it",
};
const EXPIRING_LEAD_MS: EnvVar = EnvVar {
    name: "SESSION_EXPIRING_LEAD_MS",
    default: Some("3600000"),
    doc: "how long before a window closes the window_expiring event is published (agents can still reply)",
};
const OPT_OUT_KEYWORDS: EnvVar = EnvVar {
    name: "SESSION_OPT_OUT_KEYWORDS",
    default: Some(session::DEFAULT_OPT_OUT),
    doc: "comma-separated words that opt a customer out when they are a message's whole text (any case, punctuation ignored)",
};
const OPT_IN_KEYWORDS: EnvVar = EnvVar {
    name: "SESSION_OPT_IN_KEYWORDS",
    default: Some(session::DEFAULT_OPT_IN),
    doc: "comma-separated words that opt a customer back in",
};
const OPT_OUT_SCOPE: EnvVar = EnvVar {
    name: "SESSION_OPT_OUT_SCOPE",
    default: Some("marketing"),
    doc: "what an opt-out stops: marketing (marketing templates) or all_business_initiated (every template); replies inside the window always go",
};
const COMMIT_INTERVAL_MS: EnvVar = EnvVar {
    name: "SESSION_COMMIT_INTERVAL_MS",
    default: Some("200"),
    doc: "how often input offsets are committed, once everything they caused is acknowledged",
};
const ADVERTISED_URL: EnvVar = EnvVar {
    name: "SESSION_ADVERTISED_URL",
    default: None,
    doc: "this instance's HTTP base URL as clients reach it (default: http:// and the bound address); an instance that does not own a conversation points there",
};
const TIMER_INTERVAL_MS: EnvVar = EnvVar {
    name: "SESSION_TIMER_INTERVAL_MS",
    default: Some("1000"),
    doc: "how often due window notices are looked for (their time is the deadline, not the tick)",
};

const QUERY_TOKENS: EnvVar = EnvVar {
    name: "SESSION_QUERY_TOKENS",
    default: None,
    doc: "comma-separated bearer tokens for the session query API (GET /v1/conversations/{id}/session); unset: open, allowed only on a loopback HTTP_ADDR (or with SESSION_ALLOW_UNAUTHENTICATED=true)",
};
const ALLOW_UNAUTHENTICATED: EnvVar = EnvVar {
    name: "SESSION_ALLOW_UNAUTHENTICATED",
    default: Some("false"),
    doc: "true lets session-window serve the session query without SESSION_QUERY_TOKENS off loopback; otherwise it refuses to start",
};

/// Session-window configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
    /// Refuse free-form sends this long before the window closes.
    pub safety_margin: Duration,
    /// Publish `window_expiring` this long before the window closes.
    pub expiring_lead: Duration,
    /// Consent keywords.
    pub keywords: Keywords,
    /// What an opt-out stops.
    pub opt_out_scope: OptOutScope,
    /// How often offsets are committed.
    pub commit_interval: Duration,
    /// How often due notices are looked for.
    pub timer_interval: Duration,
    /// This instance's HTTP base URL for others; `None`: `http://` and the bound address.
    pub advertised_url: Option<String>,
    /// Outputs made to fail on purpose (tests); none by default.
    pub delivery_faults: wa_platform::kafka::DeliveryFaults,
    /// Bearer tokens for the session query; empty means open (loopback only, or allowed).
    pub query_tokens: Vec<String>,
}

impl Config {
    /// Every variable session-window reads (beyond telemetry's).
    pub const ENV: &'static [EnvVar] = &[
        config::KAFKA_BOOTSTRAP_SERVERS,
        config::WA_TOPIC_PREFIX,
        config::KAFKA_FETCH_WAIT_MS,
        config::KAFKA_SECURITY_PROTOCOL,
        config::KAFKA_SASL_MECHANISM,
        config::KAFKA_SASL_USERNAME,
        config::KAFKA_SASL_PASSWORD,
        config::KAFKA_SSL_CA_LOCATION,
        config::KAFKA_GROUP_INSTANCE_ID,
        SAFETY_MARGIN_MS,
        EXPIRING_LEAD_MS,
        OPT_OUT_KEYWORDS,
        OPT_IN_KEYWORDS,
        OPT_OUT_SCOPE,
        COMMIT_INTERVAL_MS,
        TIMER_INTERVAL_MS,
        ADVERTISED_URL,
        QUERY_TOKENS,
        ALLOW_UNAUTHENTICATED,
    ];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8081";

    /// The defaults, with this address and broker.
    pub fn new(http_addr: SocketAddr, kafka: KafkaConfig) -> Self {
        Self {
            http_addr,
            kafka,
            safety_margin: Duration::from_secs(60),
            expiring_lead: Duration::from_secs(3600),
            keywords: Keywords::defaults(),
            opt_out_scope: OptOutScope::Marketing,
            commit_interval: Duration::from_millis(200),
            timer_interval: Duration::from_secs(1),
            advertised_url: None,
            delivery_faults: wa_platform::kafka::DeliveryFaults::default(),
            query_tokens: Vec::new(),
        }
    }

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        let keywords =
            Keywords::new(&config::list(&OPT_OUT_KEYWORDS), &config::list(&OPT_IN_KEYWORDS)).map_err(|err| {
                ConfigError {
                    name: OPT_IN_KEYWORDS.name,
                    value: config::var_or(&OPT_IN_KEYWORDS),
                    reason: err.to_string(),
                }
            })?;
        let millis = |var: &EnvVar| config::parse::<u64>(var).map(Duration::from_millis);
        let http_addr = config::http_addr(Self::DEFAULT_HTTP_ADDR)?;
        let query_tokens = config::list(&QUERY_TOKENS);
        config::require_tokens_off_loopback(http_addr, &query_tokens, &QUERY_TOKENS, &ALLOW_UNAUTHENTICATED)?;
        Ok(Self {
            http_addr,
            kafka: KafkaConfig::from_env()?,
            safety_margin: millis(&SAFETY_MARGIN_MS)?,
            expiring_lead: millis(&EXPIRING_LEAD_MS)?,
            keywords,
            opt_out_scope: config::parse(&OPT_OUT_SCOPE)?,
            commit_interval: millis(&COMMIT_INTERVAL_MS)?.max(Duration::from_millis(10)),
            timer_interval: millis(&TIMER_INTERVAL_MS)?.max(Duration::from_millis(10)),
            advertised_url: config::var(ADVERTISED_URL.name).map(|url| url.trim_end_matches('/').to_owned()),
            delivery_faults: wa_platform::kafka::DeliveryFaults::default(),
            query_tokens,
        })
    }

    pub(crate) fn lead_millis(&self) -> i64 {
        i64::try_from(self.expiring_lead.as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn safety_margin_millis(&self) -> i64 {
        i64::try_from(self.safety_margin.as_millis()).unwrap_or(i64::MAX)
    }
}

/// The session-window service.
pub struct SessionWindow;

struct QueryState {
    shared: Arc<Shared>,
    margin_millis: i64,
    own_url: String,
}

/// `GET /v1/conversations/{id}/session`: the conversation's state, from the instance that owns
/// its partition; another instance answers 421 with the partition and, once known, the owner's
/// URL for the same query.
async fn session_query(
    State(state): State<Arc<QueryState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Response> {
    let conversation = Uuid::parse_str(&id).map_err(|_| {
        let detail = format!("{id:?} is not a conversation id (a UUID)");
        Problem::new(StatusCode::BAD_REQUEST, "invalid-conversation-id", "invalid conversation id", detail)
            .into_response()
    })?;
    let key = conversation.to_string();
    let Some(partitions) = state.shared.partitions.get().copied() else {
        let detail = "not connected to the broker yet";
        return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "starting", detail).into_response());
    };
    let partition = wa_platform::topics::partition_for_key(key.as_bytes(), partitions);
    let stores = state.shared.stores.lock().expect("stores lock");
    let Some(store) = stores.get(&partition) else {
        if state.shared.restoring.lock().expect("restoring lock").contains(&partition) {
            let detail = format!("partition {partition} is being restored here; ask again shortly");
            return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "restoring", "restoring", detail).into_response());
        }
        let owner = state
            .shared
            .owners
            .lock()
            .expect("owners lock")
            .get(&partition)
            .filter(|url| **url != state.own_url)
            .cloned();
        let detail = match &owner {
            Some(url) => format!("conversation {key} is on partition {partition}, served by {url}"),
            None => format!("conversation {key} is on partition {partition}, which this instance does not own"),
        };
        // RFC 9457 with two extension members, so a client can follow the owner.
        let body = serde_json::json!({
            "type": "https://wachannel.dev/problems/not-owned",
            "title": "owned by another instance",
            "status": 421,
            "detail": detail,
            "partition": partition,
            "owner": owner.map(|url| format!("{url}/v1/conversations/{key}/session")),
        });
        let content_type = [(axum::http::header::CONTENT_TYPE, "application/problem+json")];
        return Err((StatusCode::MISDIRECTED_REQUEST, content_type, body.to_string()).into_response());
    };
    let session = store.get(&conversation).copied();
    let now = wa_platform::now_millis();
    let free_form =
        session::check(session.as_ref(), Content::FreeForm, now, state.margin_millis, OptOutScope::Marketing);
    let snapshot = store::snapshot(&conversation, &session.unwrap_or_default());
    Ok(Json(serde_json::json!({
        "conversation_id": key,
        "partition": partition,
        "known": session.is_some(),
        "last_customer_message_at": snapshot.last_customer_message_at,
        "window_expires_at": snapshot.window_expires_at,
        "entry_point_expires_at": snapshot.entry_point_expires_at,
        "opted_out": snapshot.opted_out,
        "opted_out_at": snapshot.opted_out_at,
        "opted_in_at": snapshot.opted_in_at,
        "notified": snapshot.notified,
        "free_form_allowed": free_form.is_ok(),
        "refusal_reason": free_form.err().map(session::Refusal::code),
    })))
}

impl Service for SessionWindow {
    const NAME: &'static str = SERVICE;
    type Config = Config;

    fn http_addr(config: &Config) -> SocketAddr {
        config.http_addr
    }

    /// Projects and checks until `shutdown`.
    async fn run(listener: TcpListener, mut config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        let health = Health::new();
        let shared = Arc::new(Shared::default());
        let bound = listener.local_addr()?;
        let own_url = config.advertised_url.get_or_insert_with(|| format!("http://{bound}")).clone();
        let query = QueryState { shared: shared.clone(), margin_millis: config.safety_margin_millis(), own_url };
        let tokens = Arc::new(config.query_tokens.clone());
        let routes = Router::new()
            .route("/v1/conversations/{id}/session", get(session_query))
            .route_layer(axum::middleware::from_fn_with_state(tokens, wa_platform::http::require_bearer))
            .with_state(Arc::new(query));
        let stop = shutdown.clone();
        let ready = health.clone();
        let worker = async move {
            let kafka = config.kafka.clone();
            wa_platform::kafka::wait_for_broker(&kafka, Duration::from_secs(60)).await?;
            let source = format!("wachannel/{SERVICE}");
            let producer =
                wa_platform::kafka::EventProducer::new(&kafka, &source, wa_platform::kafka::DELIVERY_TIMEOUT)?
                    .with_faults(config.delivery_faults.clone());
            let owners_stop = stop.child_token();
            let owners = projector::follow_owners(&kafka, shared.clone(), owners_stop.clone()).await?;
            let probe = tokio::spawn(wa_platform::kafka::watch_broker(
                kafka.clone(),
                wa_platform::topics::INBOUND,
                ready.clone(),
                owners_stop.clone(),
            ));
            let projector = Projector::start(config, producer.clone(), ready, shared).await?;
            let result = projector.run(stop).await;
            producer.flush(Duration::from_secs(10));
            owners_stop.cancel();
            owners.await??;
            probe.await??;
            result
        };
        wa_platform::service::run_until_stopped(SERVICE, listener, routes, health, shutdown, worker).await
    }
}

/// Binds the HTTP listener (port 0 picks a free one).
pub async fn bind(config: Config) -> anyhow::Result<Bound<SessionWindow>> {
    Bound::bind(config).await
}

/// Binds and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    wa_platform::service::run::<SessionWindow>(config, shutdown).await
}
