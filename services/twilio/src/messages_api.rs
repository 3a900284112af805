//! A client for Twilio's Messages API (`/2010-04-01/Accounts/{AccountSid}/Messages.json`):
//! creating a message, and listing an account's messages to find one whose creation Twilio's
//! answer left in doubt. Its errors say what a failure means for the message ([`SendFailure`]),
//! by the code table in [`crate::errors`].

use std::time::Duration;

use crate::errors::{self, ErrorClass};
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
    /// The text Twilio sends (for a template, the content it rendered).
    #[serde(default)]
    pub body: Option<String>,
    /// Sender address.
    #[serde(default)]
    pub from: Option<String>,
    /// Recipient address.
    #[serde(default)]
    pub to: Option<String>,
    /// `outbound-api`, `inbound`, ...
    #[serde(default)]
    pub direction: Option<String>,
    /// When Twilio created it, RFC 2822.
    #[serde(default)]
    pub date_created: Option<String>,
    /// How many media it carries, as text.
    #[serde(default)]
    pub num_media: Option<String>,
}

impl MessageResource {
    /// When Twilio created it, Unix millis (whole seconds: RFC 2822 has no fractions).
    pub fn created_at(&self) -> Option<i64> {
        let text = self.date_created.as_deref()?;
        chrono::DateTime::parse_from_rfc2822(text).ok().map(|at| at.timestamp_millis())
    }
}

/// A page of Twilio's Messages list.
#[derive(Debug, Clone, Deserialize)]
struct MessagePage {
    #[serde(default)]
    messages: Vec<MessageResource>,
    /// The next page, relative to the API's base URL; `null` on the last page.
    #[serde(default)]
    next_page_uri: Option<String>,
}

/// Twilio's error body: `{"code": 21211, "message": "...", "more_info": "...", "status": 400}`.
#[derive(Debug, Clone, Deserialize)]
struct ErrorBody {
    code: Option<i32>,
    message: Option<String>,
}

/// Why a call failed.
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
    /// have created the message.
    #[error("no answer from twilio: {0}")]
    NoAnswer(String),
}

/// What a failed send means for the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendFailure {
    /// Twilio did not create it and asks to try later (429, 503, 20429, 63018), or the request
    /// never left: sending again cannot deliver it twice.
    Retry,
    /// Twilio may have created it (500, 502, 504 and other server errors, or no answer after
    /// the request was written): look it up, never send it blindly again.
    Ambiguous,
    /// Refused for good, with the channel's reason for the code.
    Permanent(&'static str),
}

impl TwilioError {
    /// What the failure means for the message (codes through `wa_twilio::errors`).
    pub fn failure(&self) -> SendFailure {
        match self {
            Self::Unreachable(_) => SendFailure::Retry,
            Self::NoAnswer(_) => SendFailure::Ambiguous,
            Self::Api { status, code, .. } => {
                if let Some(code) = code {
                    if errors::class(*code) == ErrorClass::Retryable {
                        return SendFailure::Retry;
                    }
                }
                match status {
                    429 | 503 => SendFailure::Retry,
                    500..=599 => SendFailure::Ambiguous,
                    _ => SendFailure::Permanent(code.map_or(errors::UNKNOWN_REASON, errors::failure_reason)),
                }
            }
        }
    }

    /// Whether Twilio asked us to slow the sender down: its API's rate limit (429, 20429). A
    /// 63018 is WhatsApp's limit, often about one recipient (Meta's 1015, too many messages to
    /// this user) or business-initiated conversations (471): that send is retried later, and the
    /// sender's pace for everyone else is left alone.
    pub fn is_throttling(&self) -> bool {
        match self {
            Self::Api { code: Some(errors::WHATSAPP_RATE_LIMITED), .. } => false,
            Self::Api { status: 429, .. } => true,
            Self::Api { code: Some(code), .. } => errors::class(*code) == ErrorClass::Retryable,
            _ => false,
        }
    }

    /// Twilio's error code, if any.
    pub fn code(&self) -> Option<i32> {
        match self {
            Self::Api { code, .. } => *code,
            Self::Unreachable(_) | Self::NoAnswer(_) => None,
        }
    }

    /// The HTTP status Twilio answered, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            Self::Unreachable(_) | Self::NoAnswer(_) => None,
        }
    }
}

/// Sends messages with an account's credentials.
#[derive(Clone)]
pub struct TwilioClient {
    http: reqwest::Client,
    base_url: String,
    messages_url: String,
    username: String,
    password: String,
}

/// How many pages a lookup reads at most (1,000 messages each).
const MAX_LOOKUP_PAGES: usize = 10;

impl TwilioClient {
    /// A client for `base_url` (`https://api.twilio.com` in production), authenticating as
    /// `username` (account SID or API key SID) with `password` (auth token or API key secret).
    pub fn new(
        base_url: &str,
        account_sid: &str,
        username: &str,
        password: &str,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("wachannel/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let base_url = base_url.trim_end_matches('/').to_owned();
        Ok(Self {
            http,
            messages_url: format!("{base_url}/2010-04-01/Accounts/{account_sid}/Messages.json"),
            base_url,
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
        let request = self.http.post(&self.messages_url).basic_auth(&self.username, Some(&self.password)).form(&form);
        self.call(request).await
    }

    /// The account's messages from `from` to `to` whose `DateSent` is on or after the day of
    /// `since` (Unix millis), newest first, as Twilio lists them: every page, up to ten.
    pub async fn list_messages(&self, from: &str, to: &str, since: i64) -> Result<Vec<MessageResource>, TwilioError> {
        // Twilio filters DateSent by day (GMT): ask from the start of the day of `since`.
        let day = chrono::DateTime::from_timestamp_millis(since).unwrap_or_default().date_naive();
        let date_sent = format!("{day}T00:00:00Z");
        let mut request = self.http.get(&self.messages_url).query(&[
            ("To", to),
            ("From", from),
            ("DateSent>", date_sent.as_str()),
            ("PageSize", "1000"),
        ]);
        let mut found = Vec::new();
        for _ in 0..MAX_LOOKUP_PAGES {
            let page: MessagePage = self.call(request.basic_auth(&self.username, Some(&self.password))).await?;
            found.extend(page.messages);
            let Some(next) = page.next_page_uri.filter(|uri| !uri.is_empty()) else {
                return Ok(found);
            };
            // Twilio's page URIs are relative to the API's base URL.
            request = self.http.get(format!("{}{next}", self.base_url));
        }
        Ok(found)
    }

    async fn call<T: serde::de::DeserializeOwned>(&self, request: reqwest::RequestBuilder) -> Result<T, TwilioError> {
        let (response, span) = crate::traced::send(&self.http, request).await;
        let response = response.map_err(|err| {
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
        if let Some(code) = body.as_ref().and_then(|b| b.code) {
            span.record("twilio.error_code", code);
        }
        Err(TwilioError::Api {
            status: status.as_u16(),
            code: body.as_ref().and_then(|b| b.code),
            message: body
                .and_then(|b| b.message)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).chars().take(200).collect()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, code: Option<i32>) -> TwilioError {
        TwilioError::Api { status, code, message: String::new() }
    }

    #[test]
    fn only_answers_that_say_not_created_are_retried() {
        assert_eq!(api(429, Some(20429)).failure(), SendFailure::Retry);
        assert_eq!(api(503, Some(20503)).failure(), SendFailure::Retry);
        assert_eq!(api(400, Some(63018)).failure(), SendFailure::Retry);
        assert_eq!(TwilioError::Unreachable("refused".into()).failure(), SendFailure::Retry);
        for status in [500, 502, 504] {
            assert_eq!(api(status, Some(20500)).failure(), SendFailure::Ambiguous, "{status}");
        }
        assert_eq!(TwilioError::NoAnswer("reset after the request".into()).failure(), SendFailure::Ambiguous);
    }

    #[test]
    fn permanent_errors_take_their_reason_from_the_table() {
        assert_eq!(api(400, Some(63016)).failure(), SendFailure::Permanent("outside_window"));
        assert_eq!(api(400, Some(21211)).failure(), SendFailure::Permanent("invalid_number"));
        assert_eq!(api(400, Some(21610)).failure(), SendFailure::Permanent("unsubscribed"));
        assert_eq!(api(401, Some(20003)).failure(), SendFailure::Permanent("configuration_error"));
        assert_eq!(api(400, Some(12345)).failure(), SendFailure::Permanent("twilio_rejected"));
        assert_eq!(api(400, None).failure(), SendFailure::Permanent("twilio_rejected"));
        assert!(api(429, None).is_throttling() && api(429, Some(20429)).is_throttling());
        // WhatsApp's limit about one recipient is retried, without slowing the sender down.
        assert!(!api(400, Some(63018)).is_throttling());
        assert_eq!(api(400, Some(63018)).failure(), SendFailure::Retry);
        assert!(!api(503, None).is_throttling());
    }

    #[test]
    fn creation_times_are_read_from_rfc_2822() {
        let message = MessageResource {
            sid: "SM1".into(),
            status: "queued".into(),
            body: None,
            from: None,
            to: None,
            direction: None,
            date_created: Some("Thu, 24 Aug 2023 05:01:45 +0000".into()),
            num_media: None,
        };
        assert_eq!(message.created_at(), Some(1_692_853_305_000));
    }
}
