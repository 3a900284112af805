//! What every Twilio webhook goes through before its fields are read: readiness, the body
//! limit, the content type, the public URL Twilio signed, and the signature. A refusal is
//! answered with a problem, counted per endpoint and reason, and logged without the message;
//! a refused request that plausibly came from Twilio is also quarantined, within a byte budget.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use uuid::Uuid;
use wa_platform::http::Problem;
use wa_platform::topics::QUARANTINE;
use wa_schemas::QuarantinedRequest;
use wa_twilio::params::{self, Params};
use wa_twilio::signature;

use crate::{AppState, NotPublished};

/// Headers kept with a quarantined request: enough to see why its signature failed.
const DIAGNOSTIC_HEADERS: &[&str] = &[
    "host",
    "content-type",
    "content-length",
    "user-agent",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-for",
    "forwarded",
    "x-twilio-signature",
    "i-twilio-idempotency-token",
];

/// How the URL Twilio signed is rebuilt.
pub(crate) struct PublicUrl {
    configured: Option<String>,
    trust_forwarded: bool,
    fallback: String,
}

impl PublicUrl {
    pub(crate) fn new(configured: Option<&str>, trust_forwarded: bool, bound: &str) -> Self {
        Self {
            configured: configured.map(|url| url.trim_end_matches('/').to_owned()),
            trust_forwarded,
            fallback: bound.trim_end_matches('/').to_owned(),
        }
    }

    /// The full URL of a request for `path_and_query`: the configured public base URL; else,
    /// when trusted, `X-Forwarded-Proto`/`X-Forwarded-Host` (first values); else the `Host`.
    pub(crate) fn for_request(&self, headers: &HeaderMap, path_and_query: &str) -> String {
        if let Some(base) = &self.configured {
            return format!("{base}{path_and_query}");
        }
        let first = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        };
        let host = first("host");
        let base = if self.trust_forwarded {
            let proto = first("x-forwarded-proto").unwrap_or("http");
            first("x-forwarded-host").or(host).map(|host| format!("{proto}://{host}"))
        } else {
            host.map(|host| format!("http://{host}"))
        };
        format!("{}{path_and_query}", base.as_deref().unwrap_or(&self.fallback))
    }
}

/// Which body a webhook came with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    Form,
    Json,
}

/// A webhook whose signature verified.
pub(crate) struct Verified {
    /// Its parameters, in the order sent.
    pub(crate) params: Params,
    /// The URL the signature covers.
    pub(crate) url: String,
}

/// The parts of a request kept for quarantine.
pub(crate) struct Received {
    pub(crate) endpoint: &'static str,
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

/// Counts and logs a refusal and turns it into the response.
pub(crate) fn reject(endpoint: &'static str, reason: &'static str, problem: Problem) -> Response {
    metrics::counter!(wa_platform::metrics::INGRESS_REJECTED, "endpoint" => endpoint, "reason" => reason).increment(1);
    tracing::warn!(endpoint, reason, status = problem.status().as_u16(), "request refused");
    problem.into_response()
}

/// Reads the body within the configured limit: 413 beyond it.
pub(crate) async fn read_body(state: &AppState, endpoint: &'static str, body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, state.max_body_bytes)
        .await
        .map_err(|_| reject(endpoint, "body_too_large", Problem::too_large(state.max_body_bytes)))
}

/// 503 until ingress knows what was published before it started: `Some(response)` then.
pub(crate) fn refuse_until_ready(state: &AppState, endpoint: &'static str) -> Option<Response> {
    if state.health.is_ready() {
        return None;
    }
    if let Some(problem) = state.health.broker_problem() {
        return Some(reject(endpoint, "broker_unavailable", Problem::unavailable(problem)));
    }
    Some(reject(
        endpoint,
        "not_ready",
        Problem::unavailable("ingress is starting: connecting to the broker and replaying recent ids; retry shortly"),
    ))
}

/// Everything before the fields: readiness, body, content type, signature.
pub(crate) async fn verify(
    state: &Arc<AppState>,
    endpoint: &'static str,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<(Verified, Received), Response> {
    if let Some(response) = refuse_until_ready(state, endpoint) {
        return Err(response);
    }
    let body = read_body(state, endpoint, body).await?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    let kind = match essence.as_str() {
        "application/x-www-form-urlencoded" => BodyKind::Form,
        "application/json" => BodyKind::Json,
        _ => {
            return Err(reject(
                endpoint,
                "content_type",
                Problem::new(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported-content-type",
                    "unsupported content type",
                    format!("expected application/x-www-form-urlencoded or application/json, got {content_type:?}"),
                ),
            ))
        }
    };
    let parsed = match kind {
        BodyKind::Form => params::parse_form(&body),
        BodyKind::Json => params::parse_json(&body),
    };
    let params = parsed.map_err(|err| {
        reject(
            endpoint,
            "malformed_body",
            Problem::new(StatusCode::BAD_REQUEST, "malformed-body", "malformed body", err.to_string()),
        )
    })?;
    let path = uri.path_and_query().map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let url = state.urls.for_request(&headers, &path);
    let received = Received { endpoint, method, uri, headers, body };

    let Some(presented) = received.headers.get(signature::HEADER).and_then(|v| v.to_str().ok()) else {
        let detail = format!("{} header is required", signature::HEADER);
        return Err(refuse_signature(state, &received, &params, &url, "signature_missing", detail).await);
    };
    let valid = match kind {
        BodyKind::Form => signature::verify(&state.auth_tokens, &url, &params, presented),
        BodyKind::Json => signature::verify_json(&state.auth_tokens, &url, &received.body, presented),
    };
    if !valid {
        let detail = match kind {
            BodyKind::Form => format!("{} does not match {url} and the posted parameters", signature::HEADER),
            BodyKind::Json => {
                format!(
                    "{} does not match {url} (a JSON body needs bodySHA256=<its SHA-256> in the URL)",
                    signature::HEADER
                )
            }
        };
        return Err(refuse_signature(state, &received, &params, &url, "signature_invalid", detail).await);
    }
    Ok((Verified { params, url }, received))
}

async fn refuse_signature(
    state: &AppState,
    received: &Received,
    params: &Params,
    url: &str,
    reason: &'static str,
    detail: String,
) -> Response {
    // Kept only when it plausibly came from Twilio: signed (if wrongly: a changed URL or token),
    // for this account and, when the served senders are known, to one of them.
    let from_twilio = if reason == "signature_missing" {
        Err("unsigned")
    } else if param(params, "AccountSid") != Some(state.account_sid.as_str()) {
        Err("other_account")
    } else if !param(params, "To")
        .and_then(|to| wa_schemas::WhatsAppAddress::parse(to).ok())
        .is_some_and(|to| state.serves(to.as_str()))
    {
        Err("unknown_sender")
    } else {
        Ok(())
    };
    let kept = match from_twilio {
        Ok(()) => quarantine(state, received, url, reason, &detail).await,
        Err(why) => {
            not_quarantined(received.endpoint, why);
            Ok(())
        }
    };
    if let Err(response) = kept {
        return response;
    }
    let slug = reason.replace('_', "-");
    let title = if reason == "signature_missing" { "signature missing" } else { "signature invalid" };
    reject(received.endpoint, reason, Problem::new(StatusCode::FORBIDDEN, &slug, title, detail))
}

/// The first value of a parameter.
fn param<'a>(params: &'a Params, name: &str) -> Option<&'a str> {
    params.iter().find(|(key, _)| key == name).map(|(_, value)| value.trim())
}

/// Counts and logs a refused request left out of the quarantine, and why.
fn not_quarantined(endpoint: &'static str, why: &'static str) {
    metrics::counter!(wa_platform::metrics::INGRESS_QUARANTINE_SKIPPED, "endpoint" => endpoint, "reason" => why)
        .increment(1);
    tracing::warn!(endpoint, reason = why, "refused request not quarantined");
}

/// Bytes the quarantine may take per minute, refilled continuously (a token bucket holding at
/// most one minute's worth), so a flood of junk cannot fill the topic.
pub(crate) struct QuarantineBudget {
    per_minute: f64,
    /// Bytes available and when that was computed.
    available: Mutex<(f64, Instant)>,
}

impl QuarantineBudget {
    /// A full budget at `now`.
    pub(crate) fn new(bytes_per_minute: u64, now: Instant) -> Self {
        let per_minute = bytes_per_minute as f64;
        Self { per_minute, available: Mutex::new((per_minute, now)) }
    }

    /// Takes `bytes` from the budget at `now` if they are available.
    pub(crate) fn take(&self, bytes: usize, now: Instant) -> bool {
        if self.per_minute <= 0.0 {
            return false;
        }
        let mut guard = self.available.lock().expect("budget lock");
        let (available, since) = *guard;
        let refilled = (available + now.saturating_duration_since(since).as_secs_f64() * self.per_minute / 60.0)
            .min(self.per_minute);
        let bytes = bytes as f64;
        let taken = bytes <= refilled;
        *guard = (if taken { refilled - bytes } else { refilled }, now.max(since));
        taken
    }
}

/// Keeps a refused request whole on the quarantine topic, within the budget. If publishing
/// fails, the caller answers 503 (Twilio retries) rather than drop what may be a customer's
/// message.
pub(crate) async fn quarantine(
    state: &AppState,
    received: &Received,
    url: &str,
    reason: &'static str,
    detail: &str,
) -> Result<(), Response> {
    if !state.quarantine_budget.take(received.body.len(), Instant::now()) {
        not_quarantined(received.endpoint, "budget");
        return Ok(());
    }
    let headers: HashMap<String, String> = DIAGNOSTIC_HEADERS
        .iter()
        .filter_map(|name| {
            let value = received.headers.get(*name)?.to_str().ok()?;
            Some(((*name).to_owned(), value.to_owned()))
        })
        .collect();
    let event = QuarantinedRequest {
        event_id: Uuid::new_v4().to_string(),
        occurred_at: wa_platform::now_millis(),
        reason: reason.to_owned(),
        detail: detail.to_owned(),
        method: received.method.to_string(),
        path: received.uri.path_and_query().map_or_else(|| received.uri.path().to_owned(), |pq| pq.to_string()),
        checked_url: url.to_owned(),
        headers,
        body: received.body.to_vec(),
    };
    match state.publish(&QUARANTINE, &event).await {
        Ok(()) => {
            metrics::counter!(wa_platform::metrics::INGRESS_QUARANTINED, "endpoint" => received.endpoint, "reason" => reason)
                .increment(1);
            tracing::warn!(endpoint = received.endpoint, reason, quarantine_id = %event.event_id, url = %url, "request quarantined");
            Ok(())
        }
        Err(reason) => Err(unavailable(received.endpoint, reason)),
    }
}

/// 503: the event was not published; the client (Twilio, the CRM) should retry. Shed load
/// (`overloaded`) is told to come back in a second, a broker failure in five.
pub(crate) fn unavailable(endpoint: &'static str, reason: NotPublished) -> Response {
    match reason {
        NotPublished::Overloaded { limit } => reject(
            endpoint,
            "overloaded",
            Problem::overloaded(format!(
                "ingress already has {limit} publishes waiting for the broker (INGRESS_MAX_IN_FLIGHT); retry shortly"
            )),
        ),
        NotPublished::NotDurable(reason) => {
            tracing::error!(endpoint, reason = %reason, "not durable; answering 503 so the sender retries");
            reject(endpoint, "broker_unavailable", Problem::unavailable(reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quarantine_budget_refills_by_the_minute_and_never_beyond_one() {
        let start = Instant::now();
        let budget = QuarantineBudget::new(6_000, start);
        assert!(budget.take(5_000, start));
        assert!(!budget.take(2_000, start), "only 1,000 bytes left");
        assert!(budget.take(1_000, start));
        // 10 s refill a sixth of the minute's bytes.
        assert!(!budget.take(1_001, start + std::time::Duration::from_secs(10)));
        assert!(budget.take(1_000, start + std::time::Duration::from_secs(10)));
        // An idle hour refills one minute's worth, not sixty.
        let later = start + std::time::Duration::from_secs(3_600);
        assert!(budget.take(6_000, later));
        assert!(!budget.take(1, later));
        assert!(!QuarantineBudget::new(0, start).take(0, later));
    }

    fn headers(items: &[(&'static str, &'static str)]) -> HeaderMap {
        items.iter().map(|(k, v)| (header::HeaderName::from_static(k), header::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn the_signed_url_comes_from_configuration_then_trusted_proxies_then_host() {
        let proxied = headers(&[
            ("host", "10.0.0.5:8080"),
            ("x-forwarded-proto", "https, http"),
            ("x-forwarded-host", "wa.example.com"),
        ]);
        let configured = PublicUrl::new(Some("https://public.example/wa/"), true, "http://127.0.0.1:1");
        assert_eq!(
            configured.for_request(&proxied, "/twilio/inbound?x=1"),
            "https://public.example/wa/twilio/inbound?x=1"
        );
        let trusted = PublicUrl::new(None, true, "http://127.0.0.1:1");
        assert_eq!(trusted.for_request(&proxied, "/twilio/inbound"), "https://wa.example.com/twilio/inbound");
        let untrusted = PublicUrl::new(None, false, "http://127.0.0.1:1");
        assert_eq!(untrusted.for_request(&proxied, "/twilio/inbound"), "http://10.0.0.5:8080/twilio/inbound");
        assert_eq!(untrusted.for_request(&HeaderMap::new(), "/x"), "http://127.0.0.1:1/x");
    }
}
