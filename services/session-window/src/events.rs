//! The events session-window publishes on `wa.session.events.v1`. Their ids are UUIDv5 of the
//! conversation, the type and the cause, so an event republished after a restart keeps its id.

use uuid::Uuid;
use wa_schemas::{SessionChange, SessionEvent};

use crate::session::{Change, Consent, Notice, Session, WindowChange};

fn event(
    conversation: &Uuid,
    kind: SessionChange,
    cause: &str,
    occurred_at: i64,
    session: &Session,
    cause_event_id: Option<&str>,
    reason: Option<&str>,
) -> SessionEvent {
    SessionEvent {
        event_id: Uuid::new_v5(
            &Uuid::NAMESPACE_OID,
            format!("wachannel:session:{conversation}:{kind}:{cause}").as_bytes(),
        )
        .to_string(),
        occurred_at,
        conversation_id: conversation.to_string(),
        kind: kind.as_str().to_owned(),
        window_expires_at: session.window_expires_at(),
        entry_point_expires_at: session.entry_point_expires_at(),
        cause_event_id: cause_event_id.map(str::to_owned),
        reason: reason.map(str::to_owned),
    }
}

/// The events a fact's change causes. `historic`: the window it opened had already closed when
/// it was read (history replayed), so no window event is published for it.
pub(crate) fn for_change(
    conversation: &Uuid,
    change: &Change,
    session: &Session,
    at: i64,
    cause_event_id: &str,
    reason: Option<&str>,
    historic: bool,
) -> Vec<SessionEvent> {
    let mut events = Vec::new();
    let caused =
        |kind: SessionChange| event(conversation, kind, cause_event_id, at, session, Some(cause_event_id), None);
    match change.window {
        Some(_) if historic => {}
        Some(WindowChange::Opened) => events.push(caused(SessionChange::WindowOpened)),
        Some(WindowChange::Extended) => events.push(caused(SessionChange::WindowExtended)),
        None => {}
    }
    if change.entry_point && !historic {
        events.push(caused(SessionChange::EntryPointOpened));
    }
    match change.consent {
        Some(Consent::OptOut) => events.push(event(
            conversation,
            SessionChange::OptedOut,
            cause_event_id,
            at,
            session,
            Some(cause_event_id),
            reason,
        )),
        Some(Consent::OptIn) => events.push(event(
            conversation,
            SessionChange::OptedIn,
            cause_event_id,
            at,
            session,
            Some(cause_event_id),
            reason,
        )),
        None => {}
    }
    events
}

/// A timer notice: `window_expiring` at the lead before the window closes, `window_closed` when
/// it closes (the deadline is the event's time, whenever it was published).
pub(crate) fn notice(conversation: &Uuid, notice: Notice, session: &Session, lead_millis: i64) -> SessionEvent {
    let expires = session.window_expires_at().unwrap_or_default();
    let (kind, at) = match notice {
        Notice::Expiring => (SessionChange::WindowExpiring, expires - lead_millis),
        Notice::Closed => (SessionChange::WindowClosed, expires),
    };
    event(conversation, kind, &expires.to_string(), at, session, None, None)
}
