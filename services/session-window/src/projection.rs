//! Session state, rebuilt by projecting `wa.inbound.v1` from its beginning.
//!
//! Every instance holds every conversation in this version. Before a verdict,
//! [`Projection::catch_up`] waits until the projection has read everything the broker had
//! acknowledged at that moment, so a reply sent right after the customer's message sees it even
//! though the two travel on different topics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::Message;
use wa_platform::config::KafkaConfig;
use wa_platform::kafka::TopicFollower;
use wa_platform::topics::INBOUND;
use wa_platform::CancellationToken;
use wa_schemas::{Event, InboundMessageReceived};

use crate::window::{apply_customer_message, Window};

/// Windows by conversation id.
pub(crate) struct Projection {
    windows: Mutex<HashMap<String, Window>>,
    inbound: Arc<TopicFollower>,
}

impl Projection {
    /// Connects, and starts reading the inbound topic from its beginning.
    pub(crate) async fn start(kafka: &KafkaConfig) -> anyhow::Result<Arc<Self>> {
        let inbound = TopicFollower::start(kafka, &INBOUND, "session-window-projection").await?;
        Ok(Arc::new(Self { windows: Mutex::default(), inbound }))
    }

    /// The conversation's window, if the customer ever wrote.
    pub(crate) fn window(&self, conversation_id: &str) -> Option<Window> {
        self.windows.lock().expect("windows lock").get(conversation_id).copied()
    }

    /// Folds inbound events until `shutdown`.
    pub(crate) async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.inbound
            .run(shutdown, |message| match InboundMessageReceived::decode(message.payload().unwrap_or_default()) {
                Ok(event) => {
                    let mut windows = self.windows.lock().expect("windows lock");
                    let current = windows.get(&event.conversation_id).copied();
                    windows.insert(event.conversation_id.clone(), apply_customer_message(current, event.occurred_at));
                    metrics::gauge!("wa_session_conversations").set(windows.len() as f64);
                }
                Err(err) => {
                    // Not ours to dead-letter (we hold no group offsets; every instance replays
                    // it): surface it for an operator instead.
                    metrics::counter!("wa_session_projection_undecodable_total").increment(1);
                    tracing::error!(partition = message.partition(), offset = message.offset(), error = %err, "undecodable inbound record skipped by projection");
                }
            })
            .await
    }

    /// Waits until the initial replay is done, or until `stop`.
    pub(crate) async fn wait_caught_up(&self, stop: &CancellationToken) {
        self.inbound.wait_caught_up(stop).await;
    }

    /// Waits until every inbound record the broker holds now has been projected.
    pub(crate) async fn catch_up(&self, timeout: Duration) -> Result<(), String> {
        self.inbound.catch_up(timeout).await
    }
}
