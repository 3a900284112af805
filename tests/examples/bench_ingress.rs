//! Ingress throughput and latency, through to the broker's acknowledgement, side by side with
//! the ceiling of a bare axum handler that does no work. Run with `cargo xtask bench ingress`
//! (it starts a broker and builds in release mode).
//!
//! Every request is a real-shaped Twilio WhatsApp webhook with a unique `MessageSid`, signed
//! the way Twilio signs it, on keep-alive connections from this same process (the load
//! generator shares the machine's cores with ingress and the broker, as it would on a 2-core
//! box; the bare handler pays the same client cost).
//!
//! Phases, after a short warm-up: an open loop at `BENCH_RATE` requests/s (default 2,000) for
//! `BENCH_SECONDS` (default 10) against each server, with latency measured from each request's
//! scheduled start (so a stall is not hidden by the generator waiting for it); the same rate of
//! ingress's events published straight to a fresh topic, alone and then with two readers like
//! ingress's own (the broker's floor, on a topic of the same size as ingress's); then a closed
//! loop at `BENCH_CONCURRENCY` (default 256) for the ceiling, in `BENCH_ROUNDS` (default 5)
//! alternating rounds so that each of ingress's rounds is compared with the bare handler's
//! beside it. Each phase also reports CPU per request, of this process and of the broker
//! (`BENCH_BROKER_PID`, set by xtask), and the share of the machine's time the hypervisor stole.
//! At the end the inbound topic must hold one record per webhook ingress acknowledged.

/// As in the service binaries.
#[global_allocator]
static ALLOCATOR: wa_platform::Allocator = wa_platform::Allocator;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, StatusCode};
use axum::routing::post;
use axum::Router;
use wa_platform::config::KafkaConfig;
use wa_platform::topics::{self, INBOUND};
use wa_platform::CancellationToken;
use wa_twilio::signature;

const TOKEN: &str = "bench-auth-token";
const BUSINESS: &str = "whatsapp:+14155238886";
const EMPTY_TWIML: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Response/>";

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Builds signed webhooks for one URL, each with a fresh MessageSid.
struct Webhooks {
    url: String,
    counter: AtomicU64,
    run: String,
    /// MessageSids answered 200.
    acknowledged: std::sync::Mutex<Vec<String>>,
}

impl Webhooks {
    fn new(url: String) -> Self {
        Self {
            url,
            counter: AtomicU64::new(0),
            run: uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            acknowledged: std::sync::Mutex::default(),
        }
    }

    /// The next webhook's MessageSid and parameters.
    fn next_params(&self) -> (String, Vec<(String, String)>) {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let sid = format!("SM{}{n:024}", self.run);
        let customer = format!("whatsapp:+1415{}", 2_000_000 + n % 8_000_000);
        let params: Vec<(String, String)> = [
            ("SmsMessageSid", sid.as_str()),
            ("NumMedia", "0"),
            ("ProfileName", "Bench Customer"),
            ("MessageType", "text"),
            ("SmsSid", sid.as_str()),
            ("WaId", &customer[10..]),
            ("SmsStatus", "received"),
            ("Body", "Hello, where is my order? It was due yesterday."),
            ("To", BUSINESS),
            ("NumSegments", "1"),
            ("ReferralNumMedia", "0"),
            ("MessageSid", sid.as_str()),
            ("AccountSid", "AC00000000000000000000000000000000"),
            ("From", customer.as_str()),
            ("ApiVersion", "2010-04-01"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        (sid, params)
    }

    fn next(&self) -> (String, String, String) {
        let (sid, params) = self.next_params();
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(&params).finish();
        let signed = signature::compute(TOKEN, &self.url, &params);
        (sid, body, signed)
    }

    async fn send(&self, client: &reqwest::Client) -> bool {
        let (sid, body, signed) = self.next();
        let response = client
            .post(&self.url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(signature::HEADER, signed)
            .body(body)
            .send()
            .await;
        let ok = response.is_ok_and(|r| r.status() == StatusCode::OK);
        if ok {
            self.acknowledged.lock().expect("acknowledged").push(sid);
        }
        ok
    }
}

/// CPU seconds a process has used (user + system), from `/proc/<pid>/stat`; 0 where that is
/// not readable.
fn cpu_seconds(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may contain spaces).
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name; USER_HZ is 100.
    (ticks(11) + ticks(12)) / 100.0
}

/// The machine's CPU time so far (all cores, in ticks): all of it, and what the hypervisor took
/// for other guests (`steal`), from the `cpu` line of `/proc/stat`.
fn machine_ticks() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).take(8).filter_map(|v| v.parse().ok()).collect();
    (fields.iter().sum(), fields.get(7).copied().unwrap_or(0.0))
}

/// CPU counters at one moment: this process, the broker's process (when `BENCH_BROKER_PID`
/// names it), and the machine.
#[derive(Clone, Copy)]
struct CpuSample {
    process: f64,
    broker: f64,
    machine: (f64, f64),
}

impl CpuSample {
    fn now() -> Self {
        let broker =
            std::env::var("BENCH_BROKER_PID").ok().filter(|pid| !pid.is_empty()).map_or(0.0, |pid| cpu_seconds(&pid));
        Self { process: cpu_seconds("self"), broker, machine: machine_ticks() }
    }

    /// What was used since `before`, per request for `requests`.
    fn since(before: Self, requests: u64) -> CpuUse {
        let now = Self::now();
        let per_request = |seconds: f64| seconds * 1e6 / requests.max(1) as f64;
        let (total, steal) = (now.machine.0 - before.machine.0, now.machine.1 - before.machine.1);
        CpuUse {
            process_us: per_request(now.process - before.process),
            broker_us: per_request(now.broker - before.broker),
            steal_share: if total > 0.0 { steal / total } else { 0.0 },
        }
    }
}

/// CPU used during a phase.
struct CpuUse {
    /// Of this process (load generator and server), µs per request.
    process_us: f64,
    /// Of the broker's process, µs per request (0 when its pid is not known).
    broker_us: f64,
    /// The share of the machine's time the hypervisor gave other guests (steal).
    steal_share: f64,
}

/// What a closed-loop run measured.
struct ClosedLoop {
    rate: f64,
    failed: u64,
    cpu: CpuUse,
}

/// Requests/s with `concurrency` requests always in flight for `length`.
async fn closed_loop(
    webhooks: Arc<Webhooks>,
    client: &reqwest::Client,
    concurrency: u64,
    length: Duration,
) -> ClosedLoop {
    let cpu_before = CpuSample::now();
    let deadline = Instant::now() + length;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (webhooks, client, ok, failed) = (webhooks.clone(), client.clone(), ok.clone(), failed.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let counter = if webhooks.send(&client).await { &ok } else { &failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("worker");
    }
    let done = ok.load(Ordering::Relaxed);
    ClosedLoop {
        rate: done as f64 / started.elapsed().as_secs_f64(),
        failed: failed.load(Ordering::Relaxed),
        cpu: CpuSample::since(cpu_before, done),
    }
}

/// The closed loop against both servers in alternating rounds, so that each of ingress's
/// rounds is compared with the bare handler's just before it: on a shared host whose speed
/// drifts, a ratio of neighbours says more than a ratio of two long runs minutes apart.
struct Rounds {
    bare: Vec<ClosedLoop>,
    ingress: Vec<ClosedLoop>,
}

impl Rounds {
    /// Ingress's rate as a share of the bare handler's, per round, sorted.
    fn shares(&self) -> Vec<f64> {
        let mut shares: Vec<f64> = self.bare.iter().zip(&self.ingress).map(|(b, i)| i.rate / b.rate).collect();
        shares.sort_by(f64::total_cmp);
        shares
    }

    /// The median of `value` over `runs`.
    fn median(runs: &[ClosedLoop], value: impl Fn(&ClosedLoop) -> f64) -> f64 {
        let mut values: Vec<f64> = runs.iter().map(value).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    }
}

/// What an open-loop run measured.
struct OpenLoop {
    achieved: f64,
    failed: u64,
    latencies_us: Vec<u64>,
    cpu: CpuUse,
}

impl OpenLoop {
    fn percentile(&self, p: f64) -> f64 {
        let index = ((self.latencies_us.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_us.get(index).copied().unwrap_or(0) as f64 / 1000.0
    }
}

/// Starts `send` `rate` times a second for `seconds`, each at its scheduled time whatever the
/// others do; `send` answers whether it succeeded.
async fn open_loop<F, Fut>(rate: u64, seconds: u64, send: F) -> OpenLoop
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let total = rate * seconds;
    let cpu_before = CpuSample::now();
    let started = tokio::time::Instant::now();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(bool, u64)>();
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate as f64);
        if due > tokio::time::Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let (sending, sender) = (send(), sender.clone());
        tokio::spawn(async move {
            let ok = sending.await;
            let latency = tokio::time::Instant::now().duration_since(due).as_micros() as u64;
            let _ = sender.send((ok, latency));
        });
    }
    drop(sender);
    let mut latencies_us = Vec::with_capacity(total as usize);
    let mut failed = 0;
    while let Some((ok, latency)) = receiver.recv().await {
        if ok {
            latencies_us.push(latency);
        } else {
            failed += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies_us.sort_unstable();
    OpenLoop {
        achieved: latencies_us.len() as f64 / elapsed,
        failed,
        latencies_us,
        cpu: CpuSample::since(cpu_before, total),
    }
}

/// The MessageSid of every record on the inbound topic, read from the beginning to the end.
async fn sids_on_inbound(kafka: &KafkaConfig) -> anyhow::Result<std::collections::HashSet<String>> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message as _;
    use wa_schemas::Event as _;
    let topic = kafka.topic(&INBOUND);
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("group.id", format!("bench-check-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut highs = Vec::new();
    for partition in 0..INBOUND.partitions {
        let (_, high) = consumer.fetch_watermarks(&topic, partition, Duration::from_secs(30))?;
        highs.push(high);
    }
    let mut assignment = rdkafka::TopicPartitionList::new();
    for partition in 0..INBOUND.partitions {
        assignment.add_partition_offset(&topic, partition, rdkafka::Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut next = vec![0i64; highs.len()];
    let mut sids = std::collections::HashSet::new();
    // Up to the high watermarks, then on until the topic is quiet for 3 s: tansu's in-memory
    // engine can report a high watermark a few records short of what it holds.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let message = match tokio::time::timeout(Duration::from_secs(3), consumer.recv()).await {
            Ok(message) => message?,
            Err(_) if next.iter().zip(&highs).all(|(n, h)| n >= h) => break,
            Err(_) => {
                anyhow::ensure!(Instant::now() < deadline, "{topic} did not deliver up to its high watermarks");
                continue;
            }
        };
        next[message.partition() as usize] = message.offset() + 1;
        let event = wa_schemas::InboundMessageReceived::decode(message.payload().unwrap_or_default())?;
        sids.insert(event.message_sid);
    }
    let beyond: i64 = next.iter().zip(&highs).map(|(n, h)| (n - h).max(0)).sum();
    if beyond > 0 {
        eprintln!("bench: {beyond} records were readable beyond the reported high watermarks");
    }
    Ok(sids)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (seconds, concurrency, rate) =
        (setting("BENCH_SECONDS", 10), setting("BENCH_CONCURRENCY", 256), setting("BENCH_RATE", 2_000));
    let rounds = setting("BENCH_ROUNDS", 5).max(1);
    let kafka = KafkaConfig {
        bootstrap_servers: e2e_tests::bootstrap_servers(),
        topic_prefix: format!("bench{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        group_instance_id: None,
        fetch_wait: wa_platform::config::KafkaConfig::DEFAULT_FETCH_WAIT,
        security: Vec::new(),
    };
    wa_platform::kafka::ensure_topics(&kafka, topics::ALL).await?;
    let stop = CancellationToken::new();

    let bare_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let bare_url = format!("http://{}/twilio/inbound", bare_listener.local_addr()?);
    let bare = Router::new().route(
        "/twilio/inbound",
        post(|| async { (StatusCode::OK, [(header::CONTENT_TYPE, "text/xml")], EMPTY_TWIML) }),
    );
    tokio::spawn(wa_platform::http::serve(bare_listener, bare, stop.clone()));

    let mut config = ingress::Config::new("127.0.0.1:0".parse()?, kafka.clone(), TOKEN);
    config.senders = vec![BUSINESS.to_owned()];
    let bound = ingress::bind(config).await?;
    let ingress_base = format!("http://{}", bound.local_addr());
    let ingress_task = tokio::spawn(bound.run(stop.clone()));
    let client = reqwest::Client::builder().pool_max_idle_per_host(4096).http1_only().build()?;
    while !client.get(format!("{ingress_base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let bare_hooks = Arc::new(Webhooks::new(bare_url));
    let ingress_hooks = Arc::new(Webhooks::new(format!("{ingress_base}/twilio/inbound")));

    eprintln!("bench: warming up");
    closed_loop(bare_hooks.clone(), &client, concurrency, Duration::from_secs(2)).await;
    closed_loop(ingress_hooks.clone(), &client, concurrency, Duration::from_secs(2)).await;

    eprintln!("bench: open loop at {rate}/s, {seconds} s each");
    let send_to = |hooks: &Arc<Webhooks>| {
        let (hooks, client) = (hooks.clone(), client.clone());
        move || {
            let (hooks, client) = (hooks.clone(), client.clone());
            async move { hooks.send(&client).await }
        }
    };
    let bare_open = open_loop(rate, seconds, send_to(&bare_hooks)).await;
    let ingress_open = open_loop(rate, seconds, send_to(&ingress_hooks)).await;
    // The broker's own floor: the events ingress would publish for those webhooks, published
    // straight to a topic of their own with ingress's producer settings, and timed the same way.
    let floor_kafka = KafkaConfig { topic_prefix: format!("{}floor.", kafka.topic_prefix), ..kafka.clone() };
    wa_platform::kafka::ensure_topics(&floor_kafka, &[INBOUND]).await?;
    let producer = wa_platform::kafka::EventProducer::new(&floor_kafka, "bench", Duration::from_secs(30))?;
    let floor_hooks = Arc::new(Webhooks::new(String::new()));
    let publish = || {
        let (_, params) = floor_hooks.next_params();
        let producer = producer.clone();
        async move {
            let event = wa_twilio::inbound::inbound_event(&params, wa_platform::now_millis()).expect("a valid webhook");
            producer.publish(&INBOUND, &event).await.is_ok()
        }
    };
    open_loop(rate, 2, publish).await; // warming up: connections and metadata
    let floor_open = open_loop(rate, seconds, publish).await;
    // The same with two readers of the topic, as ingress has on its own (the dedupe follower
    // and the media keeper, both fetching with ingress's background fetch wait).
    let reading_kafka = KafkaConfig { fetch_wait: ingress::BACKGROUND_FETCH_WAIT, ..floor_kafka.clone() };
    let (stop_reading, mut readers) = (CancellationToken::new(), Vec::new());
    for reader in ["bench-reader-1", "bench-reader-2"] {
        let follower = wa_platform::kafka::TopicFollower::start(&reading_kafka, &INBOUND, reader).await?;
        let stop = stop_reading.clone();
        readers.push(tokio::spawn(async move { follower.run(stop, |_| ()).await }));
    }
    let floor_read_open = open_loop(rate, seconds, publish).await;
    // Stopped before the closed loop, whose broker they would otherwise keep busy.
    stop_reading.cancel();
    for reader in readers {
        reader.await??;
    }

    eprintln!("bench: closed loop, {concurrency} in flight, {seconds} s each in {rounds} alternating rounds");
    let round = Duration::from_secs_f64(seconds as f64 / rounds as f64);
    let mut closed = Rounds { bare: Vec::new(), ingress: Vec::new() };
    for _ in 0..rounds {
        closed.bare.push(closed_loop(bare_hooks.clone(), &client, concurrency, round).await);
        closed.ingress.push(closed_loop(ingress_hooks.clone(), &client, concurrency, round).await);
    }

    stop.cancel();
    ingress_task.await??;

    println!("ingress benchmark: signed WhatsApp webhooks through to broker acknowledgement");
    println!("machine: {} cores; load generator in the same process", std::thread::available_parallelism()?.get());
    println!();
    println!("closed loop ({concurrency} in flight, {seconds} s each, in {rounds} alternating rounds; medians of the rounds):");
    for (name, runs) in [("bare axum handler (ceiling)", &closed.bare), ("ingress", &closed.ingress)] {
        println!(
            "  {name:<28} {:>9.0} requests/s  CPU per request: {:.0} µs this process, {:.0} µs broker  (steal {:.0}%; {} failed)",
            Rounds::median(runs, |r| r.rate),
            Rounds::median(runs, |r| r.cpu.process_us),
            Rounds::median(runs, |r| r.cpu.broker_us),
            100.0 * Rounds::median(runs, |r| r.cpu.steal_share),
            runs.iter().map(|r| r.failed).sum::<u64>(),
        );
    }
    let shares = closed.shares();
    println!(
        "  ingress as a share of the bare handler, round by round: median {:.0}% (from {:.0}% to {:.0}%)",
        100.0 * shares[shares.len() / 2],
        100.0 * shares[0],
        100.0 * shares[shares.len() - 1]
    );
    let machine_us = |runs: &[ClosedLoop]| Rounds::median(runs, |r| r.cpu.process_us + r.cpu.broker_us);
    println!(
        "  by CPU per request (this process + broker, steal excluded): {:.0} µs bare, {:.0} µs ingress = {:.0}%",
        machine_us(&closed.bare),
        machine_us(&closed.ingress),
        100.0 * machine_us(&closed.bare) / machine_us(&closed.ingress)
    );
    println!();
    println!("open loop at {rate}/s ({seconds} s), latency from scheduled start:");
    for (name, run) in [
        ("bare axum handler", &bare_open),
        ("ingress", &ingress_open),
        ("broker alone (its events)", &floor_open),
        ("broker, with two readers", &floor_read_open),
    ] {
        println!(
            "  {name:<28} {:>7.0}/s achieved  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms  ({} failed; steal {:.0}%)",
            run.achieved,
            run.percentile(0.50),
            run.percentile(0.99),
            run.percentile(1.0),
            run.failed,
            100.0 * run.cpu.steal_share
        );
    }
    println!();
    let acknowledged = std::mem::take(&mut *ingress_hooks.acknowledged.lock().expect("acknowledged"));
    let on_topic = sids_on_inbound(&kafka).await?;
    let missing: Vec<&String> = acknowledged.iter().filter(|sid| !on_topic.contains(*sid)).collect();
    println!(
        "webhooks acknowledged 200 by ingress: {}; distinct MessageSids on wa.inbound.v1: {}; acknowledged but missing: {}",
        acknowledged.len(),
        on_topic.len(),
        missing.len()
    );
    anyhow::ensure!(
        missing.is_empty(),
        "acknowledged webhooks are missing from the topic, e.g. {:?}",
        &missing[..missing.len().min(5)]
    );
    Ok(())
}
