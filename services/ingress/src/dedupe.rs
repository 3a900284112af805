//! Publishing each webhook once, across retries, restarts and instances.
//!
//! Every event id is derived from what identifies the request (`MessageSid`, or the CRM's
//! `request_id`), so "was this published?" is "is this event id on the topic?". Each ingress
//! instance follows the topic it publishes to, from `horizon` ago, reading only the `ce_id`
//! header of each record (no decoding), and remembers the ids it saw ([`SeenIds`]). A restarted
//! or new instance replays that horizon before it reports ready, so it knows what the others
//! published. Within one instance, attempts for one id share one publish ([`InFlight`]): an
//! attempt stays under way until the broker answered it, even when the request that started it
//! was answered 503 at the publish timeout, and a retry waits for that publish instead of making
//! a second one (a late acknowledgement would otherwise put the webhook on the topic twice). An
//! attempt the broker refused leaves nothing behind, so the retry publishes.
//!
//! What this cannot catch: two instances receiving the same id within the time it takes a
//! publish to come back through their followers (milliseconds on Apache Kafka, up to half a
//! second on tansu, whose fetches wait out [`crate::BACKGROUND_FETCH_WAIT`]). Consumers stay
//! idempotent on event ids for that case (decision 4).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The answer an attempt under way will give: `None` until the broker answered.
type Pending<E> = tokio::sync::watch::Receiver<Option<Result<(), E>>>;

/// Attempts under way in this process, one per id. An attempt stays here until the broker
/// answered it, however long the HTTP request that started it waited: a retry of an attempt
/// answered 503 at the publish timeout waits for that same publish instead of making another.
struct InFlight<E> {
    attempts: Mutex<HashMap<u128, Pending<E>>>,
}

impl<E> Default for InFlight<E> {
    fn default() -> Self {
        Self { attempts: Mutex::default() }
    }
}

/// Removes an attempt from those under way when its task ends, answered or not.
struct Leaves<E> {
    id: u128,
    in_flight: Arc<InFlight<E>>,
}

impl<E> Drop for Leaves<E> {
    fn drop(&mut self) {
        self.in_flight.attempts.lock().expect("in-flight lock").remove(&self.id);
    }
}

/// A publish started and not yet answered: it owns everything it needs, so it can outlive the
/// request that started it.
pub(crate) type Started<E> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), E>> + Send>>;

/// Publishes each event id at most once; see the module docs.
pub(crate) struct Deduplicator<E> {
    seen: Arc<SeenIds>,
    in_flight: Arc<InFlight<E>>,
}

impl<E: Clone + Send + Sync + 'static> Deduplicator<E> {
    pub(crate) fn new(horizon: Duration, capacity: usize) -> Self {
        Self { seen: Arc::new(SeenIds::new(horizon, capacity)), in_flight: Arc::default() }
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
        // Off the requests' path (this instance remembers its own publishes as they are
        // acknowledged): fewer, larger fetches cost the broker less.
        let kafka = KafkaConfig { fetch_wait: kafka.fetch_wait.max(crate::BACKGROUND_FETCH_WAIT), ..kafka.clone() };
        let follower = TopicFollower::start_since(&kafka, spec, "ingress-dedupe", Some(since)).await?;
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

    /// Publishes `event_id` unless it was published already (by any instance within the
    /// horizon) or an attempt for it is under way in this process, and waits at most `wait` for
    /// the broker's answer (`timed_out` after that). `start` begins the publish; it runs to the
    /// broker's answer even when this call gave up waiting, and a later call for the same id
    /// waits for it rather than publishing again. When an earlier attempt failed, this call
    /// publishes.
    pub(crate) async fn publish_once<F>(
        &self,
        event_id: &str,
        wait: Duration,
        timed_out: E,
        start: F,
    ) -> Result<Outcome, E>
    where
        F: FnOnce() -> Result<Started<E>, E>,
    {
        let id =
            parse_id(event_id).unwrap_or_else(|| Uuid::new_v5(&Uuid::NAMESPACE_OID, event_id.as_bytes()).as_u128());
        let deadline = tokio::time::Instant::now() + wait;
        let mut start = Some(start);
        loop {
            if self.seen.contains(id) {
                return Ok(Outcome::Duplicate);
            }
            let (mut pending, ours) = {
                let mut attempts = self.in_flight.attempts.lock().expect("in-flight lock");
                match attempts.get(&id) {
                    Some(pending) => (pending.clone(), false),
                    None => {
                        // The first attempt, or the one after an earlier attempt failed.
                        let Some(start) = start.take() else { return Err(timed_out) };
                        let publish = start()?;
                        let (answer, pending) = tokio::sync::watch::channel(None);
                        attempts.insert(id, pending.clone());
                        let seen = self.seen.clone();
                        let leaves = Leaves { id, in_flight: self.in_flight.clone() };
                        tokio::spawn(async move {
                            let result = publish.await;
                            if result.is_ok() {
                                // Seen before it leaves the attempts: a caller finds one or the other.
                                seen.insert(id, wa_platform::now_millis(), wa_platform::now_millis());
                            }
                            drop(leaves);
                            answer.send_replace(Some(result));
                        });
                        (pending, true)
                    }
                }
            };
            let answered = match tokio::time::timeout_at(deadline, pending.wait_for(Option::is_some)).await {
                Err(_) => return Err(timed_out),
                Ok(Ok(answer)) => answer.clone(),
                // The attempt's task ended without answering (a panic; it left the attempts).
                Ok(Err(_)) => None,
            };
            match answered {
                Some(Ok(())) => return Ok(if ours { Outcome::Published } else { Outcome::Duplicate }),
                Some(Err(error)) if ours => return Err(error),
                None if ours => return Err(timed_out),
                // Another request's attempt failed: this one publishes.
                Some(Err(_)) | None => tokio::task::yield_now().await,
            }
        }
    }
}

fn parse_id(text: &str) -> Option<u128> {
    Uuid::parse_str(text).ok().map(|id| id.as_u128())
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(5);
    const TIMED_OUT: &str = "timed out";

    fn answers(result: Result<(), &'static str>) -> Result<Started<&'static str>, &'static str> {
        Ok(Box::pin(async move { result }))
    }

    /// A publish the test answers for the broker, counting how often one was started.
    fn held(starts: &Arc<std::sync::atomic::AtomicUsize>) -> (tokio::sync::oneshot::Sender<()>, Started<&'static str>) {
        starts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (acknowledge, acknowledged) = tokio::sync::oneshot::channel::<()>();
        (acknowledge, Box::pin(async move { acknowledged.await.map_err(|_| "broker refused") }))
    }

    #[tokio::test]
    async fn publishes_once_per_id_and_again_after_a_failure() {
        let dedupe = Deduplicator::new(Duration::from_secs(60), 10);
        let id = Uuid::new_v4().to_string();
        let fail = dedupe.publish_once(&id, WAIT, TIMED_OUT, || answers(Err("broker down"))).await;
        assert_eq!(fail, Err("broker down"));
        assert_eq!(dedupe.publish_once(&id, WAIT, TIMED_OUT, || answers(Ok(()))).await, Ok(Outcome::Published));
        assert_eq!(dedupe.publish_once(&id, WAIT, TIMED_OUT, || answers(Ok(()))).await, Ok(Outcome::Duplicate));
    }

    #[tokio::test]
    async fn concurrent_attempts_publish_once() {
        let dedupe = Arc::new(Deduplicator::new(Duration::from_secs(60), 10));
        let id = Uuid::new_v4().to_string();
        let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (acknowledge, publish) = held(&starts);
        let first = {
            let (dedupe, id) = (dedupe.clone(), id.clone());
            tokio::spawn(async move { dedupe.publish_once(&id, WAIT, TIMED_OUT, || Ok(publish)).await })
        };
        while dedupe.in_flight.attempts.lock().unwrap().is_empty() {
            tokio::task::yield_now().await;
        }
        let second = {
            let (dedupe, id, starts) = (dedupe.clone(), id.clone(), starts.clone());
            tokio::spawn(async move { dedupe.publish_once(&id, WAIT, TIMED_OUT, || Ok(held(&starts).1)).await })
        };
        tokio::task::yield_now().await;
        acknowledge.send(()).unwrap();
        let outcomes = [first.await.unwrap().unwrap(), second.await.unwrap().unwrap()];
        assert_eq!(outcomes, [Outcome::Published, Outcome::Duplicate]);
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 1, "one publish for both");
    }

    /// The broker acknowledges the first attempt only after its request was answered 503 and
    /// the sender retried: the retries wait for that publish instead of making a second one.
    #[tokio::test]
    async fn a_retry_waits_for_the_attempt_that_timed_out_instead_of_publishing_again() {
        const SHORT: Duration = Duration::from_millis(20);
        let dedupe = Arc::new(Deduplicator::new(Duration::from_secs(60), 10));
        let id = Uuid::new_v4().to_string();
        let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (acknowledge, publish) = held(&starts);
        let first = dedupe.publish_once(&id, SHORT, TIMED_OUT, || Ok(publish)).await;
        assert_eq!(first, Err(TIMED_OUT), "answered 503 at the publish timeout");

        let retry = dedupe.publish_once(&id, SHORT, TIMED_OUT, || Ok(held(&starts).1)).await;
        assert_eq!(retry, Err(TIMED_OUT), "still unacknowledged: 503 again, and no second publish");

        let retry = {
            let (dedupe, id, starts) = (dedupe.clone(), id.clone(), starts.clone());
            tokio::spawn(async move { dedupe.publish_once(&id, WAIT, TIMED_OUT, || Ok(held(&starts).1)).await })
        };
        acknowledge.send(()).unwrap();
        assert_eq!(retry.await.unwrap(), Ok(Outcome::Duplicate), "the first attempt landed: 200");
        assert_eq!(starts.load(std::sync::atomic::Ordering::SeqCst), 1, "the retries started no publish");
    }

    /// An attempt the broker refused after its request gave up waiting leaves nothing behind:
    /// the retry publishes, whether it was waiting for that attempt or came after it.
    #[tokio::test]
    async fn a_retry_publishes_when_the_attempt_before_it_failed() {
        let dedupe = Arc::new(Deduplicator::new(Duration::from_secs(60), 10));
        let id = Uuid::new_v4().to_string();
        let starts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (refuse, publish) = held(&starts);
        let first = dedupe.publish_once(&id, Duration::from_millis(20), TIMED_OUT, || Ok(publish)).await;
        assert_eq!(first, Err(TIMED_OUT));
        let retry = {
            let (dedupe, id) = (dedupe.clone(), id.clone());
            tokio::spawn(async move { dedupe.publish_once(&id, WAIT, TIMED_OUT, || answers(Ok(()))).await })
        };
        drop(refuse);
        assert_eq!(retry.await.unwrap(), Ok(Outcome::Published));
        assert!(dedupe.in_flight.attempts.lock().unwrap().is_empty(), "nothing left under way");
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
