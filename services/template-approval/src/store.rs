//! The templates, as the topic `wa.templates.v1` says they are.
//!
//! The state is rebuilt by following the topic from its beginning; commands publish events to
//! it and return once the state has applied them, so every instance sees the same templates and
//! a restart rebuilds exactly what was there.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use rdkafka::Message;
use wa_platform::config::KafkaConfig;
use wa_platform::kafka::{EventProducer, TopicFollower};
use wa_platform::topics::TEMPLATES;
use wa_platform::CancellationToken;
use wa_schemas::{Event, TemplateEvent};

use crate::template::{self, Actor, Command, CommandError, Templates};

const CATCH_UP: Duration = Duration::from_secs(10);

/// Why a command did not take effect.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ExecuteError {
    /// The aggregate refused it.
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// The broker did not take the events or the state did not catch up.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The command was decided, and what had to happen before its events are published
    /// (a call to Twilio) failed: nothing was published.
    #[error("{0}")]
    EffectFailed(String),
}

/// The template state and the way to change it.
pub(crate) struct Store {
    templates: RwLock<Templates>,
    follower: Arc<TopicFollower>,
    producer: EventProducer,
    /// One command at a time per instance: decide on current state, publish, apply.
    writer: tokio::sync::Mutex<()>,
}

impl Store {
    /// Connects and starts following `wa.templates.v1` from its beginning.
    pub(crate) async fn start(kafka: &KafkaConfig, producer: EventProducer) -> anyhow::Result<Arc<Self>> {
        let follower = TopicFollower::start(kafka, &TEMPLATES, "template-approval-store").await?;
        Ok(Arc::new(Self { templates: RwLock::default(), follower, producer, writer: tokio::sync::Mutex::new(()) }))
    }

    /// Applies the topic's events until `shutdown`.
    pub(crate) async fn run(&self, shutdown: CancellationToken) -> anyhow::Result<()> {
        self.follower
            .run(shutdown, |message| match TemplateEvent::decode(message.payload().unwrap_or_default()) {
                Ok(event) => {
                    if event.change().is_none() {
                        metrics::counter!(wa_platform::metrics::TEMPLATES_UNKNOWN_CHANGES).increment(1);
                        tracing::warn!(
                            offset = message.offset(),
                            change = %event.kind,
                            "template change this build does not know; the template stays as it was"
                        );
                    }
                    let mut templates = self.templates.write().expect("templates lock");
                    template::apply(&mut templates, &event);
                    metrics::gauge!(wa_platform::metrics::TEMPLATES).set(templates.len() as f64);
                }
                Err(err) => {
                    metrics::counter!(wa_platform::metrics::TEMPLATES_UNDECODABLE).increment(1);
                    tracing::error!(offset = message.offset(), error = %err, "undecodable template event skipped");
                }
            })
            .await
    }

    /// Waits until the initial replay is done, or until `stop`.
    pub(crate) async fn wait_caught_up(&self, stop: &CancellationToken) {
        self.follower.wait_caught_up(stop).await;
    }

    /// Waits until every template event the broker holds has been applied.
    pub(crate) async fn catch_up(&self) -> Result<(), String> {
        self.follower.catch_up(CATCH_UP).await
    }

    /// Reads the current state.
    pub(crate) fn read<T>(&self, read: impl FnOnce(&Templates) -> T) -> T {
        read(&self.templates.read().expect("templates lock"))
    }

    /// What `command` would do to the current state, without doing it: its events, or why it
    /// is refused.
    pub(crate) fn decide(&self, command: Command, actor: Actor) -> Result<Vec<TemplateEvent>, CommandError> {
        self.read(|templates| template::handle(templates, command, actor, wa_platform::now_millis()))
    }

    /// Decides `command` on the current state, publishes its events and waits until they are
    /// applied. Returns the events (none when nothing changed).
    pub(crate) async fn execute(&self, command: Command, actor: Actor) -> Result<Vec<TemplateEvent>, ExecuteError> {
        self.execute_then(command, actor, |_| async { Ok(()) }).await
    }

    /// Like [`Store::execute`], with `effect` run after the command is decided and before its
    /// events are published, only when it changes something: a command the aggregate refuses,
    /// or one that changes nothing, never reaches Twilio. When `effect` fails, nothing is
    /// published.
    pub(crate) async fn execute_then<F, Fut>(
        &self,
        command: Command,
        actor: Actor,
        effect: F,
    ) -> Result<Vec<TemplateEvent>, ExecuteError>
    where
        F: FnOnce(&[TemplateEvent]) -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let _writer = self.writer.lock().await;
        self.catch_up().await.map_err(ExecuteError::Unavailable)?;
        let events = self.read(|templates| template::handle(templates, command, actor, wa_platform::now_millis()))?;
        if !events.is_empty() {
            effect(&events).await.map_err(ExecuteError::EffectFailed)?;
        }
        for event in &events {
            self.producer.publish(&TEMPLATES, event).await.map_err(|err| ExecuteError::Unavailable(err.to_string()))?;
            tracing::info!(template = %event.template_id, change = %event.kind, actor = %event.actor, "template changed");
        }
        if !events.is_empty() {
            self.catch_up().await.map_err(ExecuteError::Unavailable)?;
        }
        Ok(events)
    }
}
