//! Calls to Twilio's REST APIs (messages, content, media) as OpenTelemetry HTTP client spans,
//! named by their method, with `http.request.method`, `url.full` (scheme, host and path: no query string, which may hold
//! phone numbers, and never credentials), `server.address`, `http.response.status_code` and
//! Twilio's error code when it answers one.

use tracing::Instrument as _;

/// Sends `request` with `http` inside a client span. The span is returned with the response,
/// so the caller can record Twilio's error code once it has read the body.
pub async fn send(
    http: &reqwest::Client,
    request: reqwest::RequestBuilder,
) -> (Result<reqwest::Response, reqwest::Error>, tracing::Span) {
    let request = match request.build() {
        Ok(request) => request,
        Err(err) => return (Err(err), tracing::Span::none()),
    };
    let url = request.url();
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "twilio",
        otel.name = %method,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        http.request.method = %method,
        url.full = format!("{}://{}{}", url.scheme(), url.host_str().unwrap_or_default(), url.path()),
        server.address = url.host_str().unwrap_or_default(),
        http.response.status_code = tracing::field::Empty,
        twilio.error_code = tracing::field::Empty,
    );
    let result = http.execute(request).instrument(span.clone()).await;
    match &result {
        Ok(response) => {
            span.record("http.response.status_code", response.status().as_u16());
            if !response.status().is_success() {
                span.record("otel.status_code", "ERROR");
            }
        }
        Err(_) => {
            span.record("otel.status_code", "ERROR");
        }
    }
    (result, span)
}
