//! The sessions of one partition, with their pending notices: pure and synchronous (time is
//! passed in), so the timer behaviour is tested with a clock the test controls.

use std::collections::{BTreeSet, HashMap, HashSet};

use uuid::Uuid;
use wa_schemas::SessionState;

use crate::session::{Change, Fact, Notice, Notified, RecentMessage, Session};

/// Notices due, each with its conversation and the session after it.
pub type DueNotices = Vec<(Uuid, Notice, Session)>;

/// One partition's sessions, which ones changed since the last snapshot, and when each next
/// notice falls due.
#[derive(Debug, Default)]
pub struct PartitionStore {
    /// Boxed: the map's buckets stay small (24 bytes), so the space it keeps free as it grows
    /// costs a pointer per free bucket, not a whole session (docs/benchmarks.md).
    sessions: HashMap<Uuid, Box<Session>>,
    dirty: HashSet<Uuid>,
    timers: BTreeSet<(i64, Uuid)>,
    lead_millis: i64,
}

impl PartitionStore {
    /// An empty store whose expiring notices come `lead_millis` before a window closes.
    pub fn new(lead_millis: i64) -> Self {
        Self { lead_millis, ..Self::default() }
    }

    /// The session of `conversation`, if anything happened in it.
    pub fn get(&self, conversation: &Uuid) -> Option<&Session> {
        self.sessions.get(conversation).map(|session| &**session)
    }

    /// How many conversations it holds.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every session.
    pub fn iter(&self) -> impl Iterator<Item = (&Uuid, &Session)> {
        self.sessions.iter().map(|(conversation, session)| (conversation, &**session))
    }

    /// Applies a fact to a conversation; a changed session is marked for the next snapshot and
    /// its notices are rescheduled.
    pub fn apply(&mut self, conversation: Uuid, fact: Fact) -> (Change, Session) {
        let session = self.sessions.entry(conversation).or_default();
        let before = **session;
        let change = session.apply(fact);
        let after = **session;
        if after != before {
            self.dirty.insert(conversation);
            self.reschedule(conversation, Some(&before), &after);
        }
        (change, after)
    }

    /// Puts a session read back from a snapshot (not marked for snapshotting again).
    pub fn restore(&mut self, conversation: Uuid, session: Session) {
        let before = self.sessions.insert(conversation, Box::new(session));
        self.reschedule(conversation, before.as_deref(), &session);
    }

    /// Forgets a conversation (a tombstone in the snapshots).
    pub fn remove(&mut self, conversation: &Uuid) {
        if let Some(before) = self.sessions.remove(conversation) {
            if let Some(at) = before.next_notice_at(self.lead_millis) {
                self.timers.remove(&(at, *conversation));
            }
        }
        self.dirty.remove(conversation);
    }

    /// Takes the notices due at `now`, in deadline order, and records them as published.
    /// Each comes with the session after it.
    pub fn take_due(&mut self, now: i64) -> DueNotices {
        let mut due = Vec::new();
        while let Some(&(at, conversation)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            let Some(session) = self.sessions.get_mut(&conversation) else { continue };
            let before = **session;
            if let Some(notice) = session.take_due_notice(now, self.lead_millis) {
                let after = **session;
                due.push((conversation, notice, after));
                self.dirty.insert(conversation);
                if let Some(next) = after.next_notice_at(self.lead_millis) {
                    self.timers.insert((next, conversation));
                }
            } else if let Some(next) = before.next_notice_at(self.lead_millis) {
                self.timers.insert((next, conversation));
            }
        }
        due
    }

    /// Marks one conversation's notices due at `now` as published without returning them.
    pub fn settle_conversation(&mut self, conversation: &Uuid, now: i64) {
        let Some(session) = self.sessions.get_mut(conversation) else { return };
        let before = **session;
        session.settle_notices(now, self.lead_millis);
        let after = **session;
        if after != before {
            self.dirty.insert(*conversation);
            self.reschedule(*conversation, Some(&before), &after);
        }
    }

    /// When the earliest pending notice falls due.
    pub fn next_due(&self) -> Option<i64> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// Marks every notice due at `now` as published without returning them (a rebuild).
    pub fn settle(&mut self, now: i64) {
        let _ = self.take_due(now);
    }

    /// The sessions changed since the last call, as snapshot records.
    pub fn take_dirty(&mut self) -> Vec<SessionState> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.into_iter().filter_map(|id| self.sessions.get(&id).map(|session| snapshot(&id, session))).collect()
    }

    fn reschedule(&mut self, conversation: Uuid, before: Option<&Session>, after: &Session) {
        let old = before.and_then(|s| s.next_notice_at(self.lead_millis));
        let new = after.next_notice_at(self.lead_millis);
        if old != new {
            if let Some(at) = old {
                self.timers.remove(&(at, conversation));
            }
            if let Some(at) = new {
                self.timers.insert((at, conversation));
            }
        }
    }
}

/// The published form of a session. Its event id is a UUIDv5 of the conversation and the
/// content, so the same state always gets the same id.
pub fn snapshot(conversation: &Uuid, session: &Session) -> SessionState {
    let notified = session.notified().as_str().to_owned();
    let recent_messages: Vec<wa_schemas::RecentMessage> = session
        .recent_messages()
        .map(|m| wa_schemas::RecentMessage { event_id: m.id.to_string(), received_at: m.at })
        .collect();
    let recent: Vec<String> = recent_messages.iter().map(|m| format!("{}@{}", m.event_id, m.received_at)).collect();
    let mut content = format!(
        "wachannel:session:{conversation}:{:?}:{:?}:{:?}:{:?}:{notified}:{}",
        session.last_customer_message_at(),
        session.entry_point_expires_at(),
        session.opted_out_at(),
        session.opted_in_at(),
        recent.join(",")
    );
    // Later facts only where they exist, so earlier states keep their ids.
    if let Some(at) = session.marketing_limited_at() {
        content.push_str(&format!(":marketing_limited@{at}"));
    }
    let replies: Vec<i64> = session.business_replies().collect();
    if let Some(at) = session.last_referral_at() {
        content.push_str(&format!(":referral@{at}:replies@{replies:?}"));
    }
    SessionState {
        event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, content.as_bytes()).to_string(),
        occurred_at: session.latest_at(),
        conversation_id: conversation.to_string(),
        last_customer_message_at: session.last_customer_message_at(),
        window_expires_at: session.window_expires_at(),
        entry_point_expires_at: session.entry_point_expires_at(),
        opted_out: session.opted_out(),
        opted_out_at: session.opted_out_at(),
        opted_in_at: session.opted_in_at(),
        notified,
        recent_messages,
        marketing_limited_at: session.marketing_limited_at(),
        last_referral_at: session.last_referral_at(),
        business_replies: replies,
    }
}

/// Reads a snapshot back. `None` when the record is not a valid session state.
pub fn from_snapshot(state: &SessionState) -> Option<(Uuid, Session)> {
    let conversation = Uuid::parse_str(&state.conversation_id).ok()?;
    // States written before the referral was kept had the entry point 72 hours from it.
    let referral_at = state
        .last_referral_at
        .or_else(|| state.entry_point_expires_at.map(|at| at - crate::session::ENTRY_POINT_MILLIS));
    let recent: Vec<RecentMessage> = state
        .recent_messages
        .iter()
        .filter_map(|m| Some(RecentMessage { at: m.received_at, id: Uuid::parse_str(&m.event_id).ok()? }))
        .collect();
    let session = Session::from_parts(
        state.last_customer_message_at,
        (referral_at, &state.business_replies),
        (state.opted_out_at, state.opted_in_at),
        state.marketing_limited_at,
        &recent,
        Notified::parse(&state.notified)?,
    );
    Some((conversation, session))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::WINDOW_MILLIS;

    const HOUR: i64 = 60 * 60 * 1000;

    fn message(at: i64) -> Fact {
        Fact::CustomerMessage { id: Some(Uuid::from_u128(at as u128)), at, referral: false, consent: None }
    }

    /// The clock is the test's: notices come exactly when due, each once, and a store restored
    /// from the snapshots (a restart, or another instance after a rebalance) carries on where
    /// the first left off.
    #[test]
    fn expiring_and_closed_notices_fire_at_their_deadlines_and_survive_a_restore() {
        let lead = HOUR;
        let mut store = PartitionStore::new(lead);
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        store.apply(a, message(0));
        store.apply(b, message(2 * HOUR));
        assert_eq!(store.next_due(), Some(WINDOW_MILLIS - lead));

        assert!(store.take_due(WINDOW_MILLIS - lead - 1).is_empty());
        let due = store.take_due(WINDOW_MILLIS - lead);
        assert_eq!(due.iter().map(|(id, n, _)| (*id, *n)).collect::<Vec<_>>(), vec![(a, Notice::Expiring)]);
        assert!(store.take_due(WINDOW_MILLIS - lead + 10).is_empty(), "published once");

        // Snapshot, and restore into a fresh store as another instance would.
        let snapshots = store.take_dirty();
        let mut restored = PartitionStore::new(lead);
        for state in &snapshots {
            let (id, session) = from_snapshot(state).unwrap();
            restored.restore(id, session);
        }
        assert_eq!(restored.get(&a), store.get(&a));
        assert_eq!(restored.next_due(), Some(WINDOW_MILLIS));
        let due = restored.take_due(WINDOW_MILLIS);
        assert_eq!(due.iter().map(|(id, n, _)| (*id, *n)).collect::<Vec<_>>(), vec![(a, Notice::Closed)]);

        // b's customer writes again before its lead: its notices move with the window.
        restored.apply(b, message(20 * HOUR));
        assert!(restored.take_due(26 * HOUR - lead).is_empty());
        assert_eq!(restored.next_due(), Some(20 * HOUR + WINDOW_MILLIS - lead));
        // Down for two days: only the closed notice is published.
        let due = restored.take_due(100 * HOUR);
        assert_eq!(due.iter().map(|(id, n, _)| (*id, *n)).collect::<Vec<_>>(), vec![(b, Notice::Closed)]);
        assert_eq!(restored.next_due(), None);
    }

    #[test]
    fn snapshots_round_trip_and_only_changes_are_marked() {
        let mut store = PartitionStore::new(HOUR);
        let a = Uuid::from_u128(7);
        let fact = Fact::CustomerMessage {
            id: Some(Uuid::from_u128(9)),
            at: HOUR,
            referral: true,
            consent: Some(crate::session::Consent::OptOut),
        };
        store.apply(a, fact);
        let snapshots = store.take_dirty();
        assert_eq!(snapshots.len(), 1);
        assert_eq!(from_snapshot(&snapshots[0]), Some((a, *store.get(&a).unwrap())));
        assert_eq!(snapshot(&a, store.get(&a).unwrap()).event_id, snapshots[0].event_id, "same state, same id");
        store.apply(a, fact);
        assert!(store.take_dirty().is_empty(), "a duplicate changes nothing");
    }
}
