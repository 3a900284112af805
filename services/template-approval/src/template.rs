//! The template aggregate: a WhatsApp message template per (name, language), event-sourced.
//!
//! Pure and synchronous: [`handle`] turns a command into events (or refuses it) against the
//! current state, and [`apply`] folds an event into the state. No IO, no clock: `now` is passed
//! in. A command that changes nothing (pausing a paused template, a sync that finds the status
//! unchanged) yields no events, so repeating it is harmless.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use uuid::Uuid;
use wa_schemas::{ContentSid, TemplateChange, TemplateEvent};
use wa_twilio::content::{self as rules, Types};

use crate::languages;

/// A template's category, which decides pricing and opt-out rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    /// Promotions; refused for customers who opted out.
    Marketing,
    /// Transactional updates.
    Utility,
    /// One-time passcodes.
    Authentication,
}

impl Category {
    /// Parses `marketing`, `utility` or `authentication` (any case: Twilio writes them in
    /// capitals).
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "marketing" => Some(Self::Marketing),
            "utility" => Some(Self::Utility),
            "authentication" => Some(Self::Authentication),
            _ => None,
        }
    }

    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Marketing => "marketing",
            Self::Utility => "utility",
            Self::Authentication => "authentication",
        }
    }
}

/// Where a template stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Registered (or replaced), not yet submitted.
    Draft,
    /// Submitted, awaiting Meta's decision.
    Pending,
    /// May be sent.
    Approved,
    /// Refused by Meta.
    Rejected,
    /// Paused by Meta for low quality; may come back.
    Paused,
    /// Disabled for good.
    Disabled,
}

/// One template in one language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Template {
    /// Name (lowercase letters, digits, underscores).
    pub name: String,
    /// Language code.
    pub language: String,
    /// 1, then +1 per replacement.
    pub version: i32,
    /// Category.
    pub category: Category,
    /// Twilio Content SID of the current version.
    pub content_sid: ContentSid,
    /// The content's types as Twilio holds them (a cache of Twilio's content, kept current by
    /// the sync).
    pub types: Types,
    /// The content's sample value per variable.
    pub variables: BTreeMap<String, String>,
    /// The text a customer reads, with `{{n}}` variables (from the types).
    pub body: String,
    /// Status.
    pub status: Status,
    /// Why it was rejected, paused or disabled.
    pub reason: Option<String>,
    /// Who paused it: `admin` (a local hold, lifted only by an admin) or `twilio` (Meta's
    /// quality pause, lifted when Meta approves it again).
    pub paused_by: Option<String>,
    /// When it last changed, Unix millis.
    pub updated_at: i64,
}

impl Template {
    /// `<name>:<language>`.
    pub fn id(&self) -> String {
        template_id(&self.name, &self.language)
    }

    /// The variables its content uses.
    pub fn placeholders(&self) -> BTreeSet<String> {
        rules::placeholders(&self.types)
    }

    /// The body with `values` filled in (missing ones left as `{{n}}`).
    pub fn render(&self, values: &BTreeMap<String, String>) -> String {
        rules::fill(&self.body, values)
    }
}

/// The key of a template.
pub fn template_id(name: &str, language: &str) -> String {
    format!("{name}:{language}")
}

/// Every template, by id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Templates {
    by_id: BTreeMap<String, Template>,
}

impl Templates {
    /// The template `name` in `language`.
    pub fn get(&self, name: &str, language: &str) -> Option<&Template> {
        self.by_id.get(&template_id(name, language))
    }

    /// Every template, ordered by id.
    pub fn all(&self) -> impl Iterator<Item = &Template> {
        self.by_id.values()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

/// A template as registered or replaced: a name and category for content Twilio holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Definition {
    /// Name.
    pub name: String,
    /// Language code (the content's).
    pub language: String,
    /// `marketing`, `utility` or `authentication`.
    pub category: String,
    /// Twilio Content SID (`HX` + 32 hex digits).
    pub content_sid: String,
    /// The content's types, as Twilio holds them.
    pub types: Types,
    /// The content's sample value per variable.
    pub variables: BTreeMap<String, String>,
}

/// Who issues a command (the admin API or the status sync).
pub use wa_schemas::Actor;

/// What may be asked of the aggregate. `name` and `language` name the template; `reason` says
/// why, for the record.
#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Register a new template.
    Register(Definition),
    /// Replace a template's content with a new version (a new Content SID); it must be
    /// submitted again.
    Replace(Definition),
    /// Mark it submitted for approval.
    Submit { name: String, language: String },
    /// Meta's status of one content version, as the status sync found it. Ignored when
    /// `content_sid` is no longer the template's current version.
    RecordMetaStatus { name: String, language: String, content_sid: String, status: MetaStatus },
    /// The content as Twilio now holds it (an edit in Twilio keeps the SID). Ignored for a
    /// version that was replaced.
    RecordContent {
        name: String,
        language: String,
        content_sid: String,
        types: Types,
        variables: BTreeMap<String, String>,
    },
    /// The category Meta holds for the current version (Meta may move a template, e.g. from
    /// utility to marketing). Ignored for a version that was replaced.
    RecordCategory { name: String, language: String, content_sid: String, category: String },
    /// Pause it.
    Pause { name: String, language: String, reason: Option<String> },
    /// Lift a pause.
    Unpause { name: String, language: String },
    /// Disable it for good.
    Disable { name: String, language: String, reason: Option<String> },
    /// Delete it (the name and language may be registered again).
    Delete { name: String, language: String },
}

/// Meta's verdict on a template version, with its reason where Meta gives one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaStatus {
    /// May be sent.
    Approved,
    /// Refused.
    Rejected(Option<String>),
    /// Paused for low quality.
    Paused(Option<String>),
    /// Disabled.
    Disabled(Option<String>),
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// A field is invalid.
    #[error("{field}: {message}")]
    Invalid {
        /// The field at fault.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// No such template.
    #[error("no template {0}")]
    NotFound(String),
    /// Not possible in the template's current state.
    #[error("{0}")]
    Conflict(String),
}

fn invalid(field: &'static str, message: impl Into<String>) -> CommandError {
    CommandError::Invalid { field, message: message.into() }
}

/// Checks a definition: its name, language, category and Content SID, and its content as
/// WhatsApp would (known types with their fields, numbered variables with samples, bodies within
/// limits that neither start nor end with a variable, but for authentication templates, whose
/// body is Meta's). An authentication template is `whatsapp/authentication` content, and only
/// that.
fn validate(definition: &Definition) -> Result<(Category, ContentSid), CommandError> {
    let name_ok = !definition.name.is_empty()
        && definition.name.len() <= 512
        && definition.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !name_ok {
        return Err(invalid("name", "use 1 to 512 lowercase letters, digits and underscores"));
    }
    if !languages::is_known(&definition.language) {
        return Err(invalid(
            "language",
            format!("{:?} is not a WhatsApp template language (e.g. en, en_US, pt_BR, es_MX)", definition.language),
        ));
    }
    let category = Category::parse(&definition.category)
        .ok_or_else(|| invalid("category", "use marketing, utility or authentication"))?;
    let sid = ContentSid::parse(&definition.content_sid).map_err(|error| invalid("content_sid", error.to_string()))?;
    if let Some((field, message)) = rules::definition_problem(&definition.types, &definition.variables) {
        return Err(invalid(field, message));
    }
    match (category, rules::is_authentication(&definition.types)) {
        (Category::Authentication, false) => Err(invalid(
            "category",
            "an authentication template is whatsapp/authentication content (a code and a copy-code or one-tap button)",
        )),
        (Category::Marketing | Category::Utility, true) => {
            Err(invalid("category", "whatsapp/authentication content is an authentication template"))
        }
        _ => Ok((category, sid)),
    }
}

struct EventBuilder<'a> {
    template: Option<&'a Template>,
    name: &'a str,
    language: &'a str,
    actor: Actor,
    now: i64,
}

impl EventBuilder<'_> {
    fn event(&self, kind: TemplateChange, version: i32, reason: Option<String>) -> TemplateEvent {
        let template_id = template_id(self.name, self.language);
        let seed = format!("{template_id}:{version}:{kind}:{}", self.now);
        TemplateEvent {
            event_id: Uuid::new_v5(&Uuid::NAMESPACE_OID, seed.as_bytes()).to_string(),
            occurred_at: self.now,
            template_id,
            kind: kind.as_str().to_owned(),
            name: self.name.to_owned(),
            language: self.language.to_owned(),
            version,
            category: None,
            content_sid: None,
            body: None,
            examples: BTreeMap::new(),
            reason,
            content_types: None,
            previous_category: None,
            actor: self.actor.as_str().to_owned(),
        }
    }

    fn status_change(&self, kind: TemplateChange, reason: Option<String>) -> Vec<TemplateEvent> {
        let version = self.template.map_or(1, |t| t.version);
        vec![self.event(kind, version, reason)]
    }

    fn definition(
        &self,
        kind: TemplateChange,
        version: i32,
        definition: &Definition,
        (category, sid): (Category, ContentSid),
    ) -> Vec<TemplateEvent> {
        let mut event = self.content(kind, version, &definition.types, &definition.variables);
        event.category = Some(category.as_str().to_owned());
        event.content_sid = Some(sid.into());
        vec![event]
    }

    /// An event carrying a content: its types, samples and the body they give.
    fn content(
        &self,
        kind: TemplateChange,
        version: i32,
        types: &Types,
        variables: &BTreeMap<String, String>,
    ) -> TemplateEvent {
        let mut event = self.event(kind, version, None);
        event.body = Some(rules::body(types));
        event.examples = variables.clone();
        event.content_types = Some(serde_json::Value::Object(types.clone()).to_string());
        event
    }
}

/// Decides a command against `state`.
pub fn handle(state: &Templates, command: Command, actor: Actor, now: i64) -> Result<Vec<TemplateEvent>, CommandError> {
    let (name, language) = match &command {
        Command::Register(d) | Command::Replace(d) => (d.name.clone(), d.language.clone()),
        Command::Submit { name, language }
        | Command::RecordMetaStatus { name, language, .. }
        | Command::RecordContent { name, language, .. }
        | Command::RecordCategory { name, language, .. }
        | Command::Pause { name, language, .. }
        | Command::Unpause { name, language }
        | Command::Disable { name, language, .. }
        | Command::Delete { name, language } => (name.clone(), language.clone()),
    };
    let current = state.get(&name, &language);
    let build = EventBuilder { template: current, name: &name, language: &language, actor, now };
    let existing = || current.ok_or_else(|| CommandError::NotFound(template_id(&name, &language)));
    let status = current.map(|t| t.status);

    match command {
        Command::Register(definition) => {
            let checked = validate(&definition)?;
            if current.is_some() {
                return Err(CommandError::Conflict(format!(
                    "{} is already registered; replace it with a new version instead",
                    template_id(&name, &language)
                )));
            }
            Ok(build.definition(TemplateChange::Registered, 1, &definition, checked))
        }
        Command::Replace(definition) => {
            let template = existing()?;
            if template.language != definition.language {
                return Err(invalid("language", "a new version keeps the template's language"));
            }
            let checked = validate(&definition)?;
            if checked.1 == template.content_sid {
                return Err(invalid(
                    "content_sid",
                    "a new version needs a new Content SID (Twilio content is immutable)",
                ));
            }
            Ok(build.definition(TemplateChange::Replaced, template.version + 1, &definition, checked))
        }
        Command::RecordContent { content_sid, types, variables, .. } => {
            let template = existing()?;
            if template.content_sid.as_str() != content_sid
                || (template.types == types && template.variables == variables)
            {
                return Ok(vec![]);
            }
            Ok(vec![build.content(TemplateChange::ContentUpdated, template.version, &types, &variables)])
        }
        Command::RecordCategory { content_sid, category, .. } => {
            let template = existing()?;
            let Some(category) = Category::parse(&category) else {
                return Err(invalid("category", format!("{category:?} is not a WhatsApp category")));
            };
            if template.content_sid.as_str() != content_sid || template.category == category {
                return Ok(vec![]);
            }
            let mut event = build.event(TemplateChange::Recategorized, template.version, None);
            event.category = Some(category.as_str().to_owned());
            event.previous_category = Some(template.category.as_str().to_owned());
            Ok(vec![event])
        }
        Command::Submit { .. } => match existing()?.status {
            Status::Draft | Status::Rejected => match rules::submit_refusal(&existing()?.types) {
                Some(refusal) => Err(CommandError::Conflict(refusal)),
                None => Ok(build.status_change(TemplateChange::Submitted, None)),
            },
            Status::Pending => Ok(vec![]),
            other => Err(CommandError::Conflict(format!("cannot submit a template that is {other:?}").to_lowercase())),
        },
        Command::RecordMetaStatus { content_sid, status: meta, .. } => {
            let template = existing()?;
            if template.content_sid.as_str() != content_sid {
                // A verdict on a version that has since been replaced.
                return Ok(vec![]);
            }
            let admin_hold = template.paused_by.as_deref().and_then(Actor::parse) == Some(Actor::Admin);
            match (meta, template.status) {
                // Disabled is for good: only a new version (replace) or a new registration
                // brings the name back.
                (_, Status::Disabled) => Ok(vec![]),
                (MetaStatus::Approved, Status::Approved) => Ok(vec![]),
                // An admin's hold outlasts Meta's approval; only an admin lifts it.
                (MetaStatus::Approved, Status::Paused) if admin_hold => Ok(vec![]),
                (MetaStatus::Approved, Status::Paused) => Ok(build.status_change(TemplateChange::Unpaused, None)),
                (MetaStatus::Approved, _) => Ok(build.status_change(TemplateChange::Approved, None)),
                (MetaStatus::Rejected(reason), Status::Rejected) if template.reason == reason => Ok(vec![]),
                (MetaStatus::Rejected(reason), _) => Ok(build.status_change(TemplateChange::Rejected, reason)),
                (MetaStatus::Paused(reason), Status::Approved) => Ok(build
                    .status_change(TemplateChange::Paused, reason.or_else(|| Some("paused by WhatsApp".to_owned())))),
                (MetaStatus::Paused(_), _) => Ok(vec![]),
                (MetaStatus::Disabled(reason), _) => Ok(build.status_change(
                    TemplateChange::Disabled,
                    reason.or_else(|| Some("disabled by WhatsApp".to_owned())),
                )),
            }
        }
        Command::Pause { reason, .. } => match existing()?.status {
            Status::Approved => Ok(build.status_change(TemplateChange::Paused, reason)),
            Status::Paused => Ok(vec![]),
            other => Err(CommandError::Conflict(
                format!("only an approved template can be paused; this one is {other:?}").to_lowercase(),
            )),
        },
        Command::Unpause { .. } => match existing()?.status {
            Status::Paused => Ok(build.status_change(TemplateChange::Unpaused, None)),
            Status::Approved => Ok(vec![]),
            other => Err(CommandError::Conflict(
                format!("only a paused template can be unpaused; this one is {other:?}").to_lowercase(),
            )),
        },
        Command::Disable { reason, .. } => match status {
            None => Err(CommandError::NotFound(template_id(&name, &language))),
            Some(Status::Disabled) => Ok(vec![]),
            Some(_) => Ok(build.status_change(TemplateChange::Disabled, reason)),
        },
        Command::Delete { .. } => {
            existing()?;
            Ok(build.status_change(TemplateChange::Deleted, None))
        }
    }
}

/// The content types an event carries; records written before content types (a body only)
/// held plain text.
fn event_types(event: &TemplateEvent) -> Types {
    let parsed = event.content_types.as_deref().and_then(|json| serde_json::from_str::<Types>(json).ok());
    parsed.unwrap_or_else(|| {
        let body = event.body.clone().unwrap_or_default();
        let mut types = Types::new();
        types.insert("twilio/text".to_owned(), serde_json::json!({ "body": body }));
        types
    })
}

/// Folds one event into the state. A change this build does not know (from a newer producer)
/// leaves the state as it was; the store that follows the topic reports it.
pub fn apply(state: &mut Templates, event: &TemplateEvent) {
    let Some(change) = event.change() else { return };
    let id = template_id(&event.name, &event.language);
    let status = match change {
        TemplateChange::Registered | TemplateChange::Replaced => {
            // Every build of this channel writes a checked SID; a record without one names no
            // content that could be sent, and is left out.
            let Some(content_sid) = event.content_sid.as_deref().and_then(|sid| ContentSid::parse(sid).ok()) else {
                return;
            };
            let types = event_types(event);
            let template = Template {
                name: event.name.clone(),
                language: event.language.clone(),
                version: event.version,
                category: event.category.as_deref().and_then(Category::parse).unwrap_or(Category::Utility),
                content_sid,
                body: rules::body(&types),
                types,
                variables: event.examples.clone(),
                status: Status::Draft,
                reason: None,
                paused_by: None,
                updated_at: event.occurred_at,
            };
            state.by_id.insert(id, template);
            return;
        }
        TemplateChange::Deleted => {
            state.by_id.remove(&id);
            return;
        }
        TemplateChange::ContentUpdated => {
            if let Some(template) = state.by_id.get_mut(&id) {
                template.types = event_types(event);
                template.body = rules::body(&template.types);
                template.variables = event.examples.clone();
                template.updated_at = event.occurred_at;
            }
            return;
        }
        TemplateChange::Recategorized => {
            if let (Some(template), Some(category)) =
                (state.by_id.get_mut(&id), event.category.as_deref().and_then(Category::parse))
            {
                template.category = category;
                template.updated_at = event.occurred_at;
            }
            return;
        }
        TemplateChange::Submitted => Status::Pending,
        TemplateChange::Approved | TemplateChange::Unpaused => Status::Approved,
        TemplateChange::Rejected => Status::Rejected,
        TemplateChange::Paused => Status::Paused,
        TemplateChange::Disabled => Status::Disabled,
    };
    let Some(template) = state.by_id.get_mut(&id) else {
        return;
    };
    template.status = status;
    template.reason = event.reason.clone();
    template.paused_by = (status == Status::Paused).then(|| event.actor.clone());
    template.updated_at = event.occurred_at;
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SID: &str = "HX0123456789abcdef0123456789abcdef";
    pub(crate) const SID2: &str = "HXfedcba9876543210fedcba9876543210";

    pub(crate) fn definition(name: &str, language: &str) -> Definition {
        Definition {
            name: name.to_owned(),
            language: language.to_owned(),
            category: "utility".to_owned(),
            content_sid: SID.to_owned(),
            types: text("Hi {{1}}, your order {{2}} ships today."),
            variables: [("1".to_owned(), "Ana".to_owned()), ("2".to_owned(), "1234".to_owned())].into(),
        }
    }

    /// `twilio/text` content with `body`.
    pub(crate) fn text(body: &str) -> Types {
        let mut types = Types::new();
        types.insert("twilio/text".to_owned(), serde_json::json!({ "body": body }));
        types
    }

    fn id(name: &str) -> (String, String) {
        (name.to_owned(), "en".to_owned())
    }

    /// Given these commands (all accepted), when this one, then these event types.
    fn given_when(given: Vec<Command>, when: Command, actor: Actor) -> Result<Vec<String>, CommandError> {
        let mut state = Templates::default();
        for (i, command) in given.into_iter().enumerate() {
            for event in handle(&state, command, Actor::Admin, i as i64).expect("given commands are accepted") {
                apply(&mut state, &event);
            }
        }
        handle(&state, when, actor, 100).map(|events| events.into_iter().map(|e| e.kind).collect())
    }

    fn register() -> Command {
        Command::Register(definition("order_update", "en"))
    }
    fn submit() -> Command {
        let (name, language) = id("order_update");
        Command::Submit { name, language }
    }
    fn decide(approved: bool, reason: Option<&str>) -> Command {
        let (name, language) = id("order_update");
        let reason = reason.map(str::to_owned);
        let status = if approved { MetaStatus::Approved } else { MetaStatus::Rejected(reason) };
        Command::RecordMetaStatus { name, language, content_sid: SID.to_owned(), status }
    }
    fn pause() -> Command {
        let (name, language) = id("order_update");
        Command::Pause { name, language, reason: Some("low quality".to_owned()) }
    }
    fn unpause() -> Command {
        let (name, language) = id("order_update");
        Command::Unpause { name, language }
    }
    fn disable() -> Command {
        let (name, language) = id("order_update");
        Command::Disable { name, language, reason: None }
    }
    fn delete() -> Command {
        let (name, language) = id("order_update");
        Command::Delete { name, language }
    }

    #[test]
    fn register_then_submit_then_approve() {
        assert_eq!(given_when(vec![], register(), Actor::Admin), Ok(vec!["registered".to_owned()]));
        assert_eq!(given_when(vec![register()], submit(), Actor::Admin), Ok(vec!["submitted".to_owned()]));
        assert_eq!(
            given_when(vec![register(), submit()], decide(true, None), Actor::Twilio),
            Ok(vec!["approved".to_owned()])
        );
    }

    #[test]
    fn rejected_templates_carry_the_reason_and_may_be_resubmitted() {
        let mut state = Templates::default();
        for command in [register(), submit(), decide(false, Some("INVALID_FORMAT"))] {
            for event in handle(&state, command, Actor::Twilio, 1).unwrap() {
                apply(&mut state, &event);
            }
        }
        let template = state.get("order_update", "en").unwrap();
        assert_eq!(template.status, Status::Rejected);
        assert_eq!(template.reason.as_deref(), Some("INVALID_FORMAT"));
        assert_eq!(
            given_when(vec![register(), submit(), decide(false, Some("x"))], submit(), Actor::Admin),
            Ok(vec!["submitted".to_owned()])
        );
    }

    #[test]
    fn pause_unpause_disable_delete() {
        let approved = vec![register(), submit(), decide(true, None)];
        assert_eq!(given_when(approved.clone(), pause(), Actor::Twilio), Ok(vec!["paused".to_owned()]));
        let paused = [approved.clone(), vec![pause()]].concat();
        assert_eq!(given_when(paused.clone(), unpause(), Actor::Admin), Ok(vec!["unpaused".to_owned()]));
        assert_eq!(given_when(paused, disable(), Actor::Twilio), Ok(vec!["disabled".to_owned()]));
        assert_eq!(given_when(approved.clone(), delete(), Actor::Admin), Ok(vec!["deleted".to_owned()]));
        // After deletion the name and language are free again.
        assert_eq!(
            given_when([approved, vec![delete()]].concat(), register(), Actor::Admin),
            Ok(vec!["registered".to_owned()])
        );
    }

    #[test]
    fn an_admin_pause_outlasts_metas_approval_but_metas_pause_does_not() {
        let approved = vec![register(), submit(), decide(true, None)];
        let mut state = Templates::default();
        for command in [approved.clone(), vec![pause()]].concat() {
            for event in handle(&state, command, Actor::Admin, 1).unwrap() {
                apply(&mut state, &event);
            }
        }
        assert_eq!(state.get("order_update", "en").unwrap().paused_by.as_deref(), Some("admin"));
        assert_eq!(handle(&state, decide(true, None), Actor::Twilio, 2), Ok(vec![]));
        // Paused by Meta: Meta's approval lifts it.
        let mut state = Templates::default();
        for (command, actor) in approved.into_iter().map(|c| (c, Actor::Admin)).chain([(pause(), Actor::Twilio)]) {
            for event in handle(&state, command, actor, 1).unwrap() {
                apply(&mut state, &event);
            }
        }
        let events = handle(&state, decide(true, None), Actor::Twilio, 2).unwrap();
        assert_eq!(events.iter().map(|e| e.kind.as_str()).collect::<Vec<_>>(), ["unpaused"]);
    }

    #[test]
    fn metas_verdicts_on_a_replaced_version_are_ignored() {
        let approved = vec![register(), submit(), decide(true, None)];
        let mut replacement = definition("order_update", "en");
        replacement.content_sid = SID2.to_owned();
        let replaced = [approved, vec![Command::Replace(replacement)]].concat();
        // The old version (SID) is still approved at Meta; the new one (SID2) is a draft.
        assert_eq!(given_when(replaced.clone(), decide(true, None), Actor::Twilio), Ok(vec![]));
        let (name, language) = id("order_update");
        let about_new =
            Command::RecordMetaStatus { name, language, content_sid: SID2.to_owned(), status: MetaStatus::Approved };
        assert_eq!(given_when(replaced, about_new, Actor::Twilio), Ok(vec!["approved".to_owned()]));
    }

    #[test]
    fn metas_pauses_and_disables() {
        let approved = vec![register(), submit(), decide(true, None)];
        let (name, language) = id("order_update");
        let meta = |status| Command::RecordMetaStatus {
            name: name.clone(),
            language: language.clone(),
            content_sid: SID.to_owned(),
            status,
        };
        assert_eq!(
            given_when(approved.clone(), meta(MetaStatus::Paused(None)), Actor::Twilio),
            Ok(vec!["paused".to_owned()])
        );
        assert_eq!(given_when(vec![register(), submit()], meta(MetaStatus::Paused(None)), Actor::Twilio), Ok(vec![]));
        assert_eq!(
            given_when(approved.clone(), meta(MetaStatus::Disabled(None)), Actor::Twilio),
            Ok(vec!["disabled".to_owned()])
        );
        // Disabled is for good: Meta's approval of the same version does not bring it back.
        let disabled = [approved, vec![disable()]].concat();
        assert_eq!(given_when(disabled, meta(MetaStatus::Approved), Actor::Twilio), Ok(vec![]));
    }

    #[test]
    fn repeating_a_command_changes_nothing() {
        let approved = vec![register(), submit(), decide(true, None)];
        assert_eq!(given_when(approved.clone(), decide(true, None), Actor::Twilio), Ok(vec![]));
        assert_eq!(given_when([approved.clone(), vec![pause()]].concat(), pause(), Actor::Twilio), Ok(vec![]));
        assert_eq!(given_when(approved.clone(), unpause(), Actor::Admin), Ok(vec![]));
        assert_eq!(given_when(vec![register(), submit()], submit(), Actor::Admin), Ok(vec![]));
        assert_eq!(given_when([approved, vec![disable()]].concat(), disable(), Actor::Admin), Ok(vec![]));
        let rejected = vec![register(), submit(), decide(false, Some("x"))];
        assert_eq!(given_when(rejected, decide(false, Some("x")), Actor::Twilio), Ok(vec![]));
    }

    #[test]
    fn impossible_transitions_are_conflicts() {
        assert!(matches!(given_when(vec![register()], pause(), Actor::Admin), Err(CommandError::Conflict(_))));
        assert!(matches!(given_when(vec![register()], unpause(), Actor::Admin), Err(CommandError::Conflict(_))));
        let approved = vec![register(), submit(), decide(true, None)];
        assert!(matches!(given_when(approved, submit(), Actor::Admin), Err(CommandError::Conflict(_))));
        assert!(matches!(given_when(vec![register()], register(), Actor::Admin), Err(CommandError::Conflict(_))));
    }

    #[test]
    fn commands_on_unknown_templates_are_not_found() {
        for command in [submit(), pause(), unpause(), disable(), delete(), decide(true, None)] {
            assert!(matches!(given_when(vec![], command, Actor::Admin), Err(CommandError::NotFound(_))));
        }
    }

    #[test]
    fn a_new_version_needs_a_new_content_sid_and_a_new_submission() {
        let approved = vec![register(), submit(), decide(true, None)];
        let mut replacement = definition("order_update", "en");
        assert!(matches!(
            given_when(approved.clone(), Command::Replace(replacement.clone()), Actor::Admin),
            Err(CommandError::Invalid { field: "content_sid", .. })
        ));
        replacement.content_sid = SID2.to_owned();
        let mut state = Templates::default();
        for command in [approved, vec![Command::Replace(replacement)]].concat() {
            for event in handle(&state, command, Actor::Admin, 1).unwrap() {
                apply(&mut state, &event);
            }
        }
        let template = state.get("order_update", "en").unwrap();
        assert_eq!((template.version, template.status, template.content_sid.as_str()), (2, Status::Draft, SID2));
    }

    fn refusal(change: impl FnOnce(&mut Definition)) -> (&'static str, String) {
        let mut d = definition("order_update", "en");
        change(&mut d);
        match handle(&Templates::default(), Command::Register(d), Actor::Admin, 0) {
            Err(CommandError::Invalid { field, message }) => (field, message),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn invalid_definitions_are_refused_naming_the_field() {
        assert_eq!(refusal(|d| d.name = "Order Update".into()).0, "name");
        assert_eq!(refusal(|d| d.language = "klingon".into()).0, "language");
        assert_eq!(refusal(|d| d.category = "promo".into()).0, "category");
        assert_eq!(refusal(|d| d.content_sid = "HX123".into()).0, "content_sid");
        assert_eq!(refusal(|d| d.types = text(&"x".repeat(1025))).0, "types");
        assert!(refusal(|d| d.types = text("{{1}} is your code")).1.contains("start or end"));
        assert!(refusal(|d| d.types = text("Your code is {{1}}")).1.contains("start or end"));
        assert!(refusal(|d| d.types = text("Hi {{1}}, order {{3}}.")).1.contains("{{2}} is missing"));
        assert!(refusal(|d| d.types = text("Hi {{name}}, ok.")).1.contains("not a numbered variable"));
        assert_eq!(
            refusal(|d| {
                d.variables.remove("2");
            })
            .0,
            "variables"
        );
        assert!(refusal(|d| {
            d.variables.insert("3".into(), "x".into());
        })
        .1
        .contains("no variable {{3}}"));
        // The category follows the content: authentication is whatsapp/authentication content.
        assert_eq!(refusal(|d| d.category = "authentication".into()).0, "category");
    }

    #[test]
    fn an_authentication_template_is_metas_code_message() {
        let mut otp = definition("login_code", "en");
        otp.category = "authentication".to_owned();
        otp.types = text("{{1}} is your verification code");
        otp.types.insert(
            "whatsapp/authentication".to_owned(),
            serde_json::json!({"actions": [{"type": "COPY_CODE", "copy_code_text": "Copy code"}]}),
        );
        otp.variables = [("1".to_owned(), "482913".to_owned())].into();
        let mut state = Templates::default();
        for event in handle(&state, Command::Register(otp), Actor::Admin, 0).unwrap() {
            apply(&mut state, &event);
        }
        let template = state.get("login_code", "en").unwrap();
        assert_eq!(template.category, Category::Authentication);
        assert_eq!(template.render(&template.variables), "482913 is your verification code.");
    }

    #[test]
    fn twilio_edits_and_metas_recategorization_are_recorded_once() {
        let (name, language) = id("order_update");
        let edit = |types: Types| Command::RecordContent {
            name: name.clone(),
            language: language.clone(),
            content_sid: SID.to_owned(),
            types,
            variables: [("1".to_owned(), "Ana".to_owned())].into(),
        };
        let edited = edit(text("Hello {{1}}, it is on its way."));
        assert_eq!(given_when(vec![register()], edited.clone(), Actor::Twilio), Ok(vec!["content_updated".to_owned()]));
        assert_eq!(given_when(vec![register(), edited.clone()], edited, Actor::Twilio), Ok(vec![]));
        let recategorize = |category: &str| Command::RecordCategory {
            name: name.clone(),
            language: language.clone(),
            content_sid: SID.to_owned(),
            category: category.to_owned(),
        };
        let mut state = Templates::default();
        for command in [register(), recategorize("MARKETING")] {
            for event in handle(&state, command, Actor::Twilio, 1).unwrap() {
                if event.kind == "recategorized" {
                    assert_eq!(
                        (event.category.as_deref(), event.previous_category.as_deref()),
                        (Some("marketing"), Some("utility"))
                    );
                }
                apply(&mut state, &event);
            }
        }
        assert_eq!(state.get("order_update", "en").unwrap().category, Category::Marketing);
        assert_eq!(handle(&state, recategorize("marketing"), Actor::Twilio, 2), Ok(vec![]));
    }

    #[test]
    fn records_older_than_content_types_read_as_text() {
        let mut state = Templates::default();
        let mut event = handle(&state, register(), Actor::Admin, 0).unwrap().remove(0);
        event.content_types = None;
        apply(&mut state, &event);
        let template = state.get("order_update", "en").unwrap();
        assert_eq!(template.types, text("Hi {{1}}, your order {{2}} ships today."));
    }

    #[test]
    fn rendering_fills_variables() {
        let mut state = Templates::default();
        for event in handle(&state, register(), Actor::Admin, 0).unwrap() {
            apply(&mut state, &event);
        }
        let template = state.get("order_update", "en").unwrap();
        assert_eq!(template.placeholders(), ["1".to_owned(), "2".to_owned()].into());
        let values = [("1".to_owned(), "Bo".to_owned()), ("2".to_owned(), "9".to_owned())].into();
        assert_eq!(template.render(&values), "Hi Bo, your order 9 ships today.");
    }

    #[test]
    fn replaying_the_events_rebuilds_the_same_state() {
        let mut state = Templates::default();
        let mut log = Vec::new();
        for command in
            [register(), submit(), decide(true, None), pause(), Command::Register(definition("welcome", "pt_BR"))]
        {
            for event in handle(&state, command, Actor::Admin, 7).unwrap() {
                apply(&mut state, &event);
                log.push(event);
            }
        }
        let mut rebuilt = Templates::default();
        for event in &log {
            apply(&mut rebuilt, event);
        }
        assert_eq!(rebuilt, state);
        assert_eq!(rebuilt.len(), 2);
    }
}
