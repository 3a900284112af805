//! Publishing each webhook once, across retries, restarts and instances.
//!
//! Every event id is derived from what identifies the request (`MessageSid`, or the CRM's
//! `request_id`), so "was this published?" is "is this event id on the topic?". Each ingress
//! instance follows the topic it publishes to, from `horizon` ago, reading only the `ce_id`
//! header of each record (no decoding), and remembers the ids it saw ([`SeenIds`]). A restarted
//! or new instance replays that horizon before it reports ready, so it knows what the others
//! published. Within one instance, concurrent attempts for one id wait for each other
//! ([`InFlight`]), and an attempt whose publish failed leaves nothing behind, so the retry
//! publishes.
//!
//! What this cannot catch: two instances receiving the same id within the few milliseconds it
//! takes a publish to come back through their followers. Consumers stay idempotent on event ids
//! for that case (decision 4).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use uuid::Uuid;
use wa_platform::config::KafkaConfig;
use wa_platform::kafka::{header_str, TopicFollower};
use wa_platform::topics::TopicSpec;
use wa_platform::CancellationToken;

/// Whether publishing happened now or had happened before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Published,
    Duplicate,
}

/// Event ids seen on a topic within the horizon, oldest first out.
pub(crate) struct SeenIds {
    horizon_ms: i64,
    capacity: usize,
    inner: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    ids: HashMap<u128, i64>,
    order: VecDeque<(i64, u128)>,
}

impl SeenIds {
    pub(crate) fn new(horizon: Duration, capacity: usize) -> Self {
        Self {
            horizon_ms: i64::try_from(horizon.as_millis()).unwrap_or(i64::MAX),
            capacity: capacity.max(1),
            inner: Mutex::default(),
        }
    }

    /// Records `id` as published at `at` (Unix millis), forgetting ids older than the horizon
    /// (measured from `now`) and the oldest beyond capacity.
    pub(crate) fn insert(&self, id: u128, at: i64, now: i64) {
        let mut seen = self.inner.lock().expect("seen ids lock");
        if seen.ids.insert(id, at).is_none() {
            seen.order.push_back((at, id));
        }
        let oldest_kept = now.saturating_sub(self.horizon_ms);
        while let Some(&(at, id)) = seen.order.front() {
            if at >= oldest_kept && seen.order.len() <= self.capacity {
                break;
            }
            seen.order.pop_front();
            if seen.ids.get(&id) == Some(&at) {
                seen.ids.remove(&id);
            }
        }
    }

    pub(crate) fn contains(&self, id: u128) -> bool {
        self.inner.lock().expect("seen ids lock").ids.contains_key(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.inner.lock().expect("seen ids lock").ids.len()
    }
}

/// Attempts under way in this process, one cell per id.
#[derive(Default)]
struct InFlight {
    cells: Mutex<HashMap<u128, Arc<OnceCell<()>>>>,
}

/// Publishes each event id at most once; see the module docs.
pub(crate) struct Deduplicator {
    seen: Arc<SeenIds>,
    in_flight: InFlight,
}

impl Deduplicator {
    pub(crate) fn new(horizon: Duration, capacity: usize) -> Self {
        Self { seen: Arc::new(SeenIds::new(horizon, capacity)), in_flight: InFlight::default() }
    }

    /// Follows `spec` from the horizon on until `stop`; returns once the replay caught up, with
    /// the follower left running in a task.
    pub(crate) async fn follow(
        self: &Arc<Self>,
        kafka: &KafkaConfig,
        spec: &TopicSpec,
        stop: &CancellationToken,
    ) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
        let since = wa_platform::now_millis().saturating_sub(self.seen.horizon_ms);
        let follower = TopicFollower::start_since(kafka, spec, "ingress-dedupe", Some(since)).await?;
        let seen = self.seen.clone();
        let running = follower.clone();
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            running
                .run(stopped, |record| {
                    let at = rdkafka::Message::timestamp(record).to_millis().unwrap_or_else(wa_platform::now_millis);
                    if let Some(id) = header_str(rdkafka::Message::headers(record), "ce_id").and_then(parse_id) {
                        seen.insert(id, at, wa_platform::now_millis());
                    }
                })
                .await
        });
        follower.wait_caught_up(stop).await;
        tracing::info!(topic = %follower.topic(), remembered = self.seen.len(), "dedupe replay caught up");
        Ok(task)
    }

    /// Runs `publish` unless `event_id` was published already (by any instance within the
    /// horizon); concurrent calls for one id in this process run it at most once at a time.
    pub(crate) async fn publish_once<F, Fut, E>(&self, event_id: &str, publish: F) -> Result<Outcome, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let id =
            parse_id(event_id).unwrap_or_else(|| Uuid::new_v5(&Uuid::NAMESPACE_OID, event_id.as_bytes()).as_u128());
        if self.seen.contains(id) {
            return Ok(Outcome::Duplicate);
        }
        let cell = self.in_flight.cells.lock().expect("in-flight lock").entry(id).or_default().clone();
        let mut ran = false;
        let result = cell
            .get_or_try_init(|| {
                ran = true;
                publish()
            })
            .await
            .map(|_| ());
        if ran || result.is_ok() {
            // Published (or failed) here: from now on the seen ids answer for this id.
            if result.is_ok() {
                self.seen.insert(id, wa_platform::now_millis(), wa_platform::now_millis());
            }
            self.in_flight.cells.lock().expect("in-flight lock").remove(&id);
        }
        result?;
        Ok(if ran { Outcome::Published } else { Outcome::Duplicate })
    }
}

fn parse_id(text: &str) -> Option<u128> {
    Uuid::parse_str(text).ok().map(|id| id.as_u128())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn publishes_once_per_id_and_again_after_a_failure() {
        let dedupe = Deduplicator::new(Duration::from_secs(60), 10);
        let id = Uuid::new_v4().to_string();
        let fail = dedupe.publish_once(&id, || async { Err::<(), _>("broker down") }).await;
        assert_eq!(fail, Err("broker down"));
        assert_eq!(dedupe.publish_once(&id, || async { Ok::<_, ()>(()) }).await, Ok(Outcome::Published));
        assert_eq!(dedupe.publish_once(&id, || async { Ok::<_, ()>(()) }).await, Ok(Outcome::Duplicate));
    }

    #[tokio::test]
    async fn concurrent_attempts_publish_once() {
        let dedupe = Arc::new(Deduplicator::new(Duration::from_secs(60), 10));
        let id = Uuid::new_v4().to_string();
        let (release, wait) = tokio::sync::oneshot::channel::<()>();
        let first = {
            let dedupe = dedupe.clone();
            let id = id.clone();
            tokio::spawn(async move {
                dedupe
                    .publish_once(&id, || async {
                        wait.await.ok();
                        Ok::<_, ()>(())
                    })
                    .await
            })
        };
        tokio::task::yield_now().await;
        let second = {
            let dedupe = dedupe.clone();
            let id = id.clone();
            tokio::spawn(async move { dedupe.publish_once(&id, || async { Ok::<_, ()>(()) }).await })
        };
        release.send(()).unwrap();
        let outcomes = [first.await.unwrap().unwrap(), second.await.unwrap().unwrap()];
        assert_eq!(outcomes.iter().filter(|o| **o == Outcome::Published).count(), 1, "{outcomes:?}");
    }

    #[test]
    fn ids_older_than_the_horizon_or_beyond_capacity_are_forgotten() {
        let seen = SeenIds::new(Duration::from_millis(1_000), 3);
        seen.insert(1, 0, 500);
        seen.insert(2, 600, 1_500);
        assert!(!seen.contains(1), "older than the horizon");
        assert!(seen.contains(2));
        for id in 3..=5 {
            seen.insert(id, 1_000, 1_500);
        }
        assert!(!seen.contains(2), "oldest beyond capacity");
        assert_eq!(seen.len(), 3);
    }
}
