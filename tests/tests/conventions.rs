//! Rules of the code that a reader relies on, checked over the sources.

use std::path::{Path, PathBuf};

use wa_schemas::{Actor, ConsentChange, DispatchOutcome, RejectionReason, SessionChange, TemplateChange};
use wa_twilio::content::ApprovalStatus;
use wa_twilio::status::MessageStatus;

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Outcomes, reasons, kinds and Twilio's statuses are matched through their types: no service
/// compares one of their wire strings as a literal (tests may, to check the wire).
#[test]
fn no_service_compares_a_wire_string_outside_its_type() {
    let wire: Vec<&str> = [
        DispatchOutcome::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
        RejectionReason::ALL.iter().map(|v| v.as_str()).collect(),
        TemplateChange::ALL.iter().map(|v| v.as_str()).collect(),
        SessionChange::ALL.iter().map(|v| v.as_str()).collect(),
        ConsentChange::ALL.iter().map(|v| v.as_str()).collect(),
        Actor::ALL.iter().map(|v| v.as_str()).collect(),
        MessageStatus::ALL.iter().map(|v| v.as_str()).collect(),
        ApprovalStatus::ALL.iter().map(|v| v.as_str()).collect(),
    ]
    .concat();
    let services = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../services"));
    let mut files = Vec::new();
    rust_files(services, &mut files);
    assert!(files.len() > 20, "found the services' sources");
    let mut comparisons = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        // Unit tests sit at the end of a file, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (n, line) in code.lines().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            for w in &wire {
                let literal = format!("\"{w}\"");
                let compared = [
                    format!("== {literal}"),
                    format!("!= {literal}"),
                    format!("{literal} =>"),
                    format!("{literal} |"),
                    format!("| {literal}"),
                    format!("Some({literal})"),
                ]
                .iter()
                .any(|pattern| line.contains(pattern.as_str()));
                if compared {
                    comparisons.push(format!("{}:{}: {}", file.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(comparisons.is_empty(), "wire strings compared as literals:\n{}", comparisons.join("\n"));
}

/// Every metric is named once, in `wa_platform::metrics`: no service writes a metric's name as a
/// literal, and no two constants name the same metric.
#[test]
fn metrics_are_named_only_in_the_platform_catalogue() {
    let services = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../services"));
    let mut files = Vec::new();
    rust_files(services, &mut files);
    let mut literal_names = Vec::new();
    let mut recorded = 0;
    for file in files.iter().filter(|file| !file.ends_with("platform/src/metrics.rs")) {
        let text = std::fs::read_to_string(file).unwrap();
        for macro_name in ["counter!(", "gauge!(", "histogram!("] {
            for (at, _) in text.match_indices(macro_name) {
                let argument = text[at + macro_name.len()..].trim_start();
                recorded += 1;
                if argument.starts_with('"') {
                    literal_names.push(format!("{}: {}", file.display(), &argument[..argument.len().min(60)]));
                }
            }
        }
    }
    assert!(recorded > 40, "found the services' metrics ({recorded})");
    assert!(literal_names.is_empty(), "metric names written as literals: {literal_names:#?}");
    let mut names = wa_platform::metrics::ALL.to_vec();
    names.sort_unstable();
    let count = names.len();
    names.dedup();
    assert_eq!(names.len(), count, "two constants name the same metric");
    assert!(names.iter().all(|name| name.chars().all(|c| c.is_ascii_lowercase() || c == '_')));
}

/// The alert rules use only metrics the services export, and the runbook has a section for
/// every alert (the rules link to it).
#[test]
fn alerts_use_exported_metrics_and_each_has_a_runbook_section() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let rules = std::fs::read_to_string(root.join("deploy/prometheus/alerts.yml")).unwrap();
    let runbook = std::fs::read_to_string(root.join("docs/runbook.md")).unwrap();
    let mut used = Vec::new();
    for token in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if token.starts_with("wa_") && !used.contains(&token) {
            used.push(token);
        }
    }
    assert!(used.len() >= 8, "found the metrics the rules use: {used:?}");
    for metric in &used {
        assert!(wa_platform::metrics::ALL.contains(metric), "alerts.yml uses {metric}, which no service exports");
    }
    let alerts: Vec<&str> =
        rules.lines().filter_map(|line| line.trim().strip_prefix("- alert: ")).map(str::trim).collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        assert!(runbook.contains(&format!("\n## {alert}\n")), "docs/runbook.md has no section for {alert}");
        assert!(
            rules.contains(&format!("runbook: docs/runbook.md#{}", alert.to_lowercase())),
            "{alert} does not link its runbook section"
        );
    }
}

/// The Grafana dashboard queries only metrics the services export (histograms through their
/// `_bucket` series).
#[test]
fn the_dashboard_queries_exported_metrics() {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/wachannel.json")).unwrap()).unwrap();
    let exprs: Vec<&str> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .map(|target| target["expr"].as_str().unwrap())
        .collect();
    assert!(exprs.len() >= 20, "{} queries", exprs.len());
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        for token in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if token.starts_with("wa_") || token.starts_with("http_") {
                used.insert(token.strip_suffix("_bucket").unwrap_or(token));
            }
        }
    }
    for metric in &used {
        assert!(wa_platform::metrics::ALL.contains(metric), "the dashboard queries {metric}, which no service exports");
    }
    // Everything an operator is promised a panel for is on it.
    for metric in [
        wa_platform::metrics::INGRESS_ACCEPTED,
        wa_platform::metrics::INGRESS_REJECTED,
        wa_platform::metrics::SESSION_VERDICTS,
        wa_platform::metrics::DISPATCH_OUTCOMES,
        wa_platform::metrics::DISPATCH_SENDER_RATE,
        wa_platform::metrics::CONSUMER_LAG,
        wa_platform::metrics::INGRESS_QUARANTINED,
        wa_platform::metrics::HTTP_REQUEST_DURATION,
    ] {
        assert!(used.contains(metric), "the dashboard has no panel on {metric}");
    }
}
