//! HTTP-level answers: wrong method, size, content type, garbage, truncation.

use crate::support::*;

#[test]
fn bad_requests_get_clear_statuses_and_reach_no_plugin() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    let path = host.path.clone();
    let good = fixture("ONCRMDEALUSERFIELDADD");

    let answer = host.request("GET", &path, None, b"");
    assert_eq!(answer.status, 405);

    let answer = host.request(
        "POST",
        "/elsewhere",
        Some("application/x-www-form-urlencoded"),
        good.as_bytes(),
    );
    assert_eq!(answer.status, 404);

    let answer = host.request("POST", &path, Some("text/plain"), good.as_bytes());
    assert_eq!(answer.status, 415, "{}", answer.body);
    let answer = host.request("POST", &path, None, good.as_bytes());
    assert_eq!(answer.status, 415, "{}", answer.body);
    // A `+json` type names another vocabulary than a Bitrix24 event.
    let json = r#"{"event": "ONCRMDEALUSERFIELDADD", "data": {"FIELDS": {"ID": "1"}}}"#;
    let answer = host.request("POST", &path, Some("application/problem+json"), json.as_bytes());
    assert_eq!(answer.status, 415, "{}", answer.body);

    let huge = format!("{good}&data%5Bpad%5D={}", "x".repeat(70_000));
    let answer = host.post_form(&huge);
    assert_eq!(answer.status, 413, "{}", answer.body);

    let answer = host.post_form("\u{1}\u{2}garbage%%%&&==");
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(!answer.body.is_empty());

    let answer = host.post_json("{\"event\": \"ONCRMDEALUSERFIELDADD\", \"data\": ");
    assert_eq!(answer.status, 400, "{}", answer.body);

    // Every truncation of a real body is either refused with a reason or, when what is left
    // still makes an authentic event, accepted; the host never fails.
    let mut accepted = 0;
    for cut in (1..good.len()).step_by(7) {
        let answer = host.post_form(&good[..cut]);
        assert!(matches!(answer.status, 200 | 400 | 401), "cut at {cut}: {answer:?}");
        assert!(!answer.body.is_empty());
        if answer.status == 200 {
            accepted += 1;
        }
    }

    // The host still serves, and the probe saw only what was accepted.
    assert_eq!(host.post_form(&good).status, 200);
    let lines = dir.wait_lines("probe.jsonl", accepted + 1, PATIENCE, |l| l["kind"] != "shutdown");
    assert_eq!(lines.len(), accepted + 1);
    assert!(host.stop());
}
