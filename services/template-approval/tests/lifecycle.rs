//! Random command sequences against the template aggregate: given whatever came before, when a
//! command is decided and its events applied, then the lifecycle's rules still hold.

use std::collections::BTreeMap;

use proptest::prelude::*;
use template_approval::authorize::{decide, Decision, Policy};
use template_approval::template::{apply, handle, Actor, Command, Definition, MetaStatus, Status, Templates};
use wa_schemas::{OutboundWindowChecked, TemplateEvent, TemplateRequest};

const NAMES: [&str; 2] = ["order_update", "welcome_back"];
const LANGUAGE: &str = "en";
const SIDS: [&str; 3] =
    ["HX0123456789abcdef0123456789abcdef", "HXfedcba9876543210fedcba9876543210", "HX00000000000000000000000000000042"];
const CATEGORIES: [&str; 3] = ["utility", "marketing", "authentication"];
const REASONS: [&str; 2] = ["INVALID_FORMAT", "TAG_CONTENT_MISMATCH"];

fn definition(name: &str, sid: &str, category: &str) -> Definition {
    Definition {
        name: name.to_owned(),
        language: LANGUAGE.to_owned(),
        category: category.to_owned(),
        content_sid: sid.to_owned(),
        // An authentication template is Meta's code message; the others are text.
        types: if category == "authentication" {
            serde_json::json!({"whatsapp/authentication": {"actions": [{"type": "COPY_CODE", "copy_code_text": "Copy"}]}})
        } else {
            serde_json::json!({"twilio/text": {"body": "Hi {{1}}, your order {{2}} ships today."}})
        }
        .as_object()
        .expect("an object")
        .clone(),
        variables: if category == "authentication" {
            [("1".to_owned(), "482913".to_owned())].into()
        } else {
            [("1".to_owned(), "Ana".to_owned()), ("2".to_owned(), "1234".to_owned())].into()
        },
    }
}

/// A command with who issues it: Meta's statuses come from the status sync, the rest from the
/// admin API.
fn command() -> impl Strategy<Value = (Command, Actor)> {
    let name = prop::sample::select(NAMES.to_vec()).prop_map(str::to_owned);
    let sid = prop::sample::select(SIDS.to_vec());
    let reason = prop::option::of(prop::sample::select(REASONS.to_vec()).prop_map(str::to_owned));
    let meta = prop_oneof![
        3 => Just(MetaStatus::Approved),
        1 => reason.clone().prop_map(MetaStatus::Rejected),
        1 => reason.clone().prop_map(MetaStatus::Paused),
        1 => reason.clone().prop_map(MetaStatus::Disabled),
    ];
    let language = || Just(LANGUAGE.to_owned());
    prop_oneof![
        2 => (name.clone(), sid.clone(), prop::sample::select(CATEGORIES.to_vec()))
            .prop_map(|(name, sid, category)| (Command::Register(definition(&name, sid, category)), Actor::Admin)),
        1 => (name.clone(), sid.clone())
            .prop_map(|(name, sid)| (Command::Replace(definition(&name, sid, "utility")), Actor::Admin)),
        2 => (name.clone(), language())
            .prop_map(|(name, language)| (Command::Submit { name, language }, Actor::Admin)),
        4 => (name.clone(), language(), sid.clone(), meta).prop_map(|(name, language, sid, status)| {
            (Command::RecordMetaStatus { name, language, content_sid: sid.to_owned(), status }, Actor::Twilio)
        }),
        1 => (name.clone(), language(), reason.clone())
            .prop_map(|(name, language, reason)| (Command::Pause { name, language, reason }, Actor::Admin)),
        1 => (name.clone(), language())
            .prop_map(|(name, language)| (Command::Unpause { name, language }, Actor::Admin)),
        1 => (name.clone(), language(), reason)
            .prop_map(|(name, language, reason)| (Command::Disable { name, language, reason }, Actor::Admin)),
        1 => (name.clone(), language()).prop_map(|(name, language)| (Command::Delete { name, language }, Actor::Admin)),
        1 => (name.clone(), language(), sid.clone(), prop::sample::select(vec!["MARKETING", "UTILITY", "marketing"]))
            .prop_map(|(name, language, sid, category)| {
                let content_sid = sid.to_owned();
                (Command::RecordCategory { name, language, content_sid, category: category.to_owned() }, Actor::Twilio)
            }),
        1 => (name, language(), sid, prop::bool::ANY).prop_map(|(name, language, sid, quick_reply)| {
            // An edit in Twilio: the text reworded, or made a quick reply WhatsApp allows in session.
            let types = if quick_reply {
                serde_json::json!({"twilio/quick-reply": {"body": "Hi {{1}}, order {{2}}: track it?",
                    "actions": [{"title": "Yes", "id": "yes"}, {"title": "No", "id": "no"}]}})
            } else {
                serde_json::json!({"twilio/text": {"body": "Hello {{1}}, order {{2}} is on its way."}})
            };
            let types = types.as_object().expect("an object").clone();
            let variables = [("1".to_owned(), "Ana".to_owned()), ("2".to_owned(), "1234".to_owned())].into();
            (Command::RecordContent { name, language, content_sid: sid.to_owned(), types, variables }, Actor::Twilio)
        }),
    ]
}

fn name_of(command: &Command) -> &str {
    match command {
        Command::Register(d) | Command::Replace(d) => &d.name,
        Command::Submit { name, .. }
        | Command::RecordMetaStatus { name, .. }
        | Command::RecordContent { name, .. }
        | Command::RecordCategory { name, .. }
        | Command::Pause { name, .. }
        | Command::Unpause { name, .. }
        | Command::Disable { name, .. }
        | Command::Delete { name, .. } => name,
    }
}

/// A template send for `name` with every variable its content uses given (its samples), as
/// session-window passes it on, with the customer's window open or not.
fn template_send(name: &str, state: &Templates, window_open: bool) -> OutboundWindowChecked {
    let variables = state.get(name, LANGUAGE).map(|t| t.variables.clone()).unwrap_or_default();
    OutboundWindowChecked {
        event_id: "4d8a5c8e-4f7e-4a55-9d43-0c3f2f1f7d10".to_owned(),
        occurred_at: 0,
        conversation_id: "0b8f2e4c-3c1a-4b6e-9f5d-7a2e1c9d8b30".to_owned(),
        request_id: "req-1".to_owned(),
        from: "whatsapp:+14155238886".to_owned(),
        to: "whatsapp:+14152370142".to_owned(),
        body: None,
        media_urls: vec![],
        template: Some(TemplateRequest { name: name.to_owned(), language: LANGUAGE.to_owned(), variables }),
        allowed: true,
        refusal_reason: None,
        window_expires_at: None,
        opted_out: false,
        marketing_limited_at: None,
        entry_point_open: false,
        window_open,
        metadata: BTreeMap::new(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_lifecycle_rules_hold_for_any_command_sequence(commands in prop::collection::vec(command(), 1..60)) {
        let mut state = Templates::default();
        let mut log: Vec<TemplateEvent> = Vec::new();
        for (step, (command, actor)) in commands.into_iter().enumerate() {
            let now = i64::try_from(step).expect("small");
            let name = name_of(&command).to_owned();
            let before = state.get(&name, LANGUAGE).cloned();
            let Ok(events) = handle(&state, command.clone(), actor, now) else {
                // A refused command changes nothing, and says why (its Display is the answer).
                continue;
            };
            for event in &events {
                apply(&mut state, event);
            }
            log.extend(events);
            let after = state.get(&name, LANGUAGE).cloned();

            // Versions only grow while a template exists.
            if let (Some(before), Some(after)) = (&before, &after) {
                prop_assert!(after.version >= before.version, "version went from {} to {}", before.version, after.version);
                // Meta's approval never lifts an admin's hold.
                if before.status == Status::Paused
                    && before.paused_by.as_deref() == Some(Actor::Admin.as_str())
                    && matches!(command, Command::RecordMetaStatus { status: MetaStatus::Approved, .. })
                {
                    prop_assert_eq!(after.status, Status::Paused);
                }
                // A disabled template comes back only as a new version.
                if before.status == Status::Disabled && after.version == before.version {
                    prop_assert_eq!(after.status, Status::Disabled);
                }
            }

            // Deciding the same command again changes nothing.
            if let Ok(again) = handle(&state, command, actor, now + 1) {
                prop_assert!(again.is_empty(), "repeating a command produced {:?}", again);
            }

            // Outside the window only an approved template is ever authorized, with its current
            // Content SID.
            for name in NAMES {
                let template = state.get(name, LANGUAGE);
                match decide(template_send(name, &state, false), &state, &Policy::default(), now) {
                    Decision::Authorize(authorized) => {
                        let template = template.expect("authorized a template that does not exist");
                        prop_assert_eq!(template.status, Status::Approved);
                        prop_assert_eq!(authorized.content_sid.as_deref(), Some(template.content_sid.as_str()));
                    }
                    Decision::Reject(rejected) => {
                        prop_assert!(
                            template.is_none_or(|t| t.status != Status::Approved),
                            "an approved template was refused: {}", rejected.message
                        );
                    }
                }
                // Inside it, content WhatsApp allows in session goes too, whatever Meta says,
                // unless an admin holds it; anything else still needs approval.
                if let Decision::Authorize(authorized) = decide(template_send(name, &state, true), &state, &Policy::default(), now) {
                    let template = template.expect("authorized a template that does not exist");
                    let held = template.status == Status::Disabled
                        || (template.status == Status::Paused && template.paused_by.as_deref() == Some(Actor::Admin.as_str()));
                    let session = wa_twilio::content::session_refusal(&template.types).is_none();
                    prop_assert!(template.status == Status::Approved || (session && !held),
                        "{:?} {:?} content went in the window", template.status, template.types.keys().collect::<Vec<_>>());
                    prop_assert_eq!(authorized.rule.as_deref() == Some("approved_template"), template.status == Status::Approved);
                }
            }
        }
        // The state is what its events say: replaying the log rebuilds it.
        let mut rebuilt = Templates::default();
        for event in &log {
            apply(&mut rebuilt, event);
        }
        prop_assert_eq!(rebuilt, state);
    }
}
