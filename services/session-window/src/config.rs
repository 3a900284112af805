//! Session-window's configuration: the variables it reads and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use wa_platform::config::{self, ConfigError, EnvVar, KafkaConfig};

use crate::session::{self, Keywords, OptOutScope};

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
    /// The clock windows and notices are decided by: the system's (tests hold one still).
    pub clock: wa_platform::clock::Clock,
}

impl Config {
    /// Every variable session-window reads beyond the broker connection's ([`KafkaConfig::ENV`]) and
    /// telemetry's.
    pub const ENV: &'static [EnvVar] = &[
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
            clock: wa_platform::clock::Clock::system(),
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
            clock: wa_platform::clock::Clock::system(),
        })
    }

    pub(crate) fn lead_millis(&self) -> i64 {
        i64::try_from(self.expiring_lead.as_millis()).unwrap_or(i64::MAX)
    }

    pub(crate) fn safety_margin_millis(&self) -> i64 {
        i64::try_from(self.safety_margin.as_millis()).unwrap_or(i64::MAX)
    }
}
