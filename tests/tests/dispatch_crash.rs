//! The crash test: 2,000 authorized messages; outbound-dispatch, a separate process, is killed
//! with SIGKILL several times while sending and started again. The simulator must see each
//! request at most once, every request must end sent, failed or in doubt, and the in-doubt ones
//! the simulator did receive must be resolved by their status callbacks.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use e2e_tests::{Channel, BUSINESS};
use serde_json::{json, Value};
use wa_platform::topics::{OUTBOUND_AUTHORIZED, OUTBOUND_DISPATCHED};
use wa_schemas::{Event as _, OutboundAuthorized, OutboundDispatched};

const MESSAGES: usize = 2_000;
const SENDERS: usize = 20;
const CUSTOMERS: usize = 400;
const KILLS: u64 = 3;

fn authorization(run: &str, content_sid: &str, i: usize) -> OutboundAuthorized {
    let from = if i % SENDERS == 0 { BUSINESS.to_owned() } else { format!("whatsapp:+1415555{:04}", i % SENDERS) };
    // Valid North American numbers: area code 415, exchanges from 200.
    let to = format!("whatsapp:+1415{}", 2_000_000 + run.parse::<usize>().unwrap_or(0) * 10_000 + i % CUSTOMERS);
    e2e_tests::template_authorization(&format!("crash-{i}"), (&from, &to), content_sid, &i.to_string())
}

async fn sim_stats(channel: &Channel) -> Value {
    channel.get(twilio_sim::SERVICE, "/sim/stats").await.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_dispatch_never_sends_twice_and_accounts_for_every_request() {
    let channel = Channel::start_without_dispatch().await;
    // One callback per message (sent, or the failure), to keep the broker's load modest.
    channel
        .sim_behaviour(json!({"callback_statuses": ["sent", "failed", "undelivered"], "rate_limit_per_sender": 0}))
        .await;
    let run = format!("{:02}", fastrand::u8(..100));
    let content_sid = channel.sim_approved_content().await;
    let authorizations: Vec<OutboundAuthorized> = (0..MESSAGES).map(|i| authorization(&run, &content_sid, i)).collect();
    channel.publish_all(&OUTBOUND_AUTHORIZED, &authorizations).await;

    // 20 senders at 3 messages/s each: about 33 s of sending, killed at a quarter, a half and
    // three quarters of the way.
    let env = [
        ("DISPATCH_SENDER_RATE", "3".to_owned()),
        ("DISPATCH_IN_DOUBT_AFTER_MS", "3000".to_owned()),
        ("KAFKA_GROUP_INSTANCE_ID", "dispatch-1".to_owned()),
    ];
    let mut dispatch = channel.dispatch_process(&env);
    for kill in 1..=KILLS {
        let target = kill * MESSAGES as u64 / (KILLS + 1);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while sim_stats(&channel).await["messages"].as_u64().unwrap() < target {
            assert!(tokio::time::Instant::now() < deadline, "dispatch stalled before {target} messages");
            assert!(dispatch.try_wait().unwrap().is_none(), "dispatch exited on its own");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        dispatch.start_kill().unwrap();
        let status = dispatch.wait().await.unwrap();
        assert!(!status.success(), "killed, not stopped");
        dispatch = channel.dispatch_process(&env);
    }

    // Every request ends with an outcome; in-doubt ones the simulator received get resolved.
    // One consumer follows the outcomes as they come (re-reading the topic would load the
    // broker for nothing).
    let outcomes_topic = channel.topic(&OUTBOUND_DISPATCHED);
    let follower = e2e_tests::follow_from_beginning(&channel.kafka, &outcomes_topic).await;
    let mut outcomes: HashMap<String, Vec<String>> = HashMap::new();
    // Twilio's sid of each `sent` outcome, by request.
    let mut sent_sids: HashMap<String, String> = HashMap::new();
    let sim_requests =
        |messages: &[Value]| -> Vec<String> { messages.iter().filter_map(e2e_tests::sim_request_id).collect() };
    // An in-doubt request the simulator received is resolved by its status callback, unless
    // ingress refused every callback of it (a 503 under load; the simulator, like Twilio, does
    // not retry status callbacks): then nothing can tell, and in doubt is the right answer.
    let finished = |outcomes: &HashMap<String, Vec<String>>, received: &HashSet<String>, unheard: &HashSet<String>| {
        outcomes.len() == MESSAGES
            && outcomes.iter().all(|(id, seen)| {
                let done = seen.iter().any(|o| o == "sent" || o == "failed");
                let in_doubt = seen.iter().any(|o| o == "in_doubt");
                done || (in_doubt && (!received.contains(id) || unheard.contains(id)))
            })
    };
    // Requests whose callbacks were all sent and none accepted.
    let unheard = |messages: &[Value]| -> HashSet<String> {
        messages
            .iter()
            .filter(|m| {
                m["callbacks"].as_array().is_some_and(|callbacks| {
                    !callbacks.is_empty() && callbacks.iter().all(|c| !(200..300).contains(&c[1].as_u64().unwrap_or(0)))
                })
            })
            .filter_map(e2e_tests::sim_request_id)
            .collect()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let mut next_check = tokio::time::Instant::now();
    loop {
        if let Ok(message) = tokio::time::timeout(Duration::from_millis(500), follower.recv()).await {
            let message = message.expect("outcomes readable");
            let event = OutboundDispatched::decode(rdkafka::Message::payload(&message).unwrap_or_default()).unwrap();
            if event.kind().is_some_and(wa_schemas::DispatchOutcome::is_terminal) {
                if event.kind() == Some(wa_schemas::DispatchOutcome::Sent) {
                    sent_sids.insert(event.request_id.clone(), event.message_sid.clone().unwrap_or_default());
                }
                outcomes.entry(event.request_id).or_default().push(event.outcome);
            }
        }
        if tokio::time::Instant::now() < next_check {
            continue;
        }
        next_check = tokio::time::Instant::now() + Duration::from_secs(2);
        if outcomes.len() == MESSAGES {
            let messages = channel.sim_messages().await;
            let received: HashSet<String> = sim_requests(&messages).into_iter().collect();
            if finished(&outcomes, &received, &unheard(&messages)) {
                break;
            }
        }
        if tokio::time::Instant::now() >= deadline {
            let messages = channel.sim_messages().await;
            let received: HashSet<String> = sim_requests(&messages).into_iter().collect();
            let open: Vec<(&String, Vec<Value>)> = outcomes
                .iter()
                .filter(|(id, seen)| !seen.iter().any(|o| o == "sent" || o == "failed") && received.contains(*id))
                .map(|(id, _)| {
                    let callbacks = messages
                        .iter()
                        .filter(|m| e2e_tests::sim_request_id(m).as_ref() == Some(id))
                        .map(|m| m["callbacks"].clone())
                        .collect();
                    (id, callbacks)
                })
                .collect();
            panic!("{} of {MESSAGES} requests have an outcome; received but unresolved: {open:?}", outcomes.len());
        }
    }
    dispatch.start_kill().ok();

    let messages = channel.sim_messages().await;
    let mut per_request: HashMap<String, usize> = HashMap::new();
    for id in sim_requests(&messages) {
        *per_request.entry(id).or_default() += 1;
    }
    let twice: Vec<_> = per_request.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    let in_doubt = outcomes.values().filter(|seen| seen.iter().any(|o| o == "in_doubt")).count();
    let never_sent = outcomes.keys().filter(|id| !per_request.contains_key(*id)).count();
    println!(
        "crash test: {MESSAGES} requests, {} reached the simulator once each, {in_doubt} were in doubt at some point, \
         {never_sent} never reached it (in doubt, for the CRM to decide)",
        per_request.len()
    );
    assert_eq!(per_request.len() + never_sent, MESSAGES);

    // Every `sent` names the message the simulator took for that very request: its sid, its
    // recipient and its content variables.
    let by_sid: HashMap<&str, &Value> = messages.iter().filter_map(|m| Some((m["sid"].as_str()?, m))).collect();
    let requests: HashMap<String, &OutboundAuthorized> =
        authorizations.iter().map(|a| (a.request_id.clone(), a)).collect();
    for (request_id, sid) in &sent_sids {
        let message =
            by_sid.get(sid.as_str()).unwrap_or_else(|| panic!("{request_id} sent as {sid}, unknown to Twilio"));
        assert_eq!(e2e_tests::sim_request_id(message).as_ref(), Some(request_id), "{sid} is another request's");
        let param = |name: &str| {
            message["params"].as_array().unwrap().iter().find(|p| p[0] == name).and_then(|p| p[1].as_str())
        };
        let authorized = requests[request_id];
        assert_eq!(param("To"), Some(authorized.to.as_str()), "{request_id}");
        assert_eq!(param("ContentVariables"), authorized.content_variables.as_deref(), "{request_id}");
    }
    assert!(!sent_sids.is_empty(), "some requests were sent");
    channel.stop().await;
}
