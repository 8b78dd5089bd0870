//! The console in a real browser (issue 15): headless Chromium, driven over WebDriver
//! (tests/src/browser.rs), against a real host with the real probe plugin. An operator's round
//! trip: the overview shows a dead letter, its link leads to the dead letters and on to the
//! event, whose page shows the failed attempts; replay, confirm the count, and the event is
//! delivered. With `B24_SCREENSHOTS_DIR` set, the overview and the event page are saved there
//! (the README's screenshots: `B24_SCREENSHOTS_DIR=docs`).

use b24_tests::browser::{Browser, browser_or_skip};

use crate::support::*;

/// Asserts that the page shown carries none of the fixtures' secrets in its HTML.
fn assert_no_secret(browser: &Browser) {
    let source = browser.source();
    assert!(!source.contains(TOKEN), "the application token is on {}", browser.url());
}

#[test]
fn an_operator_sees_a_dead_letter_in_the_browser_replays_it_and_sees_it_delivered() {
    let test = "an_operator_sees_a_dead_letter_in_the_browser_replays_it_and_sees_it_delivered";
    let Some(browser) = browser_or_skip(test) else {
        return;
    };
    let dir = HostDir::new(&["audit-log", "probe"]);
    // Three attempts 10 to 50 ms apart while the flag file exists, then a dead letter.
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "fail_while = \"fail.flag\"")));
    let host = start(&dir);
    let admin = host.admin.clone().expect("an admin listener");
    let console = format!("http://{admin}");

    // Some traffic that goes through, for the chart; then one event the probe keeps failing.
    for n in 1..=5 {
        assert_eq!(host.post_form(&field_event(n, "UF_CRM_FINE")).status, 200);
    }
    dir.wait_lines("probe.jsonl", 5, PATIENCE, |l| l["kind"] == "user_field");
    std::fs::write(dir.path().join("fail.flag"), "").unwrap();
    assert_eq!(host.post_form(&field_event(6, "UF_CRM_FAILS")).status, 200);
    let failing = |l: &serde_json::Value| l["kind"] == "user_field" && l["field_id"] == 6;
    let calls = dir.wait_lines("probe.jsonl", 3, PATIENCE, failing);
    let id = calls[0]["event_id"].as_u64().expect("the probe records the event id");

    // The overview: the dead count of the probe becomes 1 (htmx refreshes it every 2 s).
    browser.goto(&format!("{console}/"));
    browser.wait_for("svg#intake-chart");
    browser.wait_text("#stats-probe td.dead", |t| t == "1");
    assert_eq!(browser.text("#stats-audit-log td.dead").as_deref(), Some("0"));
    assert_no_secret(&browser);
    browser.screenshot_if_asked("console-overview.png");

    // Its link: the probe's dead letters, with this event.
    browser.click("#stats-probe td.dead a");
    browser.wait_url(|u| u.ends_with("/dead?plugin=probe"));
    let row = format!("#dead-probe-{id}");
    let reason = browser.wait_text(&format!("{row} td.reason"), |t| !t.is_empty());
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert_no_secret(&browser);

    // The event: dead for the probe after three attempts that asked for a retry, done for
    // audit-log.
    browser.click(&format!("{row} a[href='/events/{id}']"));
    browser.wait_url(|u| u.ends_with(&format!("/events/{id}")));
    browser.wait_text("#deliveries-probe .state", |t| t == "dead");
    assert_eq!(browser.text("#deliveries-audit-log .state").as_deref(), Some("done"));
    assert_eq!(
        browser.texts("#deliveries-probe tr.attempt td.outcome"),
        ["retry", "retry", "retry"],
        "the probe's attempts"
    );
    let errors = browser.texts("#deliveries-probe tr.attempt td.error");
    assert!(errors.iter().all(|e| e.contains("probe told to fail")), "{errors:?}");
    let decoded = browser.text("#decoded pre").unwrap_or_default();
    assert!(decoded.contains("UF_CRM_FAILS"), "{decoded}");
    assert_no_secret(&browser);
    browser.screenshot_if_asked("console-event.png");

    // Fix the cause and replay from the event page: a confirmation with the count first.
    std::fs::remove_file(dir.path().join("fail.flag")).unwrap();
    browser.click("#replay-probe");
    browser.wait_text("#confirm-count", |t| t == "1");
    assert_no_secret(&browser);
    browser.click("#confirm");
    let result = browser.wait_text("#result", |t| !t.is_empty());
    assert_eq!(result, "Replayed 1 dead letters");

    // Delivered: the event page says done (htmx refreshes while it is pending) and the probe
    // got the event once more, with the same id.
    browser.goto(&format!("{console}/events/{id}"));
    browser.wait_text("#deliveries-probe .state", |t| t == "done");
    let calls = dir.wait_lines("probe.jsonl", 4, PATIENCE, failing);
    assert!(calls.iter().all(|l| l["event_id"] == id), "{calls:?}");
    let outcomes = browser.texts("#deliveries-probe tr.attempt td.outcome");
    assert_eq!(outcomes.last().map(String::as_str), Some("done"), "{outcomes:?}");

    // And the overview no longer counts it.
    browser.goto(&format!("{console}/"));
    browser.wait_text("#stats-probe td.dead", |t| t == "0");
    assert!(host.stop());
}

/// The admin token of the login test.
const ADMIN_TOKEN: &str = "browser-admin-token-7f3a";

#[test]
fn with_an_admin_token_the_browser_logs_in_with_an_http_only_cookie_acts_and_logs_out() {
    let test = "with_an_admin_token_the_browser_logs_in_with_an_http_only_cookie_acts_and_logs_out";
    let Some(browser) = browser_or_skip(test) else {
        return;
    };
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log"], &format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n")));
    let host = start(&dir);
    let console = format!("http://{}", host.admin.clone().expect("an admin listener"));

    // Any page asks for the token first.
    browser.goto(&format!("{console}/plugins"));
    browser.wait_for("input#token[type=password]");
    assert!(browser.text("#plugins").is_none(), "a page was shown without login");

    // A wrong token: the form again, saying so.
    browser.type_into("#token", "not-the-token");
    browser.click("#login");
    browser.wait_text("#login-problem", |t| t.contains("wrong token"));
    assert!(browser.cookie("b24_console").is_none());

    // The right one: the overview, and a session cookie that scripts cannot read.
    browser.type_into("#token", ADMIN_TOKEN);
    browser.click("#login");
    browser.wait_for("#plugin-stats");
    let cookie = browser.cookie("b24_console").expect("the session cookie");
    assert!(cookie.http_only, "{cookie:?}");
    assert_eq!(cookie.same_site.as_deref(), Some("Strict"), "{cookie:?}");
    assert_eq!(cookie.path.as_deref(), Some("/"), "{cookie:?}");
    assert_ne!(cookie.value, ADMIN_TOKEN, "the cookie is the token itself");
    let seen_by_scripts = browser.script("return document.cookie;");
    assert!(!seen_by_scripts.to_string().contains("b24_console"), "{seen_by_scripts}");
    assert!(!browser.source().contains(ADMIN_TOKEN), "the admin token is in the page");

    // A POST form of the session (its CSRF token inside) works: the plugins page's reload.
    browser.click("#nav-plugins");
    browser.wait_for("#plugin-audit-log");
    browser.click("#reload");
    let report = browser.wait_text("#reload-report", |t| !t.is_empty());
    assert!(report.contains("\"reloaded\"") && report.contains("\"failed\": []"), "{report}");
    assert!(!browser.source().contains(ADMIN_TOKEN), "the admin token is in the page");

    // Logging out ends the session: the next page asks for the token again. The logout's own
    // answer (a redirect to the login form) comes first: navigating away at once could cancel
    // the form's POST before it reached the host.
    browser.click("#logout");
    browser.wait_for("input#token[type=password]");
    browser.goto(&format!("{console}/"));
    browser.wait_for("input#token[type=password]");
    assert!(browser.text("#plugin-stats").is_none());
    assert!(host.stop());
}

#[test]
fn an_operator_pauses_a_plugin_with_the_console_button_and_resumes_it_there() {
    let test = "an_operator_pauses_a_plugin_with_the_console_button_and_resumes_it_there";
    let Some(browser) = browser_or_skip(test) else {
        return;
    };
    let dir = HostDir::new(&["audit-log", "probe"]);
    let extra = format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\n\n{}", probe("", ""));
    dir.write_config(&config(&["audit-log", "probe"], &extra));
    let host = start(&dir);
    let admin = host.admin.clone().expect("an admin listener");
    let console = format!("http://{admin}");

    // Without the token nothing pauses; a script pauses with it as a bearer (and resumes).
    assert_eq!(host.admin_request("POST", "/plugins/probe/pause").status, 401);
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    for action in ["pause", "resume"] {
        let path = format!("/plugins/probe/{action}");
        let answer =
            b24_tests::http::request(&admin, "POST", &path, &[("Authorization", &bearer)], b"")
                .expect("the admin listener answers");
        assert_eq!(answer.status, 200, "{action}: {}", answer.body);
    }

    browser.goto(&format!("{console}/plugins"));
    browser.type_into("#token", ADMIN_TOKEN);
    browser.click("#login");
    browser.wait_for("#plugin-stats");
    browser.click("#nav-plugins");
    browser.wait_for("#pause-probe");
    assert!(browser.text("#plugin-probe .state-paused").is_none(), "paused before the click");

    // The button (a form with the session's CSRF token): the page says paused, and why.
    browser.click("#pause-probe");
    browser.wait_text("#plugin-probe .state-paused", |t| t == "paused");
    let reason = browser.text("#plugin-probe .paused-reason").unwrap_or_default();
    assert!(reason.contains("paused by an operator (console)"), "{reason}");
    browser.wait_for("#resume-probe");
    assert!(browser.text("#plugin-audit-log .state-paused").is_none());
    assert!(!browser.source().contains(ADMIN_TOKEN), "the admin token is in the page");

    // Events wait for it (audit-log has them: the sentinel); the overview counts them.
    for n in 1..=3 {
        assert_eq!(host.post_form(&field_event(n, "UF_CRM_PAUSED")).status, 200);
    }
    dir.wait_lines("audit.jsonl", 3, PATIENCE, |l| l["field_name"] == "UF_CRM_PAUSED");
    assert!(dir.read_lines("probe.jsonl").is_empty(), "the paused probe was called");
    browser.goto(&format!("{console}/"));
    browser.wait_text("#stats-probe td.backlog", |t| t == "3");
    let state = browser.text("#stats-probe td.state").unwrap_or_default();
    assert!(state.contains("paused"), "{state}");

    // Resume: the probe gets all three, in order.
    browser.click("#nav-plugins");
    browser.click("#resume-probe");
    browser.wait_for("#pause-probe");
    let calls = dir.wait_lines("probe.jsonl", 3, PATIENCE, |l| l["kind"] == "user_field");
    let fields: Vec<u64> = calls.iter().filter_map(|l| l["field_id"].as_u64()).collect();
    assert_eq!(fields, [1, 2, 3]);
    browser.goto(&format!("{console}/"));
    browser.wait_text("#stats-probe td.backlog", |t| t == "0");
    assert!(host.stop());
}
