//! The local Kafka-protocol broker: tansu, installed with cargo and started on loopback.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::process::{Child, Command};
use wa_platform::config::KafkaConfig;

/// The tansu release the project is tested with.
pub(crate) const TANSU_VERSION: &str = "0.6.0";

/// A broker the channel can use.
pub(crate) struct Broker {
    /// host:port.
    pub(crate) bootstrap_servers: String,
    /// The tansu process, when we started one.
    child: Option<Child>,
}

pub(crate) fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

pub(crate) async fn installed_version(binary: &Path) -> Option<String> {
    let output = Command::new(binary).arg("--version").output().await.ok()?;
    Some(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The tansu binary, installed with `cargo install` when missing or of another version.
pub(crate) async fn ensure_tansu() -> anyhow::Result<PathBuf> {
    let binary = cargo_bin_dir().join("tansu");
    if let Some(version) = installed_version(&binary).await {
        if version.contains(TANSU_VERSION) {
            return Ok(binary);
        }
        eprintln!("xtask: found {version} at {}, want tansu {TANSU_VERSION}; reinstalling", binary.display());
    }
    eprintln!("xtask: installing tansu {TANSU_VERSION} (cargo install, once per machine; takes several minutes)");
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
        .args(["install", "tansu", "--locked", "--version", TANSU_VERSION, "--features", "libsql,dynostore"])
        .status()
        .await
        .context("running cargo install tansu")?;
    anyhow::ensure!(status.success(), "cargo install tansu failed ({status})");
    anyhow::ensure!(installed_version(&binary).await.is_some(), "tansu is not at {} after install", binary.display());
    Ok(binary)
}

impl Broker {
    /// The broker on `KAFKA_BOOTSTRAP_SERVERS`, or a tansu started on `127.0.0.1:port` with its
    /// data in `data_dir`.
    pub(crate) async fn start(port: u16, data_dir: &Path) -> anyhow::Result<Self> {
        Self::start_with_storage(port, data_dir, "sqlite://tansu.db").await
    }

    /// Like [`Broker::start`], with another tansu storage engine (`memory://tansu/` for
    /// benchmarks that measure a service rather than SQLite's single writer).
    pub(crate) async fn start_with_storage(port: u16, data_dir: &Path, storage: &str) -> anyhow::Result<Self> {
        if let Some(servers) = wa_platform::config::var("KAFKA_BOOTSTRAP_SERVERS") {
            eprintln!("xtask: using the broker at {servers} (KAFKA_BOOTSTRAP_SERVERS)");
            let broker = Self { bootstrap_servers: servers, child: None };
            wa_platform::kafka::wait_for_broker(&broker.kafka(), Duration::from_secs(30)).await?;
            return Ok(broker);
        }
        let tansu = ensure_tansu().await?;
        std::fs::create_dir_all(data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize()?;
        let log_path = data_dir.join("tansu.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let listener = format!("tcp://127.0.0.1:{port}");
        let child = Command::new(&tansu)
            .arg("broker")
            .args(["--listener-url", &listener, "--advertised-listener-url", &listener])
            .args(["--storage-engine", storage])
            .current_dir(&data_dir)
            .env("RUST_LOG", std::env::var("TANSU_LOG").unwrap_or_else(|_| "warn".to_owned()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", tansu.display()))?;
        let mut broker = Self { bootstrap_servers: format!("127.0.0.1:{port}"), child: Some(child) };
        let kafka = broker.kafka();
        let waited = tokio::select! {
            waited = wa_platform::kafka::wait_for_broker(&kafka, Duration::from_secs(60)) => waited,
            status = broker.child.as_mut().expect("started").wait() => {
                Err(anyhow::anyhow!("tansu exited at start ({})", status?))
            }
        };
        if let Err(err) = waited {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect();
            broker.stop().await;
            anyhow::bail!("{err:#}\nlast lines of {}:\n{}", log_path.display(), tail.join("\n"));
        }
        eprintln!(
            "xtask: tansu {TANSU_VERSION} answering on {} (data in {})",
            broker.bootstrap_servers,
            data_dir.display()
        );
        Ok(broker)
    }

    /// The broker's process id, when this started it.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Connection settings for the channel's topics (no prefix).
    pub(crate) fn kafka(&self) -> KafkaConfig {
        KafkaConfig {
            bootstrap_servers: self.bootstrap_servers.clone(),
            topic_prefix: wa_platform::config::var_or(&wa_platform::config::WA_TOPIC_PREFIX),
            group_instance_id: None,
            fetch_wait: wa_platform::config::KafkaConfig::DEFAULT_FETCH_WAIT,
            security: Vec::new(),
        }
    }

    /// Stops tansu (SIGTERM, then SIGKILL after 10 s), if we started it.
    pub(crate) async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, "tansu", Duration::from_secs(10)).await;
        }
    }
}

/// Sends SIGTERM and waits up to `grace`, then kills.
pub(crate) async fn terminate(child: &mut Child, name: &str, grace: Duration) {
    if let Some(pid) = child.id() {
        let _ = Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
    }
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(_) => {}
        Err(_) => {
            eprintln!("xtask: {name} did not stop within {grace:?}; killing it");
            let _ = child.kill().await;
        }
    }
}
