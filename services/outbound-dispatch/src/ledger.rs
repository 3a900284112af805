//! The ledger: what dispatch has done with each request id, projected from its own output
//! topic `wa.outbound.dispatched.v1` (replayed at start, then followed) and written through on
//! every outcome it publishes. It answers "was this request sent?" before every send, and
//! folds delivery statuses forward only.
//!
//! Claims are the one order-sensitive part: a `sending` marker claims the send, and the claim
//! that counts is the first one read back from the partition after the last release. Claims
//! are therefore only ever taken from the followed topic, in partition order
//! ([`Ledger::apply_read`]), never written through: every instance reading the partition
//! agrees on who sends.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use wa_schemas::{DispatchOutcome, OutboundDispatched};
use wa_twilio::status::MessageStatus;

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

/// Who holds the right to send a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Claim {
    /// The claim's id.
    pub(crate) id: String,
    /// The instance that made it.
    pub(crate) by: String,
}

/// One request's entry.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) stage: Stage,
    /// The claim that counts: the first read back since the last release.
    pub(crate) claim: Option<Claim>,
    /// The partition its events are on (that of its conversation, on every message topic).
    pub(crate) partition: i32,
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
    /// The CRM's metadata of the request, repeated on every event about it.
    pub(crate) metadata: BTreeMap<String, String>,
    /// How Meta prices the message, repeated on every event about it.
    pub(crate) pricing_category: Option<String>,
    pub(crate) pricing_type: Option<String>,
    /// The W3C `traceparent` of the send, so that its status callbacks (each in a trace of its
    /// own, started by Twilio) link to it.
    pub(crate) trace: Option<String>,
}

impl Entry {
    fn new(event: &OutboundDispatched) -> Self {
        Self {
            stage: Stage::Sending,
            claim: None,
            partition: -1,
            started_at: event.occurred_at,
            message_sid: None,
            status: None,
            conversation_id: event.conversation_id.clone(),
            from: event.from.clone(),
            to: event.to.clone(),
            metadata: event.metadata.clone(),
            pricing_category: event.pricing_category.clone(),
            pricing_type: event.pricing_type.clone(),
            trace: None,
        }
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
    /// Folds in an event read back from `partition` of the topic, in partition order: claims
    /// and releases, then everything [`Ledger::apply`] folds.
    pub(crate) fn apply_read(&self, event: &OutboundDispatched, partition: i32) {
        match event.kind() {
            Some(DispatchOutcome::Sending) => {
                let mut inner = self.inner.lock().expect("ledger lock");
                let claim = Claim {
                    id: event.claim_id.clone().unwrap_or_default(),
                    by: event.claimed_by.clone().unwrap_or_default(),
                };
                match inner.entries.get_mut(&event.request_id) {
                    // The first claim since the last release counts; later ones lost.
                    Some(entry) if entry.claim.is_some() || entry.stage != Stage::Sending => {}
                    Some(entry) => {
                        entry.claim = Some(claim);
                        entry.started_at = event.occurred_at;
                        entry.partition = partition;
                    }
                    None => {
                        let mut entry = Entry::new(event);
                        entry.claim = Some(claim);
                        entry.partition = partition;
                        inner.entries.insert(event.request_id.clone(), entry);
                    }
                }
            }
            Some(DispatchOutcome::Released) => {
                // A claim given up before anything reached Twilio: forget it, so the
                // redelivered authorization is claimed again. Only the claim that counts can
                // be released (a marker without a claim id is from before claims existed).
                let mut inner = self.inner.lock().expect("ledger lock");
                let releases = inner.entries.get(&event.request_id).is_some_and(|entry| {
                    entry.stage == Stage::Sending
                        && entry
                            .claim
                            .as_ref()
                            .is_none_or(|claim| event.claim_id.as_deref().is_none_or(|id| id == claim.id))
                });
                if releases {
                    inner.entries.remove(&event.request_id);
                }
            }
            _ => self.apply(event),
        }
    }

    /// Folds one of dispatch's outcomes in (read back, or written through when published).
    /// Applying an outcome twice, or an older one after a newer one, changes nothing.
    pub(crate) fn apply(&self, event: &OutboundDispatched) {
        let mut inner = self.inner.lock().expect("ledger lock");
        let Some(outcome) = event.kind() else { return };
        if matches!(outcome, DispatchOutcome::Sending | DispatchOutcome::Released) {
            return;
        }
        let entry = inner.entries.entry(event.request_id.clone()).or_insert_with(|| Entry::new(event));
        let stage = match outcome {
            DispatchOutcome::InDoubt => Stage::InDoubt,
            DispatchOutcome::Sent | DispatchOutcome::Failed | DispatchOutcome::StatusChanged => Stage::Done,
            DispatchOutcome::Sending | DispatchOutcome::Released => entry.stage,
        };
        entry.stage = entry.stage.max(stage);
        if outcome == DispatchOutcome::StatusChanged {
            if let Some(status) = &event.twilio_status {
                if MessageStatus::moves_forward(entry.status.as_deref(), status) {
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

    /// Keeps the `traceparent` of `request_id`'s send (the first one known).
    pub(crate) fn remember_trace(&self, request_id: &str, traceparent: Option<String>) {
        let mut inner = self.inner.lock().expect("ledger lock");
        if let (Some(entry), Some(traceparent)) = (inner.entries.get_mut(request_id), traceparent) {
            entry.trace.get_or_insert(traceparent);
        }
    }

    /// The entry of `request_id`.
    pub(crate) fn get(&self, request_id: &str) -> Option<Entry> {
        self.inner.lock().expect("ledger lock").entries.get(request_id).cloned()
    }

    /// Whether the claim that counts for `request_id` is `claim_id`.
    pub(crate) fn holds_claim(&self, request_id: &str, claim_id: &str) -> bool {
        let inner = self.inner.lock().expect("ledger lock");
        inner.entries.get(request_id).and_then(|entry| entry.claim.as_ref()).is_some_and(|claim| claim.id == claim_id)
    }

    /// Whether Twilio's `sid` is already some request's message.
    pub(crate) fn knows_sid(&self, sid: &str) -> bool {
        self.inner.lock().expect("ledger lock").by_sid.contains_key(sid)
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

    fn event(request_id: &str, outcome: DispatchOutcome, status: Option<&str>) -> OutboundDispatched {
        OutboundDispatched {
            event_id: String::new(),
            occurred_at: 1,
            conversation_id: "c".into(),
            request_id: request_id.into(),
            from: "f".into(),
            to: "t".into(),
            outcome: outcome.as_str().into(),
            message_sid: Some("SM1".into()),
            twilio_status: status.map(str::to_owned),
            error_code: None,
            error_message: None,
            failure_reason: None,
            attempts: 1,
            claim_id: None,
            claimed_by: None,
            pricing_category: None,
            pricing_type: None,
            metadata: BTreeMap::new(),
        }
    }

    fn claim(request_id: &str, claim_id: &str, by: &str) -> OutboundDispatched {
        let mut claim = event(request_id, DispatchOutcome::Sending, None);
        claim.message_sid = None;
        claim.claim_id = Some(claim_id.into());
        claim.claimed_by = Some(by.into());
        claim
    }

    fn release(request_id: &str, claim_id: &str) -> OutboundDispatched {
        let mut release = event(request_id, DispatchOutcome::Released, None);
        release.message_sid = None;
        release.claim_id = Some(claim_id.into());
        release
    }

    #[test]
    fn stages_never_go_back() {
        let ledger = Ledger::default();
        ledger.apply_read(&claim("r", "c1", "a"), 0);
        assert_eq!(ledger.get("r").unwrap().stage, Stage::Sending);
        ledger.apply(&event("r", DispatchOutcome::Sent, Some("queued")));
        ledger.apply_read(&claim("r", "c2", "b"), 0);
        ledger.apply(&event("r", DispatchOutcome::InDoubt, None));
        assert_eq!(ledger.get("r").unwrap().stage, Stage::Done);
        assert_eq!(ledger.request_of("SM1").as_deref(), Some("r"));
        assert!(ledger.unconfirmed_since(i64::MAX).is_empty());
    }

    /// Two instances claim the same request; both read the partition back and agree that the
    /// first claim counts. A claim's own write-through never decides.
    #[test]
    fn the_first_claim_read_back_counts_and_only_its_owner_can_release_it() {
        let ledger = Ledger::default();
        ledger.apply(&claim("r", "b-claim", "b"));
        assert!(!ledger.holds_claim("r", "b-claim"), "claims are taken from the topic only");
        ledger.apply_read(&claim("r", "a-claim", "a"), 0);
        ledger.apply_read(&claim("r", "b-claim", "b"), 0);
        assert!(ledger.holds_claim("r", "a-claim"));
        assert!(!ledger.holds_claim("r", "b-claim"));
        // The loser's release changes nothing; the winner's frees the request.
        ledger.apply_read(&release("r", "b-claim"), 0);
        assert!(ledger.holds_claim("r", "a-claim"));
        ledger.apply_read(&release("r", "a-claim"), 0);
        assert!(ledger.get("r").is_none());
        // Claimed again after the release: the next claim counts.
        ledger.apply_read(&claim("r", "b-again", "b"), 0);
        assert!(ledger.holds_claim("r", "b-again"));
        // Once an outcome is known, no claim counts any more.
        ledger.apply(&event("r", DispatchOutcome::Failed, None));
        ledger.apply_read(&release("r", "b-again"), 0);
        ledger.apply_read(&claim("r", "late", "a"), 0);
        assert!(!ledger.holds_claim("r", "late"));
        assert_eq!(ledger.get("r").unwrap().stage, Stage::Done);
    }

    #[test]
    fn a_send_still_being_retried_is_not_in_doubt() {
        let ledger = Ledger::default();
        ledger.apply_read(&claim("r", "c1", "a"), 0);
        ledger.working_on("r", true);
        assert!(ledger.unconfirmed_since(i64::MAX).is_empty());
        ledger.working_on("r", false);
        assert_eq!(ledger.unconfirmed_since(i64::MAX).len(), 1);
    }

    #[test]
    fn a_released_send_is_forgotten_but_a_done_one_is_not() {
        let ledger = Ledger::default();
        ledger.apply_read(&claim("r", "c1", "a"), 0);
        ledger.apply_read(&release("r", "c1"), 0);
        assert!(ledger.get("r").is_none());
        ledger.apply(&event("d", DispatchOutcome::Sent, None));
        ledger.apply_read(&release("d", "c1"), 0);
        assert!(ledger.get("d").is_some());
    }

    /// Any status that moves an outbound message, final ones included.
    fn any_status() -> impl Strategy<Value = &'static str> {
        prop::sample::select(
            MessageStatus::ALL
                .iter()
                .filter(|status| status.rank().is_some())
                .map(|status| status.as_str())
                .collect::<Vec<_>>(),
        )
    }

    proptest! {
        /// Status events in any order, repeated, end at the furthest status of the sequence;
        /// after a final one (read, failed, undelivered) nothing moves.
        #[test]
        fn the_folded_status_is_the_furthest_whatever_the_order(statuses in prop::collection::vec(any_status(), 1..12)) {
            let ledger = Ledger::default();
            let mut expected: Option<&str> = None;
            for status in &statuses {
                ledger.apply(&event("r", DispatchOutcome::StatusChanged, Some(status)));
                if MessageStatus::moves_forward(expected, status) {
                    expected = Some(status);
                }
            }
            let folded = ledger.get("r").unwrap().status;
            prop_assert_eq!(folded.as_deref(), expected);
            let rank = |s: &str| MessageStatus::parse(s).and_then(MessageStatus::rank).unwrap();
            let furthest = statuses.iter().map(|s| rank(s)).max().unwrap();
            let first_final = statuses.iter().position(|s| MessageStatus::parse(s).unwrap().is_final());
            match first_final {
                // Nothing moves after the first final status, so it is where the fold ends.
                Some(i) => prop_assert_eq!(rank(expected.unwrap()), statuses[..=i].iter().map(|s| rank(s)).max().unwrap()),
                None => prop_assert_eq!(rank(expected.unwrap()), furthest),
            }
        }

        /// Any interleaving of claims by three instances, with releases by their owners: at any
        /// moment at most one claim counts, and every instance that reads the same partition
        /// decides the same.
        #[test]
        fn one_claim_counts_at_a_time(steps in prop::collection::vec((0usize..3, any::<bool>()), 1..30)) {
            let readers = [Ledger::default(), Ledger::default()];
            let mut claims: Vec<Option<String>> = vec![None, None, None];
            for (n, (instance, releases)) in steps.into_iter().enumerate() {
                let record = match (&claims[instance], releases) {
                    (Some(id), true) => {
                        let record = release("r", id);
                        claims[instance] = None;
                        record
                    }
                    _ => {
                        let id = format!("{instance}-{n}");
                        claims[instance] = Some(id.clone());
                        claim("r", &id, &instance.to_string())
                    }
                };
                for reader in &readers {
                    reader.apply_read(&record, 0);
                }
                let holders: Vec<usize> = (0..3)
                    .filter(|i| claims[*i].as_ref().is_some_and(|id| readers[0].holds_claim("r", id)))
                    .collect();
                prop_assert!(holders.len() <= 1, "{holders:?}");
                for id in claims.iter().flatten() {
                    prop_assert_eq!(readers[0].holds_claim("r", id), readers[1].holds_claim("r", id));
                }
            }
        }
    }
}
