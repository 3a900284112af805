//! Ingress's configuration: the variables it reads and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use wa_platform::config::{self, EnvVar, KafkaConfig};

use crate::media;

const PUBLIC_URL: EnvVar = EnvVar {
    name: "INGRESS_PUBLIC_URL",
    default: None,
    doc: "the public base URL Twilio calls (e.g. https://wa.example.com, or https://example.com/wa behind a proxy that strips /wa); signatures are checked against it. Unset: the request's Host (or X-Forwarded-* when trusted)",
};
const TRUST_FORWARDED: EnvVar = EnvVar {
    name: "INGRESS_TRUST_FORWARDED_HEADERS",
    default: Some("false"),
    doc: "true behind a reverse proxy that sets X-Forwarded-Proto and X-Forwarded-Host: the signed URL is rebuilt from them when INGRESS_PUBLIC_URL is unset. Never enable without such a proxy",
};
pub(crate) const EXTRA_AUTH_TOKENS: EnvVar = EnvVar {
    name: "TWILIO_PREVIOUS_AUTH_TOKENS",
    default: None,
    doc: "comma-separated older auth tokens still accepted on webhooks while a token rotation is under way",
};
const API_TOKENS: EnvVar = EnvVar {
    name: "INGRESS_API_TOKENS",
    default: None,
    doc: "comma-separated bearer tokens the CRM must present on /v1/outbound; unset: open, allowed only on a loopback HTTP_ADDR (or with INGRESS_ALLOW_UNAUTHENTICATED=true)",
};
const ALLOW_UNAUTHENTICATED: EnvVar = EnvVar {
    name: "INGRESS_ALLOW_UNAUTHENTICATED",
    default: Some("false"),
    doc: "true lets ingress serve /v1/outbound without INGRESS_API_TOKENS off loopback (behind a gateway that authenticates); otherwise it refuses to start",
};
const SENDERS: EnvVar = EnvVar {
    name: "INGRESS_SENDERS",
    default: None,
    doc: "comma-separated business WhatsApp senders this channel serves (whatsapp:+14155238886,...); webhooks to others are quarantined and CRM requests from others refused. Unset: any",
};
const PUBLISH_TIMEOUT_MS: EnvVar = EnvVar {
    name: "INGRESS_PUBLISH_TIMEOUT_MS",
    default: Some("5000"),
    doc: "how long a request waits for the broker's acknowledgement before answering 503 (Twilio gives up after 15 s)",
};
const MAX_IN_FLIGHT: EnvVar = EnvVar {
    name: "INGRESS_MAX_IN_FLIGHT",
    default: Some("256"),
    doc: "most publishes waiting for the broker at once; beyond it requests get 503 with Retry-After at once instead of queuing into the publish timeout",
};
const MAX_BODY_BYTES: EnvVar = EnvVar {
    name: "INGRESS_MAX_BODY_BYTES",
    default: Some("65536"),
    doc: "largest request body accepted; larger ones get 413",
};
const QUARANTINE_BUDGET: EnvVar = EnvVar {
    name: "INGRESS_QUARANTINE_BUDGET_BYTES_PER_MIN",
    default: Some("5242880"),
    doc: "most bytes of refused webhooks kept on the quarantine topic per minute (refilled continuously); beyond it they are refused without being kept, and counted. 0 keeps none",
};
const DEDUPE_HORIZON_HOURS: EnvVar = EnvVar {
    name: "INGRESS_DEDUPE_HORIZON_HOURS",
    default: Some("24"),
    doc: "how far back a MessageSid or request_id counts as already published (replayed from the topics at start)",
};
const DEDUPE_CAPACITY: EnvVar = EnvVar {
    name: "INGRESS_DEDUPE_CAPACITY",
    default: Some("2000000"),
    doc: "most ids remembered per topic within the horizon (about 60 bytes each); the oldest are forgotten first",
};

/// Ingress configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
    /// Public base URL Twilio calls; `None` means the request's own host.
    pub public_url: Option<String>,
    /// Whether `X-Forwarded-Proto`/`X-Forwarded-Host` name the public URL.
    pub trust_forwarded_headers: bool,
    /// The Twilio account whose webhooks are served (`AccountSid`).
    pub account_sid: String,
    /// Auth tokens accepted on webhook signatures: the current one first.
    pub auth_tokens: Vec<String>,
    /// Bearer tokens for the CRM API; empty means open.
    pub api_tokens: Vec<String>,
    /// Business senders served (normalized); empty means any.
    pub senders: Vec<String>,
    /// Bound on waiting for the broker per request.
    pub publish_timeout: Duration,
    /// Most publishes waiting for the broker at once (at least 1).
    pub max_in_flight: usize,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Most bytes of refused webhooks quarantined per minute.
    pub quarantine_budget_per_minute: u64,
    /// Where customers' media is stored (`MEDIA_STORE_URL`).
    pub media_store_url: String,
    /// Whether media is deleted at Twilio once stored.
    pub media_delete_at_twilio: bool,
    /// Basic-auth user and password for downloading media from Twilio.
    pub twilio_credentials: (String, String),
    /// How long a published id counts as a duplicate.
    pub dedupe_horizon: Duration,
    /// Most ids remembered per topic.
    pub dedupe_capacity: usize,
    /// Outputs made to fail on purpose (tests); none by default.
    pub delivery_faults: wa_platform::kafka::DeliveryFaults,
}

impl Config {
    /// Every variable ingress reads beyond the broker connection's ([`KafkaConfig::ENV`]) and
    /// telemetry's.
    pub const ENV: &'static [EnvVar] = &[
        config::TWILIO_ACCOUNT_SID,
        config::TWILIO_AUTH_TOKEN,
        config::TWILIO_API_KEY_SID,
        config::TWILIO_API_KEY_SECRET,
        EXTRA_AUTH_TOKENS,
        PUBLIC_URL,
        TRUST_FORWARDED,
        API_TOKENS,
        ALLOW_UNAUTHENTICATED,
        SENDERS,
        PUBLISH_TIMEOUT_MS,
        MAX_IN_FLIGHT,
        MAX_BODY_BYTES,
        QUARANTINE_BUDGET,
        media::STORE_URL,
        media::DELETE_AT_TWILIO,
        DEDUPE_HORIZON_HOURS,
        DEDUPE_CAPACITY,
    ];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8080";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        let http_addr = config::http_addr(Self::DEFAULT_HTTP_ADDR)?;
        let mut auth_tokens = vec![config::twilio_auth_token_off_loopback(http_addr)?];
        let api_tokens = config::list(&API_TOKENS);
        config::require_tokens_off_loopback(http_addr, &api_tokens, &API_TOKENS, &ALLOW_UNAUTHENTICATED)?;
        auth_tokens.extend(config::list(&EXTRA_AUTH_TOKENS));
        let senders = config::list(&SENDERS)
            .iter()
            .map(|sender| {
                wa_schemas::WhatsAppAddress::parse(sender).map(String::from).map_err(|error| config::ConfigError {
                    name: SENDERS.name,
                    value: sender.clone(),
                    reason: format!("not a WhatsApp address: {error}"),
                })
            })
            .collect::<Result<_, _>>()?;
        let max_in_flight: usize = config::parse_in(&MAX_IN_FLIGHT, 1..=1_000_000)?;
        let (media_store_url, media_delete_at_twilio) = media::from_env()?;
        Ok(Self {
            http_addr,
            kafka: KafkaConfig::from_env()?,
            public_url: config::var(PUBLIC_URL.name),
            trust_forwarded_headers: config::parse(&TRUST_FORWARDED)?,
            account_sid: config::var_or(&config::TWILIO_ACCOUNT_SID),
            auth_tokens,
            api_tokens,
            senders,
            publish_timeout: Duration::from_millis(config::parse(&PUBLISH_TIMEOUT_MS)?),
            max_in_flight,
            max_body_bytes: config::parse(&MAX_BODY_BYTES)?,
            quarantine_budget_per_minute: config::parse_in(&QUARANTINE_BUDGET, 0..=1 << 40)?,
            media_store_url,
            media_delete_at_twilio,
            twilio_credentials: config::twilio_credentials(http_addr)?,
            dedupe_horizon: Duration::from_secs(3600 * config::parse::<u64>(&DEDUPE_HORIZON_HOURS)?),
            dedupe_capacity: config::parse(&DEDUPE_CAPACITY)?,
            delivery_faults: wa_platform::kafka::DeliveryFaults::default(),
        })
    }

    /// A configuration for tests and embedding: everything at its default except the broker,
    /// the auth token and an HTTP address (port 0 picks a free one).
    pub fn new(http_addr: SocketAddr, kafka: KafkaConfig, auth_token: &str) -> Self {
        Self {
            http_addr,
            kafka,
            public_url: None,
            trust_forwarded_headers: false,
            account_sid: config::TWILIO_ACCOUNT_SID.default.unwrap_or_default().to_owned(),
            auth_tokens: vec![auth_token.to_owned()],
            api_tokens: vec![],
            senders: vec![],
            publish_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            max_body_bytes: 64 * 1024,
            quarantine_budget_per_minute: 5 * 1024 * 1024,
            media_store_url: media::STORE_URL.default.unwrap_or_default().to_owned(),
            media_delete_at_twilio: false,
            twilio_credentials: (
                config::TWILIO_ACCOUNT_SID.default.unwrap_or_default().to_owned(),
                auth_token.to_owned(),
            ),
            dedupe_horizon: Duration::from_secs(24 * 3600),
            dedupe_capacity: 2_000_000,
            delivery_faults: wa_platform::kafka::DeliveryFaults::default(),
        }
    }
}
