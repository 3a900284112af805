//! Status callbacks, signed as Twilio signs them: `queued`, `sent`, `delivered`, `read` for a
//! message that arrives; `queued`, `sent`, `undelivered` with an error code for an unreachable
//! recipient; `queued`, `failed` with 63016 for a free-form message outside the window. The
//! behaviour decides the delay, whether they come out of order, and whether each comes twice.

use std::time::Duration;

use wa_twilio::signature;
use wa_twilio::status::MessageStatus;

use crate::behaviour::Behaviour;

/// How a simulated message ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    /// Delivered and read.
    Read,
    /// Sent but not delivered, with this error code.
    Undelivered(u32),
    /// Refused by WhatsApp, with this error code.
    Failed(u32),
}

impl Fate {
    /// The statuses a message goes through, in order.
    pub(crate) fn statuses(self) -> Vec<(&'static str, Option<u32>)> {
        match self {
            Self::Read => vec![("queued", None), ("sent", None), ("delivered", None), ("read", None)],
            Self::Undelivered(code) => vec![("queued", None), ("sent", None), ("undelivered", Some(code))],
            Self::Failed(code) => vec![("queued", None), ("failed", Some(code))],
        }
    }

    /// The final status.
    pub(crate) fn final_status(self) -> &'static str {
        self.statuses().last().map_or("queued", |(status, _)| *status)
    }
}

/// WhatsApp's explanation for an error code, as Twilio passes it on in `ChannelStatusMessage`.
fn channel_message(code: u32) -> &'static str {
    i32::try_from(code).ok().and_then(wa_twilio::errors::lookup).map_or("Message undeliverable", |row| row.description)
}

/// One message's callbacks.
pub(crate) struct Plan {
    /// The `StatusCallback` URL.
    pub(crate) url: String,
    /// `MessageSid`, `AccountSid`, `From`, `To` and `MessagingServiceSid` if any.
    pub(crate) identity: Vec<(String, String)>,
    pub(crate) fate: Fate,
}

impl Plan {
    /// The form of each callback, in the order the behaviour sends them.
    pub(crate) fn callbacks(&self, behaviour: &Behaviour) -> Vec<Vec<(String, String)>> {
        let to = self.identity.iter().find(|(k, _)| k == "To").map_or("", |(_, v)| v.as_str());
        let mut forms: Vec<Vec<(String, String)>> = self
            .fate
            .statuses()
            .into_iter()
            .filter(|(status, _)| {
                behaviour.callback_statuses.as_ref().is_none_or(|wanted| wanted.iter().any(|w| w == status))
            })
            .map(|(status, code)| {
                let mut form = self.identity.clone();
                let mut push = |k: &str, v: &str| form.push((k.to_owned(), v.to_owned()));
                push("MessageStatus", status);
                push("SmsStatus", status);
                push("ApiVersion", "2010-04-01");
                push("ChannelPrefix", "whatsapp");
                push("ChannelToAddress", to.trim_start_matches("whatsapp:"));
                match MessageStatus::parse(status) {
                    Some(MessageStatus::Read) => push("EventType", "READ"),
                    Some(MessageStatus::Delivered) => push("EventType", "DELIVERED"),
                    _ => {}
                }
                if let Some(code) = code {
                    push("ErrorCode", &code.to_string());
                    push("ChannelStatusMessage", channel_message(code));
                }
                form
            })
            .collect();
        if behaviour.duplicate {
            let copies = forms.clone();
            forms.extend(copies);
        }
        if behaviour.reorder {
            fastrand::shuffle(&mut forms);
        } else if behaviour.duplicate {
            // In order, each callback followed by its repeat.
            let half = forms.len() / 2;
            let (first, second) = forms.split_at(half);
            forms = first.iter().zip(second).flat_map(|(a, b)| [a.clone(), b.clone()]).collect();
        }
        forms
    }
}

/// Sends a message's callbacks, signed with `auth_token`; returns the HTTP status of each (0
/// when the callback could not be delivered).
pub(crate) async fn send(
    client: &reqwest::Client,
    auth_token: &str,
    plan: &Plan,
    behaviour: &Behaviour,
    mut moved: impl FnMut(&str),
) -> Vec<(String, u16)> {
    let mut results = Vec::new();
    for form in plan.callbacks(behaviour) {
        let jitter = if behaviour.reorder { fastrand::u64(0..=behaviour.callback_delay_ms) } else { 0 };
        tokio::time::sleep(Duration::from_millis(behaviour.callback_delay_ms + jitter)).await;
        let status = form.iter().find(|(k, _)| k == "MessageStatus").map_or(String::new(), |(_, v)| v.clone());
        moved(&status);
        let signed = signature::compute(auth_token, &plan.url, &form);
        let answer = client.post(&plan.url).header(signature::HEADER, signed).form(&form).send().await;
        let code = answer.map_or(0, |response| response.status().as_u16());
        if code == 0 || code >= 400 {
            tracing::warn!(url = %plan.url, status = %status, http_status = code, "status callback not accepted");
        }
        results.push((status, code));
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(fate: Fate) -> Plan {
        Plan {
            url: "http://127.0.0.1:1/twilio/status?request_id=r1".into(),
            identity: vec![("MessageSid".into(), "SM1".into()), ("To".into(), "whatsapp:+1555".into())],
            fate,
        }
    }

    fn statuses(forms: &[Vec<(String, String)>]) -> Vec<String> {
        forms.iter().map(|form| form.iter().find(|(k, _)| k == "MessageStatus").unwrap().1.clone()).collect()
    }

    #[test]
    fn callbacks_follow_the_fate_in_order_and_repeat_when_asked() {
        let behaviour = Behaviour::default();
        assert_eq!(statuses(&plan(Fate::Read).callbacks(&behaviour)), ["queued", "sent", "delivered", "read"]);
        let failed = plan(Fate::Failed(63016)).callbacks(&behaviour);
        assert_eq!(statuses(&failed), ["queued", "failed"]);
        assert!(failed[1].contains(&("ErrorCode".into(), "63016".into())));
        let twice = Behaviour { duplicate: true, ..Behaviour::default() };
        assert_eq!(
            statuses(&plan(Fate::Undelivered(63024)).callbacks(&twice)),
            ["queued", "queued", "sent", "sent", "undelivered", "undelivered"]
        );
    }

    #[test]
    fn only_the_chosen_statuses_are_called_back() {
        let behaviour = Behaviour { callback_statuses: Some(vec!["sent".into()]), ..Behaviour::default() };
        assert_eq!(statuses(&plan(Fate::Read).callbacks(&behaviour)), ["sent"]);
    }

    #[test]
    fn reordering_keeps_every_callback() {
        let behaviour = Behaviour { reorder: true, duplicate: true, ..Behaviour::default() };
        let mut got = statuses(&plan(Fate::Read).callbacks(&behaviour));
        got.sort();
        assert_eq!(got, ["delivered", "delivered", "queued", "queued", "read", "read", "sent", "sent"]);
    }
}
