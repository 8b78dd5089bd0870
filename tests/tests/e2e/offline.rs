//! Offline events: the portal's guaranteed queue, pulled into the journal.

use std::{collections::BTreeSet, time::Duration};

use b24_tests::fake_portal::{FakePortal, PortalOptions};
use serde_json::{Value, json};

use crate::support::*;

/// A host folder with the probe, set up to poll `portal`'s offline queue.
fn offline_host(portal: &FakePortal, poll_ms: u64) -> HostDir {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&offline_config(portal, poll_ms, &["probe"], "", ""));
    dir
}

/// A fake portal, a host with the probe polling it every `poll_ms`, started, and the app
/// installed on the portal.
fn installed(poll_ms: u64) -> (FakePortal, HostDir, RunningHost) {
    let portal = FakePortal::start(PortalOptions::default());
    let (dir, host) = installed_on(&portal, poll_ms);
    (portal, dir, host)
}

/// A host with the probe polling `portal` every `poll_ms`, started, and the app installed.
fn installed_on(portal: &FakePortal, poll_ms: u64) -> (HostDir, RunningHost) {
    let dir = offline_host(portal, poll_ms);
    let host = start(&dir);
    post_app_install(&host, portal);
    (dir, host)
}

/// host.toml polling `portal` every `poll_ms`, with `enabled` plugins, `portal_keys` in the
/// portal's table and `offline_keys` in its offline table.
pub(crate) fn offline_config(
    portal: &FakePortal,
    poll_ms: u64,
    enabled: &[&str],
    portal_keys: &str,
    offline_keys: &str,
) -> String {
    let options = portal.options();
    format!(
        "{}\n[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_url = {:?}\n\n[rest.portals.\"{MEMBER}\"]\nrate_per_sec = 50.0\nburst = 50\n{portal_keys}\n\n[rest.portals.\"{MEMBER}\".offline]\npoll_interval_ms = {poll_ms}\nbatch = 5\n{offline_keys}\n",
        config(enabled, &probe("", "")),
        options.client_id,
        options.client_secret,
        portal.oauth_url(),
    )
}

/// The poller's status of the fixtures' portal, as `offline status --json` shows it.
pub(crate) fn offline_status(dir: &HostDir) -> Value {
    let out = dir.run_cli(&["offline", "status", "--config", "host.toml", "--json"]);
    let status: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    status["portals"][0].clone()
}

/// Each of `rows` became exactly one journal event (a redelivery keeps the event id).
fn assert_once_each(dir: &HostDir, rows: &BTreeSet<String>) {
    let lines = dir.read_lines_lenient("probe.jsonl");
    for message_id in rows {
        let ids: BTreeSet<u64> = lines
            .iter()
            .filter(|l| l["message_id"] == message_id.as_str())
            .filter_map(|l| l["event_id"].as_u64())
            .collect();
        assert_eq!(ids.len(), 1, "row {message_id} became events {ids:?}");
    }
}

/// Waits until the `later` rows reach the probe, then asserts it got exactly `first` and
/// `later`, each row as one event.
fn assert_later_rows_arrive_and_all_once(
    dir: &HostDir,
    first: &BTreeSet<String>,
    later: &BTreeSet<String>,
) {
    wait_for("the later rows to arrive", PATIENCE, || {
        let got: BTreeSet<String> = delivered(dir).into_iter().collect();
        later.is_subset(&got)
    });
    let all: BTreeSet<String> = first.union(later).cloned().collect();
    assert_eq!(delivered(dir).into_iter().collect::<BTreeSet<_>>(), all);
    assert_once_each(dir, &all);
}

/// `b24-host offline bind` of `ONCRMDEALUSERFIELDUPDATE` on the fixtures' portal; must succeed.
fn bind_deal_field_updates(dir: &HostDir) {
    let out = dir.run_cli(&[
        "offline",
        "bind",
        "--portal",
        MEMBER,
        "--event",
        "ONCRMDEALUSERFIELDUPDATE",
        "--config",
        "host.toml",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Makes the portal's next clear go wrong by `fault`, pushes `n` rows (see [`push_rows`]) and
/// waits until `host` logs the failed clear.
fn rows_past_a_failed_clear(
    host: &RunningHost,
    portal: &FakePortal,
    fault: fn(&FakePortal, usize),
    n: u64,
    first_field: u64,
) -> BTreeSet<String> {
    fault(portal, 1);
    let rows = push_rows(portal, n, first_field);
    assert!(host.wait_log("event.offline.clear failed", PATIENCE), "{}", host.log_text());
    rows
}

pub(crate) fn push_rows(portal: &FakePortal, n: u64, first_field: u64) -> BTreeSet<String> {
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
pub(crate) fn delivered(dir: &HostDir) -> Vec<String> {
    dir.read_lines_lenient("probe.jsonl")
        .iter()
        .filter(|l| l["origin"] == "Offline")
        .filter_map(|l| l["message_id"].as_str().map(str::to_owned))
        .collect()
}

fn wait_for(what: &str, limit: Duration, done: impl FnMut() -> bool) {
    assert!(eventually(limit, done), "timed out waiting for {what}");
}

#[test]
fn each_row_reaches_the_plugins_once_across_a_sigkill_between_journal_and_clear() {
    let (portal, dir, host) = installed(300);
    // The first clear fails: the batch is journaled but stays reserved on the portal, as if
    // the host had died right after the journal write.
    let rows = rows_past_a_failed_clear(&host, &portal, FakePortal::fail_next_clears, 12, 100);
    host.kill();

    let host = start(&dir);
    wait_for("the queue to empty", PATIENCE, || portal.offline_rows().is_empty());
    // Every row is journaled before it is cleared: an event posted now is delivered after all.
    probe_sentinel(&host, &dir, 999_999);
    let got = delivered(&dir);
    let unique: BTreeSet<String> = got.iter().cloned().collect();
    assert_eq!(unique, rows, "every row reached the probe");
    // Each row became exactly one event: a SIGKILL may interrupt a plugin call and so repeat
    // that delivery (at least once), but always under the same event id.
    assert_once_each(&dir, &rows);
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
    let status = offline_status(&dir);
    assert_eq!(status["mode"], "safe", "{status}");
    assert!(host.stop());
}

#[test]
fn two_hosts_polling_one_portal_split_the_queue_and_lose_nothing() {
    let portal = FakePortal::start(PortalOptions::default());
    let a = offline_host(&portal, 200);
    let b = offline_host(&portal, 200);
    let host_a = start(&a);
    let host_b = start(&b);
    post_app_install(&host_a, &portal);
    post_app_install(&host_b, &portal);
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
    let (dir, host) = installed_on(&portal, 300);
    let rows = push_rows(&portal, 7, 200);
    wait_for("every row to be delivered", PATIENCE, || delivered(&dir).len() >= rows.len());
    let got: BTreeSet<String> = delivered(&dir).into_iter().collect();
    assert_eq!(got, rows);
    assert!(host.log_text().contains("falling back to clear=1"), "{}", host.log_text());
    let status = offline_status(&dir);
    assert_eq!(status["mode"], "clear", "{status}");
    assert!(host.stop());
}

#[test]
fn onofflineevent_wakes_the_poller_and_bind_subscribes_offline_events() {
    let portal = FakePortal::start(PortalOptions::default());
    // Polls once at start, then only every 10 minutes.
    let (dir, host) = installed_on(&portal, 600_000);
    wait_for("the first poll", PATIENCE, || offline_status(&dir)["last_poll_ms"].is_number());
    let rows = push_rows(&portal, 3, 300);
    // Had the poller taken the rows before this event was journaled, they would come before it.
    let before = probe_sentinel(&host, &dir, 999_999);
    assert!(
        !before.iter().any(|l| l["origin"] == "Offline"),
        "rows arrived without a wake-up: {before:?}"
    );
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

#[test]
fn a_clear_whose_reply_is_lost_does_not_stall_the_queue() {
    let (portal, dir, host) = installed(200);
    // The portal deletes the batch but the host never learns it did: it keeps the process_id,
    // under which the portal now holds nothing and reserves nothing new.
    let first =
        rows_past_a_failed_clear(&host, &portal, FakePortal::garble_next_clear_replies, 3, 400);
    wait_for("the first rows", PATIENCE, || delivered(&dir).len() >= first.len());
    let later = push_rows(&portal, 3, 410);
    assert_later_rows_arrive_and_all_once(&dir, &first, &later);
    assert!(host.stop());
}

#[test]
fn a_host_killed_right_after_the_clear_reads_the_queue_again_after_a_restart() {
    let (portal, dir, host) = installed(200);
    // The clear is applied on the portal and its reply held back; the host dies waiting.
    portal.hold_next_clear();
    let first = push_rows(&portal, 3, 500);
    wait_for("the clear to be applied and held", PATIENCE, || portal.clear_is_held());
    host.kill();
    portal.release_held_clear();
    assert!(portal.offline_rows().is_empty(), "{:?}", portal.offline_rows());

    let later = push_rows(&portal, 3, 510);
    let host = start(&dir);
    assert_later_rows_arrive_and_all_once(&dir, &first, &later);
    assert!(host.stop());
}

#[test]
fn an_offline_row_reaches_a_plugin_enabled_by_a_live_reload() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["probe", "audit-log"]);
    dir.write_config(&offline_config(&portal, 200, &["audit-log"], "", ""));
    let host = start(&dir);
    post_app_install(&host, &portal);
    dir.write_config(&offline_config(&portal, 200, &["audit-log", "probe"], "", ""));
    let reload = host.admin_request("POST", "/reload");
    assert_eq!(reload.status, 200, "{}", reload.body);
    let rows = push_rows(&portal, 2, 600);
    wait_for("the newly enabled plugin to get the offline rows", PATIENCE, || {
        delivered(&dir).len() >= rows.len()
    });
    assert_eq!(delivered(&dir).into_iter().collect::<BTreeSet<_>>(), rows);
    assert!(host.stop());
}

#[test]
fn offline_bind_subscribes_with_the_portals_connector() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&offline_config(
        &portal,
        600_000,
        &["probe"],
        "",
        "auth_connector = \"b24host\"",
    ));
    let host = start(&dir);
    post_app_install(&host, &portal);
    bind_deal_field_updates(&dir);
    let bindings = portal.bindings();
    assert_eq!(bindings.len(), 1, "{bindings:?}");
    assert_eq!(bindings[0]["auth_connector"], "b24host", "{bindings:?}");
    assert!(host.stop());
}

#[test]
fn a_plugins_own_write_with_the_connector_does_not_come_back_offline() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&offline_config(&portal, 200, &["probe"], "", "auth_connector = \"b24host\""));
    let host = start(&dir);
    post_app_install(&host, &portal);
    bind_deal_field_updates(&dir);
    // Another application (connector) sees every change, the probe's write included.
    portal.bind_offline_for("other", "ONCRMDEALUSERFIELDUPDATE");
    let field = portal.add_field("CRM_DEAL", "UF_CRM_WRITE", "string", vec![]);
    let mut event = args("ONCRMDEALUSERFIELDUPDATE");
    event.field_id = field;
    event.field_name = "UF_CRM_WRITE".into();
    event.client_endpoint = Some(portal.client_endpoint());
    assert_eq!(host.post_form(&form(&event)).status, 200);
    wait_for("the probe's write", PATIENCE, || {
        dir.read_lines_lenient("probe.jsonl").iter().any(|l| l["kind"] == "rest")
    });
    let write = dir.read_lines_lenient("probe.jsonl").into_iter().find(|l| l["kind"] == "rest");
    assert_eq!(write.as_ref().map(|w| w["ok"].clone()), Some(json!(true)), "{write:?}");
    assert_eq!(portal.field(field).unwrap().label, "probe");
    // A sentinel change made on the portal arrives; the probe's own write never does.
    let sentinel = push_rows(&portal, 1, 700);
    wait_for("the sentinel", PATIENCE, || {
        let got: BTreeSet<String> = delivered(&dir).into_iter().collect();
        sentinel.is_subset(&got)
    });
    let echoes: Vec<Value> = dir
        .read_lines_lenient("probe.jsonl")
        .into_iter()
        .filter(|l| l["origin"] == "Offline" && l["field_id"] == field)
        .collect();
    assert!(echoes.is_empty(), "the plugin's own write came back: {echoes:?}");
    let field_id = field.to_string();
    let queued: Vec<Value> = portal
        .offline_rows()
        .into_iter()
        .filter(|r| r["EVENT_DATA"]["FIELDS"]["ID"] == field_id.as_str())
        .collect();
    assert_eq!(queued.len(), 1, "only the other connector's queue has it: {queued:?}");
    assert!(host.stop());
}

#[test]
fn a_plan_without_connectors_is_reported_not_taken_for_a_lossy_fallback() {
    let portal = FakePortal::start(PortalOptions::default());
    portal.set_connectors_allowed(false);
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&offline_config(&portal, 200, &["probe"], "", "auth_connector = \"b24host\""));
    let host = start(&dir);
    post_app_install(&host, &portal);
    wait_for("a poll refused for the connector", PATIENCE, || {
        offline_status(&dir)["last_error"].as_str().is_some_and(|e| e.contains("WRONG_LICENSE"))
    });
    let status = offline_status(&dir);
    assert_eq!(status["mode"], "safe", "{status}");
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("does not allow auth_connector"), "{status}");
    assert!(host.log_text().contains("auth_connector"), "{}", host.log_text());
    let lossy = portal
        .event_calls()
        .into_iter()
        .filter(|c| c["method"] == "event.offline.get" && c["params"]["clear"] == 1)
        .count();
    assert_eq!(lossy, 0, "no clear=1 read");
    assert!(host.stop());
}

#[test]
fn a_webhook_is_never_used_for_the_offline_queue_and_the_poller_says_why() {
    let portal = FakePortal::start(PortalOptions::default());
    let hook = portal.add_webhook(1);
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&offline_config(&portal, 200, &["probe"], &format!("webhook = {hook:?}"), ""));
    // No install: the host has the webhook only.
    let host = start(&dir);
    // Without the app's OAuth tokens the poller does not call the portal; it says why.
    wait_for("the poller to say why", PATIENCE, || offline_status(&dir)["last_error"].is_string());
    let status = offline_status(&dir);
    let error = status["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("webhook") && error.contains("install"), "{status}");
    let by_webhook = portal.event_calls().into_iter().filter(|c| c["webhook"] == true).count();
    assert_eq!(by_webhook, 0, "{:?}", portal.event_calls());
    assert!(host.stop());
}

#[test]
fn a_non_admin_install_is_reported_as_such() {
    let portal = FakePortal::start(PortalOptions::default());
    portal.set_app_user_admin(false);
    let (dir, host) = installed_on(&portal, 200);
    wait_for("a refused poll", PATIENCE, || {
        offline_status(&dir)["last_error"].as_str().is_some_and(|e| e.contains("ACCESS_DENIED"))
    });
    let status = offline_status(&dir);
    assert_eq!(status["mode"], "safe", "{status}");
    assert!(status["last_error"].as_str().unwrap().contains("administrator"), "{status}");
    // Once the app's user is an admin, the rows flow, with the portal's UTC offset kept.
    portal.set_app_user_admin(true);
    let rows = push_rows(&portal, 2, 800);
    wait_for("the rows", PATIENCE, || delivered(&dir).len() >= rows.len());
    let lines = dir.read_lines_lenient("probe.jsonl");
    let stamp = lines.iter().find(|l| l["origin"] == "Offline").unwrap()["timestamp"].clone();
    assert!(stamp.as_str().is_some_and(|s| s.ends_with("+03:00")), "{stamp}");
    assert!(host.stop());
}

#[test]
fn a_batch_whose_answer_was_lost_is_taken_over_and_its_rows_delivered() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&offline_config(&portal, 200, &["probe"], "", "resume_lost_after_ms = 1000"));
    let host = start(&dir);
    post_app_install(&host, &portal);
    wait_for("the first poll", PATIENCE, || offline_status(&dir)["last_poll_ms"].is_number());
    // The portal reserves the rows and the answer never reaches the host: no later get hands
    // them out, and Bitrix24 would drop them only after 34 days.
    portal.lose_next_get_replies(1);
    let rows = push_rows(&portal, 3, 900);
    wait_for("the rows, taken over", PATIENCE, || delivered(&dir).len() >= rows.len());
    assert_eq!(delivered(&dir).into_iter().collect::<BTreeSet<_>>(), rows);
    wait_for("the queue to empty", PATIENCE, || portal.offline_rows().is_empty());
    let status = offline_status(&dir);
    assert_eq!(status["lost_batches_resumed"], 1, "{status}");
    assert!(host.log_text().contains("whose reply was lost"), "{}", host.log_text());
    // Counted: the lost answer as a poll error, the rows pulled and cleared, the take-over.
    let metrics = host.admin_request("GET", "/metrics").body;
    let series = |name: &str, extra: &str| format!("{name}{{portal=\"{MEMBER}\"{extra}}}");
    assert_eq!(
        metric(&metrics, &series("b24_offline_rows_total", ",outcome=\"pulled\"")),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, &series("b24_offline_rows_total", ",outcome=\"cleared\"")),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, &series("b24_offline_poll_errors_total", "")) >= Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, &series("b24_offline_lost_batches_resumed_total", "")),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        metric(&metrics, &series("b24_offline_oldest_reservation_seconds", "")).is_some(),
        "{metrics}"
    );
    assert!(host.stop());
}

#[test]
fn offline_rows_reach_plugins_with_the_portals_domain_and_the_user_who_made_the_change() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&offline_config(&portal, 200, &["audit-log"], "", ""));
    let host = start(&dir);
    post_app_install(&host, &portal);
    let field = |id: u64| json!({"FIELDS": {"ID": id.to_string(), "ENTITY_ID": "CRM_DEAL", "FIELD_NAME": format!("UF_CRM_{id}")}});
    portal.push_offline("ONCRMDEALUSERFIELDUPDATE", field(41), Some(7));
    portal.push_offline("ONCRMDEALUSERFIELDUPDATE", field(42), None);
    let lines =
        dir.wait_lines("audit.jsonl", 2, PATIENCE, |l| l["event"] == "ONCRMDEALUSERFIELDUPDATE");
    let by_field = |id: u64| lines.iter().find(|l| l["field_id"] == id).cloned().unwrap();
    let changed_by_user = by_field(41);
    assert_eq!(changed_by_user["domain"], portal.domain(), "{changed_by_user}");
    assert_eq!(changed_by_user["user"], "7", "{changed_by_user}");
    // A change without a user (an agent, an automation) stays the system's.
    assert_eq!(by_field(42)["user"], "system");
    assert!(host.stop());
}

#[test]
fn a_row_sent_back_with_error_is_listed_as_parked_by_status_the_console_and_metrics() {
    let portal = FakePortal::start(PortalOptions::default());
    let (dir, host) = installed_on(&portal, 200);
    // A user-field row without a numeric field id cannot become an event: sent back.
    let bad = portal.push_offline(
        "ONCRMDEALUSERFIELDUPDATE",
        json!({"FIELDS": {"ID": "not-a-number", "ENTITY_ID": "CRM_DEAL"}}),
        Some(1),
    );
    wait_for("the row to be parked", PATIENCE, || portal.offline_errored().contains(&bad));
    wait_for("status to list it", PATIENCE, || offline_status(&dir)["parked_total"] == 1);
    let status = offline_status(&dir);
    assert_eq!(status["parked"][0]["message_id"], bad.as_str(), "{status}");
    assert_eq!(status["parked"][0]["event_name"], "ONCRMDEALUSERFIELDUPDATE", "{status}");
    let text = dir.run_cli(&["offline", "status", "--config", "host.toml"]);
    let printed = String::from_utf8_lossy(&text.stdout);
    assert!(printed.contains("parked with event.offline.error: 1 row(s)"), "{printed}");
    assert!(printed.contains(&bad), "{printed}");
    let page = host.admin_request("GET", "/portals").body;
    assert!(page.contains(&bad), "{page}");
    let metrics = host.admin_request("GET", "/metrics").body;
    assert_eq!(
        metric(&metrics, &format!("b24_offline_parked_rows{{portal=\"{MEMBER}\"}}")),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            &format!("b24_offline_rows_total{{portal=\"{MEMBER}\",outcome=\"error\"}}")
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(host.stop());
}
