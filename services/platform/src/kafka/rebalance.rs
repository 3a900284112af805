//! Rebalances that wait for the work in flight: a revoke is not completed inside librdkafka's
//! rebalance callback (which must return quickly and cannot await anything) but handed to the
//! consumer loop, which drains what it is doing with the revoked partitions, commits what is
//! durable, and only then gives them up ([`complete_revoke`]). Until then librdkafka holds the
//! group's rebalance (it heartbeats but does not rejoin), so the next owner cannot start on a
//! partition before its previous owner has finished with it.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaResult;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio::sync::mpsc;

/// A partition of a topic, by full topic name.
pub type TopicPartition = (String, i32);

/// The partitions a consumer loop holds now, for the tasks beside it (shared; cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Assignment(Arc<RwLock<HashSet<TopicPartition>>>);

impl Assignment {
    /// Whether `partition` of `topic` (the full name) is held.
    pub fn contains(&self, topic: &str, partition: i32) -> bool {
        self.0.read().expect("assignment lock").contains(&(topic.to_owned(), partition))
    }

    pub(crate) fn add(&self, partitions: &[TopicPartition]) {
        self.0.write().expect("assignment lock").extend(partitions.iter().cloned());
    }

    pub(crate) fn remove(&self, partitions: &[TopicPartition]) {
        let mut held = self.0.write().expect("assignment lock");
        for partition in partitions {
            held.remove(partition);
        }
    }
}

/// What a rebalance asks of the consumer loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceEvent {
    /// These partitions are now this member's (already assigned).
    Assigned(Vec<TopicPartition>),
    /// These partitions are being taken away: drain, commit, then [`complete_revoke`].
    Revoked(Vec<TopicPartition>),
}

/// The consumer context of a group member whose revokes are completed by its loop.
pub struct DeferredRevoke {
    events: mpsc::UnboundedSender<RebalanceEvent>,
    /// The consumer group (its full name), the label of the lag it reports.
    group: String,
}

impl DeferredRevoke {
    /// A context for a member of `group` (its full name), and the receiver its loop reads
    /// rebalances from.
    pub fn new(group: &str) -> (Self, mpsc::UnboundedReceiver<RebalanceEvent>) {
        let (events, receiver) = mpsc::unbounded_channel();
        (Self { events, group: group.to_owned() }, receiver)
    }
}

fn partitions(list: &TopicPartitionList) -> Vec<TopicPartition> {
    let mut partitions: Vec<TopicPartition> =
        list.elements().iter().map(|e| (e.topic().to_owned(), e.partition())).collect();
    partitions.sort();
    partitions.dedup();
    partitions
}

impl ClientContext for DeferredRevoke {
    /// librdkafka's statistics (every `statistics.interval.ms`): each assigned partition's lag,
    /// the high watermark less the committed offset, as `wa_consumer_lag`.
    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in statistics.topics {
            for (partition, stats) in stats.partitions {
                // -1: unknown (not assigned here, or nothing committed yet); the internal
                // partition -1 is librdkafka's own.
                if partition >= 0 && stats.consumer_lag >= 0 {
                    metrics::gauge!(
                        crate::metrics::CONSUMER_LAG,
                        "group" => self.group.clone(),
                        "topic" => topic.clone(),
                        "partition" => partition.to_string()
                    )
                    .set(stats.consumer_lag as f64);
                }
            }
        }
    }
}

impl ConsumerContext for DeferredRevoke {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let assigned = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(error) = assigned {
                    tracing::error!(error = %error, "cannot take the assigned partitions");
                }
                let partitions = partitions(tpl);
                tracing::info!(partitions = partitions.len(), "partitions assigned");
                let _ = self.events.send(RebalanceEvent::Assigned(partitions));
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let partitions = partitions(tpl);
                tracing::info!(partitions = partitions.len(), "partitions revoked; draining before giving them up");
                if self.events.send(RebalanceEvent::Revoked(partitions)).is_err() {
                    // The loop is gone: nothing is in flight, give them up at once.
                    let _ = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                }
            }
            _ => {
                tracing::error!(error = ?err, "rebalance failed; giving up the assignment");
                let _ = consumer.unassign();
            }
        }
    }
}

/// Gives up revoked partitions once the loop is done with them: librdkafka then lets the group
/// rebalance go on. A loop drops its receiver before it drops the consumer, so the revoke that
/// closing the consumer causes is completed at once.
pub fn complete_revoke<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    revoked: &[TopicPartition],
) -> KafkaResult<()> {
    if matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
        let mut list = TopicPartitionList::new();
        for (topic, partition) in revoked {
            list.add_partition(topic, *partition);
        }
        consumer.incremental_unassign(&list)
    } else {
        consumer.unassign()
    }
}

/// A deliberate rejoin happens at most this often.
const REJOIN_AT_MOST_EVERY: Duration = Duration::from_secs(5);
/// A member assigned nothing rejoins after this long: longer than a dynamic member's session
/// timeout (10 s), so a dead member that kept the partitions has been dropped by then.
const EMPTY_REJOIN_AFTER: Duration = Duration::from_secs(15);
/// ...and, while it keeps being assigned nothing, at most this often.
const EMPTY_REJOIN_EVERY: Duration = Duration::from_secs(30);

/// Tells when a rebalance handed back exactly the partitions it just took: what tansu 0.6 does
/// when a member dies without leaving (it keeps the generation, and the survivors' SyncGroup
/// returns their old assignments), leaving the dead member's partitions unowned. A member that
/// sees it rejoins once, as a new member, so the group is assigned afresh (decision 30). On
/// Apache Kafka such no-op rebalances are rare, and the rejoin costs one more rebalance. Rejoins
/// are spaced at least 5 s apart, so two members cannot keep making each other rejoin; one due
/// sooner is put off, not dropped, and a rebalance in between makes it moot.
///
/// A member assigned nothing rejoins too, 15 s later and then every 30 s while it stays empty:
/// tansu 0.6 can leave a group whose leader died with every partition on the dead member and
/// nothing for the live ones, and no rebalance follows by itself (found by the chaos run,
/// decision 41). A member that is empty because the group has more members than partitions
/// costs the group one rebalance every 30 s.
#[derive(Debug, Default)]
pub struct StaleAssignments {
    last_revoked: Vec<TopicPartition>,
    last_rejoin: Option<Instant>,
    due: Option<Instant>,
}

impl StaleAssignments {
    /// Records a revoke (a rejoin that was due is moot: the group is rebalancing).
    pub fn revoked(&mut self, partitions: &[TopicPartition]) {
        self.last_revoked = partitions.to_vec();
        self.last_revoked.sort();
        self.due = None;
    }

    /// Records an assignment; a stale one makes a rejoin due (at once, or once 5 s have passed
    /// since the last).
    pub fn assigned(&mut self, assigned: &[TopicPartition], now: Instant) {
        let mut assigned = assigned.to_vec();
        assigned.sort();
        let stale = !assigned.is_empty() && assigned == self.last_revoked;
        self.last_revoked.clear();
        if stale {
            self.due = Some(self.last_rejoin.map_or(now, |at| (at + REJOIN_AT_MOST_EVERY).max(now)));
        } else if assigned.is_empty() {
            let earliest = now + EMPTY_REJOIN_AFTER;
            self.due = Some(self.last_rejoin.map_or(earliest, |at| (at + EMPTY_REJOIN_EVERY).max(earliest)));
        }
    }

    /// When a rejoin is due, if one is.
    pub fn due(&self) -> Option<Instant> {
        self.due
    }

    /// Whether a rejoin is due at `now`; if so, it is recorded as made.
    pub fn take_due(&mut self, now: Instant) -> bool {
        if self.due.is_some_and(|due| due <= now) {
            self.rejoined(now);
            return true;
        }
        false
    }

    /// Records a rejoin (made for this or another reason).
    pub fn rejoined(&mut self, now: Instant) {
        self.due = None;
        self.last_rejoin = Some(now);
        metrics::counter!(crate::metrics::CONSUMER_GROUP_REJOINS).increment(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partitions(numbers: &[i32]) -> Vec<TopicPartition> {
        numbers.iter().map(|p| ("t".to_owned(), *p)).collect()
    }

    #[test]
    fn the_same_partitions_handed_back_make_a_rejoin_due_spaced_and_moot_after_a_rebalance() {
        let start = Instant::now();
        let mut stale = StaleAssignments::default();
        stale.assigned(&partitions(&[0]), start);
        assert_eq!(stale.due(), None, "a first assignment");
        stale.revoked(&partitions(&[0, 1, 2]));
        stale.assigned(&partitions(&[0, 1]), start);
        assert_eq!(stale.due(), None, "a real change");
        stale.revoked(&partitions(&[0, 1]));
        stale.assigned(&partitions(&[1, 0]), start);
        assert!(stale.take_due(start), "handed back what it took: rejoin at once");
        stale.revoked(&partitions(&[0, 1]));
        stale.assigned(&partitions(&[0, 1]), start + Duration::from_secs(1));
        assert_eq!(stale.due(), Some(start + REJOIN_AT_MOST_EVERY), "put off, not dropped");
        assert!(!stale.take_due(start + Duration::from_secs(2)));
        assert!(stale.take_due(start + REJOIN_AT_MOST_EVERY));
        stale.revoked(&partitions(&[0, 1]));
        stale.assigned(&partitions(&[0, 1]), start + Duration::from_secs(6));
        stale.revoked(&partitions(&[0, 1]));
        assert_eq!(stale.due(), None, "a rebalance made it moot");
    }

    #[test]
    fn a_member_assigned_nothing_rejoins_after_a_session_timeout_and_then_now_and_again() {
        let start = Instant::now();
        let mut stale = StaleAssignments::default();
        stale.assigned(&[], start);
        assert_eq!(stale.due(), Some(start + EMPTY_REJOIN_AFTER));
        assert!(!stale.take_due(start + Duration::from_secs(1)));
        let rejoined_at = start + EMPTY_REJOIN_AFTER;
        assert!(stale.take_due(rejoined_at));
        stale.revoked(&[]);
        stale.assigned(&[], rejoined_at + Duration::from_secs(1));
        assert_eq!(stale.due(), Some(rejoined_at + EMPTY_REJOIN_EVERY), "spaced while it stays empty");
        stale.revoked(&[]);
        stale.assigned(&partitions(&[0]), rejoined_at + Duration::from_secs(2));
        assert_eq!(stale.due(), None, "partitions at last: nothing due");
    }
}
