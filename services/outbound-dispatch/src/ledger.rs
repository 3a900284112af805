//! The ledger: what dispatch has done with each request id, projected from its own output
//! topic `wa.outbound.dispatched.v1` (replayed at start, then followed) and written through on
//! every event it publishes. It answers "was this request sent?" before every send, and folds
//! delivery statuses forward only.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use wa_schemas::OutboundDispatched;

/// How far dispatch got with a request. Later stages win: a stage never goes back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// A send was started (the `sending` marker is durable) and not yet confirmed.
    Sending,
    /// Started, unconfirmed past the configured time; published as `in_doubt`.
    InDoubt,
    /// Done: sent (Twilio took it) or failed before or at Twilio.
    Done,
}

/// One request's entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) stage: Stage,
    /// When the send was started, Unix millis.
    pub(crate) started_at: i64,
    /// Twilio's sid, once known.
    pub(crate) message_sid: Option<String>,
    /// The furthest delivery status published.
    pub(crate) status: Option<String>,
    /// The request's identity, for events published about it later.
    pub(crate) conversation_id: String,
    pub(crate) from: String,
    pub(crate) to: String,
}

/// The order of delivery statuses. `None` for statuses that do not move a message (unknown
/// ones are published by ingress as received but not folded).
pub(crate) fn status_rank(status: &str) -> Option<u8> {
    Some(match status {
        "accepted" | "scheduled" => 1,
        "queued" => 2,
        "sending" => 3,
        "sent" => 4,
        "delivered" => 5,
        "read" => 6,
        "failed" | "undelivered" | "canceled" => 7,
        _ => return None,
    })
}

/// Whether nothing moves a message after `status`.
fn is_final(status: &str) -> bool {
    matches!(status, "read" | "failed" | "undelivered" | "canceled")
}

/// Whether `next` is a forward move from `current`.
pub(crate) fn moves_forward(current: Option<&str>, next: &str) -> bool {
    let Some(next_rank) = status_rank(next) else {
        return false;
    };
    match current {
        None => true,
        Some(current) if is_final(current) => false,
        Some(current) => status_rank(current).is_none_or(|rank| next_rank > rank),
    }
}

/// Every request's entry, and requests by Twilio sid.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: HashMap<String, Entry>,
    by_sid: HashMap<String, String>,
    /// Sends this process is working on right now (retrying, waiting for Twilio): not in
    /// doubt, whatever their age.
    in_flight: HashSet<String>,
}

impl Ledger {
    /// Folds one of dispatch's own events in. Applying an event twice, or an older one after
    /// a newer one, changes nothing.
    pub(crate) fn apply(&self, event: &OutboundDispatched) {
        let mut inner = self.inner.lock().expect("ledger lock");
        if event.outcome == "released" {
            // A send stopped between retries, before anything reached Twilio: forget it, so
            // the redelivered authorization is sent.
            if inner.entries.get(&event.request_id).is_some_and(|entry| entry.stage == Stage::Sending) {
                inner.entries.remove(&event.request_id);
            }
            return;
        }
        let entry = inner.entries.entry(event.request_id.clone()).or_insert_with(|| Entry {
            stage: Stage::Sending,
            started_at: event.occurred_at,
            message_sid: None,
            status: None,
            conversation_id: event.conversation_id.clone(),
            from: event.from.clone(),
            to: event.to.clone(),
        });
        let stage = match event.outcome.as_str() {
            "sending" => Stage::Sending,
            "in_doubt" => Stage::InDoubt,
            "sent" | "failed" | "status_changed" => Stage::Done,
            _ => entry.stage,
        };
        entry.stage = entry.stage.max(stage);
        if event.outcome == "status_changed" {
            if let Some(status) = &event.twilio_status {
                if moves_forward(entry.status.as_deref(), status) {
                    entry.status = Some(status.clone());
                }
            }
        }
        if let Some(sid) = &event.message_sid {
            entry.message_sid = Some(sid.clone());
            let request_id = event.request_id.clone();
            inner.by_sid.insert(sid.clone(), request_id);
        }
    }

    /// The entry of `request_id`.
    pub(crate) fn get(&self, request_id: &str) -> Option<Entry> {
        self.inner.lock().expect("ledger lock").entries.get(request_id).cloned()
    }

    /// The request a Twilio sid belongs to.
    pub(crate) fn request_of(&self, message_sid: &str) -> Option<String> {
        self.inner.lock().expect("ledger lock").by_sid.get(message_sid).cloned()
    }

    /// Marks `request_id` as being sent by this process (`true`) or no longer (`false`).
    pub(crate) fn working_on(&self, request_id: &str, working: bool) {
        let mut inner = self.inner.lock().expect("ledger lock");
        if working {
            inner.in_flight.insert(request_id.to_owned());
        } else {
            inner.in_flight.remove(request_id);
        }
    }

    /// Whether this process is sending `request_id` right now.
    pub(crate) fn is_working_on(&self, request_id: &str) -> bool {
        self.inner.lock().expect("ledger lock").in_flight.contains(request_id)
    }

    /// Requests started before `cutoff` (Unix millis), still unconfirmed, and not being sent
    /// by this process right now.
    pub(crate) fn unconfirmed_since(&self, cutoff: i64) -> Vec<(String, Entry)> {
        let inner = self.inner.lock().expect("ledger lock");
        inner
            .entries
            .iter()
            .filter(|(id, entry)| {
                entry.stage == Stage::Sending && entry.started_at < cutoff && !inner.in_flight.contains(*id)
            })
            .map(|(id, entry)| (id.clone(), entry.clone()))
            .collect()
    }

    /// How many requests it knows.
    pub(crate) fn len(&self) -> usize {
        self.inner.lock().expect("ledger lock").entries.len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn event(request_id: &str, outcome: &str, status: Option<&str>) -> OutboundDispatched {
        OutboundDispatched {
            event_id: String::new(),
            occurred_at: 1,
            conversation_id: "c".into(),
            request_id: request_id.into(),
            from: "f".into(),
            to: "t".into(),
            outcome: outcome.into(),
            message_sid: Some("SM1".into()),
            twilio_status: status.map(str::to_owned),
            error_code: None,
            error_message: None,
            failure_reason: None,
            attempts: 1,
        }
    }

    #[test]
    fn statuses_only_move_forward_and_stop_at_final_ones() {
        assert!(moves_forward(None, "queued"));
        assert!(moves_forward(Some("queued"), "delivered"));
        assert!(!moves_forward(Some("delivered"), "sent"));
        assert!(!moves_forward(Some("delivered"), "delivered"));
        assert!(moves_forward(Some("delivered"), "read"));
        assert!(!moves_forward(Some("read"), "failed"));
        assert!(!moves_forward(Some("undelivered"), "read"));
        assert!(!moves_forward(Some("sent"), "some_future_status"));
    }

    #[test]
    fn stages_never_go_back() {
        let ledger = Ledger::default();
        ledger.apply(&event("r", "sending", None));
        assert_eq!(ledger.get("r").unwrap().stage, Stage::Sending);
        ledger.apply(&event("r", "sent", Some("queued")));
        ledger.apply(&event("r", "sending", None));
        ledger.apply(&event("r", "in_doubt", None));
        assert_eq!(ledger.get("r").unwrap().stage, Stage::Done);
        assert_eq!(ledger.request_of("SM1").as_deref(), Some("r"));
        assert!(ledger.unconfirmed_since(i64::MAX).is_empty());
    }

    #[test]
    fn a_send_still_being_retried_is_not_in_doubt() {
        let ledger = Ledger::default();
        ledger.apply(&event("r", "sending", None));
        ledger.working_on("r", true);
        assert!(ledger.unconfirmed_since(i64::MAX).is_empty());
        ledger.working_on("r", false);
        assert_eq!(ledger.unconfirmed_since(i64::MAX).len(), 1);
    }

    #[test]
    fn a_released_send_is_forgotten_but_a_done_one_is_not() {
        let ledger = Ledger::default();
        ledger.apply(&event("r", "sending", None));
        ledger.apply(&event("r", "released", None));
        assert!(ledger.get("r").is_none());
        ledger.apply(&event("d", "sent", None));
        ledger.apply(&event("d", "released", None));
        assert!(ledger.get("d").is_some());
    }

    proptest! {
        /// Status events in any order, repeated, end at the furthest status of the sequence.
        #[test]
        fn the_folded_status_is_the_furthest_whatever_the_order(
            order in Just(vec!["queued", "sent", "delivered", "read", "sent", "queued"]).prop_shuffle()
        ) {
            let ledger = Ledger::default();
            for status in &order {
                ledger.apply(&event("r", "status_changed", Some(status)));
            }
            let folded = ledger.get("r").unwrap().status;
            prop_assert_eq!(folded.as_deref(), Some("read"));
        }
    }
}
