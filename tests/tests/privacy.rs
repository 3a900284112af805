//! What the channel writes to its logs: numbers masked, never a message's text. Every service
//! runs as a process, logging at debug level, through one conversation; then every line each
//! wrote is searched for the customer's texts and full numbers.

use std::time::Duration;

use e2e_tests::{unique_customer, CapturedLogs, Channel, ACCOUNT_SID, AUTH_TOKEN, BUSINESS};
use serde_json::json;

async fn ready(http: &reqwest::Client, url: &str) {
    let deadline = tokio::time::Instant::now() + e2e_tests::EVENT_TIMEOUT;
    while !http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        assert!(tokio::time::Instant::now() < deadline, "{url} never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn logs_mask_numbers_and_never_carry_message_text() {
    let channel = Channel::topics_only().await;
    let logs = CapturedLogs::default();
    let http = reqwest::Client::new();
    let ports: Vec<u16> = (0..5).map(|_| e2e_tests::free_port()).collect();
    let url = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    let (sim, ingress, session, approval, dispatch) = (url(0), url(1), url(2), url(3), url(4));
    let debug = "debug,ingress=trace,session_window=trace,template_approval=trace,outbound_dispatch=trace,\
                 wa_platform=trace,hyper=info,h2=info,reqwest=info,librdkafka=info,rdkafka=info";
    let common = |port: u16| {
        vec![
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("TWILIO_ACCOUNT_SID", ACCOUNT_SID.to_owned()),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.to_owned()),
            ("RUST_LOG", debug.to_owned()),
        ]
    };
    let with = |port: u16, extra: &[(&'static str, String)]| [common(port), extra.to_vec()].concat();
    let _children = [
        e2e_tests::spawn_service_process_captured(
            &channel.kafka,
            "twilio-sim",
            &with(ports[0], &[("SIM_INBOUND_WEBHOOK_URL", format!("{ingress}/twilio/inbound"))]),
            &CapturedLogs::default(),
        ),
        e2e_tests::spawn_service_process_captured(&channel.kafka, "ingress", &common(ports[1]), &logs),
        e2e_tests::spawn_service_process_captured(&channel.kafka, "session-window", &common(ports[2]), &logs),
        e2e_tests::spawn_service_process_captured(
            &channel.kafka,
            "template-approval",
            &with(ports[3], &[("TWILIO_CONTENT_BASE_URL", sim.clone())]),
            &logs,
        ),
        e2e_tests::spawn_service_process_captured(
            &channel.kafka,
            "outbound-dispatch",
            &with(
                ports[4],
                &[
                    ("TWILIO_API_BASE_URL", sim.clone()),
                    ("DISPATCH_STATUS_CALLBACK_URL", format!("{ingress}/twilio/status")),
                ],
            ),
            &logs,
        ),
    ];
    for url in [&sim, &ingress, &session, &approval, &dispatch] {
        ready(&http, url).await;
    }

    let customer = unique_customer();
    let secret = uuid::Uuid::new_v4().simple().to_string();
    let said = format!("my card ends {secret} please call me");
    let answer: serde_json::Value = http
        .post(format!("{sim}/sim/inbound"))
        .json(&json!({"from": customer, "to": BUSINESS, "body": said}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["webhook_status"], 200, "{answer}");
    let replied = format!("we will call you about {secret}");
    let request_id = format!("privacy-{}", uuid::Uuid::new_v4().simple());
    let accepted = http
        .post(format!("{ingress}/v1/outbound"))
        .json(&json!({"request_id": request_id, "from": BUSINESS, "to": customer, "body": replied}))
        .send()
        .await
        .unwrap();
    assert_eq!(accepted.status(), 202);
    let sent = channel.dispatch_outcome(&request_id).await;
    assert_eq!(sent.outcome, "sent", "{sent:?}");
    // The status callbacks that follow are logged too: wait for the last one to be folded.
    channel
        .await_record(&wa_platform::topics::OUTBOUND_DISPATCHED, |r| {
            let event: wa_schemas::OutboundDispatched = r.decode();
            event.request_id == request_id && event.twilio_status.as_deref() == Some("read")
        })
        .await;

    let logs = logs.lock().unwrap().clone();
    assert!(
        logs.iter().filter(|line| line.contains(&request_id)).count() >= 3,
        "the conversation was logged (the request, its send, its status callbacks): {logs:#?}"
    );
    let digits = customer.trim_start_matches("whatsapp:+");
    let masked_seen = logs.iter().any(|line| line.contains("******"));
    let leaks: Vec<&String> = logs.iter().filter(|line| line.contains(&secret) || line.contains(digits)).collect();
    assert!(leaks.is_empty(), "logs carry a message's text or a full number:\n{leaks:#?}");
    assert!(masked_seen, "numbers appear masked");
}
