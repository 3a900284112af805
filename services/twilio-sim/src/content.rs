//! Twilio's Content API: content created, fetched, updated, listed and deleted
//! (`/v1/Content`), WhatsApp approval requests with their category, the paged
//! `ContentAndApprovals` list; and `POST /sim/content/{sid}/approval`, where tests play Meta's
//! decisions (`{"status": "approved"}`) and re-categorizations (`{"category": "MARKETING"}`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::json;
use wa_twilio::content::{self as rules, Types};

use crate::behaviour::Injected;
use crate::{authenticated, dropped_connection, injected_error, twilio_error, Sim};

/// One content as the simulated account holds it.
#[derive(Debug, Clone)]
pub(crate) struct StoredContent {
    /// Creation order: lists page through content oldest first.
    seq: u64,
    friendly_name: String,
    language: String,
    variables: BTreeMap<String, String>,
    types: Types,
    created: String,
    updated: String,
}

impl StoredContent {
    fn json(&self, sid: &str, account_sid: &str) -> serde_json::Value {
        let url = format!("https://content.twilio.com/v1/Content/{sid}");
        json!({
            "sid": sid,
            "account_sid": account_sid,
            "friendly_name": self.friendly_name,
            "language": self.language,
            "variables": self.variables,
            "types": self.types,
            "url": url,
            "date_created": self.created,
            "date_updated": self.updated,
            "links": {
                "approval_create": format!("{url}/ApprovalRequests/whatsapp"),
                "approval_fetch": format!("{url}/ApprovalRequests"),
            },
        })
    }
}

/// The WhatsApp approval of one content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Approval {
    #[serde(default)]
    name: String,
    #[serde(default)]
    category: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    rejection_reason: String,
    #[serde(skip)]
    content_type: String,
}

impl Approval {
    fn json(&self) -> serde_json::Value {
        json!({
            "type": "whatsapp",
            "name": self.name,
            "category": self.category,
            "content_type": if self.content_type.is_empty() { "twilio/text" } else { &self.content_type },
            "status": self.status,
            "rejection_reason": self.rejection_reason,
            "allow_category_change": true,
        })
    }
}

/// Whether `sid` names content of this account (sends of any other `ContentSid` fail with
/// 21655), and whether WhatsApp approved it.
pub(crate) fn known_content(sim: &Sim, sid: &str) -> Option<bool> {
    sim.contents.lock().expect("contents lock").contains_key(sid).then(|| {
        sim.approvals.lock().expect("approvals lock").get(sid).is_some_and(|approval| {
            rules::ApprovalStatus::parse(&approval.status) == Some(rules::ApprovalStatus::Approved)
        })
    })
}

/// `PageSize` (default 50, at most 1000) and the offset `PageToken` names.
fn paging(query: &HashMap<String, String>) -> (usize, usize) {
    let page_size: usize = query.get("PageSize").and_then(|v| v.parse().ok()).unwrap_or(50).clamp(1, 1000);
    let offset: usize =
        query.get("PageToken").and_then(|v| v.strip_prefix("PA")).and_then(|v| v.parse().ok()).unwrap_or(0);
    (page_size, offset)
}

/// One page of a Content API list at `base`: its `contents` and Twilio's `meta`.
fn page(base: &str, contents: Vec<serde_json::Value>, (page_size, offset): (usize, usize), total: usize) -> Response {
    let next =
        (offset + page_size < total).then(|| format!("{base}?PageSize={page_size}&PageToken=PA{}", offset + page_size));
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

/// The account's content, oldest first.
fn oldest_first(contents: &BTreeMap<String, StoredContent>) -> Vec<(String, StoredContent)> {
    let mut all: Vec<(String, StoredContent)> = contents.iter().map(|(sid, c)| (sid.clone(), c.clone())).collect();
    all.sort_by_key(|(_, content)| content.seq);
    all
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
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
    let Some(content) = sim.contents.lock().expect("contents lock").get(&sid).cloned() else {
        return content_not_found(&sid);
    };
    if let Some(refusal) = rules::submit_refusal(&content.types) {
        return twilio_error(StatusCode::BAD_REQUEST, 20001, &format!("Invalid approval request: {refusal}"));
    }
    let approval = Approval {
        name: submission.name,
        category: submission.category,
        status: "received".to_owned(),
        rejection_reason: String::new(),
        content_type: content.types.keys().next().cloned().unwrap_or_default(),
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
    let (page_size, offset) = paging(&query);
    let stored = oldest_first(&sim.contents.lock().expect("contents lock"));
    let approvals = sim.approvals.lock().expect("approvals lock").clone();
    let base = "https://content.twilio.com/v1/ContentAndApprovals";
    let contents: Vec<serde_json::Value> = stored
        .iter()
        .skip(offset)
        .take(page_size)
        .map(|(sid, content)| {
            let mut item = content.json(sid, &sim.config.account_sid);
            let approval = approvals.get(sid).cloned().unwrap_or_else(|| Approval {
                name: String::new(),
                category: String::new(),
                status: "unsubmitted".to_owned(),
                rejection_reason: String::new(),
                content_type: String::new(),
            });
            item["approval_requests"] = approval.json();
            for link in ["url", "links"] {
                item.as_object_mut().expect("an object").remove(link);
            }
            item
        })
        .collect();
    page(base, contents, (page_size, offset), stored.len())
}

/// Test control: Meta's decision on a submitted content (`approved`, `rejected`, `paused`,
/// `disabled`...) and, with `category`, Meta moving it to another category.
pub(crate) async fn set_approval(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    Json(change): Json<Approval>,
) -> Response {
    let mut approvals = sim.approvals.lock().expect("approvals lock");
    let Some(approval) = approvals.get_mut(&sid) else {
        return twilio_error(StatusCode::NOT_FOUND, 20404, &format!("{sid} was never submitted for approval"));
    };
    if !change.status.is_empty() {
        approval.status = change.status;
        approval.rejection_reason = change.rejection_reason;
    }
    if !change.category.is_empty() {
        approval.category = change.category.to_ascii_uppercase();
    }
    Json(approval.json()).into_response()
}

/// What `POST /v1/Content` and `PUT /v1/Content/{sid}` take (Twilio's `ContentCreateRequest`
/// and `ContentUpdateRequest`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContentRequest {
    #[serde(default)]
    friendly_name: Option<String>,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    variables: Option<BTreeMap<String, String>>,
    types: Option<Types>,
}

fn invalid_content(message: &str) -> Response {
    twilio_error(StatusCode::BAD_REQUEST, 20001, message)
}

/// A create or update request, read, and its types checked as Twilio checks them: at least one,
/// each a content type it has, with its fields only.
fn content_request(body: &[u8]) -> Result<(ContentRequest, Types), String> {
    let Ok(request) = serde_json::from_slice::<ContentRequest>(body) else {
        return Err("Invalid JSON body: friendly_name, language, variables, types".to_owned());
    };
    let Some(types) = request.types.clone().filter(|types| !types.is_empty()) else {
        return Err("Missing required parameter types in the post body".to_owned());
    };
    // Twilio's schema: its types, and no field it does not define.
    if let Some(problem) = rules::shape_problem(&types) {
        return Err(format!("Invalid types: {problem}"));
    }
    Ok((request, types))
}

/// `POST /v1/Content`.
pub(crate) async fn create_content(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
    }
    let (request, types) = match content_request(&body) {
        Ok(parsed) => parsed,
        Err(message) => return invalid_content(&message),
    };
    let Some(language) = request.language.clone().filter(|l| !l.trim().is_empty()) else {
        return invalid_content("Missing required parameter language in the post body");
    };
    let sid = format!("HX{}", uuid::Uuid::new_v4().simple());
    let created = now();
    let mut contents = sim.contents.lock().expect("contents lock");
    let content = StoredContent {
        seq: contents.values().map(|c| c.seq + 1).max().unwrap_or(0),
        friendly_name: request.friendly_name.unwrap_or_default(),
        language,
        variables: request.variables.unwrap_or_default(),
        types,
        created: created.clone(),
        updated: created,
    };
    let json = content.json(&sid, &sim.config.account_sid);
    contents.insert(sid, content);
    (StatusCode::CREATED, Json(json)).into_response()
}

/// `GET /v1/Content/{sid}`.
pub(crate) async fn fetch_content(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
    }
    match sim.contents.lock().expect("contents lock").get(&sid) {
        Some(content) => Json(content.json(&sid, &sim.config.account_sid)).into_response(),
        None => content_not_found(&sid),
    }
}

/// `PUT /v1/Content/{sid}`: an edit in Twilio (types required; the rest kept when absent).
pub(crate) async fn update_content(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
    }
    let (request, types) = match content_request(&body) {
        Ok(parsed) => parsed,
        Err(message) => return invalid_content(&message),
    };
    let mut contents = sim.contents.lock().expect("contents lock");
    let Some(content) = contents.get_mut(&sid) else {
        return content_not_found(&sid);
    };
    content.types = types;
    if let Some(variables) = request.variables {
        content.variables = variables;
    }
    if let Some(name) = request.friendly_name {
        content.friendly_name = name;
    }
    if let Some(language) = request.language.filter(|l| !l.trim().is_empty()) {
        content.language = language;
    }
    content.updated = now();
    Json(content.json(&sid, &sim.config.account_sid)).into_response()
}

/// `DELETE /v1/Content/{sid}`.
pub(crate) async fn delete_content(
    State(sim): State<Arc<Sim>>,
    Path(sid): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
    }
    if sim.contents.lock().expect("contents lock").remove(&sid).is_none() {
        return content_not_found(&sid);
    }
    sim.approvals.lock().expect("approvals lock").remove(&sid);
    StatusCode::NO_CONTENT.into_response()
}

/// `GET /v1/Content`: the account's content in pages (`PageSize`, default 50, at most 1000;
/// `PageToken`), with Twilio's `meta`.
pub(crate) async fn list_content(
    State(sim): State<Arc<Sim>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = content_prelude(&sim, &headers).await {
        return refused;
    }
    let (page_size, offset) = paging(&query);
    let contents = oldest_first(&sim.contents.lock().expect("contents lock"));
    let items: Vec<serde_json::Value> = contents
        .iter()
        .skip(offset)
        .take(page_size)
        .map(|(sid, content)| content.json(sid, &sim.config.account_sid))
        .collect();
    let base = "https://content.twilio.com/v1/Content";
    page(base, items, (page_size, offset), contents.len())
}
