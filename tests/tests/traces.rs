//! One CRM reply is one trace that reads like the system: the CRM's trace continues into
//! ingress's HTTP server span, every hop is a `send <topic>` producer span and a
//! `process <topic>` consumer span with OpenTelemetry's messaging attributes, the call to
//! Twilio is an HTTP client span, and the status callbacks that follow (in traces Twilio
//! starts) link to the send. Spans are collected in memory by the process's tracer.

use std::sync::{Arc, Mutex};

use e2e_tests::{unique_customer, Channel, API_TOKEN, BUSINESS, EVENT_TIMEOUT};
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use wa_platform::topics::{DELIVERY, INBOUND, OUTBOUND_AUTHORIZED, OUTBOUND_CHECKED, OUTBOUND_REQUESTED};

/// Every span the process ended, and a wake-up each time more arrive.
#[derive(Debug, Clone, Default)]
struct Collected {
    spans: Arc<Mutex<Vec<SpanData>>>,
    added: Arc<tokio::sync::Notify>,
}

impl SpanExporter for Collected {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.spans.lock().expect("spans lock").extend(batch);
        self.added.notify_waiters();
        Ok(())
    }
}

impl Collected {
    /// Waits until `found` finds what it looks for among the spans ended so far.
    async fn wait_for<T>(&self, what: &str, found: impl Fn(&[SpanData]) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(result) = found(&self.spans.lock().expect("spans lock")) {
                return result;
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                panic!("{what} within {EVENT_TIMEOUT:?}");
            }
        }
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.clone())
}

fn text(span: &SpanData, key: &str) -> String {
    attribute(span, key).map(|value| value.as_str().into_owned()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_reply_is_one_trace_that_reads_like_the_system() {
    let collected = Collected::default();
    std::mem::forget(wa_platform::telemetry::init_with_exporter("e2e-traces", collected.clone()).expect("telemetry"));
    let channel = Channel::start().await;
    let customer = unique_customer();
    let (_, status) = channel.sim_inbound(&customer, "Where is my order?").await;
    assert_eq!(status, 200);

    // The CRM sends its reply inside a trace of its own.
    let trace_id = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let crm_span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let request_id = format!("traced-{}", uuid::Uuid::new_v4().simple());
    let response = channel
        .http()
        .post(format!("{}/v1/outbound", channel.ingress_url))
        .bearer_auth(API_TOKEN)
        .header("traceparent", format!("00-{trace_id}-{crm_span}-01"))
        .json(
            &serde_json::json!({"request_id": request_id, "from": BUSINESS, "to": customer, "body": "It ships today."}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
    assert_eq!(channel.dispatch_outcome(&request_id).await.outcome, "sent");

    // Spans end as the work does: wait for the Twilio call's span to be in the trace.
    let trace = collected
        .wait_for("no Twilio call in the CRM's trace", |spans| {
            let trace: Vec<SpanData> =
                spans.iter().filter(|span| span.span_context.trace_id() == trace_id).cloned().collect();
            trace.iter().any(|span| span.span_kind == SpanKind::Client).then_some(trace)
        })
        .await;
    let named = |name: &str| {
        trace.iter().find(|span| span.name == name).unwrap_or_else(|| {
            let names: Vec<&str> = trace.iter().map(|span| span.name.as_ref()).collect();
            panic!("no span {name:?} in the trace: {names:?}")
        })
    };

    // The CRM's request: a server span, child of the CRM's span.
    let server = named("POST /v1/outbound");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(server.parent_span_id, crm_span);
    assert_eq!(text(server, "http.route"), "/v1/outbound");
    assert_eq!(attribute(server, "http.response.status_code").map(|v| v.to_string()).as_deref(), Some("202"));

    // Each hop: a producer span and the consumer span that handled its record.
    let conversation = wa_schemas::conversation_id(BUSINESS, &customer);
    for topic in [&OUTBOUND_REQUESTED, &OUTBOUND_CHECKED, &OUTBOUND_AUTHORIZED] {
        let topic = channel.topic(topic);
        let send = named(&format!("send {topic}"));
        assert_eq!(send.span_kind, SpanKind::Producer, "{topic}");
        let process = named(&format!("process {topic}"));
        assert_eq!(process.span_kind, SpanKind::Consumer, "{topic}");
        assert_eq!(process.parent_span_id, send.span_context.span_id(), "{topic}: processed under its send");
        for span in [send, process] {
            assert_eq!(text(span, "messaging.system"), "kafka", "{}", span.name);
            assert_eq!(text(span, "messaging.destination.name"), topic, "{}", span.name);
            assert_eq!(text(span, "messaging.kafka.message.key"), conversation, "{}", span.name);
        }
        assert!(attribute(process, "messaging.kafka.offset").is_some(), "{topic}");
    }

    // The call to Twilio: an HTTP client span, without the query or credentials in its URL.
    let twilio = trace.iter().find(|span| span.span_kind == SpanKind::Client).expect("a client span");
    assert_eq!(twilio.name, "POST");
    assert_eq!(text(twilio, "http.request.method"), "POST");
    assert!(text(twilio, "url.full").ends_with("/Messages.json"), "{}", text(twilio, "url.full"));
    assert!(!text(twilio, "url.full").contains('@'), "credentials in the URL");
    assert_eq!(text(twilio, "server.address"), "127.0.0.1");
    assert_eq!(attribute(twilio, "http.response.status_code").map(|v| v.to_string()).as_deref(), Some("201"));

    // Twilio's status callbacks start traces of their own; their handling links to the send.
    let delivery = format!("process {}", channel.topic(&DELIVERY));
    collected
        .wait_for("no status callback's handling links to the send", |spans| {
            spans
                .iter()
                .any(|span| {
                    span.name == delivery
                        && span.span_context.trace_id() != trace_id
                        && span.links.iter().any(|link| link.span_context.trace_id() == trace_id)
                })
                .then_some(())
        })
        .await;

    // One tree: every span but the server's has its parent in the trace.
    let ids: Vec<SpanId> = trace.iter().map(|span| span.span_context.span_id()).collect();
    for span in &trace {
        if span.span_context.span_id() != server.span_context.span_id() {
            assert!(ids.contains(&span.parent_span_id), "{} hangs off a span outside the trace", span.name);
        }
    }

    // A customer's media: its download from Twilio is a client span under the handling of the
    // message that carried it.
    let answer = channel
        .sim_inbound_request(serde_json::json!({
            "from": customer, "to": BUSINESS, "body": "A photo of the parcel",
            "media": [{"content_type": "image/jpeg", "size": 4096}],
        }))
        .await;
    assert_eq!(answer["webhook_status"], 200, "{answer}");
    let inbound = format!("process {}", channel.topic(&INBOUND));
    let (download, parent) = collected
        .wait_for("no media download span", |spans| {
            let download = spans.iter().find(|span| {
                span.span_kind == SpanKind::Client && span.name == "GET" && text(span, "url.full").contains("/Media/")
            })?;
            let parent = spans.iter().find(|span| span.span_context.span_id() == download.parent_span_id)?;
            Some((download.clone(), parent.clone()))
        })
        .await;
    assert_eq!(parent.name, inbound, "the download is part of handling the message");
    assert_eq!(attribute(&download, "http.response.status_code").map(|v| v.to_string()).as_deref(), Some("200"));
    channel.stop().await;
}
