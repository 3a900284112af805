//! The HTTP listener every service has: `/healthz`, `/readyz`, Prometheus `/metrics`, plus the
//! service's own routes, with request metrics; and the problem responses APIs share.

mod problem;

pub use problem::{bearer_authorized, json_body, Problem};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

/// Liveness and readiness of a service.
#[derive(Debug, Default)]
pub struct Health {
    /// Set once the service can do its work (connected, consuming); cleared on shutdown.
    ready: AtomicBool,
    /// Why the broker does not serve this service right now, if it does not.
    broker_problem: Mutex<Option<String>>,
}

impl Health {
    /// A new, not yet ready, health state.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks the service ready or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    /// Whether the service is ready: started and its broker serving.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && self.broker_problem().is_none()
    }

    /// Records why the broker does not serve the service (`None`: it does again).
    pub fn set_broker_problem(&self, problem: Option<String>) {
        *self.broker_problem.lock().expect("health lock") = problem;
    }

    /// Why the broker does not serve the service, if it does not.
    pub fn broker_problem(&self) -> Option<String> {
        self.broker_problem.lock().expect("health lock").clone()
    }
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        // Histograms with buckets (not summaries), so that dashboards can add instances up.
        let recorder = PrometheusBuilder::new()
            .set_buckets(crate::metrics::SECONDS_BUCKETS)
            .expect("buckets are given")
            .build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics shows only ours");
        }
        handle
    })
}

/// `/healthz`, `/readyz`, `/metrics` merged with `routes`, with request metrics on every route.
pub fn router(service: &'static str, health: Arc<Health>, routes: Router) -> Router {
    prometheus();
    let ops = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(|| async { prometheus().render() }))
        .with_state(health);
    routes.merge(ops).layer(axum::middleware::from_fn(move |req, next| record_request(service, req, next)))
}

async fn readyz(State(health): State<Arc<Health>>) -> Response {
    if let Some(problem) = health.broker_problem() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {problem}")).into_response()
    } else if health.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

/// Middleware for routes behind bearer tokens: answers 401 before the handler runs, so before
/// any of the request's body is read. Use with `route_layer(from_fn_with_state(tokens, ...))`;
/// no tokens configured means open.
pub async fn require_bearer(State(tokens): State<Arc<Vec<String>>>, request: Request, next: Next) -> Response {
    if bearer_authorized(&tokens, request.headers()) {
        next.run(request).await
    } else {
        Problem::unauthorized().into_response()
    }
}

/// The HTTP method as a metric label, from a fixed set: an invented method is `other`.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

async fn record_request(service: &'static str, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = method_label(request.method());
    let started = Instant::now();
    let response = if is_ops_route(&route) {
        next.run(request).await
    } else {
        let span = server_span(method, &route, request.headers());
        let response = next.run(request).instrument(span.clone()).await;
        span.record("http.response.status_code", response.status().as_u16());
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        response
    };
    let status = response.status().as_u16().to_string();
    metrics::counter!(crate::metrics::HTTP_REQUESTS, "service" => service, "route" => route.clone(), "method" => method, "status" => status)
        .increment(1);
    metrics::histogram!(crate::metrics::HTTP_REQUEST_DURATION, "service" => service, "route" => route)
        .record(started.elapsed().as_secs_f64());
    response
}

/// Health, readiness and metrics: scraped every few seconds, not traced.
fn is_ops_route(route: &str) -> bool {
    matches!(route, "/healthz" | "/readyz" | "/metrics")
}

/// The server span of one request (OpenTelemetry's HTTP conventions): `POST /v1/outbound`,
/// continuing the caller's trace when it sent a `traceparent`.
fn server_span(method: &'static str, route: &str, headers: &axum::http::HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "request",
        otel.name = format!("{method} {route}"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&RequestHeaders(headers)));
    let _ = span.set_parent(parent);
    span
}

/// Reads trace context (`traceparent`, `tracestate`) from a request's headers.
struct RequestHeaders<'a>(&'a axum::http::HeaderMap);

impl opentelemetry::propagation::Extractor for RequestHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(axum::http::HeaderName::as_str).collect()
    }
}

/// Serves `router` on `listener` until `shutdown`, then finishes in-flight requests.
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invented_methods_share_one_metric_label() {
        assert_eq!(method_label(&axum::http::Method::POST), "POST");
        let invented = axum::http::Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&invented), "other");
    }
}
