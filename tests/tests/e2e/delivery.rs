//! Plugin failures stay inside their plugin: panics, slowness, retries, rejections.

use crate::support::*;

#[test]
fn a_panicking_plugin_neither_stops_the_host_nor_the_other_plugins() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "panic_always = true")));
    let mut host = start(&dir);
    for id in 1..=20 {
        assert_eq!(host.post_form(&field_event(id, "UF_CRM_X")).status, 200);
    }
    let audit = dir.wait_lines("audit.jsonl", 20, PATIENCE, |_| true);
    assert_eq!(audit.len(), 20);
    // Every event was tried 3 times (the configured attempts), each on a fresh instance.
    let tries = dir.wait_lines("probe.jsonl", 60, PATIENCE, |l| l["kind"] == "user_field");
    assert_eq!(tries.len(), 60);
    assert!(host.is_running());
    assert_eq!(host.post_form(&field_event(21, "UF_CRM_X")).status, 200);
    let log = host.log_text();
    assert!(log.contains("probe told to panic always"), "the panic message is not in the log");
    assert!(log.contains("re-creating"), "{log}");
}

#[test]
fn a_panic_on_one_event_is_retried_and_later_events_still_arrive() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_PANIC")).status, 200);
    assert_eq!(host.post_form(&field_event(2, "UF_CRM_RETRY2")).status, 200);
    assert_eq!(host.post_form(&field_event(3, "UF_CRM_REJECT")).status, 200);
    assert_eq!(host.post_form(&field_event(4, "UF_CRM_FINE")).status, 200);
    let lines = dir.wait_lines("probe.jsonl", 8, PATIENCE, |l| l["kind"] == "user_field");
    let attempts = |id: u64| -> Vec<u64> {
        lines
            .iter()
            .filter(|l| l["field_id"] == id)
            .map(|l| l["attempt"].as_u64().unwrap_or(0))
            .collect()
    };
    assert_eq!(attempts(1), vec![1, 2, 3], "a panicking event is tried the configured 3 times");
    // Then it is a dead letter, as is the rejected one.
    assert_eq!(attempts(2), vec![1, 2, 3], "RETRY2 succeeds on the third attempt");
    assert_eq!(attempts(3), vec![1], "a rejected event is not retried");
    assert_eq!(attempts(4), vec![1]);
    // Arrival order is kept per plugin.
    let order: Vec<u64> = lines.iter().map(|l| l["field_id"].as_u64().unwrap_or(0)).collect();
    assert_eq!(order, vec![1, 1, 1, 2, 2, 2, 3, 4]);
    // The event id stays the same across attempts.
    let ids: Vec<_> =
        lines.iter().filter(|l| l["field_id"] == 2).map(|l| l["event_id"].clone()).collect();
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "{ids:?}");
    eventually(PATIENCE, || dir.stats()["probe"] == (0, 0, 2));
    assert_eq!(dir.stats()["probe"], (0, 0, 2));
    assert!(host.stop());
}

#[test]
fn a_plugin_past_its_timeout_does_not_delay_the_others() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(
        &["audit-log", "probe"],
        &probe("timeout_ms = 100", "sleep_ms = 3000"),
    ));
    let host = start(&dir);
    for id in 1..=5 {
        assert_eq!(host.post_form(&field_event(id, "UF_CRM_X")).status, 200);
    }
    // audit-log gets all five while the probe is still inside its first call, which alone
    // takes 3 s; the probe needs 15 s for all five.
    let audit = dir.wait_lines("audit.jsonl", 5, PATIENCE, |_| true);
    assert_eq!(audit.len(), 5);
    let probe_calls = dir.read_lines("probe.jsonl").len();
    assert!(
        probe_calls <= 2,
        "audit-log waited for the slow probe ({probe_calls} probe calls first)"
    );
    assert!(host.wait_log("exceeded its timeout", PATIENCE), "the timeout was not logged");
}

crate::in_process_too!(
    a_panicking_plugin_neither_stops_the_host_nor_the_other_plugins,
    a_panic_on_one_event_is_retried_and_later_events_still_arrive,
    a_plugin_past_its_timeout_does_not_delay_the_others,
);
