//! The web console over HTTP (issue 15): every page answers with the ids the browser test
//! uses; no token of an event, no admin token, ever appears in a page, a partial or an asset;
//! the login (bearer, session cookie), the CSRF rule, the refusal of a public admin listener
//! without a token; the two-step replay and purge, and a replay through the console that
//! delivers the event again. Each answer's `Server-Timing` is printed (the page figures).

use std::time::Duration;

use b24_tests::http;

use crate::support::*;

/// A token of each kind the events below carry.
const ACCESS: &str = "acc3ss0t0k3n0console0test0000001";
const REFRESH: &str = "r3fr3sh0t0k3n0console0test000001";
const JSON_ACCESS: &str = "acc3ss0t0k3n0console0json000002";
const ADMIN_TOKEN: &str = "console-admin-token-0123456789abcdef";

/// One request to the admin listener with `headers`; the whole answer.
fn admin(
    host: &RunningHost,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> http::Response {
    let addr = host.admin.as_deref().expect("an admin listener");
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if method == "POST" {
        all.push(("Content-Type", "application/x-www-form-urlencoded"));
    }
    http::request(addr, method, target, &all, body.as_bytes()).expect("the admin listener answers")
}

/// GET `target`, asserting `status` and the `Server-Timing` header; prints the server time.
fn get(host: &RunningHost, target: &str, headers: &[(&str, &str)], status: u16) -> String {
    let answer = admin(host, "GET", target, headers, "");
    assert_eq!(answer.status, status, "GET {target}: {}", answer.body);
    let timing = answer.header("server-timing").unwrap_or_default().to_owned();
    assert!(timing.starts_with("app;dur="), "GET {target}: Server-Timing {timing:?}");
    eprintln!("console GET {target}: {status}, {timing}");
    answer.body
}

/// The hidden `csrf` field's value in a page.
fn csrf_of(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form with a csrf field");
    let rest = &page[at + "name=\"csrf\" value=\"".len()..];
    rest[..rest.find('"').expect("closing quote")].to_owned()
}

/// Asserts that no secret of the test appears in `text`.
#[track_caller]
fn no_secrets(what: &str, text: &str) {
    for secret in [TOKEN, ACCESS, REFRESH, JSON_ACCESS, ADMIN_TOKEN] {
        assert!(!text.contains(secret), "{what} shows the secret {secret}");
    }
}

/// Asserts that every id is in `page`.
#[track_caller]
fn has_ids(what: &str, page: &str, ids: &[&str]) {
    for id in ids {
        assert!(page.contains(&format!("id=\"{id}\"")), "{what} has no #{id}:\n{page}");
    }
}

#[test]
fn every_page_answers_without_a_token_in_it_and_replay_and_purge_go_through_the_console() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    // The probe takes the CRM events only (the app update goes to audit-log alone).
    let probe = probe("events = [\"ONCRM*\"]", "fail_while = \"fail.flag\"");
    dir.write_config(&config(&["audit-log", "probe"], &probe));
    std::fs::write(dir.path().join("fail.flag"), "").unwrap();
    let host = start(&dir);

    // Events carrying every kind of token: form and JSON.
    let mut update = args("ONAPPUPDATE");
    update.access_token = Some(ACCESS.into());
    update.refresh_token = Some(REFRESH.into());
    assert_eq!(host.post_form(&form(&update)).status, 200);
    let mut json = args("ONCRMDEALUSERFIELDUPDATE");
    json.json = true;
    json.access_token = Some(JSON_ACCESS.into());
    let (body, _) = b24_host::cmd::send::body(&json);
    assert_eq!(host.post_json(&body).status, 200);
    let ids = post_fields(&host, 1..=2, "UF_CRM_CONSOLE");
    // The probe retries 3 times while the flag is there, then gives up: dead letters.
    let buried = eventually(PATIENCE, || dir.stats().get("probe").is_some_and(|s| s.2 == 3));
    assert!(buried, "{:?}\n{}", dir.stats(), host.log_text());

    let overview = get(&host, "/", &[], 200);
    has_ids("/", &overview, &["nav-overview", "nav-events", "nav-dead", "nav-plugins"]);
    // Without admin.token, a page asked for under another name (a domain re-pointed at the
    // loopback address: DNS rebinding) is refused; an IP address or localhost is answered.
    for (name, status) in [("rebound.example", "403"), ("localhost", "200")] {
        use std::io::{Read, Write};
        let addr = host.admin.as_deref().expect("an admin listener");
        let port = addr.rsplit(':').next().expect("a port");
        let mut stream = std::net::TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30))).expect("a timeout");
        let ask = format!("GET / HTTP/1.1\r\nHost: {name}:{port}\r\nConnection: close\r\n\r\n");
        stream.write_all(ask.as_bytes()).expect("write");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).expect("read");
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "Host {name}: {answer:.200}");
    }
    has_ids(
        "/",
        &overview,
        &["intake-chart", "plugin-stats", "stats-probe", "journal", "offline", "live"],
    );
    assert!(overview.contains("href=\"/dead?plugin=probe\">3</a>"), "{overview}");
    assert!(overview.contains("/static/htmx.min.js"), "{overview}");
    let live = get(&host, "/partials/overview", &[], 200);
    assert!(live.starts_with("<div id=\"live\""), "{live}");

    let events = get(&host, "/events", &[], 200);
    has_ids("/events", &events, &["event-filter", "events"]);
    for id in &ids {
        has_ids("/events", &events, &[&format!("event-{id}")]);
    }
    let filtered = get(&host, "/events?status=dead&code=ONCRMDEALUSERFIELDUPDATE", &[], 200);
    has_ids("/events?status=dead", &filtered, &[&format!("event-{}", ids[0])]);
    let bad = get(&host, "/events?status=maybe", &[], 400);
    assert!(bad.contains("status: &quot;maybe&quot; is not one of pending"), "{bad}");
    let bad = get(&host, "/events?since=yesterday", &[], 400);
    assert!(bad.contains("since: "), "{bad}");
    get(&host, "/events/987654321", &[], 404);

    let mut pages = vec![overview, live, events, filtered];
    for id in 1..=ids[1] {
        let page = get(&host, &format!("/events/{id}"), &[], 200);
        has_ids("an event", &page, &["decoded", "raw", "deliveries"]);
        pages.push(page);
        pages.push(get(&host, &format!("/partials/events/{id}/deliveries"), &[], 200));
    }
    let event = get(&host, &format!("/events/{}", ids[0]), &[], 200);
    has_ids("a dead event", &event, &["deliveries-probe", "replay-probe"]);
    assert!(event.contains("<span class=\"state dead\">dead</span>"), "{event}");

    let dead = get(&host, "/dead?plugin=probe", &[], 200);
    has_ids("/dead", &dead, &["dead", "replay-selected", "purge-selected"]);
    has_ids(
        "/dead",
        &dead,
        &[&format!("dead-probe-{}", ids[0]), &format!("dead-probe-{}", ids[1])],
    );
    let plugins = get(&host, "/plugins", &[], 200);
    has_ids("/plugins", &plugins, &["plugins", "plugin-probe", "plugin-audit-log", "reload"]);
    let css = get(&host, "/static/console.css", &[], 200);
    let htmx = get(&host, "/static/htmx.min.js", &[], 200);
    assert!(htmx.contains("htmx"), "the vendored htmx");
    pages.extend([dead, plugins, css, htmx]);
    for page in &pages {
        no_secrets("a console page", page);
    }

    // A browser's replay (Origin sent): the CSRF token is needed, then two steps.
    let csrf = csrf_of(&event);
    let origin = [("Origin", "http://127.0.0.1")];
    let fields = format!("plugin=probe&ids={}", ids[0]);
    let refused = admin(&host, "POST", "/dead/replay", &origin, &fields);
    assert_eq!(refused.status, 403, "{}", refused.body);
    assert!(refused.body.contains("CSRF token missing or wrong"));
    let asked = admin(&host, "POST", "/dead/replay", &origin, &format!("{fields}&csrf={csrf}"));
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert!(asked.body.contains("<p id=\"confirm-count\">1</p>"), "{}", asked.body);
    has_ids("the confirmation", &asked.body, &["confirm"]);
    assert_eq!(dir.stats()["probe"].2, 3, "asking ran nothing");
    std::fs::remove_file(dir.path().join("fail.flag")).unwrap();
    let before = probe_calls(&dir).iter().filter(|id| **id == ids[0]).count();
    let done =
        admin(&host, "POST", "/dead/replay", &origin, &format!("{fields}&csrf={csrf}&confirm=1"));
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("<p id=\"result\">Replayed 1 dead letters</p>"), "{}", done.body);
    let delivered = eventually(PATIENCE, || {
        probe_calls(&dir).iter().filter(|id| **id == ids[0]).count() > before
    });
    assert!(delivered, "the replayed event reached the probe again:\n{}", host.log_text());
    let drained = eventually(PATIENCE, || dir.stats().get("probe") == Some(&(0, 0, 2)));
    assert!(drained, "{:?}", dir.stats());
    let dead = get(&host, "/dead?plugin=probe", &[], 200);
    assert!(!dead.contains(&format!("id=\"dead-probe-{}\"", ids[0])), "{dead}");

    // Purge everything of the probe given up since the epoch: the count first, then for good.
    let asked = admin(&host, "POST", "/dead/purge", &[], "plugin=probe&since=0");
    assert!(asked.body.contains("<p id=\"confirm-count\">2</p>"), "{}", asked.body);
    let purged = admin(&host, "POST", "/dead/purge", &[], "plugin=probe&since=0&confirm=1");
    assert!(purged.body.contains("Purged 2 dead letters"), "{}", purged.body);
    assert_eq!(dir.stats()["probe"], (0, 0, 0));
    let nothing = admin(&host, "POST", "/dead/purge", &[], "plugin=probe");
    assert_eq!(nothing.status, 400, "an empty selection is refused: {}", nothing.body);

    // Reload from the plugins page shows the report.
    let reloaded = admin(&host, "POST", "/plugins/reload", &origin, &format!("csrf={csrf}"));
    assert_eq!(reloaded.status, 200, "{}", reloaded.body);
    has_ids("the reload answer", &reloaded.body, &["reload-report"]);
    assert!(reloaded.body.contains("restart_needed"), "{}", reloaded.body);
    no_secrets("the reload answer", &reloaded.body);
    no_secrets("the host's log", &host.log_text());
}

#[test]
fn with_an_admin_token_every_path_needs_it_and_forms_need_the_csrf_token() {
    let dir = HostDir::new(&["probe"]);
    let extra = format!("{}\n[admin]\ntoken = \"{ADMIN_TOKEN}\"\n", probe("", ""));
    dir.write_config(&config(&["probe"], &extra));
    let host = start(&dir);

    // Open: health and assets. Closed: pages (the login form), the other endpoints.
    get(&host, "/healthz", &[], 200);
    get(&host, "/static/htmx.min.js", &[], 200);
    let login = get(&host, "/", &[], 401);
    assert!(login.contains("<form method=\"post\" action=\"/login\">"), "{login}");
    has_ids("the login page", &login, &["token", "login"]);
    assert!(login.contains("name=\"token\" type=\"password\""), "{login}");
    for target in ["/readyz", "/metrics", "/partials/overview"] {
        assert_eq!(get(&host, target, &[], 401), "admin token required\n");
    }
    get(&host, "/events", &[], 401);
    assert_eq!(admin(&host, "POST", "/reload", &[], "").status, 401);
    assert_eq!(admin(&host, "POST", "/dead/purge", &[], "since=0&confirm=1").status, 401);
    let wrong = format!("Bearer {}x", &ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]);
    get(&host, "/", &[("Authorization", &wrong)], 401);

    // A script: the bearer token, no CSRF token.
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let page = get(&host, "/", &[("Authorization", &bearer)], 200);
    has_ids("/ with a bearer", &page, &["plugin-stats"]);
    get(&host, "/readyz", &[("Authorization", &bearer)], 200);
    let reload =
        admin(&host, "POST", "/reload", &[("Authorization", &bearer), ("Origin", "x")], "");
    assert_eq!(reload.status, 200, "{}", reload.body);

    // `b24-host reload --admin URL` sends $B24_ADMIN_TOKEN as its bearer token.
    let url = format!("http://{}/", host.admin.as_deref().unwrap());
    let reload = |token: &str| {
        let mut command = std::process::Command::new(&built().host);
        command.current_dir(dir.path()).args(["reload", "--admin", &url]);
        command.env("B24_ADMIN_TOKEN", token);
        b24_tests::output_or_hang(command, "b24-host reload")
    };
    let out = reload(ADMIN_TOKEN);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = reload("not-the-token");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("admin token required"));

    // A browser: the login form.
    let refused = admin(&host, "POST", "/login", &[], "token=nope");
    assert_eq!(refused.status, 401);
    assert!(refused.body.contains("wrong token"), "{}", refused.body);
    assert!(refused.header("set-cookie").is_none());
    let logged = admin(&host, "POST", "/login", &[], &format!("token={ADMIN_TOKEN}"));
    assert_eq!(logged.status, 303, "{}", logged.body);
    assert_eq!(logged.header("location"), Some("/"));
    let cookie = logged.header("set-cookie").expect("a session cookie").to_owned();
    assert!(cookie.starts_with("b24_console="), "{cookie}");
    assert!(cookie.contains("; HttpOnly") && cookie.contains("; SameSite=Strict"), "{cookie}");
    no_secrets("the cookie", &cookie);
    let session = cookie.split(';').next().unwrap().to_owned();
    let with = [("Cookie", session.as_str())];
    let page = get(&host, "/", &with, 200);
    has_ids("/ logged in", &page, &["plugin-stats", "logout"]);
    let csrf = csrf_of(&page);
    for target in ["/events", "/dead", "/plugins", "/partials/overview", "/metrics"] {
        no_secrets(target, &get(&host, target, &with, 200));
    }
    no_secrets("/", &page);

    // CSRF: a session's POST needs its token, in the form or the header.
    for target in ["/dead/replay", "/dead/purge", "/plugins/reload", "/reload", "/logout"] {
        let answer = admin(&host, "POST", target, &with, "plugin=probe&ids=1");
        assert_eq!(answer.status, 403, "POST {target} without the CSRF token: {}", answer.body);
        assert!(answer.body.contains("CSRF token missing or wrong"));
    }
    let answer = admin(&host, "POST", "/dead/replay", &with, "plugin=probe&ids=1&csrf=0000");
    assert_eq!(answer.status, 403);
    let asked =
        admin(&host, "POST", "/dead/replay", &with, &format!("plugin=probe&ids=1&csrf={csrf}"));
    assert_eq!(asked.status, 200, "{}", asked.body);
    assert!(asked.body.contains("<p id=\"confirm-count\">0</p>"), "{}", asked.body);
    let header = [("Cookie", session.as_str()), ("X-CSRF-Token", csrf.as_str())];
    assert_eq!(admin(&host, "POST", "/reload", &header, "").status, 200);

    // Log out: the session is gone.
    let out = admin(&host, "POST", "/logout", &with, &format!("csrf={csrf}"));
    assert_eq!(out.status, 303);
    assert!(out.header("set-cookie").is_some_and(|c| c.contains("Max-Age=0")));
    get(&host, "/", &with, 401);
    no_secrets("the host's log", &host.log_text());
}

/// Runs `b24-host serve` in `dir` with `args` and waits for it to exit (killing it after
/// 30 s); its exit success and stderr.
fn serve_exit(dir: &HostDir, args: &[&str]) -> (bool, String) {
    let mut child = std::process::Command::new(&built().host)
        .current_dir(dir.path())
        .args(["serve", "--config", "host.toml", "--listen", "127.0.0.1:0"])
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run b24-host");
    let exited = eventually(Duration::from_secs(30), || child.try_wait().ok().flatten());
    if exited.is_none() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("its output");
    (output.status.success(), String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn a_public_admin_listener_without_a_token_is_refused_at_start() {
    let dir = HostDir::new(&[]);
    dir.write_config(&config(&[], "[admin]\nlisten = \"0.0.0.0:0\"\n"));
    let (ok, stderr) = serve_exit(&dir, &[]);
    assert!(!ok, "the host started on a public admin address without admin.token");
    assert!(stderr.contains("host.toml:") && stderr.contains(": admin.listen: "), "{stderr}");
    assert!(stderr.contains("set admin.token"), "{stderr}");

    dir.write_config(&config(&[], ""));
    let (ok, stderr) = serve_exit(&dir, &["--admin-listen", "0.0.0.0:0"]);
    assert!(!ok, "--admin-listen on a public address without admin.token");
    assert!(stderr.contains("--admin-listen: 0.0.0.0:0 is not a loopback address"), "{stderr}");
}
