//! Offline events: the portal's guaranteed queue, pulled into the journal.

use std::{
    collections::BTreeSet,
    time::{Duration, Instant},
};

use b24_tests::fake_portal::{FakePortal, PortalOptions};
use serde_json::{Value, json};

use crate::support::*;

/// A host folder with the probe, set up to poll `portal`'s offline queue.
fn offline_host(portal: &FakePortal, poll_ms: u64) -> HostDir {
    let options = portal.options();
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&format!(
        "{}\n[rest]\nclient_id = {:?}\nclient_secret = {:?}\n\n[rest.portals.\"{MEMBER}\"]\nrate_per_sec = 50.0\nburst = 50\n\n[rest.portals.\"{MEMBER}\".offline]\npoll_interval_ms = {poll_ms}\nbatch = 5\n",
        config(&["probe"], &probe("", "")),
        options.client_id,
        options.client_secret,
    ));
    dir
}

fn push_rows(portal: &FakePortal, n: u64, first_field: u64) -> BTreeSet<String> {
    (0..n)
        .map(|i| {
            let id = first_field + i;
            portal.push_offline(
                "ONCRMDEALUSERFIELDUPDATE",
                json!({"FIELDS": {"ID": id.to_string(), "ENTITY_ID": "CRM_DEAL", "FIELD_NAME": format!("UF_CRM_OFF_{id}")}}),
                Some(1),
            )
        })
        .collect()
}

/// Offline deliveries the probe recorded, by message id (with repeats).
fn delivered(dir: &HostDir) -> Vec<String> {
    dir.read_lines_lenient("probe.jsonl")
        .iter()
        .filter(|l| l["origin"] == "Offline")
        .filter_map(|l| l["message_id"].as_str().map(str::to_owned))
        .collect()
}

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn each_row_reaches_the_plugins_once_across_a_sigkill_between_journal_and_clear() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = offline_host(&portal, 300);
    let host = start(&dir);
    install(&host, &portal);
    // The first clear fails: the batch is journaled but stays reserved on the portal, as if
    // the host had died right after the journal write.
    portal.fail_next_clears(1);
    let rows = push_rows(&portal, 12, 100);
    assert!(host.wait_log("event.offline.clear failed", PATIENCE), "{}", host.log_text());
    host.kill();

    let host = start(&dir);
    wait_for("the queue to empty", PATIENCE, || portal.offline_rows().is_empty());
    wait_for("every row to be delivered", PATIENCE, || delivered(&dir).len() >= rows.len());
    std::thread::sleep(Duration::from_millis(500));
    let got = delivered(&dir);
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique, rows, "every row reached the probe");
    // Each row became exactly one event: a SIGKILL may interrupt a plugin call and so repeat
    // that delivery (at least once), but always under the same event id.
    let lines = dir.read_lines_lenient("probe.jsonl");
    for message_id in &rows {
        let ids: BTreeSet<u64> = lines
            .iter()
            .filter(|l| l["message_id"] == message_id.as_str())
            .filter_map(|l| l["event_id"].as_u64())
            .collect();
        assert_eq!(ids.len(), 1, "row {message_id} became events {ids:?}");
    }
    eprintln!(
        "offline crash test: {} rows, {} deliveries, all rows once in the journal",
        rows.len(),
        got.len()
    );
    // The rows came as ordinary user-field events, with the row's user in the delivery info.
    let lines = dir.read_lines_lenient("probe.jsonl");
    let first = lines.iter().find(|l| l["origin"] == "Offline").unwrap();
    assert_eq!(first["code"], "ONCRMDEALUSERFIELDUPDATE");
    assert_eq!(first["entity"], "deal");
    let status = dir.journal(&["stats"]);
    assert!(status["events"].as_u64().unwrap() >= 12);
    let out = dir.run_cli(&["offline", "status", "--config", "host.toml", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status["portals"][0]["mode"], "safe", "{status}");
    assert!(host.stop());
}

#[test]
fn two_hosts_polling_one_portal_split_the_queue_and_lose_nothing() {
    let portal = FakePortal::start(PortalOptions::default());
    let a = offline_host(&portal, 200);
    let b = offline_host(&portal, 200);
    let host_a = start(&a);
    let host_b = start(&b);
    install(&host_a, &portal);
    install(&host_b, &portal);
    let rows = push_rows(&portal, 40, 1000);
    wait_for("the queue to empty", PATIENCE, || portal.offline_rows().is_empty());
    wait_for("both hosts to deliver", PATIENCE, || {
        delivered(&a).len() + delivered(&b).len() >= rows.len()
    });
    let in_a: BTreeSet<String> = delivered(&a).into_iter().collect();
    let in_b: BTreeSet<String> = delivered(&b).into_iter().collect();
    let all: BTreeSet<String> = in_a.union(&in_b).cloned().collect();
    assert_eq!(all, rows, "every row reached a host");
    eprintln!(
        "two hosts: {} rows to A, {} to B, {} to both",
        in_a.len(),
        in_b.len(),
        in_a.intersection(&in_b).count()
    );
    assert!(host_a.stop());
    assert!(host_b.stop());
}

#[test]
fn a_portal_without_safe_mode_falls_back_to_clear_on_read() {
    let portal = FakePortal::start(PortalOptions::default());
    portal.set_offline_safe_mode(false);
    let dir = offline_host(&portal, 300);
    let host = start(&dir);
    install(&host, &portal);
    let rows = push_rows(&portal, 7, 200);
    wait_for("every row to be delivered", PATIENCE, || delivered(&dir).len() >= rows.len());
    let got: BTreeSet<String> = delivered(&dir).into_iter().collect();
    assert_eq!(got, rows);
    assert!(host.log_text().contains("falling back to clear=1"), "{}", host.log_text());
    let out = dir.run_cli(&["offline", "status", "--config", "host.toml", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(status["portals"][0]["mode"], "clear", "{status}");
    assert!(host.stop());
}

#[test]
fn onofflineevent_wakes_the_poller_and_bind_subscribes_offline_events() {
    let portal = FakePortal::start(PortalOptions::default());
    // Polls once at start, then only every 10 minutes.
    let dir = offline_host(&portal, 600_000);
    let host = start(&dir);
    install(&host, &portal);
    wait_for("the first poll", PATIENCE, || {
        let out = dir.run_cli(&["offline", "status", "--config", "host.toml", "--json"]);
        let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        status["portals"][0]["last_poll_ms"].is_number()
    });
    let rows = push_rows(&portal, 3, 300);
    std::thread::sleep(Duration::from_millis(500));
    assert!(delivered(&dir).is_empty(), "rows arrived without a wake-up");
    let mut nudge = args("ONOFFLINEEVENT");
    nudge.system = true;
    assert_eq!(host.post_form(&form(&nudge)).status, 200);
    wait_for("the woken poller to deliver", PATIENCE, || delivered(&dir).len() >= rows.len());

    let out = dir.run_cli(&[
        "offline",
        "bind",
        "--portal",
        MEMBER,
        "--event",
        "ONCRMDEALUSERFIELDUPDATE",
        "--event",
        "oncrmleaduserfieldadd",
        "--config",
        "host.toml",
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let bindings = portal.bindings();
    let offline: Vec<&str> = bindings
        .iter()
        .filter(|b| b["offline"] == true || b["offline"] == 1 || b["offline"] == "Y")
        .filter_map(|b| b["event"].as_str())
        .collect();
    assert!(
        offline.contains(&"ONCRMDEALUSERFIELDUPDATE") && offline.contains(&"ONCRMLEADUSERFIELDADD"),
        "{bindings:?}"
    );
    assert!(host.stop());
}
