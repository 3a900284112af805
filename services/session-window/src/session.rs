//! A conversation's session: pure rules, no IO, no clock (time is passed in).
//!
//! The state folds message facts with `max` only (the latest customer message, the latest
//! click-to-WhatsApp referral, the latest opt-out and opt-in, the business's latest sends), so
//! applying a fact twice changes nothing and facts applied in any order give the same state. A customer message is also
//! recognised by its event id among the customer's latest messages, so the same message
//! replayed later with a new receive time (past ingress's dedupe horizon) changes nothing
//! either. The one field that depends on the clock is which notice of the current window was
//! published; it resets whenever the window moves.

use uuid::Uuid;

/// How long a customer message keeps the customer-service window open.
pub const WINDOW_MILLIS: i64 = 24 * 60 * 60 * 1000;
/// How long a free entry point stays open after the business's answer opened it.
pub const ENTRY_POINT_MILLIS: i64 = 72 * 60 * 60 * 1000;
/// How long after a customer's message from a click-to-WhatsApp ad or Page button the business's
/// answer opens a free entry point.
pub const ENTRY_POINT_ANSWER_MILLIS: i64 = 24 * 60 * 60 * 1000;
/// How many of the business's latest sends a session remembers.
pub const RECENT_REPLIES: usize = 4;

/// "Never" in the compact state (every real time is later).
const NEVER: i64 = i64::MIN;

/// Which notice of the current window has been published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Notified {
    /// Nothing yet.
    #[default]
    None,
    /// The window is about to close.
    Expiring,
    /// The window has closed.
    Closed,
}

impl Notified {
    /// The name carried by `wa.sessions.v1`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Expiring => "expiring",
            Self::Closed => "closed",
        }
    }

    /// Parses [`Notified::as_str`].
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "none" => Some(Self::None),
            "expiring" => Some(Self::Expiring),
            "closed" => Some(Self::Closed),
            _ => None,
        }
    }
}

/// How many of a customer's latest messages a session remembers by id.
pub const RECENT_MESSAGES: usize = 4;

/// One of the customer's latest messages: its receive time and event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecentMessage {
    /// When ingress received it.
    pub at: i64,
    /// Its event id.
    pub id: Uuid,
}

const NO_MESSAGE: RecentMessage = RecentMessage { at: NEVER, id: Uuid::nil() };

/// A conversation's session. 176 bytes, kept boxed by the store: with its key, its share of
/// the map and its pending notice, a conversation takes under 300 bytes (docs/benchmarks.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    last_customer_message_at: i64,
    last_referral_at: i64,
    opted_out_at: i64,
    opted_in_at: i64,
    /// The latest time Meta declined to deliver a marketing message to this customer (63049).
    marketing_limited_at: i64,
    /// The business's latest sends, latest first; empty slots are `NEVER`.
    replies: [i64; RECENT_REPLIES],
    /// The latest messages by (time, id), latest first; empty slots are `NO_MESSAGE`.
    recent: [RecentMessage; RECENT_MESSAGES],
    notified: Notified,
}

impl Default for Session {
    fn default() -> Self {
        Self {
            last_customer_message_at: NEVER,
            last_referral_at: NEVER,
            opted_out_at: NEVER,
            opted_in_at: NEVER,
            marketing_limited_at: NEVER,
            replies: [NEVER; RECENT_REPLIES],
            recent: [NO_MESSAGE; RECENT_MESSAGES],
            notified: Notified::None,
        }
    }
}

fn known(at: i64) -> Option<i64> {
    (at != NEVER).then_some(at)
}

/// Opting out or back in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consent {
    /// The customer no longer wants marketing messages.
    OptOut,
    /// The customer wants them again.
    OptIn,
}

/// Something that happened in a conversation, as far as the session is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    /// The customer wrote at `at`; `referral` when the message came from a click-to-WhatsApp
    /// ad; `consent` when its text is an opt-out or opt-in keyword.
    CustomerMessage {
        /// Its event id, when it has one: a message already among the latest is not applied
        /// again, whatever its time.
        id: Option<Uuid>,
        /// When Twilio received it.
        at: i64,
        /// It carried click-to-WhatsApp referral data.
        referral: bool,
        /// Its text was a consent keyword.
        consent: Option<Consent>,
    },
    /// A send failed because the customer blocked or unsubscribed (Twilio 21610 or 63014).
    SendRefusedByCustomer {
        /// When the failure was reported.
        at: i64,
    },
    /// A message of the business reached Twilio (sent): an answer, which opens a free entry
    /// point within 24 hours of a customer's message from an ad.
    BusinessReplied {
        /// When it was sent.
        at: i64,
    },
    /// Meta declined to deliver a marketing message to the customer: its per-user marketing
    /// limit (Twilio 63049).
    MarketingLimited {
        /// When the failure was reported.
        at: i64,
    },
    /// An opt-out or opt-in read back from `wa.consent.v1` (the rebuild).
    ConsentRecorded {
        /// When the customer opted out or in.
        at: i64,
        /// Which.
        consent: Consent,
    },
}

/// What a fact changed, for the events that report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Change {
    /// The window moved: opened (it was closed or never open when the message came) or
    /// extended.
    pub window: Option<WindowChange>,
    /// A new free entry point opened or was extended.
    pub entry_point: bool,
    /// Opted out or in (only when the effective consent flipped).
    pub consent: Option<Consent>,
    /// The fact moved the latest opt-out or opt-in: a consent fact to keep, whether or not
    /// the effective consent flipped.
    pub consent_fact: Option<Consent>,
}

/// How the window moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowChange {
    /// Closed (or never open) before the message, open after it.
    Opened,
    /// Open before the message, open longer after it.
    Extended,
}

impl Change {
    /// Whether anything changed.
    pub fn any(&self) -> bool {
        self.window.is_some() || self.entry_point || self.consent.is_some() || self.consent_fact.is_some()
    }
}

impl Session {
    /// Rebuilds a session from its published state.
    pub fn from_parts(
        last_customer_message_at: Option<i64>,
        (last_referral_at, replies): (Option<i64>, &[i64]),
        (opted_out_at, opted_in_at): (Option<i64>, Option<i64>),
        marketing_limited_at: Option<i64>,
        recent: &[RecentMessage],
        notified: Notified,
    ) -> Self {
        let mut session = Self {
            last_customer_message_at: last_customer_message_at.unwrap_or(NEVER),
            last_referral_at: last_referral_at.unwrap_or(NEVER),
            opted_out_at: opted_out_at.unwrap_or(NEVER),
            opted_in_at: opted_in_at.unwrap_or(NEVER),
            marketing_limited_at: marketing_limited_at.unwrap_or(NEVER),
            replies: [NEVER; RECENT_REPLIES],
            recent: [NO_MESSAGE; RECENT_MESSAGES],
            notified,
        };
        for message in recent {
            session.remember(*message);
        }
        for reply in replies {
            session.remember_reply(*reply);
        }
        session
    }

    /// Keeps the business's send at `at` if it is among the latest.
    fn remember_reply(&mut self, at: i64) {
        let last = RECENT_REPLIES - 1;
        if !self.replies.contains(&at) && at > self.replies[last] {
            self.replies[last] = at;
            self.replies.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    /// The business's latest sends the session remembers, latest first.
    pub fn business_replies(&self) -> impl Iterator<Item = i64> + '_ {
        self.replies.iter().copied().filter(|at| *at != NEVER)
    }

    /// The latest click-to-WhatsApp (or Page button) referral.
    pub fn last_referral_at(&self) -> Option<i64> {
        known(self.last_referral_at)
    }

    /// When the business's answer opened the free entry point: its first send within 24 hours
    /// of the customer's latest message from an ad.
    pub fn entry_point_opened_at(&self) -> Option<i64> {
        let referral = self.last_referral_at()?;
        let answer_until = referral.saturating_add(ENTRY_POINT_ANSWER_MILLIS);
        self.business_replies().filter(|at| *at >= referral && *at < answer_until).min()
    }

    /// Whether a message sent at `now` goes inside a free entry point: one is open, or this
    /// answer opens it (the customer's message from an ad is less than 24 hours old).
    pub fn entry_point_open(&self, now: i64) -> bool {
        let open = self.entry_point_expires_at().is_some_and(|expires| now < expires);
        let answerable = self.last_referral_at().is_some_and(|at| at <= now && now < at + ENTRY_POINT_ANSWER_MILLIS);
        open || answerable
    }

    /// The customer's latest messages the session remembers, latest first.
    pub fn recent_messages(&self) -> impl Iterator<Item = &RecentMessage> {
        self.recent.iter().filter(|m| **m != NO_MESSAGE)
    }

    /// Keeps `message` if it is among the latest (by time, then id).
    fn remember(&mut self, message: RecentMessage) {
        if self.recent.contains(&message) {
            return;
        }
        let last = RECENT_MESSAGES - 1;
        if message > self.recent[last] {
            self.recent[last] = message;
            self.recent.sort_unstable_by(|a, b| b.cmp(a));
        }
    }

    /// When the customer last wrote.
    pub fn last_customer_message_at(&self) -> Option<i64> {
        known(self.last_customer_message_at)
    }

    /// When the 24-hour window closes: 24 hours after the customer's most recent message.
    pub fn window_expires_at(&self) -> Option<i64> {
        self.last_customer_message_at().map(|at| at.saturating_add(WINDOW_MILLIS))
    }

    /// When the free entry point closes: 72 hours after the business's answer opened it.
    pub fn entry_point_expires_at(&self) -> Option<i64> {
        self.entry_point_opened_at().map(|at| at.saturating_add(ENTRY_POINT_MILLIS))
    }

    /// The latest opt-out.
    pub fn opted_out_at(&self) -> Option<i64> {
        known(self.opted_out_at)
    }

    /// The latest opt-in.
    pub fn opted_in_at(&self) -> Option<i64> {
        known(self.opted_in_at)
    }

    /// The latest time Meta declined a marketing message to this customer (63049):
    /// template-approval holds marketing back for a cool-down after it.
    pub fn marketing_limited_at(&self) -> Option<i64> {
        known(self.marketing_limited_at)
    }

    /// Opted out when the latest opt-out is at least as recent as the latest opt-in (a tie
    /// counts as out: the safer reading).
    pub fn opted_out(&self) -> bool {
        self.opted_out_at != NEVER && self.opted_out_at >= self.opted_in_at
    }

    /// Which notice of the current window was published.
    pub fn notified(&self) -> Notified {
        self.notified
    }

    /// The latest moment the state reflects.
    pub fn latest_at(&self) -> i64 {
        let notice = match self.notified {
            Notified::None => NEVER,
            Notified::Expiring | Notified::Closed => self.window_expires_at().unwrap_or(NEVER),
        };
        [
            self.last_customer_message_at,
            self.last_referral_at,
            self.opted_out_at,
            self.opted_in_at,
            self.marketing_limited_at,
            self.replies[0],
            notice,
        ]
        .into_iter()
        .max()
        .unwrap_or(NEVER)
    }

    /// Applies `fact`. Idempotent and order-independent: the result depends only on the set of
    /// facts applied.
    pub fn apply(&mut self, fact: Fact) -> Change {
        let mut change = Change::default();
        let opted_out_before = self.opted_out();
        let entry_point_before = self.entry_point_expires_at();
        let (out_before, in_before) = (self.opted_out_at, self.opted_in_at);
        match fact {
            Fact::CustomerMessage { id: Some(id), .. } if self.recent_messages().any(|m| m.id == id) => {
                // A message already applied, replayed (perhaps with a new receive time).
                return change;
            }
            Fact::CustomerMessage { id, at, referral, consent } => {
                if let Some(id) = id.filter(|id| !id.is_nil()) {
                    self.remember(RecentMessage { at, id });
                }
                if at > self.last_customer_message_at {
                    let open_before = self.window_expires_at().is_some_and(|expires| expires > at);
                    change.window = Some(if open_before { WindowChange::Extended } else { WindowChange::Opened });
                    self.last_customer_message_at = at;
                    self.notified = Notified::None;
                }
                if referral && at > self.last_referral_at {
                    self.last_referral_at = at;
                }
                match consent {
                    Some(Consent::OptOut) => self.opted_out_at = self.opted_out_at.max(at),
                    Some(Consent::OptIn) => self.opted_in_at = self.opted_in_at.max(at),
                    None => {}
                }
            }
            Fact::SendRefusedByCustomer { at } | Fact::ConsentRecorded { at, consent: Consent::OptOut } => {
                self.opted_out_at = self.opted_out_at.max(at);
            }
            Fact::ConsentRecorded { at, consent: Consent::OptIn } => self.opted_in_at = self.opted_in_at.max(at),
            Fact::MarketingLimited { at } => self.marketing_limited_at = self.marketing_limited_at.max(at),
            Fact::BusinessReplied { at } => self.remember_reply(at),
        }
        let entry_point = self.entry_point_expires_at();
        change.entry_point = entry_point.is_some() && entry_point != entry_point_before;
        if self.opted_out_at != out_before {
            change.consent_fact = Some(Consent::OptOut);
        } else if self.opted_in_at != in_before {
            change.consent_fact = Some(Consent::OptIn);
        }
        match (opted_out_before, self.opted_out()) {
            (false, true) => change.consent = Some(Consent::OptOut),
            (true, false) => change.consent = Some(Consent::OptIn),
            _ => {}
        }
        change
    }

    /// The next moment a notice falls due (`lead` before the window closes, then when it
    /// closes), if any is still to be published.
    pub fn next_notice_at(&self, lead_millis: i64) -> Option<i64> {
        let expires = self.window_expires_at()?;
        match self.notified {
            Notified::None => Some(expires.saturating_sub(lead_millis).max(self.last_customer_message_at)),
            Notified::Expiring => Some(expires),
            Notified::Closed => None,
        }
    }

    /// The notice due at `now`, and records it as published. A window that is already closed
    /// gets only its closed notice: an expiring notice after the fact helps nobody.
    pub fn take_due_notice(&mut self, now: i64, lead_millis: i64) -> Option<Notice> {
        let expires = self.window_expires_at()?;
        let due = self.next_notice_at(lead_millis)?;
        if now < due {
            return None;
        }
        let notice = if now >= expires { Notice::Closed } else { Notice::Expiring };
        self.notified = match notice {
            Notice::Closed => Notified::Closed,
            Notice::Expiring => Notified::Expiring,
        };
        Some(notice)
    }

    /// Marks the notices due by `now` as published without publishing them: what a rebuild
    /// does, so it does not announce windows that closed long ago.
    pub fn settle_notices(&mut self, now: i64, lead_millis: i64) {
        while self.take_due_notice(now, lead_millis).is_some() {}
    }
}

/// A timer notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// The window closes within the lead.
    Expiring,
    /// The window has closed.
    Closed,
}

/// Why a free-form message may not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The customer never wrote to this sender.
    NoWindow,
    /// The customer's last message is more than 24 hours old (less the safety margin).
    WindowClosed,
    /// The customer opted out, and the opt-out covers every message the business starts
    /// ([`OptOutScope::AllBusinessInitiated`]): no template may be sent.
    OptedOut,
}

impl Refusal {
    /// The machine-readable reason carried by events.
    pub fn code(self) -> &'static str {
        self.reason().as_str()
    }

    /// The reason, as the events' type.
    pub fn reason(self) -> wa_schemas::RejectionReason {
        match self {
            Self::NoWindow => wa_schemas::RejectionReason::NoWindow,
            Self::WindowClosed => wa_schemas::RejectionReason::WindowClosed,
            Self::OptedOut => wa_schemas::RejectionReason::OptedOut,
        }
    }
}

/// What is being sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Free-form text or media: needs an open window.
    FreeForm,
    /// An approved template: allowed by the window at any time (template-approval checks the
    /// template, and refuses marketing templates to opted-out customers).
    Template,
}

/// What an opt-out stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptOutScope {
    /// Marketing templates only (template-approval refuses them); utility and authentication
    /// templates and replies still go.
    #[default]
    Marketing,
    /// Every template, whatever its category; replies inside the window still go.
    AllBusinessInitiated,
}

impl std::str::FromStr for OptOutScope {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text.trim() {
            "marketing" => Ok(Self::Marketing),
            "all_business_initiated" => Ok(Self::AllBusinessInitiated),
            other => Err(format!("{other:?} is not a scope: marketing or all_business_initiated")),
        }
    }
}

/// Whether `content` may be sent at `now`: templates always (unless the customer opted out
/// and the opt-out covers every business-initiated message); free-form only while
/// `now < window_expires_at - safety_margin`, so a message does not reach Twilio just after the
/// window closed.
pub fn check(
    session: Option<&Session>,
    content: Content,
    now: i64,
    safety_margin_millis: i64,
    scope: OptOutScope,
) -> Result<(), Refusal> {
    if content == Content::Template {
        let opted_out = session.is_some_and(Session::opted_out);
        return match scope {
            OptOutScope::AllBusinessInitiated if opted_out => Err(Refusal::OptedOut),
            _ => Ok(()),
        };
    }
    match session.and_then(Session::window_expires_at) {
        None => Err(Refusal::NoWindow),
        Some(expires) if now < expires.saturating_sub(safety_margin_millis) => Ok(()),
        Some(_) => Err(Refusal::WindowClosed),
    }
}

/// Consent keywords: a customer message whose whole text is one of them opts out or back in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keywords {
    opt_out: Vec<String>,
    opt_in: Vec<String>,
}

/// Opt-out keywords by default: Twilio's standard English set, and the common words in Spanish,
/// Portuguese, French, German, Italian and Dutch.
pub const DEFAULT_OPT_OUT: &str = "stop,stopall,unsubscribe,cancel,end,quit,optout,opt out,opt-out,revoke,\
baja,darme de baja,cancelar,parar,sair,descadastrar,arret,arrêt,désabonner,desabonner,stopp,abmelden,austragen,\
disiscriviti,annulla iscrizione,afmelden,uitschrijven";
/// Opt-in keywords by default, in the same languages: only words that say nothing but "send me
/// messages again". Answers a customer may give an agent ("yes", "alta", "voltar") are not
/// among them, so an opted-out customer is never re-subscribed by a reply.
pub const DEFAULT_OPT_IN: &str = "start,unstop,subscribe,resubscribe,suscribir,suscribirme,reactivar,inscrever,\
reinscrever,réabonner,reabonner,abonnieren,iscriviti,aanmelden";

/// Keyword lists that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("keyword {0:?} is both an opt-out and an opt-in keyword")]
pub struct ConflictingKeyword(pub String);

impl Keywords {
    /// Builds the lists (compared case-insensitively, surrounding spaces and punctuation
    /// ignored). A word in both lists is refused.
    pub fn new<S: AsRef<str>>(opt_out: &[S], opt_in: &[S]) -> Result<Self, ConflictingKeyword> {
        let clean = |words: &[S]| -> Vec<String> {
            let mut words: Vec<String> =
                words.iter().map(|w| normalize(w.as_ref())).filter(|w| !w.is_empty()).collect();
            words.sort();
            words.dedup();
            words
        };
        let keywords = Self { opt_out: clean(opt_out), opt_in: clean(opt_in) };
        if let Some(word) = keywords.opt_out.iter().find(|w| keywords.opt_in.binary_search(w).is_ok()) {
            return Err(ConflictingKeyword(word.clone()));
        }
        Ok(keywords)
    }

    /// The defaults, [`DEFAULT_OPT_OUT`] and [`DEFAULT_OPT_IN`].
    pub fn defaults() -> Self {
        let split = |list: &str| list.split(',').map(str::to_owned).collect::<Vec<_>>();
        Self::new(&split(DEFAULT_OPT_OUT), &split(DEFAULT_OPT_IN)).expect("the default lists do not overlap")
    }

    /// What a message's text means for consent, with the keyword it matched.
    pub fn classify(&self, body: &str) -> Option<(Consent, String)> {
        // Keywords are short: skip normalizing long texts.
        if body.len() > 64 {
            return None;
        }
        let text = normalize(body);
        if self.opt_out.binary_search(&text).is_ok() {
            Some((Consent::OptOut, text))
        } else if self.opt_in.binary_search(&text).is_ok() {
            Some((Consent::OptIn, text))
        } else {
            None
        }
    }
}

/// Lowercase, surrounding whitespace and punctuation removed, inner whitespace collapsed.
fn normalize(text: &str) -> String {
    let trimmed = text
        .trim_matches(|c: char| c.is_whitespace() || matches!(c, '.' | '!' | '?' | '¡' | '¿' | ',' | ';' | '"' | '\''));
    trimmed.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: i64 = 60 * 60 * 1000;
    const MARKETING: OptOutScope = OptOutScope::Marketing;

    fn message(at: i64) -> Fact {
        Fact::CustomerMessage { id: None, at, referral: false, consent: None }
    }

    fn fold(facts: &[Fact]) -> Session {
        let mut session = Session::default();
        for fact in facts {
            session.apply(*fact);
        }
        session
    }

    fn any_fact() -> impl Strategy<Value = Fact> {
        let at = 1i64..10_000 * HOUR;
        let consent = prop_oneof![Just(None), Just(Some(Consent::OptOut)), Just(Some(Consent::OptIn))];
        prop_oneof![
            4 => (at.clone(), any::<bool>(), consent, any::<Option<u128>>())
                .prop_map(|(at, referral, consent, id)| Fact::CustomerMessage { id: id.map(Uuid::from_u128), at, referral, consent }),
            1 => at.clone().prop_map(|at| Fact::SendRefusedByCustomer { at }),
            1 => at.clone().prop_map(|at| Fact::MarketingLimited { at }),
            2 => at.clone().prop_map(|at| Fact::BusinessReplied { at }),
            1 => (at, any::<bool>()).prop_map(|(at, out)| Fact::ConsentRecorded { at, consent: if out { Consent::OptOut } else { Consent::OptIn } }),
        ]
    }

    #[test]
    fn metas_marketing_limit_keeps_its_latest_time_and_touches_nothing_else() {
        let mut session = Session::default();
        session.apply(message(HOUR));
        let before = session;
        assert!(!session.apply(Fact::MarketingLimited { at: 3 * HOUR }).any(), "no event: a fact for the verdicts");
        session.apply(Fact::MarketingLimited { at: 2 * HOUR });
        assert_eq!(session.marketing_limited_at(), Some(3 * HOUR));
        assert_eq!((session.window_expires_at(), session.opted_out()), (before.window_expires_at(), false));
        let (id, restored) = crate::store::from_snapshot(&crate::store::snapshot(&Uuid::nil(), &session)).unwrap();
        assert_eq!((id, restored), (Uuid::nil(), session));
    }

    #[test]
    fn a_message_opens_24_hours_and_a_later_one_extends() {
        let mut session = Session::default();
        let change = session.apply(message(HOUR));
        assert_eq!(change.window, Some(WindowChange::Opened));
        assert_eq!(session.window_expires_at(), Some(25 * HOUR));
        let change = session.apply(message(10 * HOUR));
        assert_eq!(change.window, Some(WindowChange::Extended));
        assert_eq!(session.window_expires_at(), Some(34 * HOUR));
        // A message after the window closed opens a new one.
        assert_eq!(session.apply(message(40 * HOUR)).window, Some(WindowChange::Opened));
        // An older message read late changes nothing.
        assert!(!session.apply(message(20 * HOUR)).any());
        assert_eq!(session.window_expires_at(), Some(64 * HOUR));
    }

    #[test]
    fn free_form_needs_an_open_window_with_margin_and_templates_never_do() {
        let mut session = Session::default();
        session.apply(message(HOUR));
        let expires = 25 * HOUR;
        assert_eq!(check(None, Content::FreeForm, 0, 0, MARKETING), Err(Refusal::NoWindow));
        assert_eq!(check(Some(&session), Content::FreeForm, expires - 61_000, 60_000, MARKETING), Ok(()));
        assert_eq!(
            check(Some(&session), Content::FreeForm, expires - 60_000, 60_000, MARKETING),
            Err(Refusal::WindowClosed)
        );
        assert_eq!(check(Some(&session), Content::FreeForm, expires, 0, MARKETING), Err(Refusal::WindowClosed));
        assert_eq!(check(None, Content::Template, 0, 0, MARKETING), Ok(()));
        assert_eq!(check(Some(&session), Content::Template, 100 * HOUR, 0, MARKETING), Ok(()));
    }

    #[test]
    fn an_answer_within_24_hours_of_a_referral_opens_a_72_hour_entry_point() {
        let from_ad = |at| Fact::CustomerMessage { id: None, at, referral: true, consent: None };
        let mut session = Session::default();
        // A send before the customer came from the ad answers nothing.
        session.apply(Fact::BusinessReplied { at: HOUR / 2 });
        let change = session.apply(from_ad(HOUR));
        assert!(!change.entry_point, "the customer's message alone opens nothing");
        assert_eq!(session.entry_point_expires_at(), None);
        assert!(session.entry_point_open(2 * HOUR), "an answer now would open it");
        assert!(!session.entry_point_open(25 * HOUR), "too late to open it");
        let change = session.apply(Fact::BusinessReplied { at: 5 * HOUR });
        assert!(change.entry_point);
        assert_eq!(session.entry_point_expires_at(), Some(77 * HOUR), "72 hours from the answer");
        assert!(!session.apply(Fact::BusinessReplied { at: 6 * HOUR }).entry_point, "later answers do not move it");
        assert!(session.entry_point_open(76 * HOUR) && !session.entry_point_open(77 * HOUR));
        assert_eq!(check(Some(&session), Content::FreeForm, 30 * HOUR, 0, MARKETING), Err(Refusal::WindowClosed));
        // An earlier answer read late opens it from that answer.
        session.apply(Fact::BusinessReplied { at: 3 * HOUR });
        assert_eq!(session.entry_point_expires_at(), Some(75 * HOUR));
        // Without an answer within 24 hours, there is none.
        let mut unanswered = Session::default();
        unanswered.apply(from_ad(HOUR));
        unanswered.apply(Fact::BusinessReplied { at: 26 * HOUR });
        assert_eq!(unanswered.entry_point_expires_at(), None);
    }

    #[test]
    fn keywords_and_refused_sends_opt_out_and_start_opts_back_in() {
        let keywords = Keywords::defaults();
        assert_eq!(keywords.classify("  Stop! ").map(|(c, _)| c), Some(Consent::OptOut));
        assert_eq!(keywords.classify("BAJA").map(|(c, _)| c), Some(Consent::OptOut));
        assert_eq!(keywords.classify("Arrêt").map(|(c, _)| c), Some(Consent::OptOut));
        assert_eq!(keywords.classify("opt   out").map(|(c, _)| c), Some(Consent::OptOut));
        assert_eq!(keywords.classify("start").map(|(c, _)| c), Some(Consent::OptIn));
        assert_eq!(keywords.classify("please stop sending me these"), None);
        assert_eq!(keywords.classify("stopping by later"), None);

        let mut session = Session::default();
        let out = Fact::CustomerMessage { id: None, at: HOUR, referral: false, consent: Some(Consent::OptOut) };
        assert_eq!(session.apply(out).consent, Some(Consent::OptOut));
        assert!(session.opted_out());
        assert!(!session.apply(out).any(), "the same opt-out twice changes nothing");
        let back = Fact::CustomerMessage { id: None, at: 2 * HOUR, referral: false, consent: Some(Consent::OptIn) };
        assert_eq!(session.apply(back).consent, Some(Consent::OptIn));
        assert!(!session.opted_out());
        assert_eq!(session.apply(Fact::SendRefusedByCustomer { at: 3 * HOUR }).consent, Some(Consent::OptOut));
        assert!(session.opted_out());
    }

    #[test]
    fn answers_to_an_agent_do_not_opt_a_customer_back_in() {
        let keywords = Keywords::defaults();
        for answer in ["Yes", "yes!", "Alta", "voltar", "ok", "sí", "oui", "ja"] {
            assert_eq!(keywords.classify(answer), None, "{answer}");
        }
        for word in ["START", "unstop", "Subscribe"] {
            assert_eq!(keywords.classify(word).map(|(c, _)| c), Some(Consent::OptIn), "{word}");
        }
    }

    #[test]
    fn an_opt_out_for_all_business_initiated_messages_refuses_every_template_but_not_replies() {
        let mut session = Session::default();
        session.apply(Fact::CustomerMessage { id: None, at: HOUR, referral: false, consent: Some(Consent::OptOut) });
        let all = OptOutScope::AllBusinessInitiated;
        assert_eq!(check(Some(&session), Content::Template, 2 * HOUR, 0, all), Err(Refusal::OptedOut));
        assert_eq!(check(Some(&session), Content::FreeForm, 2 * HOUR, 0, all), Ok(()), "a reply inside the window");
        assert_eq!(check(Some(&session), Content::Template, 2 * HOUR, 0, MARKETING), Ok(()));
        assert_eq!(check(None, Content::Template, 2 * HOUR, 0, all), Ok(()));
        assert_eq!("all_business_initiated".parse(), Ok(all));
        assert!("everything".parse::<OptOutScope>().is_err());
    }

    #[test]
    fn a_message_replayed_with_a_new_receive_time_changes_nothing() {
        let id = Uuid::from_u128(42);
        let mut session = Session::default();
        session.apply(Fact::CustomerMessage { id: Some(id), at: HOUR, referral: false, consent: None });
        let before = session;
        // Re-posted 25 hours later, past ingress's dedupe horizon: a new receive time.
        let replay =
            Fact::CustomerMessage { id: Some(id), at: 26 * HOUR, referral: true, consent: Some(Consent::OptIn) };
        assert_eq!(session.apply(replay), Change::default());
        assert_eq!(session, before);
        assert_eq!(session.window_expires_at(), Some(25 * HOUR));
        // Another message of the same customer still opens a window, and the first one, among
        // the latest four, is still recognised.
        for n in 1..RECENT_MESSAGES as i64 {
            session.apply(Fact::CustomerMessage {
                id: Some(Uuid::from_u128(n as u128)),
                at: HOUR + n,
                referral: false,
                consent: None,
            });
        }
        assert!(!session.apply(replay).any());
        assert_eq!(session.recent_messages().count(), RECENT_MESSAGES);
        assert_eq!(session.recent_messages().next().map(|m| m.at), Some(HOUR + RECENT_MESSAGES as i64 - 1));
    }

    #[test]
    fn overlapping_keyword_lists_are_refused() {
        assert_eq!(Keywords::new(&["stop", "no"], &["NO "]), Err(ConflictingKeyword("no".to_owned())));
    }

    #[test]
    fn notices_fall_due_at_the_lead_then_at_expiry() {
        let lead = HOUR;
        let mut session = Session::default();
        session.apply(message(0));
        assert_eq!(session.next_notice_at(lead), Some(23 * HOUR));
        assert_eq!(session.take_due_notice(23 * HOUR - 1, lead), None);
        assert_eq!(session.take_due_notice(23 * HOUR, lead), Some(Notice::Expiring));
        assert_eq!(session.take_due_notice(23 * HOUR + 5, lead), None, "published once");
        assert_eq!(session.next_notice_at(lead), Some(24 * HOUR));
        assert_eq!(session.take_due_notice(24 * HOUR, lead), Some(Notice::Closed));
        assert_eq!(session.next_notice_at(lead), None);
        // A new message resets the notices for the new window.
        session.apply(message(30 * HOUR));
        assert_eq!(session.notified(), Notified::None);
        assert_eq!(session.next_notice_at(lead), Some(53 * HOUR));
    }

    #[test]
    fn a_window_found_closed_gets_only_its_closed_notice() {
        let mut session = Session::default();
        session.apply(message(0));
        assert_eq!(session.take_due_notice(30 * HOUR, HOUR), Some(Notice::Closed));
        assert_eq!(session.take_due_notice(31 * HOUR, HOUR), None);
    }

    proptest! {
        /// Any of the customer's latest messages, replayed with any new time, changes nothing.
        #[test]
        fn a_replay_of_a_recent_message_never_moves_the_state(facts in prop::collection::vec(any_fact(), 1..30), pick in any::<prop::sample::Index>(), later in 0i64..100 * HOUR) {
            let session = fold(&facts);
            let recent: Vec<RecentMessage> = session.recent_messages().copied().collect();
            prop_assume!(!recent.is_empty());
            let replayed = recent[pick.index(recent.len())];
            let mut after = session;
            let replay = Fact::CustomerMessage { id: Some(replayed.id), at: replayed.at + later, referral: true, consent: Some(Consent::OptIn) };
            prop_assert!(!after.apply(replay).any());
            prop_assert_eq!(after, session);
        }

        #[test]
        fn duplicates_and_order_do_not_change_the_state(mut facts in prop::collection::vec(any_fact(), 1..30), seed in any::<u64>()) {
            let expected = fold(&facts);
            let mut doubled = facts.clone();
            doubled.extend(facts.iter().copied());
            prop_assert_eq!(fold(&doubled), expected);
            let len = facts.len();
            facts.rotate_left((seed as usize) % len);
            facts.reverse();
            prop_assert_eq!(fold(&facts), expected);
        }

        #[test]
        fn the_window_is_24_hours_from_the_latest_customer_message(facts in prop::collection::vec(any_fact(), 1..30)) {
            let session = fold(&facts);
            let latest = facts.iter().filter_map(|f| match f { Fact::CustomerMessage { at, .. } => Some(*at), _ => None }).max();
            prop_assert_eq!(session.window_expires_at(), latest.map(|at| at + WINDOW_MILLIS));
            // The entry point: 72 hours from the first answer within 24 hours of the latest
            // referral, among the business's latest sends the session keeps.
            let latest_referral = facts.iter().filter_map(|f| match f { Fact::CustomerMessage { at, referral: true, .. } => Some(*at), _ => None }).max();
            let mut replies: Vec<i64> = facts.iter().filter_map(|f| match f { Fact::BusinessReplied { at } => Some(*at), _ => None }).collect();
            replies.sort_unstable_by(|a, b| b.cmp(a));
            replies.dedup();
            replies.truncate(RECENT_REPLIES);
            let opened = latest_referral.and_then(|referral| replies.iter().copied().filter(|at| *at >= referral && *at < referral + 24 * HOUR).min());
            prop_assert_eq!(session.entry_point_expires_at(), opened.map(|at| at + ENTRY_POINT_MILLIS));
        }

        #[test]
        fn opted_out_follows_the_latest_consent_fact(facts in prop::collection::vec(any_fact(), 1..30)) {
            let session = fold(&facts);
            let latest_out = facts.iter().filter_map(|f| match f {
                Fact::SendRefusedByCustomer { at }
                | Fact::ConsentRecorded { at, consent: Consent::OptOut }
                | Fact::CustomerMessage { at, consent: Some(Consent::OptOut), .. } => Some(*at),
                _ => None,
            }).max();
            let latest_in = facts.iter().filter_map(|f| match f {
                Fact::CustomerMessage { at, consent: Some(Consent::OptIn), .. }
                | Fact::ConsentRecorded { at, consent: Consent::OptIn } => Some(*at),
                _ => None,
            }).max();
            prop_assert_eq!(session.opted_out(), latest_out.is_some_and(|out| latest_in.is_none_or(|i| out >= i)));
        }

        #[test]
        fn free_form_allowed_exactly_before_expiry_less_margin(at in 0i64..1_000 * HOUR, offset in -48 * HOUR..48 * HOUR, margin in 0i64..HOUR) {
            let mut session = Session::default();
            session.apply(message(at));
            let now = at + offset;
            prop_assert_eq!(check(Some(&session), Content::FreeForm, now, margin, MARKETING).is_ok(), now < at + WINDOW_MILLIS - margin);
            prop_assert!(check(Some(&session), Content::Template, now, margin, MARKETING).is_ok());
        }

        #[test]
        fn each_notice_is_published_once_and_never_early(at in 0i64..1_000 * HOUR, lead in 0i64..3 * HOUR, steps in prop::collection::vec(0i64..4 * HOUR, 1..40)) {
            let mut session = Session::default();
            session.apply(message(at));
            let expires = at + WINDOW_MILLIS;
            let mut now = at;
            let mut published = Vec::new();
            for step in steps {
                now += step;
                if let Some(notice) = session.take_due_notice(now, lead) {
                    published.push((notice, now));
                }
            }
            now += WINDOW_MILLIS;
            if let Some(notice) = session.take_due_notice(now, lead) {
                published.push((notice, now));
            }
            prop_assert!(published.len() <= 2);
            prop_assert_eq!(published.last().map(|(n, _)| *n), Some(Notice::Closed));
            for (notice, when) in &published {
                match notice {
                    Notice::Expiring => prop_assert!(*when >= expires - lead && *when < expires),
                    Notice::Closed => prop_assert!(*when >= expires),
                }
            }
        }
    }
}
