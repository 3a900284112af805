//! The live projection: one consumer in the `session-window` group reads the co-partitioned
//! message topics, so an instance owns whole conversations (partition `p` of every topic).
//!
//! - On assignment, each partition's sessions are restored from `wa.sessions.v1` before any of
//!   its records is handled; inputs resume from the committed offsets.
//! - Every state change is queued to `wa.sessions.v1` (to the input's partition) together
//!   with the events it causes (and, for consent, its `wa.consent.v1` record), before the
//!   input's position is recorded. Positions are committed every commit interval and on
//!   revoke, only after every queued record was acknowledged: a restored state is never behind
//!   the committed inputs (it may be ahead; applying a fact twice changes nothing). When a
//!   queued record was not acknowledged, nothing is committed: the partitions are given up
//!   and taken again (a rejoin), restored from the snapshots that did land, and their inputs
//!   are read again from the last commit.
//! - An outbound request waits until partition `p` of `wa.inbound.v1` has been read up to the
//!   high watermark the broker reported after the request arrived, so a reply sees the
//!   customer message the agent is answering even though the two travel on different topics.
//!   One watermark query serves every request that arrived before it was sent (the state
//!   machine is [`crate::barrier`]).
//! - Timer notices come from the restored state, so they survive restarts and rebalances.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tracing::Instrument as _;
use uuid::Uuid;
use wa_platform::backoff::Backoff;
use wa_platform::config::KafkaConfig;
use wa_platform::http::Health;
use wa_platform::kafka::rebalance::{RebalanceEvent, TopicPartition};
use wa_platform::kafka::{ConsumerSettings, EventProducer, GroupMember, Membership, Queued, Record};
use wa_platform::topics::{
    partition_for_key, CONSENT, INBOUND, OUTBOUND_CHECKED, OUTBOUND_DISPATCHED, OUTBOUND_REQUESTED, SESSIONS,
    SESSION_EVENTS, SESSION_OWNERS,
};
use wa_platform::CancellationToken;
use wa_schemas::{Event, OutboundRequested, OutboundWindowChecked};

use crate::barrier::{Barrier, Next};
use crate::session::{self, Content, Session};
use crate::store::{from_snapshot, PartitionStore};
use crate::{events, facts, Config, SERVICE};

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// What the projector shares with the HTTP query and the rebalance callback.
#[derive(Default)]
pub(crate) struct Shared {
    /// Restored partitions this instance owns.
    pub stores: Mutex<HashMap<i32, PartitionStore>>,
    /// Partitions assigned but not restored yet.
    pub restoring: Mutex<Vec<i32>>,
    /// The instance each partition's owner last announced (its HTTP base URL).
    pub owners: Mutex<HashMap<i32, String>>,
    /// Partition count of the message topics, once connected.
    pub partitions: std::sync::OnceLock<i32>,
}

fn partition_numbers(list: &[TopicPartition]) -> Vec<i32> {
    let mut partitions: Vec<i32> = list.iter().map(|(_, partition)| *partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    partitions
}

/// An outbound request waiting for the inbound partition to catch up.
struct Pending {
    /// `None` for a record that was dead-lettered: only its offset is stored, in turn.
    request: Option<OutboundRequested>,
    offset: i64,
    span: tracing::Span,
}

struct Topics {
    inbound: String,
    requested: String,
    dispatched: String,
    sessions: String,
}

/// The live projection loop.
pub(crate) struct Projector {
    /// The group membership (the platform's, as every consumer's): records and rebalances.
    member: GroupMember,
    config: Config,
    metadata: Arc<BaseConsumer>,
    shared: Arc<Shared>,
    producer: EventProducer,
    health: Arc<Health>,
    topics: Topics,
    settings: ConsumerSettings,
    /// Per owned partition: the requests waiting for its inbound records.
    owned: HashMap<i32, Barrier<Pending>>,
    unacked: Vec<Queued>,
    /// The next offset to commit per input partition: everything before it is handled and
    /// its outputs queued.
    positions: HashMap<TopicPartition, i64>,
    /// Positions moved since the last commit.
    positions_moved: bool,
    /// Outputs were lost and the group is being rejoined: nothing is recorded or committed
    /// until the partitions are revoked.
    rewinding: bool,
    /// Counts received records: orders requests against watermark queries.
    seq: u64,
    answers: mpsc::UnboundedReceiver<(i32, u64, Result<i64, String>)>,
    answers_tx: mpsc::UnboundedSender<(i32, u64, Result<i64, String>)>,
}

/// The consumer group of the live projection.
pub(crate) const GROUP: &str = "session-window";

/// Follows `wa.session.owners.v1` into `shared.owners` until `stop`.
pub(crate) async fn follow_owners(
    kafka: &KafkaConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let follower = wa_platform::kafka::TopicFollower::start(kafka, &SESSION_OWNERS, "session-window-owners").await?;
    Ok(tokio::spawn(async move {
        follower
            .run(stop, |message| {
                if let Ok(owner) = wa_schemas::PartitionOwner::decode(message.payload().unwrap_or_default()) {
                    shared.owners.lock().expect("owners lock").insert(owner.partition, owner.owner_url);
                }
            })
            .await
    }))
}

/// Looks up how many partitions `topic` has.
pub(crate) async fn partition_count(kafka: &KafkaConfig, spec: &wa_platform::topics::TopicSpec) -> anyhow::Result<i32> {
    let client: BaseConsumer = wa_platform::kafka::client_config(kafka, SERVICE).create()?;
    let topic = kafka.topic(spec);
    tokio::task::spawn_blocking(move || -> anyhow::Result<i32> {
        let meta = client.fetch_metadata(Some(&topic), METADATA_TIMEOUT)?;
        let count = meta.topics().first().map_or(0, |t| t.partitions().len());
        anyhow::ensure!(count > 0, "topic {topic} does not exist");
        Ok(i32::try_from(count)?)
    })
    .await?
}

/// Folds one record of `wa.sessions.v1` into a partition's store: a snapshot restores its
/// conversation, a tombstone forgets it.
fn restore_snapshot(store: &mut PartitionStore, message: &BorrowedMessage<'_>) {
    match message.payload() {
        None | Some([]) => {
            if let Some(id) =
                message.key().and_then(|k| std::str::from_utf8(k).ok()).and_then(|k| Uuid::parse_str(k).ok())
            {
                store.remove(&id);
            }
        }
        Some(payload) => match wa_schemas::SessionState::decode(payload).ok().as_ref().and_then(from_snapshot) {
            Some((id, session)) => store.restore(id, session),
            None => tracing::error!(
                partition = message.partition(),
                offset = message.offset(),
                "unreadable session snapshot skipped"
            ),
        },
    }
}

impl Projector {
    /// Connects and subscribes.
    pub(crate) async fn start(
        config: Config,
        producer: EventProducer,
        health: Arc<Health>,
        shared: Arc<Shared>,
    ) -> anyhow::Result<Self> {
        let kafka = &config.kafka;
        let partitions = partition_count(kafka, &INBOUND).await?;
        let _ = shared.partitions.set(partitions);
        let member =
            GroupMember::join(kafka, GROUP, SERVICE, &[INBOUND, OUTBOUND_REQUESTED, OUTBOUND_DISPATCHED], |c| {
                // Offsets are committed by the loop, after the records they caused are acknowledged.
                // Range assignment gives one member the same partition number of every topic.
                c.set("enable.auto.commit", "false").set("partition.assignment.strategy", "range");
            })?;
        let topics = Topics {
            inbound: kafka.topic(&INBOUND),
            requested: kafka.topic(&OUTBOUND_REQUESTED),
            dispatched: kafka.topic(&OUTBOUND_DISPATCHED),
            sessions: kafka.topic(&SESSIONS),
        };
        let metadata: Arc<BaseConsumer> =
            Arc::new(wa_platform::kafka::client_config(kafka, "session-window-watermarks").create()?);
        let (answers_tx, answers) = mpsc::unbounded_channel();
        let settings = ConsumerSettings {
            group: GROUP.to_owned(),
            topics: vec![INBOUND, OUTBOUND_REQUESTED, OUTBOUND_DISPATCHED],
            service: SERVICE,
            assignment: Default::default(),
            max_in_flight: wa_platform::kafka::MAX_IN_FLIGHT,
            fetch_wait: None,
        };
        tracing::info!(group = %kafka.group(GROUP), partitions, "session projection started");
        let projector = Self {
            member,
            config,
            metadata,
            shared,
            producer,
            health,
            topics,
            settings,
            owned: HashMap::new(),
            unacked: Vec::new(),
            positions: HashMap::new(),
            positions_moved: false,
            rewinding: false,
            seq: 0,
            answers,
            answers_tx,
        };
        Ok(projector)
    }

    /// Projects until `shutdown`, then commits what is durable.
    pub(crate) async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut commit = tokio::time::interval(self.config.commit_interval);
        let mut timers = tokio::time::interval(self.config.timer_interval);
        commit.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        timers.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some((partition, seq, answer)) = self.answers.recv() => self.answered(partition, seq, answer).await?,
                _ = commit.tick() => self.commit().await?,
                _ = timers.tick() => self.fire_timers().await?,
                membership = self.member.next(true) => match membership {
                    Membership::Assigned(assigned) => self.rebalanced(RebalanceEvent::Assigned(assigned), &shutdown).await?,
                    Membership::Revoked(revoked) => self.rebalanced(RebalanceEvent::Revoked(revoked), &shutdown).await?,
                    Membership::Record(message) => self.handle(message, &shutdown).await?,
                },
            }
        }
        if self.await_unacked().await {
            self.commit_positions(CommitMode::Sync);
        }
        tracing::info!("session projection stopped");
        Ok(())
    }

    async fn rebalanced(&mut self, event: RebalanceEvent, shutdown: &CancellationToken) -> anyhow::Result<()> {
        match event {
            RebalanceEvent::Revoked(revoked) => {
                let partitions = partition_numbers(&revoked);
                tracing::info!(?partitions, "partitions revoked; committing what is acknowledged");
                // Every effect of the records handled so far was queued before their positions
                // were recorded: once all are acknowledged, the positions may be committed.
                if std::mem::take(&mut self.rewinding) {
                    // Outputs were lost since the last commit: nothing after it is committed.
                    self.await_unacked().await;
                } else if self.await_unacked().await {
                    self.commit_positions(CommitMode::Sync);
                } else {
                    // Not committing: the next owner handles these records again (idempotent).
                    metrics::counter!(wa_platform::metrics::SESSION_UNCOMMITTED_REVOKES).increment(1);
                    tracing::error!(
                        ?partitions,
                        "queued records not acknowledged on revoke; positions left uncommitted"
                    );
                }
                self.positions.retain(|(_, partition), _| !partitions.contains(partition));
                {
                    let mut stores = self.shared.stores.lock().expect("stores lock");
                    for partition in &partitions {
                        stores.remove(partition);
                    }
                }
                for partition in &partitions {
                    if let Some(owned) = self.owned.remove(partition) {
                        let waiting = owned.waiting().filter(|p| p.request.is_some()).count();
                        metrics::gauge!(wa_platform::metrics::SESSION_VERDICTS_WAITING).decrement(waiting as f64);
                    }
                }
                self.member.give_up(&revoked);
            }
            RebalanceEvent::Assigned(assigned) => {
                // A rejoin that had nothing to revoke: nothing to rewind either.
                self.rewinding = false;
                let partitions = partition_numbers(&assigned);
                self.shared.restoring.lock().expect("restoring lock").clone_from(&partitions);
                // A rebalance that hands back exactly what it took is what a broker gives when
                // it kept a dead member's stale assignment (tansu 0.6 keeps the generation when
                // a member times out): rejoin as a new member once, so a fresh generation is
                // assigned and the dead member's partitions are not left unowned.
                if self.member.rejoin_due() {
                    // Rejoined at once (by the membership), before restoring anything.
                    return Ok(());
                }
                let missing: Vec<i32> = partitions.into_iter().filter(|p| !self.owned.contains_key(p)).collect();
                self.restore_until_done(&missing, shutdown).await;
                // Ready once the first assignment is restored (an instance beyond the
                // partition count is ready with none).
                self.health.set_ready(true);
            }
        }
        Ok(())
    }

    /// Restores, retrying with backoff while the broker fails, until done or `shutdown`.
    async fn restore_until_done(&mut self, partitions: &[i32], shutdown: &CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        loop {
            match self.restore(partitions, shutdown).await {
                Ok(()) => return,
                Err(err) => {
                    let wait = backoff.next_wait();
                    tracing::warn!(?partitions, error = %format!("{err:#}"), retry_in = ?wait, "restore failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Reads the given partitions of `wa.sessions.v1` from their beginning to their end into
    /// fresh stores, and learns where the inbound partitions resume. All at once: one fetch
    /// serves every partition.
    async fn restore(&mut self, partitions: &[i32], shutdown: &CancellationToken) -> anyhow::Result<()> {
        if partitions.is_empty() {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let metadata = self.metadata.clone();
        let inbound = self.topics.inbound.clone();
        let list = partitions.to_vec();
        let marks = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(i32, i64)>> {
            list.iter()
                .map(|&partition| Ok((partition, metadata.fetch_watermarks(&inbound, partition, METADATA_TIMEOUT)?.0)))
                .collect()
        })
        .await??;
        let lead = self.config.lead_millis();
        let kafka = self.config.kafka.clone();
        let sessions = self.topics.sessions.clone();
        let list = partitions.to_vec();
        let stop = shutdown.clone();
        let (mut stores, read, complete) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let mut stores: HashMap<i32, PartitionStore> =
                list.iter().map(|p| (*p, PartitionStore::new(lead))).collect();
            let mut read = 0u64;
            let complete = wa_platform::kafka::read_partitions_to_end(
                &kafka,
                "session-window-restore",
                &sessions,
                &list,
                &stop,
                |message| {
                    read += 1;
                    if let Some(store) = stores.get_mut(&message.partition()) {
                        restore_snapshot(store, message);
                    }
                },
            )?;
            Ok((stores, read, complete))
        })
        .await??;
        if !complete {
            // Stopping: the partitions are restored again after a restart.
            return Ok(());
        }
        let committed = self.committed_inbound(partitions)?;
        let conversations: usize = stores.values().map(PartitionStore::len).sum();
        for (partition, inbound_low) in marks {
            let applied_inbound = committed.get(&partition).copied().unwrap_or(inbound_low);
            let store = stores.remove(&partition).unwrap_or_else(|| PartitionStore::new(lead));
            self.shared.stores.lock().expect("stores lock").insert(partition, store);
            self.owned.insert(partition, Barrier::new(applied_inbound));
        }
        self.shared.restoring.lock().expect("restoring lock").retain(|p| !partitions.contains(p));
        self.announce_ownership(partitions).await?;
        tracing::info!(
            ?partitions,
            conversations,
            records = read,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "partitions restored"
        );
        metrics::counter!(wa_platform::metrics::SESSION_RESTORES).increment(partitions.len() as u64);
        metrics::histogram!(wa_platform::metrics::SESSION_RESTORE).record(started.elapsed().as_secs_f64());
        self.publish_gauge();
        Ok(())
    }

    /// Tells the other instances (through `wa.session.owners.v1`) that these partitions are
    /// served here now.
    async fn announce_ownership(&mut self, partitions: &[i32]) -> anyhow::Result<()> {
        let url = self.config.advertised_url.clone().unwrap_or_default();
        let now = self.config.clock.now_millis();
        for &partition in partitions {
            let owner = wa_schemas::PartitionOwner {
                event_id: Uuid::new_v4().to_string(),
                occurred_at: now,
                partition_key: partition.to_string(),
                partition,
                owner_url: url.clone(),
            };
            self.queue(&SESSION_OWNERS, &owner, None).await?;
        }
        Ok(())
    }

    /// The committed offsets of the inbound partitions (those never committed are absent).
    fn committed_inbound(&self, partitions: &[i32]) -> anyhow::Result<HashMap<i32, i64>> {
        let mut query = TopicPartitionList::new();
        for partition in partitions {
            query.add_partition(&self.topics.inbound, *partition);
        }
        let committed = self.member.consumer().committed_offsets(query, METADATA_TIMEOUT)?;
        Ok(committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(offset) => Some((e.partition(), offset)),
                _ => None,
            })
            .collect())
    }

    fn publish_gauge(&self) {
        let stores = self.shared.stores.lock().expect("stores lock");
        metrics::gauge!(wa_platform::metrics::SESSION_CONVERSATIONS)
            .set(stores.values().map(PartitionStore::len).sum::<usize>() as f64);
        metrics::gauge!(wa_platform::metrics::SESSION_PARTITIONS_OWNED).set(stores.len() as f64);
    }

    async fn handle(&mut self, message: OwnedMessage, shutdown: &CancellationToken) -> anyhow::Result<()> {
        self.seq += 1;
        let partition = message.partition();
        if !self.owned.contains_key(&partition) {
            let assigned = self.member.consumer().assignment().is_ok_and(|list| {
                list.elements().iter().any(|e| e.partition() == partition && e.topic() == message.topic())
            });
            if !assigned {
                // A record of a partition given up in the meantime: its owner reads it.
                return Ok(());
            }
            // Records can arrive before the assignment event is seen: restore first.
            self.restore_until_done(&[partition], shutdown).await;
            if !self.owned.contains_key(&partition) {
                // Stopping: the record is read again after a restart.
                return Ok(());
            }
        }
        let record = Record {
            topic: message.topic(),
            partition,
            offset: message.offset(),
            key: message.key(),
            payload: message.payload().unwrap_or_default(),
            headers: message.headers(),
            // Handled to the end in this loop; a revoke waits for it.
            revoked: shutdown,
        };
        let span = wa_platform::kafka::consume_span(&record);
        let outcome = if record.topic == self.topics.requested {
            self.on_request(&record, span.clone())
        } else {
            self.on_fact(&record).instrument(span.clone()).await
        };
        let label = match &outcome {
            Ok(()) => "ok",
            Err(_) => "dead_lettered",
        };
        metrics::counter!(wa_platform::metrics::RECORDS_CONSUMED, "service" => SERVICE, "topic" => record.topic.to_owned(), "outcome" => label).increment(1);
        if let Err(reason) = outcome {
            if !wa_platform::kafka::dead_letter(&record, &reason, &self.settings, &self.producer, shutdown)
                .instrument(span.clone())
                .await
            {
                return Ok(());
            }
            if record.topic == self.topics.requested {
                // Its offset is stored after the requests before it are decided.
                if let Some(owned) = self.owned.get_mut(&partition) {
                    owned.push(self.seq, Pending { request: None, offset: record.offset, span });
                }
            } else {
                self.store_offset(record.topic, partition, record.offset);
            }
        }
        // A new request, or inbound progress, may let waiting requests through.
        if record.topic == self.topics.inbound {
            if let Some(owned) = self.owned.get_mut(&partition) {
                owned.applied(record.offset);
            }
        }
        if record.topic != self.topics.dispatched {
            self.release(partition).await?;
        }
        Ok(())
    }

    /// Records that every input of `topic`'s `partition` up to `offset` is handled.
    fn store_offset(&mut self, topic: &str, partition: i32, offset: i64) {
        if self.rewinding {
            return;
        }
        self.positions_moved = true;
        let position = self.positions.entry((topic.to_owned(), partition)).or_insert(offset + 1);
        *position = (*position).max(offset + 1);
    }

    fn conversation_of(&self, conversation_id: &str, partition: i32) -> Result<Uuid, String> {
        let id = Uuid::parse_str(conversation_id)
            .map_err(|_| format!("conversation_id {conversation_id:?} is not a UUID"))?;
        let partitions = self.shared.partitions.get().copied().unwrap_or(1);
        let expected = partition_for_key(conversation_id.as_bytes(), partitions);
        if expected != partition {
            return Err(format!(
                "conversation {conversation_id} belongs on partition {expected}, found on {partition}: produce message records keyed by conversation id with Kafka's default (murmur2) partitioner"
            ));
        }
        Ok(id)
    }

    /// Applies the fact a customer message or a dispatch outcome carries, and queues its events
    /// and snapshot.
    async fn on_fact(&mut self, record: &Record<'_>) -> Result<(), String> {
        let source =
            if record.topic == self.topics.inbound { facts::Source::Inbound } else { facts::Source::Dispatched };
        let read = facts::read(source, record.payload, &self.config.keywords)
            .map_err(|e| format!("undecodable value: {e}"))?;
        if let Some(read) = read {
            let conversation = self.conversation_of(&read.conversation_id, record.partition)?;
            let now = self.config.clock.now_millis();
            let (change, session) = {
                let mut stores = self.shared.stores.lock().expect("stores lock");
                let store = stores.get_mut(&record.partition).ok_or("partition not owned")?;
                store.apply(conversation, read.fact)
            };
            // A message whose window had closed before it was read (history replayed on a
            // first start) changes state but announces no window.
            let historic = change.window.is_some() && session.window_expires_at().is_some_and(|e| e <= now);
            let events = events::for_change(
                &conversation,
                &change,
                &session,
                read.at,
                &read.event_id,
                read.reason.as_deref(),
                historic,
            );
            for event in &events {
                self.queue(&SESSION_EVENTS, event, None).await.map_err(|e| e.to_string())?;
            }
            if let Some(consent) = change.consent_fact {
                let kept = facts::consent_record(&read.conversation_id, consent, &read);
                self.queue(&CONSENT, &kept, Some(record.partition)).await.map_err(|e| e.to_string())?;
            }
            if historic {
                let mut stores = self.shared.stores.lock().expect("stores lock");
                if let Some(store) = stores.get_mut(&record.partition) {
                    store.settle_conversation(&conversation, now);
                }
            }
            self.snapshot_dirty(record.partition).await.map_err(|e| e.to_string())?;
        }
        self.store_offset(record.topic, record.partition, record.offset);
        Ok(())
    }

    /// Queues the request behind the inbound barrier of its partition.
    fn on_request(&mut self, record: &Record<'_>, span: tracing::Span) -> Result<(), String> {
        let request = OutboundRequested::decode(record.payload).map_err(|e| format!("undecodable value: {e}"))?;
        self.conversation_of(&request.conversation_id, record.partition)?;
        let owned = self.owned.get_mut(&record.partition).ok_or("partition not owned")?;
        owned.push(self.seq, Pending { request: Some(request), offset: record.offset, span });
        metrics::gauge!(wa_platform::metrics::SESSION_VERDICTS_WAITING).increment(1.0);
        Ok(())
    }

    async fn answered(&mut self, partition: i32, seq: u64, answer: Result<i64, String>) -> anyhow::Result<()> {
        let Some(owned) = self.owned.get_mut(&partition) else { return Ok(()) };
        if let Err(reason) = &answer {
            tracing::warn!(partition, reason = %reason, "inbound watermark query failed; retrying");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        owned.answered(seq, answer.ok());
        self.release(partition).await
    }

    /// Decides every waiting request the barrier lets through, and sends the watermark query
    /// it asks for.
    async fn release(&mut self, partition: i32) -> anyhow::Result<()> {
        loop {
            let Some(owned) = self.owned.get_mut(&partition) else { return Ok(()) };
            let pending = match owned.next(self.seq) {
                Next::Wait => return Ok(()),
                Next::Query { seq } => {
                    let metadata = self.metadata.clone();
                    let topic = self.topics.inbound.clone();
                    let answers = self.answers_tx.clone();
                    tokio::task::spawn_blocking(move || {
                        let answer = metadata
                            .fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
                            .map(|(_, high)| high)
                            .map_err(|e| e.to_string());
                        let _ = answers.send((partition, seq, answer));
                    });
                    return Ok(());
                }
                Next::Release(pending) => pending,
            };
            let span = pending.span.clone();
            if let Some(request) = pending.request {
                metrics::gauge!(wa_platform::metrics::SESSION_VERDICTS_WAITING).decrement(1.0);
                self.decide(partition, request).instrument(span).await?;
            }
            let topic = self.topics.requested.clone();
            self.store_offset(&topic, partition, pending.offset);
        }
    }

    /// Publishes the verdict on a request.
    async fn decide(&mut self, partition: i32, request: OutboundRequested) -> anyhow::Result<()> {
        let conversation = Uuid::parse_str(&request.conversation_id)?;
        let session: Option<Session> = self
            .shared
            .stores
            .lock()
            .expect("stores lock")
            .get(&partition)
            .and_then(|store| store.get(&conversation).copied());
        let now = self.config.clock.now_millis();
        let content = if request.template.is_some() { Content::Template } else { Content::FreeForm };
        let verdict = session::check(
            session.as_ref(),
            content,
            now,
            self.config.safety_margin_millis(),
            self.config.opt_out_scope,
        );
        // Whether free-form (and content WhatsApp allows in session) could go now, whatever
        // this request asks: template-approval lets such content through without approval.
        let window_open = session::check(
            session.as_ref(),
            Content::FreeForm,
            now,
            self.config.safety_margin_millis(),
            self.config.opt_out_scope,
        )
        .is_ok();
        let code = verdict.map_or_else(|r| r.code(), |()| "allowed");
        metrics::counter!(wa_platform::metrics::SESSION_VERDICTS, "verdict" => code).increment(1);
        tracing::info!(request_id = %request.request_id, verdict = code, "window checked");
        let checked = OutboundWindowChecked {
            event_id: Uuid::new_v5(
                &Uuid::NAMESPACE_OID,
                format!("wachannel:checked:{}", request.event_id()).as_bytes(),
            )
            .to_string(),
            occurred_at: now,
            conversation_id: request.conversation_id,
            request_id: request.request_id,
            from: request.from,
            to: request.to,
            body: request.body,
            media_urls: request.media_urls,
            template: request.template,
            allowed: verdict.is_ok(),
            refusal_reason: verdict.err().map(|refusal| refusal.code().to_owned()),
            window_expires_at: session.as_ref().and_then(Session::window_expires_at),
            opted_out: session.as_ref().is_some_and(Session::opted_out),
            marketing_limited_at: session.as_ref().and_then(Session::marketing_limited_at),
            entry_point_open: session.as_ref().is_some_and(|s| s.entry_point_open(now)),
            window_open,
            metadata: request.metadata,
        };
        self.queue(&OUTBOUND_CHECKED, &checked, None).await?;
        Ok(())
    }

    /// Publishes the notices due now, with their snapshots.
    async fn fire_timers(&mut self) -> anyhow::Result<()> {
        let now = self.config.clock.now_millis();
        let lead = self.config.lead_millis();
        let due: Vec<(i32, crate::store::DueNotices)> = {
            let mut stores = self.shared.stores.lock().expect("stores lock");
            stores.iter_mut().map(|(p, store)| (*p, store.take_due(now))).filter(|(_, d)| !d.is_empty()).collect()
        };
        for (partition, notices) in due {
            let span = tracing::info_span!("window timer", partition, notices = notices.len());
            async {
                for (conversation, notice, session) in &notices {
                    let event = events::notice(conversation, *notice, session, lead);
                    self.queue(&SESSION_EVENTS, &event, None).await?;
                }
                self.snapshot_dirty(partition).await
            }
            .instrument(span)
            .await?;
        }
        Ok(())
    }

    async fn snapshot_dirty(&mut self, partition: i32) -> anyhow::Result<()> {
        let snapshots = {
            let mut stores = self.shared.stores.lock().expect("stores lock");
            stores.get_mut(&partition).map(PartitionStore::take_dirty).unwrap_or_default()
        };
        for state in &snapshots {
            self.queue(&SESSIONS, state, Some(partition)).await?;
        }
        Ok(())
    }

    async fn queue<E: Event>(
        &mut self,
        topic: &wa_platform::topics::TopicSpec,
        event: &E,
        partition: Option<i32>,
    ) -> Result<(), wa_platform::kafka::PublishError> {
        let queued = self.producer.enqueue(topic, event, partition).await?;
        self.unacked.push(queued);
        Ok(())
    }

    /// Waits for every queued record; false when one was not acknowledged.
    async fn await_unacked(&mut self) -> bool {
        let mut durable = true;
        for queued in std::mem::take(&mut self.unacked) {
            if let Err(err) = queued.acknowledged().await {
                if durable {
                    tracing::error!(error = %err, "a projected record was not acknowledged");
                }
                durable = false;
            }
        }
        durable
    }

    /// Commits the positions of the partitions this instance owns.
    fn commit_positions(&mut self, mode: CommitMode) {
        self.positions_moved = false;
        let mut list = TopicPartitionList::new();
        for ((topic, partition), offset) in &self.positions {
            if let Err(err) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
                tracing::warn!(error = %err, "position not committed");
            }
        }
        if list.count() == 0 {
            return;
        }
        if let Err(err) = self.member.consumer().commit(&list, mode) {
            tracing::warn!(error = %err, "commit failed; the positions are committed with the next one");
            self.positions_moved = true;
        }
    }

    /// Waits for every queued record, then commits the positions. When a record was not
    /// acknowledged, nothing is committed and the group is rejoined: the partitions come back
    /// restored from the snapshots that landed, and their inputs are read again from the last
    /// commit, so no fact whose outputs were lost is skipped.
    async fn commit(&mut self) -> anyhow::Result<()> {
        if self.rewinding || (self.unacked.is_empty() && !self.positions_moved) {
            return Ok(());
        }
        self.publish_gauge();
        if self.await_unacked().await {
            self.commit_positions(CommitMode::Async);
            return Ok(());
        }
        metrics::counter!(wa_platform::metrics::SESSION_REWINDS).increment(1);
        tracing::error!("outputs lost; rejoining to handle the inputs since the last commit again");
        self.positions.clear();
        self.positions_moved = false;
        self.rewinding = true;
        // Every partition is revoked, and restored when it comes back.
        self.member.rejoin()
    }
}
