//! Configuration from environment variables, with documented defaults.
//!
//! Each service lists the variables it reads as [`EnvVar`]s; the README's table and the
//! `docker-compose.yml` test are checked against those lists.

use std::str::FromStr;

/// A configuration variable a service reads.
#[derive(Debug, Clone, Copy)]
pub struct EnvVar {
    /// The environment variable's name.
    pub name: &'static str,
    /// The value used when it is unset or empty; `None` when the variable is optional.
    pub default: Option<&'static str>,
    /// What it configures.
    pub doc: &'static str,
}

/// A configuration value that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid {name}={value:?}: {reason}")]
pub struct ConfigError {
    /// The variable at fault.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// Why it is invalid.
    pub reason: String,
}

/// The variable's value, or `None` when it is unset or empty.
pub fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

/// The variable's value, or the variable's documented default.
pub fn var_or(var_doc: &EnvVar) -> String {
    var(var_doc.name).unwrap_or_else(|| var_doc.default.unwrap_or_default().to_owned())
}

/// The variable parsed, or its documented default parsed.
pub fn parse<T>(var_doc: &EnvVar) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: std::fmt::Display,
{
    let value = var_or(var_doc);
    value.trim().parse().map_err(|err: T::Err| ConfigError { name: var_doc.name, value, reason: err.to_string() })
}

/// A number variable that must lie in `range` (a rate of 0 or NaN, a bound of 0, ...): the
/// error names the variable and the range.
pub fn parse_in<T>(var_doc: &EnvVar, range: std::ops::RangeInclusive<T>) -> Result<T, ConfigError>
where
    T: FromStr + PartialOrd + std::fmt::Display,
    T::Err: std::fmt::Display,
{
    let value: T = parse(var_doc)?;
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError {
            name: var_doc.name,
            value: value.to_string(),
            reason: format!("must be between {} and {}", range.start(), range.end()),
        })
    }
}

/// A comma-separated list variable; empty when unset.
pub fn list(var_doc: &EnvVar) -> Vec<String> {
    var_or(var_doc).split(',').map(str::trim).filter(|item| !item.is_empty()).map(str::to_owned).collect()
}

/// `KAFKA_BOOTSTRAP_SERVERS`: the broker list.
pub const KAFKA_BOOTSTRAP_SERVERS: EnvVar = EnvVar {
    name: "KAFKA_BOOTSTRAP_SERVERS",
    default: Some("127.0.0.1:9092"),
    doc: "Kafka bootstrap servers (host:port, comma-separated)",
};
/// `KAFKA_GROUP_INSTANCE_ID`: static consumer-group membership.
pub const KAFKA_GROUP_INSTANCE_ID: EnvVar = EnvVar {
    name: "KAFKA_GROUP_INSTANCE_ID",
    default: None,
    doc: "a stable id per instance (e.g. the pod name): a restarted instance takes its partitions back at once (Kafka static membership); unset: dynamic membership",
};
/// `KAFKA_FETCH_WAIT_MS`: how long the broker may hold a consumer's fetch.
pub const KAFKA_FETCH_WAIT_MS: EnvVar = EnvVar {
    name: "KAFKA_FETCH_WAIT_MS",
    default: Some("50"),
    doc: "longest the broker may hold a consumer's fetch (fetch.wait.max.ms). Apache Kafka answers as soon as records arrive, so this only paces idle polling; tansu answers when the wait runs out, so each hop costs up to 1.5 times this (decision 38)",
};
/// `KAFKA_SECURITY_PROTOCOL`: how clients reach the brokers.
pub const KAFKA_SECURITY_PROTOCOL: EnvVar = EnvVar {
    name: "KAFKA_SECURITY_PROTOCOL",
    default: Some("plaintext"),
    doc: "plaintext, ssl, sasl_plaintext or sasl_ssl (librdkafka's security.protocol), for every client of the service",
};
/// `KAFKA_SASL_MECHANISM`.
pub const KAFKA_SASL_MECHANISM: EnvVar = EnvVar {
    name: "KAFKA_SASL_MECHANISM",
    default: None,
    doc: "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, with a sasl_* protocol (default PLAIN)",
};
/// `KAFKA_SASL_USERNAME`.
pub const KAFKA_SASL_USERNAME: EnvVar =
    EnvVar { name: "KAFKA_SASL_USERNAME", default: None, doc: "SASL user name, required with a sasl_* protocol" };
/// `KAFKA_SASL_PASSWORD`.
pub const KAFKA_SASL_PASSWORD: EnvVar =
    EnvVar { name: "KAFKA_SASL_PASSWORD", default: None, doc: "SASL password, required with a sasl_* protocol" };
/// `KAFKA_SSL_CA_LOCATION`.
pub const KAFKA_SSL_CA_LOCATION: EnvVar = EnvVar {
    name: "KAFKA_SSL_CA_LOCATION",
    default: None,
    doc: "PEM file of the CA that signed the brokers' certificates, with ssl or sasl_ssl (unset: the system's CAs)",
};
/// `KAFKA_DEBUG`: librdkafka's own debug contexts, for operators chasing a broker issue.
pub const KAFKA_DEBUG: EnvVar = EnvVar {
    name: "KAFKA_DEBUG",
    default: None,
    doc: "librdkafka debug contexts (e.g. cgrp,topic), logged under the librdkafka target",
};
/// `WA_TOPIC_PREFIX`: prefix for every topic and consumer group name.
pub const WA_TOPIC_PREFIX: EnvVar = EnvVar {
    name: "WA_TOPIC_PREFIX",
    default: Some(""),
    doc: "prefix for every topic and consumer-group name (isolates tests and tenants)",
};
/// `HTTP_ADDR`: where the service's HTTP listener binds.
pub const HTTP_ADDR: &str = "HTTP_ADDR";
/// `TWILIO_ACCOUNT_SID`.
pub const TWILIO_ACCOUNT_SID: EnvVar = EnvVar {
    name: "TWILIO_ACCOUNT_SID",
    default: Some("AC00000000000000000000000000000000"),
    doc: "Twilio account SID (the default is a local placeholder for the simulator)",
};
/// `TWILIO_AUTH_TOKEN`.
pub const TWILIO_AUTH_TOKEN: EnvVar = EnvVar {
    name: "TWILIO_AUTH_TOKEN",
    default: Some("local-dev-auth-token"),
    doc: "Twilio auth token: signs webhooks and authenticates API calls (local default for the simulator only)",
};

/// `TWILIO_API_KEY_SID`.
pub const TWILIO_API_KEY_SID: EnvVar = EnvVar {
    name: "TWILIO_API_KEY_SID",
    default: None,
    doc: "API key SID (SK...) to authenticate with instead of the account SID and auth token",
};
/// `TWILIO_API_KEY_SECRET`.
pub const TWILIO_API_KEY_SECRET: EnvVar =
    EnvVar { name: "TWILIO_API_KEY_SECRET", default: None, doc: "the API key's secret, with TWILIO_API_KEY_SID" };

/// The Basic-auth user and password for Twilio's APIs: the API key pair when both are set,
/// otherwise the account SID and auth token, which off loopback must not be the local default
/// (see [`twilio_auth_token_off_loopback`]).
pub fn twilio_credentials(http_addr: std::net::SocketAddr) -> Result<(String, String), ConfigError> {
    match (var(TWILIO_API_KEY_SID.name), var(TWILIO_API_KEY_SECRET.name)) {
        (Some(key), Some(secret)) => Ok((key, secret)),
        (Some(_), None) | (None, Some(_)) => Err(ConfigError {
            name: TWILIO_API_KEY_SID.name,
            value: String::new(),
            reason: "TWILIO_API_KEY_SID and TWILIO_API_KEY_SECRET go together".to_owned(),
        }),
        (None, None) => Ok((var_or(&TWILIO_ACCOUNT_SID), twilio_auth_token_off_loopback(http_addr)?)),
    }
}

/// Kafka connection settings shared by every service.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Bootstrap servers.
    pub bootstrap_servers: String,
    /// Prefix for topic and group names.
    pub topic_prefix: String,
    /// This instance's static consumer-group membership id, if any: a restarted instance
    /// (after a crash, too) takes its partitions back at once instead of waiting for the
    /// group to notice the old member is gone.
    pub group_instance_id: Option<String>,
    /// How long the broker may hold a consumer's fetch (`fetch.wait.max.ms`) before answering.
    pub fetch_wait: std::time::Duration,
    /// librdkafka security settings (`security.protocol`, `sasl.*`, `ssl.ca.location`) given to
    /// every client; empty for plaintext.
    pub security: Vec<(&'static str, String)>,
}

/// The librdkafka settings of the `KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_*` and
/// `KAFKA_SSL_CA_LOCATION` variables, checked: an unknown protocol or mechanism, SASL without
/// credentials or a CA file that is not there stops the service with the variable named.
pub fn kafka_security() -> Result<Vec<(&'static str, String)>, ConfigError> {
    kafka_security_from(var)
}

/// [`kafka_security`] with the variables looked up by `lookup` (unset or empty: `None`).
fn kafka_security_from(lookup: impl Fn(&str) -> Option<String>) -> Result<Vec<(&'static str, String)>, ConfigError> {
    let invalid =
        |var: &EnvVar, value: String, reason: &str| ConfigError { name: var.name, value, reason: reason.to_owned() };
    let protocol = lookup(KAFKA_SECURITY_PROTOCOL.name)
        .unwrap_or_else(|| KAFKA_SECURITY_PROTOCOL.default.unwrap_or_default().to_owned())
        .trim()
        .to_ascii_lowercase();
    let (tls, sasl) = match protocol.as_str() {
        "plaintext" => (false, false),
        "ssl" => (true, false),
        "sasl_plaintext" => (false, true),
        "sasl_ssl" => (true, true),
        _ => {
            return Err(invalid(
                &KAFKA_SECURITY_PROTOCOL,
                protocol,
                "must be plaintext, ssl, sasl_plaintext or sasl_ssl",
            ))
        }
    };
    let mut settings = Vec::new();
    if protocol != "plaintext" {
        settings.push(("security.protocol", protocol.clone()));
    }
    if sasl {
        let mechanism =
            lookup(KAFKA_SASL_MECHANISM.name).unwrap_or_else(|| "PLAIN".to_owned()).trim().to_ascii_uppercase();
        if !matches!(mechanism.as_str(), "PLAIN" | "SCRAM-SHA-256" | "SCRAM-SHA-512") {
            return Err(invalid(&KAFKA_SASL_MECHANISM, mechanism, "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"));
        }
        let required = |var: &EnvVar| {
            lookup(var.name).ok_or_else(|| {
                invalid(var, String::new(), &format!("required with KAFKA_SECURITY_PROTOCOL={protocol}"))
            })
        };
        settings.push(("sasl.mechanism", mechanism));
        settings.push(("sasl.username", required(&KAFKA_SASL_USERNAME)?));
        settings.push(("sasl.password", required(&KAFKA_SASL_PASSWORD)?));
    } else if lookup(KAFKA_SASL_USERNAME.name).is_some() {
        return Err(invalid(
            &KAFKA_SECURITY_PROTOCOL,
            protocol,
            "KAFKA_SASL_USERNAME is set: use sasl_plaintext or sasl_ssl",
        ));
    }
    if let Some(ca) = lookup(KAFKA_SSL_CA_LOCATION.name) {
        if !tls {
            return Err(invalid(&KAFKA_SSL_CA_LOCATION, ca, "needs KAFKA_SECURITY_PROTOCOL=ssl or sasl_ssl"));
        }
        if !std::path::Path::new(&ca).is_file() {
            return Err(invalid(&KAFKA_SSL_CA_LOCATION, ca, "no such file"));
        }
        settings.push(("ssl.ca.location", ca));
    }
    Ok(settings)
}

impl KafkaConfig {
    /// The variables this reads.
    pub const ENV: &'static [EnvVar] = &[
        KAFKA_BOOTSTRAP_SERVERS,
        WA_TOPIC_PREFIX,
        KAFKA_GROUP_INSTANCE_ID,
        KAFKA_FETCH_WAIT_MS,
        KAFKA_SECURITY_PROTOCOL,
        KAFKA_SASL_MECHANISM,
        KAFKA_SASL_USERNAME,
        KAFKA_SASL_PASSWORD,
        KAFKA_SSL_CA_LOCATION,
        KAFKA_DEBUG,
    ];

    /// Reads `KAFKA_BOOTSTRAP_SERVERS`, `WA_TOPIC_PREFIX`, `KAFKA_GROUP_INSTANCE_ID`,
    /// `KAFKA_FETCH_WAIT_MS` (1 to 10,000 ms) and the security settings ([`kafka_security`]).
    pub fn from_env() -> Result<Self, ConfigError> {
        let fetch_wait_ms: u64 = parse_in(&KAFKA_FETCH_WAIT_MS, 1..=10_000)?;
        Ok(Self {
            bootstrap_servers: var_or(&KAFKA_BOOTSTRAP_SERVERS),
            topic_prefix: var_or(&WA_TOPIC_PREFIX),
            group_instance_id: var(KAFKA_GROUP_INSTANCE_ID.name),
            fetch_wait: std::time::Duration::from_millis(fetch_wait_ms),
            security: kafka_security()?,
        })
    }

    /// Settings for `bootstrap_servers` with `topic_prefix`, no static membership and the
    /// default fetch wait.
    pub fn new(bootstrap_servers: impl Into<String>, topic_prefix: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: topic_prefix.into(),
            group_instance_id: None,
            fetch_wait: Self::DEFAULT_FETCH_WAIT,
            security: Vec::new(),
        }
    }

    /// `KAFKA_FETCH_WAIT_MS`'s default.
    pub const DEFAULT_FETCH_WAIT: std::time::Duration = std::time::Duration::from_millis(50);

    /// The full name of a topic, with the prefix.
    pub fn topic(&self, spec: &crate::topics::TopicSpec) -> String {
        format!("{}{}", self.topic_prefix, spec.name)
    }

    /// The full name of a consumer group, with the prefix.
    pub fn group(&self, group: &str) -> String {
        format!("{}{}", self.topic_prefix, group)
    }
}

/// The HTTP listen address: `HTTP_ADDR`, or the service's default.
pub fn http_addr(default: &str) -> Result<std::net::SocketAddr, ConfigError> {
    let value = var(HTTP_ADDR).unwrap_or_else(|| default.to_owned());
    value.parse().map_err(|err: std::net::AddrParseError| ConfigError {
        name: HTTP_ADDR,
        value,
        reason: err.to_string(),
    })
}

/// An API guarded by bearer tokens may run without them only on loopback: off loopback the
/// service refuses to start unless `allow` (a `*_ALLOW_UNAUTHENTICATED` variable) is `true`, so
/// an image or manifest never ships an open API by accident. The error names the variables.
pub fn require_tokens_off_loopback(
    http_addr: std::net::SocketAddr,
    tokens: &[String],
    tokens_var: &EnvVar,
    allow: &EnvVar,
) -> Result<(), ConfigError> {
    let allowed: bool = parse(allow)?;
    if !tokens.is_empty() || http_addr.ip().is_loopback() || allowed {
        return Ok(());
    }
    Err(ConfigError {
        name: tokens_var.name,
        value: String::new(),
        reason: format!(
            "required while {HTTP_ADDR}={http_addr} is not loopback: set {} to the bearer token(s) clients present, \
             or {}=true to serve the API without authentication",
            tokens_var.name, allow.name
        ),
    })
}

/// The Twilio auth token, refused off loopback when it is the local default: anyone who reads
/// this repository could sign webhooks with it.
pub fn twilio_auth_token_off_loopback(http_addr: std::net::SocketAddr) -> Result<String, ConfigError> {
    let token = var_or(&TWILIO_AUTH_TOKEN);
    if Some(token.as_str()) == TWILIO_AUTH_TOKEN.default && !http_addr.ip().is_loopback() {
        return Err(ConfigError {
            name: TWILIO_AUTH_TOKEN.name,
            value: String::new(),
            reason: format!(
                "the local default is refused while {HTTP_ADDR}={http_addr} is not loopback: set it to the \
                 account's auth token (Twilio Console)"
            ),
        });
    }
    Ok(token)
}

#[cfg(test)]
mod secure_default_tests {
    use super::*;

    const TOKENS: EnvVar = EnvVar { name: "TEST_UNSET_API_TOKENS", default: None, doc: "" };
    const ALLOW: EnvVar = EnvVar { name: "TEST_UNSET_ALLOW_UNAUTHENTICATED", default: Some("false"), doc: "" };
    const ALLOWED: EnvVar = EnvVar { name: "TEST_UNSET_ALLOW_UNAUTHENTICATED", default: Some("true"), doc: "" };

    #[test]
    fn an_open_api_is_refused_off_loopback_only() {
        let loopback = "127.0.0.1:8080".parse().unwrap();
        let any = "0.0.0.0:8080".parse().unwrap();
        assert!(require_tokens_off_loopback(loopback, &[], &TOKENS, &ALLOW).is_ok());
        assert!(require_tokens_off_loopback("[::1]:8080".parse().unwrap(), &[], &TOKENS, &ALLOW).is_ok());
        assert!(require_tokens_off_loopback(any, &["t".to_owned()], &TOKENS, &ALLOW).is_ok());
        assert!(require_tokens_off_loopback(any, &[], &TOKENS, &ALLOWED).is_ok());
        let error = require_tokens_off_loopback(any, &[], &TOKENS, &ALLOW).unwrap_err().to_string();
        assert!(
            error.contains("TEST_UNSET_API_TOKENS") && error.contains("TEST_UNSET_ALLOW_UNAUTHENTICATED=true"),
            "{error}"
        );
    }
}

#[cfg(test)]
mod kafka_security_tests {
    use super::*;

    fn security(vars: &[(&str, &str)]) -> Result<Vec<(&'static str, String)>, ConfigError> {
        let vars: std::collections::HashMap<String, String> =
            vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        kafka_security_from(|name| vars.get(name).cloned())
    }

    #[test]
    fn plaintext_needs_nothing_and_sasl_needs_credentials() {
        assert!(security(&[]).unwrap().is_empty());
        assert!(security(&[("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")]).unwrap().is_empty());
        let settings = security(&[
            ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL"),
            ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
            ("KAFKA_SASL_USERNAME", "wachannel"),
            ("KAFKA_SASL_PASSWORD", "secret"),
        ])
        .unwrap();
        assert_eq!(
            settings,
            [
                ("security.protocol", "sasl_ssl".to_owned()),
                ("sasl.mechanism", "SCRAM-SHA-512".to_owned()),
                ("sasl.username", "wachannel".to_owned()),
                ("sasl.password", "secret".to_owned()),
            ]
        );
        let error = security(&[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"), ("KAFKA_SASL_USERNAME", "u")]).unwrap_err();
        assert_eq!(error.name, "KAFKA_SASL_PASSWORD");
    }

    #[test]
    fn impossible_combinations_name_the_variable() {
        for (vars, named) in [
            (vec![("KAFKA_SECURITY_PROTOCOL", "tls")], "KAFKA_SECURITY_PROTOCOL"),
            (
                vec![
                    ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                    ("KAFKA_SASL_MECHANISM", "GSSAPI"),
                    ("KAFKA_SASL_USERNAME", "u"),
                    ("KAFKA_SASL_PASSWORD", "p"),
                ],
                "KAFKA_SASL_MECHANISM",
            ),
            (vec![("KAFKA_SASL_USERNAME", "u")], "KAFKA_SECURITY_PROTOCOL"),
            (vec![("KAFKA_SSL_CA_LOCATION", "/etc/hostname")], "KAFKA_SSL_CA_LOCATION"),
            (
                vec![("KAFKA_SECURITY_PROTOCOL", "ssl"), ("KAFKA_SSL_CA_LOCATION", "/no/such/ca.pem")],
                "KAFKA_SSL_CA_LOCATION",
            ),
        ] {
            assert_eq!(security(&vars).unwrap_err().name, named, "{vars:?}");
        }
    }
}
