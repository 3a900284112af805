//! The channel's HTTP faces as tests use them: the simulator's controls, signed webhooks, the
//! CRM API, the admin API and every service's ops endpoints.

use wa_platform::topics::TopicSpec;
use wa_twilio::signature as twilio_signature;

use crate::{Channel, ACCOUNT_SID, ADMIN_TOKEN, API_TOKEN, AUTH_TOKEN, BUSINESS, SESSION_TOKEN};

/// Creates content at the simulator `sim_url` as Twilio's Content API would (one variable,
/// `{{1}}`), and has Meta approve it: the Content SID of an approved template, which the
/// simulated Messages API accepts at any time.
pub async fn sim_approved_content(http: &reqwest::Client, sim_url: &str) -> String {
    let created: serde_json::Value = sim_json(
        http.post(format!("{sim_url}/v1/Content")).basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN)).json(&serde_json::json!({
            "friendly_name": "order_update", "language": "en", "variables": {"1": "1234"},
            "types": {"twilio/text": {"body": "Your order {{1}} ships today."}},
        })),
    )
    .await;
    let sid = created["sid"].as_str().expect("the simulator created content").to_owned();
    let submitted = http
        .post(format!("{sim_url}/v1/Content/{sid}/ApprovalRequests/whatsapp"))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .json(&serde_json::json!({"name": "order_update", "category": "UTILITY"}))
        .send()
        .await
        .expect("simulator answers");
    assert_eq!(submitted.status(), 201, "{}", submitted.text().await.unwrap_or_default());
    let approved = http
        .post(format!("{sim_url}/sim/content/{sid}/approval"))
        .json(&serde_json::json!({"status": "approved"}))
        .send()
        .await
        .expect("simulator answers");
    assert!(approved.status().is_success());
    sid
}

impl Channel {
    /// An approved template's Content SID at this channel's simulator
    /// ([`sim_approved_content`]).
    pub async fn sim_approved_content(&self) -> String {
        sim_approved_content(&self.http, &self.sim_url).await
    }

    /// Changes the simulator's behaviour (`PATCH /sim/behaviour`), e.g.
    /// `{"reorder": true, "duplicate": true}`.
    pub async fn sim_behaviour(&self, patch: serde_json::Value) {
        let response = self
            .http
            .patch(format!("{}/sim/behaviour", self.sim_url))
            .json(&patch)
            .send()
            .await
            .expect("simulator answers");
        assert!(
            response.status().is_success(),
            "simulator refused {patch}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// A customer's message sent through the simulator, which posts it to ingress signed, as
    /// Twilio would; returns the MessageSid and ingress's status.
    pub async fn sim_inbound(&self, customer: &str, body: &str) -> (String, u16) {
        let answer =
            self.sim_inbound_request(serde_json::json!({"from": customer, "to": BUSINESS, "body": body})).await;
        (
            answer["message_sid"].as_str().unwrap_or_default().to_owned(),
            answer["webhook_status"].as_u64().unwrap_or(0) as u16,
        )
    }

    /// `POST /sim/inbound` with `request` (media, more parameters, ...), posted to this
    /// channel's ingress; the simulator's whole answer.
    pub async fn sim_inbound_request(&self, mut request: serde_json::Value) -> serde_json::Value {
        request["url"] = format!("{}/twilio/inbound", self.ingress_url).into();
        sim_json(self.http.post(format!("{}/sim/inbound", self.sim_url)).json(&request)).await
    }

    /// An HTTP client for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request to template-approval's admin API, with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let base = &self.service_urls[template_approval::SERVICE];
        self.http.request(method, format!("{base}{path}")).bearer_auth(ADMIN_TOKEN)
    }

    /// Sets a submitted content's WhatsApp approval status in the simulator, as Meta's decision
    /// would.
    pub async fn sim_set_approval(&self, content_sid: &str, status: &str) {
        self.sim_meta(content_sid, serde_json::json!({ "status": status, "rejection_reason": "" })).await;
    }

    /// Meta's change to a submitted content in the simulator: `{"status": …}` and/or
    /// `{"category": …}` (a re-categorization).
    pub async fn sim_meta(&self, content_sid: &str, change: serde_json::Value) {
        let response = self
            .http
            .post(format!("{}/sim/content/{content_sid}/approval", self.sim_url))
            .json(&change)
            .send()
            .await
            .expect("simulator answers");
        assert!(
            response.status().is_success(),
            "simulator refused {change}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// A Content API call to the simulator with the account's credentials, as an edit in
    /// Twilio's console or another tool would make it.
    pub fn sim_content_api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.sim_url)).basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
    }

    /// The full name of a topic of this channel.
    pub fn topic(&self, spec: &TopicSpec) -> String {
        self.kafka.topic(spec)
    }

    /// An inbound WhatsApp webhook's parameters, as Twilio posts them.
    pub fn inbound_params(&self, message_sid: &str, customer: &str, body: &str) -> Vec<(String, String)> {
        [
            ("SmsMessageSid", message_sid),
            ("NumMedia", "0"),
            ("ProfileName", "Test Customer"),
            ("MessageType", "text"),
            ("SmsSid", message_sid),
            ("WaId", customer.trim_start_matches("whatsapp:+")),
            ("SmsStatus", "received"),
            ("Body", body),
            ("To", BUSINESS),
            ("NumSegments", "1"),
            ("ReferralNumMedia", "0"),
            ("MessageSid", message_sid),
            ("AccountSid", ACCOUNT_SID),
            ("From", customer),
            ("ApiVersion", "2010-04-01"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Posts a webhook to ingress with the given signature (`None`: signed correctly).
    pub async fn post_inbound(&self, params: &[(String, String)], signature: Option<&str>) -> reqwest::Response {
        let url = format!("{}/twilio/inbound", self.ingress_url);
        let signature = signature.map_or_else(|| twilio_signature::compute(AUTH_TOKEN, &url, params), str::to_owned);
        self.http
            .post(&url)
            .header(twilio_signature::HEADER, signature)
            .form(params)
            .send()
            .await
            .expect("ingress answers")
    }

    /// Posts a CRM request to `/v1/outbound`.
    pub async fn post_outbound(&self, request: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/outbound", self.ingress_url))
            .bearer_auth(API_TOKEN)
            .json(request)
            .send()
            .await
            .expect("ingress answers")
    }

    /// Posts a CRM request as a CRM does: while ingress answers 503 (the broker not serving,
    /// or overloaded), the same request, with the same `request_id`, is sent again after the
    /// answer's `Retry-After`, for up to [`crate::EVENT_TIMEOUT`]. The last answer is returned.
    pub async fn post_outbound_retrying(&self, request: &serde_json::Value) -> reqwest::Response {
        let deadline = tokio::time::Instant::now() + crate::EVENT_TIMEOUT;
        loop {
            let response = self.post_outbound(request).await;
            if response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE || tokio::time::Instant::now() >= deadline
            {
                return response;
            }
            let retry_after = response
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(1);
            tokio::time::sleep(std::time::Duration::from_secs(retry_after)).await;
        }
    }

    /// Every message the simulator accepted.
    pub async fn sim_messages(&self) -> Vec<serde_json::Value> {
        sim_json(self.http.get(format!("{}/sim/messages", self.sim_url))).await
    }

    /// A GET on a component's HTTP port.
    pub async fn get(&self, service: &str, path: &str) -> reqwest::Response {
        let base = self.service_urls.get(service).unwrap_or_else(|| panic!("no service {service}"));
        // The session query needs its token; the ops endpoints ignore it.
        self.http.get(format!("{base}{path}")).bearer_auth(SESSION_TOKEN).send().await.expect("service answers")
    }
}

/// The simulator's JSON answer to `request`.
async fn sim_json<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> T {
    request.send().await.expect("simulator answers").json().await.expect("simulator answers json")
}
