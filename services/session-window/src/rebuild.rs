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

use rdkafka::message::{BorrowedMessage, Message};
use uuid::Uuid;
use wa_platform::config::KafkaConfig;
pub use wa_platform::kafka::Progress;
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

/// Reads `topics` from `since` (or their beginning) to the ends they had when it started
/// ([`wa_platform::kafka::read_to_end`]). Blocking: run it on a blocking thread.
pub fn replay(
    kafka: &KafkaConfig,
    topics: &[TopicSpec],
    since: Option<i64>,
    on_record: impl FnMut(&BorrowedMessage<'_>),
    on_progress: impl FnMut(&Progress),
) -> anyhow::Result<Progress> {
    let names: Vec<String> = topics.iter().map(|spec| kafka.topic(spec)).collect();
    wa_platform::kafka::read_to_end(kafka, "session-window-rebuild", &names, since, on_record, on_progress)
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
