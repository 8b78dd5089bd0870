//! Application-token checks: what gets in, what gets a 401, and learning tokens on install.

use std::time::Duration;

use crate::support::*;

#[test]
fn a_wrong_token_or_an_unknown_portal_gets_401_and_reaches_no_plugin() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);

    let mut wrong = args("ONCRMDEALUSERFIELDADD");
    wrong.token = "0000000000000000000000000000dead".into();
    let answer = host.post_form(&form(&wrong));
    assert_eq!(answer.status, 401);
    assert!(answer.body.contains("wrong application token"), "{}", answer.body);

    let mut unknown = args("ONCRMDEALUSERFIELDADD");
    unknown.member_id = "ffffffffffffffffffffffffffffffff".into();
    let answer = host.post_form(&form(&unknown));
    assert_eq!(answer.status, 401);
    assert!(answer.body.contains("unknown portal"), "{}", answer.body);

    let missing = format!(
        "event=ONCRMDEALUSERFIELDADD&data%5BFIELDS%5D%5BID%5D=1&auth%5Bmember_id%5D={MEMBER}"
    );
    assert_eq!(host.post_form(&missing).status, 401);

    // A good event afterwards is the first and only thing the probe sees.
    assert_eq!(host.post_form(&field_event(9, "UF_CRM_OK")).status, 200);
    let lines = dir.wait_lines("probe.jsonl", 1, PATIENCE, |l| l["kind"] != "shutdown");
    std::thread::sleep(Duration::from_millis(200));
    let lines_after = dir.read_lines("probe.jsonl");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines_after.len(), 1, "{lines_after:?}");
    assert_eq!(lines[0]["field_id"], 9);

    // The refusals were logged without the token.
    let log = host.log_text();
    assert!(log.contains("not authenticated"), "{log}");
    assert!(!log.contains("0000000000000000000000000000dead"), "a token reached the log");
    assert!(!log.contains(TOKEN), "a token reached the log");
}

#[test]
fn onappinstall_teaches_a_token_that_survives_a_restart_and_uninstall_forgets_it() {
    let portal = "11112222333344445555666677778888";
    let token = "aaaabbbbccccddddeeeeffff00001111";
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log"], ""));
    let event = |code: &str, token: &str| {
        let mut a = args(code);
        a.member_id = portal.into();
        a.token = token.into();
        form(&a)
    };

    let host = start(&dir);
    // Before the install the portal is unknown.
    assert_eq!(host.post_form(&event("ONCRMDEALUSERFIELDADD", token)).status, 401);
    assert_eq!(host.post_form(&event("ONAPPINSTALL", token)).status, 200);
    assert_eq!(host.post_form(&event("ONCRMDEALUSERFIELDADD", token)).status, 200);
    // Another install claiming the portal with another token is refused.
    assert_eq!(
        host.post_form(&event("ONAPPINSTALL", "99999999999999999999999999999999")).status,
        401
    );
    assert!(host.stop());

    let host = start(&dir);
    assert_eq!(host.post_form(&event("ONCRMDEALUSERFIELDUPDATE", token)).status, 200);
    assert_eq!(host.post_form(&event("ONAPPUNINSTALL", token)).status, 200);
    assert_eq!(host.post_form(&event("ONCRMDEALUSERFIELDUPDATE", token)).status, 401);
    assert!(host.stop());

    let audit = dir.read_lines("audit.jsonl");
    assert_eq!(audit.len(), 2, "{audit:?}");
    assert!(audit.iter().all(|l| l["member_id"] == portal));
    let logs: String = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect();
    assert!(!logs.contains(token), "a token reached the log");
}
