//! Record headers: CloudEvents binary mode (`ce_*`, `content-type`) and W3C trace context
//! (`traceparent`, `tracestate`), so one trace runs from the webhook to the Twilio call.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;
use rdkafka::message::{Header, Headers, OwnedHeaders};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use wa_schemas::Event;

/// CloudEvents `id` header.
pub const CE_ID: &str = "ce_id";
/// CloudEvents `type` header.
pub const CE_TYPE: &str = "ce_type";
/// CloudEvents `source` header.
pub const CE_SOURCE: &str = "ce_source";
/// CloudEvents `time` header.
pub const CE_TIME: &str = "ce_time";
/// CloudEvents `subject` header (the record key: the conversation id for message events).
pub const CE_SUBJECT: &str = "ce_subject";
/// W3C trace context header.
pub const TRACEPARENT: &str = "traceparent";
/// The content type of every event value.
pub const AVRO_CONTENT_TYPE: &str = "application/avro";

/// The headers of an event record: CloudEvents attributes plus the current trace context.
pub(crate) fn event_headers<E: Event>(event: &E, source: &str) -> OwnedHeaders {
    let time = chrono::DateTime::from_timestamp_millis(event.occurred_at())
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let headers = OwnedHeaders::new()
        .insert(Header { key: "ce_specversion", value: Some("1.0") })
        .insert(Header { key: CE_ID, value: Some(event.event_id()) })
        .insert(Header { key: CE_TYPE, value: Some(E::CE_TYPE) })
        .insert(Header { key: CE_SOURCE, value: Some(source) })
        .insert(Header { key: CE_TIME, value: Some(time.as_str()) })
        .insert(Header { key: CE_SUBJECT, value: Some(event.key()) })
        .insert(Header { key: "content-type", value: Some(AVRO_CONTENT_TYPE) });
    let headers = event
        .extension_headers()
        .into_iter()
        .fold(headers, |headers, (key, value)| headers.insert(Header { key, value: Some(value.as_str()) }));
    with_trace_context(headers)
}

/// Adds the current span's trace context.
pub(crate) fn with_trace_context(mut headers: OwnedHeaders) -> OwnedHeaders {
    let mut carrier = HashMap::new();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MapInjector(&mut carrier))
    });
    for (key, value) in &carrier {
        headers = headers.insert(Header { key: key.as_str(), value: Some(value.as_str()) });
    }
    headers
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key.to_owned(), value);
        }
    }
}

/// Reads trace context from a record's headers.
pub struct HeaderExtractor<'a>(pub Option<&'a OwnedHeaders>);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        header_str(self.0, key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.map(|h| h.iter().map(|header| header.key).collect()).unwrap_or_default()
    }
}

/// Every header as a (name, value) pair, values read as UTF-8 (lossily): for tools and tests
/// that show or compare headers.
pub fn header_pairs<H: Headers>(headers: Option<&H>) -> Vec<(String, String)> {
    headers
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (h.key.to_owned(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The UTF-8 value of the last header named `key`, if any.
pub fn header_str<'a, H: Headers>(headers: Option<&'a H>, key: &str) -> Option<&'a str> {
    headers?
        .iter()
        .filter(|header| header.key.eq_ignore_ascii_case(key))
        .last()
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
}

/// The current span's W3C `traceparent`, to keep with what it did (a send whose status
/// callbacks arrive later, in traces of their own).
pub fn current_traceparent() -> Option<String> {
    let mut carrier = HashMap::new();
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MapInjector(&mut carrier))
    });
    carrier.remove(TRACEPARENT)
}

/// Links the current span to the span `traceparent` names (OpenTelemetry span links): a status
/// callback's handling points at the send it reports on.
pub fn link_current_span(traceparent: &str) {
    let carrier: HashMap<String, String> = [(TRACEPARENT.to_owned(), traceparent.to_owned())].into();
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&MapExtractor(&carrier)));
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        tracing::Span::current().add_link(linked);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}
