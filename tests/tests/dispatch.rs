//! Outbound-dispatch against the simulator and the real broker: retryable errors retried,
//! permanent ones failed once with their reason, 429 storms absorbed, a redelivered
//! authorization never sent twice, and an unanswered send held in doubt until its callback.

use std::collections::HashMap;

use e2e_tests::{unique_customer, Channel, RawRecord, BUSINESS};
use serde_json::{json, Value};
use wa_platform::topics::{OUTBOUND_AUTHORIZED, OUTBOUND_DISPATCHED, SESSION_EVENTS};
use wa_schemas::{conversation_id, OutboundAuthorized, OutboundDispatched, SessionEvent};

/// A customer who wrote a moment ago, so free-form replies are allowed.
async fn customer_who_wrote(channel: &Channel) -> String {
    let customer = unique_customer();
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    assert_eq!(channel.post_inbound(&channel.inbound_params(&sid, &customer, "hi"), None).await.status(), 200);
    customer
}

async fn reply(channel: &Channel, request_id: &str, customer: &str) {
    let request = json!({"request_id": request_id, "from": BUSINESS, "to": customer, "body": "on its way"});
    assert_eq!(channel.post_outbound(&request).await.status(), 202);
}

/// The simulator's messages for one request (its id is on the StatusCallback URL).
async fn sim_messages_for(channel: &Channel, request_id: &str) -> usize {
    let needle = format!("request_id={request_id}");
    channel
        .sim_messages()
        .await
        .iter()
        .filter(|m| {
            m["params"].as_array().is_some_and(|params| {
                params.iter().any(|p| p[0] == "StatusCallback" && p[1].as_str().is_some_and(|u| u.ends_with(&needle)))
            })
        })
        .count()
}

/// This channel's simulator's counters (`GET /sim/stats`).
async fn sim_stats(channel: &Channel) -> Value {
    channel.get(twilio_sim::SERVICE, "/sim/stats").await.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retryable_errors_are_retried_and_permanent_ones_fail_once_with_their_reason() {
    let channel = Channel::start().await;

    // Twilio answers 503 for a while: dispatch keeps trying and the message goes out.
    channel.sim_behaviour(json!({"faults": {"messages": {"error_rate": 1.0, "error_status": 503}}})).await;
    let customer = customer_who_wrote(&channel).await;
    reply(&channel, "retry-1", &customer).await;
    let deadline = tokio::time::Instant::now() + e2e_tests::EVENT_TIMEOUT;
    while sim_stats(&channel).await["faults_injected"]["messages"].as_u64().unwrap_or(0) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "dispatch did not retry");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    channel.sim_behaviour(json!({"faults": {}})).await;
    let sent = channel.dispatch_outcome("retry-1").await;
    assert_eq!(sent.outcome, "sent");
    assert!(sent.attempts >= 3, "two refusals, then success: {} attempts", sent.attempts);

    // A permanent error: one attempt, the reason named by its code, nothing sent.
    let refused = customer_who_wrote(&channel).await;
    channel.sim_behaviour(json!({"refuse": {refused.clone(): 21211}})).await;
    reply(&channel, "permanent-1", &refused).await;
    let failed = channel.dispatch_outcome("permanent-1").await;
    assert_eq!(failed.outcome, "failed");
    assert_eq!(failed.failure_reason.as_deref(), Some("invalid_number"));
    assert_eq!(failed.error_code, Some(21211));
    assert_eq!(failed.attempts, 1);
    assert_eq!(sim_messages_for(&channel, "permanent-1").await, 0);

    // A 429 storm: eight conversations at once against 2 messages/s per sender. Every message
    // is sent, each once, after being slowed down.
    channel.sim_behaviour(json!({"rate_limit_per_sender": 2})).await;
    let mut ids = Vec::new();
    for i in 0..8 {
        let customer = customer_who_wrote(&channel).await;
        let id = format!("storm-{i}");
        reply(&channel, &id, &customer).await;
        ids.push(id);
    }
    for id in &ids {
        assert_eq!(channel.dispatch_outcome(id).await.outcome, "sent", "{id}");
        assert_eq!(sim_messages_for(&channel, id).await, 1, "{id}");
    }
    assert!(sim_stats(&channel).await["rate_limited"].as_u64().unwrap() >= 1, "the storm was throttled");
    channel.stop().await;
}

/// Twilio never takes the message (503 on every attempt): dispatch retries until the next wait
/// would pass its retry deadline (20 s here), then fails the request as `retries_exhausted`,
/// with Twilio's last error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_twilio_never_takes_fails_as_retries_exhausted_at_the_deadline() {
    let channel = Channel::start().await;
    channel.sim_behaviour(json!({"faults": {"messages": {"error_rate": 1.0, "error_status": 503}}})).await;
    let customer = customer_who_wrote(&channel).await;
    reply(&channel, "exhausted-1", &customer).await;
    let failed = channel.dispatch_outcome_within("exhausted-1", std::time::Duration::from_secs(60)).await;
    assert_eq!(failed.outcome, "failed", "{failed:?}");
    assert_eq!(failed.failure_reason.as_deref(), Some("retries_exhausted"));
    assert!(failed.attempts >= 2, "retried before giving up: {} attempts", failed.attempts);
    assert!(failed.error_message.is_some(), "Twilio's last error is kept: {failed:?}");
    assert_eq!(sim_messages_for(&channel, "exhausted-1").await, 0);
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redelivered_authorization_is_not_sent_twice() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let content_sid = channel.sim_approved_content().await;
    let authorized = |request_id: &str| OutboundAuthorized {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: wa_platform::now_millis(),
        conversation_id: conversation_id(BUSINESS, &customer),
        request_id: request_id.to_owned(),
        from: BUSINESS.to_owned(),
        to: customer.clone(),
        body: None,
        media_urls: vec![],
        window_expires_at: None,
        content_sid: Some(content_sid.clone()),
        content_variables: Some("{}".to_owned()),
        template_name: Some("order_update".to_owned()),
        template_language: Some("en".to_owned()),
        preview: Some("Your order ships today.".to_owned()),
        rule: Some("approved_template".to_owned()),
        pricing_category: None,
        pricing_type: None,
        metadata: Default::default(),
    };
    // The same authorization three times (a redelivery after a crash, a replay), then another
    // request of the same conversation: handled in order, so once it is out, the repeats were
    // handled.
    for _ in 0..3 {
        channel.publish(&OUTBOUND_AUTHORIZED, &authorized("once-1")).await;
    }
    channel.publish(&OUTBOUND_AUTHORIZED, &authorized("once-2")).await;
    assert_eq!(channel.dispatch_outcome("once-1").await.outcome, "sent");
    assert_eq!(channel.dispatch_outcome("once-2").await.outcome, "sent");
    assert_eq!(sim_messages_for(&channel, "once-1").await, 1, "sent once");
    let sent_events = channel
        .read_to_end(&OUTBOUND_DISPATCHED)
        .await
        .iter()
        .map(|r| r.decode::<OutboundDispatched>())
        .filter(|e| e.request_id == "once-1" && e.outcome == "sent")
        .count();
    assert_eq!(sent_events, 1);
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unanswered_send_is_in_doubt_until_its_status_callback_resolves_it() {
    let channel = Channel::start().await;
    // Twilio takes the message but the answer is lost, and its Messages list cannot be read
    // (so the lookup cannot settle it); its first callback comes 5 s later. Dispatch must not
    // send it again, publishes it in doubt, and resolves it when the callback names the request.
    channel
        .sim_behaviour(json!({
            "faults": {"messages": {"drop_rate": 1.0}, "messages_list": {"error_rate": 1.0, "error_status": 503}},
            "callback_delay_ms": 5000
        }))
        .await;
    let customer = customer_who_wrote(&channel).await;
    reply(&channel, "doubt-1", &customer).await;
    let in_doubt = channel.dispatch_outcome("doubt-1").await;
    assert_eq!(in_doubt.outcome, "in_doubt", "{in_doubt:?}");
    assert_eq!(in_doubt.failure_reason.as_deref(), Some("no_answer"));
    assert_eq!(in_doubt.message_sid, None);
    let resolved: OutboundDispatched = channel
        .await_record(&OUTBOUND_DISPATCHED, |r| {
            let event: OutboundDispatched = r.decode();
            event.request_id == "doubt-1" && event.outcome == "sent"
        })
        .await
        .decode();
    let messages: Vec<Value> = channel.sim_messages().await;
    let sid = messages
        .iter()
        .find(|m| {
            m["params"].as_array().unwrap().iter().any(|p| p[1].as_str().unwrap_or("").ends_with("request_id=doubt-1"))
        })
        .expect("the simulator took it")["sid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(resolved.message_sid.as_deref(), Some(sid.as_str()), "resolved with Twilio's sid from the callback");
    assert_eq!(sim_messages_for(&channel, "doubt-1").await, 1, "never sent twice");
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_sender_is_paced_at_its_rate_and_never_throttled() {
    let channel = Channel::start().await;
    // The simulator enforces the same limit as dispatch's (10/s per sender in tests).
    channel.sim_behaviour(json!({"rate_limit_per_sender": e2e_tests::DISPATCH_RATE_PER_SENDER as u32})).await;
    let mut ids = Vec::new();
    for i in 0..25 {
        let customer = customer_who_wrote(&channel).await;
        let id = format!("paced-{i}");
        reply(&channel, &id, &customer).await;
        ids.push(id);
    }
    for id in &ids {
        assert_eq!(channel.dispatch_outcome(id).await.outcome, "sent", "{id}");
    }
    assert_eq!(sim_stats(&channel).await["rate_limited"], 0, "dispatch never went over the limit");
    let mut times: Vec<chrono::DateTime<chrono::FixedOffset>> = channel
        .sim_messages()
        .await
        .iter()
        .map(|m| chrono::DateTime::parse_from_rfc3339(m["received_at"].as_str().unwrap()).unwrap())
        .collect();
    times.sort();
    let span = (times[times.len() - 1] - times[0]).to_std().unwrap();
    let floor = std::time::Duration::from_secs_f64((times.len() - 1) as f64 / e2e_tests::DISPATCH_RATE_PER_SENDER);
    assert!(span >= floor.mul_f64(0.95), "{} messages in {span:?}: faster than the rate allows", times.len());
    channel.stop().await;
}

/// Twilio creates a fifth of the messages and then answers 500. None is sent again: each is
/// looked up in Twilio's Messages list and published `sent` with the sid Twilio gave it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn messages_created_behind_a_server_error_are_found_and_never_sent_twice() {
    let channel = Channel::start().await;
    channel
        .sim_behaviour(json!({"faults": {"messages": {"error_after_create_rate": 0.2}}, "rate_limit_per_sender": 0}))
        .await;
    let mut ids = Vec::new();
    for i in 0..60 {
        let customer = customer_who_wrote(&channel).await;
        let id = format!("ambiguous-{i}");
        reply(&channel, &id, &customer).await;
        ids.push(id);
    }
    let outcomes: HashMap<String, OutboundDispatched> = channel
        .await_all::<OutboundDispatched>(&OUTBOUND_DISPATCHED, ids.len(), |e| {
            e.request_id.starts_with("ambiguous-") && matches!(e.outcome.as_str(), "sent" | "failed" | "in_doubt")
        })
        .await
        .into_iter()
        .map(|e| (e.request_id.clone(), e))
        .collect();
    for outcome in outcomes.values() {
        assert_eq!(outcome.outcome, "sent", "{outcome:?}");
    }
    let messages = channel.sim_messages().await;
    let mut per_request: HashMap<String, Vec<&Value>> = HashMap::new();
    for message in &messages {
        if let Some(id) = e2e_tests::sim_request_id(message) {
            per_request.entry(id).or_default().push(message);
        }
    }
    let mut affected = 0;
    for id in &ids {
        let sent = &per_request[id];
        assert_eq!(sent.len(), 1, "{id} reached Twilio {} times", sent.len());
        assert_eq!(outcomes[id].message_sid.as_deref(), sent[0]["sid"].as_str(), "{id}: the sid Twilio gave it");
        if sent[0]["answered"] == "error_after_create" {
            affected += 1;
            assert!(outcomes[id]
                .error_message
                .as_deref()
                .is_some_and(|m| m.contains("found in Twilio's Messages list")));
        }
    }
    assert!(affected > 0, "no send was answered with a 500 after its creation");
    println!("{affected} of {} sends were answered 500 after Twilio created them; each was found", ids.len());
    channel.stop().await;
}

/// Every error code of the table, reported by WhatsApp in a status callback, ends the
/// request's delivery with the code's reason; the customer's refusals (21610, 63014) opt them
/// out as a STOP would; a 63016 is counted as a disagreement with WhatsApp's window.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_reported_in_callbacks_carry_their_reasons_and_refusals_opt_out() {
    let channel = Channel::start().await;
    channel.sim_behaviour(json!({"rate_limit_per_sender": 0})).await;
    let mut cases = Vec::new();
    let mut undeliverable = serde_json::Map::new();
    for (i, row) in wa_twilio::errors::ERROR_CODES.iter().enumerate() {
        let customer = customer_who_wrote(&channel).await;
        undeliverable.insert(customer.clone(), json!(row.code));
        cases.push((format!("callback-{i}"), customer, row));
    }
    channel.sim_behaviour(json!({ "undeliverable": undeliverable })).await;
    for (id, customer, _) in &cases {
        reply(&channel, id, customer).await;
    }
    let undelivered: HashMap<String, OutboundDispatched> = channel
        .await_all::<OutboundDispatched>(&OUTBOUND_DISPATCHED, cases.len(), |e| {
            e.request_id.starts_with("callback-") && e.twilio_status.as_deref() == Some("undelivered")
        })
        .await
        .into_iter()
        .map(|e| (e.request_id.clone(), e))
        .collect();
    for (id, _, row) in &cases {
        let undelivered = &undelivered[id];
        assert_eq!(undelivered.outcome, "status_changed");
        assert_eq!(undelivered.error_code, Some(row.code), "{id}");
        assert_eq!(undelivered.failure_reason.as_deref(), Some(row.failure_reason), "{}", row.code);
    }
    for (_, customer, row) in cases.iter().filter(|(_, _, row)| row.class == wa_twilio::errors::ErrorClass::Consent) {
        let conversation = conversation_id(BUSINESS, customer);
        let reason = format!("twilio_error_{}", row.code);
        let opted_out: SessionEvent = channel
            .await_record(&SESSION_EVENTS, |r| {
                let event: SessionEvent = r.decode();
                event.conversation_id == conversation && event.kind == "opted_out"
            })
            .await
            .decode();
        assert_eq!(opted_out.reason.as_deref(), Some(reason.as_str()));
        let state: Value = channel
            .get(session_window::SERVICE, &format!("/v1/conversations/{conversation}/session"))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(state["opted_out"], true, "{}: {state}", row.code);
    }
    // No other code opts anyone out.
    let others: Vec<String> = cases
        .iter()
        .filter(|(_, _, row)| row.class != wa_twilio::errors::ErrorClass::Consent)
        .map(|(_, customer, _)| conversation_id(BUSINESS, customer))
        .collect();
    let wrongly_out: Vec<SessionEvent> = channel
        .read_to_end(&SESSION_EVENTS)
        .await
        .iter()
        .map(RawRecord::decode::<SessionEvent>)
        .filter(|e| e.kind == "opted_out" && others.contains(&e.conversation_id))
        .collect();
    assert!(wrongly_out.is_empty(), "{wrongly_out:?}");
    let metrics = channel.get(outbound_dispatch::SERVICE, "/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("wa_window_disagreements_total") && !l.ends_with(" 0")),
        "the 63016 was not counted:\n{metrics}"
    );
    channel.stop().await;
}

/// The CRM's metadata rides on every event its request causes, unchanged: the verdict, the
/// authorization or refusal, and each dispatch outcome, status changes from callbacks included.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crm_metadata_is_on_every_event_the_request_causes() {
    let channel = Channel::start().await;
    let metadata: std::collections::BTreeMap<String, String> =
        [("agent", "ana.souza"), ("case", "CS-1042"), ("tags", "vip,late-delivery")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    let customer = customer_who_wrote(&channel).await;
    let request = json!({"request_id": "meta-sent", "from": BUSINESS, "to": customer, "body": "on its way", "metadata": metadata});
    assert_eq!(channel.post_outbound(&request).await.status(), 202);
    let cold = json!({"request_id": "meta-refused", "from": BUSINESS, "to": unique_customer(), "body": "hello", "metadata": metadata});
    assert_eq!(channel.post_outbound(&cold).await.status(), 202);

    // A status callback after the send: its status change carries the metadata too.
    let delivered = channel
        .await_record(&OUTBOUND_DISPATCHED, |r| {
            let event: OutboundDispatched = r.decode();
            event.request_id == "meta-sent" && event.outcome == "status_changed"
        })
        .await
        .decode::<OutboundDispatched>();
    assert_eq!(delivered.metadata, metadata);
    let rejected: wa_schemas::OutboundRejected = channel
        .await_record(&wa_platform::topics::OUTBOUND_REJECTED, |r| {
            r.decode::<wa_schemas::OutboundRejected>().request_id == "meta-refused"
        })
        .await
        .decode();
    assert_eq!(rejected.metadata, metadata);

    let requested: Vec<wa_schemas::OutboundRequested> =
        channel.read_to_end(&wa_platform::topics::OUTBOUND_REQUESTED).await.iter().map(|r| r.decode()).collect();
    let checked: Vec<wa_schemas::OutboundWindowChecked> =
        channel.read_to_end(&wa_platform::topics::OUTBOUND_CHECKED).await.iter().map(|r| r.decode()).collect();
    let authorized: Vec<OutboundAuthorized> =
        channel.read_to_end(&OUTBOUND_AUTHORIZED).await.iter().map(|r| r.decode()).collect();
    let dispatched: Vec<OutboundDispatched> =
        channel.read_to_end(&OUTBOUND_DISPATCHED).await.iter().map(|r| r.decode()).collect();
    let mut carried = Vec::new();
    carried.extend(requested.iter().map(|e| (format!("requested {}", e.request_id), &e.metadata)));
    carried.extend(checked.iter().map(|e| (format!("checked {}", e.request_id), &e.metadata)));
    carried.extend(authorized.iter().map(|e| (format!("authorized {}", e.request_id), &e.metadata)));
    carried.extend(dispatched.iter().map(|e| (format!("dispatched {} {}", e.request_id, e.outcome), &e.metadata)));
    let kinds: Vec<&str> = carried.iter().map(|(what, _)| what.split(' ').next().unwrap()).collect();
    for kind in ["requested", "checked", "authorized", "dispatched"] {
        assert!(kinds.contains(&kind), "no {kind} event in {kinds:?}");
    }
    for (what, carried) in &carried {
        assert_eq!(*carried, &metadata, "{what}");
    }
    assert!(dispatched.iter().any(|e| e.outcome == "sent"), "{dispatched:?}");
    channel.stop().await;
}

/// Media WhatsApp would refuse fails before the send, with `media_invalid` and why: a type it
/// does not take, an image over 5 MB, a video over 16 MB told only by a ranged GET (the server
/// refuses HEAD), a URL that answers 404. Media it takes goes out with its URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_is_checked_before_the_send() {
    let channel = Channel::start().await;
    let media = |query: &str| format!("{}/sim/media/file?{query}", channel.service_urls[twilio_sim::SERVICE]);
    let customer = customer_who_wrote(&channel).await;
    let cases = [
        ("media-ok", media("type=image/png&size=204800"), None),
        ("media-gif", media("type=image/gif&size=1024"), Some("\"image/gif\"")),
        ("media-big-image", media("type=image/jpeg&size=5242881"), Some("at most 5242880 bytes")),
        ("media-big-video", media("type=video/mp4&size=16777217&head=405"), Some("at most 16777216 bytes")),
        ("media-missing", media("status=404"), Some("404")),
    ];
    for (request_id, url, _) in &cases {
        let request = json!({"request_id": request_id, "from": BUSINESS, "to": customer, "media_urls": [url]});
        assert_eq!(channel.post_outbound(&request).await.status(), 202);
    }
    for (request_id, url, refused) in &cases {
        let outcome = channel.dispatch_outcome(request_id).await;
        match refused {
            None => {
                assert_eq!(outcome.outcome, "sent", "{request_id}: {outcome:?}");
                let sent = channel.sim_messages().await;
                let carried = sent.iter().any(|m| {
                    m["params"].as_array().is_some_and(|p| p.iter().any(|p| p[0] == "MediaUrl" && p[1] == url.as_str()))
                });
                assert!(carried, "{request_id}: no message with MediaUrl {url}");
            }
            Some(detail) => {
                assert_eq!(
                    (outcome.outcome.as_str(), outcome.failure_reason.as_deref()),
                    ("failed", Some("media_invalid")),
                    "{request_id}: {outcome:?}"
                );
                let message = outcome.error_message.unwrap_or_default();
                assert!(message.contains(detail), "{request_id}: {message}");
                assert_eq!(sim_messages_for(&channel, request_id).await, 0, "{request_id} reached Twilio");
            }
        }
    }
    channel.stop().await;
}

/// Production setups send through a Messaging Service and authenticate with an API key instead
/// of the auth token: dispatch sends `MessagingServiceSid` beside `From`, and Twilio takes the
/// key (the process's auth token is wrong, so only the key can have been accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dispatch_sends_through_a_messaging_service_with_an_api_key() {
    let channel = Channel::start_without_dispatch().await;
    let (key, secret) = ("SK0123456789abcdef0123456789abcdef", "an-api-key-secret");
    let service = "MG0123456789abcdef0123456789abcdef";
    channel.sim_behaviour(json!({"api_keys": {key: secret}})).await;
    let _dispatch = channel.dispatch_process(&[
        ("TWILIO_AUTH_TOKEN", "not-this-accounts-token".to_owned()),
        ("TWILIO_API_KEY_SID", key.to_owned()),
        ("TWILIO_API_KEY_SECRET", secret.to_owned()),
        ("TWILIO_MESSAGING_SERVICE_SID", service.to_owned()),
    ]);
    let customer = customer_who_wrote(&channel).await;
    reply(&channel, "service-1", &customer).await;
    let sent = channel.dispatch_outcome("service-1").await;
    assert_eq!(sent.outcome, "sent", "{sent:?}");
    let messages = channel.sim_messages().await;
    let message = messages
        .iter()
        .find(|m| m["sid"].as_str() == sent.message_sid.as_deref())
        .expect("the simulator has the message");
    let param =
        |name: &str| message["params"].as_array().unwrap().iter().find(|p| p[0] == name).and_then(|p| p[1].as_str());
    assert_eq!(param("MessagingServiceSid"), Some(service));
    assert_eq!(param("From"), Some(BUSINESS));
    channel.stop().await;
}
