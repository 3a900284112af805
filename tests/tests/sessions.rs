//! Session-window end to end: consent, timer notices, the query endpoint, and a rebuild that
//! gives the state the live projection computed.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e_tests::{
    customer_message, outbound_request, refused_send, sent_message, unique_customer, Channel, RawRecord, BUSINESS,
};
use serde_json::{json, Value};
use wa_platform::clock::Clock;
use wa_platform::topics::{
    CONSENT, INBOUND, OUTBOUND_CHECKED, OUTBOUND_DISPATCHED, OUTBOUND_REQUESTED, SESSIONS, SESSION_EVENTS,
};
use wa_schemas::{
    conversation_id, ConsentChanged, OutboundWindowChecked, SessionChange, SessionEvent, TemplateRequest,
};

const HOUR: i64 = 3_600_000;
/// The `ce_source` of what the rebuild command writes.
const REBUILD_SOURCE: &str = "wachannel/session-window-rebuild";

async fn session_event(channel: &Channel, customer: &str, kind: &str) -> (SessionEvent, i64) {
    let conversation = conversation_id(BUSINESS, customer);
    let record = channel
        .await_record(&SESSION_EVENTS, |r| {
            let event: SessionEvent = r.decode();
            event.conversation_id == conversation && event.kind == kind
        })
        .await;
    (record.decode(), wa_platform::now_millis())
}

async fn verdict(channel: &Channel, request_id: &str) -> OutboundWindowChecked {
    channel
        .await_record(&OUTBOUND_CHECKED, |r| r.decode::<OutboundWindowChecked>().request_id == request_id)
        .await
        .decode()
}

async fn query(channel: &Channel, customer_or_id: &str) -> (u16, Value) {
    let id = if customer_or_id.starts_with("whatsapp:") {
        conversation_id(BUSINESS, customer_or_id)
    } else {
        customer_or_id.to_owned()
    };
    let response = channel.get(session_window::SERVICE, &format!("/v1/conversations/{id}/session")).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stop_and_refused_sends_opt_customers_out_and_start_opts_them_back_in() {
    let channel = Channel::start().await;
    let writer = unique_customer();
    let (_, status) = channel.sim_inbound(&writer, "Hello, where is my order?").await;
    assert_eq!(status, 200);
    let (opened, _) = session_event(&channel, &writer, "window_opened").await;
    let (status, state) = query(&channel, &writer).await;
    assert_eq!(status, 200, "{state}");
    assert_eq!(state["known"], true);
    assert_eq!(state["free_form_allowed"], true);
    assert_eq!(state["opted_out"], false);
    assert_eq!(state["window_expires_at"].as_i64(), opened.window_expires_at);

    // A customer texts STOP (in another case, with punctuation): opted out, window open.
    let stopper = unique_customer();
    channel.sim_inbound(&stopper, " Stop! ").await;
    let (opted_out, _) = session_event(&channel, &stopper, "opted_out").await;
    assert_eq!(opted_out.reason.as_deref(), Some("stop"));
    channel
        .publish(&OUTBOUND_REQUESTED, &outbound_request("stop-reply", &stopper, Some("You are unsubscribed."), None))
        .await;
    let checked = verdict(&channel, "stop-reply").await;
    assert!(checked.allowed, "a reply inside the window is still allowed");
    assert!(checked.opted_out, "later stages learn the customer opted out");
    let (_, state) = query(&channel, &stopper).await;
    assert_eq!(state["opted_out"], true);

    // START opts back in.
    channel.sim_inbound(&stopper, "START").await;
    let (opted_in, _) = session_event(&channel, &stopper, "opted_in").await;
    assert_eq!(opted_in.reason.as_deref(), Some("start"));
    let (_, state) = query(&channel, &stopper).await;
    assert_eq!(state["opted_out"], false);

    // Twilio refuses a send with 21610 (the customer unsubscribed): opted out too.
    channel.sim_behaviour(json!({"refuse": {writer.clone(): 21610}})).await;
    let response =
        channel.post_outbound(&json!({"request_id": "to-blocked", "from": BUSINESS, "to": writer, "body": "hi"})).await;
    assert_eq!(response.status(), 202);
    assert_eq!(channel.dispatch_outcome("to-blocked").await.error_code, Some(21610));
    let (refused, _) = session_event(&channel, &writer, "opted_out").await;
    assert_eq!(refused.reason.as_deref(), Some("twilio_error_21610"));
    let (_, state) = query(&channel, &writer).await;
    assert_eq!(state["opted_out"], true);

    // Unknown conversations and bad ids.
    let (status, state) = query(&channel, &unique_customer()).await;
    assert_eq!((status, &state["known"], &state["refusal_reason"]), (200, &json!(false), &json!("no_window")));
    let (status, problem) = query(&channel, "not-a-uuid").await;
    assert_eq!(status, 400, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("not a conversation id"));

    // The query needs its bearer token: without it or with another, 401 and nothing told.
    let url = format!(
        "{}/v1/conversations/{}/session",
        channel.service_urls[session_window::SERVICE],
        conversation_id(BUSINESS, &writer)
    );
    for token in [None, Some("guess")] {
        let mut request = reqwest::Client::new().get(&url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "token {token:?}");
        assert!(!response.text().await.unwrap().contains("opted_out"));
    }
    channel.stop().await;
}

/// Windows close by session-window's clock, held still here and moved by the test: the notices
/// carry their deadlines as their time and are not published before the clock reaches them.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiring_and_closed_notices_fire_at_their_deadlines() {
    let start = wa_platform::now_millis();
    let clock = Clock::manual(start);
    let channel = Channel::start_with_session_clock(clock.clone()).await;
    // Replayed history: a window that closed long ago is recorded without any announcement.
    let old = unique_customer();
    channel.publish(&INBOUND, &customer_message(&old, start - 30 * HOUR, "old news")).await;
    let closing = unique_customer();
    let expires = start + 10 * 60_000;
    channel.publish(&INBOUND, &customer_message(&closing, expires - 24 * HOUR, "bye")).await;

    let (opened, _) = session_event(&channel, &closing, "window_opened").await;
    assert_eq!(opened.window_expires_at, Some(expires));
    // The lead is an hour: the expiring notice is due at once.
    let (expiring, _) = session_event(&channel, &closing, "window_expiring").await;
    assert_eq!(expiring.occurred_at, expires - HOUR);
    let (_, state) = query(&channel, &closing).await;
    assert_eq!((&state["notified"], &state["free_form_allowed"]), (&json!("expiring"), &json!(true)));

    // A millisecond before the deadline the window is still open; at it, it closes.
    clock.set_millis(expires - 1);
    let conversation = conversation_id(BUSINESS, &closing);
    let closed_early = channel
        .read_to_end(&SESSION_EVENTS)
        .await
        .iter()
        .map(RawRecord::decode::<SessionEvent>)
        .any(|e| e.conversation_id == conversation && e.change() == Some(SessionChange::WindowClosed));
    assert!(!closed_early, "window_closed was published before the clock reached the deadline");
    clock.set_millis(expires);
    let (closed, _) = session_event(&channel, &closing, "window_closed").await;
    assert_eq!(closed.occurred_at, expires);
    let (_, state) = query(&channel, &closing).await;
    assert_eq!(state["notified"], "closed");
    assert_eq!(state["free_form_allowed"], false);

    let old_id = conversation_id(BUSINESS, &old);
    let (_, state) = query(&channel, &old).await;
    assert_eq!((&state["known"], &state["notified"]), (&json!(true), &json!("closed")));
    let announced: Vec<SessionEvent> = channel
        .read_to_end(&SESSION_EVENTS)
        .await
        .iter()
        .map(RawRecord::decode::<SessionEvent>)
        .filter(|e| e.conversation_id == old_id)
        .collect();
    assert!(announced.is_empty(), "history was announced: {announced:?}");
    channel.stop().await;
}

/// The latest snapshot per conversation, by conversation id.
async fn live_states(channel: &Channel) -> BTreeMap<String, wa_schemas::SessionState> {
    session_window::rebuild::read_snapshots(&channel.kafka).await.expect("snapshots readable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_from_scratch_gives_the_state_of_the_live_projection() {
    let channel = Channel::start().await;
    let now = wa_platform::now_millis();
    let customers: Vec<String> = (0..40).map(|_| unique_customer()).collect();
    let (mut inbound, mut refusals) = (Vec::new(), Vec::new());
    for (i, customer) in customers.iter().enumerate() {
        let i = i as i64;
        // Every conversation gets a few messages, out of order, some repeated.
        let mut messages = vec![
            customer_message(customer, now - (i % 5) * 20 * HOUR, "hi"),
            customer_message(customer, now - (i % 5) * 20 * HOUR - HOUR, "earlier, read later"),
        ];
        if i % 4 == 0 {
            messages.push(customer_message(customer, now - 2 * HOUR, "STOP"));
        }
        if i % 8 == 0 {
            messages.push(customer_message(customer, now - HOUR, "unstop"));
        }
        if i % 3 == 0 {
            let mut from_ad = customer_message(customer, now - 50 * HOUR, "I saw your ad");
            from_ad.referral =
                Some(wa_schemas::Referral { ctwa_clid: Some(format!("clid-{i}")), ..Default::default() });
            messages.push(from_ad);
            // Answered within 24 hours (an entry point), or only 40 hours later (none).
            let answered = if i % 6 == 0 { now - 49 * HOUR } else { now - 10 * HOUR };
            refusals.push(sent_message(customer, answered));
        }
        messages.push(messages[0].clone());
        inbound.extend(messages);
        if i % 5 == 1 {
            refusals.push(refused_send(customer, now - 3 * HOUR, 63014));
        }
    }
    channel.publish_all(&INBOUND, &inbound).await;
    channel.publish_all(&OUTBOUND_DISPATCHED, &refusals).await;

    // The live projection converges on what a single replay of every event computes.
    let options = session_window::rebuild::Options { since: None, dry_run: true };
    let lead = Duration::from_secs(3600);
    let keywords = session_window::session::Keywords::defaults();
    let deadline = tokio::time::Instant::now() + e2e_tests::EVENT_TIMEOUT;
    let expected = loop {
        let rebuilt =
            session_window::rebuild::rebuild(&channel.kafka, &keywords, lead, &options, |_| {}).await.unwrap();
        let expected = e2e_tests::rebuilt_states(&rebuilt);
        assert_eq!(expected.len(), customers.len());
        let live = live_states(&channel).await;
        if live == expected {
            break expected;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "live state never matched the rebuild:\nlive {live:#?}\nrebuilt {expected:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(expected.values().any(|s| s.opted_out) && expected.values().any(|s| !s.opted_out));
    assert!(expected.values().any(|s| s.entry_point_expires_at.is_some()));
    // Both folds go through the crate's rules; this checks them against WhatsApp's, written
    // here apart: the window closes 24 hours after the customer's latest message, the
    // business's answer within 24 hours of a click-to-WhatsApp referral opens 72 free hours from
    // that answer, and the latest consent signal (a keyword, or a send refused with 63014)
    // decides opt-out.
    for (i, customer) in customers.iter().enumerate() {
        let i = i as i64;
        let hi = now - (i % 5) * 20 * HOUR;
        let mut messages = vec![hi, hi - HOUR];
        let mut consent: Vec<(i64, bool)> = Vec::new();
        if i % 4 == 0 {
            messages.push(now - 2 * HOUR);
            consent.push((now - 2 * HOUR, true));
        }
        if i % 8 == 0 {
            messages.push(now - HOUR);
            consent.push((now - HOUR, false));
        }
        let referral = (i % 3 == 0).then_some(now - 50 * HOUR);
        messages.extend(referral);
        if i % 5 == 1 {
            consent.push((now - 3 * HOUR, true));
        }
        let last = *messages.iter().max().unwrap();
        let opted_out = consent.iter().max_by_key(|(at, _)| *at).is_some_and(|(_, out)| *out);
        let state = &expected[&conversation_id(BUSINESS, customer)];
        assert_eq!(state.last_customer_message_at, Some(last), "customer {i}");
        assert_eq!(state.window_expires_at, Some(last + 24 * HOUR), "customer {i}");
        let entry_point = referral.filter(|_| i % 6 == 0).map(|_| now - 49 * HOUR + 72 * HOUR);
        assert_eq!(state.entry_point_expires_at, entry_point, "customer {i}");
        assert_eq!(state.opted_out, opted_out, "customer {i}");
    }
    // The dry runs wrote nothing: no snapshot and no consent record comes from the rebuild.
    let by_rebuild = |records: Vec<RawRecord>| {
        records.iter().filter(|r| r.headers.get("ce_source").map(String::as_str) == Some(REBUILD_SOURCE)).count()
    };
    assert_eq!(by_rebuild(channel.read_to_end(&SESSIONS).await), 0, "a dry run wrote snapshots");
    assert_eq!(by_rebuild(channel.read_to_end(&CONSENT).await), 0, "a dry run wrote consent records");

    // A real rebuild rewrites the snapshots with the same states.
    let options = session_window::rebuild::Options { since: None, dry_run: false };
    let rebuilt = session_window::rebuild::rebuild(&channel.kafka, &keywords, lead, &options, |_| {}).await.unwrap();
    assert_eq!(rebuilt.summary.snapshots as usize, customers.len());
    assert_eq!(rebuilt.summary.conversations, customers.len());
    assert_eq!(live_states(&channel).await, expected);
    assert_eq!(by_rebuild(channel.read_to_end(&SESSIONS).await), customers.len(), "the rebuild's own snapshots");

    // The verdicts follow that state.
    let template =
        TemplateRequest { name: "order_update".into(), language: "en".into(), variables: Default::default() };
    let requests: Vec<_> = customers
        .iter()
        .enumerate()
        .map(|(i, customer)| outbound_request(&format!("rebuild-check-{i}"), customer, None, Some(template.clone())))
        .collect();
    channel.publish_all(&OUTBOUND_REQUESTED, &requests).await;
    let verdicts = channel
        .await_all::<OutboundWindowChecked>(&OUTBOUND_CHECKED, requests.len(), |v| {
            v.request_id.starts_with("rebuild-check-")
        })
        .await;
    for checked in verdicts {
        let state = &expected[&checked.conversation_id];
        assert!(checked.allowed, "templates pass the window");
        assert_eq!(checked.opted_out, state.opted_out);
        assert_eq!(checked.window_expires_at, state.window_expires_at);
    }
    channel.stop().await;
}

/// A CRM producer that partitions by another hash puts a request where session-window does not
/// hold its conversation: the record is dead-lettered with the partition it belongs on, and the
/// requests after it are still decided.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_on_the_wrong_partition_is_dead_lettered_with_where_it_belongs() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let request = outbound_request("misrouted-1", &customer, Some("hi"), None);
    let right = wa_platform::topics::partition_for_key(
        request.conversation_id.as_bytes(),
        wa_platform::topics::MESSAGE_PARTITIONS,
    );
    let wrong = (right + 1) % wa_platform::topics::MESSAGE_PARTITIONS;
    let producer =
        wa_platform::kafka::EventProducer::new(&channel.kafka, "e2e-tests", Duration::from_secs(10)).unwrap();
    producer.enqueue(&OUTBOUND_REQUESTED, &request, Some(wrong)).await.unwrap().acknowledged().await.unwrap();
    channel.publish(&OUTBOUND_REQUESTED, &outbound_request("after-misrouted", &customer, Some("hi"), None)).await;

    let dead = channel
        .await_record(&wa_platform::topics::DEAD_LETTER, |r| {
            r.headers.get("dlq.service").map(String::as_str) == Some("session-window")
        })
        .await;
    let reason = &dead.headers["dlq.reason"];
    assert!(reason.contains(&format!("belongs on partition {right}, found on {wrong}")), "{reason}");
    assert_eq!(dead.payload, request_payload(&request));
    assert_eq!(verdict(&channel, "after-misrouted").await.refusal_reason.as_deref(), Some("no_window"));
    channel.stop().await;
}

fn request_payload(request: &wa_schemas::OutboundRequested) -> Vec<u8> {
    use wa_schemas::Event as _;
    request.encode().unwrap()
}

/// The operator's command: a progress line and a summary; `--since` replays only what was
/// written from that time on; a bad time is refused with the formats it takes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rebuild_command_reports_progress_and_replays_from_a_time() {
    let channel = Channel::topics_only().await;
    let now = wa_platform::now_millis();
    let before: Vec<String> = (0..5).map(|_| unique_customer()).collect();
    let after: Vec<String> = (0..3).map(|_| unique_customer()).collect();
    let stopper = unique_customer();
    let mut messages: Vec<_> = before.iter().map(|c| customer_message(c, now - HOUR, "hi")).collect();
    messages.push(customer_message(&stopper, now - HOUR, "STOP"));
    channel.publish_all(&INBOUND, &messages).await;
    tokio::time::sleep(Duration::from_millis(50)).await; // record timestamps are milliseconds
    let since = wa_platform::now_millis();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let messages: Vec<_> = after.iter().map(|c| customer_message(c, now, "hello")).collect();
    channel.publish_all(&INBOUND, &messages).await;

    let binary = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("session-window");
    let run = |args: Vec<String>| {
        let output = std::process::Command::new(&binary)
            .args(args)
            .env("KAFKA_BOOTSTRAP_SERVERS", &channel.kafka.bootstrap_servers)
            .env("WA_TOPIC_PREFIX", &channel.kafka.topic_prefix)
            .output()
            .expect("session-window runs");
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (ok, stdout, stderr) = run(vec!["rebuild".into()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stderr.contains("100.0%") && stderr.contains("events/s") && stderr.contains("lag 0"), "{stderr}");
    assert!(stdout.contains("rebuilt 9 conversations (9 with an open window, 1 opted out) from 9 events"), "{stdout}");
    // The STOP was on the inbound topic only (no live service wrote it to wa.consent.v1): the
    // rebuild keeps it there, where it outlives the message topics.
    assert!(stdout.contains("wrote 9 snapshots and 0 tombstones to wa.sessions.v1; 1 consent facts added"), "{stdout}");
    assert_eq!(session_window::rebuild::read_snapshots(&channel.kafka).await.unwrap().len(), 9);

    // From a time: the earlier customers' messages are forgotten, and their snapshots removed;
    // the opt-out is kept.
    let (ok, stdout, stderr) = run(vec!["rebuild".into(), "--since".into(), since.to_string()]);
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("rebuilt 4 conversations (3 with an open window, 1 opted out)"), "{stdout}\n{stderr}");
    assert!(stdout.contains("wrote 4 snapshots and 5 tombstones"), "{stdout}");
    let states = session_window::rebuild::read_snapshots(&channel.kafka).await.unwrap();
    let mut expected: std::collections::BTreeSet<String> = after.iter().map(|c| conversation_id(BUSINESS, c)).collect();
    expected.insert(conversation_id(BUSINESS, &stopper));
    assert_eq!(states.keys().cloned().collect::<std::collections::BTreeSet<_>>(), expected);
    let stopped = &states[&conversation_id(BUSINESS, &stopper)];
    assert!(stopped.opted_out, "{stopped:?}");
    assert_eq!((stopped.opted_out_at, stopped.last_customer_message_at), (Some(now - HOUR), None));

    let (ok, _, stderr) = run(vec!["rebuild".into(), "--since".into(), "yesterday".into()]);
    assert!(!ok);
    assert!(stderr.contains("neither RFC 3339") && stderr.contains("Unix millis"), "{stderr}");
}

/// A customer who sent STOP and later answers an agent "Yes" or "Alta" stays opted out: only
/// unambiguous words (START) opt back in. Each consent fact is kept on wa.consent.v1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_to_an_agent_never_opt_a_customer_back_in() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    channel.sim_inbound(&customer, "STOP").await;
    session_event(&channel, &customer, "opted_out").await;
    for answer in ["Yes", "Alta", "yes please"] {
        assert_eq!(channel.sim_inbound(&customer, answer).await.1, 200);
    }
    // A request is decided after every message before it: the answers have been read.
    channel.publish(&OUTBOUND_REQUESTED, &outbound_request("after-yes", &customer, Some("Great!"), None)).await;
    let checked = verdict(&channel, "after-yes").await;
    assert!(checked.opted_out, "an answer re-subscribed the customer");
    assert!(checked.allowed, "replies inside the window still go");
    assert_eq!(query(&channel, &customer).await.1["opted_out"], true);

    channel.sim_inbound(&customer, "START").await;
    session_event(&channel, &customer, "opted_in").await;
    assert_eq!(query(&channel, &customer).await.1["opted_out"], false);

    let conversation = conversation_id(BUSINESS, &customer);
    let kept = channel.await_all::<ConsentChanged>(&CONSENT, 2, |c| c.conversation_id == conversation).await;
    let mut kinds: Vec<(String, String)> = kept.into_iter().map(|c| (c.consent, c.reason)).collect();
    kinds.sort();
    assert_eq!(kinds, [("opted_in".to_owned(), "start".to_owned()), ("opted_out".to_owned(), "stop".to_owned())]);
    channel.stop().await;
}

/// A customer message published again 25 hours later (past ingress's dedupe horizon, so with
/// a new receive time), or replayed with its original time, does not reopen the window it
/// opened: session-window recognises it by its event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_replayed_after_its_window_closed_does_not_reopen_it() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let now = wa_platform::now_millis();
    let original = customer_message(&customer, now - 25 * HOUR, "where is my order?");
    channel.publish(&INBOUND, &original).await;
    let mut reposted = original.clone();
    reposted.occurred_at = now;
    channel.publish(&INBOUND, &reposted).await;
    channel.publish(&INBOUND, &original).await;
    channel.publish(&OUTBOUND_REQUESTED, &outbound_request("after-replay", &customer, Some("Hello again"), None)).await;
    let checked = verdict(&channel, "after-replay").await;
    assert!(!checked.allowed, "the replay reopened the window: {checked:?}");
    assert_eq!(checked.refusal_reason.as_deref(), Some("window_closed"));
    assert_eq!(checked.window_expires_at, Some(original.occurred_at + 24 * HOUR));
    let (_, state) = query(&channel, &customer).await;
    assert_eq!(state["last_customer_message_at"].as_i64(), Some(original.occurred_at));
    let conversation = conversation_id(BUSINESS, &customer);
    let announced: Vec<String> = channel
        .read_to_end(&SESSION_EVENTS)
        .await
        .iter()
        .map(RawRecord::decode::<SessionEvent>)
        .filter(|e| e.conversation_id == conversation)
        .map(|e| e.kind)
        .collect();
    assert!(!announced.iter().any(|k| k == "window_opened" || k == "window_extended"), "{announced:?}");
    channel.stop().await;
}

/// WhatsApp's window runs 24 hours from the customer's latest message: the business's replies,
/// even sent ones, never move it; the customer's next message does (`window_extended`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn business_replies_never_extend_the_window_and_the_customers_next_message_does() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let wrote_at = wa_platform::now_millis() - 23 * HOUR;
    channel.publish(&INBOUND, &customer_message(&customer, wrote_at, "where is my order?")).await;
    let opened_until = wrote_at + 24 * HOUR;

    for n in 0..2 {
        let request_id = format!("reply-{n}-{}", uuid::Uuid::new_v4().simple());
        channel
            .publish(&OUTBOUND_REQUESTED, &outbound_request(&request_id, &customer, Some("It ships today."), None))
            .await;
        let checked = verdict(&channel, &request_id).await;
        assert!(checked.allowed, "{checked:?}");
        assert_eq!(checked.window_expires_at, Some(opened_until), "reply {n} saw a window moved by a reply");
        channel
            .await_record(&OUTBOUND_DISPATCHED, |r| {
                let event: wa_schemas::OutboundDispatched = r.decode();
                event.request_id == request_id && event.kind() == Some(wa_schemas::DispatchOutcome::Sent)
            })
            .await;
    }
    let (_, state) = query(&channel, &customer).await;
    assert_eq!(state["window_expires_at"].as_i64(), Some(opened_until), "{state}");
    assert_eq!(state["last_customer_message_at"].as_i64(), Some(wrote_at), "{state}");

    let (_, status) = channel.sim_inbound(&customer, "thanks!").await;
    assert_eq!(status, 200);
    let (extended, _) = session_event(&channel, &customer, "window_extended").await;
    let (_, state) = query(&channel, &customer).await;
    let wrote_again_at = state["last_customer_message_at"].as_i64().expect("the new message is the latest");
    assert!(wrote_again_at > wrote_at);
    assert_eq!(extended.window_expires_at, Some(wrote_again_at + 24 * HOUR));
    assert_eq!(state["window_expires_at"].as_i64(), extended.window_expires_at);
    channel.stop().await;
}

/// A customer who came from a click-to-WhatsApp ad: the business's first answer within 24 hours
/// opens a free entry point for 72 hours from that answer (`entry_point_opened`), and every
/// message inside it is priced `free_entry_point`; free-form replies still follow the 24-hour
/// window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_answer_to_a_customer_from_an_ad_opens_an_entry_point_for_72_hours() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let at = wa_platform::now_millis();
    let mut message = customer_message(&customer, at, "I saw your ad");
    message.referral = Some(wa_schemas::Referral {
        source_id: Some("120207373428450123".into()),
        source_type: Some("ad".into()),
        source_url: Some("https://fb.me/3cr4Wqqkv".into()),
        headline: Some("Spring sale".into()),
        ctwa_clid: Some(
            "ARAkLkA8rmlFeiCktEJQ-QTwRiyYHAFDLMNDBH0CD3qpjd0HR4irJ6LEkR7JwFF4XvnO2E4Nx0-eM-ZABEGSHBaHoHtqDMqEeQ".into(),
        ),
        num_media: Some("0".into()),
        ..Default::default()
    });
    channel.publish(&INBOUND, &message).await;
    session_event(&channel, &customer, "window_opened").await;
    let (_, state) = query(&channel, &customer).await;
    assert_eq!(state["entry_point_expires_at"], Value::Null, "the customer's message alone opens nothing: {state}");

    // The agent answers: free, inside the entry point this answer opens.
    let response = channel
        .post_outbound(
            &json!({"request_id": "fep-1", "from": BUSINESS, "to": customer, "body": "Hi! The sale runs all week."}),
        )
        .await;
    assert_eq!(response.status(), 202);
    let sent = channel.dispatch_outcome("fep-1").await;
    assert_eq!(
        (sent.pricing_category.as_deref(), sent.pricing_type.as_deref()),
        (Some("service"), Some("free_entry_point"))
    );
    let (opened, _) = session_event(&channel, &customer, "entry_point_opened").await;
    let expires = opened.entry_point_expires_at.expect("the entry point's end");
    assert_eq!(expires, sent.occurred_at + 72 * HOUR, "72 hours from the answer");
    assert_eq!(opened.window_expires_at, Some(at + 24 * HOUR));
    let (_, state) = query(&channel, &customer).await;
    assert_eq!(state["entry_point_expires_at"].as_i64(), Some(expires), "{state}");
    channel.stop().await;
}
