//! session-window's rebuild against a bare consumer, and its memory per conversation.
//!
//! Publishes `BENCH_EVENTS` (default 1,000,000) customer messages, each from its own customer
//! and inside the last 24 hours (so every conversation is active, with a pending notice), then,
//! twice and side by side: a bare consumer that reads the topic and does nothing, and the
//! rebuild's replay (decode, fold into per-partition state). Prints both rates, the resident
//! memory the rebuilt state added per conversation, and the rewrite of `wa.sessions.v1` and its
//! read-back (what a restore reads). Run with `cargo xtask bench sessions` (it starts a broker).

use std::time::{Duration, Instant};

use wa_platform::config::KafkaConfig;
use wa_platform::kafka::EventProducer;
use wa_platform::topics::{self, INBOUND};
use wa_schemas::{conversation_id, Event as _, InboundMessageReceived};

/// As in the service binaries.
#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

use e2e_tests::BUSINESS;

/// Resident set size of this process, in bytes.
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    pages * 4096
}

/// Peak resident set size of this process, in bytes.
fn peak_resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn message(i: u64, now: i64) -> InboundMessageReceived {
    let customer = format!("whatsapp:+1415{}", 2_000_000 + i % 8_000_000);
    InboundMessageReceived {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: now - (i as i64 % 20) * 3_600_000,
        conversation_id: conversation_id(BUSINESS, &customer),
        message_sid: format!("SM{:032x}", i),
        account_sid: "AC00000000000000000000000000000000".to_owned(),
        messaging_service_sid: None,
        from: customer,
        to: BUSINESS.to_owned(),
        body: if i % 50 == 0 {
            "STOP".to_owned()
        } else {
            "Hi, my order has not arrived yet. Can you help?".to_owned()
        },
        profile_name: Some("Ana".to_owned()),
        wa_id: Some(format!("1555{i:07}")),
        message_type: Some("text".to_owned()),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let events: u64 = std::env::var("BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let kafka = KafkaConfig::new(
        e2e_tests::bootstrap_servers(),
        format!("benchs{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    );
    wa_platform::kafka::ensure_topics(&kafka, topics::ALL).await?;

    // The state's footprint, measured first in this fresh process: one conversation per
    // message, built by the projection's own code, each with an open window and a pending
    // notice.
    let now = wa_platform::now_millis();
    let keywords = session_window::session::Keywords::defaults();
    let before = resident_bytes();
    let mut stores: Vec<session_window::store::PartitionStore> =
        (0..topics::MESSAGE_PARTITIONS).map(|_| session_window::store::PartitionStore::new(3_600_000)).collect();
    for i in 0..events {
        let event = message(i, now);
        let consent = keywords.classify(&event.body).map(|(c, _)| c);
        let fact = session_window::session::Fact::CustomerMessage {
            id: uuid::Uuid::parse_str(&event.event_id).ok(),
            at: event.occurred_at,
            referral: false,
            consent,
        };
        let partition = topics::partition_for_key(event.conversation_id.as_bytes(), topics::MESSAGE_PARTITIONS);
        let store = &mut stores[partition as usize];
        store.apply(uuid::Uuid::parse_str(&event.conversation_id)?, fact);
        // The service snapshots (and forgets) changed sessions as it goes.
        let _ = store.take_dirty();
    }
    for store in &mut stores {
        let _ = store.take_dirty();
    }
    let after = resident_bytes();
    let conversations: usize = stores.iter().map(|s| s.len()).sum();
    println!(
        "state of {conversations} active conversations: resident memory {:.0} MB -> {:.0} MB = {:.0} bytes per conversation",
        before as f64 / 1e6,
        after as f64 / 1e6,
        after.saturating_sub(before) as f64 / conversations as f64
    );
    drop(stores);

    // The fold's own cost, without a broker: decode and apply encoded messages in memory.
    let sample: Vec<Vec<u8>> = (0..200_000u64).map(|i| message(i, now).encode()).collect::<Result<_, _>>()?;
    let mut store = session_window::store::PartitionStore::new(3_600_000);
    let fold_started = Instant::now();
    for payload in &sample {
        let event = InboundMessageReceived::decode(payload)?;
        let consent = keywords.classify(&event.body).map(|(c, _)| c);
        let fact = session_window::session::Fact::CustomerMessage {
            id: uuid::Uuid::parse_str(&event.event_id).ok(),
            at: event.occurred_at,
            referral: event.referral.is_some(),
            consent,
        };
        store.apply(uuid::Uuid::parse_str(&event.conversation_id)?, fact);
    }
    let fold_rate = sample.len() as f64 / fold_started.elapsed().as_secs_f64();
    println!("fold alone (decode + apply, one core, no broker): {fold_rate:.0} events/s");
    drop((sample, store));

    let started = Instant::now();
    let producer = EventProducer::new(&kafka, "bench-sessions", Duration::from_secs(120))?;
    let mut queued = Vec::with_capacity(100_000);
    for i in 0..events {
        queued.push(producer.enqueue(&INBOUND, &message(i, now), None).await?);
        if queued.len() == 100_000 {
            for record in queued.drain(..) {
                record.acknowledged().await?;
            }
        }
    }
    for record in queued.drain(..) {
        record.acknowledged().await?;
    }
    println!("published {events} customer messages in {:.1} s", started.elapsed().as_secs_f64());

    let lead = Duration::from_secs(3600);
    let mut bare_rates = Vec::new();
    let mut rebuild_rates = Vec::new();
    for round in 1..=2 {
        let kafka_bare = kafka.clone();
        let bare = tokio::task::spawn_blocking(move || {
            session_window::rebuild::replay(&kafka_bare, &[INBOUND], None, |_| {}, |_| {})
        })
        .await??;
        let bare_rate = bare.rate();
        bare_rates.push(bare_rate);

        let options = session_window::rebuild::Options { since: None, dry_run: true };
        let rebuilt = session_window::rebuild::rebuild(&kafka, &keywords, lead, &options, |_| {}).await?;
        let summary = &rebuilt.summary;
        let rate = summary.events as f64 / summary.replay.as_secs_f64();
        rebuild_rates.push(rate);
        println!(
            "round {round}: bare consumer {} records in {:.2} s = {:.0} records/s; rebuild replay {} events in {:.2} s = {:.0} events/s ({:.0}% of bare)",
            bare.events,
            bare.elapsed.as_secs_f64(),
            bare_rate,
            summary.events,
            summary.replay.as_secs_f64(),
            rate,
            100.0 * rate / bare_rate
        );
        println!(
            "round {round}: {} conversations ({} open, {} opted out); peak resident memory so far {:.0} MB",
            summary.conversations,
            summary.open_windows,
            summary.opted_out,
            peak_resident_bytes() as f64 / 1e6
        );
        drop(rebuilt);
    }
    let best = |rates: &[f64]| rates.iter().copied().fold(0.0, f64::max);
    println!(
        "best of two: bare {:.0} records/s, rebuild {:.0} events/s ({:.0}%)",
        best(&bare_rates),
        best(&rebuild_rates),
        100.0 * best(&rebuild_rates) / best(&bare_rates)
    );

    // The whole command: replay, then rewrite every snapshot; then read them back as a
    // restore does.
    let options = session_window::rebuild::Options { since: None, dry_run: false };
    let rebuilt = session_window::rebuild::rebuild(&kafka, &keywords, lead, &options, |_| {}).await?;
    let summary = &rebuilt.summary;
    let rewrite = summary.elapsed.saturating_sub(summary.replay);
    println!(
        "full rebuild: {:.1} s in all; wrote {} snapshots in {:.1} s ({:.0}/s)",
        summary.elapsed.as_secs_f64(),
        summary.snapshots,
        rewrite.as_secs_f64(),
        summary.snapshots as f64 / rewrite.as_secs_f64()
    );
    drop(rebuilt);
    let read_started = Instant::now();
    let states = session_window::rebuild::read_snapshots(&kafka).await?;
    println!(
        "read back {} snapshots in {:.1} s ({:.0}/s)",
        states.len(),
        read_started.elapsed().as_secs_f64(),
        states.len() as f64 / read_started.elapsed().as_secs_f64()
    );
    verdict_rate().await?;
    Ok(())
}

/// The live service: `BENCH_VERDICTS` requests (default 50,000) over 10,000 conversations whose
/// customers wrote, published at once; the time until every verdict is on
/// `wa.outbound.checked.v1`.
async fn verdict_rate() -> anyhow::Result<()> {
    let requests: u64 = std::env::var("BENCH_VERDICTS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000);
    let kafka = KafkaConfig::new(
        e2e_tests::bootstrap_servers(),
        format!("benchv{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]),
    );
    wa_platform::kafka::ensure_topics(&kafka, topics::ALL).await?;
    let now = wa_platform::now_millis();
    let producer = EventProducer::new(&kafka, "bench-sessions", Duration::from_secs(120))?;
    let conversations = 10_000u64;
    let mut queued = Vec::new();
    for i in 0..conversations {
        queued.push(producer.enqueue(&INBOUND, &message(i, now), None).await?);
    }
    for record in queued.drain(..) {
        record.acknowledged().await?;
    }
    let stop = wa_platform::CancellationToken::new();
    let service = session_window::bind(session_window::Config::new("127.0.0.1:0".parse()?, kafka.clone())).await?;
    let url = format!("http://{}", service.local_addr());
    let running = tokio::spawn(service.run(stop.clone()));
    let http = reqwest::Client::new();
    while !http.get(format!("{url}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checked_topic = kafka.topic(&topics::OUTBOUND_CHECKED);
    let reader = e2e_tests::follow_from_beginning(&kafka, &checked_topic).await;
    let started = Instant::now();
    for i in 0..requests {
        let customer = format!("whatsapp:+1415{}", 2_000_000 + i % conversations);
        let request = e2e_tests::outbound_request(&format!("bench-{i}"), &customer, Some("It ships today!"), None);
        queued.push(producer.enqueue(&topics::OUTBOUND_REQUESTED, &request, None).await?);
    }
    for record in queued.drain(..) {
        record.acknowledged().await?;
    }
    let published = started.elapsed();
    let mut seen = 0u64;
    while seen < requests {
        tokio::time::timeout(Duration::from_secs(60), reader.recv()).await??;
        seen += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "live verdicts: {requests} requests published in {:.1} s; all {seen} verdicts out after {:.1} s = {:.0} verdicts/s",
        published.as_secs_f64(),
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64()
    );
    stop.cancel();
    running.await??;
    Ok(())
}
