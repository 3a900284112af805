//! Session-window: the 24-hour customer-service window, the 72-hour free entry point and
//! opt-out, as a partitioned, restorable projection of message events.
//!
//! Reads `wa.inbound.v1`, `wa.outbound.dispatched.v1` and `wa.outbound.requested.v1` in one
//! consumer group; answers every request with a verdict on `wa.outbound.checked.v1`; keeps each
//! conversation's state on the compacted `wa.sessions.v1` and announces window changes on
//! `wa.session.events.v1`. `session-window rebuild` recomputes the state from the message topics.

mod barrier;
mod config;
mod events;
mod facts;
mod http;
mod projector;
pub mod rebuild;
pub mod session;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use wa_platform::http::Health;
use wa_platform::service::{Bound, Service};
use wa_platform::CancellationToken;

use crate::projector::{Projector, Shared};

pub use crate::config::Config;

/// The service name.
pub const SERVICE: &str = "session-window";

/// The session-window service.
pub struct SessionWindow;

impl Service for SessionWindow {
    const NAME: &'static str = SERVICE;
    type Config = Config;

    fn http_addr(config: &Config) -> SocketAddr {
        config.http_addr
    }

    /// Projects and checks until `shutdown`.
    async fn run(listener: TcpListener, mut config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
        let health = Health::new();
        let shared = Arc::new(Shared::default());
        let bound = listener.local_addr()?;
        let own_url = config.advertised_url.get_or_insert_with(|| format!("http://{bound}")).clone();
        let routes = http::routes(
            shared.clone(),
            config.safety_margin_millis(),
            own_url,
            config.query_tokens.clone(),
            config.clock.clone(),
        );
        let stop = shutdown.clone();
        let ready = health.clone();
        let worker = async move {
            let kafka = config.kafka.clone();
            wa_platform::kafka::wait_for_broker(&kafka, Duration::from_secs(60)).await?;
            let source = format!("wachannel/{SERVICE}");
            let producer =
                wa_platform::kafka::EventProducer::new(&kafka, &source, wa_platform::kafka::DELIVERY_TIMEOUT)?
                    .with_faults(config.delivery_faults.clone());
            let owners_stop = stop.child_token();
            let owners = projector::follow_owners(&kafka, shared.clone(), owners_stop.clone()).await?;
            let probe = tokio::spawn(wa_platform::kafka::watch_broker(
                kafka.clone(),
                wa_platform::topics::INBOUND,
                ready.clone(),
                owners_stop.clone(),
            ));
            let projector = Projector::start(config, producer.clone(), ready, shared).await?;
            let result = projector.run(stop).await;
            producer.flush(Duration::from_secs(10));
            owners_stop.cancel();
            owners.await??;
            probe.await??;
            result
        };
        wa_platform::service::run_until_stopped(SERVICE, listener, routes, health, shutdown, worker).await
    }
}

/// Binds the HTTP listener (port 0 picks a free one).
pub async fn bind(config: Config) -> anyhow::Result<Bound<SessionWindow>> {
    Bound::bind(config).await
}

/// Binds and runs until `shutdown`.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    wa_platform::service::run::<SessionWindow>(config, shutdown).await
}
