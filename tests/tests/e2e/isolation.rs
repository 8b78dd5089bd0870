//! Process isolation (the default): a plugin that aborts, faults, overflows its stack, exits,
//! loops or leaks ends its runner, never the host. While a client posts a steady stream of
//! events, every request is answered 200, the other plugin receives every event, the poison
//! event becomes a dead letter of the faulty plugin after `max_crashes` tries with a reason
//! naming how its runner died, and later events reach the plugin through a new runner.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::*;

/// Faults need restarts with back-off (and, for LOOP, three kill_after_ms): more patience.
const FAULT_PATIENCE: Duration = Duration::from_secs(60);

/// Runs the fault `command` in the probe under a steady stream and checks everything the
/// issue asks; `reason` must appear in the dead letter's reason.
fn fault_is_quarantined(command: &str, host_keys: &str, reason: &str) {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(
        &["audit-log", "probe"],
        &probe(&format!("max_crashes = 3\n{host_keys}"), ""),
    ));
    let mut host = start(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, path, stop) = (host.addr.clone(), host.path.clone(), stop.clone());
        std::thread::spawn(move || steady_client(addr, path, stop))
    };
    let poison = host.post_form(&field_event(1, &format!("UF_CRM_{command}")));
    assert_eq!(poison.status, 200, "{poison:?}");
    let poison_id: u64 = poison.body.trim_start_matches("accepted ").parse().unwrap();

    let dead =
        eventually(FAULT_PATIENCE, || Some(dead_letters(&dir, "probe")).filter(|d| !d.is_empty()))
            .unwrap_or_default();
    assert_eq!(
        dead.len(),
        1,
        "the poison event is not a dead letter of probe: {dead:?}\n{}",
        host.log_text()
    );
    assert_eq!(dead[0].0, poison_id);
    assert!(
        dead[0].1.contains(reason) && dead[0].1.contains("3 times"),
        "dead letter reason {:?} does not name {reason:?}",
        dead[0].1
    );
    // The probe recorded each try before it faulted: max_crashes of them.
    let tries = dir.read_lines_lenient("probe.jsonl").iter().filter(|l| l["field_id"] == 1).count();
    assert_eq!(tries, 3, "the poison event was tried {tries} times");

    // A later event reaches the probe through a new runner (the sentinel).
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_AFTER")).status, 200);
    let after = dir.wait_lines("probe.jsonl", 1, FAULT_PATIENCE, |l| l["field_id"] == 2);
    assert_eq!(after.len(), 1, "no event reached the probe after the poison one");

    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = client.join().unwrap();
    assert_eq!(refused, 0, "{refused} requests were refused during the fault");
    assert!(acked.len() > 10, "the client posted only {} events", acked.len());

    // audit-log received every event: the steady stream, the poison and the sentinel.
    let mut expected: BTreeSet<u64> = acked.iter().copied().collect();
    expected.extend([1, 2]);
    let missing = dir.wait_ids("audit.jsonl", "field_id", &expected, PATIENCE);
    assert!(missing.is_empty(), "audit-log is missing {} events: {missing:?}", missing.len());

    // The host says what happened to the runner.
    let stats = dir.journal(&["stats"]);
    let probe_stats = stats["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["plugin"] == "probe"))
        .cloned()
        .unwrap_or_default();
    // Three deaths, all the poison's: an event that waited for a runner to restart is not
    // charged the wait (kill_after_ms counts from when the call is sent).
    assert_eq!(probe_stats["runner"]["restarts"], 3, "{probe_stats}");
    assert!(
        probe_stats["runner"]["last_exit"].as_str().unwrap_or("").contains(reason),
        "{probe_stats}"
    );
    let metrics = host.admin_request("GET", "/metrics").body;
    assert!(metrics.contains("b24_plugin_runner_restarts_total{plugin=\"probe\"}"), "{metrics}");
    assert!(host.is_running());
    assert!(host.stop(), "the host did not stop cleanly");
}

#[test]
fn an_abort_is_quarantined() {
    fault_is_quarantined("ABORT", "", "aborted (SIGABRT)");
}

#[test]
fn a_segfault_is_quarantined() {
    fault_is_quarantined("SEGV", "", "killed by SIGSEGV");
}

#[test]
fn a_stack_overflow_is_quarantined() {
    fault_is_quarantined("STACK", "", "stack overflow");
}

#[test]
fn an_exit_is_quarantined() {
    fault_is_quarantined("EXIT", "", "exited with status 0");
}

#[test]
fn an_endless_call_is_killed_after_kill_after_ms() {
    fault_is_quarantined("LOOP", "kill_after_ms = 300", "ran past kill_after_ms");
}

#[test]
fn a_memory_bomb_is_stopped_by_memory_limit_mb() {
    fault_is_quarantined("LEAK", "memory_limit_mb = 256", "memory_limit_mb");
}

#[test]
fn sigterm_while_a_call_hangs_kills_the_runner_within_the_grace_and_the_event_waits_for_the_restart()
 {
    let dir = HostDir::new(&["probe"]);
    // shutdown_grace_ms is 5000 in these configs; every probe call sleeps ten minutes.
    dir.write_config(&config(&["probe"], &probe("", "sleep_ms = 600000")));
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_HANG")).status, 200);
    let calls = dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 1);
    assert_eq!(calls.len(), 1, "the call did not start");
    let stopping = Instant::now();
    assert!(host.stop(), "the host did not exit cleanly");
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5 + 5), "the host took {took:?} to stop (grace 5 s)");
    // Not delivered, not a crash: still pending.
    assert_eq!(dir.stats()["probe"], (1, 0, 0));

    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    let calls = dir.wait_lines("probe.jsonl", 2, PATIENCE, |l| l["field_id"] == 1);
    assert_eq!(calls.len(), 2, "the event was not delivered after the restart");
    eventually(PATIENCE, || dir.stats()["probe"] == (0, 0, 0));
    assert_eq!(dir.stats()["probe"], (0, 0, 0));
    assert!(host.stop());
}

#[test]
fn runners_are_processes_of_their_own_that_die_with_the_host() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "")));
    let host = start(&dir);
    let stats = dir.journal(&["stats"]);
    let pids: Vec<u32> = stats["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["runner"]["pid"].as_u64().map(|pid| pid as u32))
        .collect();
    assert_eq!(pids.len(), 2, "{stats}");
    assert!(pids.iter().all(|pid| *pid != host.pid() && alive(*pid)));
    // SIGKILL leaves the host no chance to stop them: the death signal does.
    host.kill();
    eventually(PATIENCE, || !pids.iter().any(|pid| alive(*pid)));
    assert!(pids.iter().all(|pid| !alive(*pid)), "a runner outlived the host");
}

/// The probe's runner pid from `journal stats`.
fn probe_runner_pid(dir: &HostDir) -> Option<u64> {
    let stats = dir.journal(&["stats"]);
    stats["plugins"].as_array()?.iter().find(|p| p["plugin"] == "probe")?["runner"]["pid"].as_u64()
}

#[test]
fn a_reload_starts_a_new_runner_and_drains_and_stops_the_old_one() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_BEFORE")).status, 200);
    assert_eq!(dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 1).len(), 1);
    let old = probe_runner_pid(&dir).expect("the probe has a runner");

    // New settings re-create the plugin: in process isolation, in a new runner.
    dir.write_config(&config(&["probe"], &probe("", "sleep_ms = 1")));
    let answer = host.admin_request("POST", "/reload");
    assert_eq!(answer.status, 200, "{answer:?}");
    let shutdown = dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "shutdown");
    assert_eq!(shutdown.len(), 1, "the old instance was not shut down");
    eventually(PATIENCE, || !alive(old as u32));
    assert!(!alive(old as u32), "the old runner {old} is still running");
    let new = probe_runner_pid(&dir).expect("the probe has a new runner");
    assert_ne!(new, old);
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_AFTER")).status, 200);
    assert_eq!(dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 2).len(), 1);
    // A runner that was told to stop is no crash: no restart counted.
    let stats = dir.journal(&["stats"]);
    let probe =
        stats["plugins"].as_array().unwrap().iter().find(|p| p["plugin"] == "probe").unwrap();
    assert_eq!(probe["runner"]["restarts"], 0, "{probe}");
    assert!(host.stop());
}

#[test]
fn kill_after_ms_counts_from_when_the_call_is_sent_not_while_it_waits_for_a_restart() {
    let dir = HostDir::new(&["probe"]);
    // Every call takes 300 ms, under kill_after_ms; the runner's third restart waits 400 ms.
    dir.write_config(&config(
        &["probe"],
        &probe("max_crashes = 3\nkill_after_ms = 500", "sleep_ms = 300"),
    ));
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_LOOP")).status, 200);
    // Queued behind the poison: it waits for the runner that follows the poison's third death.
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_INNOCENT")).status, 200);
    let done = dir.wait_lines("probe.jsonl", 1, FAULT_PATIENCE, |l| l["field_id"] == 2);
    assert_eq!(done.len(), 1, "the second event never reached the probe");
    eventually(PATIENCE, || dir.stats()["probe"] == (0, 0, 1));
    assert_eq!(dir.stats()["probe"], (0, 0, 1), "only the poison is a dead letter");
    let tries = dir.read_lines("probe.jsonl").iter().filter(|l| l["field_id"] == 2).count();
    assert_eq!(tries, 1, "the innocent event was killed for the time it waited for a runner");
    assert!(host.stop());
}

#[test]
fn a_burst_queued_behind_a_busy_runner_keeps_its_order_its_retries_and_its_crashes() {
    // Through a runner, a lane sends the deliveries already waiting in one frame; the runner
    // stops at the first that is not done. A retry and a crash in the middle of such a burst
    // must still hold back the events behind them, and every event must arrive exactly once
    // (the crash's repeats aside), in order.
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("max_crashes = 2\n", "")));
    let host = start(&dir);
    // The probe is busy with this one while the burst is posted and queues up.
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_SLEEP2000")).status, 200);
    let started = dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 1);
    assert_eq!(started.len(), 1);
    let name = |id: u64| match id {
        15 => "UF_CRM_RETRY1".to_owned(),
        30 => "UF_CRM_ABORT".to_owned(),
        _ => format!("UF_CRM_B{id}"),
    };
    for id in 2..=40 {
        assert_eq!(host.post_form(&field_event(id, &name(id))).status, 200);
    }
    let before = probe_sentinel(&host, &dir, 41);
    let order: Vec<u64> = before
        .iter()
        .filter(|l| l["kind"] == "user_field")
        .map(|l| l["field_id"].as_u64().unwrap_or(0))
        .collect();
    let mut expected: Vec<u64> = (1..=40).collect();
    // RETRY1: a retry, then done; ABORT: two crashes (max_crashes = 2), then a dead letter.
    expected.insert(expected.iter().position(|&i| i == 15).unwrap_or(0), 15);
    expected.insert(expected.iter().position(|&i| i == 30).unwrap_or(0), 30);
    assert_eq!(order, expected, "\n{}", host.log_text());
    let attempts: Vec<u64> = before
        .iter()
        .filter(|l| l["field_id"] == 15)
        .map(|l| l["attempt"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(attempts, vec![1, 2]);
    let dead = dead_letters(&dir, "probe");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(dead[0].1.contains("2 times"), "{dead:?}");
    // The burst did go out in batches.
    assert!(host.log_text().contains("a batch in one frame"), "{}", host.log_text());
    assert!(host.stop());
}
