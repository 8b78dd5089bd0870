//! The main path: Bitrix24 bodies in, plugin calls out.

use std::collections::BTreeSet;

use crate::support::*;

const FAMILIES: [(&str, &str, &str); 8] = [
    ("LEAD", "CRM_LEAD", "lead"),
    ("DEAL", "CRM_DEAL", "deal"),
    ("CONTACT", "CRM_CONTACT", "contact"),
    ("COMPANY", "CRM_COMPANY", "company"),
    ("QUOTE", "CRM_QUOTE", "quote"),
    ("INVOICE", "CRM_INVOICE", "invoice"),
    ("REQUISITE", "CRM_REQUISITE", "requisite"),
    ("TYPE", "CRM_13", "smart_process"),
];
const ACTIONS: [&str; 4] = ["ADD", "UPDATE", "DELETE", "SETENUMVALUES"];

#[test]
fn every_user_field_code_reaches_the_plugins_with_its_action_and_entity() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "")));
    let host = start(&dir);
    let mut expected = BTreeSet::new();
    for (family, entity_id, entity) in FAMILIES {
        for action in ACTIONS {
            let code = format!("ONCRM{family}USERFIELD{action}");
            // Bodies made by Bitrix24's own PHP encoder.
            let answer = host.post_form(&fixture(&code));
            assert_eq!(answer.status, 200, "{code}: {}", answer.body);
            expected.insert((code, action.to_owned(), entity.to_owned(), entity_id.to_owned()));
        }
    }
    assert_eq!(expected.len(), 32);
    let audit = dir.wait_lines("audit.jsonl", 32, PATIENCE, |_| true);
    let probe = dir.wait_lines("probe.jsonl", 32, PATIENCE, |l| l["kind"] == "user_field");
    let seen = |lines: &[serde_json::Value]| -> BTreeSet<(String, String, String, String)> {
        lines
            .iter()
            .map(|l| {
                let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
                (s("event"), s("action"), s("entity"), s("entity_id"))
            })
            .collect()
    };
    assert_eq!(seen(&audit), expected);
    let probe_seen: BTreeSet<_> = probe
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or_default().to_owned();
            (s("code"), s("action"), s("entity"), s("entity_id"))
        })
        .collect();
    assert_eq!(probe_seen, expected);
    for line in &audit {
        assert_eq!(line["member_id"], MEMBER);
        assert_eq!(line["field_id"], 554);
        assert_eq!(line["field_name"], "UF_CRM_1724771514");
        assert_eq!(line["user"], "1");
        let text = line.to_string();
        assert!(
            !text.contains("s6p6eclrvim6da22ft9ch94ekreb52lv"),
            "a token reached the audit log: {text}"
        );
        assert!(!text.contains(TOKEN), "a token reached the audit log: {text}");
    }
    assert!(host.stop(), "the host did not stop cleanly");
}

#[test]
fn a_system_event_arrives_without_user_tokens() {
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log"], ""));
    let host = start(&dir);
    let mut a = args("ONCRMLEADUSERFIELDADD");
    a.system = true;
    assert_eq!(host.post_form(&form(&a)).status, 200);
    let lines = dir.wait_lines("audit.jsonl", 1, PATIENCE, |_| true);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["user"], "system");
    assert_eq!(lines[0]["action"], "ADD");
}

#[test]
fn a_json_body_is_accepted_like_a_form() {
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log"], ""));
    let host = start(&dir);
    let mut a = args("ONCRMCOMPANYUSERFIELDDELETE");
    a.json = true;
    a.field_id = 77;
    let (body, content_type) = b24_host::cmd::send::body(&a);
    assert_eq!(content_type, "application/json");
    let answer = host.post_json(&body);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let lines = dir.wait_lines("audit.jsonl", 1, PATIENCE, |_| true);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["field_id"], 77);
    assert_eq!(lines[0]["entity"], "company");
    assert_eq!(lines[0]["action"], "DELETE");
}

#[test]
fn a_generic_event_reaches_only_plugins_subscribed_to_it() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("events = [\"oncrmcontact*\"]", "")));
    let host = start(&dir);
    // A generic event with nested data, as Bitrix24 would encode it.
    let body = format!(
        "event=ONCRMCONTACTUPDATE&event_handler_id=58&data%5BFIELDS%5D%5BID%5D=134806&data%5BFIELDS%5D%5BTAGS%5D%5B0%5D=a+b&data%5BFIELDS%5D%5BTAGS%5D%5B1%5D=c%26d&ts=1727018926&auth%5Bdomain%5D=portal.bitrix24.com&auth%5Bmember_id%5D={MEMBER}&auth%5Bapplication_token%5D={TOKEN}"
    );
    assert_eq!(host.post_form(&body).status, 200);
    // And a user-field event of another entity, which the probe's narrowed route excludes.
    assert_eq!(host.post_form(&fixture("ONCRMDEALUSERFIELDADD")).status, 200);
    // Then one it does want, to know the earlier ones had their chance.
    assert_eq!(host.post_form(&fixture("ONCRMCONTACTUSERFIELDADD")).status, 200);
    let probe = dir.wait_lines("probe.jsonl", 2, PATIENCE, |l| l["kind"] != "shutdown");
    assert_eq!(probe.len(), 2, "{probe:?}");
    assert_eq!(probe[0]["kind"], "generic");
    assert_eq!(probe[0]["code"], "ONCRMCONTACTUPDATE");
    assert_eq!(probe[0]["user"], false);
    assert_eq!(
        probe[0]["data"],
        serde_json::json!([
            ["FIELDS[ID]", "134806"],
            ["FIELDS[TAGS][0]", "a b"],
            ["FIELDS[TAGS][1]", "c&d"]
        ])
    );
    assert_eq!(probe[1]["code"], "ONCRMCONTACTUSERFIELDADD");
    // audit-log subscribes to user-field events only: it saw the two user-field events.
    let audit = dir.wait_lines("audit.jsonl", 2, PATIENCE, |_| true);
    assert_eq!(audit.len(), 2);
    assert!(audit.iter().all(|l| l["event"].as_str().unwrap_or_default().contains("USERFIELD")));
}

#[test]
fn the_send_command_posts_an_event_the_host_accepts() {
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log"], ""));
    let host = start(&dir);
    let url = format!("http://{}{}", host.addr, host.path);
    let out = dir.run_cli(&[
        "send",
        "--url",
        &url,
        "--event",
        "ONCRMCONTACTUSERFIELDUPDATE",
        "--field-id",
        "554",
        "--field-name",
        "UF_CRM_1724771514",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "send failed: {stdout} {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("200 "), "{stdout}");
    let lines = dir.wait_lines("audit.jsonl", 1, PATIENCE, |_| true);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["event"], "ONCRMCONTACTUSERFIELDUPDATE");
    assert_eq!(lines[0]["entity"], "contact");
}

#[test]
fn shutdown_finishes_the_call_in_flight_and_calls_every_plugin_shutdown() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "sleep_ms = 500")));
    let host = start(&dir);
    assert_eq!(host.post_form(&field_event(1, "UF_CRM_SLOW")).status, 200);
    dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] == "user_field");
    assert!(host.stop(), "the host did not exit cleanly on SIGTERM");
    let lines = dir.read_lines("probe.jsonl");
    assert_eq!(lines.last().map(|l| l["kind"].clone()), Some("shutdown".into()));
    // The call in flight finished: nothing is left for the next start.
    assert_eq!(dir.stats()["probe"], (0, 0, 0));
}

crate::in_process_too!(
    every_user_field_code_reaches_the_plugins_with_its_action_and_entity,
    a_system_event_arrives_without_user_tokens,
    a_json_body_is_accepted_like_a_form,
    a_generic_event_reaches_only_plugins_subscribed_to_it,
    shutdown_finishes_the_call_in_flight_and_calls_every_plugin_shutdown,
);
