//! Template-approval's configuration: the variables it reads and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use wa_platform::config::{self, EnvVar, KafkaConfig};

use crate::authorize::{Fallbacks, MarketingRules, Policy};

const ADMIN_TOKENS: EnvVar = EnvVar {
    name: "TEMPLATE_ADMIN_TOKENS",
    default: None,
    doc: "comma-separated bearer tokens for the admin API; unset: open, allowed only on a loopback HTTP_ADDR (or with TEMPLATE_ALLOW_UNAUTHENTICATED=true)",
};
const ALLOW_UNAUTHENTICATED: EnvVar = EnvVar {
    name: "TEMPLATE_ALLOW_UNAUTHENTICATED",
    default: Some("false"),
    doc: "true lets template-approval serve its admin API without TEMPLATE_ADMIN_TOKENS off loopback; otherwise it refuses to start",
};
const CONTENT_BASE_URL: EnvVar = EnvVar {
    name: "TWILIO_CONTENT_BASE_URL",
    default: Some("https://content.twilio.com"),
    doc: "base URL of Twilio's Content API; the simulator's URL locally",
};
const SYNC_INTERVAL_MS: EnvVar = EnvVar {
    name: "TEMPLATE_SYNC_INTERVAL_MS",
    default: Some("60000"),
    doc: "how often approval statuses of pending, approved and paused templates are fetched from Twilio",
};
const LANGUAGE_FALLBACKS: EnvVar = EnvVar {
    name: "TEMPLATE_LANGUAGE_FALLBACKS",
    default: Some(""),
    doc: "fallback chains, e.g. pt_BR:pt:en,es_MX:es:en: the first approved language of the chain is sent",
};

const MARKETING_BLOCKED_PREFIXES: EnvVar = EnvVar {
    name: "TEMPLATE_MARKETING_BLOCKED_PREFIXES",
    default: Some("+1"),
    doc: "comma-separated number prefixes Meta delivers no marketing templates to (US numbers since 2025-04-01); marketing templates to them are refused with marketing_region_blocked; empty: none",
};
const MARKETING_COOLDOWN_HOURS: EnvVar = EnvVar {
    name: "TEMPLATE_MARKETING_COOLDOWN_HOURS",
    default: Some("24"),
    doc: "after Meta declined a marketing message to a customer (63049, its per-user marketing limit), marketing templates to that customer are refused with marketing_limited this long; 0: never",
};

/// Template-approval configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
    /// Admin API bearer tokens; empty means open.
    pub admin_tokens: Vec<String>,
    /// Twilio Content API base URL.
    pub content_base_url: String,
    /// Basic-auth user for Twilio (account SID or API key SID).
    pub auth_username: String,
    /// Basic-auth password for Twilio (auth token or API key secret).
    pub auth_password: String,
    /// Status sync period.
    pub sync_interval: Duration,
    /// Language fallback chains and Meta's marketing rules.
    pub policy: Policy,
}

impl Config {
    /// Every variable template-approval reads beyond the broker connection's ([`KafkaConfig::ENV`]) and
    /// telemetry's.
    pub const ENV: &'static [EnvVar] = &[
        config::KAFKA_GROUP_INSTANCE_ID,
        ADMIN_TOKENS,
        ALLOW_UNAUTHENTICATED,
        CONTENT_BASE_URL,
        config::TWILIO_ACCOUNT_SID,
        config::TWILIO_AUTH_TOKEN,
        config::TWILIO_API_KEY_SID,
        config::TWILIO_API_KEY_SECRET,
        SYNC_INTERVAL_MS,
        LANGUAGE_FALLBACKS,
        MARKETING_BLOCKED_PREFIXES,
        MARKETING_COOLDOWN_HOURS,
    ];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8082";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        let http_addr = config::http_addr(Self::DEFAULT_HTTP_ADDR)?;
        let (auth_username, auth_password) = config::twilio_credentials(http_addr)?;
        let fallbacks_text = config::var_or(&LANGUAGE_FALLBACKS);
        let fallbacks = Fallbacks::parse(&fallbacks_text).map_err(|reason| config::ConfigError {
            name: LANGUAGE_FALLBACKS.name,
            value: fallbacks_text.clone(),
            reason,
        })?;
        let prefixes_text = config::var_or(&MARKETING_BLOCKED_PREFIXES);
        let blocked_prefixes = MarketingRules::parse_prefixes(&prefixes_text).map_err(|reason| {
            config::ConfigError { name: MARKETING_BLOCKED_PREFIXES.name, value: prefixes_text.clone(), reason }
        })?;
        let cooldown_hours: i64 = config::parse(&MARKETING_COOLDOWN_HOURS)?;
        let admin_tokens = config::list(&ADMIN_TOKENS);
        config::require_tokens_off_loopback(http_addr, &admin_tokens, &ADMIN_TOKENS, &ALLOW_UNAUTHENTICATED)?;
        Ok(Self {
            http_addr,
            kafka: KafkaConfig::from_env()?,
            admin_tokens,
            content_base_url: config::var_or(&CONTENT_BASE_URL),
            auth_username,
            auth_password,
            sync_interval: Duration::from_millis(config::parse(&SYNC_INTERVAL_MS)?),
            policy: Policy {
                fallbacks,
                marketing: MarketingRules { blocked_prefixes, cooldown_millis: cooldown_hours.max(0) * 3_600_000 },
            },
        })
    }
}
