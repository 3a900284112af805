//! `session-window rebuild`: replays the message topics from their beginning (or from a
//! timestamp) and the consent facts kept forever on `wa.consent.v1` (always whole) into fresh
//! state, and rewrites `wa.sessions.v1` with it. Consent facts found in the message topics but
//! missing from `wa.consent.v1` (written before it existed) are added to it.
//!
//! Run it with the service stopped: the service restores from the rewritten snapshots when it
//! starts again and resumes its inputs from its committed offsets (facts it reads twice change
//! nothing). Notices already due when the rebuild runs are marked published, not published:
//! a rebuild does not announce windows that closed long ago.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use uuid::Uuid;
use wa_platform::config::KafkaConfig;
use wa_platform::kafka::{EventProducer, Queued};
use wa_platform::topics::{TopicSpec, CONSENT, INBOUND, OUTBOUND_DISPATCHED, SESSIONS};
use wa_schemas::Event as _;

use crate::session::Keywords;
use crate::store::PartitionStore;

/// What to rebuild.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Replay only message records at or after this time (Unix millis). Older messages are
    /// forgotten; consent (`wa.consent.v1`) is always read whole.
    pub since: Option<i64>,
    /// Compute the state but write nothing.
    pub dry_run: bool,
}

/// How far a replay has come.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Records read.
    pub events: u64,
    /// Records to read in all (the topics' ends when the replay started).
    pub total: u64,
    /// Time since the replay started.
    pub elapsed: Duration,
}

impl Progress {
    /// Records per second so far.
    pub fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Records still to read.
    pub fn lag(&self) -> u64 {
        self.total.saturating_sub(self.events)
    }
}

/// What a rebuild did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Message records replayed.
    pub events: u64,
    /// Records that were not decodable (skipped; the live service dead-letters them).
    pub undecodable: u64,
    /// Conversations in the new state.
    pub conversations: usize,
    /// Of which opted out.
    pub opted_out: usize,
    /// Of which have an open window.
    pub open_windows: usize,
    /// Snapshots written.
    pub snapshots: u64,
    /// Consent facts added to `wa.consent.v1` (found in the message topics only).
    pub consent_added: u64,
    /// Tombstones written for conversations the old snapshots had and the new state has not.
    pub tombstones: u64,
    /// Time spent replaying.
    pub replay: Duration,
    /// Time in all.
    pub elapsed: Duration,
}

/// The rebuilt state, by partition, and the summary.
pub struct Rebuilt {
    /// One store per partition of the message topics.
    pub stores: BTreeMap<i32, PartitionStore>,
    /// What was done.
    pub summary: Summary,
}

/// Reads `topics` from `since` (or their beginning) to the ends they had when it started,
/// handing every record written at or after `since` to `on_record` and reporting progress
/// about four times a second.
/// Blocking: run it on a blocking thread.
pub fn replay(
    kafka: &KafkaConfig,
    topics: &[TopicSpec],
    since: Option<i64>,
    mut on_record: impl FnMut(&BorrowedMessage<'_>),
    mut on_progress: impl FnMut(&Progress),
) -> anyhow::Result<Progress> {
    let consumer: BaseConsumer = wa_platform::kafka::client_config(kafka, "session-window-rebuild")
        .set("group.id", kafka.group("session-window-rebuild"))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("fetch.max.bytes", "52428800")
        .set("max.partition.fetch.bytes", "4194304")
        .set("queued.min.messages", "200000")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    let mut ends: HashMap<(String, i32), i64> = HashMap::new();
    let mut total = 0u64;
    for spec in topics {
        let topic = kafka.topic(spec);
        // The broker's time index only gives a place to start (tansu answers the beginning):
        // records written before `since` are skipped below.
        for (partition, (start, end)) in
            wa_platform::kafka::partition_ranges(&consumer, &topic, since)?.into_iter().enumerate()
        {
            if end > start {
                assignment.add_partition_offset(&topic, partition as i32, Offset::Offset(start))?;
                ends.insert((topic.clone(), partition as i32), end);
                total += (end - start) as u64;
            }
        }
    }
    let started = Instant::now();
    let mut progress = Progress { events: 0, total, elapsed: Duration::ZERO };
    if ends.is_empty() {
        return Ok(progress);
    }
    consumer.assign(&assignment)?;
    let mut last_report = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                progress.events += 1;
                let before_since =
                    since.is_some_and(|since| message.timestamp().to_millis().is_some_and(|at| at < since));
                if !before_since {
                    on_record(&message);
                }
                let key = (message.topic().to_owned(), message.partition());
                if ends.get(&key).is_some_and(|end| message.offset() + 1 >= *end) {
                    ends.remove(&key);
                }
            }
            Some(Err(err)) => tracing::warn!(error = %err, "replay read failed; retrying"),
            None => {}
        }
        if last_report.elapsed() >= Duration::from_millis(250) {
            progress.elapsed = started.elapsed();
            on_progress(&progress);
            last_report = Instant::now();
        }
    }
    progress.elapsed = started.elapsed();
    on_progress(&progress);
    Ok(progress)
}

/// Replays the message topics into fresh state and, unless `dry_run`, rewrites the snapshots.
pub async fn rebuild(
    kafka: &KafkaConfig,
    keywords: &Keywords,
    lead: Duration,
    options: &Options,
    on_progress: impl FnMut(&Progress) + Send + 'static,
) -> anyhow::Result<Rebuilt> {
    let started = Instant::now();
    let lead_millis = i64::try_from(lead.as_millis()).unwrap_or(i64::MAX);
    let kafka_for_replay = kafka.clone();
    let keywords = keywords.clone();
    let since = options.since;
    let (stores, progress, undecodable, missing_consent) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let inbound = kafka_for_replay.topic(&INBOUND);
        let mut stores: BTreeMap<i32, PartitionStore> = BTreeMap::new();
        let mut undecodable = 0u64;
        // Consent first, whole: it outlives the message topics and `since` does not apply.
        let mut kept_consent: HashSet<String> = HashSet::new();
        replay(
            &kafka_for_replay,
            &[CONSENT],
            None,
            |message| match crate::facts::read(
                crate::facts::Source::Consent,
                message.payload().unwrap_or_default(),
                &keywords,
            ) {
                Ok(Some(read)) => match Uuid::parse_str(&read.conversation_id) {
                    Ok(id) => {
                        if let crate::session::Fact::ConsentRecorded { consent, .. } = read.fact {
                            kept_consent
                                .insert(crate::facts::consent_record(&read.conversation_id, consent, &read).event_id);
                        }
                        stores
                            .entry(message.partition())
                            .or_insert_with(|| PartitionStore::new(lead_millis))
                            .apply(id, read.fact);
                    }
                    Err(_) => undecodable += 1,
                },
                Ok(None) => {}
                Err(_) => undecodable += 1,
            },
            |_| {},
        )?;
        let mut missing_consent: Vec<(i32, wa_schemas::ConsentChanged)> = Vec::new();
        let progress = replay(
            &kafka_for_replay,
            &[INBOUND, OUTBOUND_DISPATCHED],
            since,
            |message| {
                let payload = message.payload().unwrap_or_default();
                let source = if message.topic() == inbound {
                    crate::facts::Source::Inbound
                } else {
                    crate::facts::Source::Dispatched
                };
                match crate::facts::read(source, payload, &keywords) {
                    Ok(Some(read)) => match Uuid::parse_str(&read.conversation_id) {
                        Ok(id) => {
                            let (change, _) = stores
                                .entry(message.partition())
                                .or_insert_with(|| PartitionStore::new(lead_millis))
                                .apply(id, read.fact);
                            if let Some(consent) = change.consent_fact {
                                let record = crate::facts::consent_record(&read.conversation_id, consent, &read);
                                if !kept_consent.contains(&record.event_id) {
                                    missing_consent.push((message.partition(), record));
                                }
                            }
                        }
                        Err(_) => undecodable += 1,
                    },
                    Ok(None) => {}
                    Err(_) => undecodable += 1,
                }
            },
            on_progress,
        )?;
        Ok((stores, progress, undecodable, missing_consent))
    })
    .await??;
    let replay_time = progress.elapsed;
    let now = wa_platform::now_millis();
    let mut stores = stores;
    for store in stores.values_mut() {
        store.settle(now);
    }
    let mut summary = Summary {
        events: progress.events,
        undecodable,
        replay: replay_time,
        conversations: stores.values().map(PartitionStore::len).sum(),
        opted_out: stores.values().flat_map(|s| s.iter()).filter(|(_, s)| s.opted_out()).count(),
        open_windows: stores
            .values()
            .flat_map(|s| s.iter())
            .filter(|(_, s)| s.window_expires_at().is_some_and(|e| e > now))
            .count(),
        ..Summary::default()
    };
    if !options.dry_run {
        let (snapshots, tombstones) = rewrite(kafka, &mut stores).await?;
        summary.snapshots = snapshots;
        summary.tombstones = tombstones;
        summary.consent_added = add_consent(kafka, &missing_consent).await?;
    }
    summary.elapsed = started.elapsed();
    Ok(Rebuilt { stores, summary })
}

/// Writes consent facts the message topics hold but `wa.consent.v1` does not.
async fn add_consent(kafka: &KafkaConfig, missing: &[(i32, wa_schemas::ConsentChanged)]) -> anyhow::Result<u64> {
    if missing.is_empty() {
        return Ok(0);
    }
    let producer = EventProducer::new(kafka, "wachannel/session-window-rebuild", wa_platform::kafka::DELIVERY_TIMEOUT)?;
    let mut unacked = Vec::with_capacity(missing.len());
    for (partition, record) in missing {
        unacked.push(producer.enqueue(&CONSENT, record, Some(*partition)).await?);
    }
    for queued in unacked {
        queued.acknowledged().await?;
    }
    Ok(missing.len() as u64)
}

/// Writes every session to its partition of `wa.sessions.v1`, and tombstones for the
/// conversations the topic holds that the new state does not.
async fn rewrite(kafka: &KafkaConfig, stores: &mut BTreeMap<i32, PartitionStore>) -> anyhow::Result<(u64, u64)> {
    let kafka_for_keys = kafka.clone();
    let old_keys = tokio::task::spawn_blocking(move || -> anyhow::Result<HashMap<i32, HashSet<Vec<u8>>>> {
        let mut keys: HashMap<i32, HashSet<Vec<u8>>> = HashMap::new();
        replay(
            &kafka_for_keys,
            &[SESSIONS],
            None,
            |message| {
                if let Some(key) = message.key() {
                    let set = keys.entry(message.partition()).or_default();
                    if message.payload().is_none_or(<[u8]>::is_empty) {
                        set.remove(key);
                    } else {
                        set.insert(key.to_vec());
                    }
                }
            },
            |_| {},
        )?;
        Ok(keys)
    })
    .await??;
    let producer = EventProducer::new(kafka, "wachannel/session-window-rebuild", wa_platform::kafka::DELIVERY_TIMEOUT)?;
    let topic = kafka.topic(&SESSIONS);
    let mut unacked: Vec<Queued> = Vec::new();
    let (mut snapshots, mut tombstones) = (0u64, 0u64);
    for (partition, store) in stores.iter() {
        let mut stale = old_keys.get(partition).cloned().unwrap_or_default();
        for (id, session) in store.iter() {
            let state = crate::store::snapshot(id, session);
            stale.remove(state.conversation_id.as_bytes());
            unacked.push(producer.enqueue(&SESSIONS, &state, Some(*partition)).await?);
            snapshots += 1;
            if unacked.len() >= 50_000 {
                for queued in unacked.drain(..) {
                    queued.acknowledged().await?;
                }
            }
        }
        for key in stale {
            let headers = rdkafka::message::OwnedHeaders::new();
            unacked.push(producer.enqueue_record(&topic, &key, None, headers, Some(*partition)).await?);
            tombstones += 1;
        }
    }
    // Partitions whose conversations all went away.
    for (partition, keys) in &old_keys {
        if stores.contains_key(partition) {
            continue;
        }
        for key in keys {
            let headers = rdkafka::message::OwnedHeaders::new();
            unacked.push(producer.enqueue_record(&topic, key, None, headers, Some(*partition)).await?);
            tombstones += 1;
        }
    }
    for queued in unacked {
        queued.acknowledged().await?;
    }
    for store in stores.values_mut() {
        let _ = store.take_dirty();
    }
    Ok((snapshots, tombstones))
}

/// Reads the latest snapshot of every conversation in `wa.sessions.v1` (tombstones remove).
pub async fn read_snapshots(kafka: &KafkaConfig) -> anyhow::Result<BTreeMap<String, wa_schemas::SessionState>> {
    let kafka = kafka.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let mut states = BTreeMap::new();
        replay(
            &kafka,
            &[SESSIONS],
            None,
            |message| {
                let Some(key) = message.key().and_then(|k| std::str::from_utf8(k).ok()) else { return };
                match message.payload() {
                    None | Some([]) => {
                        states.remove(key);
                    }
                    Some(payload) => {
                        if let Ok(state) = wa_schemas::SessionState::decode(payload) {
                            states.insert(key.to_owned(), state);
                        }
                    }
                }
            },
            |_| {},
        )?;
        Ok(states)
    })
    .await?
}
