//! Membership of a consumer group, the one way every consumer of the channel joins one: the
//! consumer (created with the group's settings and [`DeferredRevoke`]), its rebalance events,
//! and the rejoin a stale assignment needs (tansu 0.6). The platform's concurrent loop
//! ([`super::run_consumer`]) and session-window's ordered projection both read their records and
//! rebalances from it, and both give revoked partitions up through it once their work on them
//! is durable.

use std::time::Instant;

use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::OwnedMessage;
use rdkafka::ClientConfig;
use tokio::sync::mpsc;

use super::rebalance::{complete_revoke, DeferredRevoke, RebalanceEvent, StaleAssignments, TopicPartition};
use crate::config::KafkaConfig;
use crate::topics::TopicSpec;

/// What the group has for the member next.
#[derive(Debug)]
pub enum Membership {
    /// A record of a partition the member holds.
    Record(OwnedMessage),
    /// These partitions are now the member's.
    Assigned(Vec<TopicPartition>),
    /// These partitions are being taken away: finish with them, commit, then
    /// [`GroupMember::give_up`].
    Revoked(Vec<TopicPartition>),
}

/// A member of one consumer group.
pub struct GroupMember {
    /// Before `consumer`, so dropped before it (fields drop in order) however the member's loop
    /// ends: closing the consumer revokes its partitions, and with the receiver gone the
    /// context gives them up at once instead of waiting for a drain nobody runs.
    rebalances: mpsc::UnboundedReceiver<RebalanceEvent>,
    consumer: StreamConsumer<DeferredRevoke>,
    stale: StaleAssignments,
    topics: Vec<String>,
    group: String,
}

impl GroupMember {
    /// Joins `group` (without the prefix) as `client_id` and subscribes to `topics`;
    /// `configure` adds the member's own settings (commit mode, assignment strategy).
    pub fn join(
        kafka: &KafkaConfig,
        group: &str,
        client_id: &str,
        topics: &[TopicSpec],
        configure: impl FnOnce(&mut ClientConfig),
    ) -> anyhow::Result<Self> {
        let full_group = kafka.group(group);
        let (context, rebalances) = DeferredRevoke::new(&full_group);
        let mut config = super::group_member_config(kafka, group, client_id);
        configure(&mut config);
        let consumer: StreamConsumer<DeferredRevoke> = config.create_with_context(context)?;
        let topics: Vec<String> = topics.iter().map(|spec| kafka.topic(spec)).collect();
        let member = Self { rebalances, consumer, stale: StaleAssignments::default(), topics, group: full_group };
        member.subscribe()?;
        tracing::info!(group = %member.group, topics = ?member.topics, "joined the consumer group");
        Ok(member)
    }

    fn subscribe(&self) -> anyhow::Result<()> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.consumer.subscribe(&topics)?;
        Ok(())
    }

    /// The consumer, to commit, store offsets and ask for committed offsets.
    pub fn consumer(&self) -> &StreamConsumer<DeferredRevoke> {
        &self.consumer
    }

    /// The group's full name.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The next rebalance, or the next record when `receive` (a member whose hands are full
    /// asks for rebalances only). Rejoins the group by itself when an assignment went stale.
    /// Cancel-safe: a caller may select on it beside other work.
    pub async fn next(&mut self, receive: bool) -> Membership {
        loop {
            let rejoin_at = self.stale.due().map(tokio::time::Instant::from_std);
            tokio::select! {
                biased;
                Some(event) = self.rebalances.recv() => match event {
                    RebalanceEvent::Assigned(partitions) => {
                        self.stale.assigned(&partitions, Instant::now());
                        return Membership::Assigned(partitions);
                    }
                    RebalanceEvent::Revoked(partitions) => return Membership::Revoked(partitions),
                },
                () = sleep_until(rejoin_at), if rejoin_at.is_some() => {
                    // Counted as a rejoin by the stale-assignment tracker.
                    if self.stale.take_due(Instant::now()) {
                        tracing::info!(group = %self.group, "assignment stale or empty; rejoining the group");
                        self.consumer.unsubscribe();
                        if let Err(err) = self.subscribe() {
                            tracing::error!(error = %err, "cannot rejoin the group");
                        }
                    }
                }
                received = self.consumer.recv(), if receive => match received {
                    Ok(message) => return Membership::Record(message.detach()),
                    Err(err) => {
                        tracing::warn!(error = %err, "consumer error");
                        // Errors repeat while the broker is away: do not spin.
                        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    }
                },
            }
        }
    }

    /// Whether the assignment just received is one to leave at once (a rebalance that handed
    /// back exactly what it took: tansu 0.6 keeps a dead member's stale assignment); the next
    /// call to [`GroupMember::next`] rejoins.
    pub fn rejoin_due(&self) -> bool {
        self.stale.due().is_some_and(|due| due <= Instant::now())
    }

    /// Gives revoked partitions up, once the member's work on them is committed.
    pub fn give_up(&mut self, revoked: &[TopicPartition]) {
        if let Err(err) = complete_revoke(&self.consumer, revoked) {
            tracing::error!(error = %err, "cannot give up the revoked partitions");
        }
        self.stale.revoked(revoked);
    }

    /// Leaves the group and joins it again as a new member: every partition is revoked (and
    /// assigned afresh).
    pub fn rejoin(&mut self) -> anyhow::Result<()> {
        self.consumer.unsubscribe();
        self.stale.rejoined(Instant::now());
        self.subscribe()
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
