//! The end-to-end harness: the whole channel (four services and the Twilio simulator) started
//! in this process on port 0, against the real broker named by `KAFKA_BOOTSTRAP_SERVERS`
//! (`cargo xtask test` starts one). Every channel gets its own topic prefix, so tests run in
//! parallel without seeing each other's records.
//!
//! By concern: this file starts and stops the channel; `fixtures` has the test data,
//! `records` reads and writes the topics, `http` drives the channel's HTTP faces, and
//! `processes` runs service binaries and brokers as processes.

pub mod chaos;
mod fixtures;
mod http;
mod processes;
mod records;

pub use fixtures::*;
pub use http::sim_approved_content;
pub use processes::*;
pub use records::*;

use std::collections::HashMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use wa_platform::clock::Clock;
use wa_platform::config::KafkaConfig;
use wa_platform::topics;
use wa_platform::CancellationToken;

/// The broker tests run against.
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!("KAFKA_BOOTSTRAP_SERVERS is not set: run the tests with `cargo xtask test`, which starts a broker")
    })
}

/// A running channel.
pub struct Channel {
    /// Broker and this channel's topic prefix.
    pub kafka: KafkaConfig,
    /// Ingress base URL.
    pub ingress_url: String,
    /// Simulator base URL.
    pub sim_url: String,
    /// Ops base URLs of every component, by service name.
    pub service_urls: HashMap<&'static str, String>,
    http: reqwest::Client,
    shutdown: CancellationToken,
    /// Each component's task and its own stop token (a child of `shutdown`).
    tasks: Vec<(&'static str, CancellationToken, JoinHandle<anyhow::Result<()>>)>,
}

/// Spawns a bound component with its own stop token.
fn spawn<S: wa_platform::service::Service + 'static>(
    bound: wa_platform::service::Bound<S>,
    shutdown: &CancellationToken,
) -> (&'static str, CancellationToken, JoinHandle<anyhow::Result<()>>) {
    let stop = shutdown.child_token();
    (S::NAME, stop.clone(), tokio::spawn(bound.run(stop)))
}

/// template-approval's configuration in tests.
fn template_approval_config(kafka: &KafkaConfig, sim_url: &str) -> template_approval::Config {
    template_approval::Config {
        http_addr: loopback(),
        kafka: kafka.clone(),
        admin_tokens: vec![ADMIN_TOKEN.to_owned()],
        content_base_url: sim_url.to_owned(),
        auth_username: ACCOUNT_SID.to_owned(),
        auth_password: AUTH_TOKEN.to_owned(),
        sync_interval: Duration::from_millis(200),
        // The production defaults: no marketing templates to +1 numbers, a day's cool-down.
        policy: template_approval::authorize::Policy {
            fallbacks: template_approval::authorize::Fallbacks::parse(FALLBACKS).expect("fallbacks"),
            marketing: template_approval::authorize::MarketingRules {
                blocked_prefixes: vec!["+1".to_owned()],
                cooldown_millis: 24 * 3_600_000,
            },
        },
    }
}

/// session-window's configuration in tests: the defaults, with timers looked at every 100 ms.
pub fn session_window_config(kafka: &KafkaConfig) -> session_window::Config {
    let mut config = session_window::Config::new(loopback(), kafka.clone());
    config.timer_interval = Duration::from_millis(100);
    config.query_tokens = vec![SESSION_TOKEN.to_owned()];
    config
}

/// ingress's configuration in tests: one served sender, a CRM token, a small body limit.
pub fn ingress_config(kafka: &KafkaConfig) -> ingress::Config {
    let mut config = ingress::Config::new(loopback(), kafka.clone(), AUTH_TOKEN);
    config.account_sid = ACCOUNT_SID.to_owned();
    config.twilio_credentials = (ACCOUNT_SID.to_owned(), AUTH_TOKEN.to_owned());
    // Each ingress keeps customers' media in a directory of its own.
    config.media_store_url =
        std::env::temp_dir().join(format!("wa-e2e-media-{}", uuid::Uuid::new_v4().simple())).display().to_string();
    config.senders = vec![BUSINESS.to_owned()];
    config.api_tokens = vec![API_TOKEN.to_owned()];
    config.max_body_bytes = 16 * 1024;
    config
}

/// A loopback address with a free port.
pub fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().expect("loopback address")
}

impl Channel {
    /// Creates this channel's topics, starts every component and waits until each is ready.
    pub async fn start() -> Self {
        Self::start_with(true, Clock::system()).await
    }

    /// Like [`Channel::start`] but without outbound-dispatch: the test runs it, for example as
    /// a separate process it can kill ([`Channel::dispatch_process`]).
    pub async fn start_without_dispatch() -> Self {
        Self::start_with(false, Clock::system()).await
    }

    /// This channel's topics on the broker, and no component: the test runs what it needs,
    /// for example as processes ([`Channel::service_process`]).
    pub async fn topics_only() -> Self {
        Self::without_components(Self::create_topics().await)
    }

    /// The channel's topics on the broker `kafka` names (created if missing), and no component.
    pub async fn topics_on(kafka: KafkaConfig) -> Self {
        wa_platform::kafka::wait_for_broker(&kafka, Duration::from_secs(60)).await.expect("broker answers");
        wa_platform::kafka::ensure_topics(&kafka, topics::ALL).await.expect("topics created");
        Self::without_components(kafka)
    }

    fn without_components(kafka: KafkaConfig) -> Self {
        Self {
            kafka,
            ingress_url: String::new(),
            sim_url: String::new(),
            service_urls: HashMap::new(),
            http: reqwest::Client::new(),
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
        }
    }

    async fn create_topics() -> KafkaConfig {
        static TELEMETRY: std::sync::OnceLock<()> = std::sync::OnceLock::new();
        TELEMETRY.get_or_init(|| {
            let guard = wa_platform::telemetry::init_with("e2e-tests", "warn", true).expect("telemetry");
            std::mem::forget(guard);
        });
        let kafka = KafkaConfig {
            bootstrap_servers: bootstrap_servers(),
            topic_prefix: format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            group_instance_id: None,
            fetch_wait: wa_platform::config::KafkaConfig::DEFAULT_FETCH_WAIT,
            security: Vec::new(),
        };
        wa_platform::kafka::wait_for_broker(&kafka, Duration::from_secs(60)).await.expect("broker answers");
        wa_platform::kafka::ensure_topics(&kafka, topics::ALL).await.expect("topics created");
        kafka
    }

    /// Like [`Channel::start`], with session-window deciding windows and notices by `clock`
    /// (a manual one, which the test moves).
    pub async fn start_with_session_clock(clock: Clock) -> Self {
        Self::start_with(true, clock).await
    }

    async fn start_with(in_process_dispatch: bool, session_clock: Clock) -> Self {
        let kafka = Self::create_topics().await;

        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut service_urls = HashMap::new();

        let sim = twilio_sim::bind(twilio_sim::Config {
            http_addr: loopback(),
            account_sid: ACCOUNT_SID.to_owned(),
            auth_token: AUTH_TOKEN.to_owned(),
            // Tests name ingress's URL on each `POST /sim/inbound` (it changes on restart).
            inbound_webhook_url: "http://127.0.0.1:9/unused".to_owned(),
        })
        .await
        .expect("simulator binds");
        let sim_url = format!("http://{}", sim.local_addr());
        service_urls.insert(twilio_sim::SERVICE, sim_url.clone());
        tasks.push(spawn(sim, &shutdown));

        let ingress = ingress::bind(ingress_config(&kafka)).await.expect("ingress binds");
        let ingress_url = format!("http://{}", ingress.local_addr());
        service_urls.insert(ingress::SERVICE, ingress_url.clone());
        tasks.push(spawn(ingress, &shutdown));

        let mut session_config = session_window_config(&kafka);
        session_config.clock = session_clock;
        let session = session_window::bind(session_config).await.expect("session-window binds");
        service_urls.insert(session_window::SERVICE, format!("http://{}", session.local_addr()));
        tasks.push(spawn(session, &shutdown));

        let approval =
            template_approval::bind(template_approval_config(&kafka, &sim_url)).await.expect("template-approval binds");
        service_urls.insert(template_approval::SERVICE, format!("http://{}", approval.local_addr()));
        tasks.push(spawn(approval, &shutdown));

        let channel = Self { kafka, ingress_url, sim_url, service_urls, http: reqwest::Client::new(), shutdown, tasks };
        let mut channel = channel;
        if !in_process_dispatch {
            channel.wait_until_ready().await;
            return channel;
        }
        let Self { kafka, ingress_url, sim_url, service_urls, shutdown, tasks, .. } = &mut channel;
        let dispatch = outbound_dispatch::bind(outbound_dispatch::Config {
            http_addr: loopback(),
            kafka: kafka.clone(),
            twilio_base_url: sim_url.clone(),
            account_sid: ACCOUNT_SID.to_owned(),
            auth_username: ACCOUNT_SID.to_owned(),
            auth_password: AUTH_TOKEN.to_owned(),
            status_callback_url: Some(format!("{ingress_url}/twilio/status")),
            request_timeout: Duration::from_secs(5),
            retry_deadline: Duration::from_secs(20),
            in_doubt_after: Duration::from_secs(2),
            // Slower than production's 80/s, so that pacing shows within a short test.
            rates: outbound_dispatch::rate::Rates {
                per_sender: DISPATCH_RATE_PER_SENDER,
                senders: HashMap::new(),
                account: 0.0,
            },
            instances: 1,
            messaging_service_sid: None,
            instance_id: "e2e-dispatch".to_owned(),
        })
        .await
        .expect("outbound-dispatch binds");
        service_urls.insert(outbound_dispatch::SERVICE, format!("http://{}", dispatch.local_addr()));
        tasks.push(spawn(dispatch, shutdown));
        channel.wait_until_ready().await;
        channel
    }

    /// Starts the `outbound-dispatch` binary (built by `cargo xtask test`) as a child process on
    /// this channel's topics, with `extra` environment variables. Kill it with
    /// `child.start_kill()` (SIGKILL).
    pub fn dispatch_process(&self, extra: &[(&str, String)]) -> tokio::process::Child {
        let mut env = vec![
            ("HTTP_ADDR", "127.0.0.1:0".to_owned()),
            ("TWILIO_API_BASE_URL", self.sim_url.clone()),
            ("TWILIO_ACCOUNT_SID", ACCOUNT_SID.to_owned()),
            ("TWILIO_AUTH_TOKEN", AUTH_TOKEN.to_owned()),
            ("DISPATCH_STATUS_CALLBACK_URL", format!("{}/twilio/status", self.ingress_url)),
            ("RUST_LOG", std::env::var("DISPATCH_LOG").unwrap_or_else(|_| "warn".to_owned())),
        ];
        env.extend(extra.iter().map(|(name, value)| (*name, value.clone())));
        self.service_process("outbound-dispatch", &env)
    }

    /// Starts a service binary (built by `cargo xtask test`) as a child process on this
    /// channel's broker and topics, with `env` added. It is killed when dropped.
    pub fn service_process(&self, binary: &str, env: &[(&str, String)]) -> tokio::process::Child {
        spawn_service_process(&self.kafka, binary, env)
    }

    /// Polls every component's `/readyz` until it answers 200 (each becomes ready once it is
    /// connected and, for session-window, has projected the inbound topic).
    async fn wait_until_ready(&self) {
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        for (service, url) in &self.service_urls {
            loop {
                let ready = self
                    .http
                    .get(format!("{url}/readyz"))
                    .send()
                    .await
                    .is_ok_and(|response| response.status().is_success());
                if ready {
                    break;
                }
                assert!(tokio::time::Instant::now() < deadline, "{service} did not become ready");
                if let Some((_, _, task)) = self.tasks.iter().find(|(name, _, _)| name == service) {
                    assert!(!task.is_finished(), "{service} stopped before it was ready");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    /// Stops every component and checks none of them failed.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for (service, _, task) in self.tasks {
            join(service, task).await;
        }
    }

    /// Stops template-approval, checks it stopped cleanly, and starts a new instance on the
    /// same topics: it must rebuild its templates from `wa.templates.v1`.
    pub async fn restart_template_approval(&mut self) {
        let index = self.tasks.iter().position(|(name, _, _)| *name == template_approval::SERVICE).expect("running");
        let (service, stop, task) = self.tasks.remove(index);
        stop.cancel();
        join(service, task).await;
        let approval = template_approval::bind(template_approval_config(&self.kafka, &self.sim_url))
            .await
            .expect("template-approval binds");
        self.service_urls.insert(template_approval::SERVICE, format!("http://{}", approval.local_addr()));
        self.tasks.push(spawn(approval, &self.shutdown));
        self.wait_until_ready().await;
    }

    /// Stops ingress, checks it stopped cleanly, and starts a new instance on the same topics
    /// (on a new port: `ingress_url` changes). It must know what the old one published.
    pub async fn restart_ingress(&mut self) {
        self.restart_ingress_with(|_| ()).await;
    }

    /// Like [`Channel::restart_ingress`], the new instance's configuration changed by `configure`.
    pub async fn restart_ingress_with(&mut self, configure: impl FnOnce(&mut ingress::Config)) {
        let index = self.tasks.iter().position(|(name, _, _)| *name == ingress::SERVICE).expect("running");
        let (service, stop, task) = self.tasks.remove(index);
        stop.cancel();
        join(service, task).await;
        let mut config = ingress_config(&self.kafka);
        configure(&mut config);
        let ingress = ingress::bind(config).await.expect("ingress binds");
        self.ingress_url = format!("http://{}", ingress.local_addr());
        self.service_urls.insert(ingress::SERVICE, self.ingress_url.clone());
        self.tasks.push(spawn(ingress, &self.shutdown));
        self.wait_until_ready().await;
    }
}

async fn join(service: &str, task: JoinHandle<anyhow::Result<()>>) {
    match tokio::time::timeout(Duration::from_secs(30), task).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(err))) => panic!("{service} failed: {err:#}"),
        Ok(Err(join)) => panic!("{service} panicked: {join}"),
        Err(_) => panic!("{service} did not stop within 30 s of shutdown"),
    }
}

/// The session state a rebuild computed, by conversation id, as snapshots carry it.
pub fn rebuilt_states(
    rebuilt: &session_window::rebuild::Rebuilt,
) -> std::collections::BTreeMap<String, wa_schemas::SessionState> {
    rebuilt
        .stores
        .values()
        .flat_map(|store| store.iter())
        .map(|(id, session)| (id.to_string(), session_window::store::snapshot(id, session)))
        .collect()
}
