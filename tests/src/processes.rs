//! Service binaries and brokers run as processes of their own, for tests that kill them.

use wa_platform::config::KafkaConfig;

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
