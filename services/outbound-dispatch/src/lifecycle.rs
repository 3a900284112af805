//! One instance's handling of one authorized request, as a pure state machine.
//!
//! The order is what keeps a message from reaching Twilio twice: look the request up in the
//! ledger; fail a free-form message whose window has closed; check its media; wait for the
//! sender's pace; look it up again (the wait may have been long); claim it and read the claim
//! back (only the first claim read back from the partition sends); call Twilio, retrying only
//! what Twilio did not create, with backoff up to the retry deadline; look an ambiguous answer up
//! in Twilio's Messages list; publish the outcome. A claim is given back (`released`) only while
//! nothing that may have created a message has been sent.
//!
//! [`Lifecycle`] holds no IO and reads no clock: the dispatch handler performs each [`Step`] it
//! returns and reports what happened as an [`Input`]; the ledger is read, never written.

use std::time::Duration;

use wa_platform::backoff::Backoff;
use wa_schemas::DispatchOutcome;
use wa_twilio::messages_api::{MessageResource, SendFailure, TwilioError};

use crate::ledger::{Ledger, Stage};

/// The first wait before a retry; it doubles per retry up to [`MAX_BACKOFF`], with jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// The longest wait between two retries.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// What the handler does next.
#[derive(Debug)]
pub(crate) enum Step {
    /// Ask the media URL for its type and size, then report [`Input::MediaChecked`].
    CheckMedia,
    /// Wait for a slot of the sender's pace, then report [`Input::PaceAcquired`].
    AwaitPace,
    /// Publish the `sending` claim and wait until it is read back, then report
    /// [`Input::ClaimReadBack`].
    Claim,
    /// Call Twilio's Messages API (this is attempt `attempt`), then report [`Input::Answered`].
    /// The point of no return: a revoke noticed before the call is reported instead.
    Call {
        /// 1 for the first call.
        attempt: i32,
    },
    /// Sleep this long before retrying, then report [`Input::BackedOff`].
    Backoff {
        /// The wait.
        wait: Duration,
        /// Why the last call is retried.
        error: TwilioError,
    },
    /// Look the message up in Twilio's Messages list (created no earlier than `since`, Unix
    /// millis), then report [`Input::LookedUp`].
    LookUp {
        /// When the ambiguous call started.
        since: i64,
    },
    /// Publish this outcome; the record is then done.
    Finish(Outcome),
    /// Give the claim back (nothing that may have created a message was sent), then stop.
    Release(Stop),
    /// Stop without publishing anything: the record is handled again.
    Stop(Stop),
    /// Nothing more for this record.
    Skip(Skipped),
}

/// Why the handling of a record stops before an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The partition was revoked or the service is stopping: the next owner handles the record.
    Interrupted(&'static str),
    /// A passing failure: the record is handled again after a pause.
    Transient(String),
}

/// Why a record needs nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Skipped {
    /// The ledger has its request sent, failed or in doubt.
    Settled(Stage),
    /// Another claim was read back first: its instance sends.
    ClaimLost,
}

/// An outcome to publish, in the fields of `wa.outbound.dispatched.v1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Outcome {
    /// `sent`, `failed` or `in_doubt`.
    pub(crate) outcome: DispatchOutcome,
    /// The failure or doubt reason.
    pub(crate) failure_reason: Option<&'static str>,
    /// Twilio's sid, when sent.
    pub(crate) message_sid: Option<String>,
    /// Twilio's status in its answer, when sent.
    pub(crate) twilio_status: Option<String>,
    /// Twilio's error code.
    pub(crate) error_code: Option<i32>,
    /// What happened, readable.
    pub(crate) error_message: Option<String>,
    /// Calls made to Twilio.
    pub(crate) attempts: i32,
    /// Decided under this handler's claim (the claim id goes on the event).
    pub(crate) under_claim: bool,
}

impl Outcome {
    fn new(outcome: DispatchOutcome, attempts: i32, under_claim: bool) -> Self {
        Self {
            outcome,
            failure_reason: None,
            message_sid: None,
            twilio_status: None,
            error_code: None,
            error_message: None,
            attempts,
            under_claim,
        }
    }

    fn failed_before_claim(reason: &'static str, detail: Option<String>) -> Self {
        Self { failure_reason: Some(reason), error_message: detail, ..Self::new(DispatchOutcome::Failed, 0, false) }
    }

    fn sent(resource: MessageResource, attempts: i32) -> Self {
        Self {
            message_sid: Some(resource.sid),
            twilio_status: Some(resource.status),
            ..Self::new(DispatchOutcome::Sent, attempts, true)
        }
    }

    fn failed(reason: &'static str, error: &TwilioError, attempts: i32) -> Self {
        Self {
            failure_reason: Some(reason),
            error_code: error.code(),
            error_message: Some(error.to_string()),
            ..Self::new(DispatchOutcome::Failed, attempts, true)
        }
    }
}

/// What a media check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MediaVerdict {
    /// WhatsApp takes it.
    Sendable,
    /// Not sendable: the failure reason and the detail.
    NotSendable(&'static str, String),
}

/// What happened since the last [`Step`].
#[derive(Debug)]
pub(crate) enum Input {
    /// Handling begins, at `now` (Unix millis).
    Begin {
        /// The time.
        now: i64,
    },
    /// The media check's verdict.
    MediaChecked(MediaVerdict),
    /// A slot of the sender's pace is taken.
    PaceAcquired,
    /// The claim was read back from the partition, or not within the read-back timeout.
    ClaimReadBack(Result<(), String>),
    /// Twilio's answer to the call that started at `started` (Unix millis); `elapsed` is the time
    /// since the first call started, `jitter` a random number in `[0, 1)`.
    Answered {
        /// The answer.
        answer: Result<MessageResource, TwilioError>,
        /// When the call started.
        started: i64,
        /// Since the first call started.
        elapsed: Duration,
        /// Spreads the retries of many requests apart.
        jitter: f64,
    },
    /// The backoff is over.
    BackedOff,
    /// The lookup's result: the message the ambiguous call created, if it is listed.
    LookedUp(Option<MessageResource>),
    /// The partition was revoked (or the service is stopping) during the step.
    Revoked,
}

#[derive(Debug, Clone)]
enum State {
    New,
    CheckingMedia,
    /// Waiting for the first call's pace slot.
    Pacing,
    Claiming,
    /// Claim won; the next call is due (first, or after a backoff's pace slot).
    Calling,
    BackingOff,
    /// Waiting for the pace slot of a retry.
    PacingRetry,
    LookingUp(TwilioError),
    Ended,
}

/// One handling of one authorized request.
#[derive(Debug)]
pub(crate) struct Lifecycle {
    request_id: String,
    claim_id: String,
    /// When a free-form message's window closes (templates: `None`).
    free_form_until: Option<i64>,
    has_media: bool,
    retry_deadline: Duration,
    state: State,
    attempts: i32,
    backoff: Backoff,
}

impl Lifecycle {
    /// A handling of `request_id` under the claim `claim_id`.
    pub(crate) fn new(
        request_id: &str,
        claim_id: &str,
        free_form_until: Option<i64>,
        has_media: bool,
        retry_deadline: Duration,
    ) -> Self {
        Self {
            request_id: request_id.to_owned(),
            claim_id: claim_id.to_owned(),
            free_form_until,
            has_media,
            retry_deadline,
            state: State::New,
            attempts: 0,
            backoff: Backoff::new(FIRST_BACKOFF, MAX_BACKOFF),
        }
    }

    /// Calls made to Twilio so far.
    pub(crate) fn attempts(&self) -> i32 {
        self.attempts
    }

    /// The claim this handling makes.
    pub(crate) fn claim_id(&self) -> &str {
        &self.claim_id
    }

    /// The next step, given what happened and the ledger as this instance reads it.
    pub(crate) fn next(&mut self, input: Input, ledger: &Ledger) -> Step {
        let state = std::mem::replace(&mut self.state, State::Ended);
        let (state, step) = self.transition(state, input, ledger);
        self.state = state;
        step
    }

    fn transition(&mut self, state: State, input: Input, ledger: &Ledger) -> (State, Step) {
        let interrupted = |why| (State::Ended, Step::Stop(Stop::Interrupted(why)));
        let released = |why| (State::Ended, Step::Release(Stop::Interrupted(why)));
        match (state, input) {
            (State::New, Input::Begin { now }) => {
                if let Some(stage) = self.settled(ledger) {
                    return (State::Ended, Step::Skip(Skipped::Settled(stage)));
                }
                if self.free_form_until.is_some_and(|until| now >= until) {
                    return (State::Ended, Step::Finish(Outcome::failed_before_claim("window_closed", None)));
                }
                if self.has_media {
                    (State::CheckingMedia, Step::CheckMedia)
                } else {
                    (State::Pacing, Step::AwaitPace)
                }
            }
            (State::CheckingMedia, Input::MediaChecked(MediaVerdict::Sendable)) => (State::Pacing, Step::AwaitPace),
            (State::CheckingMedia, Input::MediaChecked(MediaVerdict::NotSendable(reason, detail))) => {
                (State::Ended, Step::Finish(Outcome::failed_before_claim(reason, Some(detail))))
            }
            (State::CheckingMedia, Input::Revoked) => interrupted("revoked while checking the media"),
            (State::Pacing, Input::PaceAcquired) => match self.settled(ledger) {
                // The wait may have been long (throttling): another instance may have sent it.
                Some(stage) => (State::Ended, Step::Skip(Skipped::Settled(stage))),
                None => (State::Claiming, Step::Claim),
            },
            (State::Pacing, Input::Revoked) => interrupted("revoked while waiting for the sender's pace"),
            (State::Claiming, Input::ClaimReadBack(Ok(()))) => {
                if ledger.holds_claim(&self.request_id, &self.claim_id) {
                    self.call()
                } else {
                    (State::Ended, Step::Skip(Skipped::ClaimLost))
                }
            }
            (State::Claiming, Input::ClaimReadBack(Err(reason))) => {
                (State::Ended, Step::Release(Stop::Transient(reason)))
            }
            (State::Claiming, Input::Revoked) => released("revoked while reading the claim back"),
            (State::Calling, Input::Answered { answer, started, elapsed, jitter }) => {
                self.answered(answer, started, elapsed, jitter)
            }
            // Only calls Twilio did not take were made: nothing can have been created.
            (State::Calling | State::BackingOff | State::PacingRetry, Input::Revoked) => {
                released("revoked before the send")
            }
            (State::BackingOff, Input::BackedOff) => (State::PacingRetry, Step::AwaitPace),
            (State::PacingRetry, Input::PaceAcquired) => self.call(),
            (State::LookingUp(error), Input::LookedUp(found)) => {
                (State::Ended, Step::Finish(self.reconciled(&error, found)))
            }
            // Twilio may have the message: never given back, and not looked for any longer.
            (State::LookingUp(error), Input::Revoked) => (State::Ended, Step::Finish(self.reconciled(&error, None))),
            (state, input) => {
                tracing::error!(request_id = %self.request_id, ?state, ?input, "dispatch lifecycle got an input out of turn");
                (State::Ended, Step::Stop(Stop::Transient(format!("{input:?} out of turn in {state:?}"))))
            }
        }
    }

    /// Sent, failed or in doubt in the ledger: never sent again from this record.
    fn settled(&self, ledger: &Ledger) -> Option<Stage> {
        ledger.get(&self.request_id).map(|entry| entry.stage).filter(|stage| *stage != Stage::Sending)
    }

    fn call(&mut self) -> (State, Step) {
        self.attempts += 1;
        (State::Calling, Step::Call { attempt: self.attempts })
    }

    fn answered(
        &mut self,
        answer: Result<MessageResource, TwilioError>,
        started: i64,
        elapsed: Duration,
        jitter: f64,
    ) -> (State, Step) {
        let error = match answer {
            Ok(resource) => return (State::Ended, Step::Finish(Outcome::sent(resource, self.attempts))),
            Err(error) => error,
        };
        match error.failure() {
            SendFailure::Permanent(reason) => {
                (State::Ended, Step::Finish(Outcome::failed(reason, &error, self.attempts)))
            }
            SendFailure::Ambiguous => (State::LookingUp(error), Step::LookUp { since: started }),
            SendFailure::Retry => {
                let wait = self.backoff.next_jittered(jitter);
                if elapsed + wait > self.retry_deadline {
                    return (State::Ended, Step::Finish(Outcome::failed("retries_exhausted", &error, self.attempts)));
                }
                (State::BackingOff, Step::Backoff { wait, error })
            }
        }
    }

    /// The outcome of an ambiguous call after the lookup.
    fn reconciled(&self, error: &TwilioError, found: Option<MessageResource>) -> Outcome {
        match found {
            Some(resource) => Outcome {
                error_message: Some(format!("{error}; found in Twilio's Messages list")),
                ..Outcome::sent(resource, self.attempts)
            },
            None => Outcome {
                failure_reason: Some(if error.status().is_some() { "ambiguous_answer" } else { "no_answer" }),
                error_code: error.code(),
                error_message: Some(format!(
                    "{error}; not found in Twilio's Messages list: it may or may not have been sent, and is not sent again"
                )),
                ..Outcome::new(DispatchOutcome::InDoubt, self.attempts, true)
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use wa_schemas::OutboundDispatched;

    const REQUEST: &str = "req-1";

    fn resource(sid: &str) -> MessageResource {
        MessageResource {
            sid: sid.to_owned(),
            status: "queued".to_owned(),
            body: Some("Your order ships today.".to_owned()),
            from: Some("whatsapp:+14155238886".to_owned()),
            to: Some("whatsapp:+14152370142".to_owned()),
            direction: Some("outbound-api".to_owned()),
            date_created: None,
            num_media: Some("0".to_owned()),
        }
    }

    fn api_error(status: u16, code: Option<i32>) -> TwilioError {
        TwilioError::Api { status, code, message: "from the simulated Twilio".to_owned() }
    }

    fn record(outcome: DispatchOutcome, claim_id: &str, by: usize) -> OutboundDispatched {
        OutboundDispatched {
            event_id: format!("{outcome}-{claim_id}"),
            occurred_at: 0,
            conversation_id: "0b8f2e4c-3c1a-4b6e-9f5d-7a2e1c9d8b30".to_owned(),
            request_id: REQUEST.to_owned(),
            from: "whatsapp:+14155238886".to_owned(),
            to: "whatsapp:+14152370142".to_owned(),
            outcome: outcome.as_str().to_owned(),
            message_sid: None,
            twilio_status: None,
            error_code: None,
            error_message: None,
            failure_reason: None,
            attempts: 0,
            claim_id: Some(claim_id.to_owned()),
            claimed_by: Some(by.to_string()),
            pricing_category: None,
            pricing_type: None,
            metadata: Default::default(),
        }
    }

    #[test]
    fn a_plain_send_paces_claims_calls_and_finishes_sent() {
        let ledger = Ledger::default();
        let mut lifecycle = Lifecycle::new(REQUEST, "c1", None, false, Duration::from_secs(60));
        assert!(matches!(lifecycle.next(Input::Begin { now: 0 }, &ledger), Step::AwaitPace));
        assert!(matches!(lifecycle.next(Input::PaceAcquired, &ledger), Step::Claim));
        ledger.apply_read(&record(DispatchOutcome::Sending, "c1", 0), 0);
        assert!(matches!(lifecycle.next(Input::ClaimReadBack(Ok(())), &ledger), Step::Call { attempt: 1 }));
        let answered =
            Input::Answered { answer: Ok(resource("SM1")), started: 0, elapsed: Duration::ZERO, jitter: 0.5 };
        let Step::Finish(outcome) = lifecycle.next(answered, &ledger) else { panic!("finishes") };
        assert_eq!(
            (outcome.outcome, outcome.message_sid.as_deref(), outcome.attempts, outcome.under_claim),
            (DispatchOutcome::Sent, Some("SM1"), 1, true)
        );
    }

    #[test]
    fn a_closed_window_fails_before_any_claim() {
        let ledger = Ledger::default();
        let mut lifecycle = Lifecycle::new(REQUEST, "c1", Some(1_000), false, Duration::from_secs(60));
        let Step::Finish(outcome) = lifecycle.next(Input::Begin { now: 1_000 }, &ledger) else { panic!("fails") };
        assert_eq!((outcome.failure_reason, outcome.under_claim), (Some("window_closed"), false));
    }

    #[test]
    fn retries_stop_at_the_deadline_as_retries_exhausted() {
        let ledger = Ledger::default();
        ledger.apply_read(&record(DispatchOutcome::Sending, "c1", 0), 0);
        let mut lifecycle = Lifecycle::new(REQUEST, "c1", None, false, Duration::from_secs(1));
        lifecycle.next(Input::Begin { now: 0 }, &ledger);
        lifecycle.next(Input::PaceAcquired, &ledger);
        lifecycle.next(Input::ClaimReadBack(Ok(())), &ledger);
        let throttled =
            |elapsed| Input::Answered { answer: Err(api_error(429, Some(20429))), started: 0, elapsed, jitter: 0.5 };
        let Step::Backoff { wait, .. } = lifecycle.next(throttled(Duration::ZERO), &ledger) else {
            panic!("backs off")
        };
        assert_eq!(wait, FIRST_BACKOFF);
        assert!(matches!(lifecycle.next(Input::BackedOff, &ledger), Step::AwaitPace));
        assert!(matches!(lifecycle.next(Input::PaceAcquired, &ledger), Step::Call { attempt: 2 }));
        let Step::Finish(outcome) = lifecycle.next(throttled(Duration::from_millis(900)), &ledger) else {
            panic!("gives up")
        };
        assert_eq!(
            (outcome.failure_reason, outcome.error_code, outcome.attempts),
            (Some("retries_exhausted"), Some(20429), 2)
        );
    }

    /// What Twilio does with one call, in the model.
    #[derive(Debug, Clone, Copy)]
    enum TwilioDoes {
        /// 201 with the message.
        Creates,
        /// 429 / 20429: not created, try later.
        Throttles,
        /// 400 / 21211: refused for good.
        Refuses,
        /// 500, and the message was created.
        ErrsAfterCreating,
        /// 500, nothing created.
        ErrsWithoutCreating,
        /// The answer is lost after the request was written; created.
        LosesTheAnswer,
    }

    /// One scheduler move.
    #[derive(Debug, Clone, Copy)]
    enum Move {
        /// Handler `n` (modulo the live ones) takes its next step.
        Advance(usize, TwilioDoes, bool),
        /// Handler `n`'s partition is revoked during its step.
        Revoke(usize),
        /// Reader `n`'s ledger reads the next record of the partition.
        Read(usize),
        /// Handler `n`'s claim read-back times out.
        ReadBackTimesOut(usize),
    }

    fn a_move() -> impl Strategy<Value = Move> {
        let does = prop_oneof![
            4 => Just(TwilioDoes::Creates),
            3 => Just(TwilioDoes::Throttles),
            1 => Just(TwilioDoes::Refuses),
            1 => Just(TwilioDoes::ErrsAfterCreating),
            1 => Just(TwilioDoes::ErrsWithoutCreating),
            1 => Just(TwilioDoes::LosesTheAnswer),
        ];
        prop_oneof![
            6 => (0usize..3, does, any::<bool>()).prop_map(|(n, does, listed)| Move::Advance(n, does, listed)),
            1 => (0usize..3).prop_map(Move::Revoke),
            5 => (0usize..3).prop_map(Move::Read),
            1 => (0usize..3).prop_map(Move::ReadBackTimesOut),
        ]
    }

    /// A handler on one of the instances, and what it waits for.
    struct Handler {
        instance: usize,
        lifecycle: Lifecycle,
        step: Step,
        /// The offset of its claim in the partition, once published.
        claim_at: Option<usize>,
        /// Calls it made that may have created a message.
        may_have_created: bool,
    }

    /// Three instances, one partition of `wa.outbound.dispatched.v1`, Twilio.
    struct World {
        partition: Vec<OutboundDispatched>,
        /// Each instance's ledger and how far it has read the partition.
        ledgers: Vec<(Ledger, usize)>,
        handlers: Vec<Option<Handler>>,
        /// Messages Twilio created for the request.
        created: Vec<String>,
        /// Outcomes published under a claim.
        outcomes: Vec<Outcome>,
        /// A handler was lost mid-step (its claim may stay unsettled: the in-doubt watcher's
        /// case).
        crashed: bool,
        claims: usize,
    }

    impl World {
        fn deliver(&mut self, instance: usize) {
            self.crashed |= self.handlers[instance].is_some();
            self.claims += 1;
            let claim_id = format!("c{}", self.claims);
            let mut lifecycle = Lifecycle::new(REQUEST, &claim_id, None, false, Duration::from_secs(60));
            let step = lifecycle.next(Input::Begin { now: 0 }, &self.ledgers[instance].0);
            // Settled already, as this instance reads the partition: nothing to do.
            self.handlers[instance] = (!matches!(step, Step::Skip(_))).then_some(Handler {
                instance,
                lifecycle,
                step,
                claim_at: None,
                may_have_created: false,
            });
        }

        fn publish(&mut self, event: OutboundDispatched) -> usize {
            self.partition.push(event);
            self.partition.len() - 1
        }

        /// Acts on a handler's step; returns the handler if it is still working.
        fn act(&mut self, mut handler: Handler, does: TwilioDoes, listed: bool, revoked: bool) -> Option<Handler> {
            let input = match &handler.step {
                _ if revoked => Input::Revoked,
                Step::AwaitPace => Input::PaceAcquired,
                Step::Backoff { .. } => Input::BackedOff,
                Step::Claim => {
                    if handler.claim_at.is_none() {
                        let claim = record(DispatchOutcome::Sending, handler.lifecycle.claim_id(), handler.instance);
                        handler.claim_at = Some(self.publish(claim));
                    }
                    // Read back once this instance's ledger has read it.
                    if self.ledgers[handler.instance].1 <= handler.claim_at.expect("published") {
                        return Some(handler);
                    }
                    Input::ClaimReadBack(Ok(()))
                }
                Step::Call { attempt } => {
                    let sid = format!("SM{}-{attempt}", handler.lifecycle.claim_id());
                    let created = matches!(
                        does,
                        TwilioDoes::Creates | TwilioDoes::ErrsAfterCreating | TwilioDoes::LosesTheAnswer
                    );
                    if created {
                        self.created.push(sid.clone());
                    }
                    handler.may_have_created |= !matches!(does, TwilioDoes::Throttles | TwilioDoes::Refuses);
                    let answer = match does {
                        TwilioDoes::Creates => Ok(resource(&sid)),
                        TwilioDoes::Throttles => Err(api_error(429, Some(20429))),
                        TwilioDoes::Refuses => Err(api_error(400, Some(21211))),
                        TwilioDoes::ErrsAfterCreating | TwilioDoes::ErrsWithoutCreating => Err(api_error(500, None)),
                        TwilioDoes::LosesTheAnswer => Err(TwilioError::NoAnswer("connection reset".to_owned())),
                    };
                    Input::Answered { answer, started: 0, elapsed: Duration::ZERO, jitter: 0.5 }
                }
                Step::LookUp { .. } => {
                    // Twilio's list may lag behind: a created message is found only if listed.
                    let found = self
                        .created
                        .iter()
                        .find(|sid| sid.starts_with(&format!("SM{}-", handler.lifecycle.claim_id())))
                        .filter(|_| listed)
                        .map(|sid| resource(sid));
                    Input::LookedUp(found)
                }
                Step::CheckMedia => Input::MediaChecked(MediaVerdict::Sendable),
                Step::Finish(_) | Step::Release(_) | Step::Stop(_) | Step::Skip(_) => {
                    unreachable!("ended handlers are not kept")
                }
            };
            handler.step = handler.lifecycle.next(input, &self.ledgers[handler.instance].0);
            match &handler.step {
                Step::Finish(outcome) => {
                    assert!(outcome.under_claim, "no window or media here: every outcome is a claim's");
                    let mut event = record(outcome.outcome, handler.lifecycle.claim_id(), handler.instance);
                    event.message_sid.clone_from(&outcome.message_sid);
                    self.outcomes.push(outcome.clone());
                    // Written through to the publishing instance's ledger, as dispatch does.
                    self.ledgers[handler.instance].0.apply(&event);
                    self.publish(event);
                    None
                }
                Step::Release(_) => {
                    assert!(!handler.may_have_created, "a claim was released after a call Twilio may have taken");
                    self.publish(record(DispatchOutcome::Released, handler.lifecycle.claim_id(), handler.instance));
                    self.redeliver(handler.instance);
                    None
                }
                Step::Stop(_) => {
                    self.redeliver(handler.instance);
                    None
                }
                Step::Skip(_) => None,
                _ => Some(handler),
            }
        }

        /// The record is handed again, to the partition's next owner. A handler still working
        /// there is lost as if its instance crashed.
        fn redeliver(&mut self, previous: usize) {
            self.deliver((previous + 1) % self.handlers.len());
        }

        fn read(&mut self, instance: usize) {
            let (ledger, read) = &mut self.ledgers[instance];
            if let Some(event) = self.partition.get(*read) {
                ledger.apply_read(event, 0);
                *read += 1;
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_000))]

        /// The authorization delivered to two instances at once (a rebalance, a redelivery),
        /// revokes at any step, claim read-backs timing out, Twilio creating, throttling,
        /// refusing, failing and losing answers: Twilio creates the message at most once, at
        /// most one outcome is published under a claim, a claim is given back only when nothing
        /// that may have created a message was sent, and a `sent` outcome names a message
        /// Twilio created.
        #[test]
        fn never_twice_whatever_the_interleaving(moves in prop::collection::vec(a_move(), 0..150)) {
            let mut world = World {
                partition: Vec::new(),
                ledgers: (0..3).map(|_| (Ledger::default(), 0)).collect(),
                handlers: (0..3).map(|_| None).collect(),
                created: Vec::new(),
                outcomes: Vec::new(),
                crashed: false,
                claims: 0,
            };
            world.deliver(0);
            world.deliver(1);
            for step in moves {
                match step {
                    Move::Advance(n, does, listed) => {
                        if let Some(handler) = world.handlers[n].take() {
                            world.handlers[n] = world.act(handler, does, listed, false);
                        }
                    }
                    Move::Revoke(n) => {
                        if let Some(handler) = world.handlers[n].take() {
                            world.handlers[n] = world.act(handler, TwilioDoes::Creates, false, true);
                        }
                    }
                    Move::ReadBackTimesOut(n) => {
                        let waiting = world.handlers[n]
                            .as_ref()
                            .is_some_and(|h| matches!(h.step, Step::Claim) && h.claim_at.is_some());
                        if waiting {
                            let mut handler = world.handlers[n].take().expect("checked");
                            let timed_out = Input::ClaimReadBack(Err("not read back in time".to_owned()));
                            handler.step = handler.lifecycle.next(timed_out, &world.ledgers[n].0);
                            prop_assert!(matches!(handler.step, Step::Release(Stop::Transient(_))));
                            world.publish(record(DispatchOutcome::Released, handler.lifecycle.claim_id(), n));
                            world.redeliver(n);
                        }
                    }
                    Move::Read(n) => world.read(n),
                }
                prop_assert!(world.created.len() <= 1, "Twilio created {:?}", world.created);
                prop_assert!(world.outcomes.len() <= 1, "outcomes {:?}", world.outcomes);
            }
            // Then calm: every reader catches up and Twilio takes every call.
            for _ in 0..50 {
                for n in 0..3 {
                    while world.ledgers[n].1 < world.partition.len() {
                        world.read(n);
                    }
                    if let Some(handler) = world.handlers[n].take() {
                        world.handlers[n] = world.act(handler, TwilioDoes::Creates, true, false);
                    }
                }
            }
            prop_assert!(world.handlers.iter().all(Option::is_none), "handlers still working after the calm");
            prop_assert!(world.created.len() <= 1, "Twilio created {:?}", world.created);
            if world.crashed {
                prop_assert!(world.outcomes.len() <= 1, "outcomes {:?}", world.outcomes);
            } else {
                prop_assert_eq!(world.outcomes.len(), 1, "every request ends in one outcome");
            }
            for outcome in &world.outcomes {
                if outcome.outcome == DispatchOutcome::Sent {
                    prop_assert!(world.created.contains(outcome.message_sid.as_ref().expect("a sid")));
                }
                if outcome.outcome == DispatchOutcome::Failed {
                    prop_assert!(world.created.is_empty(), "failed although Twilio created {:?}", world.created);
                }
            }
        }
    }
}
