//! Running a service: its HTTP listener and its workers, until shutdown or a worker fails.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Health};

/// Binds the service's HTTP listener (`127.0.0.1:0` picks a free port).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))
}

/// Serves `routes` (plus the ops endpoints) on `listener` and runs `worker` beside it.
///
/// Returns when `shutdown` is cancelled and both have finished, or as soon as the worker fails
/// (then the HTTP server is stopped too and the worker's error is returned).
pub async fn run_until_stopped<W>(
    service: &'static str,
    listener: TcpListener,
    routes: Router,
    health: Arc<Health>,
    shutdown: CancellationToken,
    worker: W,
) -> anyhow::Result<()>
where
    W: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let local = listener.local_addr()?;
    let stop = shutdown.child_token();
    let server = tokio::spawn(http::serve(
        listener,
        http::router(service, health.clone(), routes),
        stop.clone(),
    ));
    tracing::info!(service, addr = %local, "service started");
    let worker_result = worker.await;
    health.set_ready(false);
    if let Err(err) = &worker_result {
        tracing::error!(service, error = %format!("{err:#}"), "worker failed; stopping");
    }
    stop.cancel();
    server.await??;
    tracing::info!(service, "service stopped");
    worker_result
}

/// Runs a service whose work is one consumer loop: waits for the broker, creates the producer,
/// builds the handler with it, marks the service ready and consumes until `shutdown`, then
/// flushes the producer.
pub async fn run_consumer_service<H, F>(
    listener: TcpListener,
    kafka: crate::config::KafkaConfig,
    settings: crate::kafka::ConsumerSettings,
    shutdown: CancellationToken,
    make_handler: F,
) -> anyhow::Result<()>
where
    H: crate::kafka::Handler + 'static,
    F: FnOnce(crate::kafka::EventProducer) -> anyhow::Result<H> + Send + 'static,
{
    let service = settings.service;
    let health = Health::new();
    let ready = health.clone();
    let stopped = shutdown.clone();
    let worker = async move {
        crate::kafka::wait_for_broker(&kafka, std::time::Duration::from_secs(60)).await?;
        let source = format!("wachannel/{service}");
        let producer =
            crate::kafka::EventProducer::new(&kafka, &source, std::time::Duration::from_secs(30))?;
        let handler = make_handler(producer.clone())?;
        ready.set_ready(true);
        let result =
            crate::kafka::run_consumer(&kafka, &settings, &producer, &handler, &stopped).await;
        producer.flush(std::time::Duration::from_secs(10));
        result
    };
    run_until_stopped(service, listener, Router::new(), health, shutdown, worker).await
}
