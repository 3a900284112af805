//! Twilio's Content API, as far as WhatsApp approvals go: submitting a content for approval,
//! fetching its approval, the paged `ContentAndApprovals` list; and `POST
//! /sim/content/{sid}/approval`, where tests play Meta's decisions.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::behaviour::Injected;
use crate::{authenticated, dropped_connection, injected_error, twilio_error, Sim};

/// The WhatsApp approval of one content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Approval {
    #[serde(default)]
    name: String,
    #[serde(default)]
    category: String,
    status: String,
    #[serde(default)]
    rejection_reason: String,
}

impl Approval {
    fn json(&self) -> serde_json::Value {
        json!({
            "type": "whatsapp",
            "name": self.name,
            "category": self.category,
            "content_type": "twilio/text",
            "status": self.status,
            "rejection_reason": self.rejection_reason,
            "allow_category_change": true,
        })
    }
}

/// What every Content API call goes through first: injected faults, then authentication.
async fn content_prelude(sim: &Sim, headers: &HeaderMap) -> Option<Response> {
    match sim.inject("content").await {
        Injected::Error(status) => return Some(injected_error(status)),
        Injected::ErrorAfterCreate => return Some(injected_error(500)),
        Injected::Drop => return Some(dropped_connection()),
        Injected::None => {}
    }
    (!authenticated(sim, headers)).then(|| twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"))
}

fn content_not_found(sid: &str) -> Response {
    twilio_error(StatusCode::NOT_FOUND, 20404, &format!("The requested resource /v1/Content/{sid} was not found"))
}

pub(crate) async fn submit_approval(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
    }
    if wa_schemas::ContentSid::parse(&sid).is_err() {
        return content_not_found(&sid);
    }
    #[derive(Deserialize)]
    struct Submission {
        name: String,
        category: String,
    }
    let Ok(submission) = serde_json::from_slice::<Submission>(&body) else {
        return twilio_error(
            StatusCode::BAD_REQUEST,
            20001,
            "Invalid approval request: name and category are required",
        );
    };
    let approval = Approval {
        name: submission.name,
        category: submission.category,
        status: "received".to_owned(),
        rejection_reason: String::new(),
    };
    let json = approval.json();
    sim.approvals.lock().expect("approvals lock").insert(sid, approval);
    let created = json!({
        "name": json["name"], "category": json["category"], "content_type": json["content_type"],
        "status": json["status"], "rejection_reason": json["rejection_reason"], "allow_category_change": true,
    });
    (StatusCode::CREATED, Json(created)).into_response()
}

pub(crate) async fn fetch_approval(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
    }
    let Some(approval) = sim.approvals.lock().expect("approvals lock").get(&sid).cloned() else {
        return content_not_found(&sid);
    };
    Json(json!({
        "sid": sid,
        "account_sid": sim.config.account_sid,
        "whatsapp": approval.json(),
        "url": format!("https://content.twilio.com/v1/Content/{sid}/ApprovalRequests"),
    }))
    .into_response()
}

/// `GET /v1/ContentAndApprovals`: every submitted content with its WhatsApp approval, in pages
/// (`PageSize`, default 50, at most 1000; `PageToken` is the offset), with Twilio's `meta`.
pub(crate) async fn list_approvals(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
    }
    let page_size: usize = query.get("PageSize").and_then(|v| v.parse().ok()).unwrap_or(50).clamp(1, 1000);
    let offset: usize =
        query.get("PageToken").and_then(|v| v.strip_prefix("PA")).and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut approvals: Vec<(String, Approval)> =
        sim.approvals.lock().expect("approvals lock").iter().map(|(sid, a)| (sid.clone(), a.clone())).collect();
    approvals.sort_by(|a, b| a.0.cmp(&b.0));
    let base = "https://content.twilio.com/v1/ContentAndApprovals";
    let contents: Vec<serde_json::Value> = approvals
        .iter()
        .skip(offset)
        .take(page_size)
        .map(|(sid, approval)| {
            json!({
                "sid": sid,
                "account_sid": sim.config.account_sid,
                "friendly_name": approval.name,
                "language": "en",
                "variables": {},
                "types": {},
                "approval_requests": approval.json(),
            })
        })
        .collect();
    let next = (offset + page_size < approvals.len())
        .then(|| format!("{base}?PageSize={page_size}&PageToken=PA{}", offset + page_size));
    Json(json!({
        "contents": contents,
        "meta": {
            "page": offset / page_size,
            "page_size": page_size,
            "first_page_url": format!("{base}?PageSize={page_size}&Page=0"),
            "previous_page_url": null,
            "next_page_url": next,
            "url": format!("{base}?PageSize={page_size}&PageToken=PA{offset}"),
            "key": "contents",
        },
    }))
    .into_response()
}

/// Test control: Meta's decision on a content (`approved`, `rejected`, `paused`, `disabled`...).
pub(crate) async fn set_approval(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    Json(change): Json<Approval>,
) -> Response {
    let mut approvals = sim.approvals.lock().expect("approvals lock");
    let approval = approvals.entry(sid).or_insert_with(|| change.clone());
    approval.status = change.status;
    approval.rejection_reason = change.rejection_reason;
    Json(approval.json()).into_response()
}
