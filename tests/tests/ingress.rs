//! Ingress end to end against the real broker: every WhatsApp field into the event, signatures
//! from form and JSON bodies and behind a proxy, dedupe across a restart, status callbacks as
//! received, the CRM's idempotency key, and the bad-input table case by case.

use std::collections::HashMap;

use e2e_tests::{unique_customer, Channel, ACCOUNT_SID, API_TOKEN, AUTH_TOKEN, BUSINESS};
use reqwest::StatusCode;
use serde_json::{json, Value};
use wa_platform::topics::{DEAD_LETTER, DELIVERY, INBOUND, INBOUND_MEDIA, OUTBOUND_REQUESTED, QUARANTINE};
use wa_platform::CancellationToken;
use wa_schemas::{DeliveryStatusReceived, InboundMessageReceived, Location, Media, QuarantinedRequest, Referral};
use wa_twilio::signature;

fn unique_sid() -> String {
    format!("SM{}", uuid::Uuid::new_v4().simple())
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// Posts a form to `url`, signed for `signed_url` with `token` (`None`: no signature header).
async fn post_form(
    url: &str,
    signed_url: &str,
    token: Option<&str>,
    params: &[(String, String)],
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new().post(url).form(params);
    if let Some(token) = token {
        request = request.header(signature::HEADER, signature::compute(token, signed_url, params));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("ingress answers")
}

/// Every inbound event on the topic for `sid`.
async fn published(channel: &Channel, sid: &str) -> Vec<InboundMessageReceived> {
    channel
        .read_to_end(&INBOUND)
        .await
        .iter()
        .map(|r| r.decode::<InboundMessageReceived>())
        .filter(|event| event.message_sid == sid)
        .collect()
}

async fn problem(response: reqwest::Response) -> Value {
    assert_eq!(response.headers()["content-type"], "application/problem+json");
    response.json().await.expect("problem json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_whatsapp_parameter_survives_into_the_event() {
    let channel = Channel::start().await;
    let sid = unique_sid();
    let customer = unique_customer();
    // Shaped like a real Twilio WhatsApp webhook: a button reply with a location, media, an ad
    // referral and a quoted message, plus parameters Twilio may add later.
    let params = pairs(&[
        ("SmsMessageSid", &sid),
        ("NumMedia", "2"),
        ("ProfileName", "Ana Souza"),
        ("MessageType", "button"),
        ("SmsSid", &sid),
        ("WaId", "5511987654321"),
        ("SmsStatus", "received"),
        ("Body", "Olá 👋 sim, quero!"),
        ("ButtonText", "Sim, quero"),
        ("ButtonPayload", "offer:accept:42"),
        ("ButtonType", "QUICK_REPLY"),
        ("To", BUSINESS),
        ("MessagingServiceSid", "MG11111111111111111111111111111111"),
        ("NumSegments", "1"),
        ("MediaUrl0", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME1"),
        ("MediaContentType0", "image/jpeg"),
        ("MediaUrl1", "https://api.twilio.com/2010-04-01/Accounts/AC1/Messages/MM1/Media/ME2"),
        ("MediaContentType1", "audio/ogg"),
        ("Latitude", "-23.561414"),
        ("Longitude", "-46.655881"),
        ("Address", "Av. Paulista, 1578 - São Paulo"),
        ("Label", "MASP"),
        ("ReferralNumMedia", "1"),
        ("ReferralSourceId", "120208123456789"),
        ("ReferralSourceType", "ad"),
        ("ReferralSourceUrl", "https://fb.me/3xAmPlE"),
        ("ReferralHeadline", "Black Friday"),
        ("ReferralBody", "Tudo com 30% off"),
        ("ReferralCtwaClid", "ARAkLkA8rmlFeiCktEJQ"),
        ("ReferralMediaId", "1234567"),
        ("ReferralMediaUrl", "https://scontent.example/ad.jpg"),
        ("ReferralMediaContentType", "image/jpeg"),
        ("Forwarded", "true"),
        ("FrequentlyForwarded", "false"),
        ("InteractiveData", r#"{"type":"button_reply","id":"accept"}"#),
        ("FlowData", r#"{"flow_token":"t-1","answer":"yes"}"#),
        ("OriginalRepliedMessageSid", "SM00000000000000000000000000000001"),
        ("OriginalRepliedMessageSender", BUSINESS),
        ("MessageSid", &sid),
        ("AccountSid", ACCOUNT_SID),
        ("From", &customer),
        ("ApiVersion", "2010-04-01"),
        ("ChannelMetadata", r#"{"type":"whatsapp","data":{"context":{"ProfileName":"Ana Souza"}}}"#),
    ]);
    let response = channel.post_inbound(&params, None).await;
    assert_eq!(response.status(), 200);

    let events = published(&channel, &sid).await;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!((event.from.as_str(), event.to.as_str()), (customer.as_str(), BUSINESS));
    assert_eq!(event.account_sid, ACCOUNT_SID);
    assert_eq!(event.messaging_service_sid.as_deref(), Some("MG11111111111111111111111111111111"));
    assert_eq!(event.body, "Olá 👋 sim, quero!");
    assert_eq!(event.profile_name.as_deref(), Some("Ana Souza"));
    assert_eq!(event.wa_id.as_deref(), Some("5511987654321"));
    assert_eq!(event.message_type.as_deref(), Some("button"));
    assert_eq!(
        event.media,
        vec![
            Media { url: params[14].1.clone(), content_type: "image/jpeg".into() },
            Media { url: params[16].1.clone(), content_type: "audio/ogg".into() },
        ]
    );
    assert_eq!(
        (event.button_text.as_deref(), event.button_payload.as_deref(), event.button_type.as_deref()),
        (Some("Sim, quero"), Some("offer:accept:42"), Some("QUICK_REPLY"))
    );
    assert_eq!(
        event.location,
        Some(Location {
            latitude: -23.561414,
            longitude: -46.655881,
            address: Some("Av. Paulista, 1578 - São Paulo".into()),
            label: Some("MASP".into()),
        })
    );
    assert_eq!(
        event.referral,
        Some(Referral {
            source_id: Some("120208123456789".into()),
            source_type: Some("ad".into()),
            source_url: Some("https://fb.me/3xAmPlE".into()),
            headline: Some("Black Friday".into()),
            body: Some("Tudo com 30% off".into()),
            ctwa_clid: Some("ARAkLkA8rmlFeiCktEJQ".into()),
            media_id: Some("1234567".into()),
            media_url: Some("https://scontent.example/ad.jpg".into()),
            media_content_type: Some("image/jpeg".into()),
            num_media: Some("1".into()),
        })
    );
    assert_eq!((event.forwarded, event.frequently_forwarded), (Some(true), Some(false)));
    assert_eq!(event.interactive_data.as_deref(), Some(r#"{"type":"button_reply","id":"accept"}"#));
    assert_eq!(event.flow_data.as_deref(), Some(r#"{"flow_token":"t-1","answer":"yes"}"#));
    assert_eq!(event.original_replied_message_sid.as_deref(), Some("SM00000000000000000000000000000001"));
    assert_eq!(event.original_replied_message_sender.as_deref(), Some(BUSINESS));
    let expected_others: HashMap<String, String> = pairs(&[
        ("SmsMessageSid", &sid),
        ("SmsSid", &sid),
        ("SmsStatus", "received"),
        ("NumSegments", "1"),
        ("ApiVersion", "2010-04-01"),
        ("ChannelMetadata", r#"{"type":"whatsapp","data":{"context":{"ProfileName":"Ana Souza"}}}"#),
    ])
    .into_iter()
    .collect();
    assert_eq!(event.other_params, expected_others);
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_webhook_is_one_event_across_an_ingress_restart() {
    let mut channel = Channel::start().await;
    let sid = unique_sid();
    let params = channel.inbound_params(&sid, &unique_customer(), "is my order late?");
    assert_eq!(channel.post_inbound(&params, None).await.status(), 200);

    channel.restart_ingress().await;
    // Twilio retries the same webhook (signed for the URL it calls) at the new instance.
    let retry = channel.post_inbound(&params, None).await;
    assert_eq!(retry.status(), 200, "a retry is acknowledged, not refused");
    assert_eq!(published(&channel, &sid).await.len(), 1, "one event for one MessageSid");
    let metrics = channel.get(ingress::SERVICE, "/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"wa_ingress_accepted_total{endpoint="inbound",outcome="duplicate"} 1"#), "{metrics}");

    // The restarted instance still publishes new messages.
    let next = unique_sid();
    assert_eq!(channel.post_inbound(&channel.inbound_params(&next, &unique_customer(), "x"), None).await.status(), 200);
    assert_eq!(published(&channel, &next).await.len(), 1);
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn json_bodies_proxied_urls_and_several_instances() {
    let channel = Channel::start().await;

    // A JSON body: the URL carries bodySHA256 and the signature covers the URL.
    let sid = unique_sid();
    let body = json!({"MessageSid": sid, "AccountSid": ACCOUNT_SID, "From": unique_customer(), "To": BUSINESS,
        "Body": "via json", "NumMedia": 0})
    .to_string();
    let url = format!("{}/twilio/inbound?bodySHA256={}", channel.ingress_url, signature::body_sha256(body.as_bytes()));
    let signed = signature::compute(AUTH_TOKEN, &url, &[]);
    let send_json = |body: String, signed: String| {
        reqwest::Client::new()
            .post(&url)
            .header("content-type", "application/json")
            .header(signature::HEADER, signed)
            .body(body)
            .send()
    };
    assert_eq!(send_json(body.clone(), signed.clone()).await.unwrap().status(), 200);
    let tampered = body.replace("via json", "via JSON");
    assert_eq!(send_json(tampered, signed).await.unwrap().status(), 403);
    let events = published(&channel, &sid).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body, "via json");
    assert_eq!(events[0].other_params.get("NumMedia"), None, "NumMedia is typed, not kept twice");

    let taken_sid = unique_sid();
    let taken_by_main = channel.inbound_params(&taken_sid, &unique_customer(), "once across instances");
    assert_eq!(channel.post_inbound(&taken_by_main, None).await.status(), 200);

    // Behind a proxy: a second ingress told its public URL, and a third that trusts the
    // proxy's X-Forwarded-* headers.
    let stop = CancellationToken::new();
    let mut configured = e2e_tests::ingress_config(&channel.kafka);
    configured.public_url = Some("https://wa.example.com/channel".to_owned());
    let mut trusting = e2e_tests::ingress_config(&channel.kafka);
    trusting.trust_forwarded_headers = true;
    let mut urls = Vec::new();
    for config in [configured, trusting] {
        let bound = ingress::bind(config).await.unwrap();
        urls.push(format!("http://{}", bound.local_addr()));
        tokio::spawn(bound.run(stop.clone()));
    }
    for url in &urls {
        wait_ready(url).await;
    }
    let public = "https://wa.example.com/channel/twilio/inbound";
    let params = channel.inbound_params(&unique_sid(), &unique_customer(), "proxied");
    let direct = format!("{}/twilio/inbound", urls[0]);
    assert_eq!(post_form(&direct, public, Some(AUTH_TOKEN), &params, &[]).await.status(), 200);
    assert_eq!(post_form(&direct, &direct, Some(AUTH_TOKEN), &params, &[]).await.status(), 403);

    let forwarded = [("x-forwarded-proto", "https"), ("x-forwarded-host", "wa.example.com")];
    let public = "https://wa.example.com/twilio/inbound";
    let params = channel.inbound_params(&unique_sid(), &unique_customer(), "forwarded");
    let direct = format!("{}/twilio/inbound", urls[1]);
    assert_eq!(post_form(&direct, public, Some(AUTH_TOKEN), &params, &forwarded).await.status(), 200);
    // The default-port variant Twilio sometimes signs verifies too.
    let params = channel.inbound_params(&unique_sid(), &unique_customer(), "forwarded :443");
    let with_port = "https://wa.example.com:443/twilio/inbound";
    assert_eq!(post_form(&direct, with_port, Some(AUTH_TOKEN), &params, &forwarded).await.status(), 200);
    // The main instance does not trust the headers: the same request fails there.
    let main = format!("{}/twilio/inbound", channel.ingress_url);
    assert_eq!(post_form(&main, public, Some(AUTH_TOKEN), &params, &forwarded).await.status(), 403);

    // Several instances: a message the main instance took, retried at another instance, is one
    // event (the other instance replayed the topic before it became ready).
    let retried_elsewhere = post_form(&direct, public, Some(AUTH_TOKEN), &taken_by_main, &forwarded).await;
    assert_eq!(retried_elsewhere.status(), 200);
    assert_eq!(published(&channel, &taken_sid).await.len(), 1, "one event for one MessageSid across instances");
    stop.cancel();
    channel.stop().await;
}

async fn wait_ready(url: &str) {
    let deadline = tokio::time::Instant::now() + e2e_tests::EVENT_TIMEOUT;
    while !reqwest::get(format!("{url}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "{url} did not become ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn status_callbacks_are_published_as_received_out_of_order_repeated_and_unknown() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let sid = unique_sid();
    let url = format!("{}/twilio/status?request_id=crm-42", channel.ingress_url);
    let callback = |status: &str, extra: &[(&str, &str)]| {
        let mut params = pairs(&[
            ("MessageSid", &sid),
            ("SmsSid", &sid),
            ("AccountSid", ACCOUNT_SID),
            ("From", BUSINESS),
            ("To", &customer),
            ("MessageStatus", status),
            ("SmsStatus", status),
            ("ChannelPrefix", "whatsapp"),
            ("ApiVersion", "2010-04-01"),
        ]);
        params.extend(pairs(extra));
        params
    };
    let sequence = [
        callback("delivered", &[]),
        callback("sent", &[]),
        callback("read", &[("EventType", "READ")]),
        callback("delivered", &[]),
        callback("some_future_status", &[]),
        callback("failed", &[("ErrorCode", "63016"), ("ChannelStatusMessage", "outside the window")]),
    ];
    for params in &sequence {
        let response = post_form(&url, &url, Some(AUTH_TOKEN), params, &[]).await;
        assert_eq!(response.status(), 204);
    }
    let events: Vec<DeliveryStatusReceived> = channel
        .read_to_end(&DELIVERY)
        .await
        .iter()
        .map(|r| r.decode::<DeliveryStatusReceived>())
        .filter(|e| e.message_sid == sid)
        .collect();
    let statuses: Vec<&str> = events.iter().map(|e| e.message_status.as_str()).collect();
    assert_eq!(statuses, ["delivered", "sent", "read", "delivered", "some_future_status", "failed"]);
    assert_eq!(events[0].event_id, events[3].event_id, "a repeated callback carries the same event id");
    assert!(events.iter().all(|e| e.request_id.as_deref() == Some("crm-42")));
    assert!(events.iter().all(|e| e.conversation_id == wa_schemas::conversation_id(BUSINESS, &customer)));
    assert_eq!(events[2].event_type.as_deref(), Some("READ"));
    assert_eq!(events[5].error_code.as_deref(), Some("63016"));
    assert_eq!(events[5].channel_status_message.as_deref(), Some("outside the window"));
    assert_eq!(events[5].other_params.get("ChannelPrefix").map(String::as_str), Some("whatsapp"));

    let unsigned = post_form(&url, &url, None, &sequence[0], &[]).await;
    assert_eq!(unsigned.status(), 403);
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_customer_is_one_conversation_however_the_number_is_written() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    let digits = customer.trim_start_matches("whatsapp:+");
    // Twilio writes `whatsapp:+1...`; a webhook relayed by another tool may drop the `+`.
    let sid = unique_sid();
    let mut params = channel.inbound_params(&sid, &format!("whatsapp:{digits}"), "hello");
    params.iter_mut().find(|(k, _)| k == "To").unwrap().1 = BUSINESS.trim_start_matches("whatsapp:").to_owned();
    assert_eq!(channel.post_inbound(&params, None).await.status(), 200);
    let inbound = published(&channel, &sid).await;
    assert_eq!((inbound[0].from.as_str(), inbound[0].to.as_str()), (customer.as_str(), BUSINESS));

    // The CRM writes the number as people do.
    let written = format!("+{} ({}) {}-{}", &digits[..1], &digits[1..4], &digits[4..7], &digits[7..]);
    let response = channel
        .post_outbound(&json!({"request_id": "one-conversation", "from": BUSINESS, "to": written, "body": "hi"}))
        .await;
    assert_eq!(response.status(), 202);
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(accepted["conversation_id"], inbound[0].conversation_id.as_str());
    let requested = channel.read_to_end(&OUTBOUND_REQUESTED).await;
    let requested: wa_schemas::OutboundRequested = requested.last().unwrap().decode();
    assert_eq!(
        (requested.to.as_str(), requested.conversation_id.as_str()),
        (customer.as_str(), inbound[0].conversation_id.as_str())
    );
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_crm_request_id_is_an_idempotency_key() {
    let channel = Channel::start().await;
    let request = json!({"request_id": "crm-idem-1", "from": BUSINESS, "to": unique_customer(), "body": "hi"});
    let first = channel.post_outbound(&request).await;
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let again = channel.post_outbound(&request).await;
    assert_eq!(again.status(), 200);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["status"], "duplicate");
    assert_eq!(again["conversation_id"], first["conversation_id"]);
    let requests = channel.read_to_end(&OUTBOUND_REQUESTED).await;
    let matching =
        requests.iter().filter(|r| r.decode::<wa_schemas::OutboundRequested>().request_id == "crm-idem-1").count();
    assert_eq!(matching, 1);
    channel.stop().await;
}

/// One row of the bad-input table: what is sent, and the status, problem and metric reason it
/// must get.
struct Case {
    name: &'static str,
    response: reqwest::Response,
    status: StatusCode,
    problem_type: &'static str,
    field: Option<&'static str>,
    reason: &'static str,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_kind_of_bad_input_gets_its_own_status_problem_and_metric() {
    let channel = Channel::start().await;
    let http = reqwest::Client::new();
    let inbound = format!("{}/twilio/inbound", channel.ingress_url);
    let outbound = format!("{}/v1/outbound", channel.ingress_url);
    let good = channel.inbound_params(&unique_sid(), &unique_customer(), "hello");
    let without = |name: &str| good.iter().filter(|(k, _)| k != name).cloned().collect::<Vec<_>>();
    let mut other_sender = good.clone();
    other_sender.iter_mut().find(|(k, _)| k == "To").unwrap().1 = "whatsapp:+19995550000".into();
    let mut media_missing = good.clone();
    media_missing.iter_mut().find(|(k, _)| k == "NumMedia").unwrap().1 = "1".into();
    let mut huge = good.clone();
    huge.iter_mut().find(|(k, _)| k == "Body").unwrap().1 = "x".repeat(20 * 1024);
    let signed = |params: &[(String, String)]| signature::compute(AUTH_TOKEN, &inbound, params);
    let crm_from_other = json!({"from": "whatsapp:+19995550000", "to": unique_customer(), "body": "x"});
    let mut from_no_number = good.clone();
    from_no_number.iter_mut().find(|(k, _)| k == "From").unwrap().1 = "whatsapp:not-a-number".into();

    let cases = vec![
        Case {
            name: "missing signature",
            response: post_form(&inbound, &inbound, None, &good, &[]).await,
            status: StatusCode::FORBIDDEN,
            problem_type: "signature-missing",
            field: None,
            reason: "signature_missing",
        },
        Case {
            name: "signature from another token",
            response: post_form(&inbound, &inbound, Some("not-the-token"), &good, &[]).await,
            status: StatusCode::FORBIDDEN,
            problem_type: "signature-invalid",
            field: None,
            reason: "signature_invalid",
        },
        Case {
            name: "wrong content type",
            response: http.post(&inbound).header("content-type", "text/plain").body("Body=hi").send().await.unwrap(),
            status: StatusCode::UNSUPPORTED_MEDIA_TYPE,
            problem_type: "unsupported-content-type",
            field: None,
            reason: "content_type",
        },
        Case {
            name: "form that is not UTF-8",
            response: http
                .post(&inbound)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(&b"Body=\xff\xfe"[..])
                .send()
                .await
                .unwrap(),
            status: StatusCode::BAD_REQUEST,
            problem_type: "malformed-body",
            field: None,
            reason: "malformed_body",
        },
        Case {
            name: "malformed JSON",
            response: http
                .post(&inbound)
                .header("content-type", "application/json")
                .body("{\"MessageSid\":")
                .send()
                .await
                .unwrap(),
            status: StatusCode::BAD_REQUEST,
            problem_type: "malformed-body",
            field: None,
            reason: "malformed_body",
        },
        Case {
            name: "body over the limit",
            response: post_form(&inbound, &inbound, Some(AUTH_TOKEN), &huge, &[]).await,
            status: StatusCode::PAYLOAD_TOO_LARGE,
            problem_type: "body-too-large",
            field: None,
            reason: "body_too_large",
        },
        Case {
            name: "unknown business sender",
            response: http
                .post(&inbound)
                .header(signature::HEADER, signed(&other_sender))
                .form(&other_sender)
                .send()
                .await
                .unwrap(),
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem_type: "unknown-sender",
            field: None,
            reason: "unknown_sender",
        },
        Case {
            name: "missing From",
            response: post_form(&inbound, &inbound, Some(AUTH_TOKEN), &without("From"), &[]).await,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem_type: "invalid-field",
            field: Some("From"),
            reason: "invalid_field",
        },
        Case {
            name: "missing MessageSid",
            response: post_form(&inbound, &inbound, Some(AUTH_TOKEN), &without("MessageSid"), &[]).await,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem_type: "invalid-field",
            field: Some("MessageSid"),
            reason: "invalid_field",
        },
        Case {
            name: "NumMedia without its MediaUrl",
            response: post_form(&inbound, &inbound, Some(AUTH_TOKEN), &media_missing, &[]).await,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem_type: "invalid-field",
            field: Some("MediaUrl0"),
            reason: "invalid_field",
        },
        Case {
            name: "From that is not a WhatsApp address",
            response: post_form(&inbound, &inbound, Some(AUTH_TOKEN), &from_no_number, &[]).await,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem_type: "invalid-field",
            field: Some("From"),
            reason: "invalid_field",
        },
        Case {
            name: "CRM recipient that is not a WhatsApp address",
            response: channel
                .post_outbound(&json!({"from": BUSINESS, "to": "whatsapp:not-a-number", "body": "x"}))
                .await,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem_type: "invalid-field",
            field: Some("to"),
            reason: "invalid_field",
        },
        Case {
            name: "CRM recipient with too many digits",
            response: channel
                .post_outbound(&json!({"from": BUSINESS, "to": "+44 20 7946 0958 12345", "body": "x"}))
                .await,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem_type: "invalid-field",
            field: Some("to"),
            reason: "invalid_field",
        },
        Case {
            name: "CRM without a token",
            response: http.post(&outbound).json(&json!({})).send().await.unwrap(),
            status: StatusCode::UNAUTHORIZED,
            problem_type: "unauthorized",
            field: None,
            reason: "unauthorized",
        },
        Case {
            name: "CRM with a wrong token",
            response: http.post(&outbound).bearer_auth("guess").json(&json!({})).send().await.unwrap(),
            status: StatusCode::UNAUTHORIZED,
            problem_type: "unauthorized",
            field: None,
            reason: "unauthorized",
        },
        Case {
            name: "CRM malformed JSON",
            response: http
                .post(&outbound)
                .bearer_auth(API_TOKEN)
                .header("content-type", "application/json")
                .body("{")
                .send()
                .await
                .unwrap(),
            status: StatusCode::BAD_REQUEST,
            problem_type: "malformed-json",
            field: None,
            reason: "malformed_body",
        },
        Case {
            name: "CRM body over the limit",
            response: http
                .post(&outbound)
                .bearer_auth(API_TOKEN)
                .json(&json!({"from": BUSINESS, "to": unique_customer(), "body": "x".repeat(20 * 1024)}))
                .send()
                .await
                .unwrap(),
            status: StatusCode::PAYLOAD_TOO_LARGE,
            problem_type: "body-too-large",
            field: None,
            reason: "body_too_large",
        },
        Case {
            name: "CRM sender the channel does not serve",
            response: channel.post_outbound(&crm_from_other).await,
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem_type: "invalid-field",
            field: Some("from"),
            reason: "unknown_sender",
        },
    ];
    let mut expected_counts: HashMap<(&str, &str), usize> = HashMap::new();
    for case in cases {
        let endpoint =
            if case.reason == "unauthorized" || case.name.starts_with("CRM") { "outbound" } else { "inbound" };
        *expected_counts.entry((endpoint, case.reason)).or_default() += 1;
        assert_eq!(case.response.status(), case.status, "{}", case.name);
        let problem = problem(case.response).await;
        assert_eq!(problem["type"], format!("https://wachannel.dev/problems/{}", case.problem_type), "{}", case.name);
        assert_eq!(problem["status"], case.status.as_u16(), "{}", case.name);
        assert!(!problem["detail"].as_str().unwrap_or_default().is_empty(), "{}", case.name);
        assert_eq!(problem["field"].as_str(), case.field, "{}: {problem}", case.name);
    }

    // Nothing reached the topics, and each class was counted.
    assert!(channel.read_to_end(&INBOUND).await.is_empty());
    assert!(channel.read_to_end(&OUTBOUND_REQUESTED).await.is_empty());
    let metrics = channel.get(ingress::SERVICE, "/metrics").await.text().await.unwrap();
    for ((endpoint, reason), count) in expected_counts {
        let line = format!("wa_ingress_rejected_total{{endpoint=\"{endpoint}\",reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }

    // The refused signatures, the unknown sender and the signed but unreadable webhooks are
    // kept whole for operators.
    let quarantined: Vec<QuarantinedRequest> =
        channel.read_to_end(&QUARANTINE).await.iter().map(|r| r.decode()).collect();
    let reasons: Vec<&str> = quarantined.iter().map(|q| q.reason.as_str()).collect();
    // An unsigned request is never kept.
    assert_eq!(
        reasons,
        ["signature_invalid", "unknown_sender", "invalid_field", "invalid_field", "invalid_field", "invalid_field"]
    );
    let unreadable = quarantined.last().unwrap();
    assert!(unreadable.detail.starts_with("From: From is not a WhatsApp address"), "{}", unreadable.detail);
    assert_eq!(unreadable.body, serde_urlencoded_form(&from_no_number).as_bytes());
    let expected_body = serde_urlencoded_form(&good);
    assert_eq!(quarantined[0].body, expected_body.as_bytes());
    assert_eq!(quarantined[0].checked_url, inbound);
    assert!(quarantined[0].headers.contains_key("x-twilio-signature"));
    assert!(quarantined[1].detail.contains("whatsapp:+199******00"), "{}", quarantined[1].detail);
    channel.stop().await;
}

/// The form body reqwest sends for `params`.
fn serde_urlencoded_form(params: &[(String, String)]) -> String {
    form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_broker_twilio_gets_a_503_at_once_not_a_hang() {
    let kafka = wa_platform::config::KafkaConfig {
        bootstrap_servers: "127.0.0.1:1".to_owned(),
        topic_prefix: "nobroker.".to_owned(),
        group_instance_id: None,
        fetch_wait: wa_platform::config::KafkaConfig::DEFAULT_FETCH_WAIT,
        security: Vec::new(),
    };
    let bound = ingress::bind(e2e_tests::ingress_config(&kafka)).await.unwrap();
    let url = format!("http://{}/twilio/inbound", bound.local_addr());
    let stop = CancellationToken::new();
    let task = tokio::spawn(bound.run(stop.clone()));
    let params = pairs(&[
        ("MessageSid", "SM1"),
        ("AccountSid", ACCOUNT_SID),
        ("From", "whatsapp:+14157620111"),
        ("To", BUSINESS),
    ]);
    let response = post_form(&url, &url, Some(AUTH_TOKEN), &params, &[]).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    let problem = problem(response).await;
    assert_eq!(problem["type"], "https://wachannel.dev/problems/unavailable");
    stop.cancel();
    task.await.unwrap().ok();
}

/// Quarantine keeps only what plausibly came from Twilio (signed, even if wrongly, for this
/// account and a served sender), and no more bytes a minute than its budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quarantine_keeps_only_plausible_webhooks_within_its_budget() {
    const BUDGET: u64 = 2_500;
    let channel = Channel::topics_only().await;
    let mut config = e2e_tests::ingress_config(&channel.kafka);
    config.quarantine_budget_per_minute = BUDGET;
    let bound = ingress::bind(config).await.unwrap();
    let base = format!("http://{}", bound.local_addr());
    let url = format!("{base}/twilio/inbound");
    let stop = CancellationToken::new();
    let serving = tokio::spawn(bound.run(stop.clone()));
    wait_ready(&base).await;

    // 1,000 bytes each, so the budget holds two.
    let webhook = || {
        let mut params = channel.inbound_params(&unique_sid(), &unique_customer(), "");
        let padding = 1_000 - serde_urlencoded_form(&params).len();
        params.iter_mut().find(|(k, _)| k == "Body").unwrap().1 = "x".repeat(padding);
        params
    };
    let mut other_account = webhook();
    other_account.iter_mut().find(|(k, _)| k == "AccountSid").unwrap().1 = "AC99999999999999999999999999999999".into();
    let mut other_sender = webhook();
    other_sender.iter_mut().find(|(k, _)| k == "To").unwrap().1 = "whatsapp:+19995550000".into();
    let started = std::time::Instant::now();
    for (params, token) in [(webhook(), None), (other_account, Some("forged")), (other_sender, Some("forged"))] {
        assert_eq!(post_form(&url, &url, token, &params, &[]).await.status(), 403);
    }
    let plausible: Vec<Vec<(String, String)>> = (0..5).map(|_| webhook()).collect();
    for params in &plausible {
        assert_eq!(post_form(&url, &url, Some("forged"), params, &[]).await.status(), 403);
    }
    let elapsed = started.elapsed();

    let quarantined: Vec<QuarantinedRequest> =
        channel.read_to_end(&QUARANTINE).await.iter().map(|r| r.decode()).collect();
    // The first two plausible ones fit the budget; beyond them, no more than its refill over
    // the time the test took.
    assert!(quarantined.len() >= 2, "{} kept", quarantined.len());
    for (kept, sent) in quarantined.iter().zip(&plausible) {
        assert_eq!(kept.body, serde_urlencoded_form(sent).as_bytes());
    }
    let kept_bytes: usize = quarantined.iter().map(|q| q.body.len()).sum();
    let refill = elapsed.as_secs_f64() * BUDGET as f64 / 60.0;
    assert!(kept_bytes as f64 <= BUDGET as f64 + refill, "{kept_bytes} bytes kept in {elapsed:?}");
    let skipped_for_budget = plausible.len() - quarantined.len();
    assert!(skipped_for_budget > 0 || elapsed.as_secs() > 30, "all five kept within {elapsed:?}");
    let metrics = reqwest::get(format!("{base}/metrics")).await.unwrap().text().await.unwrap();
    // Metrics are per process, which other tests share: at least these were counted.
    for (reason, count) in
        [("unsigned", 1), ("other_account", 1), ("unknown_sender", 1), ("budget", skipped_for_budget)]
    {
        let name = format!("wa_ingress_quarantine_skipped_total{{endpoint=\"inbound\",reason=\"{reason}\"}} ");
        let counted: usize =
            metrics.lines().find_map(|l| l.strip_prefix(&name)).map_or(0, |n| n.trim().parse().unwrap());
        assert!(counted >= count, "{name}{counted}, expected at least {count}");
    }
    stop.cancel();
    serving.await.unwrap().unwrap();
}

/// A customer known by a business-scoped user id: a webhook with the phone number and the BSUID
/// links them; later messages with the BSUID alone, CRM replies to the BSUID and another ingress
/// instance (which reads the links from the topic) all key the phone number's conversation. A
/// BSUID never seen with a number is its own conversation.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bsuid_seen_with_a_phone_number_keys_its_conversation() {
    let channel = Channel::start().await;
    let phone = unique_customer();
    let bsuid = format!("US.{}", uuid::Uuid::new_v4().as_u128() % 10u128.pow(20));
    let with_identity = |sid: &str, from: &str, external: &str| {
        let mut params = channel.inbound_params(sid, from, "hello");
        params.push(("ExternalUserId".to_owned(), external.to_owned()));
        params.push(("ParentExternalUserId".to_owned(), "US.ENT.11815799212886844830".to_owned()));
        params.push(("ProfileUsername".to_owned(), "ana.souza".to_owned()));
        params
    };
    let first = unique_sid();
    assert_eq!(channel.post_inbound(&with_identity(&first, &phone, &bsuid), None).await.status(), 200);
    let linked = published(&channel, &first).await.remove(0);
    assert_eq!(linked.conversation_id, wa_schemas::conversation_id(BUSINESS, &phone));
    assert_eq!(linked.external_user_id.as_deref(), Some(bsuid.as_str()));
    assert_eq!(linked.parent_external_user_id.as_deref(), Some("US.ENT.11815799212886844830"));
    assert_eq!(linked.profile_username.as_deref(), Some("ana.souza"));
    assert!(!linked.other_params.contains_key("ExternalUserId"));
    let links: Vec<wa_schemas::IdentityLinked> =
        channel.read_to_end(&wa_platform::topics::IDENTITIES).await.iter().map(|r| r.decode()).collect();
    assert!(links.iter().any(|l| l.bsuid == bsuid && l.address == phone && l.message_sid == first), "{links:?}");

    // The BSUID alone, in From: the phone number's conversation.
    let second = unique_sid();
    let bsuid_address = format!("whatsapp:{bsuid}");
    assert_eq!(channel.post_inbound(&with_identity(&second, &bsuid_address, &bsuid), None).await.status(), 200);
    let alone = published(&channel, &second).await.remove(0);
    assert_eq!((alone.from.as_str(), &alone.conversation_id), (bsuid_address.as_str(), &linked.conversation_id));

    // The CRM answers the BSUID: the same conversation.
    let reply = json!({"request_id": format!("bsuid-{second}"), "from": BUSINESS, "to": bsuid_address, "body": "hi"});
    let answered: Value = channel.post_outbound_retrying(&reply).await.json().await.unwrap();
    assert_eq!(answered["conversation_id"], linked.conversation_id.as_str());

    // Another ingress instance knows the link from the topic.
    let bound = ingress::bind(e2e_tests::ingress_config(&channel.kafka)).await.unwrap();
    let base = format!("http://{}", bound.local_addr());
    let stop = CancellationToken::new();
    let serving = tokio::spawn(bound.run(stop.clone()));
    wait_ready(&base).await;
    let third = unique_sid();
    let url = format!("{base}/twilio/inbound");
    let params = with_identity(&third, &bsuid_address, &bsuid);
    assert_eq!(post_form(&url, &url, Some(AUTH_TOKEN), &params, &[]).await.status(), 200);
    assert_eq!(published(&channel, &third).await.remove(0).conversation_id, linked.conversation_id);
    stop.cancel();
    serving.await.unwrap().unwrap();

    // A BSUID never seen with a number is its own conversation.
    let stranger = format!("whatsapp:BR.{}", uuid::Uuid::new_v4().simple());
    let fourth = unique_sid();
    let params = with_identity(&fourth, &stranger, stranger.trim_start_matches("whatsapp:"));
    assert_eq!(channel.post_inbound(&params, None).await.status(), 200);
    assert_eq!(
        published(&channel, &fourth).await.remove(0).conversation_id,
        wa_schemas::conversation_id(BUSINESS, &stranger)
    );
    channel.stop().await;
}

/// A customer's photo and PDF are downloaded from "Twilio" (Basic auth, then a redirect),
/// stored with their SHA-256 and size, and announced; a media URL that answers 404 is
/// dead-lettered with the reason while the message itself was published at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn customers_media_is_downloaded_stored_and_announced() {
    use sha2::Digest as _;
    let channel = Channel::start().await;
    let customer = unique_customer();
    let answer = channel
        .sim_inbound_request(json!({
            "from": customer, "to": BUSINESS, "body": "here is the receipt",
            "media": [{"content_type": "image/jpeg", "size": 48213}, {"content_type": "application/pdf", "size": 1000}],
        }))
        .await;
    assert_eq!(answer["webhook_status"], 200, "{answer}");
    let sid = answer["message_sid"].as_str().unwrap().to_owned();
    // The record says how much media it carries, so the keeper passes text by unread.
    let media_count = |sid: String| {
        let channel = &channel;
        async move {
            let record = channel
                .await_record(&wa_platform::topics::INBOUND, |r| {
                    r.decode::<InboundMessageReceived>().message_sid == sid
                })
                .await;
            record.headers.get("ce_mediacount").cloned()
        }
    };
    assert_eq!(media_count(sid.clone()).await.as_deref(), Some("2"));
    let text_sid = unique_sid();
    let text = channel.inbound_params(&text_sid, &customer, "thanks");
    assert_eq!(channel.post_inbound(&text, None).await.status(), 200);
    assert_eq!(media_count(text_sid).await.as_deref(), Some("0"));
    for (index, sent) in answer["media"].as_array().unwrap().iter().enumerate() {
        let stored: wa_schemas::InboundMediaStored = channel
            .await_record(&wa_platform::topics::INBOUND_MEDIA, |r| {
                let event: wa_schemas::InboundMediaStored = r.decode();
                event.message_sid == sid && event.index == index as i32
            })
            .await
            .decode();
        assert_eq!(stored.conversation_id, wa_schemas::conversation_id(BUSINESS, &customer));
        assert_eq!(
            (stored.size, stored.sha256.as_str()),
            (sent["size"].as_i64().unwrap(), sent["sha256"].as_str().unwrap())
        );
        assert_eq!(stored.content_type, if index == 0 { "image/jpeg" } else { "application/pdf" });
        let path = stored.url.strip_prefix("file://").expect("a local store");
        let bytes = std::fs::read(path).unwrap();
        let on_disk: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!((bytes.len() as i64, on_disk), (stored.size, stored.sha256.clone()));
        assert!(!stored.deleted_at_twilio);
    }

    // Media Twilio no longer has: dead-lettered with why; the message was published anyway.
    let missing_sid = unique_sid();
    let mut params = channel.inbound_params(&missing_sid, &customer, "and this one");
    params.retain(|(k, _)| k != "NumMedia");
    let gone = format!("{}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages/{missing_sid}/Media/MEgone", channel.sim_url);
    params.extend([
        ("NumMedia".to_owned(), "1".to_owned()),
        ("MediaUrl0".to_owned(), gone.clone()),
        ("MediaContentType0".to_owned(), "image/png".to_owned()),
    ]);
    assert_eq!(channel.post_inbound(&params, None).await.status(), 200);
    assert_eq!(published(&channel, &missing_sid).await.len(), 1);
    let dead = channel
        .await_record(&wa_platform::topics::DEAD_LETTER, |r| {
            r.headers.get("dlq.service").map(String::as_str) == Some("ingress")
        })
        .await;
    let reason = &dead.headers["dlq.reason"];
    assert!(reason.contains("404") && reason.contains(&gone), "{reason}");
    channel.stop().await;
}

/// With `MEDIA_DELETE_AT_TWILIO`, a photo is stored, deleted at Twilio and announced. When the
/// announcement fails after the deletion, the record is handled again: Twilio now answers 404
/// for the photo, and the keeper announces the copy it stored instead of dead-lettering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn media_deleted_at_twilio_is_still_announced_when_its_announcement_is_retried() {
    let mut channel = Channel::start().await;
    let faults = wa_platform::kafka::DeliveryFaults::default();
    faults.set_failing(&channel.topic(&INBOUND_MEDIA), true);
    channel
        .restart_ingress_with(|config| {
            config.media_delete_at_twilio = true;
            config.delivery_faults = faults.clone();
        })
        .await;
    let answer = channel
        .sim_inbound_request(json!({
            "from": unique_customer(), "to": BUSINESS, "body": "the parcel arrived like this",
            "media": [{"content_type": "image/jpeg", "size": 20480}],
        }))
        .await;
    assert_eq!(answer["webhook_status"], 200, "{answer}");
    let sid = answer["message_sid"].as_str().unwrap().to_owned();
    let sent = &answer["media"][0];

    // Two failed announcements: the second attempt found the photo gone at Twilio.
    let inbound = channel.topic(&INBOUND);
    let labels =
        [r#"service="ingress""#.to_owned(), format!(r#"topic="{inbound}""#), r#"outcome="retried""#.to_owned()];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let metrics = channel.get(ingress::SERVICE, "/metrics").await.text().await.unwrap();
        let retried = metrics
            .lines()
            .filter(|line| line.starts_with("wa_records_consumed_total{"))
            .find(|line| labels.iter().all(|label| line.contains(label.as_str())))
            .and_then(|line| line.rsplit(' ').next()?.parse::<f64>().ok());
        if retried.is_some_and(|count| count >= 2.0) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the keeper did not retry its announcement twice:\n{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let gone = channel
        .http()
        .get(sent["url"].as_str().unwrap())
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND, "deleted at Twilio");

    faults.set_failing(&channel.topic(&INBOUND_MEDIA), false);
    let stored: wa_schemas::InboundMediaStored = channel
        .await_record(&INBOUND_MEDIA, |r| r.decode::<wa_schemas::InboundMediaStored>().message_sid == sid)
        .await
        .decode();
    assert!(stored.deleted_at_twilio);
    assert_eq!(
        (stored.size, stored.sha256.as_str(), stored.content_type.as_str()),
        (sent["size"].as_i64().unwrap(), sent["sha256"].as_str().unwrap(), "image/jpeg")
    );
    let dead = channel.read_to_end(&DEAD_LETTER).await;
    assert!(
        dead.iter().all(|r| !r.headers.get("dlq.reason").is_some_and(|reason| reason.contains(&sid))),
        "nothing dead-lettered for the photo"
    );
    channel.stop().await;
}
