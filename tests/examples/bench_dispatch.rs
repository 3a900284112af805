//! outbound-dispatch's sustained rate against the simulator: 20 senders limited to 80
//! messages/s each (dispatch and simulator alike), authorizations offered at the full 1,600/s.
//! Prints the measured rate per sender, the most messages any sender got into one second at
//! the simulator, 429s, and the latency from an authorization's publication to the simulator
//! receiving the call. Run with `cargo xtask bench dispatch` (it starts a broker);
//! `BENCH_OFFERED` offers less than the limit per sender, `BENCH_SECONDS` sets the duration.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use wa_platform::config::KafkaConfig;
use wa_platform::kafka::EventProducer;
use wa_platform::topics::{self, OUTBOUND_AUTHORIZED};
use wa_platform::CancellationToken;
use wa_schemas::{conversation_id, OutboundAuthorized};

/// As in the service binaries.
#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

const SENDERS: usize = 20;
const RATE: f64 = 80.0;
const TOKEN: &str = "bench-auth-token";
const ACCOUNT: &str = "AC00000000000000000000000000000000";

fn sender(i: usize) -> String {
    format!("whatsapp:+1415555{:04}", i % SENDERS)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(15);
    // Offered rate per sender (the limit stays 80/s): below the limit to see latency without a
    // backlog.
    let offered: f64 = std::env::var("BENCH_OFFERED").ok().and_then(|v| v.parse().ok()).unwrap_or(RATE);
    let kafka = KafkaConfig::new(
        e2e_tests::bootstrap_servers(),
        format!("benchd{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    );
    wa_platform::kafka::ensure_topics(&kafka, topics::ALL).await?;
    let stop = CancellationToken::new();
    let loopback = || "127.0.0.1:0".parse().expect("address");

    let sim = twilio_sim::bind(twilio_sim::Config {
        http_addr: loopback(),
        account_sid: ACCOUNT.to_owned(),
        auth_token: TOKEN.to_owned(),
        inbound_webhook_url: "http://127.0.0.1:9/unused".to_owned(),
    })
    .await?;
    let sim_url = format!("http://{}", sim.local_addr());
    tokio::spawn(sim.run(stop.clone()));
    let ingress = ingress::bind(ingress::Config::new(loopback(), kafka.clone(), TOKEN)).await?;
    let ingress_url = format!("http://{}", ingress.local_addr());
    tokio::spawn(ingress.run(stop.clone()));
    let dispatch = outbound_dispatch::bind(outbound_dispatch::Config {
        http_addr: loopback(),
        kafka: kafka.clone(),
        twilio_base_url: sim_url.clone(),
        account_sid: ACCOUNT.to_owned(),
        auth_username: ACCOUNT.to_owned(),
        auth_password: TOKEN.to_owned(),
        status_callback_url: Some(format!("{ingress_url}/twilio/status")),
        request_timeout: Duration::from_secs(10),
        retry_deadline: Duration::from_secs(60),
        in_doubt_after: Duration::from_secs(300),
        rates: outbound_dispatch::rate::Rates { per_sender: RATE, senders: HashMap::new(), account: 0.0 },
        instances: 1,
        messaging_service_sid: None,
        instance_id: "bench-dispatch".to_owned(),
    })
    .await?;
    let dispatch_url = format!("http://{}", dispatch.local_addr());
    tokio::spawn(dispatch.run(stop.clone()));
    let http = reqwest::Client::new();
    for url in [&sim_url, &ingress_url, &dispatch_url] {
        while !http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // The simulator enforces Twilio's limit too; one callback per message keeps the broker for
    // the sends.
    http.patch(format!("{sim_url}/sim/behaviour"))
        .json(&serde_json::json!({"rate_limit_per_sender": RATE as u32, "callback_statuses": ["sent"]}))
        .send()
        .await?;

    let content_sid = e2e_tests::sim_approved_content(&http, &sim_url).await;
    let total = (offered * SENDERS as f64) as usize * seconds as usize;
    eprintln!("bench: offering {total} authorizations at {}/s for {seconds} s", offered as usize * SENDERS);
    let producer = EventProducer::new(&kafka, "bench", Duration::from_secs(60))?;
    let mut published_at: HashMap<String, DateTime<Utc>> = HashMap::with_capacity(total);
    let started = tokio::time::Instant::now();
    let mut pending = Vec::new();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / (offered * SENDERS as f64));
        tokio::time::sleep_until(due).await;
        let from = sender(i);
        let to = format!("whatsapp:+1415{}", 2_000_000 + i % 5_000);
        let request_id = format!("b-{i}");
        let event = OutboundAuthorized {
            event_id: uuid::Uuid::new_v4().to_string(),
            occurred_at: wa_platform::now_millis(),
            conversation_id: conversation_id(&from, &to),
            request_id: request_id.clone(),
            from,
            to,
            body: None,
            media_urls: vec![],
            window_expires_at: None,
            content_sid: Some(content_sid.clone()),
            content_variables: Some(r#"{"1":"Ana"}"#.to_owned()),
            template_name: Some("order_update".to_owned()),
            template_language: Some("en".to_owned()),
            preview: None,
            rule: Some("approved_template".to_owned()),
            pricing_category: None,
            pricing_type: None,
            metadata: Default::default(),
        };
        published_at.insert(request_id, Utc::now());
        let producer = producer.clone();
        pending.push(tokio::spawn(async move { producer.publish(&OUTBOUND_AUTHORIZED, &event).await.map(|_| ()) }));
    }
    for publish in pending {
        publish.await??;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let stats = loop {
        let stats: serde_json::Value = http.get(format!("{sim_url}/sim/stats")).send().await?.json().await?;
        if stats["messages"].as_u64().unwrap_or(0) as usize >= total || tokio::time::Instant::now() > deadline {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let messages: Vec<serde_json::Value> = http.get(format!("{sim_url}/sim/messages")).send().await?.json().await?;
    stop.cancel();

    let mut per_sender: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    let mut latencies_ms: Vec<f64> = Vec::new();
    for message in &messages {
        let param = |name: &str| {
            message["params"].as_array().and_then(|p| p.iter().find(|p| p[0] == name)).and_then(|p| p[1].as_str())
        };
        let received: DateTime<Utc> = message["received_at"].as_str().unwrap_or_default().parse()?;
        let request_id = param("StatusCallback").and_then(|url| wa_twilio::signature::query_param(url, "request_id"));
        if let Some(at) = request_id.and_then(|id| published_at.get(&id)) {
            latencies_ms.push((received - *at).num_microseconds().unwrap_or(0) as f64 / 1000.0);
        }
        per_sender.entry(param("From").unwrap_or_default().to_owned()).or_default().push(received);
    }
    latencies_ms.sort_by(f64::total_cmp);
    let percentile =
        |p: f64| latencies_ms.get(((latencies_ms.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);

    println!("dispatch benchmark: {SENDERS} senders limited to {RATE}/s each, {total} template sends offered over {seconds} s");
    println!(
        "machine: {} cores; broker, services, simulator and publisher share them",
        std::thread::available_parallelism()?.get()
    );
    println!("messages at the simulator: {} of {total}; refused with 429: {}", messages.len(), stats["rate_limited"]);
    let mut rates = Vec::new();
    let mut busiest_second = 0;
    for times in per_sender.values_mut() {
        times.sort();
        let span = (times[times.len() - 1] - times[0]).num_microseconds().unwrap_or(1) as f64 / 1e6;
        rates.push((times.len() - 1) as f64 / span.max(1e-6));
        // The most messages within any one second (sliding window).
        let mut start = 0;
        for end in 0..times.len() {
            while times[end] - times[start] >= chrono::Duration::seconds(1) {
                start += 1;
            }
            busiest_second = busiest_second.max(end - start + 1);
        }
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "rate per sender: min {:.1}/s, median {:.1}/s, max {:.1}/s ({:.1}% of the limit at the median); busiest second of any sender: {busiest_second} messages",
        rates[0],
        rates[rates.len() / 2],
        rates[rates.len() - 1],
        100.0 * rates[rates.len() / 2] / RATE
    );
    println!(
        "latency from publication of the authorization to the simulator: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(0.5),
        percentile(0.99),
        percentile(1.0)
    );
    Ok(())
}
