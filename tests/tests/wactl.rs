//! `wactl`, the operator CLI, against the real broker: a request's story, the sends in doubt and
//! their settling, a conversation's state, and the consumer groups' lag. Runs the binary
//! `cargo xtask test` builds.

use std::process::Output;

use e2e_tests::{refused_send, unique_customer, Channel, API_TOKEN, BUSINESS};
use serde_json::Value;
use wa_platform::topics::OUTBOUND_DISPATCHED;
use wa_schemas::DispatchOutcome;

/// Runs `wactl` with `args` on the channel's broker and topics.
fn wactl(channel: &Channel, args: &[&str]) -> Output {
    wactl_with(channel, args, &[])
}

/// [`wactl`] with more environment variables.
fn wactl_with(channel: &Channel, args: &[&str], env: &[(&str, &str)]) -> Output {
    let exe = std::env::current_exe().expect("test binary");
    let path = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join("wactl");
    assert!(path.exists(), "{} is missing: run the tests with `cargo xtask test`, which builds it", path.display());
    std::process::Command::new(path)
        .args(args)
        .env("KAFKA_BOOTSTRAP_SERVERS", &channel.kafka.bootstrap_servers)
        .env("WA_TOPIC_PREFIX", &channel.kafka.topic_prefix)
        .envs(env.iter().copied())
        .output()
        .expect("wactl runs")
}

fn json(output: &Output) -> Value {
    assert!(output.status.success(), "wactl failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("wactl --json prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wactl_tells_a_requests_story_lists_sends_in_doubt_and_shows_lag() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let (_, status) = channel.sim_inbound(&customer, "Where is my order?").await;
    assert_eq!(status, 200);
    let request_id = format!("wactl-{}", uuid::Uuid::new_v4().simple());
    let text = "Your order 4411 ships today.";
    let response = channel
        .http()
        .post(format!("{}/v1/outbound", channel.ingress_url))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({"request_id": request_id, "from": BUSINESS, "to": customer, "body": text}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let sent = channel.dispatch_outcome(&request_id).await;
    assert_eq!(sent.outcome, "sent");

    // The story: every step in order, one trace, no message text or phone number.
    let human = wactl(&channel, &["request", &request_id]);
    assert!(human.status.success(), "{}", String::from_utf8_lossy(&human.stderr));
    let printed = String::from_utf8_lossy(&human.stdout);
    for expected in [
        "requested",
        "window: allowed",
        "authorized: free-form rule=session_reply pricing=service pricing_type=free_customer_service",
        "sending",
        "sent status=",
    ] {
        assert!(printed.contains(expected), "{expected:?} missing from:\n{printed}");
    }
    assert!(!printed.contains(text) && !printed.contains(customer.trim_start_matches("whatsapp:")), "{printed}");
    let story = json(&wactl(&channel, &["--json", "request", &request_id]));
    let steps = story["steps"].as_array().unwrap();
    let topics: Vec<&str> = steps.iter().map(|s| s["topic"].as_str().unwrap()).collect();
    let first = |topic| topics.iter().position(|t| *t == topic).unwrap_or_else(|| panic!("no {topic}: {topics:?}"));
    assert!(first("requested") < first("checked") && first("checked") < first("authorized"), "{topics:?}");
    assert!(first("authorized") < first("dispatched"), "{topics:?}");
    // Status callbacks and the moves they cause are in traces Twilio started.
    let traces: std::collections::BTreeSet<&str> = steps
        .iter()
        .filter(|s| s["topic"] != "delivery" && !s["what"].as_str().unwrap().starts_with("status_changed"))
        .filter_map(|s| s["trace_id"].as_str())
        .collect();
    assert_eq!(traces.len(), 1, "one trace from request to send: {story:#}");

    let unknown = wactl(&channel, &["request", "no-such-request"]);
    assert_eq!(unknown.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no request"), "a clear error");

    // In doubt: a send whose last outcome is in_doubt is listed; one resolved later is not.
    let mut doubtful = refused_send(&customer, wa_platform::now_millis(), 0);
    doubtful.outcome = DispatchOutcome::InDoubt.as_str().to_owned();
    doubtful.failure_reason = Some("no_answer".to_owned());
    let mut resolved = refused_send(&customer, wa_platform::now_millis(), 0);
    resolved.outcome = DispatchOutcome::InDoubt.as_str().to_owned();
    let mut resolved_sent = resolved.clone();
    resolved_sent.event_id = uuid::Uuid::new_v4().to_string();
    resolved_sent.outcome = DispatchOutcome::Sent.as_str().to_owned();
    channel.publish_all(&OUTBOUND_DISPATCHED, &[doubtful.clone(), resolved.clone(), resolved_sent]).await;
    let listed = json(&wactl(&channel, &["--json", "in-doubt", "list"]));
    let ids: Vec<&str> =
        listed["in_doubt"].as_array().unwrap().iter().map(|e| e["request_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&doubtful.request_id.as_str()), "{ids:?}");
    assert!(!ids.contains(&resolved.request_id.as_str()), "resolved later, still listed: {ids:?}");
    assert!(!ids.contains(&request_id.as_str()));

    // Settling: not sent (the CRM may send again), or sent with the sid found at Twilio.
    let settled = wactl(&channel, &["in-doubt", "resolve", &doubtful.request_id, "--not-sent"]);
    assert!(settled.status.success(), "{}", String::from_utf8_lossy(&settled.stderr));
    let failed = channel
        .await_record(&OUTBOUND_DISPATCHED, |r| {
            let event: wa_schemas::OutboundDispatched = r.decode();
            event.request_id == doubtful.request_id && event.kind() == Some(DispatchOutcome::Failed)
        })
        .await
        .decode::<wa_schemas::OutboundDispatched>();
    assert_eq!(failed.failure_reason.as_deref(), Some("not_sent"));
    let listed = json(&wactl(&channel, &["--json", "in-doubt", "list"]));
    assert!(!listed.to_string().contains(&doubtful.request_id), "settled, still listed: {listed}");
    let again =
        wactl(&channel, &["in-doubt", "resolve", &doubtful.request_id, "--sent", &format!("SM{}", "a".repeat(32))]);
    assert_eq!(again.status.code(), Some(2), "a settled request is not settled again");
    assert!(String::from_utf8_lossy(&again.stderr).contains("not in doubt"));
    let mut other = refused_send(&customer, wa_platform::now_millis(), 0);
    other.outcome = DispatchOutcome::InDoubt.as_str().to_owned();
    channel.publish(&OUTBOUND_DISPATCHED, &other).await;
    let bad_sid = wactl(&channel, &["in-doubt", "resolve", &other.request_id, "--sent", "SM123"]);
    assert_eq!(bad_sid.status.code(), Some(2));
    let sid = format!("SM{}", "0123456789abcdef".repeat(2));
    let found = wactl(&channel, &["in-doubt", "resolve", &other.request_id, "--sent", &sid]);
    assert!(found.status.success(), "{}", String::from_utf8_lossy(&found.stderr));
    let sent_by_operator = channel
        .await_record(&OUTBOUND_DISPATCHED, |r| {
            let event: wa_schemas::OutboundDispatched = r.decode();
            event.request_id == other.request_id && event.kind() == Some(DispatchOutcome::Sent)
        })
        .await
        .decode::<wa_schemas::OutboundDispatched>();
    assert_eq!(sent_by_operator.message_sid.as_deref(), Some(sid.as_str()));
    assert_eq!(sent_by_operator.twilio_status.as_deref(), Some("resolved_by_operator"));

    // The conversation, by the customer's address or its id: window open, what happened.
    let by_customer = wactl(&channel, &["conversation", &customer]);
    assert!(by_customer.status.success(), "{}", String::from_utf8_lossy(&by_customer.stderr));
    let printed = String::from_utf8_lossy(&by_customer.stdout);
    assert!(printed.contains("24-hour window         open"), "{printed}");
    assert!(printed.contains("window_opened"), "{printed}");
    assert!(!printed.contains(customer.trim_start_matches("whatsapp:")), "a phone number printed: {printed}");
    let conversation = wa_schemas::conversation_id(BUSINESS, &customer);
    let by_id = json(&wactl(&channel, &["--json", "conversation", &conversation]));
    let first = &by_id["conversations"][0];
    assert_eq!(
        (&first["conversation_id"], &first["known"], &first["window_open"]),
        (&Value::from(conversation.as_str()), &Value::from(true), &Value::from(true))
    );
    let stranger = wactl(&channel, &["conversation", &unique_customer()]);
    assert_eq!(stranger.status.code(), Some(2));

    // Lag: every group and partition is reported; dispatch has read all it was given.
    let lag = json(&wactl(&channel, &["--json", "lag"]));
    let rows = lag["lag"].as_array().unwrap();
    let authorized = channel.topic(&wa_platform::topics::OUTBOUND_AUTHORIZED);
    let dispatch: Vec<&Value> =
        rows.iter().filter(|r| r["group"] == "outbound-dispatch" && r["topic"] == authorized).collect();
    assert_eq!(dispatch.len(), wa_platform::topics::OUTBOUND_AUTHORIZED.partitions as usize);
    assert!(dispatch.iter().any(|r| r["end"].as_i64() > Some(0)), "{dispatch:?}");
    for group in ["session-window", "template-approval", "outbound-dispatch", "ingress-media"] {
        assert!(rows.iter().any(|r| r["group"] == group), "{group} missing from {lag}");
    }
    channel.stop().await;
}

/// Dead letters: listed with their reason, shown without their value's text, replayed to the
/// original topic once (a second replay of the same one is refused).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wactl_lists_shows_and_replays_dead_letters_once() {
    let channel = Channel::start().await;
    channel.produce_raw(&wa_platform::topics::OUTBOUND_REQUESTED, "poison-key", b"{\"not\": \"avro\"}").await;
    channel.await_record(&wa_platform::topics::DEAD_LETTER, |_| true).await;

    let listed = json(&wactl(&channel, &["--json", "dlq", "list"]));
    let letters = listed["dead_letters"].as_array().unwrap();
    assert_eq!(letters.len(), 1, "{listed}");
    let letter = &letters[0];
    assert_eq!(letter["service"], "session-window");
    assert_eq!(letter["topic"].as_str(), Some(channel.topic(&wa_platform::topics::OUTBOUND_REQUESTED).as_str()));
    assert!(letter["reason"].as_str().unwrap().contains("not an avro single-object"), "{letter}");
    let offset = letter["offset"].as_i64().unwrap().to_string();

    let shown = json(&wactl(&channel, &["--json", "dlq", "show", &offset]));
    assert_eq!(shown["key"], "poison-key");
    assert_eq!(shown["value_bytes"], 15);
    assert!(shown["headers"]["dlq.reason"].is_string(), "{shown}");

    let replayed = wactl(&channel, &["dlq", "replay", &offset]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    let copy = channel
        .await_record(&wa_platform::topics::OUTBOUND_REQUESTED, |r| r.headers.get("wactl.replay_of") == Some(&offset))
        .await;
    assert_eq!((copy.key.as_deref(), copy.payload.as_slice()), (Some(&b"poison-key"[..]), &b"{\"not\": \"avro\"}"[..]));
    assert!(!copy.headers.keys().any(|name| name.starts_with("dlq.")), "{:?}", copy.headers);
    let again = wactl(&channel, &["dlq", "replay", &offset]);
    assert_eq!(again.status.code(), Some(2), "replayed twice");
    assert!(String::from_utf8_lossy(&again.stderr).contains("already replayed"));
    let missing = wactl(&channel, &["dlq", "show", "999999"]);
    assert_eq!(missing.status.code(), Some(2));
    channel.stop().await;
}

/// A webhook quarantined because ingress checked it against the wrong public URL is replayed
/// once the right URL is known: verified again, published with its original receive time,
/// never twice; a replay against a URL that still does not match is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wactl_replays_a_webhook_quarantined_after_a_wrong_public_url_once() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    let params = channel.inbound_params(&sid, &customer, "Hello, is anyone there?");
    // Twilio signed for the public URL; ingress here checks against its own address.
    let public = "https://wa.example.com";
    let signature = wa_twilio::signature::compute(e2e_tests::AUTH_TOKEN, &format!("{public}/twilio/inbound"), &params);
    let refused = channel.post_inbound(&params, Some(&signature)).await;
    assert_eq!(refused.status(), 403);
    channel.await_record(&wa_platform::topics::QUARANTINE, |_| true).await;

    let listed = json(&wactl(&channel, &["--json", "quarantine", "list"]));
    let kept = &listed["quarantined"][0];
    assert_eq!(kept["reason"], "signature_invalid", "{listed}");
    let offset = kept["offset"].as_i64().unwrap().to_string();
    let shown = String::from_utf8_lossy(&wactl(&channel, &["quarantine", "show", &offset]).stdout).into_owned();
    assert!(shown.contains("signature_invalid") && !shown.contains("anyone there"), "{shown}");

    let replay = |url: &str| {
        wactl_with(
            &channel,
            &["quarantine", "replay", &offset, "--url", url],
            &[("TWILIO_AUTH_TOKEN", e2e_tests::AUTH_TOKEN)],
        )
    };
    let wrong = replay("https://elsewhere.example.com");
    assert_eq!(wrong.status.code(), Some(2), "{}", String::from_utf8_lossy(&wrong.stdout));
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("does not match"));

    let replayed = replay(public);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    let published: wa_schemas::InboundMessageReceived = channel
        .await_record(&wa_platform::topics::INBOUND, |r| {
            r.decode::<wa_schemas::InboundMessageReceived>().message_sid == sid
        })
        .await
        .decode();
    assert_eq!(published.occurred_at, kept_received_at(&channel, &offset), "the original receive time");
    assert_eq!(published.conversation_id, wa_schemas::conversation_id(BUSINESS, &customer));

    let again = replay(public);
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stdout).contains("already"), "{}", String::from_utf8_lossy(&again.stdout));
    let copies = channel
        .read_to_end(&wa_platform::topics::INBOUND)
        .await
        .iter()
        .filter(|r| r.decode::<wa_schemas::InboundMessageReceived>().message_sid == sid)
        .count();
    assert_eq!(copies, 1, "replayed twice");
    channel.stop().await;
}

/// When ingress received the quarantined request at `offset`.
fn kept_received_at(channel: &Channel, offset: &str) -> i64 {
    let shown = json(&wactl(channel, &["--json", "quarantine", "show", offset]));
    chrono::DateTime::parse_from_rfc3339(shown["received_at"].as_str().unwrap()).unwrap().timestamp_millis()
}
