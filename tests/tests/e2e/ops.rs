//! Operations: health, readiness, metrics, and live reload under load.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::support::*;

#[test]
fn metrics_move_with_events_rejections_retries_and_dead_letters() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    assert_eq!(host.admin_request("GET", "/healthz").status, 200);
    assert_eq!(host.admin_request("GET", "/readyz").status, 200);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_OK")).status, 200);
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_RETRY1")).status, 200);
    assert_eq!(host.post_form(&field_event(3, "UF_CRM_REJECT")).status, 200);
    let mut wrong = args("ONCRMDEALUSERFIELDUPDATE");
    wrong.token = "00000000000000000000000000000000".into();
    assert_eq!(host.post_form(&form(&wrong)).status, 401);
    dir.wait_lines("probe.jsonl", 4, PATIENCE, |l| l["kind"] == "user_field");
    let mut text = String::new();
    // Counters move when the worker learns an outcome; the backlog gauge reads the journal,
    // where the outcome lands with the writer's next commit: wait for both.
    eventually(PATIENCE, || {
        text = host.admin_request("GET", "/metrics").body;
        metric(&text, "b24_plugin_dead_letters_total{plugin=\"probe\"}") == Some(1.0)
            && metric(&text, "b24_plugin_backlog{plugin=\"probe\"}") == Some(0.0)
    });
    assert_eq!(
        metric(
            &text,
            "b24_events_received_total{code=\"ONCRMDEALUSERFIELDUPDATE\",outcome=\"accepted\"}"
        ),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "b24_events_received_total{code=\"-\",outcome=\"unauthorized\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "b24_plugin_retries_total{plugin=\"probe\"}"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "b24_plugin_dead_letters_total{plugin=\"probe\"}"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "b24_plugin_deliveries_total{plugin=\"probe\",outcome=\"done\"}"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(metric(&text, "b24_plugin_backlog{plugin=\"probe\"}"), Some(0.0), "{text}");
    assert_eq!(
        metric(&text, "b24_plugin_state{plugin=\"probe\",state=\"loaded\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(metric(&text, "b24_journal_size_bytes").is_some_and(|b| b > 0.0), "{text}");
    assert!(text.contains("b24_request_duration_seconds_bucket"), "{text}");
    // A gauge follows the backlog down to zero (it is not left at its last non-zero value).
    let slow = host.post_form(&field_event(4, "UF_CRM_SLEEP300"));
    assert_eq!(slow.status, 200);
    assert_eq!(host.post_form(&field_event(5, "UF_CRM_OK")).status, 200);
    let busy = host.admin_request("GET", "/metrics").body;
    assert!(
        metric(&busy, "b24_plugin_backlog{plugin=\"probe\"}").is_some_and(|b| b >= 1.0),
        "{busy}"
    );
    dir.wait_lines("probe.jsonl", 6, PATIENCE, |l| l["kind"] == "user_field");
    let backlog = eventually(PATIENCE, || {
        let text = host.admin_request("GET", "/metrics").body;
        metric(&text, "b24_plugin_backlog{plugin=\"probe\"}").filter(|b| *b == 0.0)
    });
    assert_eq!(backlog, Some(0.0));
    assert!(host.stop());
}

#[test]
fn readyz_is_503_while_an_enabled_plugin_is_not_loaded() {
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log", "ghost"], ""));
    let host = start(&dir);
    assert_eq!(host.admin_request("GET", "/healthz").status, 200);
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(ready.status, 503);
    assert!(
        ready.body.contains("plugin ghost") && ready.body.contains("libghost.so"),
        "{}",
        ready.body
    );
    let metrics = host.admin_request("GET", "/metrics").body;
    assert_eq!(
        metric(&metrics, "b24_plugin_state{plugin=\"ghost\",state=\"failed\"}"),
        Some(1.0),
        "{metrics}"
    );
    assert!(host.stop());
}

/// Builds a copy of the probe plugin with another version string, as a new release would be.
fn probe_build(version: &str) -> PathBuf {
    let work = tempfile::tempdir().unwrap();
    let manifest = format!(
        "[package]\nname = \"probe\"\nversion = \"{version}\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nb24-plugin-api = {{ path = {:?} }}\nlibc = \"0.2\"\nserde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = {{ version = \"1\", features = [\"preserve_order\"] }}\ntoml = \"0.9\"\n\n[workspace]\n",
        workspace_root().join("plugin-api").display().to_string()
    );
    let source =
        std::fs::read_to_string(workspace_root().join("tests/plugins/probe/src/lib.rs")).unwrap();
    build_author_crate(work.path(), "probe", &manifest, &source)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Puts `library` in place of the host folder's probe plugin, as a deployment would.
fn deploy_probe_library(dir: &HostDir, library: &Path) {
    // Replace atomically, as a deployment would (the running host has the old file mapped).
    let target = dir.path().join("plugins").join(plugin_file("probe"));
    let tmp = dir.path().join("plugins").join(".probe.tmp");
    std::fs::copy(library, &tmp).unwrap();
    std::fs::rename(&tmp, &target).unwrap();
}

#[test]
fn a_live_reload_under_load_loses_nothing_and_a_broken_build_leaves_the_old_one_serving() {
    let v2 = probe_build("0.2.0");
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = Arc::new(start(&dir));
    let addr = host.addr.clone();
    let path = host.path.clone();

    // A steady stream of events, each timed.
    let acked = Arc::new(Mutex::new(Vec::new()));
    let slowest = Arc::new(Mutex::new(Duration::ZERO));
    let sender = {
        let (acked, slowest) = (acked.clone(), slowest.clone());
        std::thread::spawn(move || {
            for n in 0..400u64 {
                let started = Instant::now();
                let answer = try_request(
                    &addr,
                    "POST",
                    &path,
                    Some("application/x-www-form-urlencoded"),
                    field_event(n, "UF_CRM_LIVE").as_bytes(),
                );
                let took = started.elapsed();
                let mut s = slowest.lock().unwrap();
                *s = (*s).max(took);
                assert_eq!(answer.map(|a| a.status), Ok(200), "event {n} failed during the reload");
                acked.lock().unwrap().push(n);
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    // The reload comes while events arrive.
    assert!(eventually(PATIENCE, || acked.lock().unwrap().len() >= 50), "the sender is stuck");
    let rss_before = rss_kib(host.pid());
    deploy_probe_library(&dir, &v2);
    let reload = host.admin_request("POST", "/reload");
    assert_eq!(reload.status, 200, "{}", reload.body);
    assert!(
        reload.body.contains("\"reloaded\"") && reload.body.contains("probe"),
        "{}",
        reload.body
    );
    sender.join().unwrap();
    let rss_after = rss_kib(host.pid());

    let acked: BTreeSet<u64> = acked.lock().unwrap().iter().copied().collect();
    let missing = dir.wait_ids("probe.jsonl", "field_id", &acked, PATIENCE);
    assert!(missing.is_empty(), "events never reached the probe: {missing:?}");
    let lines: Vec<_> =
        dir.read_lines("probe.jsonl").into_iter().filter(|l| l["kind"] == "user_field").collect();
    let seen: BTreeSet<u64> = lines.iter().filter_map(|l| l["field_id"].as_u64()).collect();
    assert_eq!(seen, acked, "every acknowledged event reached one of the two versions");
    let versions: Vec<&str> = lines.iter().filter_map(|l| l["version"].as_str()).collect();
    assert_eq!(versions.first(), Some(&"0.1.0"));
    assert_eq!(versions.last(), Some(&"0.2.0"), "the new version runs after the reload");
    let switch = versions.iter().position(|v| *v == "0.2.0").unwrap();
    assert!(
        versions[switch..].iter().all(|v| *v == "0.2.0"),
        "no call went back to the old version"
    );
    let slowest = *slowest.lock().unwrap();
    assert!(slowest < Duration::from_secs(2), "a request stalled {slowest:?} during the swap");
    eprintln!(
        "reload under load: {} events, slowest request {:?}, RSS {} KiB -> {} KiB across the reload",
        acked.len(),
        slowest,
        rss_before,
        rss_after
    );

    // A broken build: the reload fails, says so, and version 0.2.0 keeps serving.
    std::fs::write(dir.path().join("plugins").join(plugin_file("probe")), b"not a library")
        .unwrap();
    let reload = host.admin_request("POST", "/reload");
    assert_eq!(reload.status, 500, "{}", reload.body);
    assert!(reload.body.contains("failed") && reload.body.contains("probe"), "{}", reload.body);
    let ready = host.admin_request("GET", "/readyz");
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert!(ready.body.contains("previous instance still serves"), "{}", ready.body);
    assert_eq!(host.post_form(&field_event(9999, "UF_CRM_AFTER")).status, 200);
    let after = dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["field_id"] == 9999);
    assert_eq!(after[0]["version"], "0.2.0");

    // The reload command reports the failure with its exit code.
    let admin = format!("http://{}/", host.admin.as_deref().unwrap());
    let out = dir.run_cli(&["reload", "--admin", &admin]);
    assert!(!out.status.success());
    let host = Arc::into_inner(host).unwrap();
    assert!(host.stop());
}

#[test]
fn sighup_reloads_and_a_newly_enabled_plugin_starts_with_new_events() {
    let dir = HostDir::new(&["probe", "audit-log"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_BEFORE")).status, 200);
    dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "user_field");
    // The probe's thread count only changes with a restart: the reload says so.
    dir.write_config(&config(&["probe", "audit-log"], &probe("concurrency = 2", "")));
    host.signal("HUP");
    assert!(
        host.wait_log("plugin loaded", PATIENCE) && host.wait_log("reload finished", PATIENCE),
        "{}",
        host.log_text()
    );
    let log = host.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("plugin.probe.concurrency") && l.contains("after a restart")),
        "{log}"
    );
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_AFTER")).status, 200);
    let audit = dir.wait_lines("audit.jsonl", 1, PATIENCE, |_| true);
    assert_eq!(audit.len(), 1);
    assert_eq!(audit[0]["field_id"], 2, "the new plugin starts from events after it was enabled");
    assert!(host.stop());
}

#[test]
fn a_disabled_plugin_keeps_its_backlog_and_gets_it_once_enabled_again() {
    let dir = HostDir::new(&["probe", "audit-log"]);
    // The probe's calls wait while hold.flag exists: its first call is held until the disable
    // has begun, however slow the machine.
    let both = config(&["probe", "audit-log"], &probe("", "hold_while = \"hold.flag\""));
    dir.write_config(&both);
    std::fs::write(dir.path().join("hold.flag"), "").unwrap();
    let host = start(&dir);
    // Event 1 alone first: its call is the one held. (Posted together, the eight could reach
    // the runner in one frame, a batch the disable lets end like any call in flight.)
    let mut acked = post_fields(&host, 1..=1, "UF_CRM_QUEUED");
    dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "user_field");
    acked.extend(post_fields(&host, 2..=8, "UF_CRM_QUEUED"));
    // Disable the probe while most of its events wait (read ahead into its queue, too).
    dir.write_config(&config(&["audit-log"], &probe("", "hold_while = \"hold.flag\"")));
    host.signal("HUP");
    assert!(host.wait_log("disabling the plugin", PATIENCE), "{}", host.log_text());
    std::fs::remove_file(dir.path().join("hold.flag")).unwrap();
    assert!(host.wait_log("plugin disabled", PATIENCE), "{}", host.log_text());
    // Its instance is shut down once its call in flight ends: nothing can call it after that.
    let shutdown = dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "shutdown");
    assert_eq!(shutdown.len(), 1, "the disabled plugin was not shut down");
    let records = dir.read_lines_lenient("probe.jsonl");
    let at_disable =
        event_ids(&records[..records.iter().position(|l| l["kind"] == "shutdown").unwrap()]);
    assert!(
        at_disable.len() < 8,
        "everything was delivered before the disable; proves nothing: {records:?}\n{}",
        host.log_text()
    );
    // What it did not get stays in the journal.
    let left = 8 - at_disable.len() as u64;
    eventually(PATIENCE, || dir.stats()["probe"].0 == left);
    assert_eq!(dir.stats()["probe"].0, left, "{at_disable:?}");
    // The other plugin was not held back.
    assert_eq!(dir.wait_lines("audit.jsonl", 8, PATIENCE, |_| true).len(), 8);

    dir.write_config(&both);
    host.signal("HUP");
    let lines = dir.wait_lines("probe.jsonl", 8, PATIENCE, |l| l["kind"] == "user_field");
    assert_eq!(event_ids(&lines), acked, "each event once, in order, across the disable");
    assert!(host.stop());
}

#[test]
fn disabling_a_plugin_that_waits_out_a_long_back_off_does_not_wait_for_it() {
    let dir = HostDir::new(&["probe"]);
    // Every call fails while the flag exists; the next attempt is 20 to 40 s away.
    let settings = "[plugin.probe.retry]\nattempts = 5\nbase_ms = 40000\ncap_ms = 40000\n\n\
                    [plugin.probe.settings]\nrecord = \"probe.jsonl\"\nfail_while = \"fail.flag\"\n";
    dir.write_config(&config(&["probe"], settings));
    std::fs::write(dir.path().join("fail.flag"), "").unwrap();
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_WAITS")).status, 200);
    dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "user_field");
    assert!(host.wait_log("plugin asked to retry", PATIENCE), "{}", host.log_text());
    let started = Instant::now();
    dir.write_config(&config(&[], settings));
    host.signal("HUP");
    assert!(host.wait_log("plugin disabled", PATIENCE), "{}", host.log_text());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the reload waited {:?}, as long as the back-off",
        started.elapsed()
    );
    // The event waits in the journal with its attempt counted.
    assert!(host.stop());
    assert_eq!(dir.stats()["probe"], (1, 1, 0));
}

crate::in_process_too!(
    metrics_move_with_events_rejections_retries_and_dead_letters,
    a_live_reload_under_load_loses_nothing_and_a_broken_build_leaves_the_old_one_serving,
    sighup_reloads_and_a_newly_enabled_plugin_starts_with_new_events,
);
