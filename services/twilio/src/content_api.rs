//! A client for Twilio's Content API (`https://content.twilio.com`): creating and fetching
//! content, WhatsApp approval requests, and the paged list of every content with its approvals.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::content::Types;

/// A client for Twilio's Content API (`https://content.twilio.com`).
#[derive(Clone)]
pub struct ContentClient {
    http: reqwest::Client,
    base_url: String,
    username: String,
    password: String,
}

/// The WhatsApp part of an approval request.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct WhatsAppApproval {
    /// An [`ApprovalStatus`](crate::content::ApprovalStatus)'s string (kept as Twilio sent it:
    /// one added later is not a verdict).
    pub status: String,
    /// Meta's reason, when rejected.
    #[serde(default)]
    pub rejection_reason: Option<String>,
    /// The category Meta holds (`UTILITY`, `MARKETING`, `AUTHENTICATION`): the one asked for,
    /// or the one Meta moved it to.
    #[serde(default)]
    pub category: Option<String>,
}

/// A Content resource (`POST /v1/Content`, `GET /v1/Content/{sid}`, the items of
/// `ContentAndApprovals`): what Twilio sends for a `ContentSid`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub struct Content {
    /// `HX` + 32 hex digits.
    pub sid: String,
    /// The name given at creation.
    #[serde(default, deserialize_with = "null_as_default")]
    pub friendly_name: String,
    /// Its language (`en`, `pt_BR`, ...).
    #[serde(default, deserialize_with = "null_as_default")]
    pub language: String,
    /// A sample value per variable.
    #[serde(default, deserialize_with = "null_as_default")]
    pub variables: BTreeMap<String, String>,
    /// Each content type and its fields.
    #[serde(default, deserialize_with = "null_as_default")]
    pub types: Types,
}

fn null_as_default<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(deserializer: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// One item of `GET /v1/ContentAndApprovals`: the content and its WhatsApp approval, when it
/// was submitted.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ContentAndApproval {
    /// The content as Twilio holds it now.
    #[serde(flatten)]
    pub content: Content,
    /// The WhatsApp approval request, when the content was submitted.
    #[serde(default, rename = "approval_requests")]
    pub approval: Option<WhatsAppApproval>,
}

/// One page of `GET /v1/ContentAndApprovals`.
#[derive(Debug, Deserialize)]
struct ContentPage {
    contents: Vec<ContentAndApproval>,
    meta: PageMeta,
}

#[derive(Debug, Deserialize)]
struct PageMeta {
    next_page_url: Option<String>,
}

impl ContentClient {
    /// A client for `base_url` (`https://content.twilio.com`), authenticating as `username`
    /// (account SID or API key SID) with `password`.
    pub fn new(base_url: &str, username: &str, password: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            username: username.to_owned(),
            password: password.to_owned(),
        })
    }

    async fn check(response: reqwest::Response) -> Result<reqwest::Response, String> {
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        Err(format!("twilio answered {status}: {}", body.chars().take(300).collect::<String>()))
    }

    /// Every content with its WhatsApp approval, by Content SID: `GET /v1/ContentAndApprovals`,
    /// all pages of 1,000. The pages' `next_page_url` is followed against the configured base URL
    /// (its path and query only), so a proxy or the simulator works the same.
    pub async fn contents(&self) -> Result<HashMap<String, ContentAndApproval>, String> {
        let mut contents = HashMap::new();
        let mut next = Some("/v1/ContentAndApprovals?PageSize=1000".to_owned());
        while let Some(path) = next {
            let request =
                self.http.get(format!("{}{path}", self.base_url)).basic_auth(&self.username, Some(&self.password));
            let response = crate::traced::send(&self.http, request).await.0.map_err(|err| err.to_string())?;
            let page: ContentPage = Self::check(response).await?.json().await.map_err(|err| err.to_string())?;
            contents.extend(page.contents.into_iter().map(|c| (c.content.sid.clone(), c)));
            next = page.meta.next_page_url.as_deref().and_then(path_and_query);
        }
        Ok(contents)
    }

    /// `POST /v1/Content`: creates a content (Twilio gives it its SID).
    pub async fn create(
        &self,
        friendly_name: &str,
        language: &str,
        variables: &BTreeMap<String, String>,
        types: &Types,
    ) -> Result<Content, String> {
        let request = self
            .http
            .post(format!("{}/v1/Content", self.base_url))
            .basic_auth(&self.username, Some(&self.password))
            .json(&serde_json::json!({
                "friendly_name": friendly_name, "language": language, "variables": variables, "types": types,
            }));
        let response = crate::traced::send(&self.http, request).await.0.map_err(|err| err.to_string())?;
        Self::check(response).await?.json().await.map_err(|err| err.to_string())
    }

    /// `GET /v1/Content/{sid}`: the content, or `Ok(None)` when Twilio has no such content.
    pub async fn fetch(&self, content_sid: &str) -> Result<Option<Content>, String> {
        let request = self
            .http
            .get(format!("{}/v1/Content/{content_sid}", self.base_url))
            .basic_auth(&self.username, Some(&self.password));
        let response = crate::traced::send(&self.http, request).await.0.map_err(|err| err.to_string())?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Self::check(response).await?.json().await.map(Some).map_err(|err| err.to_string())
    }

    /// `POST /v1/Content/{sid}/ApprovalRequests/whatsapp`: submits for WhatsApp approval.
    pub async fn submit(&self, content_sid: &str, name: &str, category: &str) -> Result<(), String> {
        let request = self
            .http
            .post(format!("{}/v1/Content/{content_sid}/ApprovalRequests/whatsapp", self.base_url))
            .basic_auth(&self.username, Some(&self.password))
            .json(&serde_json::json!({ "name": name, "category": category.to_ascii_uppercase() }));
        let response = crate::traced::send(&self.http, request).await.0.map_err(|err| err.to_string())?;
        Self::check(response).await.map(|_| ())
    }
}

/// The path and query of an absolute URL (`https://host/v1/x?y=1` → `/v1/x?y=1`).
fn path_and_query(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map(|start| rest[start..].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_page_urls_are_followed_by_path() {
        assert_eq!(
            path_and_query("https://content.twilio.com/v1/ContentAndApprovals?PageSize=1000&PageToken=PA1").as_deref(),
            Some("/v1/ContentAndApprovals?PageSize=1000&PageToken=PA1")
        );
        assert_eq!(path_and_query("https://content.twilio.com"), None);
    }
}
