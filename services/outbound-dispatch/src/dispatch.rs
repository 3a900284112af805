//! The per-request lifecycle: check the ledger, wait for the sender's pace, check again, claim,
//! read the claim back, send (retrying only what Twilio did not create), reconcile an ambiguous
//! answer by looking the message up, and publish the outcome. Also the folding of status
//! callbacks into each request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use wa_platform::backoff::Backoff;
use wa_platform::kafka::{EventProducer, HandleError, Handler, Record, TopicFollower};
use wa_platform::topics::OUTBOUND_DISPATCHED;
use wa_platform::CancellationToken;
use wa_schemas::{DeliveryStatusReceived, DispatchOutcome, Event, OutboundAuthorized, OutboundDispatched};
use wa_twilio::errors;
use wa_twilio::messages_api::{MessageResource, OutgoingMessage, TwilioClient};
use wa_twilio::status::MessageStatus;

use crate::ledger::{Ledger, Stage};
use crate::lifecycle::{Input, Lifecycle, MediaVerdict, Outcome, Skipped, Step, Stop};
use crate::media;
use crate::rate::RateLimiter;
use crate::Config;

/// How long a claim may take to be read back before it is given up and tried again.
const CLAIM_READBACK_TIMEOUT: Duration = Duration::from_secs(15);
/// How many times an ambiguous answer is looked up in Twilio's Messages list, and how long
/// apart (a message Twilio just created may be listed only once it is sent).
const LOOKUPS: u32 = 3;
const LOOKUP_SPACING: Duration = Duration::from_millis(1000);
/// Twilio's creation times have whole seconds; clocks differ a little: a message created this
/// long before the attempt started may still be the attempt's.
const CREATED_MARGIN_MS: i64 = 5_000;

/// The outbound-dispatch handler.
pub(crate) struct Dispatch {
    pub(crate) producer: EventProducer,
    pub(crate) twilio: TwilioClient,
    pub(crate) config: Config,
    pub(crate) ledger: Arc<Ledger>,
    /// Follows `wa.outbound.dispatched.v1` into the ledger: claims are decided by reading back.
    pub(crate) follower: Arc<TopicFollower>,
    pub(crate) limiter: RateLimiter,
    pub(crate) delivery_topic: String,
    /// Asks media URLs for their type and size (no Twilio credentials on it).
    pub(crate) media_http: reqwest::Client,
}

/// Marks a request as being sent by this process until dropped.
struct Working<'a> {
    ledger: &'a Ledger,
    request_id: &'a str,
}

impl<'a> Working<'a> {
    fn start(ledger: &'a Ledger, request_id: &'a str) -> Self {
        ledger.working_on(request_id, true);
        Self { ledger, request_id }
    }
}

impl Drop for Working<'_> {
    fn drop(&mut self) {
        self.ledger.working_on(self.request_id, false);
    }
}

/// What every event about a request repeats.
pub(crate) struct Identity<'a> {
    pub(crate) conversation_id: &'a str,
    pub(crate) request_id: &'a str,
    pub(crate) from: &'a str,
    pub(crate) to: &'a str,
    pub(crate) metadata: &'a BTreeMap<String, String>,
    /// How Meta prices the message (`pricing_category`, `pricing_type` of its authorization).
    pub(crate) pricing: (Option<&'a str>, Option<&'a str>),
}

/// No metadata: for a status callback of a request this instance never knew.
pub(crate) static NO_METADATA: BTreeMap<String, String> = BTreeMap::new();

impl Identity<'_> {
    /// An event about this request; its id is derived from the request, the outcome and the
    /// status, so the same move published twice (two instances, a redelivery) has one id.
    pub(crate) fn event(&self, outcome: DispatchOutcome, status: Option<&str>) -> OutboundDispatched {
        self.event_with_claim(outcome, status, None)
    }

    /// A claim or its release: each claim's events have their own ids.
    fn event_with_claim(
        &self,
        outcome: DispatchOutcome,
        status: Option<&str>,
        claim_id: Option<&str>,
    ) -> OutboundDispatched {
        let name = format!(
            "wachannel:dispatched:{}:{outcome}:{}{}",
            self.request_id,
            status.unwrap_or_default(),
            claim_id.map(|id| format!(":{id}")).unwrap_or_default()
        );
        OutboundDispatched {
            event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, name.as_bytes()).to_string(),
            occurred_at: wa_platform::now_millis(),
            conversation_id: self.conversation_id.to_owned(),
            request_id: self.request_id.to_owned(),
            from: self.from.to_owned(),
            to: self.to.to_owned(),
            outcome: outcome.as_str().to_owned(),
            message_sid: None,
            twilio_status: status.map(str::to_owned),
            error_code: None,
            error_message: None,
            failure_reason: None,
            attempts: 0,
            claim_id: claim_id.map(str::to_owned),
            claimed_by: None,
            pricing_category: self.pricing.0.map(str::to_owned),
            pricing_type: self.pricing.1.map(str::to_owned),
            metadata: self.metadata.clone(),
        }
    }
}

/// Among the messages Twilio lists, the one an ambiguous attempt created: to the same
/// recipient from the same sender, created no earlier than the attempt (less a margin), with
/// the request's text (a template's rendered preview, or no text), and not already some other
/// request's message. The earliest such.
pub(crate) fn find_created<'m>(
    listed: &'m [MessageResource],
    authorized: &OutboundAuthorized,
    since: i64,
    known_sid: impl Fn(&str) -> bool,
) -> Option<&'m MessageResource> {
    let text_matches = |body: &str| match (&authorized.content_sid, &authorized.body) {
        (Some(_), _) => body.is_empty() || authorized.preview.as_deref() == Some(body),
        (None, Some(expected)) => body == expected,
        (None, None) => body.is_empty(),
    };
    listed
        .iter()
        .filter(|m| m.direction.as_deref().is_none_or(|d| d.starts_with("outbound")))
        .filter(|m| m.to.as_deref() == Some(authorized.to.as_str()))
        .filter(|m| m.from.as_deref().is_none_or(|from| from.is_empty() || from == authorized.from))
        .filter(|m| m.created_at().is_some_and(|at| at >= since - CREATED_MARGIN_MS))
        .filter(|m| text_matches(m.body.as_deref().unwrap_or_default()))
        .filter(|m| !known_sid(&m.sid))
        .min_by_key(|m| m.created_at())
}

impl Dispatch {
    /// Publishes one of dispatch's outcomes and writes it through to the ledger.
    async fn publish(&self, event: OutboundDispatched) -> Result<(), HandleError> {
        self.producer.publish(&OUTBOUND_DISPATCHED, &event).await?;
        self.ledger.apply(&event);
        if event.kind() == Some(DispatchOutcome::Sent) {
            self.ledger.remember_trace(&event.request_id, wa_platform::kafka::current_traceparent());
        }
        Ok(())
    }

    fn message<'a>(&'a self, authorized: &'a OutboundAuthorized) -> OutgoingMessage<'a> {
        OutgoingMessage {
            from: &authorized.from,
            to: &authorized.to,
            body: authorized.body.as_deref(),
            media_urls: &authorized.media_urls,
            content_sid: authorized.content_sid.as_deref(),
            content_variables: authorized.content_variables.as_deref(),
            messaging_service_sid: self.config.messaging_service_sid.as_deref(),
            status_callback: self
                .config
                .status_callback_url
                .as_ref()
                .map(|base| wa_twilio::status_callback_url(base, &authorized.request_id)),
        }
    }

    /// Asks the request's media URL (WhatsApp sends one per message) for its type and size;
    /// an unreachable URL is retried like a Twilio outage, up to the retry deadline.
    async fn check_media(&self, authorized: &OutboundAuthorized, revoked: &CancellationToken) -> Option<MediaVerdict> {
        let Some(url) = authorized.media_urls.first() else {
            return Some(MediaVerdict::Sendable);
        };
        let started = tokio::time::Instant::now();
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            let probe = tokio::select! {
                () = revoked.cancelled() => return None,
                probe = media::probe(&self.media_http, url, self.config.request_timeout) => probe,
            };
            let detail = match probe {
                media::Probe::Answered(info) => {
                    return Some(match media::media_problem(&info) {
                        None => MediaVerdict::Sendable,
                        Some(problem) => MediaVerdict::NotSendable("media_invalid", problem),
                    });
                }
                media::Probe::Refused(detail) => return Some(MediaVerdict::NotSendable("media_invalid", detail)),
                media::Probe::Unreachable(detail) => detail,
            };
            let wait = backoff.next_jittered(fastrand::f64());
            if started.elapsed() + wait > self.config.retry_deadline {
                return Some(MediaVerdict::NotSendable("media_unreachable", detail));
            }
            tracing::warn!(request_id = %authorized.request_id, detail = %detail, retry_in = ?wait, "media not reachable; retrying");
            tokio::select! {
                () = revoked.cancelled() => return None,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Looks an ambiguous send up in Twilio's Messages list, a few times.
    async fn reconcile(&self, authorized: &OutboundAuthorized, since: i64) -> Option<MessageResource> {
        for lookup in 0..LOOKUPS {
            if lookup > 0 {
                tokio::time::sleep(LOOKUP_SPACING * lookup).await;
            }
            match self.twilio.list_messages(&authorized.from, &authorized.to, since).await {
                Ok(listed) => {
                    if let Some(found) = find_created(&listed, authorized, since, |sid| self.ledger.knows_sid(sid)) {
                        return Some(found.clone());
                    }
                }
                Err(err) => tracing::warn!(error = %err, lookup, "message lookup failed"),
            }
        }
        None
    }

    /// Sends one authorized message unless the ledger knows its request, and only under the
    /// claim that counts: performs the steps of its [`Lifecycle`].
    async fn dispatch(&self, authorized: OutboundAuthorized, revoked: &CancellationToken) -> Result<(), HandleError> {
        let identity = Identity {
            conversation_id: &authorized.conversation_id,
            request_id: &authorized.request_id,
            from: &authorized.from,
            to: &authorized.to,
            metadata: &authorized.metadata,
            pricing: (authorized.pricing_category.as_deref(), authorized.pricing_type.as_deref()),
        };
        // What the window allowed (a reply, or content WhatsApp allows in session) must still go
        // before it closes; an approved template goes at any time.
        let window_rule = match authorized.rule.as_deref().and_then(wa_schemas::AuthorizationRule::parse) {
            Some(wa_schemas::AuthorizationRule::ApprovedTemplate) => false,
            Some(_) => true,
            None => authorized.content_sid.is_none(),
        };
        let free_form_until = authorized.window_expires_at.filter(|_| window_rule);
        let mut lifecycle = Lifecycle::new(
            &authorized.request_id,
            &Uuid::new_v4().to_string(),
            free_form_until,
            !authorized.media_urls.is_empty(),
            self.config.retry_deadline,
        );
        let message = self.message(&authorized);
        // While this process works on the send it is not in doubt; the guard ends that when
        // this function returns, after the outcome is durable.
        let mut working = None;
        let mut first_call: Option<tokio::time::Instant> = None;
        let mut input = Input::Begin { now: wa_platform::now_millis() };
        loop {
            let step = lifecycle.next(input, &self.ledger);
            input = match step {
                Step::CheckMedia => match self.check_media(&authorized, revoked).await {
                    Some(verdict) => Input::MediaChecked(verdict),
                    None => Input::Revoked,
                },
                Step::AwaitPace => tokio::select! {
                    () = revoked.cancelled() => Input::Revoked,
                    () = self.limiter.acquire(&authorized.from) => Input::PaceAcquired,
                },
                Step::Claim => {
                    let mut claim =
                        identity.event_with_claim(DispatchOutcome::Sending, None, Some(lifecycle.claim_id()));
                    claim.claimed_by = Some(self.config.instance_id.clone());
                    let (partition, offset) = self.producer.publish(&OUTBOUND_DISPATCHED, &claim).await?;
                    tokio::select! {
                        () = revoked.cancelled() => Input::Revoked,
                        read = self.follower.wait_until_read(partition, offset, CLAIM_READBACK_TIMEOUT) => {
                            if revoked.is_cancelled() { Input::Revoked } else { Input::ClaimReadBack(read) }
                        }
                    }
                }
                Step::Call { attempt } => {
                    // Nothing has reached Twilio yet: the call is the point of no return.
                    if revoked.is_cancelled() {
                        Input::Revoked
                    } else {
                        if attempt == 1 {
                            metrics::counter!(wa_platform::metrics::DISPATCH_CLAIMS, "result" => "won").increment(1);
                            working = Some(Working::start(&self.ledger, &authorized.request_id));
                        }
                        let first = *first_call.get_or_insert_with(tokio::time::Instant::now);
                        let started = wa_platform::now_millis();
                        let answer = self.twilio.send(&message).await;
                        if answer.is_ok() {
                            self.limiter.succeeded(&authorized.from);
                        }
                        Input::Answered { answer, started, elapsed: first.elapsed(), jitter: fastrand::f64() }
                    }
                }
                Step::Backoff { wait, error } => {
                    if error.is_throttling() {
                        self.limiter.throttled(&authorized.from);
                    }
                    metrics::counter!(wa_platform::metrics::DISPATCH_RETRIES, "throttled" => error.is_throttling().to_string())
                        .increment(1);
                    tracing::warn!(error = %error, attempts = lifecycle.attempts(), retry_in = ?wait, "send not taken by twilio; retrying");
                    tokio::select! {
                        () = revoked.cancelled() => Input::Revoked,
                        () = tokio::time::sleep(wait) => Input::BackedOff,
                    }
                }
                Step::LookUp { since } => {
                    let found = self.reconcile(&authorized, since).await;
                    metrics::counter!(wa_platform::metrics::DISPATCH_RECONCILED, "found" => found.is_some().to_string())
                        .increment(1);
                    Input::LookedUp(found)
                }
                Step::Finish(outcome) => {
                    let result = self.finish(&identity, &lifecycle, outcome).await;
                    drop(working);
                    return result;
                }
                Step::Release(stop) => {
                    self.release(&identity, lifecycle.claim_id()).await?;
                    return Err(stopped(stop));
                }
                Step::Stop(stop) => return Err(stopped(stop)),
                Step::Skip(skipped) => {
                    skip(&authorized.request_id, skipped, &self.ledger);
                    return Ok(());
                }
            };
        }
    }

    /// Publishes a lifecycle's outcome as an event of its request.
    async fn finish(
        &self,
        identity: &Identity<'_>,
        lifecycle: &Lifecycle,
        outcome: Outcome,
    ) -> Result<(), HandleError> {
        let mut event = identity.event(outcome.outcome, None);
        event.message_sid = outcome.message_sid;
        event.twilio_status = outcome.twilio_status;
        event.error_code = outcome.error_code;
        event.error_message = outcome.error_message;
        event.failure_reason = outcome.failure_reason.map(str::to_owned);
        event.attempts = outcome.attempts;
        if outcome.under_claim {
            event.claim_id = Some(lifecycle.claim_id().to_owned());
        }
        match (outcome.outcome, &event.message_sid) {
            (DispatchOutcome::Sent, Some(sid)) if event.error_message.is_some() => {
                tracing::warn!(request_id = %identity.request_id, sid = %sid, "ambiguous answer from twilio; the message was found in its messages list");
            }
            (DispatchOutcome::InDoubt, _) => {
                tracing::warn!(request_id = %identity.request_id, "ambiguous answer from twilio and the message is not in its list; in doubt, never resent");
            }
            _ => {}
        }
        if event.error_code == Some(errors::OUTSIDE_WINDOW) {
            window_disagreement(identity.request_id, "api");
        }
        self.outcome(event).await
    }

    async fn release(&self, identity: &Identity<'_>, claim_id: &str) -> Result<(), HandleError> {
        let released = identity.event_with_claim(DispatchOutcome::Released, None, Some(claim_id));
        self.producer.publish(&OUTBOUND_DISPATCHED, &released).await?;
        Ok(())
    }

    async fn outcome(&self, event: OutboundDispatched) -> Result<(), HandleError> {
        let reason = event.failure_reason.clone().unwrap_or_else(|| "none".to_owned());
        metrics::counter!(wa_platform::metrics::DISPATCH_OUTCOMES, "outcome" => event.outcome.clone(), "reason" => reason.clone())
            .increment(1);
        tracing::info!(request_id = %event.request_id, outcome = %event.outcome, attempts = event.attempts, reason = %reason, "dispatched");
        self.publish(event).await
    }

    /// Folds one status callback into its request: resolves an unconfirmed send, and publishes
    /// a forward move (a failure with its reason from the error table).
    async fn fold(&self, delivery: DeliveryStatusReceived) -> Result<(), HandleError> {
        let request_id = delivery.request_id.clone().or_else(|| self.ledger.request_of(&delivery.message_sid));
        let Some(request_id) = request_id else {
            metrics::counter!(wa_platform::metrics::DISPATCH_CALLBACKS, "outcome" => "unknown_request").increment(1);
            return Ok(());
        };
        let entry = self.ledger.get(&request_id);
        // The callback's own trace began at Twilio: it points at the send it reports on.
        if let Some(traceparent) = entry.as_ref().and_then(|e| e.trace.as_deref()) {
            wa_platform::kafka::link_current_span(traceparent);
        }
        let identity = Identity {
            conversation_id: entry.as_ref().map_or(&delivery.conversation_id, |e| &e.conversation_id),
            request_id: &request_id,
            from: entry.as_ref().map_or(&delivery.from, |e| &e.from),
            to: entry.as_ref().map_or(&delivery.to, |e| &e.to),
            metadata: entry.as_ref().map_or(&NO_METADATA, |e| &e.metadata),
            pricing: entry
                .as_ref()
                .map_or((None, None), |e| (e.pricing_category.as_deref(), e.pricing_type.as_deref())),
        };
        let unconfirmed = entry.as_ref().is_some_and(|e| matches!(e.stage, Stage::Sending | Stage::InDoubt));
        // A send still under way here will publish its own outcome from Twilio's answer.
        if unconfirmed && !self.ledger.is_working_on(&request_id) {
            // The answer that never came: Twilio did create the message.
            let mut sent = identity.event(DispatchOutcome::Sent, None);
            sent.message_sid = Some(delivery.message_sid.clone());
            sent.twilio_status = Some("resolved_by_callback".to_owned());
            sent.claim_id = entry.as_ref().and_then(|e| e.claim.as_ref()).map(|c| c.id.clone());
            self.outcome(sent).await?;
        }
        let current = entry.as_ref().and_then(|e| e.status.clone());
        if !MessageStatus::moves_forward(current.as_deref(), &delivery.message_status) {
            metrics::counter!(wa_platform::metrics::DISPATCH_CALLBACKS, "outcome" => "not_forward").increment(1);
            return Ok(());
        }
        let mut moved = identity.event(DispatchOutcome::StatusChanged, Some(&delivery.message_status));
        moved.message_sid = Some(delivery.message_sid.clone());
        moved.error_code = delivery.error_code.as_deref().and_then(|code| code.trim().parse().ok());
        moved.error_message = delivery.channel_status_message.clone().or(delivery.error_message.clone());
        if MessageStatus::parse(&delivery.message_status).is_some_and(MessageStatus::is_failure) {
            moved.failure_reason =
                Some(moved.error_code.map_or(errors::UNKNOWN_REASON, errors::failure_reason).to_owned());
            if moved.error_code == Some(errors::OUTSIDE_WINDOW) {
                window_disagreement(&request_id, "callback");
            }
        }
        metrics::counter!(wa_platform::metrics::DISPATCH_CALLBACKS, "outcome" => "moved").increment(1);
        self.publish(moved).await
    }
}

/// WhatsApp refused a free-form message as outside the window that session-window found open:
/// the two clocks or the two views of the customer's messages disagree.
fn window_disagreement(request_id: &str, via: &'static str) {
    metrics::counter!(wa_platform::metrics::WINDOW_DISAGREEMENTS, "via" => via).increment(1);
    tracing::warn!(request_id = %request_id, via,
        "whatsapp refused a free-form message as outside the 24-hour window that session-window allowed (63016)");
}

/// The handler's error for a lifecycle that stopped before an outcome.
fn stopped(stop: Stop) -> HandleError {
    match stop {
        Stop::Interrupted(why) => HandleError::Interrupted(why.to_owned()),
        Stop::Transient(reason) => HandleError::Transient(reason),
    }
}

/// Logs why a record needed nothing more.
fn skip(request_id: &str, skipped: Skipped, ledger: &Ledger) {
    match skipped {
        Skipped::Settled(stage) => {
            metrics::counter!(wa_platform::metrics::DISPATCH_DUPLICATES_SKIPPED).increment(1);
            tracing::info!(request_id = %request_id, stage = ?stage, "request already dispatched; not sent again");
        }
        Skipped::ClaimLost => {
            // Another claim came first: its instance sends (or, if it died, the in-doubt
            // watcher settles it).
            metrics::counter!(wa_platform::metrics::DISPATCH_CLAIMS, "result" => "lost").increment(1);
            let holder = ledger.get(request_id).and_then(|e| e.claim).map(|c| c.by);
            tracing::info!(request_id = %request_id, holder = ?holder, "another claim came first; not sending");
        }
    }
}

impl Handler for Dispatch {
    async fn handle(&self, record: &Record<'_>) -> Result<(), HandleError> {
        if record.topic == self.delivery_topic {
            return self.fold(DeliveryStatusReceived::decode(record.payload)?).await;
        }
        self.dispatch(OutboundAuthorized::decode(record.payload)?, record.revoked).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authorized(body: Option<&str>, content_sid: Option<&str>, preview: Option<&str>) -> OutboundAuthorized {
        OutboundAuthorized {
            event_id: String::new(),
            occurred_at: 0,
            conversation_id: String::new(),
            request_id: "r1".into(),
            from: "whatsapp:+14155238886".into(),
            to: "whatsapp:+15005550006".into(),
            body: body.map(str::to_owned),
            media_urls: vec![],
            window_expires_at: None,
            content_sid: content_sid.map(str::to_owned),
            content_variables: None,
            template_name: None,
            template_language: None,
            preview: preview.map(str::to_owned),
            rule: None,
            pricing_category: None,
            pricing_type: None,
            metadata: Default::default(),
        }
    }

    fn listed(sid: &str, to: &str, body: &str, created: &str) -> MessageResource {
        MessageResource {
            sid: sid.into(),
            status: "queued".into(),
            body: Some(body.into()),
            from: Some("whatsapp:+14155238886".into()),
            to: Some(to.into()),
            direction: Some("outbound-api".into()),
            date_created: Some(created.into()),
            num_media: Some("0".into()),
        }
    }

    const AT: &str = "Sun, 29 Nov 2026 10:00:05 +0000";
    const EARLIER: &str = "Sun, 29 Nov 2026 09:59:00 +0000";

    fn at_millis() -> i64 {
        chrono::DateTime::parse_from_rfc2822(AT).unwrap().timestamp_millis()
    }

    #[test]
    fn the_message_an_ambiguous_attempt_created_is_found_by_recipient_text_and_time() {
        let to = "whatsapp:+15005550006";
        let list = vec![
            listed("SMold", to, "It ships today!", EARLIER),
            listed("SMother", "whatsapp:+15005550009", "It ships today!", AT),
            listed("SMtext", to, "Something else", AT),
            listed("SMyes", to, "It ships today!", AT),
        ];
        let request = authorized(Some("It ships today!"), None, None);
        let since = at_millis() + 900;
        let found = find_created(&list, &request, since, |_| false).map(|m| m.sid.as_str());
        assert_eq!(found, Some("SMyes"));
        // A sid another request already has is not this one's.
        assert!(find_created(&list, &request, since, |sid| sid == "SMyes").is_none());
    }

    #[test]
    fn a_template_send_matches_its_rendered_preview_or_no_text() {
        let to = "whatsapp:+15005550006";
        let request = authorized(None, Some("HX0123456789abcdef0123456789abcdef"), Some("Hi Ana, order 1234 ships"));
        let rendered = vec![listed("SM1", to, "Hi Ana, order 1234 ships", AT)];
        assert!(find_created(&rendered, &request, at_millis(), |_| false).is_some());
        let blank = vec![listed("SM2", to, "", AT)];
        assert!(find_created(&blank, &request, at_millis(), |_| false).is_some());
        let other = vec![listed("SM3", to, "Hi Bo, order 9 ships", AT)];
        assert!(find_created(&other, &request, at_millis(), |_| false).is_none());
    }
}
