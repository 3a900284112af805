//! Readiness tells the truth: when the broker stops serving, `/readyz` answers 503 with the
//! reason and ingress refuses at once; when it serves again, the services are ready again.
//! The test runs its own tansu (in-memory storage), so it can kill it without harming others.

use std::time::Duration;

use e2e_tests::{loopback, unique_customer, BUSINESS};
use wa_platform::config::KafkaConfig;
use wa_platform::CancellationToken;

async fn await_status(http: &reqwest::Client, url: &str, status: u16, within: Duration) -> String {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Ok(response) = http.get(url).send().await {
            if response.status().as_u16() == status {
                return response.text().await.unwrap_or_default();
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} did not answer {status} within {within:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_service_whose_broker_stops_serving_is_not_ready_until_it_serves_again() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("wa-readiness-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // SQLite, so the topics outlive the kill as a real broker's do. (With the memory engine they
    // vanished, and librdkafka 2.12 can crash in its metadata cache when a subscribed topic
    // disappears: a test artifact, not an outage.)
    let mut broker = e2e_tests::chaos::start_broker(port, &dir);
    let kafka = KafkaConfig::new(format!("127.0.0.1:{port}"), "ready.");
    wa_platform::kafka::wait_for_broker(&kafka, Duration::from_secs(60)).await.expect("own broker answers");
    wa_platform::kafka::ensure_topics(&kafka, wa_platform::topics::ALL).await.expect("topics");

    let stop = CancellationToken::new();
    let mut config = e2e_tests::ingress_config(&kafka);
    config.api_tokens.clear();
    let ingress = ingress::bind(config).await.unwrap();
    let ingress_url = format!("http://{}", ingress.local_addr());
    let approval = template_approval::bind(template_approval::Config {
        http_addr: loopback(),
        kafka: kafka.clone(),
        admin_tokens: vec![],
        content_base_url: "http://127.0.0.1:9".to_owned(),
        auth_username: "AC11111111111111111111111111111111".to_owned(),
        auth_password: "unused".to_owned(),
        sync_interval: Duration::from_secs(3600),
        policy: template_approval::authorize::Policy::default(),
    })
    .await
    .unwrap();
    let approval_url = format!("http://{}", approval.local_addr());
    let tasks = [tokio::spawn(ingress.run(stop.clone())), tokio::spawn(approval.run(stop.clone()))];
    let http = reqwest::Client::new();
    for url in [&ingress_url, &approval_url] {
        await_status(&http, &format!("{url}/readyz"), 200, Duration::from_secs(60)).await;
    }

    // The broker dies: both say so, and ingress refuses the CRM at once.
    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
    for url in [&ingress_url, &approval_url] {
        let body = await_status(&http, &format!("{url}/readyz"), 503, Duration::from_secs(30)).await;
        assert!(body.contains("broker did not answer"), "{url}/readyz gave no reason: {body}");
    }
    let request = serde_json::json!({"from": BUSINESS, "to": unique_customer(), "body": "still there?"});
    let refused = http.post(format!("{ingress_url}/v1/outbound")).json(&request).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"));
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap_or_default().contains("broker"), "{problem}");

    // It comes back (empty: in-memory storage), the topics are created again: ready again.
    let mut broker = e2e_tests::chaos::start_broker(port, &dir);
    wa_platform::kafka::wait_for_broker(&kafka, Duration::from_secs(60)).await.expect("broker back");
    for url in [&ingress_url, &approval_url] {
        await_status(&http, &format!("{url}/readyz"), 200, Duration::from_secs(60)).await;
    }
    let accepted = http.post(format!("{ingress_url}/v1/outbound")).json(&request).send().await.unwrap();
    assert_eq!(accepted.status(), 202, "{}", accepted.text().await.unwrap());

    stop.cancel();
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

/// Ingress answers 503 with `Retry-After` until it has replayed the ids published before it
/// started (README: "requests get 503 until the dedupe replay has caught up"), and then knows
/// them: a request accepted by an earlier ingress is a duplicate, published once.
#[tokio::test]
async fn ingress_refuses_until_it_has_replayed_what_was_published_before_it() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let dir = std::env::temp_dir().join(format!("wa-replay-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut broker = e2e_tests::chaos::start_broker(port, &dir);
    let kafka = KafkaConfig::new(format!("127.0.0.1:{port}"), "replay.");
    wa_platform::kafka::wait_for_broker(&kafka, Duration::from_secs(60)).await.expect("own broker answers");
    wa_platform::kafka::ensure_topics(&kafka, wa_platform::topics::ALL).await.expect("topics");
    let http = reqwest::Client::new();
    let request_id = format!("replayed-{}", uuid::Uuid::new_v4().simple());
    let request = serde_json::json!({"request_id": request_id, "from": BUSINESS, "to": unique_customer(), "body": "Your order ships today."});
    let mut config = e2e_tests::ingress_config(&kafka);
    config.api_tokens.clear();

    // A first ingress accepts the request, and stops.
    let first = ingress::bind(config.clone()).await.unwrap();
    let first_url = format!("http://{}", first.local_addr());
    let stop_first = CancellationToken::new();
    let running = tokio::spawn(first.run(stop_first.clone()));
    await_status(&http, &format!("{first_url}/readyz"), 200, Duration::from_secs(60)).await;
    let accepted = http.post(format!("{first_url}/v1/outbound")).json(&request).send().await.unwrap();
    assert_eq!(accepted.status(), 202, "{}", accepted.text().await.unwrap());
    stop_first.cancel();
    running.await.unwrap().unwrap();

    // The broker is down while a new ingress starts: it cannot replay, so it refuses.
    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
    let second = ingress::bind(config).await.unwrap();
    let second_url = format!("http://{}", second.local_addr());
    let stop = CancellationToken::new();
    let running = tokio::spawn(second.run(stop.clone()));
    let refused = http.post(format!("{second_url}/v1/outbound")).json(&request).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert!(refused.headers().contains_key("retry-after"), "{:?}", refused.headers());
    let problem: serde_json::Value = refused.json().await.unwrap();
    assert!(problem["detail"].as_str().unwrap_or_default().contains("replaying"), "{problem}");
    let body = await_status(&http, &format!("{second_url}/readyz"), 503, Duration::from_secs(5)).await;
    assert!(!body.is_empty(), "/readyz says why it is not ready");

    // The broker is back: once the replay is done, the earlier request is known.
    let mut broker = e2e_tests::chaos::start_broker(port, &dir);
    await_status(&http, &format!("{second_url}/readyz"), 200, Duration::from_secs(90)).await;
    let again = http.post(format!("{second_url}/v1/outbound")).json(&request).send().await.unwrap();
    assert_eq!(again.status(), 200, "a duplicate of the accepted request");
    let answer: serde_json::Value = again.json().await.unwrap();
    assert_eq!(answer["status"], "duplicate", "{answer}");

    stop.cancel();
    running.await.unwrap().unwrap();
    broker.start_kill().unwrap();
    broker.wait().await.unwrap();
    std::fs::remove_dir_all(&dir).ok();
}
