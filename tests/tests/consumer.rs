//! The platform's consumer loop against the real broker: records of one key are handled in
//! order and one at a time, different keys concurrently, every record exactly once in a run,
//! and the committed offsets reach the end of each partition once everything is done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::TopicPartitionList;
use tokio::sync::Notify;
use wa_platform::config::KafkaConfig;
use wa_platform::kafka::{ConsumerSettings, EventProducer, HandleError, Handler, Record};
use wa_platform::topics::{TopicSpec, OUTBOUND_REQUESTED};
use wa_platform::CancellationToken;

const KEYS: usize = 20;
const PER_KEY: usize = 30;

struct Recorder {
    seen: Mutex<HashMap<String, Vec<usize>>>,
    busy_keys: Mutex<Vec<String>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    handled: AtomicUsize,
    all_done: Notify,
}

impl Handler for Recorder {
    async fn handle(&self, record: &Record<'_>) -> Result<(), HandleError> {
        let key = String::from_utf8(record.key.unwrap().to_vec()).unwrap();
        {
            let mut busy = self.busy_keys.lock().unwrap();
            assert!(!busy.contains(&key), "two records of {key} handled at once");
            busy.push(key.clone());
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        // Work that waits, as a publish waits for the broker's acknowledgement.
        let sequence: usize = std::str::from_utf8(record.payload).unwrap().parse().unwrap();
        tokio::time::sleep(Duration::from_millis((sequence % 4) as u64)).await;
        self.seen.lock().unwrap().entry(key.clone()).or_default().push(sequence);
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.busy_keys.lock().unwrap().retain(|k| *k != key);
        if self.handled.fetch_add(1, Ordering::SeqCst) + 1 == KEYS * PER_KEY {
            self.all_done.notify_one();
        }
        Ok(())
    }
}

fn committed(kafka: &KafkaConfig, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer =
        wa_platform::kafka::client_config(kafka, "probe").set("group.id", kafka.group(group)).create().unwrap();
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition(topic, partition);
    }
    let committed = consumer.committed_offsets(list, Duration::from_secs(10)).unwrap();
    (0..partitions).map(|p| committed.find_partition(topic, p).unwrap().offset().to_raw().unwrap_or(-1)).collect()
}

/// Topics of their own (and a producer) for one test: returns the config, the producer and the
/// full name of the test's topic (`wa.outbound.requested.v1` under a fresh prefix).
async fn fresh_topic() -> (KafkaConfig, EventProducer, String) {
    let kafka = KafkaConfig {
        bootstrap_servers: e2e_tests::bootstrap_servers(),
        topic_prefix: format!("c{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        group_instance_id: None,
        fetch_wait: wa_platform::config::KafkaConfig::DEFAULT_FETCH_WAIT,
        security: Vec::new(),
    };
    wa_platform::kafka::ensure_topics(&kafka, &[OUTBOUND_REQUESTED, wa_platform::topics::DEAD_LETTER]).await.unwrap();
    let producer = EventProducer::new(&kafka, "consumer-test", Duration::from_secs(30)).unwrap();
    let topic = kafka.topic(&OUTBOUND_REQUESTED);
    (kafka, producer, topic)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_in_order_concurrently_once_and_committed_to_the_end() {
    let (kafka, producer, topic) = fresh_topic().await;
    let spec: TopicSpec = OUTBOUND_REQUESTED;
    for sequence in 0..PER_KEY {
        for key in 0..KEYS {
            producer
                .send_raw(&topic, Some(format!("key-{key}").as_bytes()), sequence.to_string().as_bytes())
                .await
                .unwrap();
        }
    }

    let recorder = Recorder {
        seen: Mutex::default(),
        busy_keys: Mutex::default(),
        in_flight: AtomicUsize::new(0),
        max_in_flight: AtomicUsize::new(0),
        handled: AtomicUsize::new(0),
        all_done: Notify::new(),
    };
    let settings = ConsumerSettings {
        group: "consumer-test".to_owned(),
        topics: vec![spec],
        service: "consumer-test",
        assignment: Default::default(),
        max_in_flight: wa_platform::kafka::MAX_IN_FLIGHT,
        fetch_wait: None,
    };
    let shutdown = CancellationToken::new();
    let consuming = wa_platform::kafka::run_consumer(&kafka, &settings, &producer, &recorder, &shutdown);
    let stopper = async {
        tokio::time::timeout(Duration::from_secs(120), recorder.all_done.notified())
            .await
            .expect("every record handled");
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(consuming, stopper);
    result.unwrap();

    let seen = recorder.seen.lock().unwrap();
    assert_eq!(seen.len(), KEYS);
    for (key, sequences) in seen.iter() {
        assert_eq!(*sequences, (0..PER_KEY).collect::<Vec<_>>(), "{key}: each record once, in order");
    }
    assert!(recorder.max_in_flight.load(Ordering::SeqCst) > 1, "different keys are handled concurrently");
    let committed = committed(&kafka, "consumer-test", &topic, spec.partitions);
    let total: i64 = committed.iter().map(|o| (*o).max(0)).sum();
    assert_eq!(total, (KEYS * PER_KEY) as i64, "committed offsets {committed:?} reach every partition's end");
}

/// Handles only records without a `skip` header, and counts every record it was asked about.
struct Picky {
    asked: AtomicUsize,
    handled: Mutex<Vec<usize>>,
    total: usize,
    wanted: usize,
    all_done: Notify,
}

impl Picky {
    fn check_done(&self) {
        if self.asked.load(Ordering::SeqCst) == self.total && self.handled.lock().unwrap().len() == self.wanted {
            self.all_done.notify_one();
        }
    }
}

impl Handler for Picky {
    fn wants(&self, headers: Option<&rdkafka::message::OwnedHeaders>) -> bool {
        let wanted = wa_platform::kafka::header_str(headers, "skip").is_none();
        self.asked.fetch_add(1, Ordering::SeqCst);
        self.check_done();
        wanted
    }

    async fn handle(&self, record: &Record<'_>) -> Result<(), HandleError> {
        let sequence: usize = std::str::from_utf8(record.payload).unwrap().parse().unwrap();
        self.handled.lock().unwrap().push(sequence);
        self.check_done();
        Ok(())
    }
}

/// Records a handler does not want are never handled, yet done: the committed offsets reach
/// past them to each partition's end, even when they are a partition's last records.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_a_handler_does_not_want_are_passed_by_and_committed() {
    let (kafka, producer, topic) = fresh_topic().await;
    let spec: TopicSpec = OUTBOUND_REQUESTED;
    // Every third record, and each key's last, is not the handler's.
    let unwanted = |sequence: usize| sequence % 3 == 2 || sequence == PER_KEY - 1;
    let mut expected = Vec::new();
    for sequence in 0..PER_KEY {
        for key in 0..KEYS {
            let headers = if unwanted(sequence) {
                rdkafka::message::OwnedHeaders::new()
                    .insert(rdkafka::message::Header { key: "skip", value: Some("yes") })
            } else {
                expected.push(sequence);
                rdkafka::message::OwnedHeaders::new()
            };
            let key = format!("key-{key}");
            let queued = producer
                .enqueue_record(&topic, key.as_bytes(), Some(sequence.to_string().as_bytes()), headers, None)
                .await
                .unwrap();
            queued.acknowledged().await.unwrap();
        }
    }

    let picky = Picky {
        asked: AtomicUsize::new(0),
        handled: Mutex::default(),
        total: KEYS * PER_KEY,
        wanted: expected.len(),
        all_done: Notify::new(),
    };
    let settings = ConsumerSettings {
        group: "consumer-picky".to_owned(),
        topics: vec![spec],
        service: "consumer-test",
        assignment: Default::default(),
        max_in_flight: wa_platform::kafka::MAX_IN_FLIGHT,
        fetch_wait: Some(Duration::from_millis(200)),
    };
    let shutdown = CancellationToken::new();
    let consuming = wa_platform::kafka::run_consumer(&kafka, &settings, &producer, &picky, &shutdown);
    let stopper = async {
        tokio::time::timeout(Duration::from_secs(120), picky.all_done.notified())
            .await
            .expect("every record read and every wanted one handled");
        shutdown.cancel();
    };
    let (result, ()) = tokio::join!(consuming, stopper);
    result.unwrap();

    let mut handled = picky.handled.lock().unwrap().clone();
    handled.sort_unstable();
    expected.sort_unstable();
    assert_eq!(handled, expected, "the wanted records, each once, and no other");
    let committed = committed(&kafka, "consumer-picky", &topic, spec.partitions);
    let total: i64 = committed.iter().map(|o| (*o).max(0)).sum();
    assert_eq!(total, (KEYS * PER_KEY) as i64, "committed offsets {committed:?} reach every partition's end");
}
