//! Overload: ingress sheds what it cannot publish in time with 503 and `Retry-After`, never
//! loses what it accepted, and the broker stays up under a burst.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use e2e_tests::{unique_customer, Channel, BUSINESS};
use futures_util::StreamExt as _;
use serde_json::json;
use wa_platform::topics::{OUTBOUND_REJECTED, OUTBOUND_REQUESTED};
use wa_platform::CancellationToken;
use wa_schemas::{OutboundRejected, OutboundRequested};

/// How one CRM request was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Accepted,
    /// 503, with the problem's type slug and `Retry-After`.
    Refused {
        kind: String,
        retry_after: Option<String>,
    },
    Other(u16, String),
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status().as_u16();
    let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let text = response.text().await.unwrap_or_default();
    match status {
        202 => Answer::Accepted,
        503 => {
            let problem: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let kind = problem["type"].as_str().unwrap_or_default().rsplit('/').next().unwrap_or_default().to_owned();
            Answer::Refused { kind, retry_after }
        }
        _ => Answer::Other(status, text),
    }
}

fn reply(request_id: &str, to: &str) -> serde_json::Value {
    json!({"request_id": request_id, "from": BUSINESS, "to": to, "body": "Your order has shipped."})
}

/// Request ids on `wa.outbound.requested.v1`, with how often each appears.
async fn requested_ids(channel: &Channel) -> HashMap<String, usize> {
    let mut ids = HashMap::new();
    for record in channel.read_to_end(&OUTBOUND_REQUESTED).await {
        *ids.entry(record.decode::<OutboundRequested>().request_id).or_default() += 1;
    }
    ids
}

#[tokio::test]
async fn requests_beyond_the_publishes_in_flight_are_shed_with_retry_after_and_never_published() {
    let channel = Channel::topics_only().await;
    let mut config = e2e_tests::ingress_config(&channel.kafka);
    config.max_in_flight = 1;
    config.api_tokens.clear();
    let bound = ingress::bind(config).await.unwrap();
    let url = format!("http://{}/v1/outbound", bound.local_addr());
    let stop = CancellationToken::new();
    let serving = tokio::spawn(bound.run(stop.clone()));
    let http = reqwest::Client::new();
    let ready = url.replace("/v1/outbound", "/readyz");
    while !http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Forty requests at once: one publish may wait for the broker, the others are shed.
    let customer = unique_customer();
    let ids: Vec<String> = (0..40).map(|i| format!("shed-{i}-{}", uuid::Uuid::new_v4())).collect();
    let answers = futures_util::future::join_all(ids.iter().map(|id| {
        let (http, url, body) = (http.clone(), url.clone(), reply(id, &customer));
        async move { answer(http.post(url).json(&body).send().await.expect("ingress answers")).await }
    }))
    .await;
    let accepted: HashSet<&String> =
        ids.iter().zip(&answers).filter(|(_, a)| **a == Answer::Accepted).map(|(id, _)| id).collect();
    let shed: Vec<&String> = ids
        .iter()
        .zip(&answers)
        .filter(|(_, a)| matches!(a, Answer::Refused { kind, retry_after } if kind == "overloaded" && retry_after.as_deref() == Some("1")))
        .map(|(id, _)| id)
        .collect();
    assert!(!accepted.is_empty(), "nothing accepted: {answers:?}");
    assert!(!shed.is_empty(), "nothing shed with 503 overloaded and Retry-After: 1: {answers:?}");
    assert_eq!(accepted.len() + shed.len(), ids.len(), "other answers: {answers:?}");

    // Accepted ones are on the topic once; shed ones are not, until retried.
    let retried = shed[0];
    let published = requested_ids(&channel).await;
    for id in &accepted {
        assert_eq!(published.get(*id), Some(&1), "{id} accepted but not published once");
    }
    for id in &shed {
        assert!(!published.contains_key(*id), "{id} was shed with 503 yet published");
    }
    let again = answer(http.post(&url).json(&reply(retried, &customer)).send().await.unwrap()).await;
    assert_eq!(again, Answer::Accepted, "a shed request retried alone is accepted");

    stop.cancel();
    serving.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_burst_of_5000_requests_in_a_second_is_shed_or_answered_and_every_accepted_one_ends() {
    let channel = Arc::new(Channel::start().await);
    const BURST: usize = 5_000;
    // Up to 512 requests open at once (one connection each), offered over one second.
    let started = tokio::time::Instant::now();
    let answers: Vec<(String, Answer)> = futures_util::stream::iter(0..BURST)
        .map(|i| {
            let channel = channel.clone();
            async move {
                tokio::time::sleep_until(started + Duration::from_micros((i * 1_000_000 / BURST) as u64)).await;
                let id = format!("burst-{i}-{}", uuid::Uuid::new_v4());
                // Customers who never wrote: every accepted request ends rejected, quickly.
                let response = channel.post_outbound(&reply(&id, &unique_customer())).await;
                (id, answer(response).await)
            }
        })
        .buffer_unordered(512)
        .collect()
        .await;
    let offered_in = started.elapsed();
    let accepted: HashSet<&String> = answers.iter().filter(|(_, a)| *a == Answer::Accepted).map(|(id, _)| id).collect();
    let mut refused: HashMap<&str, usize> = HashMap::new();
    for (_, a) in &answers {
        match a {
            Answer::Accepted => {}
            Answer::Refused { kind, retry_after } => {
                assert!(retry_after.is_some(), "a 503 without Retry-After");
                *refused.entry(kind.as_str()).or_default() += 1;
            }
            Answer::Other(status, text) => panic!("answered {status}: {text}"),
        }
    }
    eprintln!("burst: {BURST} requests answered in {offered_in:?}: {} accepted, 503 {refused:?}", accepted.len());

    // Every accepted request ends (rejected: nobody wrote), and nothing shed was published.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
    loop {
        let ended: HashSet<String> = channel
            .read_to_end(&OUTBOUND_REJECTED)
            .await
            .iter()
            .map(|r| r.decode::<OutboundRejected>().request_id)
            .collect();
        let open = accepted.iter().filter(|id| !ended.contains(**id)).count();
        if open == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{open} accepted requests never ended");
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let published = requested_ids(&channel).await;
    for (id, a) in &answers {
        if matches!(a, Answer::Refused { kind, .. } if kind == "overloaded") {
            assert!(!published.contains_key(id), "{id} was shed yet published");
        }
    }
    // The broker and the channel still serve. (Not how fast: a consumer group may still be
    // rebalancing after tansu answered its heartbeats late under the backlog.)
    let after = format!("after-burst-{}", uuid::Uuid::new_v4());
    assert_eq!(answer(channel.post_outbound(&reply(&after, &unique_customer())).await).await, Answer::Accepted);
    let left = deadline.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_secs(120));
    channel.await_record_within(&OUTBOUND_REJECTED, left, |r| r.decode::<OutboundRejected>().request_id == after).await;
    Arc::into_inner(channel).expect("no other holder").stop().await;
}
