//! A client for Twilio's Content API (`https://content.twilio.com`): WhatsApp approval
//! requests and the paged list of every content with its approvals.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

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
    /// An [`ApprovalStatus`]'s string (kept as Twilio sent it: one added later is not a verdict).
    pub status: String,
    /// Meta's reason, when rejected.
    #[serde(default)]
    pub rejection_reason: Option<String>,
}

/// One page of `GET /v1/ContentAndApprovals`.
#[derive(Debug, Deserialize)]
struct ContentPage {
    contents: Vec<ContentAndApprovals>,
    meta: PageMeta,
}

#[derive(Debug, Deserialize)]
struct ContentAndApprovals {
    sid: String,
    /// The WhatsApp approval request, when the content was submitted.
    #[serde(default)]
    approval_requests: Option<WhatsAppApproval>,
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

    /// Every content's WhatsApp approval, by Content SID: `GET /v1/ContentAndApprovals`, all
    /// pages of 1,000. The pages' `next_page_url` is followed against the configured base URL
    /// (its path and query only), so a proxy or the simulator works the same.
    pub async fn approvals(&self) -> Result<HashMap<String, WhatsAppApproval>, String> {
        let mut approvals = HashMap::new();
        let mut next = Some("/v1/ContentAndApprovals?PageSize=1000".to_owned());
        while let Some(path) = next {
            let request =
                self.http.get(format!("{}{path}", self.base_url)).basic_auth(&self.username, Some(&self.password));
            let response = crate::traced::send(&self.http, request).await.0.map_err(|err| err.to_string())?;
            let page: ContentPage = Self::check(response).await?.json().await.map_err(|err| err.to_string())?;
            approvals.extend(page.contents.into_iter().filter_map(|c| Some((c.sid, c.approval_requests?))));
            next = page.meta.next_page_url.as_deref().and_then(path_and_query);
        }
        Ok(approvals)
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
