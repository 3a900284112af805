//! The admin API: register, submit, list, get, replace, pause, unpause, disable, delete.
//!
//! Bearer-token auth (`TEMPLATE_ADMIN_TOKENS`); JSON problem responses naming the field at
//! fault.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio::sync::OnceCell;
use wa_platform::http::{bearer_authorized, json_body, Problem};
use wa_twilio::content_api::ContentClient;

use crate::store::{ExecuteError, Store};
use crate::template::{Actor, Command, CommandError, Definition, Template};

/// What admin handlers share.
pub(crate) struct AdminState {
    /// Set once the service has connected and rebuilt its state.
    pub(crate) store: OnceCell<Arc<Store>>,
    pub(crate) tokens: Vec<String>,
    pub(crate) content: ContentClient,
}

/// The admin routes, behind the bearer tokens (checked before any body is read).
pub(crate) fn routes(state: Arc<AdminState>) -> Router {
    let tokens = Arc::new(state.tokens.clone());
    Router::new()
        .route("/v1/templates", get(list).post(register))
        .route("/v1/templates/{name}/{language}", get(fetch).put(replace).delete(delete))
        .route("/v1/templates/{name}/{language}/submit", post(submit))
        .route("/v1/templates/{name}/{language}/pause", post(pause))
        .route("/v1/templates/{name}/{language}/unpause", post(unpause))
        .route("/v1/templates/{name}/{language}/disable", post(disable))
        .route_layer(axum::middleware::from_fn_with_state(tokens, wa_platform::http::require_bearer))
        .with_state(state)
}

type Answer = Result<Response, Problem>;
type TemplatePath = Path<(String, String)>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    name: String,
    language: String,
    category: String,
    content_sid: String,
    body: String,
    #[serde(default)]
    examples: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceRequest {
    category: String,
    content_sid: String,
    body: String,
    #[serde(default)]
    examples: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReasonRequest {
    reason: Option<String>,
}

/// Checks the token and that the store is ready.
fn guard(state: &AdminState, headers: &HeaderMap) -> Result<Arc<Store>, Problem> {
    if !bearer_authorized(&state.tokens, headers) {
        return Err(Problem::unauthorized());
    }
    state.store.get().cloned().ok_or_else(|| Problem::unavailable("template state is still being rebuilt"))
}

impl From<ExecuteError> for Problem {
    fn from(err: ExecuteError) -> Self {
        match err {
            ExecuteError::Refused(CommandError::Invalid { field, message }) => Problem::invalid_field(field, message),
            ExecuteError::Refused(CommandError::NotFound(id)) => Problem::not_found(format!("no template {id}")),
            ExecuteError::Refused(CommandError::Conflict(message)) => Problem::conflict(message),
            ExecuteError::Unavailable(reason) => Problem::unavailable(reason),
            ExecuteError::EffectFailed(reason) => {
                Problem::new(StatusCode::BAD_GATEWAY, "twilio-refused", "twilio refused the submission", reason)
            }
        }
    }
}

fn current(store: &Store, name: &str, language: &str) -> Result<Template, Problem> {
    store
        .read(|templates| templates.get(name, language).cloned())
        .ok_or_else(|| Problem::not_found(format!("no template {name}:{language}")))
}

/// Executes `command` and answers with the template as it now is.
async fn execute(store: &Store, command: Command, status: StatusCode, name: &str, language: &str) -> Answer {
    store.execute(command, Actor::Admin).await?;
    Ok((status, Json(current(store, name, language)?)).into_response())
}

fn reason(headers: &HeaderMap, body: &[u8]) -> Result<Option<String>, Problem> {
    if body.is_empty() {
        return Ok(None);
    }
    Ok(json_body::<ReasonRequest>(headers, body)?.reason)
}

async fn list(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Answer {
    let store = guard(&state, &headers)?;
    let templates: Vec<Template> = store.read(|templates| templates.all().cloned().collect());
    Ok(Json(templates).into_response())
}

async fn fetch(
    State(state): State<Arc<AdminState>>,
    Path((name, language)): TemplatePath,
    headers: HeaderMap,
) -> Answer {
    let store = guard(&state, &headers)?;
    Ok(Json(current(&store, &name, &language)?).into_response())
}

async fn register(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Answer {
    let store = guard(&state, &headers)?;
    let request: RegisterRequest = json_body(&headers, &body)?;
    let (name, language) = (request.name.clone(), request.language.clone());
    let command = Command::Register(Definition {
        name: request.name,
        language: request.language,
        category: request.category,
        content_sid: request.content_sid,
        body: request.body,
        examples: request.examples,
    });
    execute(&store, command, StatusCode::CREATED, &name, &language).await
}

async fn replace(
    State(state): State<Arc<AdminState>>,
    Path((name, language)): TemplatePath,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let store = guard(&state, &headers)?;
    let request: ReplaceRequest = json_body(&headers, &body)?;
    let command = Command::Replace(Definition {
        name: name.clone(),
        language: language.clone(),
        category: request.category,
        content_sid: request.content_sid,
        body: request.body,
        examples: request.examples,
    });
    execute(&store, command, StatusCode::OK, &name, &language).await
}

/// Decides the submission first (a template that may not be submitted, or is already
/// pending, never reaches Twilio), then submits it to WhatsApp through Twilio, then records it.
async fn submit(
    State(state): State<Arc<AdminState>>,
    Path((name, language)): TemplatePath,
    headers: HeaderMap,
) -> Answer {
    let store = guard(&state, &headers)?;
    let command = Command::Submit { name: name.clone(), language: language.clone() };
    let content = &state.content;
    store
        .execute_then(command, Actor::Admin, |_| async {
            // The version the command was decided on (no other command runs meanwhile).
            let template = store
                .read(|templates| templates.get(&name, &language).cloned())
                .ok_or_else(|| format!("{name}:{language} was deleted meanwhile"))?;
            content.submit(template.content_sid.as_str(), &template.name, template.category.as_str()).await
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(current(&store, &name, &language)?)).into_response())
}

/// A status change by an admin: `make` builds the command from the name, language and the
/// optional `{"reason": ...}` body.
async fn change(
    state: &AdminState,
    (name, language): (String, String),
    headers: &HeaderMap,
    body: &[u8],
    make: impl FnOnce(String, String, Option<String>) -> Command,
) -> Answer {
    let store = guard(state, headers)?;
    let command = make(name.clone(), language.clone(), reason(headers, body)?);
    execute(&store, command, StatusCode::OK, &name, &language).await
}

async fn pause(
    State(state): State<Arc<AdminState>>,
    Path(id): TemplatePath,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    change(&state, id, &headers, &body, |name, language, reason| Command::Pause { name, language, reason }).await
}

async fn unpause(
    State(state): State<Arc<AdminState>>,
    Path(id): TemplatePath,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    change(&state, id, &headers, &body, |name, language, _| Command::Unpause { name, language }).await
}

async fn disable(
    State(state): State<Arc<AdminState>>,
    Path(id): TemplatePath,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    change(&state, id, &headers, &body, |name, language, reason| Command::Disable { name, language, reason }).await
}

async fn delete(
    State(state): State<Arc<AdminState>>,
    Path((name, language)): TemplatePath,
    headers: HeaderMap,
) -> Answer {
    let store = guard(&state, &headers)?;
    store.execute(Command::Delete { name, language }, Actor::Admin).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
