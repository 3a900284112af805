//! Customers' media, kept: every media item of an inbound message is downloaded from Twilio
//! with the account's credentials (Twilio's media URLs answer with a redirect to short-lived
//! storage), stored through `object_store` (a local directory by default, S3 in production) and
//! announced on `wa.inbound.media.v1`. It runs beside the webhook handlers as its own consumer
//! group on `wa.inbound.v1`, so a webhook is never held back by its media. A failed download is
//! retried with backoff, then dead-lettered with the reason; the consumer goes on. An item is
//! stored before it is deleted at Twilio (`MEDIA_DELETE_AT_TWILIO`) and announced after: a
//! record handled again once its media is gone at Twilio announces the copy it stored.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use object_store::path::Path as StorePath;
use object_store::ObjectStore;
use sha2::Digest as _;
use uuid::Uuid;
use wa_platform::backoff::Backoff;
use wa_platform::config::{self, ConfigError, EnvVar};
use wa_platform::kafka::{EventProducer, HandleError, Handler, Record};
use wa_platform::topics::INBOUND_MEDIA;
use wa_schemas::{Event as _, InboundMediaStored, InboundMessageReceived};

/// `MEDIA_STORE_URL`.
pub(crate) const STORE_URL: EnvVar = EnvVar {
    name: "MEDIA_STORE_URL",
    default: Some(".local/media"),
    doc: "where customers' media is stored: a directory (a path or file:///abs/path) or s3://bucket/prefix (credentials and region from the usual AWS_* variables)",
};
/// `MEDIA_DELETE_AT_TWILIO`.
pub(crate) const DELETE_AT_TWILIO: EnvVar = EnvVar {
    name: "MEDIA_DELETE_AT_TWILIO",
    default: Some("false"),
    doc: "true deletes each media item at Twilio (its Media resource) once it is stored",
};

/// Download attempts before a media item is dead-lettered.
const ATTEMPTS: u32 = 5;

/// Where media goes.
pub(crate) struct Store {
    store: Arc<dyn ObjectStore>,
    /// The URL of the store's root, to which object keys are appended (`file:///…/`, `s3://b/`).
    root_url: String,
    /// Prefix of every key.
    prefix: String,
}

impl Store {
    /// Opens `MEDIA_STORE_URL`: `s3://bucket/prefix`, or a directory (created if missing).
    pub(crate) fn open(url: &str) -> Result<Self, ConfigError> {
        let invalid = |reason: String| ConfigError { name: STORE_URL.name, value: url.to_owned(), reason };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(invalid("s3://bucket/prefix needs a bucket".to_owned()));
            }
            let store = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|err| invalid(err.to_string()))?;
            return Ok(Self {
                store: Arc::new(store),
                root_url: format!("s3://{bucket}/"),
                prefix: prefix.trim_matches('/').to_owned(),
            });
        }
        if url.contains("://") && !url.starts_with("file://") {
            return Err(invalid("expected a directory, file:///path or s3://bucket/prefix".to_owned()));
        }
        let dir = std::path::PathBuf::from(url.strip_prefix("file://").unwrap_or(url));
        std::fs::create_dir_all(&dir).map_err(|err| invalid(format!("cannot create the directory: {err}")))?;
        let dir = dir.canonicalize().map_err(|err| invalid(err.to_string()))?;
        let store =
            object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|err| invalid(err.to_string()))?;
        Ok(Self { store: Arc::new(store), root_url: format!("file://{}/", dir.display()), prefix: String::new() })
    }

    fn key(&self, event: &InboundMessageReceived, index: usize) -> String {
        let key = format!("{}/{}/{index}", event.conversation_id, event.message_sid);
        if self.prefix.is_empty() {
            key
        } else {
            format!("{}/{key}", self.prefix)
        }
    }
}

/// Downloads, stores and announces media.
pub(crate) struct MediaKeeper {
    pub(crate) store: Store,
    pub(crate) http: reqwest::Client,
    /// Basic-auth user and password for Twilio (account SID and auth token, or an API key).
    pub(crate) credentials: (String, String),
    pub(crate) delete_at_twilio: bool,
    pub(crate) producer: EventProducer,
}

/// Why a download did not give the bytes.
enum Download {
    /// Worth another try (no answer, 5xx, 408, 429).
    Retry(String),
    /// Will not change (401, 404, ...).
    Never(String),
}

impl MediaKeeper {
    async fn download(&self, url: &str) -> Result<(String, Bytes), Download> {
        let request = self.http.get(url).basic_auth(&self.credentials.0, Some(&self.credentials.1));
        let response = wa_twilio::traced::send(&self.http, request)
            .await
            .0
            .map_err(|err| Download::Retry(format!("GET {url}: {err}")))?;
        let status = response.status();
        if !status.is_success() {
            let detail = format!("GET {url} answered {status}");
            let again = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
            return Err(if again { Download::Retry(detail) } else { Download::Never(detail) });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        let bytes = response.bytes().await.map_err(|err| Download::Retry(format!("reading {url}: {err}")))?;
        Ok((content_type, bytes))
    }

    /// Downloads with backoff: 0.5, 1, 2, 4 s between the attempts.
    async fn download_with_retries(
        &self,
        url: &str,
        revoked: &wa_platform::CancellationToken,
    ) -> Result<(String, Bytes), HandleError> {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(4));
        for attempt in 1..=ATTEMPTS {
            match self.download(url).await {
                Ok(found) => return Ok(found),
                Err(Download::Never(detail)) => {
                    return Err(HandleError::Poison(format!("media not downloadable: {detail}")))
                }
                Err(Download::Retry(detail)) if attempt == ATTEMPTS => {
                    return Err(HandleError::Poison(format!(
                        "media not downloaded after {ATTEMPTS} attempts: {detail}"
                    )))
                }
                Err(Download::Retry(detail)) => {
                    metrics::counter!(wa_platform::metrics::INGRESS_MEDIA_RETRIES).increment(1);
                    tracing::warn!(detail = %detail, attempt, "media download failed; retrying");
                }
            }
            tokio::select! {
                () = revoked.cancelled() => return Err(HandleError::Interrupted("revoked while downloading media".to_owned())),
                () = tokio::time::sleep(backoff.next_jittered(fastrand::f64())) => {}
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Downloads the item at `url`, stores it under `key` and deletes it at Twilio when so
    /// configured: (the type Twilio served, the bytes, whether it was deleted at Twilio).
    async fn keep(
        &self,
        url: &str,
        key: &str,
        revoked: &wa_platform::CancellationToken,
    ) -> Result<(String, Bytes, bool), HandleError> {
        let (served_type, bytes) = match self.download_with_retries(url, revoked).await {
            Ok(downloaded) => downloaded,
            // Handled again after this item was kept (its announcement failed, or the record
            // moved to another instance): Twilio no longer has what it deleted, the store has it.
            Err(HandleError::Poison(reason)) => {
                return match self.kept_before(key).await? {
                    Some(bytes) => Ok((String::new(), bytes, self.delete_at_twilio)),
                    None => Err(HandleError::Poison(reason)),
                }
            }
            Err(other) => return Err(other),
        };
        self.store
            .store
            .put(&StorePath::from(key), bytes.clone().into())
            .await
            .map_err(|err| HandleError::Transient(format!("storing media {key}: {err}")))?;
        let deleted = self.delete_at_twilio && self.delete_at_twilio(url).await;
        Ok((served_type, bytes, deleted))
    }

    /// What an earlier attempt stored under `key`, if anything.
    async fn kept_before(&self, key: &str) -> Result<Option<Bytes>, HandleError> {
        let unreadable =
            |err: object_store::Error| HandleError::Transient(format!("reading stored media {key}: {err}"));
        match self.store.store.get(&StorePath::from(key)).await {
            Ok(found) => Ok(Some(found.bytes().await.map_err(unreadable)?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(unreadable(err)),
        }
    }

    async fn delete_at_twilio(&self, url: &str) -> bool {
        let resource = if url.ends_with(".json") { url.to_owned() } else { format!("{url}.json") };
        let request = self.http.delete(&resource).basic_auth(&self.credentials.0, Some(&self.credentials.1));
        match wa_twilio::traced::send(&self.http, request).await.0 {
            Ok(response) if response.status().is_success() => true,
            Ok(response) => {
                tracing::warn!(status = %response.status(), "media not deleted at twilio");
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "media not deleted at twilio");
                false
            }
        }
    }
}

impl Handler for MediaKeeper {
    /// Records whose `ce_mediacount` header says 0 have nothing to keep; records without the
    /// header (written before it existed) are decoded to find out.
    fn wants(&self, headers: Option<&rdkafka::message::OwnedHeaders>) -> bool {
        wa_platform::kafka::header_str(headers, wa_schemas::MEDIA_COUNT_HEADER) != Some("0")
    }

    async fn handle(&self, record: &Record<'_>) -> Result<(), HandleError> {
        let event = InboundMessageReceived::decode(record.payload)?;
        for (index, media) in event.media.iter().enumerate() {
            let key = self.store.key(&event, index);
            let (served_type, bytes, deleted_at_twilio) = self.keep(&media.url, &key, record.revoked).await?;
            let sha256: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
            let size = bytes.len() as i64;
            let content_type = if served_type.is_empty() { media.content_type.clone() } else { served_type };
            let stored = InboundMediaStored {
                event_id: Uuid::new_v5(
                    &Uuid::NAMESPACE_OID,
                    format!("wachannel:media:{}:{index}", event.message_sid).as_bytes(),
                )
                .to_string(),
                occurred_at: wa_platform::now_millis(),
                conversation_id: event.conversation_id.clone(),
                message_sid: event.message_sid.clone(),
                index: index as i32,
                content_type,
                size,
                sha256,
                url: format!("{}{key}", self.store.root_url),
                deleted_at_twilio,
            };
            self.producer.publish(&INBOUND_MEDIA, &stored).await?;
            metrics::counter!(wa_platform::metrics::INGRESS_MEDIA_STORED).increment(1);
            tracing::info!(message_sid = %event.message_sid, index, size, "media stored");
        }
        Ok(())
    }
}

/// Reads `MEDIA_STORE_URL` and `MEDIA_DELETE_AT_TWILIO`.
pub(crate) fn from_env() -> Result<(String, bool), ConfigError> {
    Ok((config::var_or(&STORE_URL), config::parse(&DELETE_AT_TWILIO)?))
}
