//! The per-request lifecycle: check the ledger, wait for the sender's pace, check again, claim,
//! read the claim back, send (retrying only what Twilio did not create), reconcile an ambiguous
//! answer by looking the message up, and publish the outcome. Also the folding of status
//! callbacks into each request.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;
use wa_platform::kafka::{EventProducer, HandleError, Handler, Record, TopicFollower};
use wa_platform::topics::OUTBOUND_DISPATCHED;
use wa_platform::CancellationToken;
use wa_schemas::{DeliveryStatusReceived, DispatchOutcome, Event, OutboundAuthorized, OutboundDispatched};
use wa_twilio::errors;
use wa_twilio::status::MessageStatus;

use crate::ledger::{Ledger, Stage};
use crate::media;
use crate::rate::RateLimiter;
use crate::twilio::{MessageResource, OutgoingMessage, SendFailure, TwilioClient, TwilioError};
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

/// The result of trying to send one message.
#[derive(Debug)]
enum Attempted {
    Sent {
        resource: MessageResource,
        attempts: i32,
    },
    Failed {
        reason: &'static str,
        error: Option<TwilioError>,
        attempts: i32,
    },
    /// Twilio may have created it: look it up. `since` is when the ambiguous attempt started.
    Ambiguous {
        error: TwilioError,
        attempts: i32,
        since: i64,
    },
    /// Revoked or stopping before an attempt: nothing reached Twilio.
    Interrupted,
}

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

/// What checking a request's media found.
enum MediaChecked {
    /// Nothing to check, or WhatsApp takes it.
    Sendable,
    /// Not sendable: the failure reason and the detail.
    NotSendable(&'static str, String),
    /// Revoked while checking.
    Interrupted,
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
        Ok(())
    }

    /// Whether the ledger says the request needs nothing more from this record: sent, failed
    /// or in doubt (never resent automatically).
    fn settled(&self, request_id: &str) -> bool {
        let Some(entry) = self.ledger.get(request_id) else { return false };
        if entry.stage == Stage::Sending {
            return false;
        }
        metrics::counter!("wa_dispatch_duplicates_skipped_total").increment(1);
        tracing::info!(request_id = %request_id, stage = ?entry.stage, "request already dispatched; not sent again");
        true
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

    async fn send_with_retries(&self, authorized: &OutboundAuthorized, revoked: &CancellationToken) -> Attempted {
        let message = self.message(authorized);
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        let mut attempts = 0;
        loop {
            // The first attempt's slot was taken before the claim was written.
            if attempts > 0 {
                tokio::select! {
                    () = revoked.cancelled() => return Attempted::Interrupted,
                    () = self.limiter.acquire(&authorized.from) => {}
                }
            }
            // Nothing has reached Twilio yet: the call is the point of no return.
            if revoked.is_cancelled() {
                return Attempted::Interrupted;
            }
            attempts += 1;
            let attempt_started = wa_platform::now_millis();
            let error = match self.twilio.send(&message).await {
                Ok(resource) => {
                    self.limiter.succeeded(&authorized.from);
                    return Attempted::Sent { resource, attempts };
                }
                Err(error) => error,
            };
            match error.failure() {
                SendFailure::Permanent(reason) => return Attempted::Failed { reason, error: Some(error), attempts },
                SendFailure::Ambiguous => return Attempted::Ambiguous { error, attempts, since: attempt_started },
                SendFailure::Retry => {}
            }
            if error.is_throttling() {
                self.limiter.throttled(&authorized.from);
            }
            let wait = backoff.mul_f64(0.5 + fastrand::f64());
            if started.elapsed() + wait > self.config.retry_deadline {
                return Attempted::Failed { reason: "retries_exhausted", error: Some(error), attempts };
            }
            metrics::counter!("wa_dispatch_retries_total", "throttled" => error.is_throttling().to_string())
                .increment(1);
            tracing::warn!(error = %error, attempts, retry_in = ?wait, "send not taken by twilio; retrying");
            tokio::select! {
                () = revoked.cancelled() => return Attempted::Interrupted,
                () = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    /// Asks the request's media URL (WhatsApp sends one per message) for its type and size;
    /// an unreachable URL is retried like a Twilio outage, up to the retry deadline.
    async fn check_media(&self, authorized: &OutboundAuthorized, revoked: &CancellationToken) -> MediaChecked {
        let Some(url) = authorized.media_urls.first() else {
            return MediaChecked::Sendable;
        };
        let started = tokio::time::Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let probe = tokio::select! {
                () = revoked.cancelled() => return MediaChecked::Interrupted,
                probe = media::probe(&self.media_http, url, self.config.request_timeout) => probe,
            };
            let detail = match probe {
                media::Probe::Answered(info) => {
                    return match media::media_problem(&info) {
                        None => MediaChecked::Sendable,
                        Some(problem) => MediaChecked::NotSendable("media_invalid", problem),
                    };
                }
                media::Probe::Refused(detail) => return MediaChecked::NotSendable("media_invalid", detail),
                media::Probe::Unreachable(detail) => detail,
            };
            let wait = backoff.mul_f64(0.5 + fastrand::f64());
            if started.elapsed() + wait > self.config.retry_deadline {
                return MediaChecked::NotSendable("media_unreachable", detail);
            }
            tracing::warn!(request_id = %authorized.request_id, detail = %detail, retry_in = ?wait, "media not reachable; retrying");
            tokio::select! {
                () = revoked.cancelled() => return MediaChecked::Interrupted,
                () = tokio::time::sleep(wait) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
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
    /// claim that counts.
    async fn dispatch(&self, authorized: OutboundAuthorized, revoked: &CancellationToken) -> Result<(), HandleError> {
        let identity = Identity {
            conversation_id: &authorized.conversation_id,
            request_id: &authorized.request_id,
            from: &authorized.from,
            to: &authorized.to,
            metadata: &authorized.metadata,
        };
        if self.settled(&authorized.request_id) {
            return Ok(());
        }
        // Free-form content needs the window still open; templates do not.
        if let (None, Some(expires_at)) = (&authorized.content_sid, authorized.window_expires_at) {
            if wa_platform::now_millis() >= expires_at {
                let mut failed = identity.event(DispatchOutcome::Failed, None);
                failed.failure_reason = Some("window_closed".to_owned());
                return self.outcome(failed).await;
            }
        }
        // Media WhatsApp would refuse fails here, explained, before it costs a send.
        match self.check_media(&authorized, revoked).await {
            MediaChecked::Sendable => {}
            MediaChecked::NotSendable(reason, detail) => {
                let mut failed = identity.event(DispatchOutcome::Failed, None);
                failed.failure_reason = Some(reason.to_owned());
                failed.error_message = Some(detail);
                return self.outcome(failed).await;
            }
            MediaChecked::Interrupted => {
                return Err(HandleError::Interrupted("revoked while checking the media".to_owned()));
            }
        }
        // The sender's pace first, so the claim is written right before the call.
        tokio::select! {
            () = revoked.cancelled() => return Err(HandleError::Interrupted("revoked while waiting for the sender's pace".to_owned())),
            () = self.limiter.acquire(&authorized.from) => {}
        }
        // The wait may have been long (throttling): another instance may have sent it since.
        if self.settled(&authorized.request_id) {
            return Ok(());
        }
        let claim_id = Uuid::new_v4().to_string();
        let mut claim = identity.event_with_claim(DispatchOutcome::Sending, None, Some(&claim_id));
        claim.claimed_by = Some(self.config.instance_id.clone());
        let (partition, offset) = self.producer.publish(&OUTBOUND_DISPATCHED, &claim).await?;
        let read_back = tokio::select! {
            () = revoked.cancelled() => Err("revoked while reading the claim back".to_owned()),
            read = self.follower.wait_until_read(partition, offset, CLAIM_READBACK_TIMEOUT) => read,
        };
        if let Err(reason) = read_back {
            self.release(&identity, &claim_id).await?;
            return Err(if revoked.is_cancelled() {
                HandleError::Interrupted(reason)
            } else {
                HandleError::Transient(reason)
            });
        }
        if !self.ledger.holds_claim(&authorized.request_id, &claim_id) {
            // Another claim came first: its instance sends (or, if it died, the in-doubt
            // watcher settles it). This record needs nothing more.
            metrics::counter!("wa_dispatch_claims_total", "result" => "lost").increment(1);
            let holder = self.ledger.get(&authorized.request_id).and_then(|e| e.claim).map(|c| c.by);
            tracing::info!(request_id = %authorized.request_id, holder = ?holder, "another claim came first; not sending");
            return Ok(());
        }
        metrics::counter!("wa_dispatch_claims_total", "result" => "won").increment(1);
        // While this process works on the send it is not in doubt; the guard ends that when
        // this function returns, after the outcome is durable.
        let _working = Working::start(&self.ledger, &authorized.request_id);
        let mut event = match self.send_with_retries(&authorized, revoked).await {
            Attempted::Sent { resource, attempts } => {
                let mut sent = identity.event(DispatchOutcome::Sent, None);
                sent.message_sid = Some(resource.sid);
                sent.twilio_status = Some(resource.status);
                sent.attempts = attempts;
                sent
            }
            Attempted::Failed { reason, error, attempts } => {
                let mut failed = identity.event(DispatchOutcome::Failed, None);
                failed.failure_reason = Some(reason.to_owned());
                failed.error_code = error.as_ref().and_then(TwilioError::code);
                failed.error_message = error.map(|err| err.to_string());
                failed.attempts = attempts;
                failed
            }
            Attempted::Ambiguous { error, attempts, since } => {
                let found = self.reconcile(&authorized, since).await;
                metrics::counter!("wa_dispatch_reconciled_total", "found" => found.is_some().to_string()).increment(1);
                match found {
                    Some(resource) => {
                        tracing::warn!(request_id = %authorized.request_id, sid = %resource.sid, error = %error,
                            "ambiguous answer from twilio; the message was found in its messages list");
                        let mut sent = identity.event(DispatchOutcome::Sent, None);
                        sent.message_sid = Some(resource.sid);
                        sent.twilio_status = Some(resource.status);
                        sent.error_message = Some(format!("{error}; found in Twilio's Messages list"));
                        sent.attempts = attempts;
                        sent
                    }
                    None => {
                        tracing::warn!(request_id = %authorized.request_id, error = %error,
                            "ambiguous answer from twilio and the message is not in its list; in doubt, never resent");
                        let mut in_doubt = identity.event(DispatchOutcome::InDoubt, None);
                        in_doubt.failure_reason =
                            Some(if error.status().is_some() { "ambiguous_answer" } else { "no_answer" }.to_owned());
                        in_doubt.error_code = error.code();
                        in_doubt.error_message = Some(format!(
                            "{error}; not found in Twilio's Messages list: it may or may not have been sent, and is not sent again"
                        ));
                        in_doubt.attempts = attempts;
                        in_doubt
                    }
                }
            }
            Attempted::Interrupted => {
                // Nothing reached Twilio: release the claim so the partition's next owner sends.
                self.release(&identity, &claim_id).await?;
                return Err(HandleError::Interrupted("revoked before the send".to_owned()));
            }
        };
        if event.error_code == Some(errors::OUTSIDE_WINDOW) {
            window_disagreement(&authorized.request_id, "api");
        }
        event.claim_id = Some(claim_id);
        self.outcome(event).await
    }

    async fn release(&self, identity: &Identity<'_>, claim_id: &str) -> Result<(), HandleError> {
        let released = identity.event_with_claim(DispatchOutcome::Released, None, Some(claim_id));
        self.producer.publish(&OUTBOUND_DISPATCHED, &released).await?;
        Ok(())
    }

    async fn outcome(&self, event: OutboundDispatched) -> Result<(), HandleError> {
        let reason = event.failure_reason.clone().unwrap_or_else(|| "none".to_owned());
        metrics::counter!("wa_dispatch_outcomes_total", "outcome" => event.outcome.clone(), "reason" => reason.clone())
            .increment(1);
        tracing::info!(request_id = %event.request_id, outcome = %event.outcome, attempts = event.attempts, reason = %reason, "dispatched");
        self.publish(event).await
    }

    /// Folds one status callback into its request: resolves an unconfirmed send, and publishes
    /// a forward move (a failure with its reason from the error table).
    async fn fold(&self, delivery: DeliveryStatusReceived) -> Result<(), HandleError> {
        let request_id = delivery.request_id.clone().or_else(|| self.ledger.request_of(&delivery.message_sid));
        let Some(request_id) = request_id else {
            metrics::counter!("wa_dispatch_callbacks_total", "outcome" => "unknown_request").increment(1);
            return Ok(());
        };
        let entry = self.ledger.get(&request_id);
        let identity = Identity {
            conversation_id: entry.as_ref().map_or(&delivery.conversation_id, |e| &e.conversation_id),
            request_id: &request_id,
            from: entry.as_ref().map_or(&delivery.from, |e| &e.from),
            to: entry.as_ref().map_or(&delivery.to, |e| &e.to),
            metadata: entry.as_ref().map_or(&NO_METADATA, |e| &e.metadata),
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
            metrics::counter!("wa_dispatch_callbacks_total", "outcome" => "not_forward").increment(1);
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
        metrics::counter!("wa_dispatch_callbacks_total", "outcome" => "moved").increment(1);
        self.publish(moved).await
    }
}

/// WhatsApp refused a free-form message as outside the window that session-window found open:
/// the two clocks or the two views of the customer's messages disagree.
fn window_disagreement(request_id: &str, via: &'static str) {
    metrics::counter!("wa_window_disagreements_total", "via" => via).increment(1);
    tracing::warn!(request_id = %request_id, via,
        "whatsapp refused a free-form message as outside the 24-hour window that session-window allowed (63016)");
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
