//! Test data as the world has it: the business sender, credentials, customers with valid
//! E.164 numbers, and events built the way the services build them.

use std::time::Duration;

use wa_twilio::signature as twilio_signature;

/// The business's WhatsApp sender used by tests.
pub const BUSINESS: &str = "whatsapp:+14155238886";
/// The simulator's and ingress's auth token in tests.
pub const AUTH_TOKEN: &str = "e2e-auth-token";
/// The account in tests.
pub const ACCOUNT_SID: &str = "AC11111111111111111111111111111111";
/// The CRM's bearer token on ingress's API in tests.
pub const API_TOKEN: &str = "e2e-crm-token";
/// The session query's bearer token in tests.
pub const SESSION_TOKEN: &str = "e2e-session-token";
/// The admin API token of template-approval in tests.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
/// Language fallback chains in tests.
pub const FALLBACKS: &str = "pt_BR:pt:en";
/// Messages per second dispatch sends per sender in tests.
pub const DISPATCH_RATE_PER_SENDER: f64 = 10.0;
/// How long a test waits for an event before it fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// A customer address no other test uses.
pub fn unique_customer() -> String {
    // A valid North American number, as strict validators want it: an assigned California area
    // code, an exchange starting with 2-9 (never 555), any line number. 80 million of them.
    const AREA_CODES: [u32; 10] = [415, 628, 510, 650, 408, 707, 925, 209, 559, 805];
    let n = uuid::Uuid::new_v4().as_u128();
    let area = AREA_CODES[(n % 10) as usize];
    let exchange = 200 + (n / 10) % 800;
    let exchange = if exchange == 555 { 556 } else { exchange };
    format!("whatsapp:+1{area}{exchange:03}{:04}", (n / 8_000) % 10_000)
}

/// A customer in Brazil, unique to the test (where Meta still delivers marketing templates): a
/// valid São Paulo mobile number, 11 9 and eight digits.
pub fn unique_customer_in_brazil() -> String {
    let n = uuid::Uuid::new_v4().as_u128();
    format!("whatsapp:+55119{:08}", 60_000_000 + n % 40_000_000)
}

/// A customer's message to [`BUSINESS`] at `at`, as ingress would publish it.
pub fn customer_message(customer: &str, at: i64, body: &str) -> wa_schemas::InboundMessageReceived {
    wa_schemas::InboundMessageReceived {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: at,
        conversation_id: wa_schemas::conversation_id(BUSINESS, customer),
        message_sid: format!("SM{}", uuid::Uuid::new_v4().simple()),
        account_sid: ACCOUNT_SID.to_owned(),
        messaging_service_sid: None,
        from: customer.to_owned(),
        to: BUSINESS.to_owned(),
        body: body.to_owned(),
        ..Default::default()
    }
}

/// An agent's request to `customer`: free-form `body`, or a template.
pub fn outbound_request(
    request_id: &str,
    customer: &str,
    body: Option<&str>,
    template: Option<wa_schemas::TemplateRequest>,
) -> wa_schemas::OutboundRequested {
    wa_schemas::OutboundRequested {
        event_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, request_id.as_bytes()).to_string(),
        occurred_at: wa_platform::now_millis(),
        conversation_id: wa_schemas::conversation_id(BUSINESS, customer),
        request_id: request_id.to_owned(),
        from: BUSINESS.to_owned(),
        to: customer.to_owned(),
        body: body.map(str::to_owned),
        media_urls: Vec::new(),
        template,
        metadata: Default::default(),
    }
}

/// A message of the business to `customer` that Twilio took at `at`, as dispatch would publish
/// its `sent` outcome.
pub fn sent_message(customer: &str, at: i64) -> wa_schemas::OutboundDispatched {
    let mut sent = refused_send(customer, at, 0);
    sent.outcome = "sent".to_owned();
    sent.message_sid = Some(format!("SM{}", uuid::Uuid::new_v4().simple()));
    (sent.error_code, sent.error_message, sent.failure_reason) = (None, None, None);
    sent
}

/// A send to `customer` that Twilio refused with `error_code`, as dispatch would publish it.
pub fn refused_send(customer: &str, at: i64, error_code: i32) -> wa_schemas::OutboundDispatched {
    wa_schemas::OutboundDispatched {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: at,
        conversation_id: wa_schemas::conversation_id(BUSINESS, customer),
        request_id: uuid::Uuid::new_v4().to_string(),
        from: BUSINESS.to_owned(),
        to: customer.to_owned(),
        outcome: "failed".to_owned(),
        message_sid: None,
        twilio_status: None,
        error_code: Some(error_code),
        error_message: Some("refused".to_owned()),
        failure_reason: Some("unsubscribed".to_owned()),
        attempts: 1,
        claim_id: None,
        claimed_by: None,
        pricing_category: None,
        pricing_type: None,
        metadata: Default::default(),
    }
}

/// A send of the approved template `content_sid` from `from` to `to` cleared for dispatch, as
/// template-approval would publish it; `variable` fills its one variable.
pub fn template_authorization(
    request_id: &str,
    (from, to): (&str, &str),
    content_sid: &str,
    variable: &str,
) -> wa_schemas::OutboundAuthorized {
    wa_schemas::OutboundAuthorized {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: wa_platform::now_millis(),
        conversation_id: wa_schemas::conversation_id(from, to),
        request_id: request_id.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        body: None,
        media_urls: vec![],
        window_expires_at: None,
        content_sid: Some(content_sid.to_owned()),
        content_variables: Some(serde_json::json!({ "1": variable }).to_string()),
        template_name: Some("order_update".to_owned()),
        template_language: Some("en".to_owned()),
        preview: None,
        rule: Some(wa_schemas::AuthorizationRule::ApprovedTemplate.as_str().to_owned()),
        pricing_category: None,
        pricing_type: None,
        metadata: Default::default(),
    }
}

/// The request id on a message the simulator received (dispatch puts it on the
/// `StatusCallback` URL).
pub fn sim_request_id(message: &serde_json::Value) -> Option<String> {
    let params = message["params"].as_array()?;
    let url = params.iter().find(|p| p[0] == "StatusCallback")?[1].as_str()?;
    twilio_signature::query_param(url, "request_id")
}
