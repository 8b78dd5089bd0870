//! Restarts and stops: a listening socket handed over by systemd's socket activation survives a
//! restart of the host (connections wait in the kernel's backlog, none is refused), readiness
//! and stopping are notified on `NOTIFY_SOCKET`, and a stop ends within `shutdown_grace_ms`
//! whatever a plugin does.

use std::{
    collections::BTreeSet,
    os::{fd::AsRawFd, unix::net::UnixDatagram},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use crate::support::*;

/// Reads notification datagrams until one contains `line` (as a whole line), up to `limit`.
fn wait_notification(socket: &UnixDatagram, line: &str, limit: Duration) -> Vec<String> {
    let started = Instant::now();
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    while started.elapsed() < limit {
        if let Ok(n) = socket.recv(&mut buffer) {
            let text = String::from_utf8_lossy(&buffer[..n]).into_owned();
            let found = text.lines().any(|l| l == line);
            seen.push(text);
            if found {
                return seen;
            }
        }
    }
    panic!("no {line} within {limit:?}; received {seen:?}");
}

/// What the clients saw: (when the request was sent, when it was answered, status or error)
/// per request.
type Results = Arc<Mutex<Vec<(Instant, Instant, Result<Answer, String>)>>>;

#[test]
fn a_restart_on_a_passed_socket_refuses_no_connection_and_loses_no_event() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(
        &["probe"],
        &format!("{}\n", probe("isolation = \"in-process\"", "")),
    ));
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap().to_string();
    let launch = Launch { listen_fd: Some(socket.as_raw_fd()), ..Launch::default() };
    let first = dir.start_with(launch.clone()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.addr, addr, "the host must serve on the socket it was handed");
    let path = first.path.clone();

    // Three clients post events, each on a new connection, the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let next_field = Arc::new(AtomicU64::new(1000));
    let results: Results = Arc::default();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, next_field, results) = (stop.clone(), next_field.clone(), results.clone());
            let (addr, path) = (addr.clone(), path.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let field = next_field.fetch_add(1, Ordering::SeqCst);
                    let body = field_event(field, "UF_CRM_RESTART");
                    let sent = Instant::now();
                    let answer = try_request(
                        &addr,
                        "POST",
                        &path,
                        Some("application/x-www-form-urlencoded"),
                        body.as_bytes(),
                    );
                    results.lock().unwrap().push((sent, Instant::now(), answer));
                }
            })
        })
        .collect();
    let answered = |results: &Results| results.lock().unwrap().len();
    let wait_answers = |n: usize| {
        let enough = eventually(PATIENCE, || answered(&results) >= n);
        assert!(enough, "the clients got only {} answers", answered(&results));
    };
    wait_answers(30);

    // A restart, as systemd does it: SIGTERM, the old process ends, a pause (RestartSec), a new
    // process on the same socket. The clients keep posting throughout.
    assert!(first.stop(), "the first host did not stop cleanly");
    let during_gap = answered(&results);
    std::thread::sleep(Duration::from_millis(500));
    let second_starts = Instant::now();
    let second = dir.start_with(launch).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(second.addr, addr);
    wait_answers(during_gap + 60);
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().unwrap();
    }

    let results = results.lock().unwrap();
    let failed: Vec<_> =
        results.iter().filter(|(_, _, r)| !matches!(r, Ok(a) if a.status == 200)).collect();
    assert!(failed.is_empty(), "{} of {} requests failed: {failed:?}", failed.len(), results.len());
    let accepted: BTreeSet<u64> = results
        .iter()
        .map(|(_, _, r)| {
            let body = &r.as_ref().unwrap().body;
            body.trim_start_matches("accepted ").parse::<u64>().unwrap_or_else(|_| panic!("{body}"))
        })
        .collect();
    assert_eq!(accepted.len(), results.len(), "every request is a new event");
    // Some were sent before the new process started and answered by it: they waited in the
    // backlog while no host was running, then got their 200.
    let waited = results.iter().filter(|(sent, answered, _)| {
        *sent < second_starts && answered.duration_since(*sent) >= Duration::from_millis(500)
    });
    assert!(waited.count() > 0, "no request waited for the new process");
    // Every accepted event reaches the plugin, those accepted by either process.
    let delivered = |dir: &HostDir| -> BTreeSet<u64> { probe_calls(dir).into_iter().collect() };
    eventually(PATIENCE, || accepted.is_subset(&delivered(&dir)));
    let missing: Vec<u64> = accepted.difference(&delivered(&dir)).copied().collect();
    assert!(missing.is_empty(), "accepted but never delivered: {missing:?}");
    assert!(second.stop());
}

#[test]
fn readiness_is_notified_once_listening_and_stopping_at_sigterm_and_a_sighup_then_reloads() {
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log"], ""));
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let launch = Launch {
        env: vec![("NOTIFY_SOCKET".into(), notify_path.display().to_string())],
        ..Launch::default()
    };
    let mut host = dir.start_with(launch).unwrap_or_else(|e| panic!("{e}"));
    wait_notification(&notify, "READY=1", PATIENCE);
    // systemd may send `ExecReload`'s SIGHUP as soon as READY=1 arrives: it must reload, not
    // kill the host.
    // SAFETY: `kill` on our own child's pid.
    assert_eq!(unsafe { libc::kill(host.pid() as i32, libc::SIGHUP) }, 0);
    assert!(host.wait_log("reload finished", PATIENCE), "{}", host.log_text());
    assert!(host.is_running(), "SIGHUP right after READY=1 killed the host");
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_READY")).status, 200);

    host.signal("TERM");
    wait_notification(&notify, "STOPPING=1", PATIENCE);
    let status = host.wait_exit(PATIENCE).expect("the host did not stop");
    assert!(status.success(), "{status:?}");
}

/// Grace used by the tests of a stop while a plugin hangs; the plugin hangs for far longer.
const GRACE_MS: u64 = 1000;
/// What a stop may take beyond the grace (a debug build on a busy machine); well below the hang.
const MARGIN: Duration = Duration::from_secs(10);
/// How long the probe hangs.
const HANG_MS: u64 = 600_000;

/// Sends SIGTERM and asserts the host exits cleanly within the grace (plus a margin); its log.
fn sigterm_stops_within_the_grace(host: &mut RunningHost) -> String {
    host.signal("TERM");
    let asked = Instant::now();
    let status = host.wait_exit(Duration::from_millis(GRACE_MS) + MARGIN);
    let log = host.log_text();
    assert!(status.is_some(), "still running {:?} after SIGTERM:\n{log}", asked.elapsed());
    assert!(status.unwrap().success(), "{status:?}\n{log}");
    log
}

fn hang_config(probe_settings: &str) -> String {
    config(
        &["probe"],
        &probe("isolation = \"in-process\"", probe_settings)
            .replace("[plugin.probe]\n", "[plugin.probe]\ntimeout_ms = 200\n"),
    )
    .replace("shutdown_grace_ms = 5000", &format!("shutdown_grace_ms = {GRACE_MS}"))
}

#[test]
fn sigterm_while_an_in_process_call_hangs_stops_within_the_grace_and_the_event_is_delivered_after_restart()
 {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&hang_config(&format!("sleep_ms = {HANG_MS}")));
    let mut host = start(&dir);
    let answer = host.post_form(&field_event(7, "UF_CRM_HANG"));
    assert_eq!(answer.status, 200, "{answer:?}");
    let id: u64 = answer.body.trim_start_matches("accepted ").parse().unwrap();
    // The call has started (the probe records before it sleeps).
    assert_eq!(dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["event_id"] == id).len(), 1);

    let log = sigterm_stops_within_the_grace(&mut host);
    assert!(log.contains("abandoned"), "{log}");
    // Nothing was marked done: the event is still pending for the probe.
    assert_eq!(dir.stats().get("probe").map(|s| s.0), Some(1), "{:?}", dir.stats());

    // The next start delivers it (the probe no longer hangs).
    dir.write_config(&hang_config(""));
    let host = start(&dir);
    let calls = dir.wait_lines("probe.jsonl", 2, PATIENCE, |l| l["event_id"] == id);
    assert_eq!(calls.len(), 2, "not delivered after the restart");
    eventually(PATIENCE, || dir.stats().get("probe").map(|s| s.0) == Some(0));
    assert_eq!(dir.stats().get("probe").map(|s| s.0), Some(0), "{:?}", dir.stats());
    assert!(host.stop());
}

#[test]
fn a_plugin_shutdown_that_hangs_does_not_hold_the_host_past_the_grace_and_outcomes_are_kept() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&hang_config(&format!("shutdown_sleep_ms = {HANG_MS}")));
    let mut host = start(&dir);
    let ids = post_fields(&host, 1..=5, "UF_CRM_FINE");
    let done = dir.wait_lines("probe.jsonl", 5, PATIENCE, |l| l["kind"] == "user_field");
    assert_eq!(done.len(), 5);
    // The last outcome is reported right after the call; wait until the journal has them all.
    eventually(PATIENCE, || dir.stats().get("probe").map(|s| s.0) == Some(0));

    sigterm_stops_within_the_grace(&mut host);
    assert_eq!(dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "shutdown").len(), 1);
    // The journal was closed properly: every outcome kept, nothing delivered twice next time.
    assert_eq!(dir.stats().get("probe").map(|s| s.0), Some(0), "{:?}", dir.stats());
    dir.write_config(&hang_config(""));
    let host = start(&dir);
    let sentinel = post_fields(&host, 6..=6, "UF_CRM_SENTINEL")[0];
    dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["event_id"] == sentinel);
    let mut expected = ids.clone();
    expected.push(sentinel);
    assert_eq!(probe_calls(&dir), expected);
    assert!(host.stop());
}

#[test]
fn a_connection_accepted_before_sigterm_still_gets_its_request_answered() {
    use std::io::{Read, Write};
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(
        &config(&["audit-log"], "")
            // Generous limits: the test's own pace on a busy machine must not close the
            // connection.
            .replace(
                "shutdown_grace_ms = 5000",
                "shutdown_grace_ms = 30000\nmax_connections = 1\nheader_read_timeout_ms = 30000\nrequest_read_timeout_ms = 30000",
            ),
    );
    let mut host = start(&dir);
    // A client connects; its request is not sent yet.
    let mut early = std::net::TcpStream::connect(&host.addr).unwrap();
    early.set_read_timeout(Some(PATIENCE)).unwrap();
    // The host has accepted it: with a cap of one connection, the next one is turned away.
    let mut answer = None;
    let turned_away = eventually(PATIENCE, || {
        let last = try_request(&host.addr, "GET", "/", None, b"");
        let full = matches!(&last, Ok(a) if a.status == 503 && a.body.contains("too many open connections"));
        answer = Some(last);
        full
    });
    assert!(turned_away, "{answer:?}");

    host.signal("TERM");
    assert!(host.wait_log("shutting down: no new connections", PATIENCE), "{}", host.log_text());
    let body = field_event(9, "UF_CRM_LATE");
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        host.path,
        host.addr,
        body.len()
    );
    let _ = early.write_all(request.as_bytes());
    let mut raw = String::new();
    let _ = early.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 200"), "the accepted connection got {raw:?}");
    assert!(raw.contains("accepted"), "{raw}");
    let status = host.wait_exit(PATIENCE).expect("the host did not stop");
    assert!(status.success());
    // Journaled before the 200: delivered now or after the next start.
    let host = start(&dir);
    assert_eq!(dir.wait_lines("audit.jsonl", 1, PATIENCE, |_| true).len(), 1);
    assert!(host.stop());
}

#[test]
fn a_reload_whose_plugin_creation_hangs_neither_stops_intake_nor_holds_sigterm() {
    let dir = HostDir::new(&["probe", "audit-log"]);
    dir.write_config(&hang_config(""));
    let mut host = start(&dir);
    // New settings re-create the probe on SIGHUP, and its creation hangs.
    dir.write_config(&hang_config(&format!("create_sleep_ms = {HANG_MS}")));
    host.signal("HUP");
    assert!(host.wait_log("SIGHUP: reloading", PATIENCE), "{}", host.log_text());
    // Events are still accepted and delivered by the old instance meanwhile.
    let id = post_fields(&host, 3..=3, "UF_CRM_DURING_RELOAD")[0];
    assert_eq!(dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["event_id"] == id).len(), 1);

    sigterm_stops_within_the_grace(&mut host);
}
