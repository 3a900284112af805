//! Outbound-dispatch's configuration: the variables it reads and their defaults.

use std::net::SocketAddr;
use std::time::Duration;

use wa_platform::config::{self, EnvVar, KafkaConfig};

use crate::rate::Rates;

const API_BASE_URL: EnvVar = EnvVar {
    name: "TWILIO_API_BASE_URL",
    default: Some("https://api.twilio.com"),
    doc: "base URL of Twilio's REST API; the simulator's URL (http://127.0.0.1:8090) locally",
};
const STATUS_CALLBACK_URL: EnvVar = EnvVar {
    name: "DISPATCH_STATUS_CALLBACK_URL",
    default: None,
    doc: "public URL of ingress's status-callback endpoint; request_id is appended as a query parameter",
};
const REQUEST_TIMEOUT_MS: EnvVar =
    EnvVar { name: "DISPATCH_REQUEST_TIMEOUT_MS", default: Some("10000"), doc: "timeout of one HTTP call to Twilio" };
const SENDER_RATE: EnvVar = EnvVar {
    name: "DISPATCH_SENDER_RATE",
    default: Some("80"),
    doc: "messages per second per WhatsApp sender (Twilio's default limit is 80)",
};
const SENDER_RATES: EnvVar = EnvVar {
    name: "DISPATCH_SENDER_RATES",
    default: None,
    doc: "per-sender overrides: whatsapp:+14155238886=20,whatsapp:+14155238887=200",
};
const ACCOUNT_RATE: EnvVar = EnvVar {
    name: "DISPATCH_ACCOUNT_RATE",
    default: Some("0"),
    doc: "messages per second for the whole account across senders; 0 for no account limit",
};
const INSTANCES: EnvVar = EnvVar {
    name: "DISPATCH_INSTANCES",
    default: Some("1"),
    doc: "how many dispatch instances run: each paces at the rates divided by this, so together they never exceed them",
};
const MESSAGING_SERVICE_SID: EnvVar = EnvVar {
    name: "TWILIO_MESSAGING_SERVICE_SID",
    default: None,
    doc: "an MG... Messaging Service to send through (with From naming the sender)",
};
const IN_DOUBT_AFTER_MS: EnvVar = EnvVar {
    name: "DISPATCH_IN_DOUBT_AFTER_MS",
    default: Some("300000"),
    doc: "how long a send without an answer waits for its status callback before it is published in_doubt",
};
const RETRY_DEADLINE_MS: EnvVar = EnvVar {
    name: "DISPATCH_RETRY_DEADLINE_MS",
    default: Some("60000"),
    doc: "how long retryable failures are retried before the send is failed as retries_exhausted",
};

/// Outbound-dispatch configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the HTTP listener binds.
    pub http_addr: SocketAddr,
    /// Broker and topic prefix.
    pub kafka: KafkaConfig,
    /// Twilio REST base URL.
    pub twilio_base_url: String,
    /// Account SID (in the URL path).
    pub account_sid: String,
    /// Basic-auth user: account SID or API key SID.
    pub auth_username: String,
    /// Basic-auth password: auth token or API key secret.
    pub auth_password: String,
    /// Status callback base URL.
    pub status_callback_url: Option<String>,
    /// Timeout of one HTTP call.
    pub request_timeout: Duration,
    /// Give up retrying after this long.
    pub retry_deadline: Duration,
    /// An unconfirmed send is published `in_doubt` after this long.
    pub in_doubt_after: Duration,
    /// Sending rates (for all instances together).
    pub rates: Rates,
    /// How many dispatch instances share the rates.
    pub instances: u32,
    /// A Messaging Service to send through.
    pub messaging_service_sid: Option<String>,
    /// This instance's name on its claims: `KAFKA_GROUP_INSTANCE_ID`, or host and process id.
    pub instance_id: String,
}

impl Config {
    /// Every variable outbound-dispatch reads beyond the broker connection's ([`KafkaConfig::ENV`]) and
    /// telemetry's.
    pub const ENV: &'static [EnvVar] = &[
        config::KAFKA_GROUP_INSTANCE_ID,
        API_BASE_URL,
        config::TWILIO_ACCOUNT_SID,
        config::TWILIO_AUTH_TOKEN,
        config::TWILIO_API_KEY_SID,
        config::TWILIO_API_KEY_SECRET,
        STATUS_CALLBACK_URL,
        REQUEST_TIMEOUT_MS,
        RETRY_DEADLINE_MS,
        IN_DOUBT_AFTER_MS,
        SENDER_RATE,
        SENDER_RATES,
        ACCOUNT_RATE,
        INSTANCES,
        MESSAGING_SERVICE_SID,
    ];
    /// The default HTTP address.
    pub const DEFAULT_HTTP_ADDR: &'static str = "127.0.0.1:8083";

    /// Reads the configuration from the environment.
    pub fn from_env() -> Result<Self, config::ConfigError> {
        let account_sid = config::var_or(&config::TWILIO_ACCOUNT_SID);
        let http_addr = config::http_addr(Self::DEFAULT_HTTP_ADDR)?;
        let (auth_username, auth_password) = config::twilio_credentials(http_addr)?;
        Ok(Self {
            http_addr,
            kafka: KafkaConfig::from_env()?,
            twilio_base_url: config::var_or(&API_BASE_URL),
            account_sid,
            auth_username,
            auth_password,
            status_callback_url: config::var(STATUS_CALLBACK_URL.name),
            request_timeout: Duration::from_millis(config::parse(&REQUEST_TIMEOUT_MS)?),
            retry_deadline: Duration::from_millis(config::parse(&RETRY_DEADLINE_MS)?),
            in_doubt_after: Duration::from_millis(config::parse(&IN_DOUBT_AFTER_MS)?),
            rates: Rates {
                // NaN is in no range: refused like 0.
                per_sender: config::parse_in(&SENDER_RATE, f64::MIN_POSITIVE..=1_000_000.0)?,
                senders: Rates::parse_overrides(&config::var_or(&SENDER_RATES)).map_err(|reason| {
                    config::ConfigError { name: SENDER_RATES.name, value: config::var_or(&SENDER_RATES), reason }
                })?,
                account: config::parse_in(&ACCOUNT_RATE, 0.0..=1_000_000.0)?,
            },
            instances: config::parse_in(&INSTANCES, 1..=1_000)?,
            messaging_service_sid: config::var(MESSAGING_SERVICE_SID.name),
            instance_id: instance_id(config::var(config::KAFKA_GROUP_INSTANCE_ID.name)),
        })
    }
}

/// The name an instance puts on its claims: its static group membership id, or its host and
/// process id.
pub fn instance_id(group_instance_id: Option<String>) -> String {
    group_instance_id.unwrap_or_else(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
            .map(|host| host.trim().to_owned())
            .filter(|host| !host.is_empty())
            .unwrap_or_else(|| "localhost".to_owned());
        format!("{host}-{}", std::process::id())
    })
}
