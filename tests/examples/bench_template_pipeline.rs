//! template-approval through the broker: with 10,000 approved templates loaded from
//! `wa.templates.v1`, how many template verdicts per second become authorizations on
//! `wa.outbound.authorized.v1`. Run with `cargo xtask bench templates` (it starts a broker).

/// As in the service binaries.
#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e_tests::Channel;
use reqwest::Method;
use tokio::task::JoinSet;
use wa_platform::kafka::EventProducer;
use wa_platform::topics::{OUTBOUND_AUTHORIZED, OUTBOUND_CHECKED, TEMPLATES};
use wa_schemas::{OutboundWindowChecked, TemplateEvent, TemplateRequest};

/// Registered templates (`BENCH_TEMPLATES`, default 10,000) and verdicts sent
/// (`BENCH_REQUESTS`, default 5,000).
fn sizes() -> (usize, usize) {
    let read = |name: &str, default: usize| std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default);
    (read("BENCH_TEMPLATES", 10_000), read("BENCH_REQUESTS", 5_000))
}

fn template_events(i: usize) -> Vec<TemplateEvent> {
    let name = format!("template_{}", i / 2);
    let language = if i % 2 == 0 { "en" } else { "pt" };
    let base = TemplateEvent {
        event_id: String::new(),
        occurred_at: 0,
        template_id: format!("{name}:{language}"),
        kind: String::new(),
        name,
        language: language.to_owned(),
        version: 1,
        category: None,
        content_sid: None,
        body: None,
        examples: BTreeMap::new(),
        reason: None,
        content_types: None,
        previous_category: None,
        actor: "admin".to_owned(),
    };
    ["registered", "submitted", "approved"]
        .iter()
        .map(|kind| {
            let mut event = base.clone();
            event.event_id = uuid::Uuid::new_v4().to_string();
            event.kind = (*kind).to_owned();
            if *kind == "registered" {
                event.category = Some("utility".to_owned());
                event.content_sid = Some(format!("HX{i:032x}"));
                let body = "Hello {{1}}, your order {{2}} ships today.";
                event.body = Some(body.to_owned());
                event.content_types = Some(serde_json::json!({"twilio/text": {"body": body}}).to_string());
                event.examples = [("1".to_owned(), "Ana".to_owned()), ("2".to_owned(), "1".to_owned())].into();
            }
            event
        })
        .collect()
}

fn verdict(i: usize, templates: usize) -> OutboundWindowChecked {
    OutboundWindowChecked {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: 0,
        conversation_id: uuid::Uuid::new_v4().to_string(),
        request_id: format!("bench-{i}"),
        from: "whatsapp:+14155238886".into(),
        to: format!("whatsapp:+1415{}", 2_000_000 + i % 8_000_000),
        body: None,
        media_urls: vec![],
        template: Some(TemplateRequest {
            name: format!("template_{}", (i * 7919) % (templates / 2)),
            language: if i % 2 == 0 { "en".into() } else { "pt_BR".into() },
            variables: [("1".to_owned(), "Ana".to_owned()), ("2".to_owned(), format!("A-{i}"))].into(),
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
}

async fn publish_all<E: wa_schemas::Event + Send + Sync + 'static>(
    producer: &EventProducer,
    spec: &'static wa_platform::topics::TopicSpec,
    events: Vec<E>,
) {
    let mut tasks = JoinSet::new();
    for event in events {
        // Bounded in flight: the local broker stalls under tens of thousands at once.
        if tasks.len() >= 1_000 {
            tasks.join_next().await.expect("a task").expect("publish task");
        }
        let producer = producer.clone();
        tasks.spawn(async move { producer.publish(spec, &event).await.expect("acknowledged") });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("publish task");
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let (templates, requests) = sizes();
    let channel = Channel::start().await;
    let producer = EventProducer::new(&channel.kafka, "bench", Duration::from_secs(900)).expect("producer");

    let started = Instant::now();
    // Stage by stage: concurrent sends are enqueued in any order, and a template's approval
    // must not land before its registration.
    let events: Vec<Vec<TemplateEvent>> = (0..templates).map(template_events).collect();
    for stage in 0..3 {
        publish_all(&producer, &TEMPLATES, events.iter().map(|e| e[stage].clone()).collect()).await;
    }
    loop {
        let list: Vec<serde_json::Value> =
            channel.admin(Method::GET, "/v1/templates").send().await.unwrap().json().await.unwrap();
        if list.len() == templates && list.iter().all(|t| t["status"] == "approved") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "loaded {templates} approved templates ({} events) through wa.templates.v1 in {:.2?}",
        templates * 3,
        started.elapsed()
    );

    let started = Instant::now();
    publish_all(&producer, &OUTBOUND_CHECKED, (0..requests).map(|i| verdict(i, templates)).collect()).await;
    let produced = started.elapsed();
    let mut authorized = 0;
    let mut rejected = 0;
    while authorized < requests {
        let records = channel.read_to_end(&OUTBOUND_AUTHORIZED).await;
        authorized = records.len();
        rejected = channel.read_to_end(&wa_platform::topics::OUTBOUND_REJECTED).await.len();
        assert_eq!(rejected, 0, "every verdict names an approved template");
        if authorized < requests {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let elapsed = started.elapsed();
    println!(
        "pipeline: {requests} verdicts produced in {produced:.2?}; all authorized after {elapsed:.2?}: {:.0} authorizations/s ({rejected} rejected)",
        requests as f64 / elapsed.as_secs_f64()
    );
    channel.stop().await;
}
