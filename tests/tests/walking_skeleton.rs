//! The walking skeleton, end to end against the real broker: Twilio webhook in, agent reply
//! out, refusals, retries, dead letters and traces.

use e2e_tests::{unique_customer, Channel, BUSINESS};
use wa_platform::topics::{
    DEAD_LETTER, INBOUND, OUTBOUND_AUTHORIZED, OUTBOUND_CHECKED, OUTBOUND_DISPATCHED, OUTBOUND_REJECTED,
    OUTBOUND_REQUESTED, SESSIONS,
};
use wa_schemas::{
    conversation_id, InboundMessageReceived, OutboundDispatched, OutboundRejected, OutboundRequested,
    OutboundWindowChecked,
};

fn unique_sid() -> String {
    format!("SM{}", uuid::Uuid::new_v4().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn signed_webhook_is_published_once_even_when_twilio_retries() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let sid = unique_sid();
    let params = channel.inbound_params(&sid, &customer, "Olá! Where is my order? 📦");

    let first = channel.post_inbound(&params, None).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["content-type"], "text/xml");
    assert!(first.text().await.unwrap().contains("<Response/>"));

    // Twilio retries: once after the first answer, and twice at the same time.
    let (a, b, c) = tokio::join!(
        channel.post_inbound(&params, None),
        channel.post_inbound(&params, None),
        channel.post_inbound(&params, None)
    );
    assert_eq!([a.status(), b.status(), c.status()].map(|s| s.as_u16()), [200, 200, 200]);

    // Every answer came after the broker's acknowledgement, so the topic's end includes them all.
    let records = channel.read_to_end(&INBOUND).await;
    let published: Vec<_> =
        records.iter().filter(|r| r.decode::<InboundMessageReceived>().message_sid == sid).collect();
    assert_eq!(published.len(), 1, "one event for one MessageSid");
    let record = published[0];
    let event: InboundMessageReceived = record.decode();
    assert_eq!(event.from, customer);
    assert_eq!(event.to, BUSINESS);
    assert_eq!(event.body, "Olá! Where is my order? 📦");
    assert_eq!(event.profile_name.as_deref(), Some("Test Customer"));
    assert_eq!(event.other_params.get("SmsStatus").map(String::as_str), Some("received"));
    let conversation = conversation_id(BUSINESS, &customer);
    assert_eq!(event.conversation_id, conversation);
    assert_eq!(record.key.as_deref(), Some(conversation.as_bytes()));
    assert_eq!(record.headers["ce_type"], "wachannel.inbound.message.received.v1");
    assert_eq!(record.headers["ce_id"], event.event_id);
    assert_eq!(record.headers["ce_subject"], conversation);
    assert_eq!(record.headers["content-type"], "application/avro");
    assert_eq!(record.headers["ce_specversion"], "1.0");
    assert_eq!(record.headers["ce_source"], "wachannel/ingress");
    let time = chrono::DateTime::parse_from_rfc3339(&record.headers["ce_time"]).expect("ce_time is RFC 3339");
    assert_eq!(time.timestamp_millis(), event.occurred_at, "ce_time is the event's time");
    // W3C trace context: version 00, a trace id, a parent span id, flags.
    let traceparent: Vec<&str> = record.headers["traceparent"].split('-').collect();
    assert_eq!(traceparent.len(), 4, "{traceparent:?}");
    assert_eq!((traceparent[0], traceparent[2].len(), traceparent[3].len()), ("00", 16, 2));
    assert!(record.trace_id().is_some_and(|id| id.len() == 32 && id != "0".repeat(32)), "{:?}", record.headers);
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_or_missing_signature_is_refused_and_nothing_is_published() {
    let channel = Channel::start().await;
    let sid = unique_sid();
    let params = channel.inbound_params(&sid, &unique_customer(), "hello");
    let url = format!("{}/twilio/inbound", channel.ingress_url);
    let wrong_token = wa_twilio::signature::compute("not-the-token", &url, &params);

    let wrong = channel.post_inbound(&params, Some(&wrong_token)).await;
    assert_eq!(wrong.status(), 403);
    let problem: serde_json::Value = wrong.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("does not match"), "{problem}");

    let mut tampered = params.clone();
    let good = wa_twilio::signature::compute(e2e_tests::AUTH_TOKEN, &url, &params);
    tampered.iter_mut().find(|(k, _)| k == "Body").unwrap().1 = "hello, changed".to_owned();
    assert_eq!(channel.post_inbound(&tampered, Some(&good)).await.status(), 403);

    let unsigned = reqwest::Client::new().post(&url).form(&params).send().await.unwrap();
    assert_eq!(unsigned.status(), 403);

    // A correctly signed message afterwards is the only one on the topic.
    let control = unique_sid();
    let control_params = channel.inbound_params(&control, &unique_customer(), "control");
    assert_eq!(channel.post_inbound(&control_params, None).await.status(), 200);
    let sids: Vec<String> =
        channel.read_to_end(&INBOUND).await.iter().map(|r| r.decode::<InboundMessageReceived>().message_sid).collect();
    assert_eq!(sids, vec![control]);

    let metrics = channel.get(ingress::SERVICE, "/metrics").await.text().await.unwrap();
    let invalid = r#"wa_ingress_rejected_total{endpoint="inbound",reason="signature_invalid"} 2"#;
    let missing = r#"wa_ingress_rejected_total{endpoint="inbound",reason="signature_missing"} 1"#;
    assert!(metrics.contains(invalid) && metrics.contains(missing), "{metrics}");
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reply_inside_the_window_reaches_twilio_with_one_trace() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let inbound = channel.inbound_params(&unique_sid(), &customer, "Hi, can you help?");
    assert_eq!(channel.post_inbound(&inbound, None).await.status(), 200);

    let accepted = channel
        .post_outbound(&serde_json::json!({
            "request_id": "reply-1", "from": BUSINESS, "to": customer, "body": "Of course! Your parcel ships today."
        }))
        .await;
    assert_eq!(accepted.status(), 202);
    let accepted: serde_json::Value = accepted.json().await.unwrap();
    assert_eq!(accepted["request_id"], "reply-1");
    assert_eq!(accepted["conversation_id"], conversation_id(BUSINESS, &customer));

    let checked = channel
        .await_record(&OUTBOUND_CHECKED, |r| r.decode::<OutboundWindowChecked>().request_id == "reply-1")
        .await
        .decode::<OutboundWindowChecked>();
    assert!(checked.allowed);
    let expires = checked.window_expires_at.expect("the window has an end");
    let hours_left = (expires - wa_platform::now_millis()) as f64 / 3_600_000.0;
    assert!((23.9..=24.0).contains(&hours_left), "window ends in {hours_left} h");

    let dispatched_record = channel
        .await_record(&OUTBOUND_DISPATCHED, |r| {
            let event: OutboundDispatched = r.decode();
            event.request_id == "reply-1" && event.outcome == "sent"
        })
        .await;
    let dispatched: OutboundDispatched = dispatched_record.decode();
    assert_eq!(dispatched.outcome, "sent", "{dispatched:?}");
    assert_eq!(dispatched.attempts, 1);
    let sid = dispatched.message_sid.clone().expect("twilio sid");
    assert!(sid.starts_with("SM") && sid.len() == 34, "{sid}");

    let sent = channel.sim_messages().await;
    let message = sent.iter().find(|m| m["sid"] == sid).expect("the simulator received the send");
    let param = |name: &str| {
        message["params"].as_array().unwrap().iter().find(|p| p[0] == name).map(|p| p[1].as_str().unwrap().to_owned())
    };
    assert_eq!(param("To").as_deref(), Some(customer.as_str()));
    assert_eq!(param("From").as_deref(), Some(BUSINESS));
    assert_eq!(param("Body").as_deref(), Some("Of course! Your parcel ships today."));
    assert!(param("StatusCallback").unwrap().ends_with("/twilio/status?request_id=reply-1"));
    assert_eq!(sent.iter().filter(|m| m["sid"] == sid).count(), 1);

    // One trace from the CRM's request to the dispatch outcome, across three services.
    let requested =
        channel.await_record(&OUTBOUND_REQUESTED, |r| r.decode::<OutboundRequested>().request_id == "reply-1").await;
    assert!(requested.trace_id().is_some());
    assert_eq!(dispatched_record.trace_id(), requested.trace_id());
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn free_form_to_a_customer_who_never_wrote_is_refused_and_never_sent() {
    let channel = Channel::start().await;
    let stranger = unique_customer();
    let response = channel
        .post_outbound(
            &serde_json::json!({"request_id": "cold-1", "from": BUSINESS, "to": stranger, "body": "Buy now!"}),
        )
        .await;
    assert_eq!(response.status(), 202);

    let rejected: OutboundRejected = channel
        .await_record(&OUTBOUND_REJECTED, |r| r.decode::<OutboundRejected>().request_id == "cold-1")
        .await
        .decode();
    assert_eq!(rejected.reason, "no_window");
    assert_eq!(rejected.to, stranger);
    assert_eq!(rejected.rejected_by, "template-approval");
    assert!(rejected.message.contains("template"), "{}", rejected.message);

    // template-approval publishes exactly one decision per request: a rejection means no
    // authorization, so nothing can reach dispatch or the simulator.
    let authorized = channel.read_to_end(&OUTBOUND_AUTHORIZED).await;
    assert!(authorized.is_empty(), "{} authorizations", authorized.len());
    let sent = channel.sim_messages().await;
    assert!(sent.iter().all(|m| !m["params"].to_string().contains(&stranger)), "{sent:?}");
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_poison_record_is_dead_lettered_and_the_consumer_keeps_going() {
    let channel = Channel::start().await;
    channel.produce_raw(&OUTBOUND_REQUESTED, "some-key", b"{\"not\": \"avro\"}").await;
    let response = channel
        .post_outbound(
            &serde_json::json!({"request_id": "after-poison", "from": BUSINESS, "to": unique_customer(), "body": "x"}),
        )
        .await;
    assert_eq!(response.status(), 202);

    let dead = channel.await_record(&DEAD_LETTER, |_| true).await;
    assert_eq!(dead.payload, b"{\"not\": \"avro\"}");
    assert_eq!(dead.key.as_deref(), Some(&b"some-key"[..]));
    assert!(dead.headers["dlq.reason"].contains("not an avro single-object"), "{:?}", dead.headers);
    assert_eq!(dead.headers["dlq.topic"], channel.topic(&OUTBOUND_REQUESTED));
    assert_eq!(dead.headers["dlq.service"], "session-window");
    chrono::DateTime::parse_from_rfc3339(&dead.headers["dlq.failed_at"]).expect("dlq.failed_at is RFC 3339");
    // dlq.partition and dlq.offset name the original record.
    let original = channel
        .read_to_end(&OUTBOUND_REQUESTED)
        .await
        .into_iter()
        .find(|r| {
            r.partition.to_string() == dead.headers["dlq.partition"]
                && r.offset.to_string() == dead.headers["dlq.offset"]
        })
        .expect("the dead letter names a record of the original topic");
    assert_eq!(original.payload, dead.payload);

    let verdict: OutboundWindowChecked = channel
        .await_record(&OUTBOUND_CHECKED, |r| r.decode::<OutboundWindowChecked>().request_id == "after-poison")
        .await
        .decode();
    assert_eq!(verdict.refusal_reason.as_deref(), Some("no_window"));
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_component_reports_health_readiness_and_metrics() {
    let channel = Channel::start().await;
    for service in [
        ingress::SERVICE,
        session_window::SERVICE,
        template_approval::SERVICE,
        outbound_dispatch::SERVICE,
        twilio_sim::SERVICE,
    ] {
        assert_eq!(channel.get(service, "/healthz").await.status(), 200, "{service}");
        assert_eq!(channel.get(service, "/readyz").await.status(), 200, "{service}");
        let metrics = channel.get(service, "/metrics").await;
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.unwrap();
        assert!(text.contains("http_requests_total"), "{service}: {text}");
        // Latencies are histograms with buckets, which dashboards can add up across instances.
        assert!(text.contains("http_request_duration_seconds_bucket{"), "{service}: {text}");
    }
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_crm_requests_get_problems_naming_the_field() {
    let channel = Channel::start().await;
    let missing_to = channel.post_outbound(&serde_json::json!({"from": BUSINESS, "body": "x"})).await;
    assert_eq!(missing_to.status(), 400);
    assert_eq!(missing_to.headers()["content-type"], "application/problem+json");
    let problem: serde_json::Value = missing_to.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap().contains("missing field `to`"), "{problem}");

    let empty = channel.post_outbound(&serde_json::json!({"from": BUSINESS, "to": unique_customer()})).await;
    assert_eq!(empty.status(), 422);
    let problem: serde_json::Value = empty.json().await.unwrap();
    assert_eq!(problem["field"], "body");

    let wrong_type = reqwest::Client::new()
        .post(format!("{}/v1/outbound", channel.ingress_url))
        .bearer_auth(e2e_tests::API_TOKEN)
        .body("from=x")
        .header("content-type", "application/x-www-form-urlencoded")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), 415);
    assert!(channel.read_to_end(&OUTBOUND_REQUESTED).await.is_empty());
    channel.stop().await;
}

/// Each consumer group's lag is exported per topic and partition (`wa_consumer_lag`, from
/// librdkafka's statistics): once session-window has handled a customer's message and committed,
/// its group's lag on `wa.inbound.v1` reads 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumer_lag_is_exported_per_group_topic_and_partition() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let (_, status) = channel.sim_inbound(&customer, "Is my order on its way?").await;
    assert_eq!(status, 200);
    let conversation = wa_schemas::conversation_id(BUSINESS, &customer);
    channel.await_record(&SESSIONS, |r| r.key.as_deref() == Some(conversation.as_bytes())).await;
    let group = format!("group=\"{}\"", channel.kafka.group("session-window"));
    let topic = format!("topic=\"{}\"", channel.topic(&INBOUND));
    let deadline = tokio::time::Instant::now() + e2e_tests::EVENT_TIMEOUT;
    loop {
        let text = channel.get(session_window::SERVICE, "/metrics").await.text().await.unwrap();
        let lags: Vec<&str> = text
            .lines()
            .filter(|line| line.starts_with("wa_consumer_lag{") && line.contains(&group) && line.contains(&topic))
            .collect();
        // Every partition this member holds reports; caught up, each reads 0.
        if !lags.is_empty() && lags.iter().all(|line| line.ends_with(" 0")) {
            assert!(lags.iter().all(|line| line.contains("partition=\"")), "{lags:?}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no caught-up lag for {group} {topic}: {lags:?}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    channel.stop().await;
}
