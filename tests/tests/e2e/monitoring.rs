//! The monitoring kit in `contrib/`: the Prometheus alert rules pass `promtool` with a unit test
//! per rule, and every metric the rules and the Grafana dashboard name is one a real host
//! serves on `/metrics`; `b24_ready` says what `/readyz` says.

use std::{
    collections::BTreeSet,
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

use b24_tests::fake_portal::{FakePortal, PortalOptions};

use crate::{offline::offline_config, support::*};

fn contrib() -> PathBuf {
    workspace_root().join("contrib")
}

/// Every `b24_...` metric name in `text` (a PromQL expression or a whole file).
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(found) = text[at..].find("b24_") {
        let start = at + found;
        let starts_word =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |n| start + n);
        if starts_word {
            names.insert(text[start..end].to_owned());
        }
        at = end;
    }
    names
}

/// The rules file (its metric names are those of its expressions: no comment or annotation
/// names a metric).
fn rules_text() -> String {
    std::fs::read_to_string(contrib().join("prometheus/b24-host.rules.yml")).unwrap()
}

/// The PromQL expressions of the dashboard's panels (every `expr` in the JSON).
fn dashboard_expressions() -> Vec<String> {
    fn walk(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(contrib().join("grafana/b24-host.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    assert!(out.len() >= 20, "the dashboard's panels have few expressions: {out:?}");
    out
}

/// The metric families in a Prometheus text exposition, with the sample names a histogram
/// adds (`_bucket`, `_sum`, `_count`).
fn served_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else { continue };
        let mut parts = rest.split(' ');
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        names.insert(name.to_owned());
        if kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
    }
    names
}

/// The value of the sample `name` (no labels) in an exposition.
fn sample(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_served() {
    // A host as an operator runs it: plugins, a portal installed with its offline queue polled
    // and its bindings looked after, so the per-portal and REST families have series too
    // (prometheus-client lists a family only once it has one).
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&format!(
        "{}\n[bind]\nhandler = \"https://b24.example.com/b24/events\"\n",
        offline_config(&portal, 200, &["audit-log", "probe"], "", "")
    ));
    let host = start(&dir);
    post_app_install(&host, &portal);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_OK")).status, 200);
    dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "user_field");
    // The binder's first look and the poller's first poll, each a sentinel on /metrics.
    let scrape = || host.admin_request("GET", "/metrics").body;
    // (The binder's first pass waits for the install's REST calls: generous on a loaded machine.)
    let looked = eventually(std::time::Duration::from_secs(120), || {
        let text = scrape();
        text.contains("b24_bindings_missing{") && text.contains("b24_rest_calls_total{")
    });
    assert!(looked, "no binder pass or REST call on /metrics:\n{}\n{}", scrape(), host.log_text());
    let exposition = scrape();
    let served = served_names(&exposition);
    assert_eq!(sample(&exposition, "b24_ready"), Some(1.0), "{exposition}");
    assert_eq!(sample(&exposition, "b24_journal_writable"), Some(1.0), "{exposition}");
    assert_eq!(sample(&exposition, "b24_journal_spooled_events"), Some(0.0), "{exposition}");

    let mut used = metric_names(&rules_text());
    for expr in dashboard_expressions() {
        used.extend(metric_names(&expr));
    }
    let missing: Vec<&String> = used.iter().filter(|n| !served.contains(*n)).collect();
    assert!(missing.is_empty(), "used but not served: {missing:?}\nserved: {served:?}");
    // Every family the host serves is on a panel of the dashboard.
    let on_dashboard: BTreeSet<String> =
        dashboard_expressions().iter().flat_map(|e| metric_names(e)).collect();
    let unshown: Vec<&String> = served
        .iter()
        .filter(|n| n.starts_with("b24_"))
        .filter(|n| !["_sum", "_count"].iter().any(|s| n.ends_with(s)))
        .filter(|n| !(n.ends_with("_seconds") && served.contains(&format!("{n}_bucket"))))
        .filter(|n| !on_dashboard.contains(*n))
        .collect();
    assert!(
        unshown.is_empty(),
        "served but on no panel of contrib/grafana/b24-host.json: {unshown:?}"
    );
    assert!(host.stop());
}

#[test]
fn the_ready_gauge_follows_readyz() {
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log", "no-such-plugin"], ""));
    let host = start(&dir);
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("no-such-plugin"), "{}", ready.body);
    let exposition = host.admin_request("GET", "/metrics").body;
    assert_eq!(sample(&exposition, "b24_ready"), Some(0.0), "{exposition}");
    // The journal is fine: only the plugin keeps the host from being ready.
    assert_eq!(sample(&exposition, "b24_journal_writable"), Some(1.0), "{exposition}");
    dir.write_config(&config(&["audit-log"], ""));
    assert_eq!(host.admin_request("POST", "/reload").status, 200);
    assert_eq!(host.admin_request("GET", "/readyz").status, 200);
    let exposition = host.admin_request("GET", "/metrics").body;
    assert_eq!(sample(&exposition, "b24_ready"), Some(1.0), "{exposition}");
    assert!(host.stop());
}

/// `promtool`: `$B24_PROMTOOL`, else the one `scripts/test` extracts into
/// `target/promtool/`, else on `PATH`. `None` (after a loud notice) when there is none,
/// except under `CI=true`, where that fails the test.
fn promtool_or_skip(test: &str) -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("B24_PROMTOOL").map(PathBuf::from),
        Some(target_dir().join("promtool/promtool")),
        Some(PathBuf::from("promtool")),
    ];
    for candidate in candidates.into_iter().flatten() {
        if Command::new(&candidate).arg("--version").output().is_ok_and(|o| o.status.success()) {
            return Some(candidate);
        }
    }
    assert_ne!(
        std::env::var("CI").as_deref(),
        Ok("true"),
        "{test}: no promtool (scripts/test installs it from Debian's prometheus package)"
    );
    let _ = writeln!(
        std::io::stderr(),
        "\n==== SKIPPED {test}: no promtool (scripts/test installs it) ====\n==== (under CI=true this test fails) ====\n"
    );
    None
}

fn promtool(tool: &Path, args: &[&str], dir: &Path) -> String {
    let mut command = Command::new(tool);
    command.args(args).current_dir(dir);
    let output = b24_tests::output_or_hang(command, &format!("promtool {}", args.join(" ")));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_pass_promtool_with_a_test_per_rule() {
    let Some(tool) = promtool_or_skip("the_alert_rules_pass_promtool_with_a_test_per_rule") else {
        return;
    };
    let dir = contrib().join("prometheus");
    promtool(&tool, &["check", "rules", "b24-host.rules.yml"], &dir);
    promtool(&tool, &["check", "config", "prometheus.yml"], &dir);
    let tested = promtool(&tool, &["test", "rules", "b24-host.rules.test.yml"], &dir);
    assert!(tested.contains("SUCCESS"), "{tested}");
    // One test per rule: each alert is named by a test case that expects it to fire.
    let rules = std::fs::read_to_string(dir.join("b24-host.rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("b24-host.rules.test.yml")).unwrap();
    let alerts: Vec<&str> =
        rules.lines().filter_map(|l| l.trim().strip_prefix("- alert:")).map(str::trim).collect();
    assert!(alerts.len() >= 15, "{alerts:?}");
    for alert in &alerts {
        let firing = tests
            .split("  - name: ")
            .any(|case| case.starts_with(&format!("{alert}\n")) && case.contains("exp_labels:"));
        assert!(firing, "no promtool test expects {alert} to fire");
    }
    // Every alert says what to do: a summary and a description.
    let annotated = rules.matches("summary:").count().min(rules.matches("description:").count());
    assert_eq!(annotated, alerts.len(), "each rule needs a summary and a description");

    // The dashboard's queries are valid PromQL: promtool checks them as recording rules (with
    // Grafana's variables filled in).
    let work = tempfile::tempdir().unwrap();
    let mut recording = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in dashboard_expressions().iter().enumerate() {
        let expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*");
        recording.push_str(&format!(
            "      - record: dashboard:panel{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    std::fs::write(work.path().join("dashboard.rules.yml"), recording).unwrap();
    promtool(&tool, &["check", "rules", "dashboard.rules.yml"], work.path());
}

#[test]
fn metric_names_are_read_from_expressions() {
    let names = metric_names(
        "max without (instance) (deriv(b24_plugin_backlog[15m])) > 0 and up{job=\"x_b24_no\"} \
         + b24_a_total",
    );
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["b24_a_total", "b24_plugin_backlog"]);
}
