//! docker-compose.yml cannot run on a machine without a Docker engine, so it is kept correct by
//! reading it: every service gets every variable it reads, the broker is Apache Kafka in KRaft
//! mode, and topics are created by the project's own `wa-topics` from the one declaration.

use std::collections::BTreeMap;

use serde_yaml::Value;
use wa_platform::config::EnvVar;

fn compose() -> Value {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("docker-compose.yml exists");
    let mut doc: Value = serde_yaml::from_str(&text).expect("docker-compose.yml is YAML");
    doc.apply_merge().expect("merge keys resolve");
    doc
}

fn service<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["services"].get(name).unwrap_or_else(|| panic!("docker-compose.yml has no service {name}"))
}

fn environment(doc: &Value, name: &str) -> BTreeMap<String, String> {
    let env = service(doc, name).get("environment").unwrap_or_else(|| panic!("{name} has no environment"));
    env.as_mapping()
        .unwrap_or_else(|| panic!("{name}: environment must be a mapping"))
        .iter()
        .map(|(k, v)| {
            let value = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Null => String::new(),
                other => panic!("{name}: unexpected value {other:?}"),
            };
            (k.as_str().unwrap().to_owned(), value)
        })
        .collect()
}

fn command(doc: &Value, name: &str) -> Vec<String> {
    service(doc, name)["command"]
        .as_sequence()
        .unwrap_or_else(|| panic!("{name} has no command"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

fn assert_has_every_variable(doc: &Value, name: &str, vars: &[EnvVar]) {
    let env = environment(doc, name);
    // The broker connection, common to the four services (static membership is a service's
    // own choice: it is in their lists where compose sets it).
    let broker = wa_platform::config::KafkaConfig::ENV
        .iter()
        .filter(|var| name != "twilio-sim" && var.name != wa_platform::config::KAFKA_GROUP_INSTANCE_ID.name);
    for var in vars.iter().chain(broker).chain(wa_platform::telemetry::ENV) {
        assert!(env.contains_key(var.name), "{name} lacks {} ({})", var.name, var.doc);
    }
    assert!(env.contains_key("HTTP_ADDR"), "{name} lacks HTTP_ADDR");
}

#[test]
fn every_service_gets_every_variable_it_reads() {
    let doc = compose();
    assert_has_every_variable(&doc, "ingress", ingress::Config::ENV);
    assert_has_every_variable(&doc, "session-window", session_window::Config::ENV);
    assert_has_every_variable(&doc, "template-approval", template_approval::Config::ENV);
    assert_has_every_variable(&doc, "outbound-dispatch", outbound_dispatch::Config::ENV);
    assert_has_every_variable(&doc, "twilio-sim", twilio_sim::Config::ENV);
    for name in ["ingress", "session-window", "template-approval", "outbound-dispatch", "topics"] {
        assert_eq!(environment(&doc, name)["KAFKA_BOOTSTRAP_SERVERS"], "kafka:9092", "{name}");
    }
    assert!(environment(&doc, "outbound-dispatch")["TWILIO_API_BASE_URL"].contains("twilio-sim:8090"));
}

/// The README's configuration table names exactly the variables the services read: none
/// missing, none that nothing reads.
#[test]
fn the_readme_configuration_table_names_exactly_the_variables_the_services_read() {
    let read: std::collections::BTreeSet<&str> = [
        ingress::Config::ENV,
        session_window::Config::ENV,
        template_approval::Config::ENV,
        outbound_dispatch::Config::ENV,
        twilio_sim::Config::ENV,
        wa_platform::config::KafkaConfig::ENV,
        wa_platform::telemetry::ENV,
    ]
    .into_iter()
    .flatten()
    .map(|var| var.name)
    .chain([wa_platform::config::HTTP_ADDR])
    .collect();
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table = readme.split("## Configuration").nth(1).expect("README has a Configuration section");
    let table = table.split("\n## ").next().unwrap_or_default();
    let documented: std::collections::BTreeSet<&str> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|row| row.split(" | ").next())
        .flat_map(|names| names.split('`').skip(1).step_by(2))
        .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
        .collect();
    let undocumented: Vec<_> = read.difference(&documented).collect();
    let unread: Vec<_> = documented.difference(&read).collect();
    assert!(undocumented.is_empty(), "read but not in README's configuration table: {undocumented:?}");
    assert!(unread.is_empty(), "in README's configuration table but read by no service: {unread:?}");
}

/// The README's layout table names paths that exist, and every crate and top-level directory.
#[test]
fn the_readme_layout_table_matches_the_tree() {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = readme.split("## Layout").nth(1).expect("README has a Layout section");
    let table = table.split("\n## ").next().unwrap_or_default();
    let paths: Vec<std::path::PathBuf> = table
        .lines()
        .filter_map(|line| line.strip_prefix("| "))
        .filter_map(|row| row.split(" | ").next())
        .flat_map(|names| names.split('`').skip(1).step_by(2))
        .map(|name| {
            // `session-window/` after `services/ingress/` is short for `services/session-window/`.
            let path = root.join(name);
            if path.exists() {
                path
            } else {
                root.join("services").join(name)
            }
        })
        .collect();
    for path in &paths {
        assert!(path.exists(), "README's layout names {}, which does not exist", path.display());
    }
    let named = |dir: &std::path::Path| paths.iter().any(|path| path.starts_with(dir));
    let dirs = |parent: &std::path::Path| {
        std::fs::read_dir(parent)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .filter(|path| path.is_dir())
            .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with('.'))
            .filter(|path| !path.ends_with("target"))
            .collect::<Vec<_>>()
    };
    for dir in dirs(root).into_iter().filter(|dir| !dir.ends_with("services")).chain(dirs(&root.join("services"))) {
        assert!(named(&dir), "README's layout does not mention {}", dir.display());
    }
}

#[test]
fn each_service_runs_its_own_binary_from_the_project_image() {
    let doc = compose();
    for name in ["ingress", "session-window", "template-approval", "outbound-dispatch", "twilio-sim"] {
        assert_eq!(command(&doc, name), vec![name.to_owned()]);
        assert_eq!(service(&doc, name)["build"]["dockerfile"].as_str(), Some("deploy/Dockerfile"), "{name}");
    }
    let dockerfile = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/Dockerfile")).unwrap();
    for binary in
        ["ingress", "session-window", "template-approval", "outbound-dispatch", "twilio-sim", "wa-topics", "wactl"]
    {
        assert!(dockerfile.contains(&format!("target/release/{binary}")), "the image lacks {binary}");
    }
}

#[test]
fn the_broker_is_apache_kafka_in_kraft_mode_and_topics_come_from_the_one_declaration() {
    let doc = compose();
    let kafka = service(&doc, "kafka");
    assert!(kafka["image"].as_str().unwrap().starts_with("apache/kafka:"));
    let env = environment(&doc, "kafka");
    assert_eq!(env["KAFKA_PROCESS_ROLES"], "broker,controller");
    assert!(env["KAFKA_ADVERTISED_LISTENERS"].contains("kafka:9092"));
    assert_eq!(env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"], "false", "topics come from wa-topics only");
    assert_eq!(command(&doc, "topics"), vec!["wa-topics"]);
    for name in ["ingress", "session-window", "template-approval", "outbound-dispatch"] {
        let depends = &service(&doc, name)["depends_on"]["topics"]["condition"];
        assert_eq!(depends.as_str(), Some("service_completed_successfully"), "{name} waits for the topics");
    }
}

/// docs/events.md prints the error table operators and CRM developers read: every code the
/// channel tells apart is there with its reason.
#[test]
fn the_documented_error_table_is_the_one_the_code_uses() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events.md");
    let docs = std::fs::read_to_string(path).expect("docs/events.md exists");
    for row in wa_twilio::errors::ERROR_CODES {
        let line = format!("| {} | `{}` |", row.code, row.failure_reason);
        assert!(docs.contains(&line), "docs/events.md lacks {line}");
    }
    let documented = docs
        .lines()
        .filter(|l| l.starts_with("| ") && l.contains("` | ") && l[2..].starts_with(|c: char| c.is_ascii_digit()))
        .count();
    assert_eq!(documented, wa_twilio::errors::ERROR_CODES.len(), "docs/events.md lists codes the code does not");
}

/// Runs a service binary (built by `cargo xtask test`) with `env` and returns its exit status
/// and standard error; it must exit on its own (a configuration error).
fn run_to_exit(binary: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String) {
    let path = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join(binary);
    assert!(path.exists(), "{} is missing: run the tests with `cargo xtask test`", path.display());
    let mut command = std::process::Command::new(path);
    command.env("HTTP_ADDR", "127.0.0.1:0").env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1");
    for (name, value) in env {
        command.env(name, value);
    }
    let output = command.output().unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn settings_out_of_range_stop_the_service_with_the_variable_named() {
    for (binary, name, value) in [
        ("outbound-dispatch", "DISPATCH_SENDER_RATE", "0"),
        ("outbound-dispatch", "DISPATCH_SENDER_RATE", "NaN"),
        ("outbound-dispatch", "DISPATCH_INSTANCES", "0"),
        ("ingress", "INGRESS_MAX_IN_FLIGHT", "0"),
        ("ingress", "KAFKA_FETCH_WAIT_MS", "0"),
        ("session-window", "KAFKA_SECURITY_PROTOCOL", "tls"),
        ("template-approval", "KAFKA_SASL_USERNAME", "wachannel"),
    ] {
        let (status, stderr) = run_to_exit(binary, &[(name, value)]);
        assert!(!status.success(), "{binary} started with {name}={value}");
        assert!(stderr.contains(name), "{binary} with {name}={value} did not name it: {stderr}");
    }
}

/// Off loopback, a service with an API refuses to start open, and the services that use the
/// Twilio auth token refuse the local default (anyone could sign webhooks with it); each error
/// names what to set.
#[test]
fn services_off_loopback_refuse_to_start_without_tokens() {
    let off_loopback = ("HTTP_ADDR", "0.0.0.0:0");
    let real_twilio_token = ("TWILIO_AUTH_TOKEN", "an-account-auth-token");
    for (binary, env, named) in [
        (
            "ingress",
            vec![off_loopback, real_twilio_token],
            vec!["INGRESS_API_TOKENS", "INGRESS_ALLOW_UNAUTHENTICATED=true"],
        ),
        ("ingress", vec![off_loopback, ("INGRESS_API_TOKENS", "crm-token")], vec!["TWILIO_AUTH_TOKEN"]),
        (
            "template-approval",
            vec![off_loopback, real_twilio_token],
            vec!["TEMPLATE_ADMIN_TOKENS", "TEMPLATE_ALLOW_UNAUTHENTICATED=true"],
        ),
        ("session-window", vec![off_loopback], vec!["SESSION_QUERY_TOKENS", "SESSION_ALLOW_UNAUTHENTICATED=true"]),
        ("outbound-dispatch", vec![off_loopback], vec!["TWILIO_AUTH_TOKEN"]),
        ("template-approval", vec![off_loopback, ("TEMPLATE_ADMIN_TOKENS", "admin-token")], vec!["TWILIO_AUTH_TOKEN"]),
    ] {
        let (status, stderr) = run_to_exit(binary, &env);
        assert!(!status.success(), "{binary} started open with {env:?}");
        for name in named {
            assert!(stderr.contains(name), "{binary} with {env:?} did not name {name}: {stderr}");
        }
    }
}
