//! RFC 9457 problem responses, naming the field at fault.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// A problem the client can act on: `type`, `title`, `status`, `detail`, and the `field` at
/// fault when there is one.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: String,
    title: &'static str,
    status: u16,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<String>,
}

impl Problem {
    /// A problem of type `https://wachannel.dev/problems/<slug>`.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: format!("https://wachannel.dev/problems/{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            field: None,
        }
    }

    /// 422: `field` is invalid, and `detail` says how.
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        let mut problem = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-field",
            "invalid field",
            detail,
        );
        problem.field = Some(field.to_owned());
        problem
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = serde_json::to_string(&self).unwrap_or_default();
        (
            status,
            [(header::CONTENT_TYPE, "application/problem+json")],
            body,
        )
            .into_response()
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
    pub fn unauthorized() -> Response {
        let mut response = Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "unauthorized",
            "a valid bearer token is required",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        response
    }

    /// 503 with `Retry-After: 5`: the broker did not acknowledge.
    pub fn unavailable(reason: impl Into<String>) -> Response {
        let mut response = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker-unavailable",
            "temporarily unavailable",
            reason,
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("5"));
        response
    }
}

/// Whether `headers` carry `Authorization: Bearer <token>` with one of `tokens`
/// (constant-time compare). No tokens configured means open.
pub fn bearer_authorized(tokens: &[String], headers: &axum::http::HeaderMap) -> bool {
    use subtle::ConstantTimeEq as _;
    if tokens.is_empty() {
        return true;
    }
    let Some(presented) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return false;
    };
    tokens
        .iter()
        .any(|token| bool::from(token.as_bytes().ct_eq(presented.trim().as_bytes())))
}
