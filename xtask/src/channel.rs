//! The `up`, `test`, `broker` and `inbound` commands.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use wa_platform::config::{self, var, var_or};
use wa_platform::topics;
use wa_twilio::signature as twilio_signature;

use crate::broker::{terminate, Broker};

/// The repository root (xtask lives one level below it).
pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask is inside the workspace").to_owned()
}

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    command.current_dir(root());
    command
}

/// A component of the local channel.
struct Component {
    /// Binary and service name.
    name: &'static str,
    /// Its HTTP address.
    addr: &'static str,
    /// Extra environment (defaults the user's environment may override).
    env: Vec<(&'static str, String)>,
}

fn components(bootstrap: &str) -> Vec<Component> {
    let ingress = var("INGRESS_HTTP_ADDR").unwrap_or_else(|| ingress::Config::DEFAULT_HTTP_ADDR.to_owned());
    let sim = twilio_sim::Config::DEFAULT_HTTP_ADDR;
    let with_kafka = |mut env: Vec<(&'static str, String)>| {
        env.push(("KAFKA_BOOTSTRAP_SERVERS", bootstrap.to_owned()));
        env
    };
    vec![
        Component { name: twilio_sim::SERVICE, addr: sim, env: vec![] },
        Component { name: ingress::SERVICE, addr: ingress::Config::DEFAULT_HTTP_ADDR, env: with_kafka(vec![]) },
        Component {
            name: session_window::SERVICE,
            addr: session_window::Config::DEFAULT_HTTP_ADDR,
            env: with_kafka(vec![]),
        },
        Component {
            name: template_approval::SERVICE,
            addr: template_approval::Config::DEFAULT_HTTP_ADDR,
            env: with_kafka(vec![
                ("TWILIO_CONTENT_BASE_URL", var("TWILIO_CONTENT_BASE_URL").unwrap_or_else(|| format!("http://{sim}"))),
                // Locally, Meta's verdicts from the simulator show within seconds.
                ("TEMPLATE_SYNC_INTERVAL_MS", var("TEMPLATE_SYNC_INTERVAL_MS").unwrap_or_else(|| "2000".to_owned())),
            ]),
        },
        Component {
            name: outbound_dispatch::SERVICE,
            addr: outbound_dispatch::Config::DEFAULT_HTTP_ADDR,
            env: with_kafka(vec![
                ("TWILIO_API_BASE_URL", var("TWILIO_API_BASE_URL").unwrap_or_else(|| format!("http://{sim}"))),
                (
                    "DISPATCH_STATUS_CALLBACK_URL",
                    var("DISPATCH_STATUS_CALLBACK_URL").unwrap_or_else(|| format!("http://{ingress}/twilio/status")),
                ),
            ]),
        },
    ]
}

fn spawn_component(target_dir: &Path, component: &Component) -> anyhow::Result<Child> {
    let binary = target_dir.join(component.name);
    let mut child = Command::new(&binary)
        .env("HTTP_ADDR", component.addr)
        .envs(component.env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let name = component.name;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    for stream in [Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>, Box::new(stderr)] {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{name:>18} | {line}");
            }
        });
    }
    Ok(child)
}

async fn wait_ready(addr: &str, name: &str, child: &mut Child) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(response) = client.get(format!("http://{addr}/readyz")).send().await {
            if response.status().is_success() {
                return Ok(());
            }
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!("{name} exited before it was ready ({status})");
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "{name} was not ready on {addr} within 90 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `cargo xtask up`.
pub(crate) async fn up(fresh: bool) -> anyhow::Result<ExitCode> {
    let data_dir = root().join(".local/tansu");
    if fresh && data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)?;
    }
    eprintln!("xtask: building the services");
    let status = cargo()
        .args(["build", "--bins", "-p", "ingress", "-p", "session-window", "-p", "template-approval"])
        .args(["-p", "outbound-dispatch", "-p", "twilio-sim"])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "cargo build failed");
    let mut broker = Broker::start(9092, &data_dir).await?;
    let result = run_channel(&broker).await;
    broker.stop().await;
    result.map(|()| ExitCode::SUCCESS)
}

async fn run_channel(broker: &Broker) -> anyhow::Result<()> {
    wa_platform::kafka::ensure_topics(&broker.kafka(), topics::ALL).await?;
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from).join("debug");
    let components = components(&broker.bootstrap_servers);
    let mut children = Vec::new();
    for component in &components {
        children.push((component.name, spawn_component(&target_dir, component)?));
    }
    let mut ready = Ok(());
    for (component, (name, child)) in components.iter().zip(children.iter_mut()) {
        if let Err(err) = wait_ready(component.addr, name, child).await {
            ready = Err(err);
            break;
        }
    }
    if ready.is_ok() {
        eprintln!(
            "\nxtask: the channel is up.\n  ingress        http://{}  (POST /twilio/inbound, POST /v1/outbound)\n  twilio-sim     http://{}  (GET /sim/messages)\n  broker         {}\n  ops endpoints  /healthz /readyz /metrics on ports 8080-8083 and 8090\nCtrl-C stops everything.\n",
            components[1].addr, components[0].addr, broker.bootstrap_servers
        );
        let exited = async {
            loop {
                for (name, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        return (*name, status);
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => eprintln!("\nxtask: stopping the channel"),
            (name, status) = exited => {
                ready = Err(anyhow::anyhow!("{name} exited unexpectedly ({status})"));
            }
        }
    }
    for (name, child) in children.iter_mut().rev() {
        terminate(child, name, Duration::from_secs(15)).await;
    }
    ready
}

/// `cargo xtask broker`.
pub(crate) async fn broker_only() -> anyhow::Result<ExitCode> {
    let mut broker = Broker::start(9092, &root().join(".local/tansu")).await?;
    let created = wa_platform::kafka::ensure_topics(&broker.kafka(), topics::ALL).await;
    if created.is_ok() {
        eprintln!("xtask: broker ready on {}; Ctrl-C stops it", broker.bootstrap_servers);
        let _ = tokio::signal::ctrl_c().await;
    }
    broker.stop().await;
    created.map(|()| ExitCode::SUCCESS)
}

fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// `cargo xtask test`.
pub(crate) async fn test(cargo_args: Vec<String>) -> anyhow::Result<ExitCode> {
    // Build first, so a cold compile does not run while the broker waits.
    let status = cargo().args(["test", "--workspace", "--no-run"]).status().await?;
    anyhow::ensure!(status.success(), "building the tests failed");
    // The crash test runs outbound-dispatch as a process it can kill.
    let status = cargo().args(["build", "--workspace", "--bins"]).status().await?;
    anyhow::ensure!(status.success(), "building the service binaries failed");
    let data_dir = root().join("target").join(format!("xtask-test-broker-{}", std::process::id()));
    let mut broker = Broker::start(free_port()?, &data_dir).await?;
    let outcome = run_tests(&broker, &cargo_args).await;
    broker.stop().await;
    let passed = matches!(&outcome, Ok((status, _)) if status.success());
    if passed {
        let _ = std::fs::remove_dir_all(&data_dir);
    } else {
        // Kept for diagnosis: the broker's log is in there.
        eprintln!("xtask: tests failed; the broker's data and log stay in {}", data_dir.display());
    }
    let (status, totals) = outcome?;
    println!("tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    let tests_passed = status.success() && totals.passed > 0;
    // A full run (no filter) also fuzzes the webhook parsers for a bounded time.
    let fuzz_seconds = match var("FUZZ_SECONDS") {
        Some(seconds) => seconds.parse().context("FUZZ_SECONDS must be a whole number of seconds")?,
        None => crate::fuzz::DEFAULT_SECONDS,
    };
    let fuzz_passed = if cargo_args.is_empty() && fuzz_seconds > 0 {
        crate::fuzz::run(fuzz_seconds).await? == ExitCode::SUCCESS
    } else {
        true
    };
    let rules_passed = !cargo_args.is_empty() || check_alert_rules().await?;
    let manifests_passed = !cargo_args.is_empty() || check_kubernetes_manifests().await?;
    if !tests_passed {
        // Repeated last, so the end of a long log names what failed and why.
        totals.print_failures();
        println!("tests: {} passed, {} failed, {} skipped", totals.passed, totals.failed, totals.ignored);
    }
    Ok(if tests_passed && fuzz_passed && rules_passed && manifests_passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The deployment checks alone (`cargo xtask check`): alert rules and Kubernetes manifests.
pub(crate) async fn check_deployment() -> anyhow::Result<ExitCode> {
    let rules_passed = check_alert_rules().await?;
    let manifests_passed = check_kubernetes_manifests().await?;
    Ok(if rules_passed && manifests_passed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Checks the alert rules and runs their unit tests with promtool, when it is installed
/// (Debian/Ubuntu: `apt-get install prometheus`; CI installs it). Whether they passed.
async fn check_alert_rules() -> anyhow::Result<bool> {
    let dir = root().join("deploy").join("prometheus");
    // The dashboard's queries, as recording rules promtool can parse.
    let dashboard_rules = root().join("target").join("dashboard-queries.yml");
    std::fs::write(&dashboard_rules, dashboard_queries_as_rules()?)?;
    let dashboard_rules = dashboard_rules.display().to_string();
    let mut passed = true;
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
        ["check", "rules", dashboard_rules.as_str()],
    ] {
        match run_tool("promtool", &args, &dir).await? {
            Some(success) => passed &= success,
            None => {
                return checker_missing(
                    "alert rules not checked: promtool is not installed (Debian/Ubuntu: apt-get install prometheus)",
                )
            }
        }
    }
    println!("alert rules and dashboard queries: {}", if passed { "checked, unit tests passed" } else { "FAILED" });
    Ok(passed)
}

/// Kubernetes versions the manifests are validated against: the oldest the validator's bundled
/// schemas cover that still has every API the manifests use, and the newest.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Renders `deploy/k8s` and `deploy/k8s/strimzi` with `kubectl kustomize` and validates the
/// channel's resources against Kubernetes' schemas offline, strictly (no unknown fields), with
/// `kubernetes-validate` (PyPI; it bundles the schemas). Skipped, and said so, when either tool is
/// missing (CI installs both). The Strimzi topics are rendered here and checked against the topic
/// declaration by `tests/tests/kubernetes.rs`: Kubernetes' schemas do not cover Strimzi's kinds.
async fn check_kubernetes_manifests() -> anyhow::Result<bool> {
    let k8s = root().join("deploy").join("k8s");
    let rendered = root().join("target").join("k8s-rendered.yaml");
    let mut passed = true;
    for dir in [k8s.clone(), k8s.join("strimzi")] {
        let kustomize = Command::new("kubectl").arg("kustomize").arg(&dir).output().await;
        let Some(output) = installed("kubectl", kustomize)? else {
            return checker_missing("Kubernetes manifests not checked: kubectl is not installed (Debian/Ubuntu: apt-get install kubernetes-client)");
        };
        if !output.status.success() {
            eprintln!("kubectl kustomize {}: {}", dir.display(), String::from_utf8_lossy(&output.stderr));
            passed = false;
        } else if dir == k8s {
            std::fs::write(&rendered, &output.stdout)?;
        }
    }
    if passed {
        let rendered = rendered.display().to_string();
        for version in KUBERNETES_VERSIONS {
            let args = ["--strict", "--quiet", "--kubernetes-version", version, rendered.as_str()];
            match run_tool("kubernetes-validate", &args, &k8s).await? {
                Some(success) => passed &= success,
                None => {
                    return checker_missing("Kubernetes manifests rendered, not validated: kubernetes-validate is not installed (pip install kubernetes-validate)");
                }
            }
        }
    }
    println!(
        "kubernetes manifests: {}",
        if passed {
            format!("rendered, valid for Kubernetes {}", KUBERNETES_VERSIONS.join(" and "))
        } else {
            "FAILED".to_owned()
        }
    );
    Ok(passed)
}

/// A checker is not installed: said, and a failure when `XTASK_REQUIRE_CHECKERS` is set (CI).
fn checker_missing(what: &str) -> anyhow::Result<bool> {
    let required = var("XTASK_REQUIRE_CHECKERS").is_some();
    println!("xtask: {what}{}", if required { " (required: XTASK_REQUIRE_CHECKERS is set)" } else { "" });
    Ok(!required)
}

/// Runs `program` with `args` in `dir`: whether it succeeded, or `None` when it is not installed.
async fn run_tool(program: &str, args: &[&str], dir: &Path) -> anyhow::Result<Option<bool>> {
    let status = Command::new(program).args(args).current_dir(dir).status().await;
    Ok(installed(program, status)?.map(|status| status.success()))
}

/// What running `program` gave, or `None` when it is not installed.
fn installed<T>(program: &str, ran: std::io::Result<T>) -> anyhow::Result<Option<T>> {
    match ran {
        Ok(answer) => Ok(Some(answer)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err).with_context(|| format!("running {program}")),
    }
}

/// Every query of `deploy/grafana/wachannel.json` as a recording rule (Grafana's
/// `$__rate_interval` as 5m), so promtool checks that each one parses.
fn dashboard_queries_as_rules() -> anyhow::Result<String> {
    let path = root().join("deploy").join("grafana").join("wachannel.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)
        .with_context(|| format!("{} is not JSON", path.display()))?;
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    let panels = dashboard["panels"].as_array().map(Vec::as_slice).unwrap_or_default();
    for (n, target) in panels.iter().flat_map(|panel| panel["targets"].as_array().into_iter().flatten()).enumerate() {
        let expr =
            target["expr"].as_str().context("a dashboard target without expr")?.replace("$__rate_interval", "5m");
        rules.push_str(&format!(
            "      - record: dashboard:query_{n}\n        expr: {}\n",
            serde_json::to_string(&expr)?
        ));
    }
    Ok(rules)
}

/// Test counts summed over every test binary, with the failed tests and their panic messages.
#[derive(Debug, Default)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
    /// The test binary whose output is being read (`Running tests/x.rs (...)`).
    binary: String,
    /// `<binary>: <test>` for every test that failed.
    failed_tests: Vec<String>,
    /// Panic locations and the line that follows each (its message).
    panics: Vec<String>,
    /// Set after a panic line: the next line is its message.
    panic_message_next: bool,
}

impl Totals {
    /// Reads one line of `cargo test` output.
    fn read_line(&mut self, line: &str) {
        const MAX_PANIC_LINES: usize = 40;
        if let Some(running) = line.trim_start().strip_prefix("Running ") {
            self.binary = running.split_whitespace().next().unwrap_or_default().to_owned();
        } else if let Some(test) = line.strip_prefix("test ").and_then(|rest| rest.strip_suffix(" ... FAILED")) {
            self.failed_tests.push(format!("{}: {test}", self.binary));
        } else if line.contains("process didn't exit successfully") && line.contains("(signal: ") {
            // A test binary that crashed (a signal) names no failed test: name the binary.
            let signal = line.rsplit_once("(signal: ").map_or("", |(_, s)| s.trim_end_matches(')'));
            self.failed_tests.push(format!("{}: crashed ({signal})", self.binary));
        } else if self.panic_message_next {
            self.panic_message_next = false;
            if self.panics.len() < MAX_PANIC_LINES {
                self.panics.push(format!("    {}", line.chars().take(400).collect::<String>()));
            }
        } else if line.contains("panicked at ") && self.panics.len() < MAX_PANIC_LINES {
            self.panics.push(line.chars().take(400).collect());
            self.panic_message_next = true;
        }
        self.add_line(line);
    }

    /// Prints the failed tests and the panics seen.
    fn print_failures(&self) {
        if !self.failed_tests.is_empty() {
            println!("failed tests:");
            for test in &self.failed_tests {
                println!("  {test}");
            }
        }
        if !self.panics.is_empty() {
            println!("panics (first {}):", self.panics.len());
            for line in &self.panics {
                println!("  {line}");
            }
        }
    }

    /// Adds a libtest summary line (`test result: ok. 7 passed; 0 failed; 0 ignored; ...`).
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            if let (Some(count), Some(kind)) = (words.next(), words.next()) {
                let Ok(count) = count.parse::<u64>() else {
                    continue;
                };
                match kind {
                    "passed" => self.passed += count,
                    "failed" => self.failed += count,
                    "ignored" => self.ignored += count,
                    _ => {}
                }
            }
        }
    }
}

/// Runs `cargo test` against the broker, echoing its output and summing its counts.
async fn run_tests(broker: &Broker, cargo_args: &[String]) -> anyhow::Result<(std::process::ExitStatus, Totals)> {
    // The readiness test starts (and kills) a tansu of its own.
    let tansu = crate::broker::ensure_tansu().await?;
    let mut child = cargo()
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(cargo_args)
        .env("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap_servers)
        .env("TANSU_BIN", tansu)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // cargo names each test binary on stderr; libtest reports on stdout. Both are read, echoed
    // where they came from, and summed.
    let (sender, mut received) = tokio::sync::mpsc::unbounded_channel::<(bool, String)>();
    tokio::spawn(forward_lines(child.stdout.take().expect("piped"), false, sender.clone()));
    tokio::spawn(forward_lines(child.stderr.take().expect("piped"), true, sender));
    let mut totals = Totals::default();
    while let Some((is_stderr, line)) = received.recv().await {
        if is_stderr {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
        totals.read_line(&line);
    }
    Ok((child.wait().await?, totals))
}

/// Sends each line read to `sender`, tagged with whether it came from stderr.
async fn forward_lines(
    reader: impl tokio::io::AsyncRead + Unpin,
    is_stderr: bool,
    sender: tokio::sync::mpsc::UnboundedSender<(bool, String)>,
) {
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if sender.send((is_stderr, line)).is_err() {
            break;
        }
    }
}

/// `cargo xtask inbound --from ... --body ...`.
pub(crate) async fn inbound(args: &[String]) -> anyhow::Result<ExitCode> {
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let from = flag("--from").context("--from <customer address> is required, e.g. --from whatsapp:+15551234567")?;
    let body = flag("--body").context("--body <text> is required")?;
    let to = flag("--to").unwrap_or_else(|| "whatsapp:+14155238886".to_owned());
    let sid = flag("--sid").unwrap_or_else(|| format!("SM{}", uuid::Uuid::new_v4().simple()));
    let base = flag("--url").unwrap_or_else(|| format!("http://{}", ingress::Config::DEFAULT_HTTP_ADDR));
    let url = format!("{}/twilio/inbound", base.trim_end_matches('/'));
    let account_sid = var_or(&config::TWILIO_ACCOUNT_SID);
    let params: Vec<(String, String)> = [
        ("MessageSid", sid.as_str()),
        ("SmsMessageSid", sid.as_str()),
        ("AccountSid", account_sid.as_str()),
        ("From", from.as_str()),
        ("To", to.as_str()),
        ("Body", body.as_str()),
        ("NumMedia", "0"),
        ("MessageType", "text"),
        ("ProfileName", "Local Customer"),
        ("WaId", from.trim_start_matches("whatsapp:").trim_start_matches('+')),
        ("ApiVersion", "2010-04-01"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let signature = twilio_signature::compute(&var_or(&config::TWILIO_AUTH_TOKEN), &url, &params);
    let response = reqwest::Client::new()
        .post(&url)
        .header(twilio_signature::HEADER, signature)
        .form(&params)
        .send()
        .await
        .with_context(|| format!("posting to {url}; is `cargo xtask up` running?"))?;
    let status = response.status();
    println!("{status} {}", response.text().await.unwrap_or_default());
    println!("MessageSid {sid}");
    Ok(if status.is_success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// `cargo xtask events <topic>`: every record of a topic up to its current end, decoded.
pub(crate) async fn events(topic: Option<&str>) -> anyhow::Result<ExitCode> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Headers as _, Message as _};

    let names: Vec<&str> = topics::ALL.iter().map(|spec| spec.name).collect();
    let Some(topic) = topic else {
        anyhow::bail!("name a topic: {}", names.join(", "));
    };
    let kafka = wa_platform::config::KafkaConfig::from_env()?;
    let full = if names.contains(&topic) { format!("{}{topic}", kafka.topic_prefix) } else { topic.to_owned() };
    // The topic must exist: the reader would otherwise find nothing to read and say so quietly.
    let probe: BaseConsumer = wa_platform::kafka::client_config(&kafka, "xtask-events").create()?;
    let metadata = probe.fetch_metadata(Some(&full), Duration::from_secs(10))?;
    anyhow::ensure!(
        metadata.topics().first().is_some_and(|t| !t.partitions().is_empty()),
        "topic {full} does not exist on {}",
        kafka.bootstrap_servers
    );
    let mut printed = 0;
    let topics = [full.clone()];
    let printing = |message: &rdkafka::message::BorrowedMessage<'_>| {
        let payload = message.payload().unwrap_or_default();
        let mut line = match wa_schemas::decode_to_json(payload) {
            Ok((schema, mut value)) => {
                // A quarantined request's body is Avro bytes; operators want to read it.
                if let Some(bytes) = value.get("body").and_then(|b| b.as_array()) {
                    let raw: Vec<u8> = bytes.iter().filter_map(|b| b.as_u64().map(|b| b as u8)).collect();
                    value["body"] = String::from_utf8_lossy(&raw).into_owned().into();
                }
                serde_json::json!({"schema": schema, "event": value})
            }
            Err(err) => serde_json::json!({"undecodable": err.to_string(), "bytes": payload.len()}),
        };
        line["partition"] = message.partition().into();
        line["offset"] = message.offset().into();
        if let Some(headers) = message.headers() {
            let map: serde_json::Map<String, serde_json::Value> = headers
                .iter()
                .map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned().into()))
                .collect();
            line["headers"] = map.into();
        }
        println!("{line}");
        printed += 1;
    };
    let read = tokio::task::block_in_place(|| {
        wa_platform::kafka::read_to_end(&kafka, "xtask-events", &topics, None, printing, |_| {})
    });
    read?;
    eprintln!("xtask: {printed} records on {full}");
    Ok(ExitCode::SUCCESS)
}

/// `cargo xtask bench <name>`: benchmarks in release mode, printing their figures.
pub(crate) async fn bench(name: Option<&str>) -> anyhow::Result<ExitCode> {
    match name {
        Some("templates") => {}
        // tansu's SQLite engine does all its work on one core and saturates near 500 small
        // acknowledged writes/s here, far below what ingress is asked to take; its in-memory
        // engine speaks the same protocol without that cap (docs/benchmarks.md).
        // BENCH_STORAGE=sqlite://tansu.db measures the SQLite engine instead.
        Some("ingress") => {
            let storage = var("BENCH_STORAGE").unwrap_or_else(|| "memory://tansu/".to_owned());
            return bench_through_broker("bench_ingress", &storage).await;
        }
        Some("dispatch") => {
            let storage = var("BENCH_STORAGE").unwrap_or_else(|| "memory://tansu/".to_owned());
            return bench_through_broker("bench_dispatch", &storage).await;
        }
        Some("sessions") => {
            let storage = var("BENCH_STORAGE").unwrap_or_else(|| "memory://tansu/".to_owned());
            return bench_through_broker("bench_sessions", &storage).await;
        }
        Some("e2e") => {
            // The example starts the services as processes from target/release.
            let status = cargo()
                .args(["build", "--release", "--quiet", "--bins", "-p", "ingress", "-p", "session-window"])
                .args(["-p", "template-approval", "-p", "outbound-dispatch", "-p", "twilio-sim"])
                .status()
                .await?;
            anyhow::ensure!(status.success(), "building the services failed");
            let storage = var("BENCH_STORAGE").unwrap_or_else(|| "memory://tansu/".to_owned());
            return bench_through_broker("bench_e2e", &storage).await;
        }
        _ => anyhow::bail!("name a benchmark: templates, ingress, dispatch, sessions or e2e"),
    }
    eprintln!("xtask: in-process decision rate");
    let status = cargo()
        .args(["run", "--release", "--quiet", "-p", "template-approval", "--example", "bench_authorize"])
        .status()
        .await?;
    anyhow::ensure!(status.success(), "bench_authorize failed");
    eprintln!("xtask: through the broker");
    bench_through_broker("bench_template_pipeline", "sqlite://tansu.db").await
}

/// `cargo xtask chaos`: the chaos run at full size, on a broker of its own (tests/src/chaos.rs).
pub(crate) async fn chaos() -> anyhow::Result<ExitCode> {
    let status = cargo().args(["build", "--quiet", "--workspace", "--bins"]).status().await?;
    anyhow::ensure!(status.success(), "building the service binaries failed");
    // TANSU_BIN picks another tansu build (one with the `postgres` feature, for CHAOS_STORAGE).
    let tansu = match std::env::var_os("TANSU_BIN") {
        Some(tansu) => PathBuf::from(tansu),
        None => crate::broker::ensure_tansu().await?,
    };
    let status = cargo().args(["build", "--quiet", "-p", "e2e-tests", "--example", "chaos"]).status().await?;
    anyhow::ensure!(status.success(), "building the chaos run failed");
    // The run takes long: it starts copies of the binaries, so target/ can be rebuilt meanwhile.
    let debug = root().join("target").join("debug");
    let copies = root().join("target").join(format!("chaos-bin-{}", std::process::id()));
    std::fs::create_dir_all(&copies)?;
    for binary in ["ingress", "session-window", "template-approval", "outbound-dispatch", "twilio-sim"] {
        std::fs::copy(debug.join(binary), copies.join(binary)).with_context(|| format!("copying {binary}"))?;
    }
    let chaos = copies.join("chaos");
    std::fs::copy(debug.join("examples").join("chaos"), &chaos).context("copying the chaos run")?;
    let status = Command::new(&chaos).env("TANSU_BIN", tansu).env("WA_SERVICE_BIN_DIR", &copies).status().await;
    let _ = std::fs::remove_dir_all(&copies);
    Ok(if status?.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Runs an `e2e-tests` example in release mode against a throwaway tansu with `storage`.
async fn bench_through_broker(example: &str, storage: &str) -> anyhow::Result<ExitCode> {
    let status =
        cargo().args(["build", "--release", "--quiet", "-p", "e2e-tests", "--example", example]).status().await?;
    anyhow::ensure!(status.success(), "building {example} failed");
    let data_dir = root().join("target").join(format!("xtask-bench-broker-{}", std::process::id()));
    let mut broker = Broker::start_with_storage(free_port()?, &data_dir, storage).await?;
    let status = cargo()
        .args(["run", "--release", "--quiet", "-p", "e2e-tests", "--example", example])
        .env("KAFKA_BOOTSTRAP_SERVERS", &broker.bootstrap_servers)
        .env("BENCH_BROKER_PID", broker.pid().map(|pid| pid.to_string()).unwrap_or_default())
        .status()
        .await;
    broker.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(if status?.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::Totals;

    #[test]
    fn totals_name_failed_tests_and_their_panics() {
        let mut totals = Totals::default();
        for line in [
            "     Running tests/sessions.rs (target/debug/deps/sessions-0123)",
            "test window_opens ... ok",
            "test window_closes ... FAILED",
            "---- window_closes stdout ----",
            "thread 'window_closes' panicked at tests/tests/sessions.rs:10:5:",
            "window still open",
        ] {
            totals.read_line(line);
        }
        totals.read_line("     Running tests/readiness.rs (target/debug/deps/readiness-01a9)");
        totals.read_line(
            "  process didn't exit successfully: `target/debug/deps/readiness-01a9` (signal: 11, SIGSEGV: invalid memory reference)",
        );
        assert_eq!(
            totals.failed_tests,
            ["tests/sessions.rs: window_closes", "tests/readiness.rs: crashed (11, SIGSEGV: invalid memory reference)"]
        );
        assert_eq!(
            totals.panics,
            ["thread 'window_closes' panicked at tests/tests/sessions.rs:10:5:", "    window still open"]
        );
    }

    #[test]
    fn totals_sum_libtest_summaries() {
        let mut totals = Totals::default();
        totals
            .add_line("test result: ok. 7 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 9.46s");
        totals.add_line(
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.1s",
        );
        totals.add_line("test something ... ok");
        assert_eq!((totals.passed, totals.failed, totals.ignored), (9, 3, 1));
    }
}
