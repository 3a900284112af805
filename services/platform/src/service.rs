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
    let server = tokio::spawn(http::serve(listener, http::router(service, health.clone(), routes), stop.clone()));
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
