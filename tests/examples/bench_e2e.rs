//! The whole channel under an open-loop load: the four services and the simulator as separate
//! processes (release builds), a CRM posting replies (and a share of template sends) to customers
//! who wrote. Prints, per offered rate, the latency from each request's scheduled time to the
//! simulator receiving Twilio's call, the requests ingress shed with 503, and the accounting of
//! every accepted request; before that, the latency from a webhook to its session being visible
//! in session-window's query API.
//!
//! Run with `cargo xtask bench e2e` (it builds the binaries and starts a broker). Settings:
//! `BENCH_RATES` (requests per second, comma-separated; default `100,500,1000`), `BENCH_SECONDS`
//! per rate (default 10), `BENCH_CUSTOMERS` (default 2,000), `BENCH_TEMPLATE_SHARE` (default 0.1).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use e2e_tests::{sim_request_id, Channel};
use wa_platform::topics::{
    OUTBOUND_AUTHORIZED, OUTBOUND_CHECKED, OUTBOUND_DISPATCHED, OUTBOUND_REJECTED, OUTBOUND_REQUESTED,
};
use wa_schemas::{
    conversation_id, OutboundAuthorized, OutboundDispatched, OutboundRejected, OutboundRequested, OutboundWindowChecked,
};

const SENDERS: usize = 20;
const ACCOUNT: &str = "AC00000000000000000000000000000000";
const TOKEN: &str = "bench-auth-token";
const TEMPLATE: &str = "order_update";
/// Outcomes that end a request on `wa.outbound.dispatched.v1`.
const TERMINAL: [&str; 3] = ["sent", "failed", "in_doubt"];

fn sender(i: usize) -> String {
    format!("whatsapp:+1628555{:04}", 100 + i % SENDERS)
}

/// A valid North American mobile-style number in area code 415 (exchanges 200 to 999).
fn customer(i: usize) -> String {
    format!("whatsapp:+1415{:03}{:04}", 200 + (i / 10_000) % 800, i % 10_000)
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// p50, p99 and max of `values` (milliseconds), formatted.
fn percentiles(values: &mut [f64]) -> String {
    if values.is_empty() {
        return "no samples".to_owned();
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() as f64 * q).ceil() as usize).clamp(1, values.len()) - 1];
    format!("p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms", at(0.50), at(0.99), at(1.0))
}

/// User and system CPU time a process has used, from `/proc` (Linux), in seconds.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The first process whose command name is `name`.
fn find_process(name: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.filter_map(Result::ok).find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        (std::fs::read_to_string(entry.path().join("comm")).ok()?.trim() == name).then_some(pid)
    })
}

/// One CRM request of the load.
struct Sent {
    scheduled: SystemTime,
    rate: u32,
    status: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rates: Vec<u32> = std::env::var("BENCH_RATES")
        .unwrap_or_else(|_| "100,500,1000".to_owned())
        .split(',')
        .map(|r| r.trim().parse())
        .collect::<Result<_, _>>()?;
    let seconds: u64 = env_or("BENCH_SECONDS", 10);
    let customers: usize = env_or("BENCH_CUSTOMERS", 2_000);
    let template_share: f64 = env_or("BENCH_TEMPLATE_SHARE", 0.1);

    let channel = Channel::topics_only().await;
    let [sim_port, ingress_port, session_port, approval_port, dispatch_port] = [(); 5].map(|()| free_port());
    let url = |port: u16| format!("http://127.0.0.1:{port}");
    let (sim_url, ingress_url, session_url, approval_url) =
        (url(sim_port), url(ingress_port), url(session_port), url(approval_port));
    let twilio = [("TWILIO_ACCOUNT_SID", ACCOUNT.to_owned()), ("TWILIO_AUTH_TOKEN", TOKEN.to_owned())];
    let quiet = ("RUST_LOG", std::env::var("BENCH_LOG").unwrap_or_else(|_| "warn".to_owned()));
    let with = |port: u16, extra: &[(&'static str, String)]| {
        let mut env = vec![("HTTP_ADDR", format!("127.0.0.1:{port}")), quiet.clone()];
        env.extend(twilio.iter().cloned());
        env.extend(extra.iter().cloned());
        env
    };
    let mut processes = vec![
        channel.service_process(
            "twilio-sim",
            &with(sim_port, &[("SIM_INBOUND_WEBHOOK_URL", format!("{ingress_url}/twilio/inbound"))]),
        ),
        channel.service_process("ingress", &with(ingress_port, &[])),
        channel.service_process("session-window", &with(session_port, &[])),
        channel.service_process(
            "template-approval",
            &with(
                approval_port,
                &[("TWILIO_CONTENT_BASE_URL", sim_url.clone()), ("TEMPLATE_SYNC_INTERVAL_MS", "500".to_owned())],
            ),
        ),
        channel.service_process(
            "outbound-dispatch",
            &with(
                dispatch_port,
                &[
                    ("TWILIO_API_BASE_URL", sim_url.clone()),
                    ("DISPATCH_STATUS_CALLBACK_URL", format!("{ingress_url}/twilio/status")),
                ],
            ),
        ),
    ];
    let names = ["twilio-sim", "ingress", "session-window", "template-approval", "outbound-dispatch"];
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).build()?;
    for port in [sim_port, ingress_port, session_port, approval_port, dispatch_port] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while !http.get(format!("{}/readyz", url(port))).send().await.is_ok_and(|r| r.status().is_success()) {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the service on port {port} was not ready");
            for process in &mut processes {
                anyhow::ensure!(process.try_wait()?.is_none(), "a service exited while starting");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!("bench: channel up (5 processes); machine: {} cores", std::thread::available_parallelism()?.get());

    // An approved template for the template share.
    let registered = http
        .post(format!("{approval_url}/v1/templates"))
        .json(&serde_json::json!({
            "name": TEMPLATE, "language": "en", "category": "UTILITY",
            "types": {"twilio/text": {"body": "Hi {{1}}, your order {{2}} ships today."}}, "variables": {"1": "Ana", "2": "1234"}
        }))
        .send()
        .await?;
    anyhow::ensure!(registered.status().is_success(), "template not registered: {}", registered.text().await?);
    let registered: serde_json::Value = registered.json().await?;
    let content_sid = registered["content_sid"].as_str().unwrap_or_default().to_owned();
    http.post(format!("{approval_url}/v1/templates/{TEMPLATE}/en/submit")).send().await?.error_for_status()?;
    http.post(format!("{sim_url}/sim/content/{content_sid}/approval"))
        .json(&serde_json::json!({"status": "approved"}))
        .send()
        .await?
        .error_for_status()?;
    loop {
        let template: serde_json::Value =
            http.get(format!("{approval_url}/v1/templates/{TEMPLATE}/en")).send().await?.json().await?;
        if template["status"] == "approved" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Customers write; every tenth webhook's session is polled until visible.
    eprintln!("bench: {customers} customers write (200/s); every tenth session is polled in the query API");
    let started = tokio::time::Instant::now();
    let mut writes = Vec::new();
    for i in 0..customers {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / 200.0)).await;
        let (http, sim_url, session_url) = (http.clone(), sim_url.clone(), session_url.clone());
        writes.push(tokio::spawn(async move {
            let (from, to) = (customer(i), sender(i));
            let begun = tokio::time::Instant::now();
            let answer: serde_json::Value = http
                .post(format!("{sim_url}/sim/inbound"))
                .json(&serde_json::json!({"from": from, "to": to, "body": "where is my order?"}))
                .send()
                .await?
                .json()
                .await?;
            anyhow::ensure!(answer["webhook_status"] == 200, "webhook answered {}", answer["webhook_status"]);
            if i % 10 != 0 {
                return Ok(None);
            }
            let path = format!("{session_url}/v1/conversations/{}/session", conversation_id(&to, &from));
            loop {
                if http.get(&path).send().await?.status().is_success() {
                    return Ok(Some(begun.elapsed().as_secs_f64() * 1e3));
                }
                anyhow::ensure!(begun.elapsed() < Duration::from_secs(60), "a session never became visible");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let mut visible = Vec::new();
    for write in writes {
        visible.extend(write.await??);
    }
    println!("webhook to session visible in the query API ({} samples): {}", visible.len(), percentiles(&mut visible));

    // The load: open loop, each request on its own task at its scheduled time.
    let mut sent: HashMap<String, Sent> = HashMap::new();
    for &rate in &rates {
        let total = rate as usize * seconds as usize;
        eprintln!("bench: offering {total} requests at {rate}/s for {seconds} s");
        let started = tokio::time::Instant::now();
        let wall = SystemTime::now();
        let mut requests = Vec::with_capacity(total);
        for i in 0..total {
            let offset = Duration::from_secs_f64(i as f64 / f64::from(rate));
            tokio::time::sleep_until(started + offset).await;
            let c = (i * 7919) % customers;
            let request_id = format!("e2e-{rate}-{i}");
            let templated = (i as f64 * template_share).fract() + template_share >= 1.0;
            let mut body = serde_json::json!({"request_id": request_id, "from": sender(c), "to": customer(c)});
            if templated {
                body["template"] = serde_json::json!({"name": TEMPLATE, "language": "en", "variables": {"1": "Ana", "2": i.to_string()}});
            } else {
                body["body"] = serde_json::json!("Your order is on its way.");
            }
            let (http, ingress_url) = (http.clone(), ingress_url.clone());
            requests.push(tokio::spawn(async move {
                let status = match http.post(format!("{ingress_url}/v1/outbound")).json(&body).send().await {
                    Ok(response) => response.status().as_u16(),
                    Err(_) => 0,
                };
                (request_id, Sent { scheduled: wall + offset, rate, status })
            }));
        }
        for request in requests {
            let (id, request) = request.await?;
            sent.insert(id, request);
        }
    }

    // Every accepted request must end: rejected, or sent, failed or in doubt.
    let accepted: Vec<&String> = sent.iter().filter(|(_, s)| s.status == 202).map(|(id, _)| id).collect();
    eprintln!("bench: waiting for the {} accepted requests to end", accepted.len());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    let (ended, rejected, outcomes, sending_at) = loop {
        let rejected: HashMap<String, String> = channel
            .read_to_end(&OUTBOUND_REJECTED)
            .await
            .iter()
            .map(|r| r.decode::<OutboundRejected>())
            .map(|e| (e.request_id, e.reason))
            .collect();
        let mut outcomes: HashMap<String, Vec<String>> = HashMap::new();
        let mut sending_at: HashMap<String, i64> = HashMap::new();
        for record in channel.read_to_end(&OUTBOUND_DISPATCHED).await {
            let event: OutboundDispatched = record.decode();
            if TERMINAL.contains(&event.outcome.as_str()) {
                outcomes.entry(event.request_id).or_default().push(event.outcome);
            } else if event.outcome == "sending" {
                sending_at.entry(event.request_id).or_insert(event.occurred_at);
            }
        }
        let ended = accepted.iter().filter(|id| rejected.contains_key(**id) || outcomes.contains_key(**id)).count();
        if ended == accepted.len() || tokio::time::Instant::now() > deadline {
            break (ended, rejected, outcomes, sending_at);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let messages: Vec<serde_json::Value> = http.get(format!("{sim_url}/sim/messages")).send().await?.json().await?;
    let mut received: HashMap<String, (usize, DateTime<Utc>)> = HashMap::new();
    for message in &messages {
        let (Some(id), Some(at)) = (sim_request_id(message), message["received_at"].as_str()) else { continue };
        let at: DateTime<Utc> = at.parse()?;
        received.entry(id).and_modify(|(n, _)| *n += 1).or_insert((1, at));
    }
    // Where the CPU went (the machine's cores are shared by all of these).
    let mut cpu: Vec<String> = names
        .iter()
        .zip(&processes)
        .filter_map(|(name, p)| Some(format!("{name} {:.1}", cpu_seconds(p.id()?)?)))
        .collect();
    if let Some(tansu) = find_process("tansu") {
        cpu.push(format!("tansu {:.1}", cpu_seconds(tansu).unwrap_or_default()));
    }
    cpu.push(format!("this load generator {:.1}", cpu_seconds(std::process::id()).unwrap_or_default()));
    for process in &mut processes {
        let _ = process.start_kill();
    }
    // When each hop's service created its event (Unix millis).
    let times = |records: Vec<e2e_tests::RawRecord>, decode: fn(&e2e_tests::RawRecord) -> (String, i64)| {
        records.iter().map(decode).collect::<HashMap<String, i64>>()
    };
    let requested_at = times(channel.read_to_end(&OUTBOUND_REQUESTED).await, |r| {
        let e: OutboundRequested = r.decode();
        (e.request_id, e.occurred_at)
    });
    let checked_at = times(channel.read_to_end(&OUTBOUND_CHECKED).await, |r| {
        let e: OutboundWindowChecked = r.decode();
        (e.request_id, e.occurred_at)
    });
    let authorized_at = times(channel.read_to_end(&OUTBOUND_AUTHORIZED).await, |r| {
        let e: OutboundAuthorized = r.decode();
        (e.request_id, e.occurred_at)
    });

    for &rate in &rates {
        let of_rate: Vec<(&String, &Sent)> = sent.iter().filter(|(_, s)| s.rate == rate).collect();
        let count = |status: u16| of_rate.iter().filter(|(_, s)| s.status == status).count();
        let mut latencies: Vec<f64> = of_rate
            .iter()
            .filter_map(|(id, s)| {
                let (_, at) = received.get(*id)?;
                let scheduled: DateTime<Utc> = s.scheduled.into();
                Some((*at - scheduled).num_microseconds()? as f64 / 1e3)
            })
            .collect();
        let templates_rejected = of_rate.iter().filter(|(id, _)| rejected.contains_key(*id)).count();
        println!(
            "at {rate}/s for {seconds} s: {} offered, {} accepted, {} shed with 503, {} other answers; {} reached the simulator, {} rejected by the rules",
            of_rate.len(),
            count(202),
            count(503),
            of_rate.len() - count(202) - count(503),
            latencies.len(),
            templates_rejected,
        );
        println!("  request scheduled to Twilio call at the simulator: {}", percentiles(&mut latencies));
        // Where the time goes: the median of each hop.
        let median_hop = |from: &dyn Fn(&str, &Sent) -> Option<i64>, to: &dyn Fn(&str) -> Option<i64>| {
            let mut hops: Vec<f64> =
                of_rate.iter().filter_map(|(id, s)| Some((to(id)? - from(id, s)?) as f64)).collect();
            hops.sort_by(f64::total_cmp);
            hops.get(hops.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let scheduled =
            |_: &str, s: &Sent| Some(s.scheduled.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_millis() as i64);
        let sim = |id: &str| received.get(id).map(|(_, at)| at.timestamp_millis());
        println!(
            "  median hops (ms): ingress {:.0}, session-window {:.0}, template-approval {:.0}, dispatch to claim {:.0}, claim to Twilio call {:.0}",
            median_hop(&scheduled, &|id| requested_at.get(id).copied()),
            median_hop(&|id, _| requested_at.get(id).copied(), &|id| checked_at.get(id).copied()),
            median_hop(&|id, _| checked_at.get(id).copied(), &|id| authorized_at.get(id).copied()),
            median_hop(&|id, _| authorized_at.get(id).copied(), &|id| sending_at.get(id).copied()),
            median_hop(&|id, _| sending_at.get(id).copied(), &sim),
        );
    }
    println!("CPU seconds used over the whole run: {}", cpu.join(", "));
    let unpublished: Vec<&&String> = accepted.iter().filter(|id| !requested_at.contains_key(**id)).collect();
    println!(
        "accepted but not read back from wa.outbound.requested.v1: {} {:?}",
        unpublished.len(),
        unpublished.iter().take(5).collect::<Vec<_>>()
    );
    let mut written = Vec::new();
    let mut total = 0;
    for spec in wa_platform::topics::ALL {
        let count = channel.read_to_end(spec).await.len();
        total += count;
        if count > 0 {
            written.push(format!("{} {count}", spec.name));
        }
    }
    println!("records written: {total} ({})", written.join(", "));
    let twice = received.values().filter(|(n, _)| *n > 1).count();
    let mut by_outcome: HashMap<&str, usize> = HashMap::new();
    for list in outcomes.values() {
        for outcome in list {
            *by_outcome.entry(outcome.as_str()).or_default() += 1;
        }
    }
    println!(
        "accounting: {} accepted, {ended} ended ({} rejected, outcomes {by_outcome:?}); {} never ended; {twice} reached the simulator more than once",
        accepted.len(),
        accepted.iter().filter(|id| rejected.contains_key(**id)).count(),
        accepted.len() - ended,
    );
    anyhow::ensure!(ended == accepted.len() && twice == 0, "requests were lost or sent twice");
    Ok(())
}
