//! Dispatch under rebalances: two instances send 1,000 authorized messages while a third joins
//! and is SIGKILLed every few seconds (eight times), and the simulator throttles (429) so that
//! sends wait long for their pace. Every rebalance revokes partitions whose handlers are
//! waiting, retrying or calling Twilio. No request may reach the simulator twice, and every
//! request must end sent, failed or in doubt.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use e2e_tests::{Channel, BUSINESS};
use serde_json::{json, Value};
use wa_platform::topics::{OUTBOUND_AUTHORIZED, OUTBOUND_DISPATCHED};
use wa_schemas::{Event as _, OutboundAuthorized, OutboundDispatched};

const MESSAGES: usize = 1_000;
const SENDERS: usize = 20;
const CUSTOMERS: usize = 400;
/// How many times the third instance joins and is killed.
const KILLS: usize = 8;

fn authorization(run: &str, content_sid: &str, i: usize) -> OutboundAuthorized {
    let from = if i % SENDERS == 0 { BUSINESS.to_owned() } else { format!("whatsapp:+1415555{:04}", i % SENDERS) };
    let to = format!("whatsapp:+1628{run}{:05}", i % CUSTOMERS);
    e2e_tests::template_authorization(&format!("rebalance-{i}"), (&from, &to), content_sid, &i.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rebalances_while_sends_wait_never_send_a_request_twice() {
    let channel = Channel::start_without_dispatch().await;
    // WhatsApp takes 4 messages per second per sender; dispatch is set to 12 per sender (6 per
    // instance): it is throttled, halves its pace, and sends wait long for their slot. Status
    // callbacks only for failures, to keep the broker's load on what the test is about.
    channel.sim_behaviour(json!({"callback_statuses": ["failed", "undelivered"], "rate_limit_per_sender": 4})).await;
    let run = format!("{:02}", fastrand::u8(..100));
    let content_sid = channel.sim_approved_content().await;
    let authorizations: Vec<OutboundAuthorized> = (0..MESSAGES).map(|i| authorization(&run, &content_sid, i)).collect();
    channel.publish_all(&OUTBOUND_AUTHORIZED, &authorizations).await;
    let env = [
        ("DISPATCH_SENDER_RATE", "12".to_owned()),
        ("DISPATCH_INSTANCES", "2".to_owned()),
        ("DISPATCH_IN_DOUBT_AFTER_MS", "5000".to_owned()),
    ];
    let mut steady = [channel.dispatch_process(&env), channel.dispatch_process(&env)];

    let outcomes_topic = channel.topic(&OUTBOUND_DISPATCHED);
    let follower = e2e_tests::follow_from_beginning(&channel.kafka, &outcomes_topic).await;
    let mut outcomes: HashMap<String, Vec<String>> = HashMap::new();
    let (mut claims, mut releases) = (0usize, 0usize);

    // A third instance joins, works for a while, and is killed; again and again.
    let mut intruder = Some(channel.dispatch_process(&env));
    let mut kills = 0;
    let mut next_move = tokio::time::Instant::now() + Duration::from_secs(4);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
    let mut next_check = tokio::time::Instant::now();
    loop {
        if let Ok(Ok(message)) = tokio::time::timeout(Duration::from_millis(200), follower.recv()).await {
            let event = OutboundDispatched::decode(rdkafka::Message::payload(&message).unwrap_or_default()).unwrap();
            match event.outcome.as_str() {
                "sent" | "failed" | "in_doubt" => outcomes.entry(event.request_id).or_default().push(event.outcome),
                "sending" => claims += 1,
                "released" => releases += 1,
                _ => {}
            }
        }
        let now = tokio::time::Instant::now();
        if now >= next_move && kills < KILLS && outcomes.len() < MESSAGES {
            match intruder.take() {
                Some(mut child) => {
                    child.start_kill().unwrap();
                    child.wait().await.unwrap();
                    kills += 1;
                }
                None => intruder = Some(channel.dispatch_process(&env)),
            }
            next_move = now + Duration::from_secs(4);
        }
        for process in &mut steady {
            assert!(process.try_wait().unwrap().is_none(), "a steady dispatch instance exited");
        }
        if now < next_check {
            continue;
        }
        next_check = now + Duration::from_secs(2);
        if outcomes.len() == MESSAGES {
            break;
        }
        assert!(now < deadline, "{} of {MESSAGES} requests accounted for after {kills} kills", outcomes.len());
    }
    if let Some(mut child) = intruder.take() {
        child.start_kill().ok();
    }

    let messages = channel.sim_messages().await;
    let mut per_request: HashMap<String, usize> = HashMap::new();
    for id in messages.iter().filter_map(e2e_tests::sim_request_id) {
        *per_request.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = per_request.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    // An in-doubt request the simulator never received was claimed by an instance killed before
    // its call; one it received was killed after the call, and its callback may resolve it.
    let stats: Value = channel.get(twilio_sim::SERVICE, "/sim/stats").await.json().await.unwrap();
    let in_doubt: HashSet<&String> =
        outcomes.iter().filter(|(_, seen)| seen.iter().any(|o| o == "in_doubt")).map(|(id, _)| id).collect();
    let in_doubt_received = in_doubt.iter().filter(|id| per_request.contains_key(**id)).count();
    println!(
        "rebalance test: {MESSAGES} requests, {} reached the simulator once each, {} in doubt at some point \
         ({in_doubt_received} of them had reached it); {kills} kills, {claims} claims ({} beyond one per request), \
         {releases} released; {} answers were 429",
        per_request.len(),
        in_doubt.len(),
        claims.saturating_sub(MESSAGES),
        stats["rate_limited"]
    );
    assert!(stats["rate_limited"].as_u64().unwrap() > 0, "the simulator never throttled");
    assert!(kills >= 3, "the sends were over before the rebalances: {kills} kills");
    channel.stop().await;
}
