//! The end-to-end harness: the whole channel (four services and the Twilio simulator) started
//! in this process on port 0, against the real broker named by `KAFKA_BOOTSTRAP_SERVERS`
//! (`cargo xtask test` starts one). Every channel gets its own topic prefix, so tests run in
//! parallel without seeing each other's records.

pub mod chaos;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use wa_platform::config::KafkaConfig;
use wa_platform::topics::{self, TopicSpec};
use wa_platform::CancellationToken;
use wa_schemas::Event;
use wa_twilio::signature as twilio_signature;

/// The business's WhatsApp sender used by tests.
pub const BUSINESS: &str = "whatsapp:+14155238886";
/// The simulator's and ingress's auth token in tests.
pub const AUTH_TOKEN: &str = "e2e-auth-token";
/// The account in tests.
pub const ACCOUNT_SID: &str = "AC11111111111111111111111111111111";
/// The CRM's bearer token on ingress's API in tests.
pub const API_TOKEN: &str = "e2e-crm-token";
/// The session query's bearer token in tests.
pub const SESSION_TOKEN: &str = "e2e-session-token";
/// The admin API token of template-approval in tests.
pub const ADMIN_TOKEN: &str = "e2e-admin-token";
/// Language fallback chains in tests.
pub const FALLBACKS: &str = "pt_BR:pt:en";
/// Messages per second dispatch sends per sender in tests.
pub const DISPATCH_RATE_PER_SENDER: f64 = 10.0;
/// How long a test waits for an event before it fails.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

/// The broker tests run against.
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| {
        panic!("KAFKA_BOOTSTRAP_SERVERS is not set: run the tests with `cargo xtask test`, which starts a broker")
    })
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value.
    pub payload: Vec<u8>,
    /// Headers (last value wins).
    pub headers: HashMap<String, String>,
}

impl RawRecord {
    /// Decodes the value as `E`.
    pub fn decode<E: Event>(&self) -> E {
        E::decode(&self.payload).unwrap_or_else(|err| panic!("record at {} is not decodable: {err}", self.offset))
    }

    /// The trace id of the record's `traceparent` header.
    pub fn trace_id(&self) -> Option<String> {
        let traceparent = self.headers.get("traceparent")?;
        traceparent.split('-').nth(1).map(str::to_owned)
    }
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
        fallbacks: template_approval::authorize::Fallbacks::parse(FALLBACKS).expect("fallbacks"),
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
        Self::start_with(true).await
    }

    /// Like [`Channel::start`] but without outbound-dispatch: the test runs it, for example as
    /// a separate process it can kill ([`Channel::dispatch_process`]).
    pub async fn start_without_dispatch() -> Self {
        Self::start_with(false).await
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

    async fn start_with(in_process_dispatch: bool) -> Self {
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

        let session = session_window::bind(session_window_config(&kafka)).await.expect("session-window binds");
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
        let index = self.tasks.iter().position(|(name, _, _)| *name == ingress::SERVICE).expect("running");
        let (service, stop, task) = self.tasks.remove(index);
        stop.cancel();
        join(service, task).await;
        let ingress = ingress::bind(ingress_config(&self.kafka)).await.expect("ingress binds");
        self.ingress_url = format!("http://{}", ingress.local_addr());
        self.service_urls.insert(ingress::SERVICE, self.ingress_url.clone());
        self.tasks.push(spawn(ingress, &self.shutdown));
        self.wait_until_ready().await;
    }

    /// Changes the simulator's behaviour (`PATCH /sim/behaviour`), e.g.
    /// `{"reorder": true, "duplicate": true}`.
    pub async fn sim_behaviour(&self, patch: serde_json::Value) {
        let response = self
            .http
            .patch(format!("{}/sim/behaviour", self.sim_url))
            .json(&patch)
            .send()
            .await
            .expect("simulator answers");
        assert!(
            response.status().is_success(),
            "simulator refused {patch}: {}",
            response.text().await.unwrap_or_default()
        );
    }

    /// A customer's message sent through the simulator, which posts it to ingress signed, as
    /// Twilio would; returns the MessageSid and ingress's status.
    pub async fn sim_inbound(&self, customer: &str, body: &str) -> (String, u16) {
        let answer =
            self.sim_inbound_request(serde_json::json!({"from": customer, "to": BUSINESS, "body": body})).await;
        (
            answer["message_sid"].as_str().unwrap_or_default().to_owned(),
            answer["webhook_status"].as_u64().unwrap_or(0) as u16,
        )
    }

    /// `POST /sim/inbound` with `request` (media, more parameters, ...), posted to this
    /// channel's ingress; the simulator's whole answer.
    pub async fn sim_inbound_request(&self, mut request: serde_json::Value) -> serde_json::Value {
        request["url"] = format!("{}/twilio/inbound", self.ingress_url).into();
        self.http
            .post(format!("{}/sim/inbound", self.sim_url))
            .json(&request)
            .send()
            .await
            .expect("simulator answers")
            .json()
            .await
            .expect("simulator answers json")
    }

    /// An HTTP client for requests the helpers do not cover.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// A request to template-approval's admin API, with the admin token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let base = &self.service_urls[template_approval::SERVICE];
        self.http.request(method, format!("{base}{path}")).bearer_auth(ADMIN_TOKEN)
    }

    /// Sets a content's WhatsApp approval status in the simulator, as Meta's decision would.
    pub async fn sim_set_approval(&self, content_sid: &str, status: &str) {
        let response = self
            .http
            .post(format!("{}/sim/content/{content_sid}/approval", self.sim_url))
            .json(&serde_json::json!({ "status": status, "rejection_reason": "" }))
            .send()
            .await
            .expect("simulator answers");
        assert!(response.status().is_success(), "simulator refused the status change");
    }

    /// The full name of a topic of this channel.
    pub fn topic(&self, spec: &TopicSpec) -> String {
        self.kafka.topic(spec)
    }

    /// An inbound WhatsApp webhook's parameters, as Twilio posts them.
    pub fn inbound_params(&self, message_sid: &str, customer: &str, body: &str) -> Vec<(String, String)> {
        [
            ("SmsMessageSid", message_sid),
            ("NumMedia", "0"),
            ("ProfileName", "Test Customer"),
            ("MessageType", "text"),
            ("SmsSid", message_sid),
            ("WaId", customer.trim_start_matches("whatsapp:+")),
            ("SmsStatus", "received"),
            ("Body", body),
            ("To", BUSINESS),
            ("NumSegments", "1"),
            ("ReferralNumMedia", "0"),
            ("MessageSid", message_sid),
            ("AccountSid", ACCOUNT_SID),
            ("From", customer),
            ("ApiVersion", "2010-04-01"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// Posts a webhook to ingress with the given signature (`None`: signed correctly).
    pub async fn post_inbound(&self, params: &[(String, String)], signature: Option<&str>) -> reqwest::Response {
        let url = format!("{}/twilio/inbound", self.ingress_url);
        let signature = signature.map_or_else(|| twilio_signature::compute(AUTH_TOKEN, &url, params), str::to_owned);
        self.http
            .post(&url)
            .header(twilio_signature::HEADER, signature)
            .form(params)
            .send()
            .await
            .expect("ingress answers")
    }

    /// Posts a CRM request to `/v1/outbound`.
    pub async fn post_outbound(&self, request: &serde_json::Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/outbound", self.ingress_url))
            .bearer_auth(API_TOKEN)
            .json(request)
            .send()
            .await
            .expect("ingress answers")
    }

    /// Every message the simulator accepted.
    pub async fn sim_messages(&self) -> Vec<serde_json::Value> {
        self.http
            .get(format!("{}/sim/messages", self.sim_url))
            .send()
            .await
            .expect("simulator answers")
            .json()
            .await
            .expect("simulator answers json")
    }

    /// A GET on a component's HTTP port.
    pub async fn get(&self, service: &str, path: &str) -> reqwest::Response {
        let base = self.service_urls.get(service).unwrap_or_else(|| panic!("no service {service}"));
        // The session query needs its token; the ops endpoints ignore it.
        self.http.get(format!("{base}{path}")).bearer_auth(SESSION_TOKEN).send().await.expect("service answers")
    }

    /// Produces raw bytes to a topic of this channel, as a CRM producer or a faulty client would.
    pub async fn produce_raw(&self, spec: &TopicSpec, key: &str, payload: &[u8]) {
        let producer = wa_platform::kafka::EventProducer::new(&self.kafka, "e2e-tests", Duration::from_secs(120))
            .expect("producer");
        let topic = self.topic(spec);
        producer.send_raw(&topic, Some(key.as_bytes()), payload).await.expect("raw record acknowledged");
    }

    /// Publishes an event to a topic of this channel, as a service would.
    pub async fn publish<E: Event>(&self, spec: &TopicSpec, event: &E) {
        let producer = wa_platform::kafka::EventProducer::new(&self.kafka, "e2e-tests", Duration::from_secs(120))
            .expect("producer");
        producer.publish(spec, event).await.expect("event acknowledged");
    }

    /// Reads a topic from the beginning until a record matches `matches`; fails after
    /// [`EVENT_TIMEOUT`].
    pub async fn await_record(&self, spec: &TopicSpec, matches: impl FnMut(&RawRecord) -> bool) -> RawRecord {
        self.await_record_within(spec, EVENT_TIMEOUT, matches).await
    }

    /// [`Channel::await_record`] with its own time limit (after a burst, say, when the broker
    /// may still be catching up).
    pub async fn await_record_within(
        &self,
        spec: &TopicSpec,
        timeout: Duration,
        mut matches: impl FnMut(&RawRecord) -> bool,
    ) -> RawRecord {
        let topic = self.topic(spec);
        let consumer = assign_from_beginning(&self.kafka, &topic).await;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("no matching record on {topic} within {timeout:?}"))
                .expect("consume");
            let record = raw(&message);
            if matches(&record) {
                return record;
            }
        }
    }

    /// The outcome dispatch published for `request_id`: `sent`, `failed` or `in_doubt` (not
    /// the `sending` marker nor later status moves).
    pub async fn dispatch_outcome(&self, request_id: &str) -> wa_schemas::OutboundDispatched {
        self.dispatch_outcome_within(request_id, EVENT_TIMEOUT).await
    }

    /// [`Channel::dispatch_outcome`] with its own time limit.
    pub async fn dispatch_outcome_within(&self, request_id: &str, within: Duration) -> wa_schemas::OutboundDispatched {
        self.await_record_within(&topics::OUTBOUND_DISPATCHED, within, |r| {
            let event: wa_schemas::OutboundDispatched = r.decode();
            event.request_id == request_id && event.kind().is_some_and(wa_schemas::DispatchOutcome::is_terminal)
        })
        .await
        .decode()
    }

    /// Publishes `events` with one producer, all queued at once, and waits for the broker.
    pub async fn publish_all<E: Event>(&self, spec: &TopicSpec, events: &[E]) {
        let producer = wa_platform::kafka::EventProducer::new(&self.kafka, "e2e-tests", Duration::from_secs(120))
            .expect("producer");
        let mut queued = Vec::with_capacity(events.len());
        for event in events {
            queued.push(producer.enqueue(spec, event, None).await.expect("queued"));
        }
        for record in queued {
            record.acknowledged().await.expect("the broker acknowledges");
        }
    }

    /// Waits until `count` distinct events (by event id) on `spec` match `matches`, and returns
    /// them.
    pub async fn await_all<E: Event>(&self, spec: &TopicSpec, count: usize, matches: impl Fn(&E) -> bool) -> Vec<E> {
        let topic = self.topic(spec);
        let consumer = assign_from_beginning(&self.kafka, &topic).await;
        let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
        let mut found: HashMap<String, E> = HashMap::new();
        while found.len() < count {
            let message = tokio::time::timeout_at(deadline, consumer.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!("{} of {count} matching events on {topic} within {EVENT_TIMEOUT:?}", found.len())
                })
                .expect("consume");
            let event: E = raw(&message).decode();
            if matches(&event) {
                found.insert(event.event_id().to_owned(), event);
            }
        }
        found.into_values().collect()
    }

    /// Every record on a topic up to its end as of now.
    /// Fails when the broker delivers nothing for [`EVENT_TIMEOUT`] (a long topic may take
    /// longer as a whole); a broker too busy to answer its metadata is asked again.
    pub async fn read_to_end(&self, spec: &TopicSpec) -> Vec<RawRecord> {
        let started = tokio::time::Instant::now();
        loop {
            match self.try_read_to_end(spec).await {
                Ok(records) => return records,
                Err(err) if started.elapsed() < EVENT_TIMEOUT => {
                    tracing::warn!(topic = %self.topic(spec), error = %err, "reading to the end failed; again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(err) => panic!("{} could not be read to its end: {err:#}", self.topic(spec)),
            }
        }
    }

    async fn try_read_to_end(&self, spec: &TopicSpec) -> anyhow::Result<Vec<RawRecord>> {
        let (kafka, topic) = (self.kafka.clone(), self.topic(spec));
        let read = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = read.clone();
        let mut reader = tokio::task::spawn_blocking(move || {
            let mut records = Vec::new();
            let keep = |m: &rdkafka::message::BorrowedMessage<'_>| {
                records.push(raw(m));
                counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            };
            wa_platform::kafka::read_to_end(&kafka, "e2e-reader", &[topic], None, keep, |_| {}).map(|_| records)
        });
        let mut seen = (0, tokio::time::Instant::now());
        loop {
            match tokio::time::timeout(Duration::from_secs(1), &mut reader).await {
                Ok(done) => return done.expect("reader task"),
                Err(_) => {
                    let now = read.load(std::sync::atomic::Ordering::Relaxed);
                    if now != seen.0 {
                        seen = (now, tokio::time::Instant::now());
                    }
                    assert!(
                        seen.1.elapsed() < EVENT_TIMEOUT,
                        "{} did not deliver up to its high watermarks",
                        self.topic(spec)
                    );
                }
            }
        }
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

fn raw(message: &rdkafka::message::BorrowedMessage<'_>) -> RawRecord {
    let headers = message
        .headers()
        .map(|headers| {
            headers
                .iter()
                .map(|h| {
                    (h.key.to_owned(), h.value.map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default())
                })
                .collect()
        })
        .unwrap_or_default();
    RawRecord {
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().unwrap_or_default().to_vec(),
        headers,
    }
}

async fn watermarks(kafka: &KafkaConfig, topic: &str) -> Vec<i64> {
    let client: Arc<BaseConsumer> =
        Arc::new(wa_platform::kafka::client_config(kafka, "e2e-watermarks").create().expect("client"));
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let timeout = Duration::from_secs(10);
        let metadata = client.fetch_metadata(Some(&topic), timeout).expect("metadata");
        let partitions = metadata.topics()[0].partitions().len() as i32;
        (0..partitions).map(|p| client.fetch_watermarks(&topic, p, timeout).expect("watermarks").1).collect()
    })
    .await
    .expect("watermark lookup")
}

/// A consumer of every partition of `topic` from its beginning, for tests that follow a topic
/// as it grows.
pub async fn follow_from_beginning(kafka: &KafkaConfig, topic: &str) -> StreamConsumer {
    assign_from_beginning(kafka, topic).await
}

async fn assign_from_beginning(kafka: &KafkaConfig, topic: &str) -> StreamConsumer {
    let partitions = watermarks(kafka, topic).await.len() as i32;
    let consumer: StreamConsumer = wa_platform::kafka::client_config(kafka, "e2e-reader")
        .set("group.id", format!("{}e2e-reader-{}", kafka.topic_prefix, uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(topic, partition, Offset::Beginning).expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    consumer
}

/// A customer address no other test uses.
pub fn unique_customer() -> String {
    // A North American number: the area code starts with 2-9.
    let n = uuid::Uuid::new_v4().as_u128();
    format!("whatsapp:+1{}{:09}", 2 + n % 8, (n / 8) % 1_000_000_000)
}

/// A customer's message to [`BUSINESS`] at `at`, as ingress would publish it.
pub fn customer_message(customer: &str, at: i64, body: &str) -> wa_schemas::InboundMessageReceived {
    wa_schemas::InboundMessageReceived {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: at,
        conversation_id: wa_schemas::conversation_id(BUSINESS, customer),
        message_sid: format!("SM{}", uuid::Uuid::new_v4().simple()),
        account_sid: ACCOUNT_SID.to_owned(),
        messaging_service_sid: None,
        from: customer.to_owned(),
        to: BUSINESS.to_owned(),
        body: body.to_owned(),
        ..Default::default()
    }
}

/// An agent's request to `customer`: free-form `body`, or a template.
pub fn outbound_request(
    request_id: &str,
    customer: &str,
    body: Option<&str>,
    template: Option<wa_schemas::TemplateRequest>,
) -> wa_schemas::OutboundRequested {
    wa_schemas::OutboundRequested {
        event_id: uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, request_id.as_bytes()).to_string(),
        occurred_at: wa_platform::now_millis(),
        conversation_id: wa_schemas::conversation_id(BUSINESS, customer),
        request_id: request_id.to_owned(),
        from: BUSINESS.to_owned(),
        to: customer.to_owned(),
        body: body.map(str::to_owned),
        media_urls: Vec::new(),
        template,
        metadata: Default::default(),
    }
}

/// A send to `customer` that Twilio refused with `error_code`, as dispatch would publish it.
pub fn refused_send(customer: &str, at: i64, error_code: i32) -> wa_schemas::OutboundDispatched {
    wa_schemas::OutboundDispatched {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: at,
        conversation_id: wa_schemas::conversation_id(BUSINESS, customer),
        request_id: uuid::Uuid::new_v4().to_string(),
        from: BUSINESS.to_owned(),
        to: customer.to_owned(),
        outcome: "failed".to_owned(),
        message_sid: None,
        twilio_status: None,
        error_code: Some(error_code),
        error_message: Some("refused".to_owned()),
        failure_reason: Some("unsubscribed".to_owned()),
        attempts: 1,
        claim_id: None,
        claimed_by: None,
        metadata: Default::default(),
    }
}

/// A template send from `from` to `to` cleared for dispatch, as template-approval would publish
/// it; `variable` fills its one variable.
pub fn template_authorization(
    request_id: &str,
    from: &str,
    to: &str,
    variable: &str,
) -> wa_schemas::OutboundAuthorized {
    wa_schemas::OutboundAuthorized {
        event_id: uuid::Uuid::new_v4().to_string(),
        occurred_at: wa_platform::now_millis(),
        conversation_id: wa_schemas::conversation_id(from, to),
        request_id: request_id.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        body: None,
        media_urls: vec![],
        window_expires_at: None,
        content_sid: Some("HX00000000000000000000000000000001".to_owned()),
        content_variables: Some(serde_json::json!({ "1": variable }).to_string()),
        template_name: Some("order_update".to_owned()),
        template_language: Some("en".to_owned()),
        preview: None,
        metadata: Default::default(),
    }
}

/// The request id on a message the simulator received (dispatch puts it on the
/// `StatusCallback` URL).
pub fn sim_request_id(message: &serde_json::Value) -> Option<String> {
    let params = message["params"].as_array()?;
    let url = params.iter().find(|p| p[0] == "StatusCallback")?[1].as_str()?;
    twilio_signature::query_param(url, "request_id")
}

/// Starts a service binary (built by `cargo xtask test`, from this executable's target
/// directory) as a child process on `kafka`'s broker and topics, with `env` added. Its output
/// goes to this process's standard error, each line labelled; it is killed when dropped.
pub fn spawn_service_process(kafka: &KafkaConfig, binary: &str, env: &[(&str, String)]) -> tokio::process::Child {
    spawn_logged(kafka, binary, env, None)
}

/// Every line a service process wrote, for tests that read the logs themselves.
pub type CapturedLogs = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// [`spawn_service_process`], keeping each line of its output in `logs` too.
pub fn spawn_service_process_captured(
    kafka: &KafkaConfig,
    binary: &str,
    env: &[(&str, String)],
    logs: &CapturedLogs,
) -> tokio::process::Child {
    spawn_logged(kafka, binary, env, Some(logs.clone()))
}

fn spawn_logged(
    kafka: &KafkaConfig,
    binary: &str,
    env: &[(&str, String)],
    logs: Option<CapturedLogs>,
) -> tokio::process::Child {
    // WA_SERVICE_BIN_DIR: binaries copied aside (`cargo xtask chaos`), so a long run keeps its
    // versions while target/ is rebuilt.
    let path = std::env::var_os("WA_SERVICE_BIN_DIR")
        .map(|dir| std::path::PathBuf::from(dir).join(binary))
        .or_else(|| std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.parent()?.join(binary))))
        .filter(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("target/debug/{binary} is missing: run the tests with `cargo xtask test`, which builds it")
        });
    let mut command = tokio::process::Command::new(path);
    command
        .env("KAFKA_BOOTSTRAP_SERVERS", &kafka.bootstrap_servers)
        .env("WA_TOPIC_PREFIX", &kafka.topic_prefix)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    for (name, value) in env {
        command.env(name, value);
    }
    command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap_or_else(|err| panic!("{binary} does not start: {err}"));
    // Its output goes to the test's output (shown when the test fails), each line prefixed
    // with the process id, so two instances of one service can be told apart.
    let label = format!("{binary}[{}]", child.id().unwrap_or_default());
    for stream in [
        child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let (label, logs) = (label.clone(), logs.clone());
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt as _;
            let mut lines = tokio::io::BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                eprintln!("{label} {line}");
                if let Some(logs) = &logs {
                    logs.lock().expect("logs lock").push(line);
                }
            }
        });
    }
    child
}

/// A TCP port on loopback that nothing listens on now, for a process started with it.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port()
}

/// The tansu binary `cargo xtask test` installed (`TANSU_BIN`), or cargo's default place: for
/// tests that run (and kill) a broker of their own.
pub fn tansu_binary() -> std::path::PathBuf {
    std::env::var_os("TANSU_BIN").map(std::path::PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("CARGO_HOME")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| std::path::PathBuf::from(home).join(".cargo")))
            .expect("HOME or CARGO_HOME")
            .join("bin/tansu")
    })
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
