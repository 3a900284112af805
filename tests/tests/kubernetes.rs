//! `deploy/k8s` cannot be applied on a machine without a cluster, so it is kept right by reading
//! it (`cargo xtask test` also renders it with kustomize and validates it against Kubernetes'
//! schemas): every service gets every variable it reads, secrets only by reference, probes,
//! limits and a locked-down container everywhere, static membership from the pod name, and the
//! Strimzi topics equal to the one topic declaration.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use serde_yaml::Value;
use wa_platform::config::{EnvVar, KafkaConfig, KAFKA_GROUP_INSTANCE_ID};

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/k8s")
}

/// The resource files a kustomization lists, parsed, after checking that it lists every YAML
/// file of its directory (a file left out would silently not be applied).
fn kustomization(dir: &Path) -> (Value, Vec<Value>) {
    let text = std::fs::read_to_string(dir.join("kustomization.yaml")).expect("kustomization.yaml exists");
    let kustomization: Value = serde_yaml::from_str(&text).expect("kustomization.yaml is YAML");
    let listed: BTreeSet<String> = kustomization["resources"]
        .as_sequence()
        .expect("resources listed")
        .iter()
        .map(|file| file.as_str().unwrap().to_owned())
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".yaml") && name != "kustomization.yaml")
        .collect();
    assert_eq!(listed, present, "{}: kustomization.yaml must list exactly the YAML files there", dir.display());
    let mut resources = Vec::new();
    for file in &listed {
        let text = std::fs::read_to_string(dir.join(file)).unwrap();
        for document in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(document).unwrap_or_else(|err| panic!("{file}: {err}"));
            if !value.is_null() {
                resources.push(value);
            }
        }
    }
    (kustomization, resources)
}

fn channel() -> Vec<Value> {
    kustomization(&k8s_dir()).1
}

fn resource<'a>(resources: &'a [Value], kind: &str, name: &str) -> &'a Value {
    resources
        .iter()
        .find(|r| r["kind"].as_str() == Some(kind) && r["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("deploy/k8s has no {kind} {name}"))
}

fn str_of(value: &Value) -> &str {
    value.as_str().unwrap_or_else(|| panic!("expected a string, found {value:?}"))
}

/// The four services: their workload kind and the variables each reads.
fn services() -> [(&'static str, &'static str, &'static [EnvVar]); 4] {
    [
        ("ingress", "Deployment", ingress::Config::ENV),
        ("session-window", "StatefulSet", session_window::Config::ENV),
        ("template-approval", "StatefulSet", template_approval::Config::ENV),
        ("outbound-dispatch", "StatefulSet", outbound_dispatch::Config::ENV),
    ]
}

fn only_container(pod_spec: &Value) -> &Value {
    let containers = pod_spec["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "one container per pod");
    &containers[0]
}

/// Where each variable of a container comes from: `configmap:<name>`, `secret:<name>/<key>`,
/// `field:<path>` or `value:<literal>`.
fn variable_sources(resources: &[Value], container: &Value) -> BTreeMap<String, String> {
    let mut sources = BTreeMap::new();
    for from in container["envFrom"].as_sequence().into_iter().flatten() {
        let name = str_of(&from["configMapRef"]["name"]);
        let map = resource(resources, "ConfigMap", name);
        for key in map["data"].as_mapping().expect("ConfigMap data").keys() {
            let previous = sources.insert(str_of(key).to_owned(), format!("configmap:{name}"));
            assert!(previous.is_none(), "{} is set by two ConfigMaps", str_of(key));
        }
    }
    for var in container["env"].as_sequence().into_iter().flatten() {
        let name = str_of(&var["name"]).to_owned();
        let source = if let Some(value) = var.get("value") {
            format!("value:{}", str_of(value))
        } else if let Some(secret) = var["valueFrom"].get("secretKeyRef") {
            format!("secret:{}/{}", str_of(&secret["name"]), str_of(&secret["key"]))
        } else if let Some(field) = var["valueFrom"].get("fieldRef") {
            format!("field:{}", str_of(&field["fieldPath"]))
        } else {
            panic!("{name}: unexpected source {var:?}")
        };
        let previous = sources.insert(name.clone(), source);
        assert!(previous.is_none(), "{name} is set twice (env would silently win over a ConfigMap)");
    }
    sources
}

/// A variable that holds a credential, by its name.
fn is_secret(name: &str) -> bool {
    ["TOKEN", "TOKENS", "SECRET", "PASSWORD", "SECRET_ACCESS_KEY", "KEY_ID"].iter().any(|end| name.ends_with(end))
}

#[test]
fn every_service_gets_every_variable_it_reads_and_secrets_only_by_reference() {
    let resources = channel();
    for (name, kind, vars) in services() {
        let workload = resource(&resources, kind, name);
        let container = only_container(&workload["spec"]["template"]["spec"]);
        assert_eq!(container["command"].as_sequence().unwrap(), &[Value::from(name)], "{name} runs its binary");
        let sources = variable_sources(&resources, container);
        let broker = KafkaConfig::ENV.iter().filter(|var| var.name != KAFKA_GROUP_INSTANCE_ID.name);
        for var in vars.iter().chain(broker).chain(wa_platform::telemetry::ENV) {
            assert!(sources.contains_key(var.name), "{name} lacks {} ({})", var.name, var.doc);
        }
        assert_eq!(sources.get("HTTP_ADDR").map(String::as_str), Some("configmap:wachannel-kafka"));
        for (var, source) in &sources {
            if is_secret(var) {
                assert!(source.starts_with("secret:"), "{name}: {var} must come from a Secret, not {source}");
            }
        }
    }
    // No ConfigMap holds a credential, whoever reads it.
    for map in resources.iter().filter(|r| r["kind"].as_str() == Some("ConfigMap")) {
        for key in map["data"].as_mapping().unwrap().keys() {
            assert!(!is_secret(str_of(key)), "ConfigMap {} holds {}", str_of(&map["metadata"]["name"]), str_of(key));
        }
    }
    let job = resource(&resources, "Job", "wa-topics");
    let container = only_container(&job["spec"]["template"]["spec"]);
    assert_eq!(container["command"].as_sequence().unwrap(), &[Value::from("wa-topics")]);
    let sources = variable_sources(&resources, container);
    for var in KafkaConfig::ENV.iter().filter(|var| var.name != KAFKA_GROUP_INSTANCE_ID.name) {
        assert!(sources.contains_key(var.name), "the wa-topics Job lacks {}", var.name);
    }
}

#[test]
fn every_pod_is_probed_bounded_and_locked_down() {
    let resources = channel();
    let workloads = services().map(|(name, kind, _)| resource(&resources, kind, name)).into_iter().chain([resource(
        &resources,
        "Job",
        "wa-topics",
    )]);
    for workload in workloads {
        let name = str_of(&workload["metadata"]["name"]);
        let pod = &workload["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true), "{name} runs as non-root");
        assert_eq!(pod["securityContext"]["seccompProfile"]["type"].as_str(), Some("RuntimeDefault"), "{name}");
        assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false), "{name} needs no API access");
        let container = only_container(pod);
        assert_eq!(str_of(&container["image"]), "wachannel", "{name}: kustomization's images sets the tag");
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"].as_bool(), Some(true), "{name}: read-only root filesystem");
        assert_eq!(security["allowPrivilegeEscalation"].as_bool(), Some(false), "{name}");
        assert_eq!(security["capabilities"]["drop"].as_sequence().unwrap(), &[Value::from("ALL")], "{name}");
        let resources = &container["resources"];
        for (part, what) in [("requests", "cpu"), ("requests", "memory"), ("limits", "memory")] {
            assert!(resources[part].get(what).is_some(), "{name} lacks resources.{part}.{what}");
        }
        if name == "wa-topics" {
            continue;
        }
        // HTTP_ADDR (ConfigMap wachannel-kafka) is 0.0.0.0:8080: the port the probes use.
        let ports = container["ports"].as_sequence().unwrap();
        assert!(ports.iter().any(|p| p["name"].as_str() == Some("http") && p["containerPort"].as_u64() == Some(8080)));
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &container[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{name}: {probe}");
            assert_eq!(get["port"].as_str(), Some("http"), "{name}: {probe}");
        }
        let annotations = &workload["spec"]["template"]["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/path"].as_str(), Some("/metrics"), "{name} is scraped");
    }
}

#[test]
fn static_membership_comes_from_stable_pod_names() {
    let resources = channel();
    for (name, kind, vars) in services() {
        let workload = resource(&resources, kind, name);
        let sources = variable_sources(&resources, only_container(&workload["spec"]["template"]["spec"]));
        if vars.iter().any(|var| var.name == KAFKA_GROUP_INSTANCE_ID.name) {
            // A Deployment's pod gets a new name on every replacement: only a StatefulSet keeps it.
            assert_eq!(kind, "StatefulSet", "{name} uses static membership");
            assert_eq!(
                sources.get(KAFKA_GROUP_INSTANCE_ID.name).map(String::as_str),
                Some("field:metadata.name"),
                "{name}: KAFKA_GROUP_INSTANCE_ID is the pod's name"
            );
            let headless = resource(&resources, "Service", str_of(&workload["spec"]["serviceName"]));
            assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"), "{name}'s serviceName is headless");
        } else {
            assert!(!sources.contains_key(KAFKA_GROUP_INSTANCE_ID.name), "{name} reads no instance id");
        }
    }
    // Session queries are redirected to the owner's own address, the pod's name in the headless
    // Service.
    let session = resource(&resources, "StatefulSet", "session-window");
    let sources = variable_sources(&resources, only_container(&session["spec"]["template"]["spec"]));
    let advertised = &sources["SESSION_ADVERTISED_URL"];
    let headless = str_of(&session["spec"]["serviceName"]);
    assert!(advertised.starts_with("value:http://$(POD_NAME)."), "{advertised}");
    assert!(advertised.contains(&format!(".{headless}.$(POD_NAMESPACE).svc:8080")), "{advertised}");
    assert_eq!(sources["POD_NAME"], "field:metadata.name");
    assert_eq!(sources["POD_NAMESPACE"], "field:metadata.namespace");
}

#[test]
fn dispatch_paces_for_as_many_instances_as_run() {
    let resources = channel();
    let replicas = resource(&resources, "StatefulSet", "outbound-dispatch")["spec"]["replicas"].as_u64().unwrap();
    let config = resource(&resources, "ConfigMap", "outbound-dispatch");
    assert_eq!(str_of(&config["data"]["DISPATCH_INSTANCES"]), replicas.to_string());
}

#[test]
fn every_workload_has_a_disruption_budget_and_the_apis_a_service() {
    let resources = channel();
    for (name, kind, _) in services() {
        let workload = resource(&resources, kind, name);
        let pod_labels = &workload["spec"]["template"]["metadata"]["labels"];
        let selects = |selector: &Value| {
            selector.as_mapping().unwrap().iter().all(|(key, value)| pod_labels.get(str_of(key)) == Some(value))
        };
        assert!(selects(&workload["spec"]["selector"]["matchLabels"]), "{name}'s selector matches its pods");
        let budget = resource(&resources, "PodDisruptionBudget", name);
        assert!(selects(&budget["spec"]["selector"]["matchLabels"]), "{name}'s budget selects its pods");
        let replicas = workload["spec"]["replicas"].as_u64().unwrap();
        match budget["spec"].get("minAvailable") {
            Some(min) => assert!(min.as_u64().unwrap() < replicas, "{name}'s budget lets a drain proceed"),
            None => assert!(budget["spec"].get("maxUnavailable").is_some(), "{name}'s budget bounds something"),
        }
    }
    // The APIs: Twilio's webhooks and the CRM (ingress), the session query, the admin API.
    for name in ["ingress", "session-window", "template-approval"] {
        let service = resource(&resources, "Service", name);
        assert_eq!(service["spec"]["selector"]["app.kubernetes.io/name"].as_str(), Some(name));
        assert_eq!(service["spec"]["ports"][0]["targetPort"].as_str(), Some("http"), "{name}");
    }
}

/// Strimzi's topic operator creates what `deploy/k8s/strimzi` declares: it must be exactly what
/// the services expect (the same list `wa-topics`, the local scripts and the tests use).
#[test]
fn strimzi_topics_equal_the_topic_declaration() {
    let (kustomization, topics) = kustomization(&k8s_dir().join("strimzi"));
    assert!(kustomization["namespace"].as_str().is_some(), "KafkaTopics live in the Kafka cluster's namespace");
    assert_eq!(topics.len(), wa_platform::topics::ALL.len(), "one KafkaTopic per topic");
    for (topic, spec) in topics.iter().zip(wa_platform::topics::ALL) {
        assert_eq!(str_of(&topic["apiVersion"]), "kafka.strimzi.io/v1");
        assert_eq!(str_of(&topic["kind"]), "KafkaTopic");
        assert_eq!(str_of(&topic["spec"]["topicName"]), spec.name, "the KafkaTopics follow topics::ALL's order");
        assert_eq!(str_of(&topic["metadata"]["name"]), spec.name.replace('.', "-"), "{}", spec.name);
        assert!(topic["metadata"]["labels"]["strimzi.io/cluster"].as_str().is_some(), "{}: which cluster", spec.name);
        assert_eq!(topic["spec"]["partitions"].as_i64(), Some(i64::from(spec.partitions)), "{}", spec.name);
        let fields: BTreeSet<&str> = topic["spec"].as_mapping().unwrap().keys().map(str_of).collect();
        assert_eq!(fields, BTreeSet::from(["topicName", "partitions", "replicas", "config"]), "{}", spec.name);
        let config: BTreeMap<&str, &str> =
            topic["spec"]["config"].as_mapping().unwrap().iter().map(|(k, v)| (str_of(k), str_of(v))).collect();
        let mut expected: BTreeMap<&str, &str> = spec.configs.iter().copied().collect();
        // Production's durability, beyond what the declaration sets for a one-broker cluster.
        expected.insert("min.insync.replicas", "2");
        assert_eq!(config, expected, "{}", spec.name);
        let replicas = topic["spec"]["replicas"].as_i64().unwrap();
        assert!(
            replicas > 2,
            "{}: min.insync.replicas 2 needs more than 2 replicas to survive a broker down",
            spec.name
        );
    }
}
