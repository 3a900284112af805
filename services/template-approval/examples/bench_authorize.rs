//! Authorizations per second for template sends at 10,000 registered templates.
//!
//! Run with `cargo xtask bench templates` (release build). Prints two figures: the pure
//! decision, and the decision with the Avro decode of the verdict and encode of the
//! authorization that the service does for each record.

/// As in the service binaries.
#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

use std::collections::BTreeMap;
use std::time::Instant;

use template_approval::authorize::{decide, Decision, Fallbacks, Policy};
use template_approval::template::{apply, handle, Actor, Command, Definition, MetaStatus, Templates};
use wa_schemas::{Event, OutboundWindowChecked, TemplateRequest};

const TEMPLATES: usize = 10_000;
const LANGUAGES: [&str; 4] = ["en", "pt", "es", "de"];
const REQUESTS: usize = 200_000;

fn registered() -> Templates {
    let mut state = Templates::default();
    for i in 0..TEMPLATES {
        let name = format!("template_{}", i / LANGUAGES.len());
        let language = LANGUAGES[i % LANGUAGES.len()].to_owned();
        let content_sid = format!("HX{:032x}", i);
        let definition = Definition {
            name: name.clone(),
            language: language.clone(),
            category: if i % 3 == 0 { "marketing" } else { "utility" }.to_owned(),
            content_sid: content_sid.clone(),
            types: serde_json::json!({
                "twilio/text": {"body": "Hello {{1}}, your order {{2}} ships on {{3}}. Reply STOP to opt out."}
            })
            .as_object()
            .expect("an object")
            .clone(),
            variables: (1..=3).map(|n| (n.to_string(), format!("example {n}"))).collect(),
        };
        let commands = [
            Command::Register(definition),
            Command::Submit { name: name.clone(), language: language.clone() },
            Command::RecordMetaStatus { name, language, content_sid, status: MetaStatus::Approved },
        ];
        for command in commands {
            for event in handle(&state, command, Actor::Admin, 0).expect("valid") {
                apply(&mut state, &event);
            }
        }
    }
    assert_eq!(state.len(), TEMPLATES);
    state
}

fn requests() -> Vec<OutboundWindowChecked> {
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    (0..REQUESTS)
        .map(|i| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let template = (seed as usize) % (TEMPLATES / LANGUAGES.len());
            // A quarter ask pt_BR, which falls back to pt.
            let language = if i % 4 == 0 { "pt_BR" } else { LANGUAGES[(seed >> 32) as usize % LANGUAGES.len()] };
            let variables: BTreeMap<String, String> = [("1", "Ana"), ("2", "A-1234"), ("3", "Monday")]
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect();
            OutboundWindowChecked {
                event_id: format!("e{i}"),
                occurred_at: 0,
                conversation_id: format!("c{i}"),
                request_id: format!("r{i}"),
                from: "whatsapp:+14155238886".into(),
                to: format!("whatsapp:+1555{i:07}"),
                body: None,
                media_urls: vec![],
                template: Some(TemplateRequest {
                    name: format!("template_{template}"),
                    language: language.into(),
                    variables,
                }),
                allowed: true,
                refusal_reason: None,
                window_expires_at: None,
                opted_out: false,
                marketing_limited_at: None,
                entry_point_open: false,
                window_open: false,
                metadata: Default::default(),
            }
        })
        .collect()
}

fn main() {
    let started = Instant::now();
    let templates = registered();
    println!("registered {TEMPLATES} approved templates in {:.2?}", started.elapsed());
    let fallbacks = Policy { fallbacks: Fallbacks::parse("pt_BR:pt:en").expect("fallbacks"), ..Policy::default() };
    let requests = requests();
    let encoded: Vec<Vec<u8>> = requests.iter().map(|r| r.encode().expect("encodes")).collect();

    let started = Instant::now();
    let mut authorized = 0;
    for request in requests {
        if matches!(decide(request, &templates, &fallbacks, 1), Decision::Authorize(_)) {
            authorized += 1;
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(authorized, REQUESTS, "every request names an approved template");
    println!(
        "decision only:        {:>9.0} authorizations/s ({REQUESTS} in {elapsed:.2?})",
        REQUESTS as f64 / elapsed.as_secs_f64()
    );

    let started = Instant::now();
    let mut bytes = 0;
    for value in &encoded {
        let checked = OutboundWindowChecked::decode(value).expect("decodes");
        let Decision::Authorize(authorization) = decide(checked, &templates, &fallbacks, 1) else { panic!("refused") };
        bytes += authorization.encode().expect("encodes").len();
    }
    let elapsed = started.elapsed();
    println!(
        "decode+decide+encode: {:>9.0} authorizations/s ({REQUESTS} in {elapsed:.2?}, {} bytes out)",
        REQUESTS as f64 / elapsed.as_secs_f64(),
        bytes
    );
}
