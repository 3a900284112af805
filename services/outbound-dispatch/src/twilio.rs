//! A client for Twilio's Messages API.

use std::time::Duration;

use serde::Deserialize;

/// What to send.
#[derive(Debug, Clone)]
pub struct OutgoingMessage<'a> {
    /// Sender, `whatsapp:+E164`.
    pub from: &'a str,
    /// Recipient.
    pub to: &'a str,
    /// Text.
    pub body: Option<&'a str>,
    /// Media URLs.
    pub media_urls: &'a [String],
    /// A template's Content SID, sent instead of a body.
    pub content_sid: Option<&'a str>,
    /// The template's variables (a JSON object).
    pub content_variables: Option<&'a str>,
    /// A Messaging Service to send through.
    pub messaging_service_sid: Option<&'a str>,
    /// Where Twilio should post status callbacks.
    pub status_callback: Option<String>,
}

/// The parts of Twilio's message resource dispatch uses.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageResource {
    /// `SM...`.
    pub sid: String,
    /// `queued`, `accepted`, ...
    pub status: String,
}

/// Twilio's error body: `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`.
#[derive(Debug, Clone, Deserialize)]
struct ErrorBody {
    code: Option<i32>,
    message: Option<String>,
}

/// Why a send failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TwilioError {
    /// Twilio answered with an error.
    #[error("twilio answered {status} (code {code:?}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Twilio error code.
        code: Option<i32>,
        /// Twilio's message.
        message: String,
    },
    /// The request never reached Twilio (no connection): trying again cannot send twice.
    #[error("twilio unreachable: {0}")]
    Unreachable(String),
    /// The request was sent but no answer came back (timeout, connection dropped): Twilio may
    /// have created the message, so the send is in doubt and must not be repeated blindly.
    #[error("no answer from twilio: {0}")]
    NoAnswer(String),
}

impl TwilioError {
    /// Whether trying again may succeed without risking a second message: throttling
    /// (429, 20429, 63018), server errors, and requests that never left.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unreachable(_) => true,
            Self::NoAnswer(_) => false,
            Self::Api { status, code, .. } => {
                *status == 429 || *status >= 500 || matches!(code, Some(20429) | Some(63018))
            }
        }
    }

    /// Whether the message may have been created although no answer said so.
    pub fn is_in_doubt(&self) -> bool {
        matches!(self, Self::NoAnswer(_))
    }

    /// Whether Twilio asked us to slow down.
    pub fn is_throttling(&self) -> bool {
        matches!(self, Self::Api { status: 429, .. } | Self::Api { code: Some(20429 | 63018), .. })
    }

    /// Twilio's error code, if any.
    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Api { code, .. } => *code,
            Self::Unreachable(_) | Self::NoAnswer(_) => None,
        }
    }

    /// The outcome reason of a permanent failure, by Twilio error code.
    pub fn failure_reason(&self) -> &'static str {
        match self.code() {
            Some(63016) => "outside_window",
            Some(21211 | 21614 | 21217) => "invalid_number",
            Some(63024 | 63003) => "invalid_recipient",
            Some(63014) => "blocked",
            Some(21610) => "unsubscribed",
            Some(63041) => "template_paused",
            Some(63042 | 63040 | 63027) => "template_rejected",
            Some(20003 | 20404 | 21603 | 21604 | 21619 | 21606) => "configuration_error",
            _ => "twilio_rejected",
        }
    }
}

/// Sends messages with an account's credentials.
#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    messages_url: String,
    username: String,
    password: String,
}

impl TwilioClient {
    /// A client for `base_url` (`https://api.twilio.com` in production), authenticating as
    /// `username` (account SID or API key SID) with `password` (auth token or API key secret).
    pub fn new(
        base_url: &str,
        account_sid: &str,
        username: &str,
        password: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("wachannel-outbound-dispatch/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            messages_url: format!("{}/2010-04-01/Accounts/{account_sid}/Messages.json", base_url.trim_end_matches('/')),
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Creates one message (one HTTP attempt).
    pub async fn send(&self, message: &OutgoingMessage<'_>) -> Result<MessageResource, TwilioError> {
        let mut form: Vec<(&str, &str)> = vec![("To", message.to), ("From", message.from)];
        if let Some(body) = message.body {
            form.push(("Body", body));
        }
        for url in message.media_urls {
            form.push(("MediaUrl", url));
        }
        if let Some(content_sid) = message.content_sid {
            form.push(("ContentSid", content_sid));
        }
        if let Some(variables) = message.content_variables {
            form.push(("ContentVariables", variables));
        }
        if let Some(service) = message.messaging_service_sid {
            form.push(("MessagingServiceSid", service));
        }
        if let Some(callback) = &message.status_callback {
            form.push(("StatusCallback", callback));
        }
        let response = self
            .http
            .post(&self.messages_url)
            .basic_auth(&self.username, Some(&self.password))
            .form(&form)
            .send()
            .await
            .map_err(|err| {
                if err.is_connect() {
                    TwilioError::Unreachable(err.to_string())
                } else {
                    TwilioError::NoAnswer(err.to_string())
                }
            })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|err| TwilioError::NoAnswer(err.to_string()))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|err| TwilioError::Api {
                status: status.as_u16(),
                code: None,
                message: format!("unreadable success response: {err}"),
            });
        }
        let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
        Err(TwilioError::Api {
            status: status.as_u16(),
            code: body.as_ref().and_then(|b| b.code),
            message: body
                .and_then(|b| b.message)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect()),
        })
    }
}
