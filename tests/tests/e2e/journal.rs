//! The durable journal: retries, dead letters, replay, duplicates, restarts, pruning, storage
//! failures, and the `journal` commands on a running and a stopped host.

use crate::support::*;

/// Waits until `journal stats` shows no backlog for any plugin.
fn wait_drained(dir: &HostDir) -> bool {
    eventually(PATIENCE, || dir.stats().values().all(|(backlog, _, _)| *backlog == 0))
}

#[test]
fn failed_events_become_dead_letters_and_replay_delivers_them() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "fail_while = \"fail.flag\"")));
    std::fs::write(dir.path().join("fail.flag"), "").unwrap();
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_A")).status, 200);
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_REJECT")).status, 200);
    assert_eq!(host.post_form(&field_event(3, "UF_CRM_B")).status, 200);
    // 3 attempts each for 1 and 3 (the flag makes every call retry), 1 for the rejection.
    let calls = dir.wait_lines("probe.jsonl", 7, PATIENCE, |l| l["kind"] == "user_field");
    assert_eq!(calls.len(), 7);
    assert!(wait_drained(&dir), "{:?}", dir.stats());
    // Other plugins were never held back.
    assert_eq!(dir.wait_lines("audit.jsonl", 3, PATIENCE, |_| true).len(), 3);

    // Asked of the running host, through its control socket.
    let stats = dir.stats();
    assert_eq!(stats["probe"], (0, 0, 3), "{stats:?}");
    assert_eq!(stats["audit-log"], (0, 0, 0));
    let dead = dir.journal(&["dead", "--plugin", "probe"]);
    let rows = dead["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    let reasons: Vec<&str> = rows.iter().map(|r| r["dead"]["reason"].as_str().unwrap()).collect();
    assert!(reasons[0].starts_with("gave up after 3 attempts"), "{reasons:?}");
    assert!(reasons[1].starts_with("rejected: probe told to reject"), "{reasons:?}");

    // Fix the cause, replay two of them; they arrive with the same event ids.
    std::fs::remove_file(dir.path().join("fail.flag")).unwrap();
    let ids: Vec<String> = rows.iter().map(|r| r["id"].to_string()).collect();
    let replayed = dir.journal(&["replay", "--plugin", "probe", &ids[0], &ids[2]]);
    assert_eq!(replayed["rows"].as_array().unwrap().len(), 2);
    let calls = dir.wait_lines("probe.jsonl", 9, PATIENCE, |l| l["kind"] == "user_field");
    assert_eq!(calls.len(), 9);
    let last_two: Vec<String> = calls[7..].iter().map(|l| l["event_id"].to_string()).collect();
    assert_eq!(last_two, vec![ids[0].clone(), ids[2].clone()]);
    assert!(calls[7..].iter().all(|l| l["attempt"] == 1), "replay starts again at attempt 1");
    assert!(wait_drained(&dir));
    assert_eq!(dir.stats()["probe"], (0, 0, 1));

    // Purge the last one, on the stopped host this time.
    assert!(host.stop());
    let purged = dir.journal(&["purge", "--plugin", "probe"]);
    assert_eq!(purged["rows"].as_array().unwrap().len(), 1);
    assert_eq!(dir.stats()["probe"], (0, 0, 0));
}

#[test]
fn an_identical_event_within_the_window_is_acknowledged_but_delivered_once() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    let body = fixture("ONCRMLEADUSERFIELDUPDATE");
    let first = host.post_form(&body);
    let second = host.post_form(&body);
    // A second binding sends the same change with another handler id: still the same change.
    let third = host.post_form(&body.replace("event_handler_id=15", "event_handler_id=16"));
    assert_eq!(first.status, 200);
    assert_eq!(second.status, 200);
    assert_eq!(third.status, 200);
    let id = first.body.trim_start_matches("accepted ").to_owned();
    assert_eq!(second.body, format!("duplicate of {id}"));
    assert_eq!(third.body, format!("duplicate of {id}"));
    // A real second change (another ts) is a new event.
    let later = host.post_form(&body.replace("ts=1727018926", "ts=1727018927"));
    assert!(later.body.starts_with("accepted "), "{later:?}");
    let calls = probe_sentinel(&host, &dir, 999_999);
    let calls: Vec<_> = calls.iter().filter(|l| l["kind"] == "user_field").collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
}

#[test]
fn pending_events_survive_a_restart_with_their_ids() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "sleep_ms = 300")));
    let host = start(&dir);
    let acked = post_fields(&host, 1..=8, "UF_CRM_SLOW");
    dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "user_field");
    // A graceful stop finishes the call in flight and leaves the rest in the journal.
    assert!(host.stop());
    let before = probe_calls(&dir);
    assert!(before.len() < 8, "everything was delivered before the stop; the test proves nothing");
    assert_eq!(dir.stats()["probe"].0, 8 - before.len() as u64);

    let host = start(&dir);
    let lines = dir.wait_lines("probe.jsonl", 8, PATIENCE, |l| l["kind"] == "user_field");
    assert_eq!(
        event_ids(&lines),
        acked,
        "every event once, in arrival order, under its original id"
    );
    assert!(wait_drained(&dir));
    assert!(host.stop());
}

#[test]
fn a_plugin_that_fails_to_load_does_not_stop_the_host_and_gets_its_events_once_it_loads() {
    // The probe is enabled but its library is not there yet.
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "")));
    let host = start(&dir);
    assert!(host.wait_log("plugin `probe`: no library", PATIENCE), "{}", host.log_text());
    for id in 1..=3 {
        assert_eq!(host.post_form(&field_event(id, "UF_CRM_WAIT")).status, 200);
    }
    assert_eq!(dir.wait_lines("audit.jsonl", 3, PATIENCE, |_| true).len(), 3);
    assert_eq!(dir.stats()["probe"], (3, 0, 0));
    // check reports it as failed.
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("plugin `probe`"));
    assert!(host.stop());

    dir.add_plugin_file(&built().lib_dir.join(plugin_file("probe")));
    let host = start(&dir);
    let lines = dir.wait_lines("probe.jsonl", 3, PATIENCE, |l| l["kind"] == "user_field");
    assert_eq!(lines.len(), 3);
    assert!(wait_drained(&dir));
    assert!(host.stop());
}

#[test]
fn completed_events_are_pruned_but_dead_letters_stay() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&format!(
        "{}\n[journal]\nkeep_completed_events = 5\n",
        config(&["probe"], &probe("", ""))
    ));
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(100, "UF_CRM_REJECT")).status, 200);
    for id in 1..=20 {
        assert_eq!(host.post_form(&field_event(id, "UF_CRM_OK")).status, 200);
    }
    dir.wait_lines("probe.jsonl", 21, PATIENCE, |l| l["kind"] == "user_field");
    assert!(wait_drained(&dir));
    assert!(host.stop());
    // The journal prunes when it starts (and every few seconds while running).
    let host = start(&dir);
    let mut events = u64::MAX;
    eventually(PATIENCE, || {
        events = dir.journal(&["stats"])["events"].as_u64().unwrap();
        events <= 6
    });
    assert_eq!(events, 6, "5 completed events and 1 dead letter are kept");
    assert_eq!(dir.stats()["probe"], (0, 0, 1));
    let listed = dir.journal(&["list", "--limit", "100"]);
    assert_eq!(listed["events"].as_array().unwrap().len(), 6);
    assert!(host.stop());
}

#[test]
fn journal_show_redacts_every_token() {
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log"], ""));
    let host = start(&dir);
    let answer = host.post_form(&fixture("ONCRMDEALUSERFIELDUPDATE"));
    let id = answer.body.trim_start_matches("accepted ").to_owned();
    let out = dir.run_cli(&["journal", "show", &id, "--config", "host.toml"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("ONCRMDEALUSERFIELDUPDATE") && text.contains("<redacted>"), "{text}");
    assert!(!text.contains(TOKEN) && !text.contains("s6p6eclrvim6da22ft9ch94ekreb52lv"), "{text}");
    assert!(host.stop());
}

/// Starts a host whose journal file may not grow past 20 MiB (a full disk, as far as the host
/// can tell) and posts 60 kB events until `refusals` of them got 503; the ids answered 200 and
/// the 503 answers' bodies.
fn fill_until_refused(dir: &HostDir, refusals: usize) -> (RunningHost, Vec<u64>, Vec<String>) {
    dir.write_config(&config(&[], ""));
    let host = dir
        .start_with(Launch { file_size_limit_kib: Some(20 * 1024), ..Launch::default() })
        .unwrap_or_else(|e| panic!("{e}"));
    let pad = "x".repeat(60_000);
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for id in 0..1000 {
        let body = format!("{}&data%5Bpad%5D={pad}", field_event(id, "UF_CRM_BIG"));
        let answer = host.post_form(&body);
        match answer.status {
            200 => {
                accepted.push(answer.body.trim_start_matches("accepted ").parse::<u64>().unwrap())
            }
            503 => {
                refused.push(answer.body);
                if refused.len() >= refusals {
                    break;
                }
            }
            other => panic!("unexpected {other}: {answer:?}"),
        }
    }
    assert!(
        refused.len() >= refusals && !accepted.is_empty(),
        "accepted {} refused {}",
        accepted.len(),
        refused.len()
    );
    (host, accepted, refused)
}

/// After a restart without the limit, the journal holds every event answered 200.
fn assert_kept_after_restart(dir: &HostDir, accepted: &[u64]) {
    let host = start(dir);
    let events = dir.journal(&["stats"])["events"].as_u64().unwrap();
    assert_eq!(events, accepted.len() as u64);
    assert!(host.stop());
}

#[test]
fn a_journal_that_cannot_grow_answers_503_and_keeps_what_it_accepted() {
    let dir = HostDir::new(&[]);
    let (host, accepted, refused) = fill_until_refused(&dir, 3);
    for body in &refused {
        assert!(body.contains("nothing was accepted"), "{body}");
    }
    assert!(host.stop());
    assert_kept_after_restart(&dir, &accepted);
}

/// The write-ahead log takes events (its segments stay under the limit) that the journal file
/// behind it cannot (it may not grow): the host says which events only the log holds (an ERROR
/// line and `/readyz`), answers 503 rather than 200 while the file cannot take them, and keeps
/// them: a restart without the limit brings every event answered 200 into the file.
#[test]
fn events_the_file_cannot_take_stay_in_the_log_and_new_ones_get_503_meanwhile() {
    let dir = HostDir::new(&[]);
    let (host, accepted, _) = fill_until_refused(&dir, 20);
    // The file failed while the log held events it had not taken: said loudly, with the ids.
    assert!(
        host.wait_log("held in the write-ahead log", PATIENCE),
        "no word of the events only the log holds:\n{}",
        host.log_text()
    );
    let errors: Vec<String> = host
        .log_text()
        .lines()
        .filter(|l| l.contains("held in the write-ahead log"))
        .map(str::to_owned)
        .collect();
    assert!(errors.iter().any(|l| l.contains("ERROR") && l.contains("ids ")), "{errors:?}");
    assert!(host.stop());
    assert_kept_after_restart(&dir, &accepted);
}
