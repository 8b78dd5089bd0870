//! Runner supervision against plugins that start processes of their own: a plugin that forks
//! (the child inherits the runner's socket and pipes) or spawns `sleep` children and then
//! aborts is still seen to die, its poison event becomes a dead letter after `max_crashes`,
//! and no process it started survives it, a SIGTERM of the host, or a SIGKILL of the host.
//! A call stuck in a runner is freed by `journal skip`.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::*;

/// Faults need three runner deaths and restarts with back-off: more patience.
const FAULT_PATIENCE: Duration = Duration::from_secs(60);

/// The process ids the probe wrote to `children.txt`.
fn children(dir: &HostDir) -> Vec<u32> {
    std::fs::read_to_string(dir.path().join("children.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// The probe's runner from `journal stats`: (pid, restarts).
fn probe_runner(dir: &HostDir) -> (Option<u32>, u64) {
    let stats = dir.journal(&["stats"]);
    let probe = stats["plugins"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["plugin"] == "probe"))
        .cloned()
        .unwrap_or_default();
    (
        probe["runner"]["pid"].as_u64().map(|p| p as u32),
        probe["runner"]["restarts"].as_u64().unwrap_or(0),
    )
}

/// Runs the process command `command` (which starts `per_try` children, then aborts) under a
/// steady stream of events and checks that nothing of it is left.
fn processes_then_abort_leave_nothing(command: &str, per_try: usize) {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(
        &["audit-log", "probe"],
        &probe("max_crashes = 3\n", "children = \"children.txt\""),
    ));
    let host = start(&dir);
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
    let started = children(&dir);
    let left: Vec<u32> = started.iter().copied().filter(|p| alive(*p)).collect();
    let (_, restarts) = probe_runner(&dir);
    eprintln!(
        "{command}: dead letters {dead:?}, runner restarts {restarts}, children started {}, \
         still running {}",
        started.len(),
        left.len()
    );
    assert_eq!(dead.len(), 1, "the poison event is not a dead letter:\n{}", host.log_text());
    assert_eq!(dead[0].0, poison_id);
    assert!(
        dead[0].1.contains("aborted (SIGABRT)") && dead[0].1.contains("3 times"),
        "dead letter reason {:?}",
        dead[0].1
    );
    assert_eq!(restarts, 3, "one restart per crash");
    assert_eq!(started.len(), 3 * per_try, "children started: {started:?}");
    // Killed with their runner's process group (not waiting for them: each runner's death ends
    // its group before the crash is counted).
    eventually(PATIENCE, || !started.iter().any(|p| alive(*p)));
    let left: Vec<u32> = started.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "children of the dead runners still run: {left:?}");

    // Later events reach the probe through a new runner.
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_AFTER")).status, 200);
    let after = dir.wait_lines("probe.jsonl", 1, FAULT_PATIENCE, |l| l["field_id"] == 2);
    assert_eq!(after.len(), 1, "no event reached the probe after the poison one");

    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = client.join().unwrap();
    eprintln!("{command}: {} events accepted during the faults, {refused} refused", acked.len());
    assert_eq!(refused, 0, "{refused} requests were refused during the fault");
    assert!(acked.len() > 10, "the client posted only {} events", acked.len());
    let mut expected: BTreeSet<u64> = acked.iter().copied().collect();
    expected.extend([1, 2]);
    // The probe writes the poison event's line at each of its three attempts: wait for the
    // ids, not for a count of lines.
    for file in ["audit.jsonl", "probe.jsonl"] {
        let missing = dir.wait_ids(file, "field_id", &expected, PATIENCE);
        assert!(missing.is_empty(), "{file} is missing {} events: {missing:?}", missing.len());
    }

    // A child started by the live runner, then SIGTERM: the host ends within its grace
    // (5 s here) and nothing of the plugin is left.
    assert_eq!(host.post_form(&field_event(3, "UF_CRM_SPAWN")).status, 200);
    let spawned = eventually(PATIENCE, || {
        let now = children(&dir);
        (now.len() >= started.len() + 2).then_some(now)
    })
    .expect("the probe did not start its children");
    let (runner, _) = probe_runner(&dir);
    let runner = runner.expect("the probe has a runner");
    assert!(spawned.iter().skip(started.len()).all(|p| alive(*p)));
    let stopping = Instant::now();
    assert!(host.stop(), "the host did not stop cleanly");
    let took = stopping.elapsed();
    assert!(took < Duration::from_secs(5 + 5), "the host took {took:?} to stop (grace 5 s)");
    let left: Vec<u32> = spawned.iter().copied().chain([runner]).filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes of the plugin outlived the host: {left:?}");
}

#[test]
fn a_plugin_that_forks_then_aborts_is_quarantined_and_leaves_no_process() {
    processes_then_abort_leave_nothing("FORKABORT", 1);
}

#[test]
fn a_plugin_that_spawns_sleep_children_then_aborts_is_quarantined_and_leaves_no_process() {
    processes_then_abort_leave_nothing("SPAWNABORT", 2);
}

#[test]
fn children_of_a_plugin_die_with_a_sigkilled_host() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "children = \"children.txt\"")));
    let host = start(&dir);
    // A forked child (which holds the runner's socket) and two exec'd `sleep`s, all alive
    // after their calls returned.
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_SPAWN")).status, 200);
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_FORK")).status, 200);
    let started = eventually(PATIENCE, || Some(children(&dir)).filter(|c| c.len() >= 3))
        .expect("the probe did not start its children");
    assert!(started.iter().all(|p| alive(*p)), "{started:?}");
    let (runner, _) = probe_runner(&dir);
    host.kill();
    let all: Vec<u32> = started.iter().copied().chain(runner).collect();
    eventually(PATIENCE, || !all.iter().any(|p| alive(*p)));
    let left: Vec<u32> = all.iter().copied().filter(|p| alive(*p)).collect();
    assert!(left.is_empty(), "processes of the plugin outlived the SIGKILLed host: {left:?}");
}

#[test]
fn a_reload_stops_the_old_runner_and_the_child_that_holds_its_socket() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "children = \"children.txt\"")));
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_FORK")).status, 200);
    let child =
        eventually(PATIENCE, || children(&dir).first().copied()).expect("the probe did not fork");
    let (old, _) = probe_runner(&dir);
    let old = old.expect("the probe has a runner");
    // New settings: a new runner; the old one is told to stop, and stops, with its child.
    dir.write_config(&config(&["probe"], &probe("", "children = \"children.txt\"\nsleep_ms = 1")));
    let answer = host.admin_request("POST", "/reload");
    assert_eq!(answer.status, 200, "{answer:?}");
    eventually(PATIENCE, || !alive(old) && !alive(child));
    assert!(!alive(old) && !alive(child), "the old runner {old} or its child {child} still runs");
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_AFTER")).status, 200);
    assert_eq!(dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 2).len(), 1);
    let (new, restarts) = probe_runner(&dir);
    assert!(new.is_some_and(|p| p != old));
    assert_eq!(restarts, 0, "a runner told to stop is no crash");
    assert!(host.stop());
}

#[test]
fn journal_skip_frees_a_lane_stuck_in_a_runner_call() {
    for command in ["LOOP", "FORKLOOP"] {
        let dir = HostDir::new(&["probe"]);
        // kill_after_ms far away: only the operator can free the lane.
        dir.write_config(&config(
            &["probe"],
            &probe("kill_after_ms = 600000\n", "children = \"children.txt\""),
        ));
        let host = start(&dir);
        let stuck = host.post_form(&field_event(1, &format!("UF_CRM_{command}")));
        let stuck: u64 = stuck.body.trim_start_matches("accepted ").parse().unwrap();
        assert_eq!(host.post_form(&field_event(2, "UF_CRM_LATER")).status, 200);
        assert_eq!(dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 1).len(), 1);
        let answer = dir.journal(&["skip", "--plugin", "probe", &stuck.to_string()]);
        assert_eq!(answer["skipped"], serde_json::json!([stuck]), "{answer}");
        let later = dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 2);
        assert_eq!(later.len(), 1, "{command}: the later event did not flow:\n{}", host.log_text());
        // A dead letter of the operator's, not a crash: the event is not tried again.
        assert_eq!(dead_letters(&dir, "probe"), vec![(stuck, "skipped by an operator".to_owned())]);
        eventually(PATIENCE, || dir.stats()["probe"] == (0, 0, 1));
        assert_eq!(dir.stats()["probe"], (0, 0, 1));
        let tries = dir.read_lines("probe.jsonl").iter().filter(|l| l["field_id"] == 1).count();
        assert_eq!(tries, 1, "{command}: the skipped event was called again");
        let left: Vec<u32> = children(&dir).into_iter().filter(|p| alive(*p)).collect();
        assert!(left.is_empty(), "{command}: the stuck call's children still run: {left:?}");
        assert!(host.stop());
    }
}

/// The probe's source made concurrent (`Plugin::CONCURRENT`), built as an author would.
fn concurrent_probe() -> std::path::PathBuf {
    let work = tempfile::tempdir().unwrap();
    let manifest = format!(
        "[package]\nname = \"probe\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nb24-plugin-api = {{ path = {:?} }}\nlibc = \"0.2\"\nserde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = {{ version = \"1\", features = [\"preserve_order\"] }}\ntoml = \"0.9\"\n\n[workspace]\n",
        workspace_root().join("plugin-api").display().to_string()
    );
    let source =
        std::fs::read_to_string(workspace_root().join("tests/plugins/probe/src/lib.rs")).unwrap();
    let source = source.replace(
        "const EVENTS: &'static [&'static str] = &[\"*\"];",
        "const EVENTS: &'static [&'static str] = &[\"*\"];\n    const CONCURRENT: bool = true;",
    );
    assert!(source.contains("CONCURRENT: bool = true"));
    build_author_crate(work.path(), "probe", &manifest, &source)
}

/// A field of `/proc/<pid>/status` in KiB (`VmPeak`, `VmSize`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_runner_with_sixteen_busy_lanes_runs_under_the_default_memory_limit() {
    // No memory_limit_mb: the default applies. Sixteen lane threads, each allocating through
    // the plugin's allocator at once (each may reserve an arena of its own), and the runner's
    // own threads.
    let dir = HostDir::new(&[]);
    dir.add_plugin_file(&concurrent_probe());
    dir.write_config(&config(&["probe"], &probe("concurrency = 16\n", "sleep_ms = 100")));
    let host = start(&dir);
    let ids = post_fields(&host, 1..=160, "UF_CRM_LANES");
    let calls = dir.wait_lines("probe.jsonl", 160, PATIENCE * 3, |l| l["kind"] == "user_field");
    let (runner, restarts) = probe_runner(&dir);
    let runner = runner.expect("the probe has a runner");
    let (peak, size) = (status_kib(runner, "VmPeak"), status_kib(runner, "VmSize"));
    let threads = std::fs::read_to_string(format!("/proc/{runner}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Threads:").map(|t| t.trim().to_owned()))
        .unwrap_or_default();
    eprintln!(
        "runner with 16 lanes: address space {} MiB (peak {} MiB), {threads} threads",
        size / 1024,
        peak / 1024
    );
    assert_eq!(calls.len(), 160, "{}", host.log_text());
    let mut got = event_ids(&calls);
    got.sort_unstable();
    assert_eq!(got, ids, "each event once");
    assert_eq!(restarts, 0, "the runner died under the default limit:\n{}", host.log_text());
    assert!(peak <= 1024 * 1024, "the limit was not applied: peak {} MiB", peak / 1024);
    assert!(host.stop());
}
