//! Session-window's HTTP routes: the session query, answered by the instance that owns the
//! conversation's partition.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse as _, Response};
use axum::routing::get;
use axum::{Json, Router};
use uuid::Uuid;
use wa_platform::clock::Clock;
use wa_platform::http::Problem;

use crate::projector::Shared;
use crate::session::{self, Content, OptOutScope};
use crate::store;

/// `GET /v1/conversations/{id}/session`, behind the bearer tokens (none: open).
pub(crate) fn routes(
    shared: Arc<Shared>,
    margin_millis: i64,
    own_url: String,
    tokens: Vec<String>,
    clock: Clock,
) -> Router {
    let query = QueryState { shared, margin_millis, own_url, clock };
    Router::new()
        .route("/v1/conversations/{id}/session", get(session_query))
        .route_layer(axum::middleware::from_fn_with_state(Arc::new(tokens), wa_platform::http::require_bearer))
        .with_state(Arc::new(query))
}

struct QueryState {
    shared: Arc<Shared>,
    margin_millis: i64,
    own_url: String,
    clock: Clock,
}

/// `GET /v1/conversations/{id}/session`: the conversation's state, from the instance that owns
/// its partition; another instance answers 421 with the partition and, once known, the owner's
/// URL for the same query.
async fn session_query(
    State(state): State<Arc<QueryState>>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, Response> {
    let conversation = Uuid::parse_str(&id).map_err(|_| {
        let detail = format!("{id:?} is not a conversation id (a UUID)");
        Problem::new(StatusCode::BAD_REQUEST, "invalid-conversation-id", "invalid conversation id", detail)
            .into_response()
    })?;
    let key = conversation.to_string();
    let Some(partitions) = state.shared.partitions.get().copied() else {
        let detail = "not connected to the broker yet";
        return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "starting", "starting", detail).into_response());
    };
    let partition = wa_platform::topics::partition_for_key(key.as_bytes(), partitions);
    let stores = state.shared.stores.lock().expect("stores lock");
    let Some(store) = stores.get(&partition) else {
        if state.shared.restoring.lock().expect("restoring lock").contains(&partition) {
            let detail = format!("partition {partition} is being restored here; ask again shortly");
            return Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "restoring", "restoring", detail).into_response());
        }
        let owner = state
            .shared
            .owners
            .lock()
            .expect("owners lock")
            .get(&partition)
            .filter(|url| **url != state.own_url)
            .cloned();
        let detail = match &owner {
            Some(url) => format!("conversation {key} is on partition {partition}, served by {url}"),
            None => format!("conversation {key} is on partition {partition}, which this instance does not own"),
        };
        // RFC 9457 with two extension members, so a client can follow the owner.
        let body = serde_json::json!({
            "type": "https://wachannel.dev/problems/not-owned",
            "title": "owned by another instance",
            "status": 421,
            "detail": detail,
            "partition": partition,
            "owner": owner.map(|url| format!("{url}/v1/conversations/{key}/session")),
        });
        let content_type = [(axum::http::header::CONTENT_TYPE, "application/problem+json")];
        return Err((StatusCode::MISDIRECTED_REQUEST, content_type, body.to_string()).into_response());
    };
    let session = store.get(&conversation).copied();
    let now = state.clock.now_millis();
    let free_form =
        session::check(session.as_ref(), Content::FreeForm, now, state.margin_millis, OptOutScope::Marketing);
    let snapshot = store::snapshot(&conversation, &session.unwrap_or_default());
    Ok(Json(serde_json::json!({
        "conversation_id": key,
        "partition": partition,
        "known": session.is_some(),
        "last_customer_message_at": snapshot.last_customer_message_at,
        "window_expires_at": snapshot.window_expires_at,
        "entry_point_expires_at": snapshot.entry_point_expires_at,
        "opted_out": snapshot.opted_out,
        "opted_out_at": snapshot.opted_out_at,
        "opted_in_at": snapshot.opted_in_at,
        "notified": snapshot.notified,
        "free_form_allowed": free_form.is_ok(),
        "refusal_reason": free_form.err().map(session::Refusal::code),
    })))
}
