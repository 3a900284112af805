//! RFC 9457 problem responses, naming the field at fault.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem the client can act on: `type`, `title`, `status`, `detail`, and the `field` at
/// fault when there is one. Boxed, so that `Result<_, Problem>` stays small.
#[derive(Debug)]
pub struct Problem(Box<Body>);

#[derive(Debug, Serialize)]
struct Body {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
    /// An extra response header (`WWW-Authenticate`, `Retry-After`).
    #[serde(skip)]
    header: Option<(header::HeaderName, &'static str)>,
}

impl Problem {
    /// A problem of type `https://wachannel.dev/problems/<slug>`.
    pub fn new(status: StatusCode, slug: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self(Box::new(Body {
            kind: format!("https://wachannel.dev/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
            header: None,
        }))
    }

    /// 422: `field` is invalid, and `detail` says how.
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        let mut problem = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-field", "invalid field", detail);
        problem.0.field = Some(field.to_owned());
        problem
    }
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::to_string(&self.0).unwrap_or_default();
        let mut response = (status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if let Some((name, value)) = self.0.header {
            response.headers_mut().insert(name, header::HeaderValue::from_static(value));
        }
        response
    }
}

impl Problem {
    /// 404: nothing at `what`.
    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "not found", what)
    }

    /// 409: the request conflicts with the current state.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "conflict", detail)
    }

    /// 401 with `WWW-Authenticate: Bearer`.
    pub fn unauthorized() -> Self {
        let mut problem =
            Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "unauthorized", "a valid bearer token is required");
        problem.0.header = Some((header::WWW_AUTHENTICATE, "Bearer"));
        problem
    }

    /// 413: the body is larger than `limit` bytes.
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body-too-large",
            "request body too large",
            format!("the body is larger than the limit of {limit} bytes"),
        )
    }

    /// The HTTP status of this problem.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.0.status).unwrap_or(StatusCode::BAD_REQUEST)
    }

    /// A short label of the problem's class for metrics: its type's last segment
    /// (`invalid-field`, `malformed-json`, ...).
    pub fn slug(&self) -> &str {
        self.0.kind.rsplit('/').next().unwrap_or_default()
    }

    /// 503 with `Retry-After: 5`: a dependency (the broker) is unavailable; try again.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        let mut problem = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "temporarily unavailable", reason);
        problem.0.header = Some((header::RETRY_AFTER, "5"));
        problem
    }

    /// 503 with `Retry-After: 1`: the service is shedding load; try again in a moment.
    pub fn overloaded(reason: impl Into<String>) -> Self {
        let mut problem = Self::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", "overloaded", reason);
        problem.0.header = Some((header::RETRY_AFTER, "1"));
        problem
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>` with one of `tokens`
/// (constant-time compare). No tokens configured means open.
pub fn bearer_authorized(tokens: &[String], headers: &axum::http::HeaderMap) -> bool {
    use subtle::ConstantTimeEq as _;
    if tokens.is_empty() {
        return true;
    }
    let Some(presented) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    tokens.iter().any(|token| bool::from(token.as_bytes().ct_eq(presented.trim().as_bytes())))
}

/// Parses a JSON request body: 415 unless the content type is `application/json`, 400 with
/// the parser's message (which names the field) when it does not fit `T`.
pub fn json_body<T: serde::de::DeserializeOwned>(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<T, Problem> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("application/json"));
    if !is_json {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-content-type",
            "unsupported content type",
            "expected application/json",
        ));
    }
    serde_json::from_slice(body)
        .map_err(|err| Problem::new(StatusCode::BAD_REQUEST, "malformed-json", "malformed request", err.to_string()))
}
