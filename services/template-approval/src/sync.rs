//! Status sync with Twilio's Content API: WhatsApp approval decisions, pauses and disables
//! become template events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use wa_platform::CancellationToken;
use wa_twilio::content::ApprovalStatus;

use crate::store::Store;
use crate::template::{Actor, Command, MetaStatus, Status, Template};

/// A client for Twilio's Content API (`https://content.twilio.com`).
#[derive(Clone)]
pub(crate) struct ContentClient {
    http: reqwest::Client,
    base_url: String,
    username: String,
    password: String,
}

/// The WhatsApp part of an approval request.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct WhatsAppApproval {
    /// An [`ApprovalStatus`]'s string (kept as Twilio sent it: one added later is not a verdict).
    pub(crate) status: String,
    /// Meta's reason, when rejected.
    #[serde(default)]
    pub(crate) rejection_reason: Option<String>,
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
    pub(crate) fn new(base_url: &str, username: &str, password: &str) -> anyhow::Result<Self> {
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
    pub(crate) async fn approvals(&self) -> Result<HashMap<String, WhatsAppApproval>, String> {
        let mut approvals = HashMap::new();
        let mut next = Some("/v1/ContentAndApprovals?PageSize=1000".to_owned());
        while let Some(path) = next {
            let response = self
                .http
                .get(format!("{}{path}", self.base_url))
                .basic_auth(&self.username, Some(&self.password))
                .send()
                .await
                .map_err(|err| err.to_string())?;
            let page: ContentPage = Self::check(response).await?.json().await.map_err(|err| err.to_string())?;
            approvals.extend(page.contents.into_iter().filter_map(|c| Some((c.sid, c.approval_requests?))));
            next = page.meta.next_page_url.as_deref().and_then(path_and_query);
        }
        Ok(approvals)
    }

    /// `POST /v1/Content/{sid}/ApprovalRequests/whatsapp`: submits for WhatsApp approval.
    pub(crate) async fn submit(&self, content_sid: &str, name: &str, category: &str) -> Result<(), String> {
        let response = self
            .http
            .post(format!("{}/v1/Content/{content_sid}/ApprovalRequests/whatsapp", self.base_url))
            .basic_auth(&self.username, Some(&self.password))
            .json(&serde_json::json!({ "name": name, "category": category.to_ascii_uppercase() }))
            .send()
            .await
            .map_err(|err| err.to_string())?;
        Self::check(response).await.map(|_| ())
    }
}

/// Whether Twilio's answer may change this template now.
fn may_change(template: &Template) -> bool {
    matches!(template.status, Status::Pending | Status::Approved | Status::Paused)
}

/// The command that records Twilio's `approval` of `template`'s current version, if the status
/// is a verdict (not `received`, `pending` or `unsubmitted`).
pub(crate) fn command_for(template: &Template, approval: &WhatsAppApproval) -> Option<Command> {
    let reason = approval.rejection_reason.clone().filter(|r| !r.is_empty());
    let status = match ApprovalStatus::parse(&approval.status)? {
        ApprovalStatus::Approved => MetaStatus::Approved,
        ApprovalStatus::Rejected => MetaStatus::Rejected(reason),
        ApprovalStatus::Paused => MetaStatus::Paused(reason),
        ApprovalStatus::Disabled => MetaStatus::Disabled(reason),
        ApprovalStatus::Received | ApprovalStatus::Pending | ApprovalStatus::Unsubmitted => return None,
    };
    Some(Command::RecordMetaStatus {
        name: template.name.clone(),
        language: template.language.clone(),
        content_sid: template.content_sid.clone(),
        status,
    })
}

/// The path and query of an absolute URL (`https://host/v1/x?y=1` → `/v1/x?y=1`).
fn path_and_query(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.find('/').map(|start| rest[start..].to_owned())
}

/// Every `interval`, lists Twilio's approvals and records the verdicts on templates that may
/// change (backing off up to 10× while Twilio fails), until `shutdown`.
pub(crate) async fn run(store: Arc<Store>, client: ContentClient, interval: Duration, shutdown: CancellationToken) {
    let mut wait = interval;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        let failed = match sync_once(&store, &client).await {
            Ok(changed) => {
                if changed > 0 {
                    tracing::info!(changed, "template statuses synced from twilio");
                }
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, retry_in = ?(wait * 2).min(interval * 10), "template status sync failed");
                true
            }
        };
        metrics::counter!("wa_template_syncs_total", "outcome" => if failed { "error" } else { "ok" }).increment(1);
        wait = if failed { (wait * 2).min(interval * 10) } else { interval };
    }
}

/// One sync: returns how many templates changed.
async fn sync_once(store: &Store, client: &ContentClient) -> Result<usize, String> {
    let candidates: Vec<Template> =
        store.read(|templates| templates.all().filter(|t| may_change(t)).cloned().collect());
    if candidates.is_empty() {
        return Ok(0);
    }
    let approvals = client.approvals().await?;
    let mut changed = 0;
    for template in candidates {
        let Some(command) = approvals.get(&template.content_sid).and_then(|approval| command_for(&template, approval))
        else {
            continue;
        };
        let events = store.execute(command, Actor::Twilio).await.map_err(|err| format!("{}: {err}", template.id()))?;
        changed += usize::from(!events.is_empty());
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::tests::definition;
    use crate::template::{apply, handle, Templates};

    fn template(status_commands: Vec<Command>) -> Template {
        let mut state = Templates::default();
        let all = [vec![Command::Register(definition("t", "en"))], status_commands].concat();
        for command in all {
            for event in handle(&state, command, Actor::Admin, 0).unwrap() {
                apply(&mut state, &event);
            }
        }
        state.get("t", "en").unwrap().clone()
    }

    fn approval(status: &str, reason: Option<&str>) -> WhatsAppApproval {
        WhatsAppApproval { status: status.to_owned(), rejection_reason: reason.map(str::to_owned) }
    }

    #[test]
    fn next_page_urls_are_followed_by_path() {
        assert_eq!(
            path_and_query("https://content.twilio.com/v1/ContentAndApprovals?PageSize=1000&PageToken=PA1").as_deref(),
            Some("/v1/ContentAndApprovals?PageSize=1000&PageToken=PA1")
        );
        assert_eq!(path_and_query("https://content.twilio.com"), None);
    }

    #[test]
    fn twilio_statuses_become_commands_about_the_current_version() {
        let submitted = template(vec![Command::Submit { name: "t".into(), language: "en".into() }]);
        let status = |answer: &str, reason: Option<&str>| match command_for(&submitted, &approval(answer, reason)) {
            Some(Command::RecordMetaStatus { content_sid, status, .. }) => {
                assert_eq!(content_sid, submitted.content_sid);
                Some(status)
            }
            None => None,
            other => panic!("{other:?}"),
        };
        assert_eq!(status("approved", None), Some(MetaStatus::Approved));
        assert_eq!(
            status("rejected", Some("INVALID_FORMAT")),
            Some(MetaStatus::Rejected(Some("INVALID_FORMAT".into())))
        );
        assert_eq!(status("rejected", Some("")), Some(MetaStatus::Rejected(None)));
        assert_eq!(status("paused", None), Some(MetaStatus::Paused(None)));
        assert_eq!(status("disabled", None), Some(MetaStatus::Disabled(None)));
        for undecided in ["received", "pending", "unsubmitted"] {
            assert_eq!(status(undecided, None), None, "{undecided}");
        }
        assert!(may_change(&submitted));
        assert!(!may_change(&template(vec![])));
    }
}
