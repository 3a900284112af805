//! Running a service: its HTTP listener and its workers, until shutdown or a worker fails.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Health};

/// Binds the service's HTTP listener (`127.0.0.1:0` picks a free port).
pub async fn bind(addr: std::net::SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|err| anyhow::anyhow!("cannot listen on {addr}: {err}"))
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

/// What a consumer service's setup hands back: the handler, and tasks that run beside the
/// consumer (following a topic, syncing with Twilio), stopped and joined after it.
pub struct Prepared<H> {
    /// Handles the consumed records.
    pub handler: H,
    /// Background tasks; each watches the stop token given to the setup.
    pub background: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

/// Runs a service whose work is one consumer loop: serves `routes` (plus the ops endpoints),
/// waits for the broker, creates the producer, runs `setup` with it and a stop token for
/// background tasks, marks the service ready and consumes until `shutdown`; then flushes the
/// producer, stops the background tasks and waits for them.
pub async fn run_consumer_service<H, F, Fut>(
    listener: TcpListener,
    routes: Router,
    kafka: crate::config::KafkaConfig,
    settings: crate::kafka::ConsumerSettings,
    shutdown: CancellationToken,
    setup: F,
) -> anyhow::Result<()>
where
    H: crate::kafka::Handler + 'static,
    F: FnOnce(crate::kafka::EventProducer, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<Prepared<H>>> + Send,
{
    let service = settings.service;
    let health = Health::new();
    let ready = health.clone();
    let stopped = shutdown.clone();
    let worker = async move {
        crate::kafka::wait_for_broker(&kafka, std::time::Duration::from_secs(60)).await?;
        let source = format!("wachannel/{service}");
        let producer = crate::kafka::EventProducer::new(&kafka, &source, crate::kafka::DELIVERY_TIMEOUT)?;
        let background = stopped.child_token();
        let mut prepared = match setup(producer.clone(), background.clone()).await {
            Ok(prepared) => prepared,
            Err(err) => {
                background.cancel();
                return Err(err);
            }
        };
        if let Some(topic) = settings.topics.first() {
            let probe = crate::kafka::watch_broker(kafka.clone(), *topic, ready.clone(), background.clone());
            prepared.background.push(tokio::spawn(probe));
        }
        ready.set_ready(true);
        let result = crate::kafka::run_consumer(&kafka, &settings, &producer, &prepared.handler, &stopped).await;
        producer.flush(std::time::Duration::from_secs(10));
        background.cancel();
        for task in prepared.background {
            task.await??;
        }
        result
    };
    run_until_stopped(service, listener, routes, health, shutdown, worker).await
}

/// A service of the channel: how to find its HTTP address in its configuration and how to run
/// it on a bound listener. [`Bound`] does the rest.
pub trait Service {
    /// The service name, in logs, metrics and CloudEvents sources.
    const NAME: &'static str;
    /// Its configuration.
    type Config: Send + 'static;

    /// Where the HTTP listener binds.
    fn http_addr(config: &Self::Config) -> std::net::SocketAddr;

    /// Runs the service on `listener` until `shutdown`.
    fn run(
        listener: TcpListener,
        config: Self::Config,
        shutdown: CancellationToken,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A service with its listener bound but not yet running, so tests can bind port 0 and learn
/// the port before starting it.
pub struct Bound<S: Service> {
    listener: TcpListener,
    config: S::Config,
}

impl<S: Service> Bound<S> {
    /// Binds the service's HTTP listener.
    pub async fn bind(config: S::Config) -> anyhow::Result<Self> {
        let listener = bind(S::http_addr(&config)).await?;
        Ok(Self { listener, config })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().expect("a bound listener has an address")
    }

    /// Runs until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        S::run(self.listener, self.config, shutdown).await
    }
}

/// Binds and runs `S` until `shutdown`.
pub async fn run<S: Service>(config: S::Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    Bound::<S>::bind(config).await?.run(shutdown).await
}
