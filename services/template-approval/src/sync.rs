//! Sync with Twilio's Content API, the truth about templates: WhatsApp approval decisions,
//! pauses and disables, Meta's re-categorizations, and edits of the content in Twilio become
//! template events.

use std::sync::Arc;
use std::time::Duration;

use wa_platform::backoff::Backoff;
use wa_platform::CancellationToken;
use wa_twilio::content::ApprovalStatus;
use wa_twilio::content_api::{ContentAndApproval, ContentClient, WhatsAppApproval};

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

/// The commands that bring `template` up to what Twilio holds: its content (types and
/// variables, when edited in Twilio), the category Meta holds, and Meta's verdict on its
/// approval (when the template's status may still change).
pub(crate) fn commands_for(template: &Template, twilio: &ContentAndApproval) -> Vec<Command> {
    let (name, language) = (template.name.clone(), template.language.clone());
    let content_sid = template.content_sid.to_string();
    let mut commands = vec![Command::RecordContent {
        name: name.clone(),
        language: language.clone(),
        content_sid: content_sid.clone(),
        types: twilio.content.types.clone(),
        variables: twilio.content.variables.clone(),
    }];
    let Some(approval) = &twilio.approval else { return commands };
    if let Some(category) = approval.category.as_deref().filter(|c| !c.is_empty()) {
        commands.push(Command::RecordCategory { name, language, content_sid, category: category.to_owned() });
    }
    if may_change(template) {
        commands.extend(command_for(template, approval));
    }
    commands
}

/// One sync: returns how many templates changed.
async fn sync_once(store: &Store, client: &ContentClient) -> Result<usize, String> {
    let templates: Vec<Template> = store.read(|templates| templates.all().cloned().collect());
    if templates.is_empty() {
        return Ok(0);
    }
    let contents = client.contents().await?;
    let mut changed = 0;
    for template in templates {
        let Some(twilio) = contents.get(template.content_sid.as_str()) else {
            continue;
        };
        let mut events = 0;
        for command in commands_for(&template, twilio) {
            // Most syncs find nothing new: only a command that changes something goes through
            // the store, which waits on the broker.
            if store.decide(command.clone(), Actor::Twilio).is_ok_and(|events| events.is_empty()) {
                continue;
            }
            match store.execute(command, Actor::Twilio).await {
                Ok(recorded) => events += recorded.len(),
                // An edit in Twilio this channel cannot use (a category Meta does not have) is
                // reported, and the rest still synced.
                Err(crate::store::ExecuteError::Refused(refusal)) => {
                    tracing::warn!(template = %template.id(), error = %refusal, "twilio's content not recorded");
                }
                Err(err) => return Err(format!("{}: {err}", template.id())),
            }
        }
        changed += usize::from(events > 0);
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
        WhatsAppApproval { status: status.to_owned(), rejection_reason: reason.map(str::to_owned), category: None }
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
