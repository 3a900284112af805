//! `/sim/media/{name}`: files of a chosen type and size for outbound media tests, answered the
//! way web servers and object stores do: `HEAD` with the type and length, `GET` with the body or,
//! for `Range: bytes=0-0`, its first byte and `Content-Range`. Query parameters: `type` (default
//! `image/jpeg`), `size` in bytes (default 1024, at most 32 MiB), `head` (a status `HEAD` answers
//! instead, e.g. 405 as some servers and 403 as presigned URLs do), `status` (a status every
//! request gets, e.g. 404).

use axum::body::Body;
use axum::extract::Query;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// Largest file the simulator makes up.
const MAX_SIZE: u64 = 32 * 1024 * 1024;

/// How a simulated media file answers.
#[derive(Debug, Deserialize)]
pub(crate) struct MediaQuery {
    #[serde(rename = "type")]
    content_type: Option<String>,
    size: Option<u64>,
    head: Option<u16>,
    status: Option<u16>,
}

impl MediaQuery {
    fn content_type(&self) -> String {
        self.content_type.clone().unwrap_or_else(|| "image/jpeg".to_owned())
    }

    fn size(&self) -> u64 {
        self.size.unwrap_or(1024).min(MAX_SIZE)
    }

    fn forced(&self, status: Option<u16>) -> Option<Response> {
        let status = StatusCode::from_u16(status?).ok()?;
        Some((status, format!("simulated {status}")).into_response())
    }
}

/// `HEAD /sim/media/{name}`.
pub(crate) async fn head(Query(query): Query<MediaQuery>) -> Response {
    if let Some(forced) = query.forced(query.status).or_else(|| query.forced(query.head)) {
        return forced;
    }
    let headers = [(header::CONTENT_TYPE, query.content_type()), (header::CONTENT_LENGTH, query.size().to_string())];
    (StatusCode::OK, headers).into_response()
}

/// `GET /sim/media/{name}`, whole or its first byte.
pub(crate) async fn get(Query(query): Query<MediaQuery>, headers: HeaderMap) -> Response {
    if let Some(forced) = query.forced(query.status) {
        return forced;
    }
    let size = query.size();
    let first_byte = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) == Some("bytes=0-0");
    if first_byte && size > 0 {
        let range = format!("bytes 0-0/{size}");
        return (
            StatusCode::PARTIAL_CONTENT,
            [(header::CONTENT_TYPE, query.content_type()), (header::CONTENT_RANGE, range)],
            Body::from(vec![0u8]),
        )
            .into_response();
    }
    let body = vec![0u8; usize::try_from(size).unwrap_or(0)];
    (StatusCode::OK, [(header::CONTENT_TYPE, query.content_type())], Body::from(body)).into_response()
}
