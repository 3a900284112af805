//! Deciding what may be sent: pure, `now` passed in.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;
use wa_schemas::{
    Actor, AuthorizationRule, OutboundAuthorized, OutboundRejected, OutboundWindowChecked, PricingCategory,
    PricingType, RejectionReason, TemplateRequest,
};
use wa_twilio::content as rules;

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

/// Meta's marketing rules the channel applies before Twilio is asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketingRules {
    /// Number prefixes (`+1`) Meta delivers no marketing templates to.
    pub blocked_prefixes: Vec<String>,
    /// How long after Meta declined a marketing message to a customer (63049) marketing
    /// templates to that customer are held back, in milliseconds (0: not at all).
    pub cooldown_millis: i64,
}

impl Default for MarketingRules {
    /// No blocked prefixes; a 24-hour cool-down.
    fn default() -> Self {
        Self { blocked_prefixes: Vec::new(), cooldown_millis: 24 * 3_600_000 }
    }
}

impl MarketingRules {
    /// Parses `+1,+7`: `+` and digits each.
    pub fn parse_prefixes(text: &str) -> Result<Vec<String>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|prefix| match prefix.strip_prefix('+') {
                Some(digits) if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) => {
                    Ok(prefix.to_owned())
                }
                _ => Err(format!("{prefix:?} is not a number prefix like +1")),
            })
            .collect()
    }
}

/// Everything a decision follows beyond the templates: language fallbacks and Meta's marketing
/// rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Language fallback chains.
    pub fallbacks: Fallbacks,
    /// Marketing rules.
    pub marketing: MarketingRules,
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
pub fn decide(checked: OutboundWindowChecked, templates: &Templates, policy: &Policy, now: i64) -> Decision {
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
        Some(request) => choose_template(request, &checked, templates, policy, now).map(Some),
        None => free_form(&checked).map(|()| None),
    };
    match outcome {
        Ok(content) => {
            let rule = content.as_ref().map_or(AuthorizationRule::SessionReply, |(_, _, rule)| *rule);
            let (content_sid, content_variables, template_name, template_language, preview) = match content {
                Some((template, request, _)) => (
                    Some(template.content_sid.to_string()),
                    Some(content_variables(&request.variables)),
                    Some(template.name.clone()),
                    Some(template.language.clone()),
                    Some(template.render(&request.variables)),
                ),
                None => (None, None, None, None, None),
            };
            let is_template = content_sid.is_some();
            let by_window = rule != AuthorizationRule::ApprovedTemplate;
            let category = content.as_ref().map(|(template, _, _)| template.category);
            let (pricing_category, pricing_type) = pricing(rule, category, &checked);
            Decision::Authorize(OutboundAuthorized {
                event_id,
                occurred_at: now,
                conversation_id: checked.conversation_id,
                request_id: checked.request_id,
                from: checked.from,
                to: checked.to,
                body: if is_template { None } else { checked.body },
                media_urls: if is_template { vec![] } else { checked.media_urls },
                window_expires_at: if by_window { checked.window_expires_at } else { None },
                content_sid,
                content_variables,
                template_name,
                template_language,
                preview,
                rule: Some(rule.as_str().to_owned()),
                pricing_category: Some(pricing_category.as_str().to_owned()),
                pricing_type: Some(pricing_type.as_str().to_owned()),
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

/// How Meta prices a message it lets go (per-message pricing since 2025-07-01): everything
/// inside a free entry point is free; replies and session content are free service messages;
/// a utility template inside the customer's window is free; every other template is charged at
/// its category's rate (marketing and authentication even inside the window).
pub fn pricing(
    rule: AuthorizationRule,
    category: Option<Category>,
    checked: &OutboundWindowChecked,
) -> (PricingCategory, PricingType) {
    let category = match (rule, category) {
        (AuthorizationRule::ApprovedTemplate, Some(Category::Marketing)) => PricingCategory::Marketing,
        (AuthorizationRule::ApprovedTemplate, Some(Category::Authentication)) => PricingCategory::Authentication,
        (AuthorizationRule::ApprovedTemplate, _) => PricingCategory::Utility,
        (AuthorizationRule::SessionReply | AuthorizationRule::SessionContent, _) => PricingCategory::Service,
    };
    let kind = if checked.entry_point_open {
        PricingType::FreeEntryPoint
    } else {
        match category {
            PricingCategory::Service => PricingType::FreeCustomerService,
            PricingCategory::Utility if checked.window_open => PricingType::FreeCustomerService,
            _ => PricingType::Regular,
        }
    };
    (category, kind)
}

/// Whether an admin holds the template back (disabled, or paused by an admin): no rule sends it.
fn held(template: &Template) -> bool {
    template.status == Status::Disabled
        || (template.status == Status::Paused
            && template.paused_by.as_deref().and_then(Actor::parse) == Some(Actor::Admin))
}

/// The template to send and the rule that lets it go: along the language chain, the first that
/// is approved, or, while the customer's window is open, the first whose content WhatsApp allows
/// in session without approval (whatever Meta's status, unless an admin holds it). Then checked
/// against the request: consent, every variable the content uses given and no other, values
/// WhatsApp takes, the length filled in.
fn choose_template<'a, 'r>(
    request: &'r TemplateRequest,
    checked: &OutboundWindowChecked,
    templates: &'a Templates,
    policy: &Policy,
    now: i64,
) -> Result<(&'a Template, &'r TemplateRequest, AuthorizationRule), Refusal> {
    let chain: Vec<&str> = policy.fallbacks.chain(&request.language).collect();
    let candidates: Vec<&Template> =
        chain.iter().filter_map(|language| templates.get(&request.name, language)).collect();
    let Some(first) = candidates.first() else {
        return Err((
            RejectionReason::TemplateNotFound,
            format!("no template {:?} is registered in {}", request.name, chain.join(", ")),
        ));
    };
    let in_session = |t: &&Template| checked.window_open && !held(t) && rules::session_refusal(&t.types).is_none();
    let chosen = candidates.iter().find_map(|t| match t.status {
        Status::Approved => Some((*t, AuthorizationRule::ApprovedTemplate)),
        _ if in_session(t) => Some((*t, AuthorizationRule::SessionContent)),
        _ => None,
    });
    let Some((template, rule)) = chosen else {
        let why = first.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default();
        let (reason, state) = match first.status {
            Status::Paused => (RejectionReason::TemplatePaused, "paused by WhatsApp"),
            Status::Disabled => (RejectionReason::TemplateDisabled, "disabled"),
            Status::Rejected => (RejectionReason::TemplateRejected, "rejected by WhatsApp"),
            Status::Draft | Status::Pending | Status::Approved => {
                (RejectionReason::TemplateNotApproved, "not approved yet")
            }
        };
        // Say why the window did not let it go either, when it could have.
        let session = match rules::session_refusal(&first.types) {
            Some(refusal) if checked.window_open => format!("; {refusal}"),
            None if !checked.window_open => {
                "; its content could go without approval inside the customer's window, which is closed".to_owned()
            }
            _ => String::new(),
        };
        return Err((reason, format!("template {} is {state}{why}{session}", first.id())));
    };
    if template.category == Category::Marketing && checked.opted_out {
        return Err((RejectionReason::OptedOut, "the customer opted out of marketing messages".to_owned()));
    }
    if template.category == Category::Marketing && rule == AuthorizationRule::ApprovedTemplate {
        marketing_allowed(checked, &policy.marketing, now)?;
    }
    if let Some(problem) = rules::values_problem(&template.types, &request.variables) {
        return Err((RejectionReason::TemplateVariablesInvalid, format!("template {}: {problem}", template.id())));
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
    Ok((template, request, rule))
}

/// Meta's marketing rules for a marketing template: not to a number where Meta delivers none,
/// not during the cool-down after Meta declined one to this customer (63049).
fn marketing_allowed(checked: &OutboundWindowChecked, rules: &MarketingRules, now: i64) -> Result<(), Refusal> {
    let number = checked.to.strip_prefix("whatsapp:").unwrap_or(&checked.to);
    if let Some(prefix) = rules.blocked_prefixes.iter().find(|prefix| number.starts_with(prefix.as_str())) {
        return Err((
            RejectionReason::MarketingRegionBlocked,
            format!("Meta delivers no marketing templates to {prefix} numbers; send a utility template or reply inside the window"),
        ));
    }
    if let Some(limited_at) = checked.marketing_limited_at {
        let until = limited_at.saturating_add(rules.cooldown_millis);
        if now < until {
            let until = chrono::DateTime::from_timestamp_millis(until).unwrap_or_default();
            return Err((
                RejectionReason::MarketingLimited,
                format!(
                    "Meta declined a marketing message to this customer (63049, its per-user marketing limit); marketing templates wait until {}",
                    until.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
            ));
        }
    }
    Ok(())
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
        let free_form = template.is_none();
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
            marketing_limited_at: None,
            entry_point_open: false,
            // Template requests are checked with the window closed unless a test opens it.
            window_open: allowed && free_form,
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

    /// The refusal's reason, or `None` when authorized.
    fn refusal_of(decision: Decision) -> Option<String> {
        match decision {
            Decision::Reject(rejected) => Some(rejected.reason),
            Decision::Authorize(_) => None,
        }
    }

    #[test]
    fn free_form_follows_the_window() {
        let templates = Templates::default();
        let Decision::Authorize(a) = decide(checked(true, None, None), &templates, &Policy::default(), 5) else {
            panic!("allowed free-form is authorized");
        };
        assert_eq!((a.body.as_deref(), a.content_sid), (Some("hi"), None));
        assert_eq!(
            reject_reason(decide(checked(false, Some("no_window"), None), &templates, &Policy::default(), 5)),
            "no_window"
        );
        let Decision::Reject(closed) =
            decide(checked(false, Some("window_closed"), None), &templates, &Policy::default(), 5)
        else {
            panic!()
        };
        assert_eq!(closed.reason, "window_closed");
        assert!(closed.message.contains("1970-01-01T00:00:00Z"), "{}", closed.message);
    }

    #[test]
    fn an_approved_template_is_sent_by_content_sid_whatever_the_window() {
        let templates = given(approved("en", SID, "utility"));
        let decision =
            decide(checked(false, Some("window_closed"), Some(request("en", FULL))), &templates, &Policy::default(), 5);
        let Decision::Authorize(a) = decision else { panic!("{decision:?}") };
        assert_eq!(a.content_sid.as_deref(), Some(SID));
        assert_eq!(a.content_variables.as_deref(), Some(r#"{"1":"Ana","2":"1234"}"#));
        assert_eq!(a.preview.as_deref(), Some("Hi Ana, your order 1234 ships today."));
        assert_eq!((a.body, a.window_expires_at), (None, None));
        assert_eq!(a.template_language.as_deref(), Some("en"));
    }

    #[test]
    fn refusals_by_template_state() {
        let fallbacks = Policy::default();
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
            reject_reason(decide(checked(true, None, Some(request("en", values))), &templates, &Policy::default(), 5))
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
                &Policy::default(),
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
        assert_eq!(reject_reason(decide(refused, &utility, &Policy::default(), 5)), "opted_out");
    }

    #[test]
    fn marketing_templates_are_refused_to_opted_out_customers_only() {
        let marketing = given(approved("en", SID, "marketing"));
        let mut opted_out = checked(true, None, Some(request("en", FULL)));
        opted_out.opted_out = true;
        assert_eq!(reject_reason(decide(opted_out.clone(), &marketing, &Policy::default(), 5)), "opted_out");
        let utility = given(approved("en", SID, "utility"));
        assert!(matches!(decide(opted_out, &utility, &Policy::default(), 5), Decision::Authorize(_)));
    }

    #[test]
    fn the_first_approved_language_of_the_fallback_chain_is_sent() {
        let fallbacks = Policy { fallbacks: Fallbacks::parse("pt_BR:pt:en, es_MX:es").unwrap(), ..Policy::default() };
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

    fn registered(types: serde_json::Value, variables: &[(&str, &str)]) -> Templates {
        let mut d = definition("order_update", "en");
        d.types = types.as_object().unwrap().clone();
        d.variables = variables.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        given(vec![Command::Register(d)])
    }

    fn in_window(request: TemplateRequest, open: bool) -> OutboundWindowChecked {
        let mut checked = checked(true, None, Some(request));
        checked.window_open = open;
        checked
    }

    #[test]
    fn session_content_goes_unapproved_inside_the_window_only() {
        let quick_reply = registered(
            serde_json::json!({"twilio/quick-reply": {"body": "Hi {{1}}, is order {{2}} right?",
                "actions": [{"title": "Yes", "id": "yes"}, {"title": "No", "id": "no"}]}}),
            &[("1", "Ana"), ("2", "1234")],
        );
        let values = [("1", "Bo"), ("2", "77")];
        match decide(in_window(request("en", &values), true), &quick_reply, &Policy::default(), 5) {
            Decision::Authorize(a) => {
                assert_eq!(a.rule.as_deref(), Some("session_content"));
                assert_eq!(a.window_expires_at, Some(0), "dispatch re-checks the window");
                assert_eq!(a.preview.as_deref(), Some("Hi Bo, is order 77 right?"));
            }
            other => panic!("{other:?}"),
        }
        match decide(in_window(request("en", &values), false), &quick_reply, &Policy::default(), 5) {
            Decision::Reject(r) => {
                assert_eq!(r.reason, "template_not_approved");
                assert!(r.message.contains("window, which is closed"), "{}", r.message);
            }
            other => panic!("{other:?}"),
        }
        // A card needs approval even inside the window.
        let card = registered(
            serde_json::json!({"twilio/card": {"title": "Order {{1}} shipped",
                "actions": [{"type": "URL", "title": "Track", "url": "https://example.com/t/{{2}}"}]}}),
            &[("1", "1234"), ("2", "abc")],
        );
        match decide(in_window(request("en", &values), true), &card, &Policy::default(), 5) {
            Decision::Reject(r) => assert!(r.message.contains("needs WhatsApp's approval"), "{}", r.message),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_variable_the_content_uses_and_no_other_and_media_stays_http() {
        let media = registered(
            serde_json::json!({"twilio/media": {"body": "Invoice {{1}} attached", "media": ["{{2}}"]}}),
            &[("1", "A-1"), ("2", "https://cdn.example.com/a.pdf")],
        );
        let mut states = vec![];
        for values in [
            vec![("1", "A-2"), ("2", "https://cdn.example.com/b.pdf")],
            vec![("1", "A-2"), ("2", "file:///etc/passwd")],
            vec![("1", "A-2")],
        ] {
            let approved = {
                let mut state = media.clone();
                let (name, language) = ("order_update".to_owned(), "en".to_owned());
                for command in [
                    Command::Submit { name: name.clone(), language: language.clone() },
                    Command::RecordMetaStatus {
                        name,
                        language,
                        content_sid: SID.to_owned(),
                        status: MetaStatus::Approved,
                    },
                ] {
                    for event in handle(&state, command, Actor::Twilio, 1).unwrap() {
                        apply(&mut state, &event);
                    }
                }
                state
            };
            states.push(decide(checked(true, None, Some(request("en", &values))), &approved, &Policy::default(), 5));
        }
        assert!(matches!(&states[0], Decision::Authorize(a) if a.rule.as_deref() == Some("approved_template")));
        assert!(matches!(&states[1], Decision::Reject(r) if r.message.contains("http(s)")));
        assert!(matches!(&states[2], Decision::Reject(r) if r.message.contains("{{2}}")));
    }

    #[test]
    fn marketing_templates_follow_metas_region_and_per_user_limits() {
        let approved_as = |category: &str| {
            let mut d = definition("order_update", "en");
            d.category = category.to_owned();
            let (name, language) = ("order_update".to_owned(), "en".to_owned());
            given(vec![
                Command::Register(d),
                Command::Submit { name: name.clone(), language: language.clone() },
                Command::RecordMetaStatus { name, language, content_sid: SID.to_owned(), status: MetaStatus::Approved },
            ])
        };
        let policy = Policy {
            marketing: MarketingRules { blocked_prefixes: vec!["+1".to_owned()], cooldown_millis: 10 },
            ..Policy::default()
        };
        let to = |address: &str, limited_at: Option<i64>| {
            let mut c = checked(true, None, Some(request("en", FULL)));
            c.to = address.to_owned();
            c.marketing_limited_at = limited_at;
            c
        };
        let (us, brazil) = ("whatsapp:+14152370142", "whatsapp:+5511987654321");
        let marketing = approved_as("marketing");
        assert_eq!(refusal_of(decide(to(us, None), &marketing, &policy, 5)), Some("marketing_region_blocked".into()));
        assert_eq!(refusal_of(decide(to(brazil, None), &marketing, &policy, 5)), None);
        assert_eq!(refusal_of(decide(to(brazil, Some(0)), &marketing, &policy, 5)), Some("marketing_limited".into()));
        assert_eq!(refusal_of(decide(to(brazil, Some(0)), &marketing, &policy, 10)), None, "the cool-down is over");
        let utility = approved_as("utility");
        assert_eq!(refusal_of(decide(to(us, Some(0)), &utility, &policy, 5)), None);
        assert_eq!(MarketingRules::parse_prefixes(" +1, +7 ").unwrap(), ["+1", "+7"]);
        assert!(MarketingRules::parse_prefixes("1").is_err());
        assert!(MarketingRules::parse_prefixes("").unwrap().is_empty());
    }

    #[test]
    fn every_message_is_priced_as_meta_prices_it() {
        let priced = |rule, category, window_open, entry_point_open| {
            let mut c = checked(true, None, None);
            c.window_open = window_open;
            c.entry_point_open = entry_point_open;
            let (category, kind) = pricing(rule, category, &c);
            (category.as_str(), kind.as_str())
        };
        use AuthorizationRule::{ApprovedTemplate, SessionContent, SessionReply};
        assert_eq!(priced(SessionReply, None, true, false), ("service", "free_customer_service"));
        assert_eq!(
            priced(SessionContent, Some(Category::Marketing), true, false),
            ("service", "free_customer_service")
        );
        assert_eq!(
            priced(ApprovedTemplate, Some(Category::Utility), true, false),
            ("utility", "free_customer_service")
        );
        assert_eq!(priced(ApprovedTemplate, Some(Category::Utility), false, false), ("utility", "regular"));
        assert_eq!(priced(ApprovedTemplate, Some(Category::Marketing), true, false), ("marketing", "regular"));
        assert_eq!(
            priced(ApprovedTemplate, Some(Category::Authentication), true, false),
            ("authentication", "regular")
        );
        assert_eq!(priced(ApprovedTemplate, Some(Category::Marketing), false, true), ("marketing", "free_entry_point"));
        assert_eq!(priced(SessionReply, None, true, true), ("service", "free_entry_point"));
    }
}
