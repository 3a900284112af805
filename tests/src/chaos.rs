//! The chaos run: the whole channel as processes on a broker of its own, customers writing and
//! agents answering, while services and the broker are SIGKILLed and restarted at random
//! moments and the simulator throttles and fails a share of Twilio calls. Afterwards it checks
//! the channel's promises and reports what happened as figures.
//!
//! Used by `tests/tests/chaos.rs` (a short run in `cargo xtask test`) and `cargo xtask chaos`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use tokio::process::Child;
use wa_platform::config::KafkaConfig;
use wa_platform::topics::{DEAD_LETTER, INBOUND, OUTBOUND_DISPATCHED, OUTBOUND_REJECTED};
use wa_platform::CancellationToken;
use wa_schemas::{DispatchOutcome, InboundMessageReceived, OutboundDispatched, OutboundRejected};

use crate::{sim_request_id, Channel};

const ACCOUNT: &str = "AC22222222222222222222222222222222";
const TOKEN: &str = "chaos-auth-token";
const TEMPLATE: &str = "order_update";
const SENDERS: usize = 4;

/// How big a run is.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Conversations: each a customer message and one or two replies or templates.
    pub conversations: usize,
    /// Conversations started per second (their customer messages), so the run lasts
    /// `conversations / rate` seconds and the kills fall among them.
    pub rate: f64,
    /// Conversations in progress at once, at most.
    pub concurrency: usize,
    /// A victim is killed every this long, give or take half.
    pub kill_every: Duration,
}

/// What the run saw, as figures, and the promises it found broken.
#[derive(Debug, Default)]
pub struct Report {
    /// Kills per victim.
    pub kills: BTreeMap<&'static str, usize>,
    /// Processes that exited on their own (a service whose broker did not answer within its
    /// start-up limit exits), restarted as an orchestrator would; a panic is a broken promise.
    pub exits: BTreeMap<&'static str, usize>,
    /// Seconds from each restart to the victim being ready again (the broker: to ingress ready).
    pub recoveries: Vec<f64>,
    /// Webhooks answered 200 (after Twilio-like retries), and the retries they took.
    pub webhooks: usize,
    /// Webhook attempts answered otherwise and retried.
    pub webhook_retries: usize,
    /// Extra copies of webhooks on `wa.inbound.v1` that a later attempt published (another
    /// receive time): a broken promise.
    pub webhooks_published_again: usize,
    /// Extra copies the broker wrote of one publish (the same bytes: its idempotent-producer
    /// check let a retried produce request through), counted and reported.
    pub webhooks_written_twice_by_broker: usize,
    /// CRM requests accepted (202 or 200 duplicate), and the attempts refused and retried.
    pub accepted: usize,
    /// CRM attempts answered 503 or not answered, then retried with the same `request_id`.
    pub request_retries: usize,
    /// Terminal outcomes by kind.
    pub outcomes: BTreeMap<String, usize>,
    /// Messages the simulator accepted.
    pub messages_at_twilio: usize,
    /// Seconds the run took.
    pub seconds: f64,
    /// Broken promises, each said plainly; empty when every promise held.
    pub broken: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut recoveries = self.recoveries.clone();
        recoveries.sort_by(f64::total_cmp);
        let median = recoveries.get(recoveries.len() / 2).copied().unwrap_or_default();
        let max = recoveries.last().copied().unwrap_or_default();
        writeln!(f, "chaos run: {:.0} s", self.seconds)?;
        writeln!(f, "  kills: {:?} ({} in all)", self.kills, self.kills.values().sum::<usize>())?;
        writeln!(f, "  time to ready after a restart: median {median:.1} s, max {max:.1} s")?;
        writeln!(f, "  exited on their own and restarted: {:?}", self.exits)?;
        writeln!(
            f,
            "  webhooks answered 200: {} ({} attempts retried; {} published again by a later attempt, {} written twice by the broker)",
            self.webhooks, self.webhook_retries, self.webhooks_published_again, self.webhooks_written_twice_by_broker
        )?;
        writeln!(f, "  CRM requests accepted: {} ({} attempts retried)", self.accepted, self.request_retries)?;
        writeln!(f, "  terminal outcomes: {:?}; messages at Twilio: {}", self.outcomes, self.messages_at_twilio)?;
        if self.broken.is_empty() {
            write!(f, "  every promise held")
        } else {
            write!(f, "  BROKEN: {}", self.broken.join("; "))
        }
    }
}

/// One process of the run, restartable on the same port with the same environment.
struct Component {
    name: &'static str,
    binary: &'static str,
    port: u16,
    env: Vec<(&'static str, String)>,
    child: Option<Child>,
}

/// When each process that exited on its own is started again: 1, 2, 4 ... up to 32 s after
/// its exit, the wait doubling with each exit.
#[derive(Default)]
struct Restarts {
    /// Exits so far, and when the one being waited out restarts.
    by_name: HashMap<&'static str, (u32, Option<Instant>)>,
}

impl Restarts {
    /// Notes that `name` is found exited; true the first time for this exit.
    fn exited(&mut self, name: &'static str) -> bool {
        let (exits, restart_at) = self.by_name.entry(name).or_default();
        if restart_at.is_some() {
            return false;
        }
        *exits += 1;
        *restart_at = Some(Instant::now() + Duration::from_secs(1 << (*exits - 1).min(5)));
        true
    }

    /// Whether `name`'s wait is over (it is then started again).
    fn due(&mut self, name: &'static str) -> bool {
        let (_, restart_at) = self.by_name.entry(name).or_default();
        if restart_at.is_some_and(|at| Instant::now() >= at) {
            *restart_at = None;
            return true;
        }
        false
    }
}

/// A broker of the caller's own: tansu with SQLite storage (and its log) in `dir`, so its data
/// outlives a SIGKILL, as a real broker's would. `CHAOS_STORAGE` names another engine whose
/// data outlives the broker process (a `postgres://` URL, with a tansu built with its
/// `postgres` feature as `TANSU_BIN`).
pub fn start_broker(port: u16, dir: &std::path::Path) -> Child {
    let listener = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("tansu.log")).expect("broker log");
    let storage = std::env::var("CHAOS_STORAGE").unwrap_or_else(|_| "sqlite://tansu.db".to_owned());
    tokio::process::Command::new(crate::tansu_binary())
        .arg("broker")
        .args(["--listener-url", &listener, "--advertised-listener-url", &listener])
        .args(["--storage-engine", &storage])
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("broker log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|err| panic!("tansu at {} does not start: {err}", crate::tansu_binary().display()))
}

async fn ready(http: &reqwest::Client, port: u16, within: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        if http.get(format!("http://127.0.0.1:{port}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// The business senders: valid San Francisco numbers (no 555 exchange, which strict validators
/// refuse).
fn sender(i: usize) -> String {
    format!("whatsapp:+1415{:03}8886", 300 + i % SENDERS)
}

fn customer(i: usize) -> String {
    format!("whatsapp:+1415{:03}{:04}", 200 + (i / 10_000) % 800, i % 10_000)
}

/// Runs the chaos run with `settings` and reports; `Err` only when the run itself could not
/// be carried out (a broken promise is in the report).
pub async fn run(settings: Settings) -> anyhow::Result<Report> {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("wa-chaos-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let broker_port = crate::free_port();
    let broker = Arc::new(Mutex::new(Some(start_broker(broker_port, &dir))));
    let kafka = KafkaConfig::new(format!("127.0.0.1:{broker_port}"), "chaos.");
    let channel = Channel::topics_on(kafka).await;

    let ports: HashMap<&str, u16> =
        ["twilio-sim", "ingress", "session-a", "session-b", "approval", "dispatch-a", "dispatch-b"]
            .into_iter()
            .map(|name| (name, crate::free_port()))
            .collect();
    let url = |name: &str| format!("http://127.0.0.1:{}", ports[name]);
    let twilio = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("TWILIO_ACCOUNT_SID", ACCOUNT.to_owned()),
            ("TWILIO_AUTH_TOKEN", TOKEN.to_owned()),
            ("RUST_LOG", std::env::var("CHAOS_LOG").unwrap_or_else(|_| "error".to_owned())),
        ];
        env.extend(extra.iter().cloned());
        env
    };
    let dispatch_env = twilio(&[
        ("TWILIO_API_BASE_URL", url("twilio-sim")),
        ("DISPATCH_STATUS_CALLBACK_URL", format!("{}/twilio/status", url("ingress"))),
        ("DISPATCH_INSTANCES", "2".to_owned()),
        ("DISPATCH_SENDER_RATE", "20".to_owned()),
        ("DISPATCH_IN_DOUBT_AFTER_MS", "15000".to_owned()),
        ("DISPATCH_RETRY_DEADLINE_MS", "30000".to_owned()),
    ]);
    let component = |name: &'static str, binary: &'static str, env: Vec<(&'static str, String)>| Component {
        name,
        binary,
        port: ports[name],
        env: [vec![("HTTP_ADDR", format!("127.0.0.1:{}", ports[name]))], env].concat(),
        child: None,
    };
    let mut components = vec![
        component(
            "twilio-sim",
            "twilio-sim",
            twilio(&[("SIM_INBOUND_WEBHOOK_URL", format!("{}/twilio/inbound", url("ingress")))]),
        ),
        component("ingress", "ingress", twilio(&[])),
        component("session-a", "session-window", twilio(&[])),
        component("session-b", "session-window", twilio(&[])),
        component(
            "approval",
            "template-approval",
            twilio(&[("TWILIO_CONTENT_BASE_URL", url("twilio-sim")), ("TEMPLATE_SYNC_INTERVAL_MS", "500".to_owned())]),
        ),
        component("dispatch-a", "outbound-dispatch", dispatch_env.clone()),
        component("dispatch-b", "outbound-dispatch", dispatch_env),
    ];
    let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?;
    for c in &mut components {
        c.child = Some(channel.service_process(c.binary, &c.env));
    }
    for c in &components {
        anyhow::ensure!(ready(&http, c.port, Duration::from_secs(120)).await.is_some(), "{} never ready", c.name);
    }

    // Twilio throttles below dispatch's pace and fails a share of calls, some after creating
    // the message.
    http.patch(format!("{}/sim/behaviour", url("twilio-sim")))
        .json(&serde_json::json!({
            "rate_limit_per_sender": 8,
            "callback_statuses": ["sent", "delivered"],
            "faults": {"messages": {"error_rate": 0.05, "error_status": 503, "error_after_create_rate": 0.02, "drop_rate": 0.01}},
        }))
        .send()
        .await?
        .error_for_status()?;
    let registered: serde_json::Value = http
        .post(format!("{}/v1/templates", url("approval")))
        .json(&serde_json::json!({
            "name": TEMPLATE, "language": "en", "category": "UTILITY",
            "types": {"twilio/text": {"body": "Hi {{1}}, your order {{2}} ships today."}}, "variables": {"1": "Ana", "2": "1234"}
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let content_sid =
        anyhow::Context::context(registered["content_sid"].as_str(), "the registered template has no content_sid")?
            .to_owned();
    http.post(format!("{}/v1/templates/{TEMPLATE}/en/submit", url("approval"))).send().await?.error_for_status()?;
    http.post(format!("{}/sim/content/{content_sid}/approval", url("twilio-sim")))
        .json(&serde_json::json!({"status": "approved"}))
        .send()
        .await?
        .error_for_status()?;
    while http
        .get(format!("{}/v1/templates/{TEMPLATE}/en", url("approval")))
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?["status"]
        != "approved"
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The chaos: kill a victim at a random moment, restart it after a moment, again and again.
    let components = Arc::new(tokio::sync::Mutex::new(components));
    let stop_chaos = CancellationToken::new();
    let report = Arc::new(Mutex::new(Report::default()));
    let chaos = {
        let (components, stop, report, http, dir, broker) =
            (components.clone(), stop_chaos.clone(), report.clone(), http.clone(), dir.clone(), broker.clone());
        let kafka = channel.kafka.clone();
        let ingress_port = ports["ingress"];
        let every = settings.kill_every;
        let victims = ["ingress", "session-a", "session-b", "approval", "dispatch-a", "dispatch-b", "broker"];
        tokio::spawn(async move {
            // Every victim in turn, in a new random order each round.
            let mut order: Vec<&'static str> = Vec::new();
            loop {
                let pause = every.mul_f64(0.5 + fastrand::f64());
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = stop.cancelled() => return,
                }
                if order.is_empty() {
                    order = victims.to_vec();
                    fastrand::shuffle(&mut order);
                }
                let victim = order.pop().expect("a victim");
                let down = Duration::from_millis(300 + fastrand::u64(..1_500));
                let recovered = if victim == "broker" {
                    let child = broker.lock().expect("broker lock").take();
                    if let Some(mut child) = child {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                    tokio::time::sleep(down).await;
                    *broker.lock().expect("broker lock") = Some(start_broker(broker_port, &dir));
                    // Ready again when ingress (which asks the broker) is.
                    tokio::time::sleep(Duration::from_secs(6)).await;
                    ready(&http, ingress_port, Duration::from_secs(120)).await.map(|d| d + Duration::from_secs(6))
                } else {
                    let mut components = components.lock().await;
                    let c = components.iter_mut().find(|c| c.name == victim).expect("victim");
                    if let Some(mut child) = c.child.take() {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                    tokio::time::sleep(down).await;
                    c.child = Some(crate::spawn_service_process(&kafka, c.binary, &c.env));
                    let port = c.port;
                    drop(components);
                    ready(&http, port, Duration::from_secs(120)).await
                };
                let mut report = report.lock().expect("report lock");
                *report.kills.entry(victim).or_default() += 1;
                match recovered {
                    Some(took) => report.recoveries.push(took.as_secs_f64()),
                    None => report.broken.push(format!("{victim} was not ready within 120 s of its restart")),
                }
            }
        })
    };

    // As an orchestrator would, a process that exits on its own is started again.
    let stop_supervising = CancellationToken::new();
    let supervisor = {
        let (components, stop, report, dir, broker) =
            (components.clone(), stop_supervising.clone(), report.clone(), dir.clone(), broker.clone());
        let kafka = channel.kafka.clone();
        tokio::spawn(async move {
            let noted = |name: &'static str, status: std::process::ExitStatus| {
                let mut report = report.lock().expect("report lock");
                *report.exits.entry(name).or_default() += 1;
                if status.code() == Some(101) {
                    report.broken.push(format!("{name} panicked"));
                }
            };
            // Like an orchestrator's crash-loop back-off: a process that keeps exiting waits
            // 1, 2, 4 ... up to 32 s before it is started again, so restarts do not pile onto a
            // broker that is already slow.
            let mut restarts = Restarts::default();
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = stop.cancelled() => return,
                }
                let exited =
                    broker.lock().expect("broker lock").as_mut().and_then(|child| child.try_wait().ok().flatten());
                if let Some(status) = exited {
                    if restarts.exited("broker") {
                        noted("broker", status);
                    }
                    if restarts.due("broker") {
                        *broker.lock().expect("broker lock") = Some(start_broker(broker_port, &dir));
                    }
                }
                let mut components = components.lock().await;
                for c in components.iter_mut() {
                    let Some(status) = c.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) else {
                        continue;
                    };
                    if restarts.exited(c.name) {
                        noted(c.name, status);
                    }
                    if restarts.due(c.name) {
                        c.child = Some(crate::spawn_service_process(&kafka, c.binary, &c.env));
                    }
                }
            }
        })
    };

    // The load: each conversation a customer message, then one or two replies or templates.
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let accepted: Arc<Mutex<Vec<String>>> = Arc::default();
    let (webhook_retries, request_retries) = (Arc::new(Mutex::new(0usize)), Arc::new(Mutex::new(0usize)));
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let load_started = tokio::time::Instant::now();
    let results: Vec<anyhow::Result<()>> = futures_util::stream::iter(0..settings.conversations)
        .map(|i| {
            let (http, sim, ingress) = (http.clone(), url("twilio-sim"), url("ingress"));
            let (answered, accepted) = (answered.clone(), accepted.clone());
            let (webhook_retries, request_retries) = (webhook_retries.clone(), request_retries.clone());
            async move {
                tokio::time::sleep_until(load_started + Duration::from_secs_f64(i as f64 / settings.rate)).await;
                let (from, to) = (customer(i), sender(i));
                let sid = format!("SM{run_id}{i:024x}");
                // Twilio retries a webhook that was not answered 200, with the same MessageSid.
                let mut attempts = 0;
                loop {
                    let answer: serde_json::Value = http
                        .post(format!("{sim}/sim/inbound"))
                        .json(&serde_json::json!({"from": from, "to": to, "body": "where is my order?", "message_sid": sid}))
                        .send()
                        .await?
                        .json()
                        .await?;
                    if answer["webhook_status"] == 200 {
                        answered.lock().expect("lock").push(sid.clone());
                        break;
                    }
                    attempts += 1;
                    *webhook_retries.lock().expect("lock") += 1;
                    anyhow::ensure!(attempts < 120, "webhook {sid} never answered 200");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                for n in 0..(1 + i % 2) {
                    let request_id = format!("chaos-{run_id}-{i}-{n}");
                    let mut request = serde_json::json!({"request_id": request_id, "from": to, "to": from});
                    if (i + n) % 3 == 0 {
                        request["template"] = serde_json::json!({"name": TEMPLATE, "language": "en", "variables": {"1": "Ana", "2": i.to_string()}});
                    } else {
                        request["body"] = serde_json::json!("Your order is on its way.");
                    }
                    // A CRM retries 503s and lost connections with the same request_id.
                    let mut attempts = 0;
                    loop {
                        let status = http.post(format!("{ingress}/v1/outbound")).json(&request).send().await.map(|r| r.status().as_u16());
                        if matches!(status, Ok(200 | 202)) {
                            accepted.lock().expect("lock").push(request_id);
                            break;
                        }
                        anyhow::ensure!(!matches!(status, Ok(s) if s != 503), "request {request_id} answered {status:?}");
                        attempts += 1;
                        *request_retries.lock().expect("lock") += 1;
                        anyhow::ensure!(attempts < 120, "request {request_id} never accepted");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
                Ok(())
            }
        })
        .buffer_unordered(settings.concurrency)
        .collect()
        .await;
    stop_chaos.cancel();
    chaos.await?;
    for result in results {
        result?;
    }

    // Everything up again (a victim may have been down when the chaos stopped).
    {
        let mut components = components.lock().await;
        if broker.lock().expect("broker lock").is_none() {
            *broker.lock().expect("broker lock") = Some(start_broker(broker_port, &dir));
        }
        for c in components.iter_mut() {
            if c.child.is_none() {
                c.child = Some(channel.service_process(c.binary, &c.env));
            }
        }
        for c in components.iter() {
            anyhow::ensure!(ready(&http, c.port, Duration::from_secs(120)).await.is_some(), "{} not ready", c.name);
        }
    }

    let answered = std::mem::take(&mut *answered.lock().expect("lock"));
    let accepted = std::mem::take(&mut *accepted.lock().expect("lock"));
    let shared_report = report;
    let mut report = std::mem::take(&mut *shared_report.lock().expect("report lock"));
    report.webhooks = answered.len();
    report.accepted = accepted.len();
    report.webhook_retries = *webhook_retries.lock().expect("lock");
    report.request_retries = *request_retries.lock().expect("lock");

    // Every accepted request ends: wait for it (in-doubt sends are settled after 15 s).
    // A long run leaves a backlog behind the last kill: give it time in proportion.
    let deadline =
        Instant::now() + Duration::from_secs(300).max(Duration::from_millis(100) * settings.conversations as u32);
    let outcomes = loop {
        let mut outcomes: HashMap<String, HashSet<String>> = HashMap::new();
        for record in channel.read_to_end(&OUTBOUND_REJECTED).await {
            outcomes.entry(record.decode::<OutboundRejected>().request_id).or_default().insert("rejected".to_owned());
        }
        for record in channel.read_to_end(&OUTBOUND_DISPATCHED).await {
            let event: OutboundDispatched = record.decode();
            if event.kind().is_some_and(DispatchOutcome::is_terminal) {
                outcomes.entry(event.request_id).or_default().insert(event.outcome);
            }
        }
        let open = accepted.iter().filter(|id| !outcomes.contains_key(*id)).count();
        if open == 0 || Instant::now() > deadline {
            if open > 0 {
                report.broken.push(format!("{open} accepted requests never ended"));
            }
            break outcomes;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    for id in &accepted {
        if let Some(kinds) = outcomes.get(id) {
            // A send in doubt that its status callback later showed sent (or failed) ended
            // once, as what it turned out to be.
            let mut kinds = kinds.clone();
            if kinds.len() > 1 && kinds.contains("in_doubt") {
                kinds.remove("in_doubt");
                *report.outcomes.entry("in_doubt_then_resolved".to_owned()).or_default() += 1;
            }
            for kind in &kinds {
                *report.outcomes.entry(kind.clone()).or_default() += 1;
            }
            if kinds.len() > 1 {
                report.broken.push(format!("request {id} ended more than one way: {kinds:?}"));
            }
        }
    }

    // Every webhook answered 200 is on wa.inbound.v1 exactly once. Each attempt stamps its
    // receive time, so a copy with another receive time was published by a later attempt
    // (ingress's failure), and a copy with the same one is the broker writing one publish twice.
    let mut published: HashMap<String, (usize, HashSet<String>, HashSet<i64>)> = HashMap::new();
    for record in channel.read_to_end(&INBOUND).await {
        let event: InboundMessageReceived = record.decode();
        let entry = published.entry(event.message_sid).or_default();
        entry.0 += 1;
        entry.1.insert(event.event_id);
        entry.2.insert(event.occurred_at);
    }
    let missing = answered.iter().filter(|sid| !published.contains_key(*sid)).count();
    let two_ids = published.values().filter(|(_, ids, _)| ids.len() > 1).count();
    report.webhooks_published_again = published.values().map(|(_, _, attempts)| attempts.len() - 1).sum();
    report.webhooks_written_twice_by_broker = published.values().map(|(n, _, attempts)| n - attempts.len()).sum();
    if missing > 0 || two_ids > 0 || report.webhooks_published_again > 0 {
        report.broken.push(format!(
            "webhooks answered 200: {missing} not on wa.inbound.v1, {two_ids} published under two event ids, {} \
             published again by a later attempt",
            report.webhooks_published_again
        ));
    }

    // No request reached Twilio twice.
    let messages: Vec<serde_json::Value> =
        http.get(format!("{}/sim/messages", url("twilio-sim"))).send().await?.json().await?;
    report.messages_at_twilio = messages.len();
    let mut per_request: HashMap<String, usize> = HashMap::new();
    for message in &messages {
        if let Some(id) = sim_request_id(message) {
            *per_request.entry(id).or_default() += 1;
        }
    }
    let sent_twice = per_request.values().filter(|n| **n > 1).count();
    if sent_twice > 0 {
        report.broken.push(format!("{sent_twice} requests reached Twilio more than once"));
    }

    // The projected sessions equal a rebuild from the message topics; no dead letters.
    let keywords = session_window::session::Keywords::defaults();
    let options = session_window::rebuild::Options { since: None, dry_run: true };
    let lead = Duration::from_secs(3600);
    let rebuilt = session_window::rebuild::rebuild(&channel.kafka, &keywords, lead, &options, |_| {}).await?;
    let expected = crate::rebuilt_states(&rebuilt);
    let live = session_window::rebuild::read_snapshots(&channel.kafka).await?;
    if live != expected {
        let differ = expected.iter().filter(|(id, state)| live.get(*id) != Some(*state)).count();
        report.broken.push(format!("{differ} sessions differ from a rebuild"));
    }
    let dead = channel.read_to_end(&DEAD_LETTER).await.len();
    if dead > 0 {
        report.broken.push(format!("{dead} dead letters"));
    }

    // What the supervisor saw while the run drained and was checked.
    stop_supervising.cancel();
    supervisor.await?;
    let late = std::mem::take(&mut *shared_report.lock().expect("report lock"));
    for (name, exits) in late.exits {
        *report.exits.entry(name).or_default() += exits;
    }
    report.broken.extend(late.broken);

    for c in components.lock().await.iter_mut() {
        if let Some(mut child) = c.child.take() {
            let _ = child.start_kill();
        }
    }
    if let Some(mut child) = broker.lock().expect("broker lock").take() {
        let _ = child.start_kill();
    }
    if report.broken.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        eprintln!("chaos: the broker's data and log stay in {}", dir.display());
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}
