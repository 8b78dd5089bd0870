//! A plugin whose `create` never returns does not delay the start: the host listens at once
//! and journals events for the plugins still being created, creates them all at once, and
//! reports the one that missed `plugins.start_timeout_ms` (log, `/metrics`, `/readyz`, the
//! console and `check`); a reload tries it again.

use std::time::{Duration, Instant};

use crate::support::*;

/// The start deadline of these tests: far above a normal start on a loaded machine.
const DEADLINE: Duration = Duration::from_secs(10);

/// A host with audit-log and a probe whose create sleeps `create_sleep_ms`, under [`DEADLINE`].
fn write_config(dir: &HostDir, create_sleep_ms: u64) {
    let text = config(
        &["audit-log", "probe"],
        &probe("", &format!("create_sleep_ms = {create_sleep_ms}")),
    )
    .replace("[plugins]\n", &format!("[plugins]\nstart_timeout_ms = {}\n", DEADLINE.as_millis()));
    dir.write_config(&text);
}

/// The host's child processes that are runners of `plugin`.
fn runners_of(host: &RunningHost, plugin: &str) -> Vec<u32> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", host.pid())).into_iter().flatten();
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|c| c.split_whitespace().filter_map(|p| p.parse().ok()).collect::<Vec<u32>>())
        .filter(|pid| alive(*pid))
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmdline)
                .replace('\0', " ")
                .contains(&format!("--plugin {plugin}"))
        })
        .collect()
}

fn a_hung_create_does_not_delay_the_start() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    write_config(&dir, 600_000);
    let launched = Instant::now();
    let host = dir
        .start_with(Launch { before_plugins: true, ..Launch::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    let listening = launched.elapsed();
    let first = host.post_form(&field_event(1, "UF_CRM_EARLY"));
    let answered = launched.elapsed();
    eprintln!("listening after {listening:?}, first 200 after {answered:?}");
    assert_eq!(first.status, 200, "{first:?}");
    assert!(answered < DEADLINE, "the first event was answered after {answered:?}");

    // The other plugin delivers; the hung one's events wait in the journal.
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_EARLY")).status, 200);
    assert_eq!(dir.wait_lines("audit.jsonl", 2, PATIENCE, |_| true).len(), 2);

    // Past the deadline the probe is reported.
    let reason = "not created within plugins.start_timeout_ms (10000 ms)";
    assert!(host.wait_log(reason, DEADLINE + PATIENCE), "{}", host.log_text());
    let metrics = host.admin_request("GET", "/metrics").body;
    assert_eq!(
        metric(&metrics, "b24_plugin_state{plugin=\"probe\",state=\"failed\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "b24_plugin_state{plugin=\"audit-log\",state=\"loaded\"}"),
        Some(1.0)
    );
    // A runner stuck in create is killed at the deadline.
    eventually(PATIENCE, || runners_of(&host, "probe").is_empty());
    assert_eq!(runners_of(&host, "probe"), Vec::<u32>::new(), "the hung runner still runs");
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(ready.status, 503);
    assert!(ready.body.contains(reason), "{ready:?}");
    let console = host.admin_request("GET", "/plugins");
    assert!(console.body.contains(reason), "{}", console.body);
    assert_eq!(dir.stats()["probe"].0, 2, "the probe's events wait in the journal");
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("plugin `probe`: not created within plugins.start_timeout_ms"), "{err}");

    // Fixed and reloaded, it is created and receives what waited.
    write_config(&dir, 0);
    let answer = host.admin_request("POST", "/reload");
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(
        dir.wait_lines("probe.jsonl", 2, PATIENCE, |l| l["field_id"] == 1 || l["field_id"] == 2)
            .len(),
        2
    );
    assert_eq!(host.admin_request("GET", "/readyz").status, 200);
    // (The look for runners above finds one when there is one.)
    let stats = dir.journal(&["stats"]);
    let probe = stats["plugins"].as_array().and_then(|p| p.iter().find(|p| p["plugin"] == "probe"));
    if let Some(pid) = probe.and_then(|p| p["runner"]["pid"].as_u64()) {
        assert_eq!(runners_of(&host, "probe"), vec![pid as u32]);
    }
    let stopping = Instant::now();
    assert!(host.stop(), "the host did not stop cleanly");
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5 + 5), "the host took {took:?} to stop (grace 5 s)");
}

#[test]
fn a_plugin_whose_create_hangs_does_not_delay_listening_and_is_reported_after_the_deadline() {
    a_hung_create_does_not_delay_the_start();
}

crate::in_process_too!(
    a_plugin_whose_create_hangs_does_not_delay_listening_and_is_reported_after_the_deadline
);
