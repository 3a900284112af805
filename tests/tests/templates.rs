//! Templates end to end: content created or adopted through the admin API at the simulated
//! Content API, approved, sent by Content SID outside the window, refused once paused, chosen
//! along the language fallback chain, kept equal to Twilio's content and Meta's category, sent
//! inside the window unapproved when WhatsApp allows the type, and rebuilt after a restart.

use e2e_tests::{unique_customer, unique_customer_in_brazil, Channel, ACCOUNT_SID, AUTH_TOKEN, BUSINESS};
use reqwest::Method;
use serde_json::{json, Value};
use wa_platform::topics::{INBOUND, OUTBOUND_AUTHORIZED, OUTBOUND_REJECTED, TEMPLATES};
use wa_schemas::{
    conversation_id, InboundMessageReceived, OutboundAuthorized, OutboundDispatched, OutboundRejected, TemplateEvent,
};

fn unique_sid(prefix: &str) -> String {
    format!("{prefix}{}", uuid::Uuid::new_v4().simple())
}

/// The content an order update is: text with two variables, or Meta's code message for an
/// authentication template.
fn content_of(category: &str) -> Value {
    if category == "authentication" {
        json!({
            "types": {"whatsapp/authentication": {"add_security_recommendation": true, "code_expiration_minutes": 10,
                "actions": [{"type": "COPY_CODE", "copy_code_text": "Copy code"}]}},
            "variables": {"1": "482913"},
        })
    } else {
        json!({"types": {"twilio/text": {"body": "Hi {{1}}, your order {{2}} ships today."}}, "variables": {"1": "Ana", "2": "1234"}})
    }
}

/// Registers `name` with `content` (`types` and `variables`), created at Twilio through the admin
/// API; returns the Content SID Twilio gave it.
async fn register_content(channel: &Channel, name: &str, language: &str, category: &str, content: Value) -> String {
    let mut request = json!({"name": name, "language": language, "category": category});
    request.as_object_mut().unwrap().extend(content.as_object().unwrap().clone());
    let response = channel.admin(Method::POST, "/v1/templates").json(&request).send().await.unwrap();
    assert_eq!(response.status(), 201, "{}", response.text().await.unwrap());
    let template: Value = response.json().await.unwrap();
    template["content_sid"].as_str().unwrap().to_owned()
}

async fn register(channel: &Channel, name: &str, language: &str, category: &str) -> String {
    register_content(channel, name, language, category, content_of(category)).await
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
    send_template_with(channel, request_id, to, (name, language), json!({"1": "Ana", "2": "1234"})).await;
}

/// The CRM asks for template `name` in `language` to `to` with `variables`; ingress accepts it.
async fn send_template_with(
    channel: &Channel,
    request_id: &str,
    to: &str,
    (name, language): (&str, &str),
    variables: Value,
) {
    let response = channel
        .post_outbound(&json!({
            "request_id": request_id, "from": BUSINESS, "to": to,
            "template": {"name": name, "language": language, "variables": variables}
        }))
        .await;
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

/// The authorization template-approval published for `request_id`.
async fn authorized(channel: &Channel, request_id: &str) -> OutboundAuthorized {
    channel
        .await_record(&OUTBOUND_AUTHORIZED, |r| r.decode::<OutboundAuthorized>().request_id == request_id)
        .await
        .decode()
}

/// The message the simulator took for a send.
async fn sim_message(channel: &Channel, sent: &OutboundDispatched) -> Value {
    let messages = channel.sim_messages().await;
    messages.into_iter().find(|m| m["sid"].as_str() == sent.message_sid.as_deref()).expect("the simulator took it")
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
    let mut replacement = content_of("authentication");
    replacement["category"] = json!("authentication");
    replacement["types"]["whatsapp/authentication"]["code_expiration_minutes"] = json!(5);
    let replaced = channel.admin(Method::PUT, "/v1/templates/login_code/en").json(&replacement).send().await.unwrap();
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
        "name": "order_update", "language": "en", "category": "utility",
        "types": {"twilio/text": {"body": "Hi {{1}}, your order ships today."}}, "variables": {"1": "Ana"}
    });
    let with = |field: &str, value: Value| {
        let mut request = valid.clone();
        request[field] = value;
        request
    };
    let text = |body: String| json!({"twilio/text": {"body": body}});
    let contents_before = sim_content_count(&channel).await;
    let cases = [
        (with("types", text("{{1}}, your order ships.".into())), 422, Some("types")),
        (with("types", text("Your order ships, {{1}}".into())), 422, Some("types")),
        (with("types", text("x".repeat(1025))), 422, Some("types")),
        (with("types", json!({"twilio/fax": {"body": "x"}})), 422, Some("types")),
        (
            with("types", json!({"twilio/text": {"body": "Hi {{1}}, it ships.", "footer": "Thanks"}})),
            422,
            Some("types"),
        ),
        (with("language", json!("xx_YY")), 422, Some("language")),
        (with("variables", json!({"1": "Ana", "2": "extra"})), 422, Some("variables")),
        (with("category", json!("promo")), 422, Some("category")),
        (with("category", json!("authentication")), 422, Some("category")),
        (with("content_sid", json!(unique_sid("HX"))), 422, Some("content_sid")),
        (with("body", json!("the old local copy")), 400, None),
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
    assert_eq!(sim_content_count(&channel).await, contents_before + 1, "only the valid content was created at Twilio");
    let adopt_unknown = json!({"name": "ghost", "category": "utility", "content_sid": unique_sid("HX")});
    let response = channel.admin(Method::POST, "/v1/templates").json(&adopt_unknown).send().await.unwrap();
    assert_eq!(response.status(), 422);
    assert!(response.text().await.unwrap().contains("Twilio holds no content"));
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
    // 1,000 other contents were created before this template's, so it is on page 2 (the list
    // is oldest first).
    for i in 0..1_000 {
        let other = json!({"friendly_name": format!("other_{i}"), "language": "en", "types": {"twilio/text": {"body": "Hello"}}});
        let created = channel.sim_content_api(Method::POST, "/v1/Content").json(&other).send().await.unwrap();
        assert_eq!(created.status(), 201);
    }
    let content_sid = register(&channel, "paged_update", "en", "utility").await;
    let submitted = channel.admin(Method::POST, "/v1/templates/paged_update/en/submit").send().await.unwrap();
    assert_eq!(submitted.status(), 202);
    channel.sim_set_approval(&content_sid, "approved").await;
    let event = template_event(&channel, "paged_update", "en", "approved").await;
    assert_eq!(event.content_sid, None, "a status change carries no content");
    assert_eq!(event.actor, "twilio");
    channel.stop().await;
}

/// How many contents the simulated account holds (`GET /v1/Content`, every page).
async fn sim_content_count(channel: &Channel) -> usize {
    let mut count = 0;
    let mut next = Some("/v1/Content?PageSize=1000".to_owned());
    while let Some(path) = next {
        let page: Value = channel.sim_content_api(Method::GET, &path).send().await.unwrap().json().await.unwrap();
        count += page["contents"].as_array().unwrap().len();
        next = page["meta"]["next_page_url"]
            .as_str()
            .map(|url| url.trim_start_matches("https://content.twilio.com").to_owned());
    }
    count
}

async fn sim_content(channel: &Channel, sid: &str) -> Value {
    channel.sim_content_api(Method::GET, &format!("/v1/Content/{sid}")).send().await.unwrap().json().await.unwrap()
}

/// Every content type WhatsApp takes is created through the admin API and is at the simulator as
/// sent; the template's types, variables and body are Twilio's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_content_type_is_created_at_twilio_through_the_admin_api() {
    let channel = Channel::start().await;
    let url_action = json!([{"type": "URL", "title": "Track", "url": "https://example.com/t/{{2}}"}]);
    let kinds = [
        ("text_kind", "utility", json!({"twilio/text": {"body": "Hi {{1}}, order {{2}} ships."}})),
        (
            "media_kind",
            "utility",
            json!({"twilio/media": {"body": "Hi {{1}}, your invoice.", "media": ["https://cdn.example.com/{{2}}.pdf"]}}),
        ),
        (
            "quick_reply_kind",
            "marketing",
            json!({"twilio/quick-reply": {"body": "Hi {{1}}, rate order {{2}}?", "actions": [{"title": "Good", "id": "good"}, {"title": "Bad", "id": "bad"}]}}),
        ),
        (
            "cta_kind",
            "utility",
            json!({"twilio/call-to-action": {"body": "Hi {{1}}, track your order.", "actions": url_action}}),
        ),
        (
            "list_kind",
            "utility",
            json!({"twilio/list-picker": {"body": "Hi {{1}}, pick a slot for {{2}}.", "button": "Slots", "items": [{"id": "mon", "item": "Monday"}]}}),
        ),
        (
            "card_kind",
            "marketing",
            json!({"twilio/card": {"title": "Hi {{1}}, order {{2}}", "media": ["https://cdn.example.com/c.jpg"]}}),
        ),
        (
            "wa_card_kind",
            "marketing",
            json!({"whatsapp/card": {"body": "Hi {{1}}, order {{2}} shipped.", "footer": "Thanks", "media": ["https://cdn.example.com/c.jpg"]}}),
        ),
    ];
    for (name, category, types) in kinds {
        let sid = register_content(
            &channel,
            name,
            "en",
            category,
            json!({"types": types, "variables": {"1": "Ana", "2": "1234"}}),
        )
        .await;
        let at_twilio = sim_content(&channel, &sid).await;
        assert_eq!(at_twilio["types"], types, "{name}");
        assert_eq!((&at_twilio["language"], &at_twilio["variables"]["2"]), (&json!("en"), &json!("1234")), "{name}");
        let template: Value =
            channel.admin(Method::GET, &format!("/v1/templates/{name}/en")).send().await.unwrap().json().await.unwrap();
        assert_eq!(template["types"], types, "{name}");
        assert!(template["body"].as_str().unwrap().starts_with("Hi {{1}}"), "{name}: {template}");
    }
    let otp = register(&channel, "otp_kind", "en", "authentication").await;
    assert_eq!(sim_content(&channel, &otp).await["types"], content_of("authentication")["types"]);
    // A list picker lives only inside the window: WhatsApp does not approve it.
    let submit = channel.admin(Method::POST, "/v1/templates/list_kind/en/submit").send().await.unwrap();
    assert_eq!(submit.status(), 409);
    channel.stop().await;
}

/// Content made elsewhere (Twilio's console) is adopted by its SID; an edit in Twilio reaches
/// the template; Meta's re-categorization to marketing is recorded and applied at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn adopted_content_follows_twilio_and_metas_category() {
    let channel = Channel::start().await;
    let made_in_console = json!({"friendly_name": "restock", "language": "es_MX",
        "types": {"twilio/text": {"body": "Hola {{1}}, volvió a haber {{2}}."}}, "variables": {"1": "Ana", "2": "tenis"}});
    let created: Value = channel
        .sim_content_api(Method::POST, "/v1/Content")
        .json(&made_in_console)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = created["sid"].as_str().unwrap().to_owned();
    let adopted = channel
        .admin(Method::POST, "/v1/templates")
        .json(&json!({"name": "restock", "category": "utility", "content_sid": sid}))
        .send()
        .await
        .unwrap();
    assert_eq!(adopted.status(), 201, "{}", adopted.text().await.unwrap());
    let template: Value = adopted.json().await.unwrap();
    assert_eq!(
        (&template["language"], &template["body"]),
        (&json!("es_MX"), &json!("Hola {{1}}, volvió a haber {{2}}."))
    );

    // Edited in Twilio (same SID): the sync records it.
    let edited = json!({"twilio/text": {"body": "Hola {{1}}, ya hay {{2}} otra vez."}});
    let put = channel
        .sim_content_api(Method::PUT, &format!("/v1/Content/{sid}"))
        .json(&json!({"types": edited}))
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    let updated = template_event(&channel, "restock", "es_MX", "content_updated").await;
    assert_eq!(
        (updated.actor.as_str(), updated.body.as_deref()),
        ("twilio", Some("Hola {{1}}, ya hay {{2}} otra vez."))
    );

    // Approved as utility, then Meta moves it to marketing.
    let submitted = channel.admin(Method::POST, "/v1/templates/restock/es_MX/submit").send().await.unwrap();
    assert_eq!(submitted.status(), 202);
    channel.sim_set_approval(&sid, "approved").await;
    template_event(&channel, "restock", "es_MX", "approved").await;
    channel.sim_meta(&sid, json!({"category": "MARKETING"})).await;
    let moved = template_event(&channel, "restock", "es_MX", "recategorized").await;
    assert_eq!((moved.previous_category.as_deref(), moved.category.as_deref()), (Some("utility"), Some("marketing")));

    // A customer who opted out of marketing no longer gets it; one who did not still does,
    // unless Meta delivers no marketing to their number (US numbers, by default).
    let opted_out = unique_customer_in_brazil();
    assert_eq!(channel.sim_inbound(&opted_out, "STOP").await.1, 200);
    channel
        .await_record(&wa_platform::topics::CONSENT, |r| {
            r.decode::<wa_schemas::ConsentChanged>().conversation_id == conversation_id(BUSINESS, &opted_out)
        })
        .await;
    let other = unique_customer_in_brazil();
    let american = unique_customer();
    for (request_id, to) in [("recat-1", &opted_out), ("recat-2", &other), ("recat-3", &american)] {
        send_template_with(&channel, request_id, to, ("restock", "es_MX"), json!({"1": "Bo", "2": "botas"})).await;
    }
    assert_eq!(outcome(&channel, "recat-1").await.unwrap_err().reason, "opted_out");
    assert_eq!(outcome(&channel, "recat-2").await.expect("sent").outcome, "sent");
    let blocked = outcome(&channel, "recat-3").await.unwrap_err();
    assert_eq!(blocked.reason, "marketing_region_blocked");
    assert!(blocked.message.contains("+1"), "{}", blocked.message);
    channel.stop().await;
}

/// Meta's authentication template: the code first, a copy-code button; approved, it is sent with
/// the code as its one variable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_authentication_template_is_sent_with_its_code() {
    let channel = Channel::start().await;
    let sid = approved(&channel, "login_code", "en", "authentication").await;
    let customer = unique_customer();
    send_template_with(&channel, "otp-1", &customer, ("login_code", "en"), json!({"1": "730114"})).await;
    let sent = outcome(&channel, "otp-1").await.expect("sent");
    let authorized = authorized(&channel, "otp-1").await;
    assert_eq!(authorized.preview.as_deref(), Some("730114 is your verification code."));
    let message = sim_message(&channel, &sent).await;
    assert_eq!(param(&message, "ContentSid").as_deref(), Some(sid.as_str()));
    assert_eq!(param(&message, "ContentVariables").as_deref(), Some(r#"{"1":"730114"}"#));
    channel.stop().await;
}

/// A quick reply is content WhatsApp lets a business send inside the window without approval:
/// it goes, never submitted, while the customer's window is open, and is refused once it closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quick_reply_goes_unapproved_inside_the_window_and_is_refused_outside() {
    let channel = Channel::start().await;
    let quick_reply = json!({"types": {"twilio/quick-reply": {"body": "Hi {{1}}, did order {{2}} arrive?",
        "actions": [{"title": "Yes", "id": "arrived"}, {"title": "No", "id": "missing"}]}}, "variables": {"1": "Ana", "2": "1234"}});
    let sid = register_content(&channel, "arrival_check", "en", "utility", quick_reply).await;
    let wrote = unique_customer();
    assert_eq!(channel.sim_inbound(&wrote, "my parcel?").await.1, 200);
    let variables = json!({"1": "Bo", "2": "77"});
    send_template_with(&channel, "qr-in", &wrote, ("arrival_check", "en"), variables.clone()).await;
    let sent = outcome(&channel, "qr-in").await.expect("sent inside the window");
    let authorized = authorized(&channel, "qr-in").await;
    assert_eq!(authorized.rule.as_deref(), Some("session_content"));
    assert_eq!(authorized.content_sid.as_deref(), Some(sid.as_str()));
    let message = sim_message(&channel, &sent).await;
    assert_eq!(message["fate"], "read", "WhatsApp delivered it inside the window");

    let silent = unique_customer();
    send_template_with(&channel, "qr-out", &silent, ("arrival_check", "en"), variables).await;
    let refused = outcome(&channel, "qr-out").await.unwrap_err();
    assert_eq!(refused.reason, "template_not_approved");
    assert!(refused.message.contains("window"), "{}", refused.message);
    channel.stop().await;
}

/// Meta's per-user marketing limit: once a marketing template to a customer comes back
/// undelivered with 63049, marketing templates to that customer are refused early for the
/// cool-down; utility templates still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_63049_holds_marketing_back_for_the_cool_down_and_nothing_else() {
    let channel = Channel::start().await;
    approved(&channel, "weekend_sale", "en", "marketing").await;
    approved(&channel, "order_ready", "en", "utility").await;
    let customer = unique_customer_in_brazil();
    let send =
        |request_id: &'static str, name: &'static str| send_template(&channel, request_id, &customer, name, "en");
    // Meta declines the first marketing message: undelivered, 63049.
    channel.sim_behaviour(json!({"undeliverable": {customer.clone(): 63049}})).await;
    send("sale-1", "weekend_sale").await;
    assert_eq!(outcome(&channel, "sale-1").await.expect("taken by Twilio").outcome, "sent");
    let conversation = conversation_id(BUSINESS, &customer);
    channel
        .await_record(&wa_platform::topics::SESSIONS, |r| {
            let state: wa_schemas::SessionState = r.decode();
            state.conversation_id == conversation && state.marketing_limited_at.is_some()
        })
        .await;
    channel.sim_behaviour(json!({"undeliverable": {}})).await;

    send("sale-2", "weekend_sale").await;
    let refused = outcome(&channel, "sale-2").await.unwrap_err();
    assert_eq!(refused.reason, "marketing_limited");
    assert!(refused.message.contains("63049"), "{}", refused.message);
    send("ready-1", "order_ready").await;
    assert_eq!(outcome(&channel, "ready-1").await.expect("utility goes").outcome, "sent");
    channel.stop().await;
}

/// Every send says how Meta prices it, on its authorization and its dispatch outcomes: a reply
/// is a free service message, a utility template is free inside the window and charged outside
/// it, marketing and authentication templates are charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_send_carries_how_meta_prices_it() {
    let channel = Channel::start().await;
    approved(&channel, "order_ready", "en", "utility").await;
    approved(&channel, "weekend_sale", "en", "marketing").await;
    approved(&channel, "login_code", "en", "authentication").await;
    let wrote = unique_customer_in_brazil();
    assert_eq!(channel.sim_inbound(&wrote, "hello").await.1, 200);
    let silent = unique_customer_in_brazil();
    let two = json!({"1": "Ana", "2": "1234"});
    let cases = [
        ("price-reply", &wrote, json!({"body": "Hi Ana!"}), ("service", "free_customer_service")),
        (
            "price-utility-in",
            &wrote,
            json!({"template": {"name": "order_ready", "language": "en", "variables": two}}),
            ("utility", "free_customer_service"),
        ),
        (
            "price-utility-out",
            &silent,
            json!({"template": {"name": "order_ready", "language": "en", "variables": two}}),
            ("utility", "regular"),
        ),
        (
            "price-marketing",
            &wrote,
            json!({"template": {"name": "weekend_sale", "language": "en", "variables": two}}),
            ("marketing", "regular"),
        ),
        (
            "price-otp",
            &silent,
            json!({"template": {"name": "login_code", "language": "en", "variables": {"1": "730114"}}}),
            ("authentication", "regular"),
        ),
    ];
    for (request_id, to, content, _) in &cases {
        let mut request = json!({"request_id": request_id, "from": BUSINESS, "to": to});
        request.as_object_mut().unwrap().extend(content.as_object().unwrap().clone());
        assert_eq!(channel.post_outbound(&request).await.status(), 202, "{request}");
    }
    for (request_id, _, _, (category, kind)) in cases {
        let authorized = authorized(&channel, request_id).await;
        assert_eq!(
            (authorized.pricing_category.as_deref(), authorized.pricing_type.as_deref()),
            (Some(category), Some(kind)),
            "{request_id}"
        );
        let sent = outcome(&channel, request_id).await.expect("sent");
        assert_eq!(
            (sent.pricing_category.as_deref(), sent.pricing_type.as_deref()),
            (Some(category), Some(kind)),
            "{request_id}: on the outcome too"
        );
    }
    channel.stop().await;
}
