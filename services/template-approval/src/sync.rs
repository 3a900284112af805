//! Status sync with Twilio's Content API: WhatsApp approval decisions, pauses and disables
//! become template events.

use std::sync::Arc;
use std::time::Duration;

use wa_platform::backoff::Backoff;
use wa_platform::CancellationToken;
use wa_twilio::content::ApprovalStatus;
use wa_twilio::content_api::{ContentClient, WhatsAppApproval};

use crate::store::Store;
use crate::template::{Actor, Command, MetaStatus, Status, Template};

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
        content_sid: template.content_sid.to_string(),
        status,
    })
}

/// Every `interval`, lists Twilio's approvals and records the verdicts on templates that may
/// change (backing off up to 10× while Twilio fails), until `shutdown`.
pub(crate) async fn run(store: Arc<Store>, client: ContentClient, interval: Duration, shutdown: CancellationToken) {
    // Every interval; after a failure, sooner retries would only add load: back off to 10×.
    let mut backoff = Backoff::new(interval * 2, interval * 10);
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
                wait = backoff.next_wait();
                tracing::warn!(error = %err, retry_in = ?wait, "template status sync failed");
                true
            }
        };
        metrics::counter!(wa_platform::metrics::TEMPLATE_SYNCS, "outcome" => if failed { "error" } else { "ok" })
            .increment(1);
        if !failed {
            wait = interval;
            backoff = Backoff::new(interval * 2, interval * 10);
        }
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
        let Some(command) =
            approvals.get(template.content_sid.as_str()).and_then(|approval| command_for(&template, approval))
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
    fn twilio_statuses_become_commands_about_the_current_version() {
        let submitted = template(vec![Command::Submit { name: "t".into(), language: "en".into() }]);
        let status = |answer: &str, reason: Option<&str>| match command_for(&submitted, &approval(answer, reason)) {
            Some(Command::RecordMetaStatus { content_sid, status, .. }) => {
                assert_eq!(content_sid, submitted.content_sid.as_str());
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
