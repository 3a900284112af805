//! The Twilio simulator: signed status callbacks (reordered, repeated) and simulated customers
//! through ingress against the real broker; and, on its own, per-sender rate limits, the window
//! rule, undeliverable recipients, fault injection, and the Content API in Twilio's shapes.

use std::collections::HashMap;

use e2e_tests::{unique_customer, Channel, ACCOUNT_SID, AUTH_TOKEN, BUSINESS};
use serde_json::{json, Value};
use wa_platform::topics::{DELIVERY, INBOUND, OUTBOUND_DISPATCHED};
use wa_platform::CancellationToken;
use wa_schemas::{DeliveryStatusReceived, InboundMessageReceived, OutboundDispatched};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn simulated_customers_and_signed_callbacks_reach_the_topics_through_ingress() {
    let channel = Channel::start().await;
    channel.sim_behaviour(json!({"reorder": true, "duplicate": true, "callback_delay_ms": 5})).await;
    let customer = unique_customer();
    let (sid, webhook_status) = channel.sim_inbound(&customer, "Olá, is my order on its way?").await;
    assert_eq!(webhook_status, 200, "ingress accepted the simulator's signed webhook");
    let inbound: InboundMessageReceived =
        channel.await_record(&INBOUND, |r| r.decode::<InboundMessageReceived>().message_sid == sid).await.decode();
    assert_eq!(inbound.from, customer);

    let reply = json!({"request_id": "sim-cb-1", "from": BUSINESS, "to": customer, "body": "Yes, today!"});
    assert_eq!(channel.post_outbound(&reply).await.status(), 202);
    let dispatched: OutboundDispatched = channel.dispatch_outcome("sim-cb-1").await;
    let message_sid = dispatched.message_sid.expect("sent with a sid");

    // Four statuses, each twice, in a random order: every one arrives, signed, with the request id.
    let mut callbacks: Vec<DeliveryStatusReceived> = Vec::new();
    channel
        .await_record(&DELIVERY, |r| {
            let event: DeliveryStatusReceived = r.decode();
            if event.message_sid == message_sid {
                callbacks.push(event);
            }
            callbacks.len() == 8
        })
        .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for callback in &callbacks {
        *counts.entry(callback.message_status.as_str()).or_default() += 1;
        assert_eq!(callback.request_id.as_deref(), Some("sim-cb-1"));
        assert_eq!((callback.from.as_str(), callback.to.as_str()), (BUSINESS, customer.as_str()));
    }
    assert_eq!(counts, HashMap::from([("queued", 2), ("sent", 2), ("delivered", 2), ("read", 2)]));
    let read = callbacks.iter().find(|c| c.message_status == "read").unwrap();
    assert_eq!(read.event_type.as_deref(), Some("READ"));

    // Dispatch folds them: each forward move published once, never backwards, ending at read.
    channel
        .await_record(&OUTBOUND_DISPATCHED, |r| {
            let event: OutboundDispatched = r.decode();
            event.request_id == "sim-cb-1" && event.twilio_status.as_deref() == Some("read")
        })
        .await;
    let moves: Vec<String> = channel
        .read_to_end(&OUTBOUND_DISPATCHED)
        .await
        .iter()
        .map(|r| r.decode::<OutboundDispatched>())
        .filter(|e| e.request_id == "sim-cb-1" && e.outcome == "status_changed")
        .filter_map(|e| e.twilio_status)
        .collect();
    let rank = |status: &str| ["queued", "sent", "delivered", "read"].iter().position(|s| *s == status);
    let ranks: Vec<usize> = moves.iter().map(|m| rank(m).expect("a known status")).collect();
    assert!(ranks.windows(2).all(|w| w[0] < w[1]), "forward only, once each: {moves:?}");
    assert_eq!(moves.last().map(String::as_str), Some("read"), "{moves:?}");
    channel.stop().await;
}

/// A simulator alone, with a client for its API.
struct Sim {
    url: String,
    http: reqwest::Client,
    stop: CancellationToken,
}

impl Sim {
    async fn start() -> Self {
        let bound = twilio_sim::bind(twilio_sim::Config {
            http_addr: e2e_tests::loopback(),
            account_sid: ACCOUNT_SID.to_owned(),
            auth_token: AUTH_TOKEN.to_owned(),
            inbound_webhook_url: "http://127.0.0.1:9/nowhere".to_owned(),
        })
        .await
        .unwrap();
        let url = format!("http://{}", bound.local_addr());
        let stop = CancellationToken::new();
        tokio::spawn(bound.run(stop.clone()));
        Self { url, http: reqwest::Client::new(), stop }
    }

    async fn behave(&self, patch: Value) -> reqwest::StatusCode {
        self.http.patch(format!("{}/sim/behaviour", self.url)).json(&patch).send().await.unwrap().status()
    }

    async fn send(&self, from: &str, to: &str, extra: &[(&str, &str)]) -> reqwest::Result<reqwest::Response> {
        let mut form = vec![("From", from), ("To", to)];
        if !extra.iter().any(|(k, _)| *k == "ContentSid") {
            form.push(("Body", "hello"));
        }
        form.extend_from_slice(extra);
        self.http
            .post(format!("{}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json", self.url))
            .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
            .form(&form)
            .send()
            .await
    }

    /// A Content API call with the account's credentials.
    fn content_api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.url)).basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
    }

    /// Creates content (`POST /v1/Content`) and returns its SID.
    async fn content(&self, request: Value) -> String {
        let response = self.content_api(reqwest::Method::POST, "/v1/Content").json(&request).send().await.unwrap();
        assert_eq!(response.status(), 201, "{request}");
        response.json::<Value>().await.unwrap()["sid"].as_str().unwrap().to_owned()
    }

    async fn fate_of(&self, sid: &str) -> String {
        let messages: Vec<Value> =
            self.http.get(format!("{}/sim/messages", self.url)).send().await.unwrap().json().await.unwrap();
        let message = messages.iter().find(|m| m["sid"] == sid).expect("message recorded");
        message["fate"].as_str().unwrap().to_owned()
    }

    async fn sid(&self, response: reqwest::Response) -> String {
        assert_eq!(response.status(), 201);
        let body: Value = response.json().await.unwrap();
        body["sid"].as_str().unwrap().to_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulator_limits_senders_enforces_the_window_and_injects_faults() {
    let sim = Sim::start().await;
    let customer = "whatsapp:+14157620001";

    // Per-sender rate limit: 5/s here, a bucket of 5 refilled at 5/s (its arithmetic is unit
    // tested on a controlled clock). Sent back to back, the messages beyond the bucket and what
    // refilled while the test sent are refused with 429 and 20429; another sender is not
    // affected.
    assert_eq!(sim.behave(json!({"rate_limit_per_sender": 5})).await, 200);
    let started = std::time::Instant::now();
    let mut responses = Vec::new();
    for _ in 0..8 {
        responses.push(sim.send("whatsapp:+14150000001", customer, &[]).await.unwrap());
    }
    let elapsed = started.elapsed();
    let accepted = responses.iter().filter(|r| r.status() == 201).count();
    let refilled = (elapsed.as_secs_f64() * 5.0).floor() as usize;
    assert!((5..=5 + refilled).contains(&accepted), "{accepted} of 8 accepted in {elapsed:?}");
    match responses.into_iter().find(|r| r.status() != 201) {
        Some(refused) => {
            assert_eq!(refused.status(), 429);
            let error: Value = refused.json().await.unwrap();
            assert_eq!(error["code"], 20429);
        }
        None => assert!(elapsed.as_secs_f64() >= 0.6, "8 of 8 accepted in {elapsed:?}"),
    }
    assert_eq!(sim.send("whatsapp:+14150000002", customer, &[]).await.unwrap().status(), 201);
    assert_eq!(sim.behave(json!({"rate_limit_per_sender": 0})).await, 200);

    // The window: free-form to a customer who never wrote fails with 63016; an approved
    // template does not, unapproved content does; once the customer writes (through the
    // simulator) free-form goes through.
    assert_eq!(sim.behave(json!({"enforce_window": true})).await, 200);
    let cold = sim.sid(sim.send(BUSINESS, customer, &[]).await.unwrap()).await;
    assert_eq!(sim.fate_of(&cold).await, "failed");
    let approved = e2e_tests::sim_approved_content(&sim.http, &sim.url).await;
    let template = sim.sid(sim.send(BUSINESS, customer, &[("ContentSid", &approved)]).await.unwrap()).await;
    assert_eq!(sim.fate_of(&template).await, "read");
    let draft = sim.content(json!({"language": "en", "types": {"twilio/text": {"body": "Hello"}}})).await;
    let unapproved = sim.sid(sim.send(BUSINESS, customer, &[("ContentSid", &draft)]).await.unwrap()).await;
    assert_eq!(sim.fate_of(&unapproved).await, "failed", "unapproved content outside the window");
    // A ContentSid the account does not hold is refused, as Twilio does (21655).
    let unknown = sim.send(BUSINESS, customer, &[("ContentSid", "HX0123456789abcdef0123456789abcdef")]).await.unwrap();
    assert_eq!(unknown.status(), 400);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], 21655);
    let wrote: Value = sim
        .http
        .post(format!("{}/sim/inbound", sim.url))
        .json(&json!({"from": customer, "to": BUSINESS, "body": "hi"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(wrote["webhook_status"], 0, "nothing listens at the configured webhook URL here");
    let warm = sim.sid(sim.send(BUSINESS, customer, &[]).await.unwrap()).await;
    assert_eq!(sim.fate_of(&warm).await, "read");

    // An unreachable recipient ends undelivered.
    assert_eq!(sim.behave(json!({"undeliverable": {"whatsapp:+14157620009": 63024}})).await, 200);
    let lost = sim.sid(sim.send(BUSINESS, "whatsapp:+14157620009", &[("ContentSid", &approved)]).await.unwrap()).await;
    assert_eq!(sim.fate_of(&lost).await, "undelivered");

    // Faults: errors in Twilio's shape, then a dropped connection after the message was taken.
    let faults = json!({"faults": {"messages": {"error_rate": 1.0, "error_status": 500}}});
    assert_eq!(sim.behave(faults).await, 200);
    let failed = sim.send(BUSINESS, customer, &[]).await.unwrap();
    assert_eq!(failed.status(), 500);
    assert_eq!(failed.json::<Value>().await.unwrap()["code"], 20500);
    assert_eq!(sim.behave(json!({"faults": {"messages": {"drop_rate": 1.0}}})).await, 200);
    let before: Vec<Value> =
        sim.http.get(format!("{}/sim/messages", sim.url)).send().await.unwrap().json().await.unwrap();
    let dropped = match sim.send(BUSINESS, customer, &[]).await {
        Ok(response) => response.bytes().await.is_err(),
        Err(_) => true,
    };
    assert!(dropped, "the client never gets an answer");
    let after: Vec<Value> =
        sim.http.get(format!("{}/sim/messages", sim.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(after.len(), before.len() + 1, "yet the message was taken: the send is in doubt");

    // A behaviour that does not exist is refused with the reason.
    assert_eq!(sim.behave(json!({"reoder": true})).await, 422);
    sim.stop.cancel();
}

/// Every content type the channel uses, created, fetched, edited, listed in pages, submitted
/// with its category and moved to another by Meta, in the shapes of Twilio's Content API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_simulated_content_api_holds_every_content_type_as_twilio_does() {
    use reqwest::Method;
    let sim = Sim::start().await;
    let actions = json!([{"type": "QUICK_REPLY", "title": "Yes", "id": "yes"}]);
    let kinds = [
        json!({"twilio/text": {"body": "Hi {{1}}, it ships."}}),
        json!({"twilio/media": {"body": "Your invoice", "media": ["https://example.com/{{1}}.pdf"]}}),
        json!({"twilio/quick-reply": {"body": "Is {{1}} right?", "actions": actions}}),
        json!({"twilio/call-to-action": {"body": "Track {{1}} here.", "actions": [{"type": "URL", "title": "Track", "url": "https://example.com/t/{{1}}"}]}}),
        json!({"twilio/list-picker": {"body": "Pick a slot for {{1}}.", "button": "Slots", "items": [{"id": "a", "item": "Monday"}]}}),
        json!({"twilio/card": {"title": "Order {{1}}", "media": ["https://example.com/c.jpg"], "actions": [{"type": "URL", "title": "Open", "url": "https://example.com"}]}}),
        json!({"whatsapp/card": {"body": "Order {{1}} shipped.", "footer": "Thanks", "media": ["https://example.com/c.jpg"]}}),
        json!({"whatsapp/authentication": {"add_security_recommendation": true, "code_expiration_minutes": 5, "actions": [{"type": "COPY_CODE", "copy_code_text": "Copy code"}]}}),
    ];
    let mut sids = Vec::new();
    for types in &kinds {
        let request = json!({"friendly_name": "kind", "language": "en", "variables": {"1": "1234"}, "types": types});
        let sid = sim.content(request).await;
        assert!(wa_schemas::ContentSid::parse(&sid).is_ok(), "{sid}");
        let fetched: Value =
            sim.content_api(Method::GET, &format!("/v1/Content/{sid}")).send().await.unwrap().json().await.unwrap();
        assert_eq!(
            (&fetched["types"], &fetched["language"], &fetched["variables"]["1"]),
            (types, &json!("en"), &json!("1234"))
        );
        assert_eq!(
            fetched["links"]["approval_create"],
            format!("https://content.twilio.com/v1/Content/{sid}/ApprovalRequests/whatsapp")
        );
        sids.push(sid);
    }
    // Refusals in Twilio's shape: no types, a type Twilio does not have, no language.
    for bad in [
        json!({"language": "en", "types": {}}),
        json!({"language": "en", "types": {"twilio/fax": {}}}),
        json!({"types": {"twilio/text": {"body": "x"}}}),
    ] {
        let response = sim.content_api(Method::POST, "/v1/Content").json(&bad).send().await.unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        assert_eq!(response.json::<Value>().await.unwrap()["code"], 20001);
    }
    assert_eq!(
        sim.content_api(Method::GET, "/v1/Content/HX0123456789abcdef0123456789abcdef").send().await.unwrap().status(),
        404
    );

    // An edit in Twilio keeps the SID.
    let edited = json!({"twilio/text": {"body": "Hello {{1}}, it is on its way."}});
    let response = sim
        .content_api(Method::PUT, &format!("/v1/Content/{}", sids[0]))
        .json(&json!({"types": edited}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["types"], edited);

    // Pages of 3, followed by next_page_url: every content once.
    let mut seen = Vec::new();
    let mut next = Some("/v1/Content?PageSize=3".to_owned());
    while let Some(path) = next {
        let page: Value = sim.content_api(Method::GET, &path).send().await.unwrap().json().await.unwrap();
        seen.extend(page["contents"].as_array().unwrap().iter().map(|c| c["sid"].as_str().unwrap().to_owned()));
        next = page["meta"]["next_page_url"]
            .as_str()
            .map(|url| url.trim_start_matches("https://content.twilio.com").to_owned());
    }
    seen.sort();
    let mut expected = sids.clone();
    expected.sort();
    assert_eq!(seen, expected);

    // Approval: a list picker is only ever sent in session, and cannot be submitted; a text
    // is submitted with its category, which Meta may change.
    let submit = |sid: &str| {
        sim.content_api(Method::POST, &format!("/v1/Content/{sid}/ApprovalRequests/whatsapp"))
            .json(&json!({"name": "kind", "category": "UTILITY"}))
    };
    assert_eq!(submit(&sids[4]).send().await.unwrap().status(), 400);
    let created: Value = submit(&sids[0]).send().await.unwrap().json().await.unwrap();
    assert_eq!((&created["status"], &created["category"]), (&json!("received"), &json!("UTILITY")));
    let moved = sim
        .http
        .post(format!("{}/sim/content/{}/approval", sim.url, sids[0]))
        .json(&json!({"status": "approved", "category": "marketing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status(), 200);
    let listed: Value =
        sim.content_api(Method::GET, "/v1/ContentAndApprovals?PageSize=50").send().await.unwrap().json().await.unwrap();
    let item = listed["contents"].as_array().unwrap().iter().find(|c| c["sid"] == sids[0].as_str()).unwrap().clone();
    assert_eq!(
        (&item["approval_requests"]["status"], &item["approval_requests"]["category"]),
        (&json!("approved"), &json!("MARKETING"))
    );
    assert_eq!(item["types"], edited);
    let unsubmitted =
        listed["contents"].as_array().unwrap().iter().find(|c| c["sid"] == sids[1].as_str()).unwrap().clone();
    assert_eq!(unsubmitted["approval_requests"]["status"], "unsubmitted");
    sim.stop.cancel();
}
