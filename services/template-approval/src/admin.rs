//! The admin API: register (creating the content at Twilio, or adopting content Twilio holds),
//! submit, list, get, replace, pause, unpause, disable, delete.
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
use wa_twilio::content::Types;
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

/// A template's content: either the SID of content Twilio holds (adopted: read from Twilio), or
/// a new content (`types`, `variables`, `friendly_name`) created at Twilio.
#[derive(Debug)]
struct ContentRequest {
    content_sid: Option<String>,
    types: Option<Types>,
    variables: BTreeMap<String, String>,
    friendly_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    name: String,
    /// Required to create content; with `content_sid`, the content's own (checked if given).
    #[serde(default)]
    language: Option<String>,
    category: String,
    #[serde(default)]
    content_sid: Option<String>,
    #[serde(default)]
    types: Option<Types>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    friendly_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplaceRequest {
    category: String,
    #[serde(default)]
    content_sid: Option<String>,
    #[serde(default)]
    types: Option<Types>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    friendly_name: Option<String>,
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

/// The definition of `name` with the content the request names: adopted (read from Twilio by its
/// SID) or created at Twilio, once the definition has been checked (nothing invalid is created
/// there). `replacing`: a new version of an existing template rather than a registration.
async fn definition(
    state: &AdminState,
    store: &Store,
    (name, language, category): (String, Option<String>, String),
    content: ContentRequest,
    replacing: bool,
) -> Result<Definition, Problem> {
    match (content.content_sid, content.types) {
        (Some(sid), None) => {
            if !content.variables.is_empty() || content.friendly_name.is_some() {
                return Err(Problem::invalid_field(
                    "variables",
                    "adopted content's variables and name are Twilio's: give content_sid alone",
                ));
            }
            if let Err(error) = wa_schemas::ContentSid::parse(&sid) {
                return Err(Problem::invalid_field("content_sid", error.to_string()));
            }
            let found = state.content.fetch(&sid).await.map_err(twilio_failed)?;
            let Some(found) = found else {
                return Err(Problem::invalid_field("content_sid", format!("Twilio holds no content {sid}")));
            };
            if let Some(language) = language.filter(|language| *language != found.language) {
                return Err(Problem::invalid_field(
                    "language",
                    format!("content {sid} is in {:?}, not {language:?}", found.language),
                ));
            }
            Ok(Definition {
                name,
                language: found.language,
                category,
                content_sid: found.sid,
                types: found.types,
                variables: found.variables,
            })
        }
        (None, Some(types)) => {
            let Some(language) = language else {
                return Err(Problem::invalid_field("language", "new content needs its language (e.g. en, pt_BR)"));
            };
            let mut definition = Definition {
                name,
                language,
                category,
                // Checked before Twilio is asked; Twilio's SID replaces it.
                content_sid: format!("HX{}", "0".repeat(32)),
                types,
                variables: content.variables,
            };
            // The aggregate decides first (on the placeholder SID): nothing it would refuse is
            // created at Twilio.
            let command =
                if replacing { Command::Replace(definition.clone()) } else { Command::Register(definition.clone()) };
            store.decide(command, Actor::Admin).map_err(|err| Problem::from(ExecuteError::Refused(err)))?;
            let friendly_name = content.friendly_name.unwrap_or_else(|| definition.name.clone());
            let created = state
                .content
                .create(&friendly_name, &definition.language, &definition.variables, &definition.types)
                .await
                .map_err(twilio_failed)?;
            definition.content_sid = created.sid;
            Ok(definition)
        }
        _ => Err(Problem::invalid_field(
            "content_sid",
            "give content_sid (content Twilio holds) or types (content to create at Twilio), not both",
        )),
    }
}

fn twilio_failed(reason: String) -> Problem {
    Problem::new(StatusCode::BAD_GATEWAY, "twilio-failed", "twilio's content api failed", reason)
}

async fn register(State(state): State<Arc<AdminState>>, headers: HeaderMap, body: Bytes) -> Answer {
    let store = guard(&state, &headers)?;
    let request: RegisterRequest = json_body(&headers, &body)?;
    let content = ContentRequest {
        content_sid: request.content_sid,
        types: request.types,
        variables: request.variables,
        friendly_name: request.friendly_name,
    };
    let id = (request.name, request.language, request.category);
    let definition = definition(&state, &store, id, content, false).await?;
    let (name, language) = (definition.name.clone(), definition.language.clone());
    execute(&store, Command::Register(definition), StatusCode::CREATED, &name, &language).await
}

async fn replace(
    State(state): State<Arc<AdminState>>,
    Path((name, language)): TemplatePath,
    headers: HeaderMap,
    body: Bytes,
) -> Answer {
    let store = guard(&state, &headers)?;
    let request: ReplaceRequest = json_body(&headers, &body)?;
    current(&store, &name, &language)?;
    let content = ContentRequest {
        content_sid: request.content_sid,
        types: request.types,
        variables: request.variables,
        friendly_name: request.friendly_name,
    };
    let id = (name.clone(), Some(language.clone()), request.category);
    let definition = definition(&state, &store, id, content, true).await?;
    execute(&store, Command::Replace(definition), StatusCode::OK, &name, &language).await
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
