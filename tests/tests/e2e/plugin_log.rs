//! A plugin cannot flood the host's log: its lines are cut at `log.plugin_max_line_bytes` and
//! limited to `log.plugin_lines_per_second` (bursts of `log.plugin_log_burst`), its output and
//! `Host::log` together; what is dropped is counted in `/metrics` and said in the log. The
//! host's memory stays bounded and intake goes on.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::*;

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The probe flooding from its creation on with `lines` lines (0: without end) of `bytes`.
fn flooding_config(lines: u64, bytes: usize, log: &str) -> String {
    config(
        &["audit-log", "probe"],
        &probe("", &format!("log_flood_lines = {lines}\nlog_flood_bytes = {bytes}")),
    )
    .replace("[log]\n", &format!("[log]\n{log}"))
}

fn a_flooding_plugin_is_limited_and_intake_goes_on() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    // 200 lines a second, bursts of 400; the probe writes as fast as it can, without end.
    dir.write_config(&flooding_config(
        0,
        200,
        "plugin_lines_per_second = 200\nplugin_log_burst = 400\n",
    ));
    let started = Instant::now();
    let host = start(&dir);
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (addr, path, stop) = (host.addr.clone(), host.path.clone(), stop.clone());
        std::thread::spawn(move || steady_client(addr, path, stop))
    };
    let pid = host.pid();
    let mut peak_kib = 0;
    let dropped = eventually(PATIENCE, || {
        peak_kib = peak_kib.max(status_kib(pid, "VmRSS"));
        let metrics = host.admin_request("GET", "/metrics").body;
        metric(&metrics, "b24_plugin_log_dropped_lines_total{plugin=\"probe\"}")
            .filter(|n| *n > 100_000.0)
    });
    // A few seconds of flood, sampled.
    for _ in 0..20 {
        peak_kib = peak_kib.max(status_kib(pid, "VmRSS"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (acked, refused) = client.join().unwrap();
    let log = host.log_text();
    // The probe's own budget: its Host::log lines and the output lines named for it alone (in
    // process, output written outside a call may be named for another plugin, or none, and
    // is charged to that name's budget).
    let flood_lines = log
        .lines()
        .filter(|l| {
            l.contains("flood ") && (l.contains("plugin=probe") || l.contains("plugin=\"probe\""))
        })
        .count();
    eprintln!(
        "flood: {dropped:?} lines dropped, {flood_lines} logged in {elapsed:?}, host RSS peak \
         {} MiB, {} events accepted, {refused} refused",
        peak_kib / 1024,
        acked.len()
    );
    assert!(
        dropped.is_some(),
        "no dropped lines counted:\n{}",
        log.lines().take(50).collect::<Vec<_>>().join("\n")
    );
    // At most the burst and the rate over the time the host ran (and a second of slack).
    let allowed = 400 + 200 * (elapsed.as_secs() as usize + 1);
    assert!(flood_lines <= allowed, "{flood_lines} flood lines logged in {elapsed:?}");
    assert!(log.contains("lines dropped"), "no log line says lines are dropped");
    assert!(peak_kib < 200 * 1024, "the host's RSS reached {} MiB", peak_kib / 1024);
    assert_eq!(refused, 0, "{refused} requests were refused during the flood");
    let expected: BTreeSet<u64> = acked.iter().copied().collect();
    let missing = dir.wait_ids("audit.jsonl", "field_id", &expected, PATIENCE);
    assert!(missing.is_empty(), "audit-log missed events during the flood: {missing:?}");
    assert!(host.stop());
}

#[test]
fn a_plugin_flooding_its_output_and_host_log_is_limited_and_intake_goes_on() {
    a_flooding_plugin_is_limited_and_intake_goes_on();
}

crate::in_process_too!(a_plugin_flooding_its_output_and_host_log_is_limited_and_intake_goes_on);

/// Starts a host whose probe writes two lines of `bytes` bytes, one on stdout and one
/// through `Host::log`, waits until both are logged, and returns the host's peak RSS in KiB
/// and the longest line of its log.
fn two_lines(bytes: usize) -> (u64, usize) {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&flooding_config(2, bytes, ""));
    let host = start(&dir);
    let logged = |n: usize| {
        let text = host.log_text();
        text.contains(&format!("flood {n} xxx"))
            && (bytes < 8192 || text.contains(&format!("[truncated: {} bytes]", bytes + 8)))
    };
    let both = eventually(PATIENCE, || logged(0) && logged(1));
    let log = host.log_text();
    assert!(both, "{}", log.lines().take(40).collect::<Vec<_>>().join("\n"));
    let longest = log.lines().map(str::len).max().unwrap_or(0);
    let peak_kib = status_kib(host.pid(), "VmHWM");
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_AFTER")).status, 200);
    assert_eq!(dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 1).len(), 1);
    assert!(host.stop());
    (peak_kib, longest)
}

#[test]
fn a_50_mb_log_line_is_cut_and_never_held_whole() {
    // A host whose probe writes two short lines, then one whose lines are 50 MB (the one
    // through Host::log comes from the runner as a frame).
    let (baseline_kib, _) = two_lines(100);
    let (peak_kib, longest) = two_lines(50_000_000);
    eprintln!(
        "50 MB lines: longest log line {longest} bytes, host peak RSS {} MiB (with short lines \
         {} MiB)",
        peak_kib / 1024,
        baseline_kib / 1024
    );
    assert!(longest < 8192 + 1024, "a log line of {longest} bytes");
    // The host never held a whole line: one copy alone would be 48 MiB more.
    assert!(
        peak_kib < baseline_kib + 24 * 1024,
        "the host's peak RSS is {} MiB, {} MiB with short lines",
        peak_kib / 1024,
        baseline_kib / 1024
    );
}
