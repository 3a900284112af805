//! Deciding what may be sent: pure, `now` passed in.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;
use wa_schemas::{OutboundAuthorized, OutboundRejected, OutboundWindowChecked, RejectionReason, TemplateRequest};

use crate::template::{Category, Status, Template, Templates};

/// The service name, the `rejected_by` of refusals.
const SERVICE: &str = "template-approval";

/// Language fallback chains: for a requested language, the languages to try after it, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fallbacks(HashMap<String, Vec<String>>);

impl Fallbacks {
    /// Parses `pt_BR:pt:en,es_MX:es:en`: each comma-separated chain starts with the requested
    /// language and lists the ones to fall back to.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut chains = HashMap::new();
        for chain in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            let languages: Vec<String> = chain.split(':').map(|l| l.trim().to_owned()).collect();
            if languages.len() < 2 || languages.iter().any(|l| !crate::languages::is_known(l)) {
                return Err(format!("{chain:?} is not a chain of WhatsApp languages like pt_BR:pt:en"));
            }
            chains.insert(languages[0].clone(), languages[1..].to_vec());
        }
        Ok(Self(chains))
    }

    /// The requested language followed by its fallbacks.
    pub fn chain<'a>(&'a self, requested: &'a str) -> impl Iterator<Item = &'a str> {
        std::iter::once(requested).chain(self.0.get(requested).into_iter().flatten().map(String::as_str))
    }
}

/// What happens to a checked request.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Send it.
    Authorize(OutboundAuthorized),
    /// Refuse it.
    Reject(OutboundRejected),
}

/// A refusal's machine-readable reason and readable message.
type Refusal = (RejectionReason, String);

/// Decides on a window verdict.
pub fn decide(checked: OutboundWindowChecked, templates: &Templates, fallbacks: &Fallbacks, now: i64) -> Decision {
    let event_id =
        Uuid::new_v5(&Uuid::NAMESPACE_OID, format!("wachannel:decided:{}", checked.event_id).as_bytes()).to_string();
    let outcome = match &checked.template {
        // session-window refused the template itself: the customer opted out of every
        // business-initiated message (SESSION_OPT_OUT_SCOPE=all_business_initiated).
        // A window reason never stops a template.
        Some(_)
            if !checked.allowed
                && checked.refusal_reason.as_deref().and_then(RejectionReason::parse)
                    == Some(RejectionReason::OptedOut) =>
        {
            Err((
                RejectionReason::OptedOut,
                "the customer opted out of messages the business starts; only replies inside the 24-hour window may \
                 be sent"
                    .to_owned(),
            ))
        }
        Some(request) => choose_template(request, checked.opted_out, templates, fallbacks).map(Some),
        None => free_form(&checked).map(|()| None),
    };
    match outcome {
        Ok(content) => {
            let (content_sid, content_variables, template_name, template_language, preview) = match content {
                Some((template, request)) => (
                    Some(template.content_sid.to_string()),
                    Some(content_variables(&request.variables)),
                    Some(template.name.clone()),
                    Some(template.language.clone()),
                    Some(template.render(&request.variables)),
                ),
                None => (None, None, None, None, None),
            };
            let is_template = content_sid.is_some();
            Decision::Authorize(OutboundAuthorized {
                event_id,
                occurred_at: now,
                conversation_id: checked.conversation_id,
                request_id: checked.request_id,
                from: checked.from,
                to: checked.to,
                body: if is_template { None } else { checked.body },
                media_urls: if is_template { vec![] } else { checked.media_urls },
                window_expires_at: if is_template { None } else { checked.window_expires_at },
                content_sid,
                content_variables,
                template_name,
                template_language,
                preview,
                metadata: checked.metadata,
            })
        }
        Err((reason, message)) => Decision::Reject(OutboundRejected {
            event_id,
            occurred_at: now,
            conversation_id: checked.conversation_id,
            request_id: checked.request_id,
            from: checked.from,
            to: checked.to,
            reason: reason.as_str().to_owned(),
            message,
            rejected_by: SERVICE.to_owned(),
            metadata: checked.metadata,
        }),
    }
}

fn free_form(checked: &OutboundWindowChecked) -> Result<(), Refusal> {
    if checked.allowed {
        return Ok(());
    }
    let reason = match checked.refusal_reason.as_deref().and_then(RejectionReason::parse) {
        Some(RejectionReason::NoWindow) => RejectionReason::NoWindow,
        _ => RejectionReason::WindowClosed,
    };
    let message = match (reason, checked.window_expires_at) {
        (RejectionReason::NoWindow, _) => {
            "the customer has not written to this sender, so only an approved template may be sent".to_owned()
        }
        (_, Some(expires_at)) => {
            let closed = chrono::DateTime::from_timestamp_millis(expires_at).unwrap_or_default();
            format!(
                "the customer's 24-hour window closed at {}; only an approved template may be sent",
                closed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )
        }
        _ => "the customer's 24-hour window is closed; only an approved template may be sent".to_owned(),
    };
    Err((reason, message))
}

/// The first approved template along the language chain, checked against the request.
fn choose_template<'a, 'r>(
    request: &'r TemplateRequest,
    opted_out: bool,
    templates: &'a Templates,
    fallbacks: &Fallbacks,
) -> Result<(&'a Template, &'r TemplateRequest), Refusal> {
    let chain: Vec<&str> = fallbacks.chain(&request.language).collect();
    let candidates: Vec<&Template> =
        chain.iter().filter_map(|language| templates.get(&request.name, language)).collect();
    let Some(first) = candidates.first() else {
        return Err((
            RejectionReason::TemplateNotFound,
            format!("no template {:?} is registered in {}", request.name, chain.join(", ")),
        ));
    };
    let Some(template) = candidates.iter().find(|t| t.status == Status::Approved) else {
        let why = first.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let (reason, state) = match first.status {
            Status::Paused => (RejectionReason::TemplatePaused, "paused by WhatsApp"),
            Status::Disabled => (RejectionReason::TemplateDisabled, "disabled"),
            Status::Rejected => (RejectionReason::TemplateRejected, "rejected by WhatsApp"),
            Status::Draft | Status::Pending | Status::Approved => {
                (RejectionReason::TemplateNotApproved, "not approved yet")
            }
        };
        return Err((reason, format!("template {} is {state}{why}", first.id())));
    };
    if template.category == Category::Marketing && opted_out {
        return Err((RejectionReason::OptedOut, "the customer opted out of marketing messages".to_owned()));
    }
    let expected = template.variables();
    if let Some(unknown) = request.variables.keys().find(|k| k.parse::<u32>().map_or(true, |n| !expected.contains(&n)))
    {
        return Err((
            RejectionReason::TemplateVariablesInvalid,
            format!("template {} has no variable {{{{{unknown}}}}}", template.id()),
        ));
    }
    if let Some(missing) =
        expected.iter().find(|n| request.variables.get(&n.to_string()).is_none_or(|v| v.trim().is_empty()))
    {
        return Err((
            RejectionReason::TemplateVariablesInvalid,
            format!("template {} needs a value for {{{{{missing}}}}}", template.id()),
        ));
    }
    for (key, value) in &request.variables {
        if let Some(problem) = wa_twilio::limits::template_value_problem(value) {
            return Err((RejectionReason::TemplateVariablesInvalid, format!("the value of {{{{{key}}}}} {problem}")));
        }
    }
    let length = template.render(&request.variables).chars().count();
    if length > wa_twilio::limits::MAX_TEMPLATE_BODY_CHARS {
        return Err((
            RejectionReason::TemplateVariablesInvalid,
            format!(
                "template {} filled in is {length} characters; WhatsApp accepts at most {}",
                template.id(),
                wa_twilio::limits::MAX_TEMPLATE_BODY_CHARS
            ),
        ));
    }
    Ok((*template, request))
}

/// The variables as Twilio's `ContentVariables` JSON.
pub fn content_variables(values: &BTreeMap<String, String>) -> String {
    serde_json::to_string(values).expect("a string map is json")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::template::tests::{definition, SID, SID2};
    use crate::template::{apply, handle, Actor, Command, MetaStatus};

    fn checked(allowed: bool, reason: Option<&str>, template: Option<TemplateRequest>) -> OutboundWindowChecked {
        OutboundWindowChecked {
            event_id: "e1".into(),
            occurred_at: 1,
            conversation_id: "c1".into(),
            request_id: "r1".into(),
            from: "whatsapp:+1".into(),
            to: "whatsapp:+2".into(),
            body: if template.is_some() { None } else { Some("hi".into()) },
            media_urls: vec![],
            template,
            allowed,
            refusal_reason: reason.map(str::to_owned),
            window_expires_at: Some(0),
            opted_out: false,
            metadata: Default::default(),
        }
    }

    fn request(language: &str, values: &[(&str, &str)]) -> TemplateRequest {
        TemplateRequest {
            name: "order_update".into(),
            language: language.into(),
            variables: values.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        }
    }

    /// Given templates built by these commands, when this request is checked, then the
    /// decision.
    fn given(commands: Vec<Command>) -> Templates {
        let mut state = Templates::default();
        for command in commands {
            for event in handle(&state, command, Actor::Admin, 0).expect("given commands are accepted") {
                apply(&mut state, &event);
            }
        }
        state
    }

    fn approved(language: &str, sid: &str, category: &str) -> Vec<Command> {
        let mut d = definition("order_update", language);
        d.content_sid = sid.to_owned();
        d.category = category.to_owned();
        vec![
            Command::Register(d),
            Command::Submit { name: "order_update".into(), language: language.into() },
            Command::RecordMetaStatus {
                name: "order_update".into(),
                language: language.into(),
                content_sid: sid.to_owned(),
                status: MetaStatus::Approved,
            },
        ]
    }

    fn reject_reason(decision: Decision) -> String {
        match decision {
            Decision::Reject(rejected) => rejected.reason,
            Decision::Authorize(a) => panic!("expected a rejection, got {a:?}"),
        }
    }

    const FULL: &[(&str, &str)] = &[("1", "Ana"), ("2", "1234")];

    #[test]
    fn free_form_follows_the_window() {
        let templates = Templates::default();
        let Decision::Authorize(a) = decide(checked(true, None, None), &templates, &Fallbacks::default(), 5) else {
            panic!("allowed free-form is authorized");
        };
        assert_eq!((a.body.as_deref(), a.content_sid), (Some("hi"), None));
        assert_eq!(
            reject_reason(decide(checked(false, Some("no_window"), None), &templates, &Fallbacks::default(), 5)),
            "no_window"
        );
        let Decision::Reject(closed) =
            decide(checked(false, Some("window_closed"), None), &templates, &Fallbacks::default(), 5)
        else {
            panic!()
        };
        assert_eq!(closed.reason, "window_closed");
        assert!(closed.message.contains("1970-01-01T00:00:00Z"), "{}", closed.message);
    }

    #[test]
    fn an_approved_template_is_sent_by_content_sid_whatever_the_window() {
        let templates = given(approved("en", SID, "utility"));
        let decision = decide(
            checked(false, Some("window_closed"), Some(request("en", FULL))),
            &templates,
            &Fallbacks::default(),
            5,
        );
        let Decision::Authorize(a) = decision else { panic!("{decision:?}") };
        assert_eq!(a.content_sid.as_deref(), Some(SID));
        assert_eq!(a.content_variables.as_deref(), Some(r#"{"1":"Ana","2":"1234"}"#));
        assert_eq!(a.preview.as_deref(), Some("Hi Ana, your order 1234 ships today."));
        assert_eq!((a.body, a.window_expires_at), (None, None));
        assert_eq!(a.template_language.as_deref(), Some("en"));
    }

    #[test]
    fn refusals_by_template_state() {
        let fallbacks = Fallbacks::default();
        let ask = |templates: &Templates| {
            reject_reason(decide(checked(true, None, Some(request("en", FULL))), templates, &fallbacks, 5))
        };
        assert_eq!(ask(&Templates::default()), "template_not_found");
        assert_eq!(ask(&given(vec![Command::Register(definition("order_update", "en"))])), "template_not_approved");
        let mut pending = approved("en", SID, "utility");
        pending.pop();
        assert_eq!(ask(&given(pending.clone())), "template_not_approved");
        let rejected = [
            pending.clone(),
            vec![Command::RecordMetaStatus {
                name: "order_update".into(),
                language: "en".into(),
                content_sid: SID.to_owned(),
                status: MetaStatus::Rejected(Some("x".into())),
            }],
        ]
        .concat();
        assert_eq!(ask(&given(rejected)), "template_rejected");
        let pause = Command::Pause { name: "order_update".into(), language: "en".into(), reason: None };
        assert_eq!(ask(&given([approved("en", SID, "utility"), vec![pause]].concat())), "template_paused");
        let disable = Command::Disable { name: "order_update".into(), language: "en".into(), reason: None };
        assert_eq!(ask(&given([approved("en", SID, "utility"), vec![disable]].concat())), "template_disabled");
    }

    #[test]
    fn variables_must_all_be_given_non_empty_and_known() {
        let templates = given(approved("en", SID, "utility"));
        let ask = |values: &[(&str, &str)]| {
            reject_reason(decide(
                checked(true, None, Some(request("en", values))),
                &templates,
                &Fallbacks::default(),
                5,
            ))
        };
        assert_eq!(ask(&[("1", "Ana")]), "template_variables_invalid");
        assert_eq!(ask(&[("1", "Ana"), ("2", " ")]), "template_variables_invalid");
        assert_eq!(ask(&[("1", "Ana"), ("2", "1"), ("3", "x")]), "template_variables_invalid");
        assert_eq!(ask(&[("1", "Ana"), ("2", "1"), ("name", "x")]), "template_variables_invalid");
        // WhatsApp's rules on parameters, and on the filled-in body.
        assert_eq!(ask(&[("1", "Ana"), ("2", "12\n34")]), "template_variables_invalid");
        assert_eq!(ask(&[("1", "Ana"), ("2", "12\t34")]), "template_variables_invalid");
        assert_eq!(ask(&[("1", "Ana"), ("2", "12     34")]), "template_variables_invalid");
        let long = "x".repeat(1_000);
        assert_eq!(ask(&[("1", "Ana"), ("2", long.as_str())]), "template_variables_invalid");
        let fits = "x".repeat(990);
        assert!(matches!(
            decide(
                checked(true, None, Some(request("en", &[("1", "Ana"), ("2", fits.as_str())]))),
                &templates,
                &Fallbacks::default(),
                5
            ),
            Decision::Authorize(_)
        ));
    }

    #[test]
    fn a_template_session_window_refused_is_rejected_whatever_its_category() {
        let utility = given(approved("en", SID, "utility"));
        let mut refused = checked(false, Some("opted_out"), Some(request("en", FULL)));
        refused.opted_out = true;
        assert_eq!(reject_reason(decide(refused, &utility, &Fallbacks::default(), 5)), "opted_out");
    }

    #[test]
    fn marketing_templates_are_refused_to_opted_out_customers_only() {
        let marketing = given(approved("en", SID, "marketing"));
        let mut opted_out = checked(true, None, Some(request("en", FULL)));
        opted_out.opted_out = true;
        assert_eq!(reject_reason(decide(opted_out.clone(), &marketing, &Fallbacks::default(), 5)), "opted_out");
        let utility = given(approved("en", SID, "utility"));
        assert!(matches!(decide(opted_out, &utility, &Fallbacks::default(), 5), Decision::Authorize(_)));
    }

    #[test]
    fn the_first_approved_language_of_the_fallback_chain_is_sent() {
        let fallbacks = Fallbacks::parse("pt_BR:pt:en, es_MX:es").unwrap();
        let both = given([approved("pt", SID, "utility"), approved("en", SID2, "utility")].concat());
        let sent = |templates: &Templates| match decide(
            checked(true, None, Some(request("pt_BR", FULL))),
            templates,
            &fallbacks,
            5,
        ) {
            Decision::Authorize(a) => (a.template_language.unwrap(), a.content_sid.unwrap()),
            Decision::Reject(r) => panic!("{r:?}"),
        };
        assert_eq!(sent(&both), ("pt".to_owned(), SID.to_owned()));
        let mut pt_pending = approved("pt", SID, "utility");
        pt_pending.pop();
        let en_only_approved = given([pt_pending, approved("en", SID2, "utility")].concat());
        assert_eq!(sent(&en_only_approved), ("en".to_owned(), SID2.to_owned()));
        // No chain for es_AR: only es_AR itself is tried.
        let ask = decide(checked(true, None, Some(request("es_AR", FULL))), &both, &fallbacks, 5);
        assert_eq!(reject_reason(ask), "template_not_found");
    }

    #[test]
    fn fallback_chains_are_validated() {
        assert!(Fallbacks::parse("").unwrap().chain("en").eq(["en"]));
        assert!(Fallbacks::parse("pt_BR").is_err());
        assert!(Fallbacks::parse("pt_BR:xx").is_err());
    }
}
