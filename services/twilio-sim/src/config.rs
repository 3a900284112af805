//! The simulator's configuration.

use std::net::SocketAddr;

use wa_platform::config::{self, EnvVar};

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
