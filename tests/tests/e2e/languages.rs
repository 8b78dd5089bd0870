//! Plugins in any language (issue 22, item 3): the programs in `examples/`, run by the real
//! interpreters (`php`, `python3`, `node`) through a real host, against the fake portal.
//!
//! - Each exec example receives its events in arrival order; its `crm.deal.get` reaches the
//!   portal the event came from with that event's user token (as a Rust plugin's call would);
//!   a temporary portal failure makes it answer `retry`, and the event is delivered again and
//!   done; an event without a deal id is rejected and becomes a dead letter.
//! - The classic PHP handler behind `kind = "http"`, served by PHP's built-in server: the body
//!   arrives byte for byte as it was posted (only `auth[refresh_token]` blank), `$_REQUEST`
//!   reads as a Bitrix24 handler expects, its application-token check passes, and it verifies
//!   the Standard Webhooks signature itself: a plugin with the wrong secret gets 401, and its
//!   events become dead letters.
//!
//! Every wait is on what the programs write (a line per event), never on a sleep.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use b24_tests::fake_portal::{FakePortal, PortalOptions, RequestKind};
use serde_json::{Value, json};

use crate::support::*;

/// `program`, checked to run (`--version`): the tests need the real interpreters, which
/// `scripts/test` installs.
pub fn interpreter(program: &str) -> String {
    let found = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "`{program}` is needed by this test and cannot be run (scripts/test installs php-cli, \
         python3 and nodejs; on Debian: apt-get install php-cli python3 nodejs)"
    );
    program.to_owned()
}

/// A file of the repository's `examples/` folder, as an absolute path.
fn example(path: &str) -> PathBuf {
    workspace_root().join("examples").join(path)
}

/// A `ONCRMDEALUPDATE` body exactly as Bitrix24 posts it: `data[FIELDS][ID]` = `deal` (or
/// `data` as given), caused by user 1 with `user_token`, on `portal`.
pub fn deal_event(portal: &FakePortal, data: Value, user_token: &str) -> String {
    let mut a = args("ONCRMDEALUPDATE");
    a.access_token = Some(user_token.to_owned());
    a.client_endpoint = Some(portal.client_endpoint());
    a.server_endpoint = Some(portal.server_endpoint());
    a.domain = portal.domain();
    let mut payload = b24_host::cmd::send::payload(&a);
    payload["data"] = data;
    let map = b24_host::decode::encode::map_from_json(&payload).expect("a PHP-shaped payload");
    b24_host::decode::encode::http_build_query(&map)
}

/// The journal id the host answered `body` with.
fn accepted(host: &RunningHost, body: &str) -> u64 {
    let answer = host.post_form(body);
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body.trim_start_matches("accepted ").parse().expect("an event id")
}

/// The outcomes of `plugin`'s attempts on event `id`, as `journal show` lists them.
fn outcomes(dir: &HostDir, id: u64, plugin: &str) -> Vec<String> {
    let shown = dir.journal(&["show", &id.to_string()]);
    shown["event"]["attempts"][plugin]
        .as_array()
        .map(|a| a.iter().map(|x| x["outcome"].as_str().unwrap_or("?").to_owned()).collect())
        .unwrap_or_default()
}

/// A host folder whose host.toml enables the exec plugin `deal-watch` running `command`
/// (three attempts, short back-off), writing its deals to `deals.jsonl`.
fn exec_host(command: &[String]) -> HostDir {
    let dir = HostDir::new(&[]);
    let command: Vec<String> = command.iter().map(|c| format!("{c:?}")).collect();
    dir.write_config(&format!(
        r#"state_dir = "state"

[server]
path = "/b24/events"

[log]
level = "debug"

[auth.portals]
"{MEMBER}" = "{TOKEN}"

[plugins]
enabled = ["deal-watch"]

[plugin.deal-watch]
kind = "exec"
command = [{}]
events = ["ONCRMDEALADD", "ONCRMDEALUPDATE"]

[plugin.deal-watch.retry]
attempts = 3
base_ms = 10
cap_ms = 50

[plugin.deal-watch.settings]
out = "deals.jsonl"
"#,
        command.join(", ")
    ));
    dir
}

/// One exec example, end to end: four deals read in order (the first after a portal
/// failure and a retry), and an event without a deal id dead-lettered.
fn exec_example(command: Vec<String>) {
    let portal = FakePortal::start(PortalOptions::default());
    let titles = ["Pipes for the plant", "Valves, spring order", "Ёлочные игрушки", "Cable 3x2.5"];
    let deals: Vec<u64> = titles.iter().map(|t| portal.add_deal(t, "PREPARATION")).collect();
    let dir = exec_host(&command);
    let host = start(&dir);
    // The portal breaks for the first call: the plugin answers retry, and the event comes
    // again (and holds back the later ones meanwhile).
    portal.fail_next_calls("crm.deal.get", 1);
    let mut tokens = Vec::new();
    let mut ids = Vec::new();
    let mut posted = |data: Value| {
        let token = portal.issue_access_token();
        let id = accepted(&host, &deal_event(&portal, data, &token));
        tokens.push(token);
        ids.push(id);
        id
    };
    for deal in &deals[..2] {
        posted(json!({"FIELDS": {"ID": deal.to_string()}}));
    }
    // A bad event: Bitrix24 never sends a deal event without its id, a forger might.
    let bad = posted(json!({"FIELDS": {"TITLE": "no id here"}}));
    for deal in &deals[2..] {
        posted(json!({"FIELDS": {"ID": deal.to_string()}}));
    }

    // The sentinel: the last deal's line; the plugin gets its events in order, so every line
    // before it is all it will write of the others.
    let lines = dir.wait_lines("deals.jsonl", deals.len(), PATIENCE * 2, |_| true);
    assert_eq!(lines.len(), deals.len(), "{lines:?}\n{}", host.log_text());
    let good: Vec<u64> = ids.iter().copied().filter(|id| *id != bad).collect();
    let seen: Vec<u64> = lines.iter().map(|l| l["event_id"].as_u64().unwrap()).collect();
    assert_eq!(seen, good, "not in arrival order: {lines:?}");
    for ((line, deal), title) in lines.iter().zip(&deals).zip(titles) {
        assert_eq!(line["deal"], deal.to_string(), "{line}");
        assert_eq!(line["title"], title, "{line}");
        assert_eq!(line["stage"], "PREPARATION", "{line}");
        assert_eq!(line["code"], "ONCRMDEALUPDATE", "{line}");
        assert_eq!(line["user"], 1, "{line}");
    }
    let attempts: Vec<u64> = lines.iter().map(|l| l["attempt"].as_u64().unwrap()).collect();
    assert_eq!(attempts, [2, 1, 1, 1], "the first deal is read on its second attempt");
    assert_eq!(outcomes(&dir, good[0], "deal-watch"), ["retry", "done"]);

    // Each call reached the event's portal with that event's user token, in order.
    let calls: Vec<(Option<String>, u16)> = portal
        .requests()
        .into_iter()
        .filter(|r| r.kind == RequestKind::Rest && r.method == "crm.deal.get")
        .map(|r| (r.token, r.status))
        .collect();
    let good_tokens: Vec<&String> =
        ids.iter().zip(&tokens).filter(|(id, _)| **id != bad).map(|(_, t)| t).collect();
    let expected: Vec<(Option<String>, u16)> = [(good_tokens[0], 500)]
        .into_iter()
        .chain(good_tokens.iter().map(|t| (*t, 200)))
        .map(|(t, s)| (Some(t.clone()), s))
        .collect();
    assert_eq!(calls, expected);

    // The bad event is the plugin's dead letter, with its reason; nothing else is.
    let dead = eventually(PATIENCE, || {
        let dead = dead_letters(&dir, "deal-watch");
        (!dead.is_empty()).then_some(dead)
    })
    .unwrap_or_else(|| panic!("no dead letter:\n{}", host.log_text()));
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].0, bad);
    assert!(dead[0].1.contains("no deal id in data[FIELDS][ID]"), "{dead:?}");
    assert_eq!(outcomes(&dir, bad, "deal-watch"), ["rejected"]);
    // Its log line, under its name.
    let said = format!("deal {} \"{}\" is at PREPARATION", deals[3], titles[3]);
    assert!(host.wait_log(&said, PATIENCE), "no `{said}` in the log:\n{}", host.log_text());
    assert!(host.stop());
}

#[test]
fn the_php_exec_example_reads_deals_in_order_retries_and_rejects() {
    let php = interpreter("php");
    exec_example(vec![php, example("exec-php/deal-watch.php").display().to_string()]);
}

#[test]
fn the_python_exec_example_reads_deals_in_order_retries_and_rejects() {
    let python = interpreter("python3");
    exec_example(vec![python, example("exec-python/deal_watch.py").display().to_string()]);
}

#[test]
fn the_node_exec_example_reads_deals_in_order_retries_and_rejects() {
    let node = interpreter("node");
    exec_example(vec![node, example("exec-node/deal-watch.js").display().to_string()]);
}

/// PHP's built-in server running `script` on a free loopback port, in `folder`, with `env`;
/// killed on drop.
pub struct PhpServer {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl PhpServer {
    /// Starts `php -S 127.0.0.1:PORT script` and waits until it accepts connections.
    pub fn start(script: &Path, folder: &Path, env: &[(&str, &str)]) -> PhpServer {
        let php = interpreter("php");
        let addr = format!("127.0.0.1:{}", free_port());
        let log = std::fs::File::create(folder.join("php-server.log")).expect("its log");
        let child = Command::new(php)
            .arg("-S")
            .arg(&addr)
            .arg(script)
            .current_dir(folder)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("its log"))
            .stderr(log)
            .spawn()
            .expect("cannot start php -S");
        let server = PhpServer { child, addr };
        let up = eventually(PATIENCE, || std::net::TcpStream::connect(&server.addr).is_ok());
        assert!(up, "php -S never listened on {}", server.addr);
        server
    }
}

impl Drop for PhpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Lowercase hex SHA-256.
fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn the_classic_php_handler_gets_the_body_bitrix24_sent_and_verifies_the_signature() {
    let portal = FakePortal::start(PortalOptions::default());
    let app = tempfile::tempdir().unwrap();
    // What the app stored at its install: the portal's application token.
    std::fs::write(app.path().join("app-tokens.json"), json!({ MEMBER: TOKEN }).to_string())
        .unwrap();
    // A Standard Webhooks secret as the specification writes it: whsec_ + base64 of the key.
    let secret = "whsec_c2VjcmV0IGtleSBvZiB0aGUgaGFuZGxlcg==";
    let events = app.path().join("events.jsonl");
    let server = PhpServer::start(
        &example("http-php/handler.php"),
        app.path(),
        &[
            ("B24_FORWARD_SECRET", secret),
            ("B24_APP_TOKENS", &app.path().join("app-tokens.json").display().to_string()),
            ("B24_EVENTS_FILE", &events.display().to_string()),
        ],
    );
    let dir = HostDir::new(&[]);
    let url = format!("http://{}/bitrix/handler.php", server.addr);
    dir.write_config(&format!(
        r#"state_dir = "state"

[server]
path = "/b24/events"

[auth.portals]
"{MEMBER}" = "{TOKEN}"

[plugins]
enabled = ["legacy", "legacy-wrong"]

[plugin.legacy]
kind = "http"
url = "{url}"
events = ["ONCRMDEAL*"]
format = "form"
secret = "{secret}"

[plugin.legacy-wrong]
kind = "http"
url = "{url}"
events = ["ONCRMDEAL*"]
secret = "whsec_bm90IHRoZSBoYW5kbGVyJ3Mga2V5"

[plugin.legacy-wrong.retry]
attempts = 2
base_ms = 10
cap_ms = 50
"#
    ));
    let host = start(&dir);

    // Bodies as Bitrix24 posts them; the second carries a refresh token, as events whose
    // binding asks for one do; the third is a user-field event with the fixtures' encoding.
    let first = deal_event(&portal, json!({"FIELDS": {"ID": "501"}}), "user-token-1");
    let mut with_refresh = args("ONCRMDEALUPDATE");
    with_refresh.access_token = Some("user-token-2".into());
    with_refresh.refresh_token = Some("refresh-token-2".into());
    let second = form(&with_refresh);
    let third = fixture("ONCRMDEALUSERFIELDUPDATE");
    let bodies = [first, second, third];
    let ids: Vec<u64> = bodies.iter().map(|b| accepted(&host, b)).collect();

    let lines = eventually(PATIENCE, || {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        let lines: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        (lines.len() >= bodies.len()).then_some(lines)
    });
    let lines = lines.unwrap_or_else(|| {
        panic!(
            "the handler did not get every event:\n{}\n{}",
            std::fs::read_to_string(app.path().join("php-server.log")).unwrap_or_default(),
            host.log_text()
        )
    });
    for ((line, body), id) in lines.iter().zip(&bodies).zip(&ids) {
        // Byte for byte what was posted, but the refresh token's value, which the host keeps.
        let expected = blank_refresh_token(body);
        assert_eq!(line["body_sha256"], sha256_hex(expected.as_bytes()), "{line}\n{expected}");
        assert_eq!(line["member_id"], MEMBER, "{line}");
        assert_eq!(line["delivery"], id.to_string(), "{line}");
        assert_eq!(line["attempt"], "1", "{line}");
    }
    assert!(
        bodies[1].contains("refresh-token-2")
            && !blank_refresh_token(&bodies[1]).contains("refresh-token-2")
    );
    // $_REQUEST as a Bitrix24 handler reads it.
    assert_eq!(lines[0]["event"], "ONCRMDEALUPDATE");
    assert_eq!(lines[0]["data"], json!({"FIELDS": {"ID": "501"}}));
    assert_eq!(lines[0]["user"], "1");
    assert_eq!(lines[2]["event"], "ONCRMDEALUSERFIELDUPDATE");
    assert_eq!(lines[2]["data"]["FIELDS"]["FIELD_NAME"], "UF_CRM_1724771514");
    assert_eq!(lines[2]["id"], "554");

    // The wrong secret: the handler answers 401 to each, so they are rejected (dead letters
    // keeping the answer); the right one has none.
    let dead = eventually(PATIENCE, || {
        let dead = dead_letters(&dir, "legacy-wrong");
        (dead.len() >= bodies.len()).then_some(dead)
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", dead_letters(&dir, "legacy-wrong"), host.log_text()));
    for (id, reason) in &dead {
        assert!(ids.contains(id), "{dead:?}");
        assert_eq!(reason, "rejected: HTTP 401: bad signature", "{dead:?}");
    }
    assert_eq!(dead_letters(&dir, "legacy"), []);
    let text = std::fs::read_to_string(&events).unwrap();
    assert_eq!(text.lines().count(), bodies.len(), "a request with a bad signature was handled");
    assert!(host.stop());
}

/// `body` with the value of `auth[refresh_token]` (brackets encoded as Bitrix24 encodes them)
/// blank.
fn blank_refresh_token(body: &str) -> String {
    body.split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if name == "auth%5Brefresh_token%5D" => format!("{name}="),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("&")
}
