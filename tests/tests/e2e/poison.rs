//! Poison events of in-process plugins, and the operator's way out: a plugin that kills the
//! host on one event (here `std::process::abort()`) must not keep it down. Restarted as systemd
//! would, the host counts a crash of that (plugin, event) at each start and after `max_crashes`
//! moves it to the plugin's dead letters and serves on; `journal skip` frees a poison event at
//! once, on a stopped host and on a running one.

use std::{collections::BTreeSet, time::Duration};

use crate::support::*;

/// The probe's tables: in-process, `max_crashes`, retries as given.
fn in_process_probe(max_crashes: u32, attempts: u32) -> String {
    format!(
        "[plugin.probe]\nisolation = \"in-process\"\nmax_crashes = {max_crashes}\n\n\
         [plugin.probe.retry]\nattempts = {attempts}\nbase_ms = 20\ncap_ms = 100\n\n\
         [plugin.probe.settings]\nrecord = \"probe.jsonl\"\n"
    )
}

/// Posts a user-field event; its journal id when the host answered 200.
fn post(host: &RunningHost, field_id: u64, name: &str) -> Option<u64> {
    let body = field_event(field_id, name);
    let answer = try_request(
        &host.addr,
        "POST",
        &host.path,
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
    )
    .ok()?;
    (answer.status == 200).then(|| answer.body.trim_start_matches("accepted ").parse().ok())?
}

/// Waits until `host` has exited; whether it did within `limit`.
fn wait_exit(host: &mut RunningHost, limit: Duration) -> bool {
    host.wait_exit(limit).is_some()
}

/// The field ids the probe was called with for user-field events.
fn probe_fields(dir: &HostDir) -> Vec<u64> {
    dir.read_lines_lenient("probe.jsonl")
        .iter()
        .filter(|l| l["kind"] == "user_field")
        .filter_map(|l| l["field_id"].as_u64())
        .collect()
}

/// Waits until the probe was called with field `field_id`, or `host` died; whether it was.
fn wait_probe_or_death(dir: &HostDir, host: &mut RunningHost, field_id: u64) -> bool {
    let called = eventually(PATIENCE, || {
        if probe_fields(dir).contains(&field_id) {
            Some(true)
        } else {
            (!host.is_running()).then_some(false)
        }
    });
    called.unwrap_or_else(|| {
        panic!(
            "the probe never got field {field_id}, and the host still runs:\n{}",
            host.log_text()
        )
    })
}

/// The probe's dead letters: (event id, reason).
fn probe_dead(dir: &HostDir) -> Vec<(u64, String)> {
    let answer = dir.journal(&["dead", "--plugin", "probe"]);
    answer["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["id"].as_u64().unwrap(), r["dead"]["reason"].as_str().unwrap().to_owned()))
        .collect()
}

#[test]
fn an_in_process_abort_poison_loop_ends_after_max_crashes_restarts() {
    const MAX_CRASHES: u32 = 3;
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &in_process_probe(MAX_CRASHES, 3)));
    let launch = Launch { listen: Some(format!("127.0.0.1:{}", free_port())), ..Launch::default() };
    let mut host = dir.start_with(launch.clone()).unwrap_or_else(|e| panic!("{e}"));
    let mut acked = BTreeSet::new();
    for field in 1..=2 {
        post(&host, field, "UF_CRM_BEFORE").expect("accepted");
        acked.insert(field);
    }
    assert!(wait_probe_or_death(&dir, &mut host, 2));

    // The poison event: journaled (200, unless the abort beat the answer), then the host dies.
    if post(&host, 100, "UF_CRM_ABORT").is_some() {
        acked.insert(100);
    }
    assert!(wait_exit(&mut host, PATIENCE), "the abort did not end the host");
    drop(host);

    // Restart it as systemd would, posting a sentinel each time, until one start survives:
    // the sentinel reaches the probe only once the poison event is out of its way.
    let mut restarts = 0;
    let mut serving = None;
    for sentinel in 200..200 + u64::from(MAX_CRASHES) + 2 {
        restarts += 1;
        let Ok(mut host) = dir.start_with(launch.clone()) else { continue };
        if post(&host, sentinel, "UF_CRM_SENTINEL").is_some() {
            acked.insert(sentinel);
        }
        if wait_probe_or_death(&dir, &mut host, sentinel) {
            serving = Some(host);
            break;
        }
    }
    let host = serving.expect("the host never stayed up");
    assert!(restarts <= MAX_CRASHES, "{restarts} restarts for max_crashes = {MAX_CRASHES}");
    eprintln!("poison loop: the host served again after {restarts} restarts");

    // The poison event is a dead letter of the probe, with the reason and the count.
    let dead = probe_dead(&dir);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(
        dead[0].1,
        format!("the host died while plugin probe handled it, {MAX_CRASHES} times"),
        "{dead:?}"
    );
    let calls = probe_fields(&dir).iter().filter(|f| **f == 100).count();
    assert_eq!(calls, MAX_CRASHES as usize, "the poison event was called once per crash");

    // Later events reach the probe; audit-log got every acknowledged event.
    post(&host, 300, "UF_CRM_AFTER").expect("accepted");
    acked.insert(300);
    let mut host = host;
    assert!(wait_probe_or_death(&dir, &mut host, 300));
    // audit-log is another plugin, on its own lane: wait for it to have the last event too.
    dir.wait_lines("audit.jsonl", 1, PATIENCE, |l| l["field_id"] == 300);
    let audit: BTreeSet<u64> = dir
        .read_lines_lenient("audit.jsonl")
        .iter()
        .filter_map(|l| l["field_id"].as_u64())
        .collect();
    let missing: Vec<_> = acked.difference(&audit).collect();
    assert!(missing.is_empty(), "audit-log lost {missing:?}");
    assert!(host.stop());
}

#[test]
fn journal_skip_on_a_stopped_host_frees_an_in_process_poison_loop() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    // So many crashes allowed that only the operator can end the loop.
    dir.write_config(&config(&["audit-log", "probe"], &in_process_probe(100, 3)));
    let launch = Launch { listen: Some(format!("127.0.0.1:{}", free_port())), ..Launch::default() };
    let mut host = dir.start_with(launch.clone()).unwrap_or_else(|e| panic!("{e}"));
    post(&host, 1, "UF_CRM_BEFORE").expect("accepted");
    assert!(wait_probe_or_death(&dir, &mut host, 1));
    let _ = post(&host, 100, "UF_CRM_ABORT");
    assert!(wait_exit(&mut host, PATIENCE), "the abort did not end the host");
    drop(host);

    // A restart dies on the same event again: a poison loop.
    if let Ok(mut again) = dir.start_with(launch.clone()) {
        assert!(wait_exit(&mut again, PATIENCE), "the poison event did not end the restarted host");
    }
    let calls = || probe_fields(&dir).iter().filter(|f| **f == 100).count();
    assert_eq!(calls(), 2);

    // The operator skips it with the host stopped.
    let list = dir.journal(&["list"]);
    let poison = list["events"].as_array().unwrap()[0]["id"].as_u64().unwrap();
    let answer = dir.journal(&["skip", "--plugin", "probe", &poison.to_string()]);
    assert_eq!(answer["skipped"], serde_json::json!([poison]), "{answer}");
    assert_eq!(probe_dead(&dir), vec![(poison, "skipped by an operator".to_owned())]);

    // The host now stays up, later events reach the probe, the poison event is not retried.
    let mut host = dir.start_with(launch).unwrap_or_else(|e| panic!("{e}"));
    post(&host, 200, "UF_CRM_AFTER").expect("accepted");
    assert!(wait_probe_or_death(&dir, &mut host, 200), "{}", host.log_text());
    assert_eq!(calls(), 2);
    // audit-log is another plugin, on its own lane: wait for it to have the later event too.
    dir.wait_lines("audit.jsonl", 1, PATIENCE, |l| l["field_id"] == 200);
    let audit: Vec<u64> = dir
        .read_lines_lenient("audit.jsonl")
        .iter()
        .filter_map(|l| l["field_id"].as_u64())
        .collect();
    for field in [1, 100, 200] {
        assert!(audit.contains(&field), "audit-log lacks {field}: {audit:?}");
    }
    assert!(host.stop());
}

#[test]
fn journal_skip_on_a_running_host_moves_a_retrying_event_to_dead_letters() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &in_process_probe(3, 1000)));
    let mut host = start(&dir);
    // The probe asks to retry this one (nearly) for ever; it holds back the probe's later events.
    let stuck = post(&host, 100, "UF_CRM_RETRY100000").expect("accepted");
    let later = post(&host, 200, "UF_CRM_LATER").expect("accepted");
    let attempts = dir.wait_lines("probe.jsonl", 2, PATIENCE, |l| l["field_id"] == 100);
    assert!(attempts.len() >= 2, "the probe did not retry: {attempts:?}");
    assert!(!probe_fields(&dir).contains(&200));

    let answer = dir.journal(&["skip", "--plugin", "probe", &stuck.to_string()]);
    assert_eq!(answer["skipped"], serde_json::json!([stuck]), "{answer}");
    assert!(wait_probe_or_death(&dir, &mut host, 200), "the later event did not flow");
    assert_eq!(probe_dead(&dir), vec![(stuck, "skipped by an operator".to_owned())]);
    assert_eq!(dir.stats()["probe"], (0, 0, 1));

    // An id not pending for the plugin is an error, named.
    let out = dir.run_cli(&["journal", "skip", "--plugin", "probe", &later.to_string()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("not pending for probe: {later}")), "{stderr}");

    // Replay brings the skipped event back as for any dead letter: attempts start again.
    let before = probe_fields(&dir).iter().filter(|f| **f == 100).count();
    dir.journal(&["replay", "--plugin", "probe", &stuck.to_string()]);
    let again = dir.wait_lines("probe.jsonl", before + 1, PATIENCE, |l| l["field_id"] == 100);
    assert_eq!(again.get(before).map(|l| l["attempt"].clone()), Some(serde_json::json!(1)));
    assert!(probe_dead(&dir).is_empty());
    assert!(host.stop());
}

#[test]
fn each_fatal_probe_fault_ends_an_in_process_host_and_counts_as_a_crash() {
    // The probe's fault commands do what the process-mode tests rely on; in-process, each one
    // takes the host down (exit(0) with status 0), and the next start counts the crash.
    for fault in ["SEGV", "STACK", "EXIT", "ABORT"] {
        let dir = HostDir::new(&["probe"]);
        dir.write_config(&config(&["probe"], &in_process_probe(3, 3)));
        let mut host = start(&dir);
        let _ = post(&host, 1, &format!("UF_CRM_{fault}"));
        assert!(wait_exit(&mut host, PATIENCE), "{fault} did not end the host");
        drop(host);
        // The next start counts the crash, delivers the event again, and dies again.
        if let Ok(mut again) = dir.start() {
            assert!(wait_exit(&mut again, PATIENCE), "{fault}: the restart survived");
        }
        let shown = dir.journal(&["show", "1"]);
        let state = &shown["event"]["pending_state"]["probe"];
        assert_eq!(state["crashes"], 1, "{fault}: {shown}");
        let error = state["last_error"].as_str().unwrap_or_default();
        assert!(error.starts_with("the host died while plugin probe handled it"), "{error}");
    }
}
