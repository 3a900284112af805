//! Tracing and OpenTelemetry.
//!
//! Logs go to stderr (`LOG_FORMAT=json` for JSON lines), filtered by `RUST_LOG` (default
//! `info`). Spans always carry OpenTelemetry context, so `traceparent` is propagated through
//! Kafka headers; they are exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::EnvFilter;

use crate::config::{var, EnvVar};

/// Variables read by [`init`].
pub const ENV: &[EnvVar] = &[
    EnvVar { name: "RUST_LOG", default: Some("info"), doc: "log filter (tracing EnvFilter syntax)" },
    EnvVar { name: "LOG_FORMAT", default: Some("text"), doc: "text or json" },
    EnvVar {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: None,
        doc: "OTLP/HTTP collector base URL, e.g. http://127.0.0.1:4318; traces are exported only when set",
    },
];

/// Flushes and shuts the tracer provider down when dropped (end of `main`).
#[must_use = "dropping the guard at once stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            if let Err(err) = provider.shutdown() {
                eprintln!("telemetry shutdown failed: {err}");
            }
        }
    }
}

/// Installs the global subscriber, tracer provider and W3C propagator for `service`.
/// A second call in one process (tests start several services) keeps the first setup.
pub fn init(service: &str) -> anyhow::Result<TelemetryGuard> {
    init_with(service, "info", false)
}

/// Like [`init`], with the log filter used when `RUST_LOG` is unset, and optionally logging
/// through the test harness's captured output.
pub fn init_with(service: &str, default_filter: &str, test_writer: bool) -> anyhow::Result<TelemetryGuard> {
    let mut builder =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name(service.to_owned()).build());
    if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_http().build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    install(service, default_filter, test_writer, builder)
}

/// Like [`init_with`], exporting every span to `exporter` as it ends: for tests that check the
/// shape of traces (an in-memory exporter).
pub fn init_with_exporter<E: SpanExporter + 'static>(service: &str, exporter: E) -> anyhow::Result<TelemetryGuard> {
    let builder = SdkTracerProvider::builder()
        .with_resource(Resource::builder().with_service_name(service.to_owned()).build())
        .with_simple_exporter(exporter);
    install(service, "warn", true, builder)
}

fn install(
    service: &str,
    default_filter: &str,
    test_writer: bool,
    builder: opentelemetry_sdk::trace::TracerProviderBuilder,
) -> anyhow::Result<TelemetryGuard> {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    if INSTALLED.get().is_some() {
        return Ok(TelemetryGuard { provider: None });
    }
    let provider = builder.build();
    let tracer = provider.tracer(service.to_owned());
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.clone());

    // RUST_LOG filters what is logged only: spans reach OpenTelemetry at INFO whatever the log
    // level, so trace context is propagated even when logs are quiet.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let otel = tracing_opentelemetry::layer().with_tracer(tracer).with_filter(LevelFilter::INFO);
    let json = var("LOG_FORMAT").is_some_and(|format| format.eq_ignore_ascii_case("json"));
    let logs = match (json, test_writer) {
        (_, true) => tracing_subscriber::fmt::layer().with_test_writer().boxed(),
        (true, false) => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).boxed(),
        (false, false) => tracing_subscriber::fmt::layer().with_writer(std::io::stderr).boxed(),
    };
    let installed = tracing_subscriber::registry().with(otel).with(logs.with_filter(filter)).try_init();
    if installed.is_err() {
        // Another subscriber was installed first (a test harness); keep it.
        return Ok(TelemetryGuard { provider: None });
    }
    let _ = INSTALLED.set(());
    Ok(TelemetryGuard { provider: Some(provider) })
}
