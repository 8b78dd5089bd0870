//! The console in a real browser (issue 15): headless Chromium, driven over WebDriver
//! (tests/src/browser.rs), against a real host with the real probe plugin.

use crate::support::*;
use b24_tests::browser::browser_or_skip;

#[test]
fn the_browser_reads_a_page_of_the_admin_listener() {
    let Some(browser) = browser_or_skip("the_browser_reads_a_page_of_the_admin_listener") else {
        return;
    };
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&config(&["audit-log"], ""));
    let host = dir.start().expect("the host starts");
    let admin = host.admin.clone().expect("an admin listener");
    browser.goto(&format!("http://{admin}/healthz"));
    let text = browser.wait_text("body", |t| !t.is_empty());
    assert!(text.contains("ok"), "{text}");
    assert!(host.stop());
}
