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
    /// No answer (connection refused or reset, timeout).
    #[error("twilio unreachable: {0}")]
    Transport(String),
}

impl TwilioError {
    /// Whether trying again later may succeed: throttling, server errors, no answer.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Transport(_) => true,
            Self::Api { status, code, .. } => *status == 429 || *status >= 500 || *code == Some(20429),
        }
    }

    /// Twilio's error code, if any.
    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Api { code, .. } => *code,
            Self::Transport(_) => None,
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
            .map_err(|err| TwilioError::Transport(err.to_string()))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|err| TwilioError::Transport(err.to_string()))?;
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
