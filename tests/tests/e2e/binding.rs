//! Binding: the host binds on each portal what its plugins receive, from the install on, and
//! says what is bound, missing and extra, and whether the app's installation is finished.

use std::{collections::BTreeSet, time::Duration};

use b24_tests::fake_portal::{FakePortal, PortalOptions};
use serde_json::{Value, json};

use crate::{offline::offline_config, support::*};

/// The public handler URL the tests bind (the fake stores it; nothing posts to it).
const HANDLER: &str = "https://b24.example.com/b24/events";

/// How long a binding pass may take on a loaded machine.
const BIND_PATIENCE: Duration = Duration::from_secs(60);

/// host.toml with the probe narrowed to `events`, `portal`'s OAuth app, and `[bind]` `keys`.
fn bind_config(portal: &FakePortal, events: &str, keys: &str) -> String {
    let options = portal.options();
    format!(
        "{}\n[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_url = {:?}\n\n[rest.portals.\"{MEMBER}\"]\nrate_per_sec = 50.0\nburst = 50\n\n[bind]\nhandler = {HANDLER:?}\n{keys}\n",
        config(&["probe"], &probe(&format!("events = {events}"), "")),
        options.client_id,
        options.client_secret,
        portal.oauth_url(),
    )
}

/// The portal's bindings as `CODE` (online, to [`HANDLER`]) or `CODE offline:CONNECTOR`.
fn bound(portal: &FakePortal) -> BTreeSet<String> {
    portal
        .bindings()
        .iter()
        .map(|b| {
            let event = b["event"].as_str().unwrap_or_default();
            if b["offline"] == 1 {
                format!("{event} offline:{}", b["auth_connector"].as_str().unwrap_or(""))
            } else {
                assert_eq!(b["handler"], HANDLER, "{b}");
                event.to_owned()
            }
        })
        .collect()
}

fn set(codes: &[&str]) -> BTreeSet<String> {
    codes.iter().map(|c| (*c).to_owned()).collect()
}

/// What the probe narrowed to `ONCRMDEAL*` receives, and the uninstall.
fn deal_codes() -> BTreeSet<String> {
    set(&[
        "ONAPPUNINSTALL",
        "ONCRMDEALADD",
        "ONCRMDEALDELETE",
        "ONCRMDEALUPDATE",
        "ONCRMDEALUSERFIELDADD",
        "ONCRMDEALUSERFIELDDELETE",
        "ONCRMDEALUSERFIELDSETENUMVALUES",
        "ONCRMDEALUSERFIELDUPDATE",
    ])
}

fn wait_bound(portal: &FakePortal, want: &BTreeSet<String>, host: &RunningHost) {
    let done = eventually(BIND_PATIENCE, || bound(portal) == *want);
    assert!(done, "bound {:?}, want {want:?}\n{}", bound(portal), host.log_text());
}

/// `b24-host bind ARGS --json` in `dir`: its exit success and its answer.
fn bind_cli(dir: &HostDir, args: &[&str]) -> (bool, Value) {
    let mut all = vec!["bind", "--config", "host.toml", "--json"];
    all.extend_from_slice(args);
    let out = dir.run_cli(&all);
    let answer = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!(
            "bind answered no JSON: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.success(), answer)
}

/// A `Binding` list of a report as `CODE` / `CODE (offline)` strings.
fn names(list: &Value) -> BTreeSet<String> {
    list.as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let event = b["event"].as_str().unwrap_or_default();
            if b["offline"] == true { format!("{event} (offline)") } else { event.to_owned() }
        })
        .collect()
}

/// The posted `ONAPPUPDATE` of a new app version, with a fresh OAuth pair.
fn post_app_update(host: &RunningHost, portal: &FakePortal) {
    let (access, refresh) = portal.issue_oauth_pair();
    let mut update = args("ONAPPUPDATE");
    update.access_token = Some(access);
    update.refresh_token = Some(refresh);
    update.client_endpoint = Some(portal.client_endpoint());
    update.server_endpoint = Some(portal.server_endpoint());
    assert_eq!(host.post_form(&form(&update)).status, 200);
}

#[test]
fn an_install_binds_what_the_plugins_receive_and_an_update_binds_it_again() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&bind_config(&portal, r#"["ONCRMDEAL*"]"#, ""));
    let host = start(&dir);
    assert!(portal.bindings().is_empty(), "nothing is bound before the install");
    post_app_install(&host, &portal);
    wait_bound(&portal, &deal_codes(), &host);
    // Bitrix24 deletes the app's bindings when a new version is installed; the update's event
    // brings them back.
    portal.clear_bindings();
    post_app_update(&host, &portal);
    wait_bound(&portal, &deal_codes(), &host);
    // Binding again finds everything bound: nothing is bound twice.
    let (ok, answer) = bind_cli(&dir, &[]);
    assert!(ok, "{answer}");
    assert_eq!(portal.bindings().len(), deal_codes().len());
    let report = &answer["portals"][0];
    assert_eq!(report["member_id"], MEMBER);
    assert!(names(&report["missing"]).is_empty(), "{report}");
    assert_eq!(names(&report["bound"]), deal_codes());
    assert!(host.stop());
}

#[test]
fn bound_already_in_the_portals_own_words_counts_as_bound() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&offline_config(&portal, 600_000, &["probe"], "", ""));
    let host = start(&dir);
    post_app_install(&host, &portal);
    // The second bind is answered ERROR_CORE "Unable to set event handler: Handler already
    // binded", as Bitrix24 answers it: still a success.
    for round in 1..=2 {
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
        assert!(
            out.status.success(),
            "round {round}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(portal.bindings().len(), 1, "{:?}", portal.bindings());
    let refused = portal
        .requests()
        .into_iter()
        .filter(|r| r.method == "event.bind" && r.error.as_deref() == Some("ERROR_CORE"))
        .count();
    assert_eq!(refused, 1, "the second bind was answered as bound already");
    assert!(host.stop());
}

#[test]
fn a_reload_that_changes_what_plugins_receive_binds_the_new_codes_and_prunes_the_old() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&bind_config(&portal, r#"["ONCRMDEAL*"]"#, "prune = true"));
    let host = start(&dir);
    post_app_install(&host, &portal);
    wait_bound(&portal, &deal_codes(), &host);
    // Someone else's binding to another handler is not the host's to prune.
    let token = portal.issue_access_token();
    let other =
        json!({"event": "ONCRMDEALADD", "handler": "https://other.example/hook", "auth": token});
    let answer = b24_tests::http::request(
        &portal.addr().to_string(),
        "POST",
        "/rest/event.bind",
        &[("Content-Type", "application/json")],
        other.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{}", answer.body);

    dir.write_config(&bind_config(
        &portal,
        r#"["ONCRMLEADUSERFIELDADD", "ONCRMLEADADD"]"#,
        "prune = true",
    ));
    let reload = host.admin_request("POST", "/reload");
    assert_eq!(reload.status, 200, "{}", reload.body);
    let want = set(&["ONAPPUNINSTALL", "ONCRMLEADADD", "ONCRMLEADUSERFIELDADD"]);
    let done = eventually(BIND_PATIENCE, || {
        let mine: BTreeSet<String> = portal
            .bindings()
            .iter()
            .filter(|b| b["handler"] == HANDLER)
            .filter_map(|b| b["event"].as_str().map(str::to_owned))
            .collect();
        mine == want
    });
    assert!(done, "{:?}\n{}", portal.bindings(), host.log_text());
    assert!(
        portal.bindings().iter().any(|b| b["handler"] == "https://other.example/hook"),
        "another handler's binding was pruned"
    );
    assert!(host.stop());
}

#[test]
fn an_offline_portal_gets_its_codes_queued_and_the_nudge_and_uninstall_bound_online() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["probe"]);
    let text = offline_config(&portal, 600_000, &["probe"], "", "auth_connector = \"b24host\"")
        .replace("[plugin.probe]\n", "[plugin.probe]\nevents = [\"ONCRMDEALUSERFIELD*\"]\n");
    dir.write_config(&format!("{text}\n[bind]\nhandler = {HANDLER:?}\nnudge_min_timeout_s = 5\n"));
    let host = start(&dir);
    post_app_install(&host, &portal);
    let want = set(&[
        "ONAPPUNINSTALL",
        "ONOFFLINEEVENT",
        "ONCRMDEALUSERFIELDADD offline:b24host",
        "ONCRMDEALUSERFIELDDELETE offline:b24host",
        "ONCRMDEALUSERFIELDSETENUMVALUES offline:b24host",
        "ONCRMDEALUSERFIELDUPDATE offline:b24host",
    ]);
    wait_bound(&portal, &want, &host);
    let nudge = portal.bindings().into_iter().find(|b| b["event"] == "ONOFFLINEEVENT").unwrap();
    assert_eq!(nudge["options"], json!({"minTimeout": 5}), "{nudge}");
    let (ok, answer) = bind_cli(&dir, &["--check", "--portal", MEMBER]);
    assert!(ok, "{answer}");
    let report = &answer["portals"][0];
    assert_eq!(report["offline"], true);
    assert!(names(&report["needed"]).contains("ONCRMDEALUSERFIELDADD (offline)"), "{report}");
    assert!(names(&report["missing"]).is_empty(), "{report}");
    assert!(host.stop());
}

#[test]
fn bind_check_the_console_and_metrics_show_what_is_missing_until_it_is_bound() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&bind_config(&portal, r#"["ONCRMDEAL*"]"#, ""));
    let host = start(&dir);
    post_app_install(&host, &portal);
    wait_bound(&portal, &deal_codes(), &host);
    // The bindings vanish behind the host's back (an update whose event never came).
    portal.clear_bindings();
    let (ok, answer) = bind_cli(&dir, &["--check"]);
    assert!(!ok, "missing bindings must fail the check: {answer}");
    let report = &answer["portals"][0];
    assert_eq!(names(&report["missing"]), deal_codes(), "{report}");
    assert!(names(&report["bound"]).is_empty(), "{report}");
    assert_eq!(answer["handler"], HANDLER);
    assert!(portal.bindings().is_empty(), "--check binds nothing");
    let text = dir.run_cli(&["bind", "--check", "--config", "host.toml"]);
    let printed = String::from_utf8_lossy(&text.stdout);
    assert!(printed.contains(&format!("portal {MEMBER}")), "{printed}");
    assert!(printed.contains("missing   8: ONAPPUNINSTALL"), "{printed}");
    let metrics = host.admin_request("GET", "/metrics").body;
    let missing = format!("b24_bindings_missing{{portal=\"{MEMBER}\"}}");
    assert_eq!(metric(&metrics, &missing), Some(8.0), "{metrics}");
    let page = host.admin_request("GET", "/portals");
    assert_eq!(page.status, 200);
    assert!(page.body.contains("ONCRMDEALUSERFIELDUPDATE"), "{}", page.body);
    assert!(page.body.contains(&format!("id=\"portal-{MEMBER}\"")), "{}", page.body);

    let (ok, answer) = bind_cli(&dir, &[]);
    assert!(ok, "{answer}");
    assert_eq!(bound(&portal), deal_codes());
    let (ok, answer) = bind_cli(&dir, &["--check"]);
    assert!(ok, "{answer}");
    let metrics = host.admin_request("GET", "/metrics").body;
    assert_eq!(metric(&metrics, &missing), Some(0.0), "{metrics}");
    assert!(host.stop());
}

#[test]
fn check_and_the_console_say_when_the_installation_was_never_finished() {
    let portal = FakePortal::start(PortalOptions::default());
    portal.set_installation_finished(false);
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&bind_config(&portal, r#"["ONCRMDEAL*"]"#, ""));
    let host = start(&dir);
    post_app_install(&host, &portal);
    let check = dir.run_cli(&["check", "--config", "host.toml"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(said.contains(&format!("portal {MEMBER}")), "{said}");
    assert!(said.contains("installation NOT finished"), "{said}");
    assert!(said.contains("the portal sends no events"), "{said}");
    let page = host.admin_request("GET", "/portals").body;
    assert!(page.contains("NOT finished"), "{page}");
    let metrics = host.admin_request("GET", "/metrics").body;
    let series = format!("b24_app_installation_finished{{portal=\"{MEMBER}\"}}");
    assert_eq!(metric(&metrics, &series), Some(0.0), "{metrics}");

    portal.set_installation_finished(true);
    let check = dir.run_cli(&["check", "--config", "host.toml"]);
    let said = String::from_utf8_lossy(&check.stdout).to_string();
    assert!(said.contains("installation finished"), "{said}");
    assert!(check.status.success(), "{said}");
    assert!(host.stop());
}

#[test]
fn binding_rides_out_the_portals_rate_limit() {
    // The portal takes a request every 2 s after a burst of 2; the host's own bucket is set
    // far faster, so the portal answers 503 QUERY_LIMIT_EXCEEDED along the way.
    let portal =
        FakePortal::start(PortalOptions { rate_per_sec: 0.5, burst: 2, ..Default::default() });
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&bind_config(&portal, r#"["ONCRMDEALUSERFIELD*"]"#, ""));
    let host = start(&dir);
    post_app_install(&host, &portal);
    let want = set(&[
        "ONAPPUNINSTALL",
        "ONCRMDEALUSERFIELDADD",
        "ONCRMDEALUSERFIELDDELETE",
        "ONCRMDEALUSERFIELDSETENUMVALUES",
        "ONCRMDEALUSERFIELDUPDATE",
    ]);
    let done = eventually(Duration::from_secs(120), || bound(&portal) == want);
    assert!(done, "{:?}\n{}", bound(&portal), host.log_text());
    assert!(portal.violations() > 0, "the portal's limit was never reached");
    assert!(host.stop());
}

#[test]
fn wildcards_expand_over_what_the_portal_offers_and_a_glob_nothing_matches_is_reported() {
    let portal = FakePortal::start(PortalOptions::default());
    // This portal (or this app's scopes) has no deal entity events, only the field events.
    portal.set_events_offered(&[
        "ONAPPUNINSTALL",
        "ONCRMDEALUSERFIELDADD",
        "ONCRMDEALUSERFIELDUPDATE",
        "ONCRMDEALUSERFIELDDELETE",
        "ONCRMDEALUSERFIELDSETENUMVALUES",
    ]);
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&bind_config(&portal, r#"["ONCRMDEAL*", "ONTASK*"]"#, ""));
    let host = start(&dir);
    post_app_install(&host, &portal);
    let want = set(&[
        "ONAPPUNINSTALL",
        "ONCRMDEALUSERFIELDADD",
        "ONCRMDEALUSERFIELDDELETE",
        "ONCRMDEALUSERFIELDSETENUMVALUES",
        "ONCRMDEALUSERFIELDUPDATE",
    ]);
    wait_bound(&portal, &want, &host);
    let (ok, answer) = bind_cli(&dir, &["--check"]);
    let report = &answer["portals"][0];
    assert!(ok, "what the portal does not offer is not missing: {answer}");
    assert_eq!(report["unexpanded"], json!(["probe: ONTASK*"]), "{report}");
    assert_eq!(
        report["not_offered"],
        json!(["ONCRMDEALADD", "ONCRMDEALDELETE", "ONCRMDEALUPDATE"])
    );
    assert!(host.log_text().contains("cannot bind probe: ONTASK*"), "{}", host.log_text());
    assert!(host.stop());
}
