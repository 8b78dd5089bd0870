//! Pausing a plugin (issue 24, item 3): a paused plugin receives nothing while every other
//! plugin carries on, its events wait in the journal (pending, in its backlog), the pause
//! survives a restart and a reload, and a resume delivers them all in order; paused from the
//! command line (running and stopped host) and the admin listener, on the embedded journal and
//! on a shared NATS log with two hosts. And `pause_after_failures`: the probe failing N calls
//! in a row pauses itself, says so, and stays paused across a restart until resumed.
//!
//! "The paused plugin got nothing" is read after a sentinel, never after a sleep: audit-log
//! receives every event posted while the probe is paused, so once audit-log has them all the
//! probe's worker has had them too (and would have called the probe by then).

use std::collections::BTreeSet;

use b24_tests::nats::{NatsOptions, cluster_or_skip};
use serde_json::Value;

use crate::support::*;

/// The value of the sample whose line starts with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Runs `b24-host plugin ACTION NAME` in `dir` and returns its stdout; fails the test when the
/// command fails.
fn plugin_cli(dir: &HostDir, action: &str, name: &str) -> String {
    let out = dir.run_cli(&["plugin", action, name, "--config", "host.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "b24-host plugin {action} {name} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The field ids of `file`'s user-field records in `dir`, in the order they were recorded.
fn fields(dir: &HostDir, file: &str) -> Vec<u64> {
    dir.read_lines_lenient(file)
        .iter()
        .filter(|l| l["kind"] == "user_field" || l.get("kind").is_none())
        .filter_map(|l| l["field_id"].as_u64())
        .collect()
}

/// The probe's records of the fields in `wanted`, in order, as (field id, event id).
fn probe_calls(dir: &HostDir, wanted: &BTreeSet<u64>) -> Vec<(u64, u64)> {
    dir.read_lines_lenient("probe.jsonl")
        .iter()
        .filter(|l| l["kind"] == "user_field")
        .filter_map(|l| Some((l["field_id"].as_u64()?, l["event_id"].as_u64()?)))
        .filter(|(field, _)| wanted.contains(field))
        .collect()
}

/// Waits until audit-log recorded every field of `wanted` (in any of `dirs`: the sentinel that
/// the events reached the workers).
fn wait_audit(dirs: &[&HostDir], wanted: &BTreeSet<u64>) {
    let reached = eventually(PATIENCE * 2, || {
        let seen: BTreeSet<u64> = dirs.iter().flat_map(|d| fields(d, "audit.jsonl")).collect();
        wanted.is_subset(&seen)
    });
    assert!(reached, "audit-log never got fields {wanted:?}");
}

/// `journal stats --json`'s entry of `plugin` in `dir`.
fn stats_of(dir: &HostDir, plugin: &str) -> Value {
    let answer = dir.journal(&["stats"]);
    answer["plugins"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["plugin"] == plugin).cloned())
        .unwrap_or_else(|| panic!("journal stats lists no {plugin}: {answer}"))
}

/// Posts user-field events for `fields` to `host`, each answered 200.
fn post_fields(host: &RunningHost, fields: impl IntoIterator<Item = u64>) {
    for field in fields {
        assert_eq!(host.post_form(&field_event(field, "UF_CRM_PAUSE")).status, 200);
    }
}

/// Asserts the probe delivered exactly `wanted` (each once), in event id order.
fn assert_delivered_in_order(calls: &[(u64, u64)], wanted: &BTreeSet<u64>) {
    let got: Vec<u64> = calls.iter().map(|(field, _)| *field).collect();
    let want: Vec<u64> = wanted.iter().copied().collect();
    assert_eq!(got, want, "the probe's calls after the resume");
    assert!(calls.windows(2).all(|w| w[0].1 < w[1].1), "not in event id order: {calls:?}");
}

#[test]
fn a_paused_plugin_gets_nothing_across_restart_and_reload_and_all_in_order_once_resumed() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "")));
    let host = start(&dir);
    post_fields(&host, [1]);
    dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 1);

    // Paused from the command line: the running host hears it through its control socket.
    let said = plugin_cli(&dir, "pause", "probe");
    assert!(said.contains("probe paused"), "{said}");
    let refused = dir.run_cli(&["plugin", "pause", "nope", "--config", "host.toml"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no enabled plugin \"nope\""));
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(ready.status, 200, "paused is not a fault: {}", ready.body);
    assert!(
        ready.body.contains("paused: plugin probe: paused by an operator (command line)"),
        "{}",
        ready.body
    );

    // While it is paused, audit-log gets every event and the probe none; they wait for it.
    let held: BTreeSet<u64> = (2..=4).collect();
    post_fields(&host, held.clone());
    wait_audit(&[&dir], &held);
    assert_eq!(probe_calls(&dir, &held), [], "the paused probe was called");
    let stats = eventually(PATIENCE, || {
        let stats = stats_of(&dir, "probe");
        (stats["backlog"] == 3).then_some(stats)
    })
    .unwrap_or_else(|| panic!("probe's backlog: {}", stats_of(&dir, "probe")));
    assert_eq!(stats["paused"]["by"], "operator", "{stats}");
    assert_eq!(stats["paused"]["via"], "command line", "{stats}");
    let metrics = host.admin_request("GET", "/metrics").body;
    assert_eq!(metric(&metrics, "b24_plugin_paused{plugin=\"probe\"}"), Some(1.0), "{metrics}");
    assert_eq!(metric(&metrics, "b24_plugin_paused{plugin=\"audit-log\"}"), Some(0.0));
    let human = dir.run_cli(&["journal", "stats", "--config", "host.toml"]);
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("probe state: paused (paused by an operator (command line)"), "{human}");

    // A restart: still paused.
    assert!(host.stop(), "the host did not stop cleanly");
    let host = start(&dir);
    post_fields(&host, [5]);
    let held: BTreeSet<u64> = (2..=5).collect();
    wait_audit(&[&dir], &held);
    assert_eq!(probe_calls(&dir, &held), [], "the probe was called after a restart");

    // A reload: still paused.
    assert_eq!(host.admin_request("POST", "/reload").status, 200);
    post_fields(&host, [6]);
    let held: BTreeSet<u64> = (2..=6).collect();
    wait_audit(&[&dir], &held);
    assert_eq!(probe_calls(&dir, &held), [], "the probe was called after a reload");
    let checked = dir.run_cli(&["check", "--config", "host.toml"]);
    let checked = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.contains("plugin probe state: paused (paused by an operator"), "{checked}");

    // Resumed on the stopped host (the command stores it); the next start delivers them all,
    // in order.
    assert!(host.stop(), "the host did not stop cleanly");
    assert!(plugin_cli(&dir, "resume", "probe").contains("probe resumed"));
    assert!(plugin_cli(&dir, "resume", "probe").contains("probe was not paused"));
    let host = start(&dir);
    let reached = eventually(PATIENCE, || probe_calls(&dir, &held).len() >= held.len());
    assert!(reached, "the resumed probe got only {:?}", probe_calls(&dir, &held));
    assert_delivered_in_order(&probe_calls(&dir, &held), &held);
    assert_eq!(stats_of(&dir, "probe")["paused"], Value::Null);

    // The admin listener: a browser's POST without the console's CSRF token is refused; a
    // script's pauses, events wait, its resume delivers them.
    let admin = host.admin.clone().expect("an admin listener");
    let forged = b24_tests::http::request(
        &admin,
        "POST",
        "/plugins/probe/pause",
        &[("Origin", "http://evil.example")],
        b"",
    )
    .expect("the admin listener answers");
    assert_eq!(forged.status, 403);
    assert_eq!(host.admin_request("POST", "/plugins/nope/pause").status, 404);
    let paused = host.admin_request("POST", "/plugins/probe/pause");
    assert_eq!(paused.status, 200, "{}", paused.body);
    let answer: Value = serde_json::from_str(&paused.body).expect("JSON");
    assert_eq!(answer["paused"]["via"], "admin API", "{answer}");
    assert_eq!(answer["changed"], true, "{answer}");
    let again: Value =
        serde_json::from_str(&host.admin_request("POST", "/plugins/probe/pause").body).unwrap();
    assert_eq!(again["changed"], false, "a second pause keeps the first: {again}");
    let later: BTreeSet<u64> = (7..=8).collect();
    post_fields(&host, later.clone());
    wait_audit(&[&dir], &later);
    assert_eq!(probe_calls(&dir, &later), [], "the probe was called while paused");
    let resumed = host.admin_request("POST", "/plugins/probe/resume");
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let reached = eventually(PATIENCE, || probe_calls(&dir, &later).len() >= later.len());
    assert!(reached, "the resumed probe got only {:?}", probe_calls(&dir, &later));
    assert_delivered_in_order(&probe_calls(&dir, &later), &later);
    let metrics = host.admin_request("GET", "/metrics").body;
    assert_eq!(metric(&metrics, "b24_plugin_paused{plugin=\"probe\"}"), Some(0.0), "{metrics}");
}

#[test]
fn a_plugin_failing_n_calls_in_a_row_pauses_itself_until_resumed() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    // Three attempts 10 to 50 ms apart: the breaker pauses it before the third.
    let table = probe("pause_after_failures = 2\n", "fail_while = \"fail.flag\"");
    dir.write_config(&config(&["audit-log", "probe"], &table));
    let host = start(&dir);
    std::fs::write(dir.path().join("fail.flag"), "").unwrap();
    post_fields(&host, [1]);
    dir.wait_lines("probe.jsonl", 2, PATIENCE, |l| l["field_id"] == 1);

    // The second failure in a row pauses it: a WARN line with the plugin, N and the last error.
    let said = |log: &str| {
        log.lines().any(|l| {
            l.contains("WARN")
                && l.contains("paused itself")
                && l.contains("probe")
                && l.contains("failures=2")
                && l.contains("probe told to fail while its flag file exists")
        })
    };
    assert!(eventually(PATIENCE, || said(&host.log_text())), "{}", host.log_text());
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert!(
        ready.body.contains("paused: plugin probe: paused after 2 consecutive failures: ")
            && ready.body.contains("probe told to fail while its flag file exists"),
        "{}",
        ready.body
    );
    let stats = stats_of(&dir, "probe");
    assert_eq!(stats["paused"]["by"], "failures", "{stats}");
    assert_eq!(stats["paused"]["failures"], 2, "{stats}");
    let last = stats["paused"]["last_error"].as_str().unwrap_or_default();
    assert!(last.contains("probe told to fail"), "{stats}");
    let metrics = host.admin_request("GET", "/metrics").body;
    assert_eq!(metric(&metrics, "b24_plugin_auto_pauses_total{plugin=\"probe\"}"), Some(1.0));
    assert_eq!(metric(&metrics, "b24_plugin_paused{plugin=\"probe\"}"), Some(1.0));
    let page = host.admin_request("GET", "/plugins").body;
    assert!(page.contains("paused after 2 consecutive failures"), "{page}");

    // Paused: its retry waits (no third attempt, the last it has), and later events wait too.
    let held: BTreeSet<u64> = (2..=3).collect();
    post_fields(&host, held.clone());
    wait_audit(&[&dir], &held);
    assert_eq!(fields(&dir, "probe.jsonl"), [1, 1], "the paused probe was called");

    // It stays paused across a restart.
    assert!(host.stop(), "the host did not stop cleanly");
    let host = start(&dir);
    post_fields(&host, [4]);
    wait_audit(&[&dir], &BTreeSet::from([4]));
    assert_eq!(fields(&dir, "probe.jsonl"), [1, 1], "the probe was called after a restart");
    assert_eq!(stats_of(&dir, "probe")["paused"]["by"], "failures");

    // The downstream is back; the operator resumes it: everything, in order.
    std::fs::remove_file(dir.path().join("fail.flag")).unwrap();
    assert!(plugin_cli(&dir, "resume", "probe").contains("probe resumed"));
    let all: BTreeSet<u64> = (1..=4).collect();
    let reached = eventually(PATIENCE, || fields(&dir, "probe.jsonl").len() >= 6);
    assert!(reached, "the resumed probe got only {:?}", fields(&dir, "probe.jsonl"));
    assert_eq!(fields(&dir, "probe.jsonl"), [1, 1, 1, 2, 3, 4]);
    let calls = probe_calls(&dir, &all);
    assert!(calls.windows(2).all(|w| w[0].1 <= w[1].1), "not in event id order: {calls:?}");
    let attempts: Vec<u64> = dir
        .read_lines("probe.jsonl")
        .iter()
        .filter(|l| l["field_id"] == 1)
        .filter_map(|l| l["attempt"].as_u64())
        .collect();
    assert_eq!(attempts, [1, 2, 3], "the held retry is the third attempt, and it is done");
    assert_eq!(stats_of(&dir, "probe")["paused"], Value::Null);
}

crate::in_process_too!(a_plugin_failing_n_calls_in_a_row_pauses_itself_until_resumed);

#[test]
fn on_nats_a_pause_through_one_host_stops_the_host_delivering_and_survives_restart_and_reload() {
    let test = "on_nats_a_pause_through_one_host_stops_the_host_delivering_and_survives_restart_and_reload";
    let Some(cluster) = cluster_or_skip(test, 3, NatsOptions::default()) else {
        return;
    };
    // B starts first and takes the probe's delivery lease; A joins.
    let dir_b = crate::nats_multi::host_dir(&cluster, 2000, 0);
    let host_b = start(&dir_b);
    assert!(
        host_b.wait_log("lease deliver.probe taken", PATIENCE),
        "B never took the probe's lease:\n{}",
        host_b.log_text()
    );
    let dir_a = crate::nats_multi::host_dir(&cluster, 2000, 0);
    let host_a = start(&dir_a);
    post_fields(&host_a, [1]);
    dir_b.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 1);

    // Paused through A: B, which delivers the probe, honours it without a restart.
    let paused = host_a.admin_request("POST", "/plugins/probe/pause");
    assert_eq!(paused.status, 200, "{}", paused.body);
    let honoured = eventually(PATIENCE, || {
        host_b.admin_request("GET", "/readyz").body.contains("paused: plugin probe")
    });
    assert!(
        honoured,
        "B never honoured the pause: {}",
        host_b.admin_request("GET", "/readyz").body
    );
    let held: BTreeSet<u64> = (2..=5).collect();
    for field in held.iter() {
        let host = if field % 2 == 0 { &host_a } else { &host_b };
        post_fields(host, [*field]);
    }
    wait_audit(&[&dir_a, &dir_b], &held);
    for dir in [&dir_a, &dir_b] {
        assert_eq!(probe_calls(dir, &held), [], "the paused probe was called");
    }
    let stats = eventually(PATIENCE, || {
        let stats = stats_of(&dir_a, "probe");
        (stats["backlog"] == held.len()).then_some(stats)
    })
    .unwrap_or_else(|| panic!("probe's backlog: {}", stats_of(&dir_a, "probe")));
    assert_eq!(stats["paused"]["via"], "admin API", "{stats}");

    // B restarts (A may take the lease meanwhile), A reloads: still paused on both.
    assert!(host_b.stop(), "B did not stop cleanly");
    let host_b = start(&dir_b);
    assert!(host_b.admin_request("GET", "/readyz").body.contains("paused: plugin probe"));
    assert_eq!(host_a.admin_request("POST", "/reload").status, 200);
    post_fields(&host_b, [6]);
    post_fields(&host_a, [7]);
    let held: BTreeSet<u64> = (2..=7).collect();
    wait_audit(&[&dir_a, &dir_b], &held);
    for dir in [&dir_a, &dir_b] {
        assert_eq!(probe_calls(dir, &held), [], "the probe was called after a restart or reload");
    }

    // Resumed through B: every held event reaches the probe, in order on the host delivering.
    let resumed = host_b.admin_request("POST", "/plugins/probe/resume");
    assert_eq!(resumed.status, 200, "{}", resumed.body);
    let reached = eventually(nats_multi_catch_up(), || {
        let got: BTreeSet<u64> =
            [&dir_a, &dir_b].iter().flat_map(|d| probe_calls(d, &held)).map(|c| c.0).collect();
        got == held
    });
    assert!(
        reached,
        "the resumed probe got only {:?} and {:?}",
        probe_calls(&dir_a, &held),
        probe_calls(&dir_b, &held)
    );
    for dir in [&dir_a, &dir_b] {
        let calls = probe_calls(dir, &held);
        assert!(calls.windows(2).all(|w| w[0].1 < w[1].1), "not in event id order: {calls:?}");
    }

    // The command writes to the shared log itself: both hosts see its pause and its resume.
    assert!(plugin_cli(&dir_a, "pause", "probe").contains("probe paused"));
    for host in [&host_a, &host_b] {
        let seen = eventually(PATIENCE, || {
            let body = host.admin_request("GET", "/readyz").body;
            body.contains("paused: plugin probe: paused by an operator (command line)")
        });
        assert!(seen, "{}", host.admin_request("GET", "/readyz").body);
    }
    assert!(plugin_cli(&dir_b, "resume", "probe").contains("probe resumed"));
    for host in [&host_a, &host_b] {
        let seen = eventually(PATIENCE, || {
            !host.admin_request("GET", "/readyz").body.contains("paused: plugin probe")
        });
        assert!(seen, "{}", host.admin_request("GET", "/readyz").body);
    }
    drop(host_a);
    drop(host_b);
}

/// How long delivery on the shared log may take to go on (a lease moving between hosts).
fn nats_multi_catch_up() -> std::time::Duration {
    crate::nats_multi::CATCH_UP
}
