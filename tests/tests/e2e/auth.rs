//! Application-token checks: what gets in, what gets a 401, learning tokens from installs
//! verified at the OAuth server (the fake portal's), and `[auth]` on live reload.

use b24_tests::fake_portal::{FakePortal, PortalOptions};

use crate::support::*;

/// The portal the install tests learn (not in `[auth.portals]`).
pub(crate) const PORTAL: &str = "11112222333344445555666677778888";
/// Its application token.
pub(crate) const PORTAL_TOKEN: &str = "aaaabbbbccccddddeeeeffff00001111";
/// An attacker's application token.
const EVIL_TOKEN: &str = "99999999999999999999999999999999";

/// A fake portal `member_id` whose OAuth server the host verifies installs with.
pub(crate) fn oauth_portal(member_id: &str) -> FakePortal {
    FakePortal::start(PortalOptions { member_id: member_id.to_owned(), ..PortalOptions::default() })
}

/// The `[rest]` table that points the host at `portal`'s OAuth server with the app's
/// credentials.
pub(crate) fn rest_table(portal: &FakePortal) -> String {
    let options = portal.options();
    format!(
        "[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_url = {:?}\n",
        options.client_id,
        options.client_secret,
        portal.oauth_url()
    )
}

/// A config learning tokens on install, with `auth_keys` added to `[auth]` and `extra` appended.
pub(crate) fn learning_config(enabled: &[&str], auth_keys: &str, extra: &str) -> String {
    config(enabled, extra).replace(
        "learn_tokens_on_install = true\n",
        &format!("learn_tokens_on_install = true\n{auth_keys}\n"),
    )
}

/// An event of `code` claiming portal `member` with application token `token`.
pub(crate) fn event_of(code: &str, member: &str, token: &str) -> String {
    let mut a = args(code);
    a.member_id = member.into();
    a.token = token.into();
    form(&a)
}

/// An `ONAPPINSTALL` claiming `member`, with application token `token` and the OAuth pair
/// `(access, refresh)`; its endpoints are `endpoints`' (whose OAuth server it names).
pub(crate) fn install_of(
    member: &str,
    token: &str,
    (access, refresh): (String, String),
    endpoints: &FakePortal,
) -> String {
    let mut a = args("ONAPPINSTALL");
    a.member_id = member.into();
    a.token = token.into();
    a.access_token = Some(access);
    a.refresh_token = Some(refresh);
    a.client_endpoint = Some(endpoints.client_endpoint());
    a.server_endpoint = Some(endpoints.server_endpoint());
    form(&a)
}

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
    let lines = probe_sentinel(&host, &dir, 10);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["field_id"], 9);

    // The refusals were logged without the token.
    let log = host.log_text();
    assert!(log.contains("not authenticated"), "{log}");
    assert!(!log.contains("0000000000000000000000000000dead"), "a token reached the log");
    assert!(!log.contains(TOKEN), "a token reached the log");
}

#[test]
fn an_install_is_learned_only_when_the_configured_oauth_server_confirms_its_portal() {
    let portal = oauth_portal(PORTAL);
    // An attacker's own OAuth server, which would confirm anything for the victim's member_id.
    let evil = oauth_portal(PORTAL);
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&learning_config(&["audit-log"], "", &rest_table(&portal)));
    let host = start(&dir);

    // 1. A forged refresh token, and the event names the attacker's OAuth server: not one of
    //    the configured ones, so nobody is asked. Naming the configured server, the forged
    //    token is refused there.
    let forged = install_of(PORTAL, EVIL_TOKEN, evil.initial_oauth(), &evil);
    let answer = host.post_form(&forged);
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.contains("not in rest.oauth_servers"), "{}", answer.body);
    let forged = install_of(PORTAL, EVIL_TOKEN, evil.initial_oauth(), &portal);
    let answer = host.post_form(&forged);
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.contains("invalid_grant"), "{}", answer.body);
    assert!(evil.requests().is_empty(), "the host asked the event's server_endpoint");
    assert_eq!(host.post_form(&event_of("ONCRMDEALUSERFIELDADD", PORTAL, EVIL_TOKEN)).status, 401);

    // 2. A genuine refresh token of another portal (the attacker's own install) claiming this
    //    member_id: the OAuth server answers for the other portal.
    let other = "0000111122223333444455556666ffff";
    let answer = host.post_form(&install_of(other, EVIL_TOKEN, portal.issue_oauth_pair(), &portal));
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.contains("another portal"), "{}", answer.body);
    assert_eq!(host.post_form(&event_of("ONCRMDEALUSERFIELDADD", other, EVIL_TOKEN)).status, 401);

    // 3. The genuine install, after the attacker's: verified and learned.
    let (initial_access, initial_refresh) = portal.initial_oauth();
    let genuine = install_of(PORTAL, PORTAL_TOKEN, portal.initial_oauth(), &portal);
    let answer = host.post_form(&genuine);
    assert_eq!(answer.status, 200, "{answer:?}\n{}", host.log_text());
    assert_eq!(
        host.post_form(&event_of("ONCRMDEALUSERFIELDADD", PORTAL, PORTAL_TOKEN)).status,
        200
    );
    assert_eq!(host.post_form(&event_of("ONCRMDEALUSERFIELDADD", PORTAL, EVIL_TOKEN)).status, 401);
    let exchanged = portal.refreshes();
    assert_eq!(exchanged.len(), 2, "one exchange per verifiable install: {exchanged:?}");
    assert_eq!(exchanged[1].0, initial_refresh);

    // The exchange spent the install's refresh token; the host keeps the pair it got instead:
    // a REST call with the stored tokens works without another refresh.
    let out = dir.run_cli(&[
        "offline",
        "bind",
        "--portal",
        PORTAL,
        "--event",
        "ONCRMDEALUSERFIELDUPDATE",
        "--config",
        "host.toml",
    ]);
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        host.log_text()
    );
    assert_eq!(portal.refreshes().len(), 2, "the stored tokens needed a refresh");
    let bind = portal.requests().into_iter().find(|r| r.method == "event.bind").unwrap();
    assert_ne!(bind.token.as_deref(), Some(initial_access.as_str()));

    // An app update (a new version installed) keeps the portal authenticated.
    let mut update = args("ONAPPUPDATE");
    update.member_id = PORTAL.into();
    update.token = PORTAL_TOKEN.into();
    let (access, refresh) = portal.issue_oauth_pair();
    update.access_token = Some(access);
    update.refresh_token = Some(refresh);
    update.client_endpoint = Some(portal.client_endpoint());
    assert_eq!(host.post_form(&form(&update)).status, 200);
    assert_eq!(
        host.post_form(&event_of("ONCRMDEALUSERFIELDUPDATE", PORTAL, PORTAL_TOKEN)).status,
        200
    );
    assert_eq!(portal.refreshes().len(), 2, "an update is not an install to verify");

    // The learned token survives a restart.
    assert!(host.stop());
    let host = start(&dir);
    assert_eq!(
        host.post_form(&event_of("ONCRMDEALUSERFIELDDELETE", PORTAL, PORTAL_TOKEN)).status,
        200
    );
    let audit = dir.wait_lines("audit.jsonl", 3, PATIENCE, |_| true);
    assert!(host.stop());
    assert_eq!(audit.len(), 3, "{audit:?}");
    assert!(audit.iter().all(|l| l["member_id"] == PORTAL));
    let logs = all_logs(&dir);
    assert!(logs.contains("install refused: not verified"), "{logs}");
    for secret in [
        PORTAL_TOKEN,
        EVIL_TOKEN,
        initial_refresh.as_str(),
        portal.options().client_secret.as_str(),
    ] {
        assert!(!logs.contains(secret), "a secret reached the log");
    }
}

/// Every log file of the host folder, concatenated.
fn all_logs(dir: &HostDir) -> String {
    std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect()
}

#[test]
fn without_client_credentials_no_install_is_learned_and_check_and_the_log_say_why() {
    let portal = oauth_portal(PORTAL);
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&learning_config(&["audit-log"], "", ""));

    let check = dir.run_cli(&["check", "--config", "host.toml"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        said.contains("warning: auth.learn_tokens_on_install is on, but rest.client_id and rest.client_secret are not set"),
        "{said}"
    );

    let host = start(&dir);
    let answer = host.post_form(&install_of(PORTAL, PORTAL_TOKEN, portal.initial_oauth(), &portal));
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(
        answer.body.contains("rest.client_id and rest.client_secret are not set"),
        "{}",
        answer.body
    );
    assert_eq!(
        host.post_form(&event_of("ONCRMDEALUSERFIELDADD", PORTAL, PORTAL_TOKEN)).status,
        401
    );
    let log = host.log_text();
    assert!(log.contains("installs cannot be verified, so no token will be learned"), "{log}");
    assert!(log.contains("install refused: not verified"), "{log}");
    assert!(portal.requests().is_empty(), "nothing to verify with, yet the OAuth server was asked");
}

#[test]
fn installs_from_unknown_portals_are_capped_and_rate_limited() {
    let portal = oauth_portal(PORTAL);
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&learning_config(
        &["audit-log"],
        "max_learned_portals = 1\nunknown_installs_per_minute = 3",
        &rest_table(&portal),
    ));
    let host = start(&dir);

    let first = install_of(PORTAL, PORTAL_TOKEN, portal.initial_oauth(), &portal);
    assert_eq!(host.post_form(&first).status, 200, "{}", host.log_text());
    // The cap: a second portal is not learned, and its refresh token is not spent.
    let second = "22223333444455556666777788889999";
    let pair = portal.issue_oauth_pair();
    let answer = host.post_form(&install_of(second, PORTAL_TOKEN, pair.clone(), &portal));
    assert_eq!(answer.status, 503, "{answer:?}");
    assert!(answer.body.contains("limit of 1 portals"), "{}", answer.body);
    assert_eq!(portal.refreshes().len(), 1);
    // A known portal's events do not count against the limit.
    for _ in 0..5 {
        assert_eq!(
            host.post_form(&event_of("ONCRMDEALUSERFIELDADD", PORTAL, PORTAL_TOKEN)).status,
            200
        );
    }
    // The third install from an unknown portal within the minute passes; the fourth does not.
    assert_eq!(
        host.post_form(&install_of(second, PORTAL_TOKEN, pair.clone(), &portal)).status,
        503
    );
    let answer = host.post_form(&install_of(second, PORTAL_TOKEN, pair, &portal));
    assert_eq!(answer.status, 429, "{answer:?}");
    assert!(answer.body.contains("too many installs"), "{}", answer.body);
    let metrics = host.admin_request("GET", "/metrics").body;
    assert!(metrics.contains("outcome=\"rate_limited\""), "{metrics}");
    assert!(metrics.contains("outcome=\"unavailable\""), "{metrics}");
}

#[test]
fn a_reinstall_after_an_uninstall_is_learned_even_within_the_duplicate_window() {
    let portal = oauth_portal(PORTAL);
    let dir = HostDir::new(&["audit-log"]);
    dir.write_config(&learning_config(&["audit-log"], "", &rest_table(&portal)));
    let host = start(&dir);

    let (_, first_refresh) = portal.initial_oauth();
    let install = install_of(PORTAL, PORTAL_TOKEN, portal.initial_oauth(), &portal);
    let uninstall = event_of("ONAPPUNINSTALL", PORTAL, PORTAL_TOKEN);
    // The same install again, as far as duplicates go (same ts and data; only the auth block,
    // which the duplicate key leaves out, carries a new OAuth pair, as a real re-install does).
    let reinstall = || {
        let (access, refresh) = portal.issue_oauth_pair();
        let (first_access, _) = portal.initial_oauth();
        install.replace(&first_refresh, &refresh).replace(&first_access, &access)
    };
    // Distinct fields, so that no two of them are duplicates of each other.
    let field = |id: u64| {
        let mut a = args("ONCRMDEALUSERFIELDUPDATE");
        a.member_id = PORTAL.into();
        a.token = PORTAL_TOKEN.into();
        a.field_id = id;
        form(&a)
    };

    let answer = host.post_form(&install);
    assert!(answer.status == 200 && answer.body.starts_with("accepted"), "{answer:?}");
    let first_id = answer.body.trim_start_matches("accepted ").to_owned();
    // Within one cycle a repeat is still a duplicate.
    let answer = host.post_form(&install);
    assert_eq!(
        (answer.status, answer.body.as_str()),
        (200, format!("duplicate of {first_id}").as_str())
    );
    assert_eq!(host.post_form(&field(1)).status, 200);
    assert!(host.post_form(&uninstall).body.starts_with("accepted"));
    assert_eq!(host.post_form(&field(2)).status, 401);

    let answer = host.post_form(&reinstall());
    assert!(answer.status == 200 && answer.body.starts_with("accepted"), "{answer:?}");
    assert_eq!(host.post_form(&field(3)).status, 200, "the re-install was not learned");

    // Again across a restart: the duplicate window is rebuilt with the same rule.
    assert!(host.post_form(&uninstall).body.starts_with("accepted"));
    assert!(host.stop());
    let host = start(&dir);
    assert_eq!(host.post_form(&field(4)).status, 401);
    let answer = host.post_form(&reinstall());
    assert!(answer.status == 200 && answer.body.starts_with("accepted"), "{answer:?}");
    assert_eq!(host.post_form(&field(5)).status, 200, "the re-install was not learned");
    assert_eq!(dir.wait_lines("audit.jsonl", 3, PATIENCE, |_| true).len(), 3);
    assert!(host.stop());
}

#[test]
fn auth_portals_added_or_removed_take_effect_on_reload() {
    let dir = HostDir::new(&["audit-log"]);
    let text = config(&["audit-log"], "");
    dir.write_config(&text);
    let host = start(&dir);
    let newcomer = event_of("ONCRMDEALUSERFIELDADD", PORTAL, PORTAL_TOKEN);
    assert_eq!(host.post_form(&newcomer).status, 401);

    // Add a portal, reload by SIGHUP.
    let added = text.replace(
        "[auth.portals]\n",
        &format!("[auth.portals]\n\"{PORTAL}\" = \"{PORTAL_TOKEN}\"\n"),
    );
    dir.write_config(&added);
    host.signal("HUP");
    assert!(host.wait_log("reload finished", PATIENCE), "{}", host.log_text());
    assert_eq!(host.post_form(&newcomer).status, 200, "{}", host.log_text());
    assert!(
        !host.log_text().contains("setting=auth"),
        "auth reported as needing a restart: {}",
        host.log_text()
    );

    // Remove the first portal, reload by command.
    let removed = added.replace(&format!("\"{MEMBER}\" = \"{TOKEN}\"\n"), "");
    dir.write_config(&removed);
    let admin = format!("http://{}", host.admin.clone().unwrap());
    let out = dir.run_cli(&["reload", "--admin", &admin]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(!said.contains("\"auth\""), "auth reported as needing a restart: {said}");
    assert_eq!(host.post_form(&field_event(7, "UF_CRM_GONE")).status, 401);
    assert_eq!(host.post_form(&newcomer).status, 200);

    // An update from the configured portal keeps it authenticated.
    assert_eq!(host.post_form(&event_of("ONAPPUPDATE", PORTAL, PORTAL_TOKEN)).status, 200);
    assert_eq!(host.post_form(&newcomer).status, 200);
    assert!(host.stop());
}
