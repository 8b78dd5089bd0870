//! Whose tokens the host keeps and where it uses them: only a verified install's (or update's)
//! OAuth pair is stored (a repeat of it never over a refreshed pair), plugins never see a
//! refresh token or the application token, an uninstall forgets the pair and stops the
//! portal's offline poller, every install refused is said, counted and shown, each portal is
//! verified and refreshed at its own OAuth server, and REST calls with a portal's tokens go to
//! its install's endpoint whatever a later event names.

use std::collections::BTreeSet;

use b24_tests::fake_portal::{FakePortal, PortalOptions, RequestKind};

use crate::{
    offline::{delivered, offline_config, offline_status, push_rows},
    support::*,
};

/// A host folder with the probe polling `portal`'s offline queue every `poll_ms`.
fn polling(portal: &FakePortal, poll_ms: u64) -> HostDir {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&offline_config(portal, poll_ms, &["probe"], "", ""));
    dir
}

/// The `event.offline.get` calls the portal answered so far: (token, status).
fn offline_gets(portal: &FakePortal) -> Vec<(Option<String>, u16)> {
    portal
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Rest && r.method == "event.offline.get")
        .map(|r| (r.token, r.status))
        .collect()
}

/// How many OAuth requests (install exchanges and refreshes) the portal's server answered.
fn oauth_requests(portal: &FakePortal) -> usize {
    portal.requests().iter().filter(|r| r.kind == RequestKind::OAuth).count()
}

#[test]
fn an_offline_nudge_with_a_users_pair_leaves_the_poller_the_installers_tokens() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = polling(&portal, 200);
    let host = start(&dir);
    post_app_install(&host, &portal);
    let (installer, _) = portal.initial_oauth();
    assert!(
        eventually(PATIENCE, || offline_gets(&portal).iter().any(|(_, s)| *s == 200)),
        "{}\n{}",
        offline_status(&dir),
        host.log_text()
    );

    // Twice: a user who is no administrator changes something, the portal nudges with that
    // user's pair, and rows wait on the portal.
    let mut rows = BTreeSet::new();
    for (round, user) in [(0u64, 42u64), (1, 43)] {
        let (access, refresh) = portal.issue_user_oauth_pair(user, false);
        let mut nudge = args("ONOFFLINEEVENT");
        // Two nudges, not one repeated (the journal would take a repeat for a duplicate).
        nudge.field_id = 1000 + round;
        nudge.access_token = Some(access);
        nudge.refresh_token = Some(refresh);
        nudge.client_endpoint = Some(portal.client_endpoint());
        nudge.server_endpoint = Some(portal.server_endpoint());
        assert_eq!(host.post_form(&form(&nudge)).status, 200);
        rows.extend(push_rows(&portal, 3, 100 + round * 10));
        assert!(
            eventually(PATIENCE, || {
                let got: BTreeSet<String> = delivered(&dir).into_iter().collect();
                rows.is_subset(&got)
            }),
            "the rows never arrived: {}\n{:?}\n{}",
            offline_status(&dir),
            offline_gets(&portal),
            host.log_text()
        );
    }
    // Every poll used the installer's token and the portal refused none (the polls before the
    // install found no tokens and called nothing).
    let gets = offline_gets(&portal);
    assert!(
        gets.iter()
            .all(|(token, status)| token.as_deref() == Some(installer.as_str()) && *status == 200),
        "{gets:?}"
    );
    assert!(host.stop());
}

/// The probe's records of `kind`.
fn probe_lines(dir: &HostDir, kind: &str) -> Vec<serde_json::Value> {
    dir.read_lines_lenient("probe.jsonl").into_iter().filter(|l| l["kind"] == kind).collect()
}

#[test]
fn plugins_get_the_users_access_token_never_a_refresh_or_the_application_token() {
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&config(&["probe"], &probe("", "")));
    let host = start(&dir);
    // A user-field event and a generic one, each carrying a user's pair (a bot event, an
    // offline nudge), in Bitrix24's form and as JSON.
    let mut sent = Vec::new();
    for (n, code) in
        [(1, "ONCRMDEALUSERFIELDUPDATE"), (2, "ONOFFLINEEVENT"), (3, "ONCRMDEALUSERFIELDADD")]
    {
        let mut a = args(code);
        a.field_id = n;
        a.access_token = Some(format!("user-access-{n}-0123456789abcdef"));
        a.refresh_token = Some(format!("user-refresh-{n}-0123456789abcdef"));
        a.json = n == 3;
        let (body, _) = b24_host::cmd::send::body(&a);
        let answer = if a.json { host.post_json(&body) } else { host.post_form(&body) };
        assert_eq!(answer.status, 200, "{answer:?}");
        sent.push(a);
    }
    let lines = probe_sentinel(&host, &dir, 99);
    let calls: Vec<_> = lines.iter().filter(|l| l["kind"] != "shutdown").collect();
    assert_eq!(calls.len(), 3, "{calls:?}");
    for (line, a) in calls.iter().zip(&sent) {
        assert_eq!(line["access_token"].as_str(), a.access_token.as_deref(), "{line}");
        assert!(line["refresh_token"].is_null(), "a plugin got a refresh token: {line}");
    }
    // Nor does the journal keep them, where a runner or a log replica could read them. (Read
    // once the host stopped: a plugin that keeps up gets an event before the tables take it,
    // and the file holds it at the next checkpoint, the last at the latest.)
    assert!(host.stop());
    // The journal: its file and the event files the file's rows point into.
    let mut journal = std::fs::read(dir.path().join("state/journal.redb")).expect("the journal");
    if let Ok(files) = std::fs::read_dir(dir.path().join("state/events")) {
        for file in files {
            journal.extend(std::fs::read(file.unwrap().path()).unwrap());
        }
    }
    let held = |secret: &str| journal.windows(secret.len()).any(|w| w == secret.as_bytes());
    for a in &sent {
        let refresh = a.refresh_token.as_deref().unwrap();
        assert!(!held(refresh), "the journal holds a refresh token");
        assert!(held(a.access_token.as_deref().unwrap()), "the access token is kept for plugins");
    }
    assert!(!held(TOKEN), "the journal holds the application token");
}

crate::in_process_too!(plugins_get_the_users_access_token_never_a_refresh_or_the_application_token);

#[test]
fn an_uninstall_forgets_the_pair_stops_the_poller_and_nothing_is_refreshed() {
    let portal = FakePortal::start(PortalOptions::default());
    let dir = polling(&portal, 100);
    let host = start(&dir);
    post_app_install(&host, &portal);
    assert!(
        eventually(PATIENCE, || offline_gets(&portal).len() >= 2),
        "the poller never polled: {}",
        host.log_text()
    );

    let mut uninstall = args("ONAPPUNINSTALL");
    uninstall.system = true;
    assert_eq!(host.post_form(&form(&uninstall)).status, 200);
    assert!(
        eventually(PATIENCE, || offline_status(&dir)["mode"] == "not installed"),
        "{}\n{}",
        offline_status(&dir),
        host.log_text()
    );
    let gets = offline_gets(&portal).len();
    let oauth = oauth_requests(&portal);
    // Every token the portal issued is expired now: any use would need a refresh.
    portal.expire_access_tokens();
    // The poller goes round (its status is renewed each interval) without calling the portal.
    let seen = offline_status(&dir)["last_poll_ms"].as_i64().unwrap();
    let mut rounds = 0;
    let mut last = seen;
    assert!(
        eventually(PATIENCE, || {
            let now = offline_status(&dir)["last_poll_ms"].as_i64().unwrap_or(last);
            if now > last {
                rounds += 1;
                last = now;
            }
            rounds >= 3
        }),
        "the poller stopped going round: {}",
        offline_status(&dir)
    );
    // A plugin's REST call for the portal finds no tokens to refresh either.
    let field = portal.add_field("CRM_DEAL", "UF_CRM_READ", "string", vec![]);
    let mut read = args("ONCRMDEALUSERFIELDUPDATE");
    read.system = true;
    read.field_id = field;
    read.field_name = "UF_CRM_READ".into();
    read.client_endpoint = Some(portal.client_endpoint());
    assert_eq!(host.post_form(&form(&read)).status, 200);
    assert!(eventually(PATIENCE, || !probe_lines(&dir, "rest").is_empty()), "{}", host.log_text());
    let rest = probe_lines(&dir, "rest");
    assert_eq!(rest[0]["ok"], false, "{rest:?}");
    assert!(rest[0]["error"].as_str().unwrap().contains("NO_CREDENTIALS"), "{rest:?}");
    assert_eq!(offline_gets(&portal).len(), gets, "the uninstalled portal was polled");
    assert_eq!(oauth_requests(&portal), oauth, "a refresh was tried for an uninstalled portal");
    assert!(portal.refreshes().is_empty(), "{:?}", portal.refreshes());

    // Installed again: the poller takes up the new pair.
    let (access, refresh) = portal.issue_oauth_pair();
    let mut install = args("ONAPPINSTALL");
    install.access_token = Some(access.clone());
    install.refresh_token = Some(refresh);
    install.client_endpoint = Some(portal.client_endpoint());
    install.server_endpoint = Some(portal.server_endpoint());
    assert_eq!(host.post_form(&form(&install)).status, 200);
    assert!(
        eventually(PATIENCE, || offline_gets(&portal)
            .iter()
            .any(|(t, s)| t.as_deref() == Some(access.as_str()) && *s == 200)),
        "{}\n{}",
        offline_status(&dir),
        host.log_text()
    );
    assert_eq!(offline_status(&dir)["mode"], "safe");
    assert!(host.stop());
}

#[test]
fn rest_calls_go_to_the_installs_endpoint_whatever_a_later_event_names() {
    let portal = FakePortal::start(PortalOptions::default());
    // Where a leaked application token would send the host's calls.
    let evil = FakePortal::start(PortalOptions::default());
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
    let read = |user: Option<String>, code: &str| {
        let mut a = args(code);
        a.field_id = field;
        a.field_name = "UF_CRM_READ".into();
        a.system = user.is_none();
        a.access_token = user;
        a.client_endpoint = Some(evil.client_endpoint());
        a.server_endpoint = Some(evil.server_endpoint());
        assert_eq!(host.post_form(&form(&a)).status, 200);
    };
    // Fired by automation (the stored tokens), then by a user (the user's token).
    read(None, "ONCRMDEALUSERFIELDUPDATE");
    read(Some(portal.issue_access_token()), "ONCRMDEALUSERFIELDADD");
    // An update brings a new pair, not a new place.
    let (access, refresh) = portal.issue_oauth_pair();
    let mut update = args("ONAPPUPDATE");
    update.access_token = Some(access.clone());
    update.refresh_token = Some(refresh);
    update.client_endpoint = Some(evil.client_endpoint());
    update.server_endpoint = Some(evil.server_endpoint());
    assert_eq!(host.post_form(&form(&update)).status, 200);
    read(None, "ONCRMDEALUSERFIELDDELETE");

    assert!(eventually(PATIENCE, || probe_lines(&dir, "rest").len() >= 3), "{}", host.log_text());
    let rest = probe_lines(&dir, "rest");
    assert!(rest.iter().all(|l| l["ok"] == true), "{rest:?}");
    let reads: Vec<_> = portal
        .requests()
        .into_iter()
        .filter(|r| r.method == "crm.deal.userfield.get" && r.status == 200)
        .collect();
    assert_eq!(reads.len(), 3, "{reads:?}");
    assert_eq!(reads[2].token.as_deref(), Some(access.as_str()), "the update's pair was not used");
    assert!(
        evil.requests().is_empty(),
        "a call went where an event pointed: {:?}",
        evil.requests()
    );
    assert!(host.stop());
}

#[test]
fn an_install_without_a_refresh_token_is_refused_said_counted_and_shown() {
    use crate::auth::{PORTAL, PORTAL_TOKEN, learning_config, oauth_portal, rest_table};
    let portal = oauth_portal(PORTAL);
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&learning_config(
        &["probe"],
        "",
        &format!("{}\n{}", probe("", ""), rest_table(&portal)),
    ));
    let host = start(&dir);
    let mut install = args("ONAPPINSTALL");
    install.member_id = PORTAL.into();
    install.token = PORTAL_TOKEN.into();
    install.domain = "refused-portal.bitrix24.com".into();
    install.client_endpoint = Some(portal.client_endpoint());
    install.server_endpoint = Some(portal.server_endpoint());
    // Only an access token: nothing to verify the install with.
    let body: String = form(&install)
        .split('&')
        .filter(|pair| !pair.starts_with("auth%5Brefresh_token%5D="))
        .collect::<Vec<_>>()
        .join("&");
    let answer = host.post_form(&body);
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.contains("no auth[refresh_token]"), "{}", answer.body);
    assert!(portal.requests().is_empty(), "{:?}", portal.requests());

    // The log says what to do; /metrics counts it; the console shows the portal.
    let log = host.log_text();
    let line = log.lines().find(|l| l.contains("install refused")).expect("a log line");
    assert!(line.contains(PORTAL) && line.contains("[auth.portals]"), "{line}");
    assert!(!log.contains(PORTAL_TOKEN), "the application token reached the log");
    assert_eq!(
        scrape(&host, "b24_installs_refused_total{reason=\"no_refresh_token\"}"),
        Some(1.0),
        "{}",
        host.admin_request("GET", "/metrics").body
    );
    let overview = host.admin_request("GET", "/").body;
    let section = &overview[overview.find("id=\"refused-installs\"").expect("the section")..];
    assert!(
        section.contains(PORTAL) && section.contains("refused-portal.bitrix24.com"),
        "{section}"
    );
    assert!(section.contains("no_refresh_token") && section.contains(" ago"), "{section}");
    assert!(!overview.contains(PORTAL_TOKEN), "the application token reached the console");
    // Nothing of it was accepted.
    assert_eq!(host.post_form(&field_event(5, "UF_CRM_X").replace(MEMBER, PORTAL)).status, 401);

    // An install of a configured portal with another token than the one configured is an
    // install refused too.
    let mut other = args("ONAPPINSTALL");
    other.token = "0000000000000000000000000000beef".into();
    assert_eq!(host.post_form(&form(&other)).status, 401);
    assert_eq!(
        scrape(&host, "b24_installs_refused_total{reason=\"not_authenticated\"}"),
        Some(1.0)
    );
    let overview = host.admin_request("GET", "/").body;
    let section = &overview[overview.find("id=\"refused-installs\"").expect("the section")..];
    assert!(section.contains(MEMBER) && section.contains(PORTAL), "{section}");
    let log = host.log_text();
    assert!(log.contains("another application token than [auth.portals] has"), "{log}");
    assert!(!log.contains("0000000000000000000000000000beef"), "a token reached the log");
    assert!(host.stop());
}

#[test]
fn portals_on_two_oauth_servers_are_each_verified_and_refreshed_at_their_own() {
    use crate::auth::{install_of, learning_config};
    // One portal served by each OAuth server, and one whose server the host does not know.
    const A: &str = "aaaa0000aaaa0000aaaa0000aaaa0000";
    const B: &str = "bbbb0000bbbb0000bbbb0000bbbb0000";
    const C: &str = "cccc0000cccc0000cccc0000cccc0000";
    let portal = |member: &str| {
        FakePortal::start(PortalOptions {
            member_id: member.to_owned(),
            ..PortalOptions::default()
        })
    };
    let (a, b, c) = (portal(A), portal(B), portal(C));
    let options = a.options();
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&learning_config(
        &["probe"],
        "",
        &format!(
            "{}\n[rest]\nclient_id = {:?}\nclient_secret = {:?}\noauth_servers = [{:?}, {:?}]\n",
            probe("", ""),
            options.client_id,
            options.client_secret,
            a.oauth_url(),
            b.oauth_url(),
        ),
    ));
    let host = start(&dir);
    for (member, p) in [(A, &a), (B, &b)] {
        let answer =
            host.post_form(&install_of(member, &format!("{member}-token"), p.initial_oauth(), p));
        assert_eq!(answer.status, 200, "{member}: {answer:?}\n{}", host.log_text());
    }
    let answer = host.post_form(&install_of(C, "c-token", c.initial_oauth(), &c));
    assert_eq!(answer.status, 401, "{answer:?}");
    assert!(answer.body.contains("not in rest.oauth_servers"), "{}", answer.body);
    assert!(
        c.requests().is_empty(),
        "the host asked a server it does not list: {:?}",
        c.requests()
    );
    assert_eq!(
        scrape(&host, "b24_installs_refused_total{reason=\"unknown_oauth_server\"}"),
        Some(1.0)
    );

    // Each portal's plugin calls use its stored pair; once those expire, each refresh goes to
    // the portal's own server.
    let fields = [
        (A, &a, a.add_field("CRM_DEAL", "UF_CRM_READ", "string", vec![])),
        (B, &b, b.add_field("CRM_DEAL", "UF_CRM_READ", "string", vec![])),
    ];
    let mut sent = 0;
    for round in 0..2 {
        if round == 1 {
            a.expire_access_tokens();
            b.expire_access_tokens();
        }
        for (member, p, field) in &fields {
            let mut read =
                args(if round == 0 { "ONCRMDEALUSERFIELDUPDATE" } else { "ONCRMDEALUSERFIELDADD" });
            read.member_id = (*member).into();
            read.token = format!("{member}-token");
            read.system = true;
            read.field_id = *field;
            read.field_name = "UF_CRM_READ".into();
            read.client_endpoint = Some(p.client_endpoint());
            assert_eq!(host.post_form(&form(&read)).status, 200);
            sent += 1;
        }
        assert!(
            eventually(PATIENCE, || probe_lines(&dir, "rest").len() >= sent),
            "{}",
            host.log_text()
        );
    }
    let rest = probe_lines(&dir, "rest");
    assert!(rest.iter().all(|l| l["ok"] == true), "{rest:?}");
    for p in [&a, &b] {
        // The install's exchange and one refresh, both answered: no server saw the other's token.
        assert_eq!(p.refreshes().len(), 2, "{:?}", p.refreshes());
        let oauth: Vec<_> =
            p.requests().into_iter().filter(|r| r.kind == RequestKind::OAuth).collect();
        assert!(oauth.iter().all(|r| r.status == 200), "{oauth:?}");
    }
    assert!(host.stop());
}

/// A repeat of the install that stored the portal's pair (a proxy's retry, the same body)
/// keeps the pair a refresh stored since: the repeat's refresh token is spent. With `journal`
/// (a `[journal]` table, or nothing for the embedded one). With `learning`, the portal is
/// unknown until its install, which the host verifies by spending the install's refresh token
/// at the OAuth server: a repeat (on another host, say) must not store that spent token.
pub(crate) fn a_repeated_install_keeps_the_refreshed_pair(journal: &str, learning: bool) {
    let (portal, member, install) = if learning {
        let portal = crate::auth::oauth_portal(crate::auth::PORTAL);
        let install = crate::auth::install_of(
            crate::auth::PORTAL,
            crate::auth::PORTAL_TOKEN,
            portal.initial_oauth(),
            &portal,
        );
        (portal, crate::auth::PORTAL, install)
    } else {
        let portal = FakePortal::start(PortalOptions::default());
        let install = app_install(&portal);
        (portal, MEMBER, install)
    };
    let mut text = offline_config(&portal, 100, &["probe"], "", "");
    if learning {
        // Only the install tells the host the portal's token.
        text = text.replace(&format!("{MEMBER:?} = {TOKEN:?}"), "").replace(MEMBER, member);
    }
    let dir = HostDir::new(&["probe"]);
    dir.write_config(&format!("{text}\n{journal}"));
    let host = start(&dir);
    assert_eq!(host.post_form(&install).status, 200, "{}", host.log_text());
    let refused = |portal: &FakePortal| -> Vec<(Option<String>, u16)> {
        let oauth = portal.requests().into_iter().filter(|r| r.kind == RequestKind::OAuth);
        oauth.filter(|r| r.status != 200).map(|r| (r.error, r.status)).collect()
    };
    // The poller's call with an expired token refreshes the pair: the install's refresh token
    // is spent (a verified install's already was, by its verification).
    let verified = portal.refreshes().len();
    assert_eq!(verified, usize::from(learning), "{:?}", portal.refreshes());
    portal.expire_access_tokens();
    assert!(
        eventually(PATIENCE, || portal.refreshes().len() == verified + 1),
        "no refresh: {:?}\n{}",
        refused(&portal),
        host.log_text()
    );
    let again = host.post_form(&install);
    assert_eq!(again.status, 200, "{again:?}");
    assert!(again.body.starts_with("duplicate of"), "{again:?}");
    // The next refresh spends the token the last one issued, not the repeat's.
    portal.expire_access_tokens();
    assert!(
        eventually(PATIENCE, || portal.refreshes().len() == verified + 2
            || !refused(&portal).is_empty()),
        "no second refresh: {}",
        host.log_text()
    );
    assert_eq!(refused(&portal), vec![], "a refresh was refused: the repeat stored its spent pair");
    let chain = portal.refreshes();
    assert_eq!(chain[verified + 1].0, chain[verified].1, "{chain:?}");
    assert!(host.stop());
}

#[test]
fn a_repeated_install_keeps_the_refreshed_pair_on_the_embedded_journal() {
    a_repeated_install_keeps_the_refreshed_pair("", false);
}
