//! Templates end to end: registered and approved through the admin API and the simulated
//! Content API, sent by Content SID outside the window, refused once paused, chosen along the
//! language fallback chain, and rebuilt after a restart.

use e2e_tests::{unique_customer, Channel, ACCOUNT_SID, AUTH_TOKEN, BUSINESS};
use reqwest::Method;
use serde_json::{json, Value};
use wa_platform::topics::{INBOUND, OUTBOUND_REJECTED, TEMPLATES};
use wa_schemas::{conversation_id, InboundMessageReceived, OutboundDispatched, OutboundRejected, TemplateEvent};

fn unique_sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

async fn register(channel: &Channel, name: &str, language: &str, category: &str) -> String {
    let content_sid = unique_sid("HX");
    let response = channel
        .admin(Method::POST, "/v1/templates")
        .json(&json!({
            "name": name, "language": language, "category": category, "content_sid": content_sid,
            "body": "Hi {{1}}, your order {{2}} ships today.", "examples": {"1": "Ana", "2": "1234"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    content_sid
}

async fn template_event(channel: &Channel, name: &str, language: &str, kind: &str) -> TemplateEvent {
    let id = format!("{name}:{language}");
    channel
        .await_record(&TEMPLATES, |r| {
            let event: TemplateEvent = r.decode();
            event.template_id == id && event.kind == kind
        })
        .await
        .decode()
}

/// Registers, submits through Twilio, and lets the status sync record Meta's approval.
async fn approved(channel: &Channel, name: &str, language: &str, category: &str) -> String {
    let content_sid = register(channel, name, language, category).await;
    let submitted =
        channel.admin(Method::POST, &format!("/v1/templates/{name}/{language}/submit")).send().await.unwrap();
    assert_eq!(submitted.status(), 202);
    let body: Value = submitted.json().await.unwrap();
    assert_eq!(body["status"], "pending");
    channel.sim_set_approval(&content_sid, "approved").await;
    let event = template_event(channel, name, language, "approved").await;
    assert_eq!(event.actor, "twilio");
    content_sid
}

async fn send_template(channel: &Channel, request_id: &str, to: &str, name: &str, language: &str) {
    let response = channel
        .post_outbound(&json!({
            "request_id": request_id, "from": BUSINESS, "to": to,
            "template": {"name": name, "language": language, "variables": {"1": "Ana", "2": "1234"}}
        }))
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

async fn outcome(channel: &Channel, request_id: &str) -> Result<OutboundDispatched, OutboundRejected> {
    let id = request_id.to_owned();
    tokio::select! {
        sent = channel.dispatch_outcome(&id) => Ok(sent),
        refused = channel.await_record(&OUTBOUND_REJECTED, |r| r.decode::<OutboundRejected>().request_id == request_id) => Err(refused.decode()),
    }
}

fn param(message: &Value, name: &str) -> Option<String> {
    message["params"].as_array()?.iter().find(|p| p[0] == name).map(|p| p[1].as_str().unwrap().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_approved_template_reaches_a_customer_whose_window_closed_and_is_refused_once_paused() {
    let channel = Channel::start().await;
    // The customer last wrote 25 hours ago: the window is closed.
    let customer = unique_customer();
    let day_ago = wa_platform::now_millis() - 25 * 3_600_000;
    let sid = unique_sid("SM");
    channel
        .publish(
            &INBOUND,
            &InboundMessageReceived {
                event_id: uuid::Uuid::new_v4().to_string(),
                occurred_at: day_ago,
                conversation_id: conversation_id(BUSINESS, &customer),
                message_sid: sid,
                account_sid: e2e_tests::ACCOUNT_SID.to_owned(),
                messaging_service_sid: None,
                from: customer.clone(),
                to: BUSINESS.to_owned(),
                body: "thanks!".to_owned(),
                ..Default::default()
            },
        )
        .await;
    let free_form = channel
        .post_outbound(&json!({"request_id": "late-1", "from": BUSINESS, "to": customer, "body": "hello?"}))
        .await;
    assert_eq!(free_form.status(), 202);
    assert_eq!(outcome(&channel, "late-1").await.unwrap_err().reason, "window_closed");

    let content_sid = approved(&channel, "order_update", "en", "utility").await;
    send_template(&channel, "tpl-1", &customer, "order_update", "en").await;
    let sent = outcome(&channel, "tpl-1").await.expect("the template is sent");
    assert_eq!(sent.outcome, "sent");
    let messages = channel.sim_messages().await;
    let message = messages.iter().find(|m| Some(m["sid"].as_str().unwrap()) == sent.message_sid.as_deref()).unwrap();
    assert_eq!(param(message, "ContentSid").as_deref(), Some(content_sid.as_str()));
    let variables: Value = serde_json::from_str(&param(message, "ContentVariables").unwrap()).unwrap();
    assert_eq!(variables, json!({"1": "Ana", "2": "1234"}));
    assert_eq!(param(message, "Body"), None);
    assert_eq!(param(message, "To").as_deref(), Some(customer.as_str()));

    // Meta pauses the template; the next sync records it and sends are refused.
    channel.sim_set_approval(&content_sid, "paused").await;
    let paused = template_event(&channel, "order_update", "en", "paused").await;
    assert_eq!(paused.actor, "twilio");
    send_template(&channel, "tpl-2", &customer, "order_update", "en").await;
    let refused = outcome(&channel, "tpl-2").await.unwrap_err();
    assert_eq!(refused.reason, "template_paused");
    assert!(refused.message.contains("order_update:en"), "{}", refused.message);
    assert_eq!(channel.sim_messages().await.len(), 1, "the paused template never reached Twilio");
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_fallback_chain_sends_the_first_approved_language() {
    let channel = Channel::start().await;
    let customer = unique_customer();
    // pt registered but not approved, en approved: pt_BR falls back along pt_BR → pt → en.
    let pt_sid = register(&channel, "shipping", "pt", "utility").await;
    let en_sid = approved(&channel, "shipping", "en", "utility").await;
    send_template(&channel, "fb-1", &customer, "shipping", "pt_BR").await;
    let first = outcome(&channel, "fb-1").await.expect("sent in en");
    // Once pt is approved, it wins.
    let submitted = channel.admin(Method::POST, "/v1/templates/shipping/pt/submit").send().await.unwrap();
    assert_eq!(submitted.status(), 202);
    channel.sim_set_approval(&pt_sid, "approved").await;
    template_event(&channel, "shipping", "pt", "approved").await;
    send_template(&channel, "fb-2", &customer, "shipping", "pt_BR").await;
    let second = outcome(&channel, "fb-2").await.expect("sent in pt");

    let messages = channel.sim_messages().await;
    let content_of = |sent: &OutboundDispatched| {
        let message =
            messages.iter().find(|m| Some(m["sid"].as_str().unwrap()) == sent.message_sid.as_deref()).unwrap();
        param(message, "ContentSid").unwrap()
    };
    assert_eq!(content_of(&first), en_sid);
    assert_eq!(content_of(&second), pt_sid);
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_service_rebuilds_the_same_templates() {
    let mut channel = Channel::start().await;
    approved(&channel, "welcome", "en", "marketing").await;
    register(&channel, "welcome", "es_MX", "marketing").await;
    let code = approved(&channel, "login_code", "en", "authentication").await;
    let paused = channel
        .admin(Method::POST, "/v1/templates/welcome/en/pause")
        .json(&json!({"reason": "campaign over"}))
        .send()
        .await
        .unwrap();
    assert_eq!(paused.status(), 200);
    let replaced = channel
        .admin(Method::PUT, "/v1/templates/login_code/en")
        .json(&json!({"category": "authentication", "content_sid": unique_sid("HX"), "body": "Use {{1}} to sign in.", "examples": {"1": "123456"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(replaced.status(), 200);
    let replaced: Value = replaced.json().await.unwrap();
    assert_eq!((replaced["version"].as_i64(), replaced["status"].as_str()), (Some(2), Some("draft")));
    assert_ne!(replaced["content_sid"], code);

    let before: Value = channel.admin(Method::GET, "/v1/templates").send().await.unwrap().json().await.unwrap();
    assert_eq!(before.as_array().unwrap().len(), 3);
    channel.restart_template_approval().await;
    let after: Value = channel.admin(Method::GET, "/v1/templates").send().await.unwrap().json().await.unwrap();
    assert_eq!(after, before);
    let welcome: Value =
        channel.admin(Method::GET, "/v1/templates/welcome/en").send().await.unwrap().json().await.unwrap();
    assert_eq!((welcome["status"].as_str(), welcome["reason"].as_str()), (Some("paused"), Some("campaign over")));
    channel.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_api_refuses_bad_input_with_problems() {
    let channel = Channel::start().await;
    let base = &channel.service_urls[template_approval::SERVICE];
    let unauthenticated = reqwest::Client::new().get(format!("{base}/v1/templates")).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
    // Without a token, the answer comes before the body is read: a client announcing a large
    // body and sending a few bytes of it gets its 401 at once.
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/templates HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: 10000000\r\n\r\n{{\"name\": "
    );
    tokio::io::AsyncWriteExt::write_all(&mut stream, head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut answer),
    )
    .await
    .expect("401 before the body was sent")
    .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 401");

    let valid = json!({
        "name": "order_update", "language": "en", "category": "utility", "content_sid": unique_sid("HX"),
        "body": "Hi {{1}}, your order ships today.", "examples": {"1": "Ana"}
    });
    let with = |field: &str, value: Value| {
        let mut request = valid.clone();
        request[field] = value;
        request
    };
    let cases = [
        (with("body", json!("{{1}}, your order ships.")), 422, Some("body")),
        (with("body", json!("Your order ships, {{1}}")), 422, Some("body")),
        (with("body", json!("x".repeat(1025))), 422, Some("body")),
        (with("language", json!("xx_YY")), 422, Some("language")),
        (with("examples", json!({"1": "Ana", "2": "extra"})), 422, Some("examples")),
        (with("category", json!("promo")), 422, Some("category")),
        (valid.clone(), 201, None),
        (valid.clone(), 409, None),
    ];
    for (request, status, field) in cases {
        let response = channel.admin(Method::POST, "/v1/templates").json(&request).send().await.unwrap();
        assert_eq!(response.status(), status, "{request}");
        if status >= 400 {
            assert_eq!(response.headers()["content-type"], "application/problem+json");
            let problem: Value = response.json().await.unwrap();
            if let Some(field) = field {
                assert_eq!(problem["field"], field, "{problem}");
            }
        }
    }
    let missing = channel.admin(Method::POST, "/v1/templates/nope/en/submit").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    let premature = channel.admin(Method::POST, "/v1/templates/order_update/en/pause").send().await.unwrap();
    assert_eq!(premature.status(), 409);
    channel.stop().await;
}

/// A submission is decided before Twilio is called: submitting a template Meta already
/// approved is refused with 409 and never reaches the Content API (where a new approval
/// request would put the content back to `received`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_submission_the_lifecycle_refuses_never_reaches_twilio() {
    let channel = Channel::start().await;
    let content_sid = approved(&channel, "delivery_window", "en", "utility").await;
    let again = channel.admin(Method::POST, "/v1/templates/delivery_window/en/submit").send().await.unwrap();
    assert_eq!(again.status(), 409, "{}", again.text().await.unwrap());
    let approval: Value = channel
        .http()
        .get(format!("{}/v1/Content/{content_sid}/ApprovalRequests", channel.sim_url))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(approval["whatsapp"]["status"], "approved", "the content was submitted again: {approval}");
    channel.stop().await;
}

/// The status sync reads every page of Twilio's `ContentAndApprovals` (1,000 per page): a
/// verdict on the second page is recorded like one on the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_sync_follows_the_content_api_to_its_last_page() {
    let channel = Channel::start().await;
    // 1,000 other contents sort before this template's Content SID, so its verdict is on page 2.
    for i in 0..1_000 {
        channel.sim_set_approval(&format!("HX0000000000000000000000000000{i:04}"), "pending").await;
    }
    let content_sid = format!("HXffff{}", &uuid::Uuid::new_v4().simple().to_string()[4..]);
    let response = channel
        .admin(Method::POST, "/v1/templates")
        .json(&json!({
            "name": "paged_update", "language": "en", "category": "utility", "content_sid": content_sid,
            "body": "Hi {{1}}, your order {{2}} ships today.", "examples": {"1": "Ana", "2": "1234"}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let submitted = channel.admin(Method::POST, "/v1/templates/paged_update/en/submit").send().await.unwrap();
    assert_eq!(submitted.status(), 202);
    channel.sim_set_approval(&content_sid, "approved").await;
    let event = template_event(&channel, "paged_update", "en", "approved").await;
    assert_eq!(event.content_sid, None, "a status change carries no content");
    assert_eq!(event.actor, "twilio");
    channel.stop().await;
}
