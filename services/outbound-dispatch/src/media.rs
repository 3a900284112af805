//! Outbound media checked before the send: Twilio fetches a message's `MediaUrl` itself and
//! refuses a type WhatsApp does not take or a file over its limit, but only after the message
//! was accepted (a failed status later, or a 63019/63021-style error). Asking the URL first turns
//! that into an immediate, explained `media_invalid`.
//!
//! Twilio's limits (docs "Guidance on WhatsApp Media Messages"): 16 MB for a message, 5 MB for
//! images; images JPEG and PNG (WebP only as stickers), audio OGG (Opus), AMR, 3GP, AAC and
//! MPEG, documents PDF, DOC(X), PPTX and XLSX, video MP4, contacts vCard.

use std::time::Duration;

use reqwest::header::{CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE};
use reqwest::StatusCode;

/// Largest image WhatsApp takes, in bytes.
pub(crate) const MAX_IMAGE_BYTES: u64 = 5 * 1024 * 1024;
/// Largest audio, video or document WhatsApp takes, in bytes.
pub(crate) const MAX_OTHER_BYTES: u64 = 16 * 1024 * 1024;

/// Content types WhatsApp accepts from a business, with the size limit of each.
const ACCEPTED: &[(&str, u64)] = &[
    ("image/jpeg", MAX_IMAGE_BYTES),
    ("image/jpg", MAX_IMAGE_BYTES),
    ("image/png", MAX_IMAGE_BYTES),
    ("image/webp", MAX_IMAGE_BYTES),
    ("audio/ogg", MAX_OTHER_BYTES),
    ("audio/opus", MAX_OTHER_BYTES),
    ("audio/amr", MAX_OTHER_BYTES),
    ("audio/3gpp", MAX_OTHER_BYTES),
    ("audio/aac", MAX_OTHER_BYTES),
    ("audio/mpeg", MAX_OTHER_BYTES),
    ("audio/mp4", MAX_OTHER_BYTES),
    ("video/mp4", MAX_OTHER_BYTES),
    ("video/3gpp", MAX_OTHER_BYTES),
    ("application/pdf", MAX_OTHER_BYTES),
    ("application/msword", MAX_OTHER_BYTES),
    ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", MAX_OTHER_BYTES),
    ("application/vnd.openxmlformats-officedocument.presentationml.presentation", MAX_OTHER_BYTES),
    ("application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", MAX_OTHER_BYTES),
    ("text/vcard", MAX_OTHER_BYTES),
    ("text/x-vcard", MAX_OTHER_BYTES),
];

/// What the media URL said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MediaInfo {
    /// The content type, without parameters, lowercase.
    pub(crate) content_type: String,
    /// The size in bytes, when the server told it.
    pub(crate) size: Option<u64>,
}

/// Why media cannot be sent as it is (the detail for `error_message`), or `None`.
pub(crate) fn media_problem(info: &MediaInfo) -> Option<String> {
    let Some((_, limit)) = ACCEPTED.iter().find(|(accepted, _)| *accepted == info.content_type) else {
        return Some(format!(
            "WhatsApp does not take {:?} media (images: JPEG, PNG; audio: OGG/Opus, AMR, 3GP, AAC, MPEG; video: MP4; documents: PDF, Word, PowerPoint, Excel; vCard)",
            info.content_type
        ));
    };
    match info.size {
        Some(size) if size > *limit => Some(format!(
            "the {} file is {size} bytes; WhatsApp takes at most {limit} bytes ({} MB) for it",
            info.content_type,
            limit / (1024 * 1024)
        )),
        _ => None,
    }
}

/// The outcome of asking a media URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Probe {
    /// It answered with its type (and maybe size).
    Answered(MediaInfo),
    /// It answered that there is nothing to send (4xx other than 408/429): the detail.
    Refused(String),
    /// It could not be reached or failed (timeout, connection, 5xx, 408, 429): worth retrying.
    Unreachable(String),
}

/// Asks `url` for its type and size: `HEAD`, and when the server does not allow it or leaves
/// the size out, a `GET` of its first byte (`Range: bytes=0-0`, the size in `Content-Range`).
pub(crate) async fn probe(http: &reqwest::Client, url: &str, timeout: Duration) -> Probe {
    let head = match http.head(url).timeout(timeout).send().await {
        Ok(response) => response,
        Err(error) => return Probe::Unreachable(format!("HEAD {url}: {error}")),
    };
    let head_status = head.status();
    if head_status.is_success() {
        let info = info(&head, None);
        if info.size.is_some() {
            return Probe::Answered(info);
        }
    } else if !matches!(
        head_status,
        StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED | StatusCode::FORBIDDEN
    ) {
        return status_problem("HEAD", url, head_status);
    }
    let get = match http.get(url).header(RANGE, "bytes=0-0").timeout(timeout).send().await {
        Ok(response) => response,
        Err(error) => return Probe::Unreachable(format!("GET {url}: {error}")),
    };
    let status = get.status();
    if !status.is_success() {
        return status_problem("GET", url, status);
    }
    let total = (status == StatusCode::PARTIAL_CONTENT)
        .then(|| header(&get, CONTENT_RANGE).and_then(|range| range.rsplit('/').next()?.trim().parse().ok()))
        .flatten();
    Probe::Answered(info(&get, total))
}

fn status_problem(method: &str, url: &str, status: StatusCode) -> Probe {
    let detail = format!("{method} {url} answered {status}");
    if status.is_server_error() || matches!(status, StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS) {
        Probe::Unreachable(detail)
    } else {
        Probe::Refused(detail)
    }
}

fn header(response: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<String> {
    response.headers().get(name)?.to_str().ok().map(str::to_owned)
}

/// The type and size a response states; `total` overrides `Content-Length` (a ranged answer's
/// length is that of the range).
fn info(response: &reqwest::Response, total: Option<u64>) -> MediaInfo {
    let content_type = header(response, CONTENT_TYPE)
        .and_then(|value| value.split(';').next().map(|essence| essence.trim().to_ascii_lowercase()))
        .unwrap_or_default();
    let length = (response.status() != StatusCode::PARTIAL_CONTENT)
        .then(|| header(response, CONTENT_LENGTH).and_then(|value| value.trim().parse().ok()))
        .flatten();
    MediaInfo { content_type, size: total.or(length) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(content_type: &str, size: Option<u64>) -> MediaInfo {
        MediaInfo { content_type: content_type.to_owned(), size }
    }

    #[test]
    fn images_up_to_5_mb_and_other_media_up_to_16_mb() {
        assert_eq!(media_problem(&info("image/jpeg", Some(MAX_IMAGE_BYTES))), None);
        assert!(media_problem(&info("image/png", Some(MAX_IMAGE_BYTES + 1)))
            .unwrap()
            .contains("at most 5242880 bytes"));
        assert_eq!(media_problem(&info("video/mp4", Some(MAX_OTHER_BYTES))), None);
        assert!(media_problem(&info("application/pdf", Some(MAX_OTHER_BYTES + 1))).is_some());
        assert_eq!(media_problem(&info("audio/ogg", None)), None, "an unknown size is left to Twilio");
    }

    #[test]
    fn types_whatsapp_does_not_take_are_named() {
        for content_type in ["image/gif", "video/quicktime", "text/html", ""] {
            let problem = media_problem(&info(content_type, Some(10))).unwrap();
            assert!(problem.contains(&format!("{content_type:?}")), "{problem}");
        }
    }
}
