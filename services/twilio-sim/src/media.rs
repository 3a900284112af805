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

/// A media item a simulated customer sends (`POST /sim/inbound`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerMedia {
    content_type: String,
    size: usize,
}

/// Makes up the bytes of each item, keeps them, and adds `NumMedia`, `MediaUrl<n>` and
/// `MediaContentType<n>` to the webhook; returns what was attached (sid, URL, size, SHA-256).
pub(crate) fn attach(
    sim: &crate::Sim,
    message_sid: &str,
    media: &[CustomerMedia],
    params: &mut Vec<(String, String)>,
) -> Vec<serde_json::Value> {
    use sha2::Digest as _;
    if media.is_empty() {
        return Vec::new();
    }
    params.retain(|(k, _)| k != "NumMedia" && k != "MessageType");
    params.push(("NumMedia".to_owned(), media.len().to_string()));
    let kind = media[0].content_type.split('/').next().unwrap_or("document");
    let message_type = if matches!(kind, "image" | "video" | "audio") { kind } else { "document" };
    params.push(("MessageType".to_owned(), message_type.to_owned()));
    let mut attached = Vec::new();
    for (index, item) in media.iter().enumerate() {
        let media_sid = format!("ME{}", uuid::Uuid::new_v4().simple());
        let bytes: Vec<u8> = (0..item.size.min(MAX_SIZE as usize)).map(|i| (i * 31 + index * 7) as u8).collect();
        let url = format!(
            "{}/2010-04-01/Accounts/{}/Messages/{message_sid}/Media/{media_sid}",
            sim.base_url, sim.config.account_sid
        );
        params.push((format!("MediaUrl{index}"), url.clone()));
        params.push((format!("MediaContentType{index}"), item.content_type.clone()));
        let sha256: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        attached.push(serde_json::json!({"sid": media_sid, "url": url, "size": bytes.len(), "sha256": sha256}));
        sim.customer_media.lock().expect("media lock").insert(media_sid, (item.content_type.clone(), bytes));
    }
    attached
}

/// `GET` of Twilio's Media resource: Basic auth, then a redirect to the bytes (Twilio's points
/// at a short-lived storage URL).
pub(crate) async fn customer_media(
    axum::extract::State(sim): axum::extract::State<std::sync::Arc<crate::Sim>>,
    axum::extract::Path((account_sid, _message_sid, media_sid)): axum::extract::Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = crate::messages_account(&sim, &headers, &account_sid) {
        return refused;
    }
    if !sim.customer_media.lock().expect("media lock").contains_key(&media_sid) {
        return crate::twilio_error(StatusCode::NOT_FOUND, 20404, "The requested resource was not found");
    }
    (StatusCode::FOUND, [(header::LOCATION, format!("{}/sim/media-bytes/{media_sid}", sim.base_url))]).into_response()
}

/// Where a Media resource redirects: the bytes, no credentials needed.
pub(crate) async fn customer_media_bytes(
    axum::extract::State(sim): axum::extract::State<std::sync::Arc<crate::Sim>>,
    axum::extract::Path(media_sid): axum::extract::Path<String>,
) -> Response {
    match sim.customer_media.lock().expect("media lock").get(&media_sid) {
        Some((content_type, bytes)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, content_type.clone())], Body::from(bytes.clone())).into_response()
        }
        None => (StatusCode::NOT_FOUND, "no such media").into_response(),
    }
}

/// `DELETE` of Twilio's Media resource (`….json`): 204, then the media is gone.
pub(crate) async fn delete_customer_media(
    axum::extract::State(sim): axum::extract::State<std::sync::Arc<crate::Sim>>,
    axum::extract::Path((account_sid, _message_sid, media_sid)): axum::extract::Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = crate::messages_account(&sim, &headers, &account_sid) {
        return refused;
    }
    let media_sid = media_sid.trim_end_matches(".json");
    match sim.customer_media.lock().expect("media lock").remove(media_sid) {
        Some(_) => StatusCode::NO_CONTENT.into_response(),
        None => crate::twilio_error(StatusCode::NOT_FOUND, 20404, "The requested resource was not found"),
    }
}
