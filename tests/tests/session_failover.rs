//! Two session-window processes in one consumer group split the conversations; one is killed
//! (SIGKILL) while requests and customer messages stream in; the survivor restores its
//! partitions from `wa.sessions.v1`, and every verdict and every state matches what a single
//! replay of all the events computes.

use std::collections::BTreeMap;
use std::time::Duration;

use e2e_tests::{customer_message, outbound_request, unique_customer, Channel, EVENT_TIMEOUT};
use wa_platform::topics::{partition_for_key, INBOUND, MESSAGE_PARTITIONS, OUTBOUND_CHECKED, OUTBOUND_REQUESTED};
use wa_schemas::{conversation_id, InboundMessageReceived, OutboundRequested, OutboundWindowChecked, TemplateRequest};

const HOUR: i64 = 3_600_000;

struct Instance {
    child: tokio::process::Child,
    url: String,
}

fn start_instance(channel: &Channel) -> Instance {
    let port = e2e_tests::free_port();
    let child = channel.service_process(
        "session-window",
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{port}")),
            ("SESSION_TIMER_INTERVAL_MS", "100".to_owned()),
            ("RUST_LOG", std::env::var("SESSION_LOG").unwrap_or_else(|_| "warn".to_owned())),
        ],
    );
    Instance { child, url: format!("http://127.0.0.1:{port}") }
}

/// The status each instance answers for a conversation of each partition.
async fn owners(
    http: &reqwest::Client,
    instances: &[&Instance],
    probes: &BTreeMap<i32, String>,
) -> BTreeMap<i32, Vec<u16>> {
    let mut owners = BTreeMap::new();
    for (partition, conversation) in probes {
        let mut statuses = Vec::new();
        for instance in instances {
            let status = http
                .get(format!("{}/v1/conversations/{conversation}/session", instance.url))
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            statuses.push(status);
        }
        owners.insert(*partition, statuses);
    }
    owners
}

/// Waits until every partition is answered (200) by exactly one of `instances`, each of which
/// owns at least `min_each` partitions.
async fn wait_for_split(
    http: &reqwest::Client,
    instances: &[&Instance],
    probes: &BTreeMap<i32, String>,
    min_each: usize,
) -> BTreeMap<i32, Vec<u16>> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let owners = owners(http, instances, probes).await;
        let whole = owners.values().all(|statuses| statuses.iter().filter(|s| **s == 200).count() == 1);
        let shared = (0..instances.len()).all(|i| owners.values().filter(|s| s[i] == 200).count() >= min_each);
        if whole && shared {
            return owners;
        }
        assert!(tokio::time::Instant::now() < deadline, "partitions never settled: {owners:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_hands_its_conversations_to_the_survivor_with_correct_state() {
    let channel = Channel::topics_only().await;
    let http = reqwest::Client::new();
    let now = wa_platform::now_millis();

    // Open windows, closed windows (a quarter opted out), and customers who never wrote.
    let open: Vec<String> = (0..120).map(|_| unique_customer()).collect();
    let closed: Vec<String> = (0..80).map(|_| unique_customer()).collect();
    let silent: Vec<String> = (0..60).map(|_| unique_customer()).collect();
    let mut history: Vec<InboundMessageReceived> = Vec::new();
    for (i, customer) in open.iter().enumerate() {
        history.push(customer_message(customer, now - (i as i64 % 20) * HOUR, "hello"));
    }
    for (i, customer) in closed.iter().enumerate() {
        history.push(customer_message(customer, now - 30 * HOUR - i as i64, "hello"));
        if i % 4 == 0 {
            history.push(customer_message(customer, now - 29 * HOUR, "STOP"));
        }
    }
    channel.publish_all(&INBOUND, &history).await;

    let mut first = start_instance(&channel);
    let second = start_instance(&channel);
    // One known conversation per partition, to ask who owns it.
    let mut probes = BTreeMap::new();
    for customer in open.iter() {
        let id = conversation_id(e2e_tests::BUSINESS, customer);
        probes.entry(partition_for_key(id.as_bytes(), MESSAGE_PARTITIONS)).or_insert(id);
    }
    assert_eq!(probes.len(), MESSAGE_PARTITIONS as usize, "every partition has a probe");
    let split = wait_for_split(&http, &[&first, &second], &probes, 1).await;
    let killed_partitions: Vec<i32> = split.iter().filter(|(_, s)| s[0] == 200).map(|(p, _)| *p).collect();
    // Each instance points at the other for the conversations it does not own.
    for (partition, statuses) in &split {
        let (asked, owner) = if statuses[0] == 200 { (&second, &first) } else { (&first, &second) };
        let conversation = &probes[partition];
        let expected = format!("{}/v1/conversations/{conversation}/session", owner.url);
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        loop {
            let response =
                http.get(format!("{}/v1/conversations/{conversation}/session", asked.url)).send().await.unwrap();
            assert_eq!(response.status(), 421);
            let problem: serde_json::Value = response.json().await.unwrap();
            assert_eq!(problem["partition"], *partition);
            if problem["owner"] == expected.as_str() {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{problem} never named {expected}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Requests for every conversation, interleaved with new customers writing; the second
    // instance is killed after a third of them.
    let template =
        TemplateRequest { name: "order_update".into(), language: "en".into(), variables: Default::default() };
    let mut requests: Vec<OutboundRequested> = Vec::new();
    for (i, customer) in open.iter().chain(&closed).chain(&silent).enumerate() {
        requests.push(outbound_request(&format!("failover-free-{i}"), customer, Some("hi"), None));
        requests.push(outbound_request(&format!("failover-tpl-{i}"), customer, None, Some(template.clone())));
    }
    let newcomers: Vec<String> = (0..150).map(|_| unique_customer()).collect();
    let chunks = 10;
    let request_chunk = requests.len().div_ceil(chunks);
    let newcomer_chunk = newcomers.len().div_ceil(chunks);
    for chunk in 0..chunks {
        let requests =
            &requests[(chunk * request_chunk).min(requests.len())..((chunk + 1) * request_chunk).min(requests.len())];
        channel.publish_all(&OUTBOUND_REQUESTED, requests).await;
        let messages: Vec<InboundMessageReceived> = newcomers
            [(chunk * newcomer_chunk).min(newcomers.len())..((chunk + 1) * newcomer_chunk).min(newcomers.len())]
            .iter()
            .map(|customer| customer_message(customer, wa_platform::now_millis(), "new here"))
            .collect();
        channel.publish_all(&INBOUND, &messages).await;
        if chunk == 3 {
            first.child.start_kill().expect("SIGKILL");
            first.child.wait().await.expect("killed");
        }
    }

    // The survivor takes over the killed instance's partitions.
    let after = wait_for_split(&http, &[&second], &probes, MESSAGE_PARTITIONS as usize).await;
    assert!(killed_partitions.iter().all(|p| after[p] == vec![200]));

    // Every request got a verdict, and every verdict record (duplicates included, after the
    // kill some are decided twice) is what the rules give for the conversation.
    let verdicts: Vec<OutboundWindowChecked> = channel
        .await_all::<OutboundWindowChecked>(&OUTBOUND_CHECKED, requests.len(), |v| {
            v.request_id.starts_with("failover-")
        })
        .await;
    assert_eq!(verdicts.len(), requests.len());
    let all_records: Vec<OutboundWindowChecked> =
        channel.read_to_end(&OUTBOUND_CHECKED).await.iter().map(|r| r.decode()).collect();
    let opted_out: Vec<String> =
        history.iter().filter(|m| m.body == "STOP").map(|m| m.conversation_id.clone()).collect();
    for checked in &all_records {
        let template = checked.template.is_some();
        let last = history.iter().filter(|m| m.conversation_id == checked.conversation_id).map(|m| m.occurred_at).max();
        let expires = last.map(|at| at + 24 * HOUR);
        let expected_reason = match (template, expires) {
            (true, _) => None,
            (false, None) => Some("no_window"),
            (false, Some(e)) if e - 60_000 > checked.occurred_at => None,
            (false, Some(_)) => Some("window_closed"),
        };
        assert_eq!(checked.refusal_reason.as_deref(), expected_reason, "{checked:?}");
        assert_eq!(checked.allowed, expected_reason.is_none());
        assert_eq!(checked.window_expires_at, expires, "{checked:?}");
        assert_eq!(checked.opted_out, opted_out.contains(&checked.conversation_id), "{checked:?}");
    }

    // The snapshots hold what one instance replaying every event computes.
    let keywords = session_window::session::Keywords::defaults();
    let options = session_window::rebuild::Options { since: None, dry_run: true };
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let rebuilt =
            session_window::rebuild::rebuild(&channel.kafka, &keywords, Duration::from_secs(3600), &options, |_| {})
                .await
                .expect("rebuild");
        let expected = e2e_tests::rebuilt_states(&rebuilt);
        assert_eq!(expected.len(), open.len() + closed.len() + newcomers.len());
        let live = session_window::rebuild::read_snapshots(&channel.kafka).await.expect("snapshots");
        if live == expected {
            break;
        }
        let differing: Vec<_> = expected.iter().filter(|(id, state)| live.get(*id) != Some(state)).take(3).collect();
        assert!(tokio::time::Instant::now() < deadline, "snapshots never matched a single replay; e.g. {differing:#?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    drop(second);
}

/// A session-window instance whose snapshots are not acknowledged (a fault injected into its
/// producer) when a second instance joins must not commit the inputs that caused them: the
/// partitions' owners after the rebalance handle those messages again, so every conversation's
/// state lands in `wa.sessions.v1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outputs_lost_before_a_revoke_are_not_committed_and_are_redone() {
    let channel = Channel::topics_only().await;
    // One customer per partition.
    let mut customers: BTreeMap<i32, String> = BTreeMap::new();
    while customers.len() < MESSAGE_PARTITIONS as usize {
        let customer = unique_customer();
        let partition =
            partition_for_key(conversation_id(e2e_tests::BUSINESS, &customer).as_bytes(), MESSAGE_PARTITIONS);
        customers.entry(partition).or_insert(customer);
    }
    let faults = wa_platform::kafka::DeliveryFaults::default();
    let mut config = e2e_tests::session_window_config(&channel.kafka);
    // Only a revoke commits: the periodic commit would find the lost outputs first.
    config.commit_interval = Duration::from_secs(3600);
    config.delivery_faults = faults.clone();
    let first = session_window::bind(config).await.unwrap();
    let first_url = format!("http://{}", first.local_addr());
    let stop = wa_platform::CancellationToken::new();
    let first_task = tokio::spawn(first.run(stop.child_token()));
    let http = reqwest::Client::new();
    let ready = |url: String| {
        let http = http.clone();
        async move {
            let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
            while !http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
                assert!(tokio::time::Instant::now() < deadline, "{url} not ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    ready(first_url.clone()).await;

    // The first instance projects every message, but none of its snapshots is taken.
    faults.set_failing(&channel.topic(&wa_platform::topics::SESSIONS), true);
    let now = wa_platform::now_millis();
    let messages: Vec<InboundMessageReceived> =
        customers.values().map(|customer| customer_message(customer, now, "hello")).collect();
    channel.publish_all(&INBOUND, &messages).await;
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    for message in &messages {
        loop {
            let state: serde_json::Value = http
                .get(format!("{first_url}/v1/conversations/{}/session", message.conversation_id))
                .bearer_auth(e2e_tests::SESSION_TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap_or_default();
            if state["known"] == true {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "the first instance never projected {message:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    faults.set_failing(&channel.topic(&wa_platform::topics::SESSIONS), false);

    // A second instance joins: the first gives up half of the partitions.
    let second = session_window::bind(e2e_tests::session_window_config(&channel.kafka)).await.unwrap();
    let second_url = format!("http://{}", second.local_addr());
    let second_task = tokio::spawn(second.run(stop.child_token()));
    ready(second_url).await;

    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let states = session_window::rebuild::read_snapshots(&channel.kafka).await.unwrap();
        let landed = messages
            .iter()
            .filter(|m| {
                states.get(&m.conversation_id).is_some_and(|s| s.last_customer_message_at == Some(m.occurred_at))
            })
            .count();
        if landed == messages.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{landed} of {} states landed: the lost outputs' inputs were committed",
            messages.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let metrics = http.get(format!("{first_url}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("wa_session_uncommitted_revokes_total") && !l.ends_with(" 0")),
        "{metrics}"
    );
    stop.cancel();
    first_task.await.unwrap().unwrap();
    second_task.await.unwrap().unwrap();
}
