//! Bitrix24's limits on REST calls: a method blocked for its operating time delays the event
//! that needs it, which is delivered once the block lifts, never dead-lettered for it; the host
//! does not call the blocked method before the reset the portal announced; `/metrics` counts
//! the calls and the waits.

use std::time::Duration;

use b24_tests::fake_portal::{FakePortal, PortalOptions};

use crate::support::*;

const GET: &str = "crm.deal.userfield.get";

#[test]
fn an_event_whose_method_is_blocked_for_its_operating_time_is_delivered_once_the_block_lifts() {
    // Bitrix24's limit (480 s over 10 minutes) at a test's scale: 2 s over 6 s.
    let portal = FakePortal::start(PortalOptions {
        operating_limit: Duration::from_secs(2),
        operating_window: Duration::from_secs(6),
        rate_per_sec: 50.0,
        ..PortalOptions::default()
    });
    portal.set_operating_cost(GET, Duration::from_millis(1500));
    let options = portal.options();
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&format!(
        "{}\n[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_url = {:?}\n",
        config(&["probe"], &probe("", "")),
        options.client_id,
        options.client_secret,
        portal.oauth_url(),
    ));
    let host = start(&dir);
    post_app_install(&host, &portal);
    let field = portal.add_field("CRM_DEAL", "UF_CRM_READ", "string", vec![]);
    // Three reads in a row: the first two run (the second takes the sum over the limit), the
    // third finds the method blocked.
    for code in
        ["ONCRMDEALUSERFIELDUPDATE", "ONCRMDEALUSERFIELDADD", "ONCRMDEALUSERFIELDSETENUMVALUES"]
    {
        let mut read = args(code);
        read.system = true;
        read.field_id = field;
        read.field_name = "UF_CRM_READ".into();
        read.client_endpoint = Some(portal.client_endpoint());
        assert_eq!(host.post_form(&form(&read)).status, 200);
    }
    let rest = |dir: &HostDir| -> Vec<serde_json::Value> {
        dir.read_lines_lenient("probe.jsonl").into_iter().filter(|l| l["kind"] == "rest").collect()
    };
    assert!(
        eventually(Duration::from_secs(90), || rest(&dir)
            .iter()
            .filter(|l| l["ok"] == true)
            .count()
            >= 3),
        "{:?}\n{:?}\n{}",
        rest(&dir),
        dir.stats(),
        host.log_text()
    );
    let lines = rest(&dir);
    // The third read met the block once, then came again after it lifted: the same attempt,
    // since a limit's wait uses none.
    let third: Vec<_> =
        lines.iter().filter(|l| l["event_id"] == lines.last().unwrap()["event_id"]).collect();
    assert_eq!(third.len(), 2, "{lines:?}");
    assert_eq!(third[0]["ok"], false, "{lines:?}");
    assert!(third[0]["error"].as_str().unwrap().contains("OPERATION_TIME_LIMIT"), "{lines:?}");
    assert_eq!((third[0]["attempt"].as_u64(), third[1]["attempt"].as_u64()), (Some(1), Some(1)));
    assert_eq!(dir.stats().get("probe").map(|s| s.2), Some(0), "a dead letter");
    assert_eq!(portal.operating_refusals(GET), 1);
    assert_eq!(portal.early_calls(GET), 0, "the host called the blocked method before its reset");

    // /metrics: the calls by family and outcome, the wait.
    assert_eq!(scrape(&host, "b24_rest_calls_total{family=\"crm\",status=\"ok\"}"), Some(3.0));
    assert_eq!(
        scrape(&host, "b24_rest_calls_total{family=\"crm\",status=\"operation_time_limit\"}"),
        Some(1.0)
    );
    assert_eq!(scrape(&host, "b24_rest_limit_waits_total{reason=\"operating_block\"}"), Some(1.0));
    let waited = scrape(&host, "b24_rest_limit_wait_seconds_total{reason=\"operating_block\"}");
    assert!(waited.is_some_and(|s| s > 0.5 && s < 10.0), "{waited:?}");
    assert!(host.stop());
}

#[test]
fn an_event_over_the_portals_rate_limit_after_the_clients_retries_waits_and_is_not_dead_lettered() {
    // A portal that lets two requests through, then one every 20 s: the client's four retries
    // (1 + 2 + 4 + 8 s) do not outlast it.
    let portal = FakePortal::start(PortalOptions {
        rate_per_sec: 0.05,
        burst: 2,
        ..PortalOptions::default()
    });
    let options = portal.options();
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&format!(
        "{}\n[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_url = {:?}\n",
        config(&["probe"], &probe("", "")),
        options.client_id,
        options.client_secret,
        portal.oauth_url(),
    ));
    let host = start(&dir);
    post_app_install(&host, &portal);
    let field = portal.add_field("CRM_DEAL", "UF_CRM_READ", "string", vec![]);
    for code in
        ["ONCRMDEALUSERFIELDUPDATE", "ONCRMDEALUSERFIELDADD", "ONCRMDEALUSERFIELDSETENUMVALUES"]
    {
        let mut read = args(code);
        read.system = true;
        read.field_id = field;
        read.field_name = "UF_CRM_READ".into();
        read.client_endpoint = Some(portal.client_endpoint());
        assert_eq!(host.post_form(&form(&read)).status, 200);
    }
    let rest = |dir: &HostDir| -> Vec<serde_json::Value> {
        dir.read_lines_lenient("probe.jsonl").into_iter().filter(|l| l["kind"] == "rest").collect()
    };
    assert!(
        eventually(Duration::from_secs(120), || rest(&dir)
            .iter()
            .filter(|l| l["ok"] == true)
            .count()
            >= 3),
        "{:?}\n{:?}\n{}",
        rest(&dir),
        dir.stats(),
        host.log_text()
    );
    let lines = rest(&dir);
    // (Once; again only if the machine stalled past the portal's 20 s.)
    let failed: Vec<_> = lines.iter().filter(|l| l["ok"] == false).collect();
    assert!(!failed.is_empty(), "{lines:?}");
    assert!(failed[0]["error"].as_str().unwrap().contains("QUERY_LIMIT_EXCEEDED"), "{lines:?}");
    // The wait used no attempt, and nothing became a dead letter.
    assert!(lines.iter().all(|l| l["attempt"] == 1), "{lines:?}");
    assert_eq!(dir.stats().get("probe").map(|s| s.2), Some(0), "a dead letter");
    // Four back-offs of the client, then the event's wait (the binder's `app.info` after the
    // install meets the same portal limit: its four back-offs count too, without an event's).
    let waits = scrape(&host, "b24_rest_limit_waits_total{reason=\"query_limit_exceeded\"}");
    assert!(waits.is_some_and(|n| n >= 5.0), "{waits:?}");
    assert!(
        scrape(&host, "b24_rest_calls_total{family=\"crm\",status=\"query_limit_exceeded\"}")
            .is_some_and(|n| n >= 5.0)
    );
    assert!(host.stop());
}
