//! The platform every service of the channel shares: configuration, topics, Kafka plumbing
//! (producer, at-least-once consumer loop, dead letters, trace context in headers), telemetry,
//! the operational HTTP endpoints, and graceful shutdown. (Twilio wire formats live in `wa-twilio`.)
//!
//! A service built on it stays small: it declares its configuration and handlers, and
//! [`service::run_until_stopped`] does the rest.

pub mod backoff;
pub mod clock;
pub mod config;
pub mod http;
pub mod kafka;
pub mod metrics;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod topics;

pub use tokio_util::sync::CancellationToken;

/// The memory allocator every service binary installs as its `#[global_allocator]`. Under
/// load the system allocator cost ingress half its throughput (docs/benchmarks.md).
pub use mimalloc::MiMalloc as Allocator;

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
