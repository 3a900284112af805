//! Twilio's Messages API: creating a message (with the sender's rate limit, the window rule,
//! faults and status callbacks) and listing an account's messages as Twilio pages them.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::behaviour::Injected;
use crate::callbacks::{self, Fate, Plan};
use crate::{dropped_connection, injected_error, messages_account, twilio_error, Sim, SimMessage};

pub(crate) async fn create_message(
    State(sim): State<Arc<Sim>>,
    Path(account_sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let injected = sim.inject("messages").await;
    if let Injected::Error(status) = injected {
        return injected_error(status);
    }
    if let Some(refused) = messages_account(&sim, &headers, &account_sid) {
        return refused;
    }
    let params: Vec<(String, String)> =
        form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let get = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty());
    let Some(to) = get("To") else {
        return twilio_error(StatusCode::BAD_REQUEST, 21604, "A 'To' phone number is required.");
    };
    let from = get("From");
    let service = get("MessagingServiceSid");
    if from.is_none() && service.is_none() {
        return twilio_error(StatusCode::BAD_REQUEST, 21603, "A 'From' phone number is required.");
    }
    let media: Vec<&str> = params.iter().filter(|(k, _)| k == "MediaUrl").map(|(_, v)| v.as_str()).collect();
    if get("Body").is_none() && media.is_empty() && get("ContentSid").is_none() {
        return twilio_error(StatusCode::BAD_REQUEST, 21619, "A text message body or media urls must be specified.");
    }
    let content = get("ContentSid").map(|sid| (sid, crate::content::known_content(&sim, sid)));
    if let Some((sid, None)) = content {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            21655,
            &format!("The ContentSid {sid} is invalid: this account has no such content"),
        );
    }
    let behaviour = sim.behaviour();
    if let Some(code) = behaviour.refuse.get(to) {
        let message = match code {
            21211 => format!("The 'To' number {to} is not a valid phone number."),
            21610 => "Attempt to send to unsubscribed recipient".to_owned(),
            63014 => "Message could not be delivered because the user blocked the business".to_owned(),
            _ => format!("The message to {to} was refused."),
        };
        return twilio_error(StatusCode::BAD_REQUEST, *code, &message);
    }
    let sender = service.or(from).unwrap_or_default();
    let now = std::time::Instant::now();
    if !sim.rate_limits.lock().expect("rate limits lock").try_acquire(sender, behaviour.rate_limit_per_sender, now) {
        metrics::counter!(wa_platform::metrics::SIM_RATE_LIMITED).increment(1);
        sim.stats.lock().expect("stats lock").rate_limited += 1;
        return twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
    }
    // WhatsApp lets unapproved content (session types) go only inside the window.
    let free_form = !matches!(content, Some((_, Some(true))));
    let fate = if behaviour.enforce_window
        && free_form
        && !sim.windows.lock().expect("windows lock").open(from.unwrap_or_default(), to, now)
    {
        Fate::Failed(63016)
    } else if let Some(code) = behaviour.undeliverable.get(to) {
        Fate::Undelivered(*code)
    } else {
        Fate::Read
    };
    let sid = format!("SM{}", uuid::Uuid::new_v4().simple());
    let now = chrono::Utc::now();
    // Twilio's dates are RFC 2822 in GMT ("+0000"), whole seconds.
    let date = now.format("%a, %d %b %Y %H:%M:%S +0000").to_string();
    let resource = json!({
        "account_sid": account_sid,
        "api_version": "2010-04-01",
        "body": get("Body").unwrap_or(""),
        "date_created": date,
        // The simulator hands a message to WhatsApp at once.
        "date_sent": date,
        "date_updated": date,
        "direction": "outbound-api",
        "error_code": null,
        "error_message": null,
        "from": from.unwrap_or(""),
        "messaging_service_sid": service,
        "num_media": media.len().to_string(),
        "num_segments": "1",
        "price": null,
        "price_unit": "USD",
        "sid": sid,
        "status": if service.is_some() && from.is_none() { "accepted" } else { "queued" },
        "subresource_uris": { "media": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}/Media.json") },
        "to": to,
        "uri": format!("/2010-04-01/Accounts/{account_sid}/Messages/{sid}.json"),
    });
    let message = SimMessage {
        sid: sid.clone(),
        account_sid: account_sid.clone(),
        params: params.clone(),
        received_at: now.to_rfc3339(),
        fate: fate.final_status().to_owned(),
        callbacks: Vec::new(),
        answered: match injected {
            Injected::ErrorAfterCreate => "error_after_create",
            Injected::Drop => "dropped",
            _ => "201",
        }
        .to_owned(),
        resource: resource.clone(),
    };
    sim.messages.lock().expect("messages lock").push(message);
    sim.stats.lock().expect("stats lock").messages += 1;
    metrics::counter!(wa_platform::metrics::SIM_MESSAGES_ACCEPTED).increment(1);
    if let Some(url) = get("StatusCallback") {
        let mut identity = vec![
            ("MessageSid".to_owned(), sid.clone()),
            ("SmsSid".to_owned(), sid.clone()),
            ("AccountSid".to_owned(), account_sid),
            ("From".to_owned(), from.unwrap_or_default().to_owned()),
            ("To".to_owned(), to.to_owned()),
        ];
        if let Some(service) = service {
            identity.push(("MessagingServiceSid".to_owned(), service.to_owned()));
        }
        let plan = Plan { url: url.to_owned(), identity, fate };
        let sim = sim.clone();
        tokio::spawn(async move {
            let status_of = |sim: &Sim, status: &str| {
                let mut messages = sim.messages.lock().expect("messages lock");
                if let Some(message) = messages.iter_mut().find(|m| m.sid == sid) {
                    message.resource["status"] = json!(status);
                }
            };
            let results = callbacks::send(&sim.client, &sim.config.auth_token, &plan, &behaviour, |status| {
                status_of(&sim, status)
            })
            .await;
            let mut messages = sim.messages.lock().expect("messages lock");
            if let Some(message) = messages.iter_mut().find(|m| m.sid == sid) {
                message.callbacks = results;
            }
        });
    }
    match injected {
        Injected::Drop => dropped_connection(),
        Injected::ErrorAfterCreate => injected_error(500),
        _ => (StatusCode::CREATED, Json(resource)).into_response(),
    }
}

/// The day of a `DateSent` filter value: `YYYY-MM-DD`, or a date-time (Twilio's helper
/// libraries send ISO 8601), whose day counts.
fn filter_day(value: &str) -> Option<chrono::NaiveDate> {
    let value = value.trim();
    chrono::NaiveDate::parse_from_str(value.get(..10)?, "%Y-%m-%d").ok()
}

/// The day (GMT) of an RFC 2822 date of a message resource.
fn resource_day(value: &serde_json::Value) -> Option<chrono::NaiveDate> {
    let text = value.as_str()?;
    chrono::DateTime::parse_from_rfc2822(text).ok().map(|at| at.with_timezone(&chrono::Utc).date_naive())
}

/// `GET /2010-04-01/Accounts/{AccountSid}/Messages.json`: the account's messages, newest
/// first, filtered by `To`, `From` and `DateSent` (by day; `DateSent>` on or after,
/// `DateSent<` on or before), in pages of `PageSize` (default 50, at most 1000) with
/// `PageToken` (the offset) and Twilio's page fields.
pub(crate) async fn list_messages_api(
    State(sim): State<Arc<Sim>>,
    Path(account_sid): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    match sim.inject("messages_list").await {
        Injected::Error(status) => return injected_error(status),
        Injected::ErrorAfterCreate => return injected_error(500),
        Injected::Drop => return dropped_connection(),
        Injected::None => {}
    }
    if let Some(refused) = messages_account(&sim, &headers, &account_sid) {
        return refused;
    }
    let mut days = Vec::new();
    for (name, compare) in [
        ("DateSent", std::cmp::Ordering::Equal),
        ("DateSent>", std::cmp::Ordering::Greater),
        ("DateSent<", std::cmp::Ordering::Less),
    ] {
        if let Some(value) = query.get(name) {
            let Some(day) = filter_day(value) else {
                return twilio_error(StatusCode::BAD_REQUEST, 20001, &format!("Invalid {name}: {value}"));
            };
            days.push((compare, day));
        }
    }
    let page_size: usize = query.get("PageSize").and_then(|v| v.parse().ok()).unwrap_or(50).clamp(1, 1000);
    let offset: usize =
        query.get("PageToken").and_then(|v| v.strip_prefix("PA")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let wanted =
        |field: &str, value: &serde_json::Value| query.get(field).is_none_or(|want| value.as_str() == Some(want));
    let matching: Vec<serde_json::Value> = sim
        .messages
        .lock()
        .expect("messages lock")
        .iter()
        .rev()
        .map(|message| message.resource.clone())
        .filter(|resource| wanted("To", &resource["to"]) && wanted("From", &resource["from"]))
        .filter(|resource| {
            let sent = resource_day(&resource["date_sent"]);
            days.iter().all(|(compare, day)| {
                sent.is_some_and(|sent| match compare {
                    std::cmp::Ordering::Equal => sent == *day,
                    std::cmp::Ordering::Greater => sent >= *day,
                    std::cmp::Ordering::Less => sent <= *day,
                })
            })
        })
        .collect();
    let page: Vec<serde_json::Value> = matching.iter().skip(offset).take(page_size).cloned().collect();
    let base = format!("/2010-04-01/Accounts/{account_sid}/Messages.json");
    let filters: String = {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        for name in ["To", "From", "DateSent", "DateSent<", "DateSent>"] {
            if let Some(value) = query.get(name) {
                serializer.append_pair(name, value);
            }
        }
        serializer.append_pair("PageSize", &page_size.to_string());
        serializer.finish()
    };
    let next = (offset + page_size < matching.len())
        .then(|| format!("{base}?{filters}&Page={}&PageToken=PA{}", offset / page_size + 1, offset + page_size));
    Json(json!({
        "messages": page,
        "end": (offset + page.len()).saturating_sub(1),
        "first_page_uri": format!("{base}?{filters}&Page=0"),
        "next_page_uri": next,
        "page": offset / page_size,
        "page_size": page_size,
        "previous_page_uri": null,
        "start": offset,
        "uri": format!("{base}?{filters}&Page={}&PageToken=PA{offset}", offset / page_size),
    }))
    .into_response()
}
