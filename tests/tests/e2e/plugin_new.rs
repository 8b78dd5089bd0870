//! `b24-host plugin new`: the Rust plugin it writes builds against this workspace's plugin API,
//! passes its own unit tests (built on the API's test kit), and, copied into a host's plugins
//! folder and enabled with the lines the command printed, receives events through a real host.
//! The PHP, Python and Node plugins it writes pass their own tests run by the real interpreter
//! and, enabled with the printed lines as they are, read a deal through a real host from the
//! fake portal and log it.

use std::process::Command;

use b24_tests::fake_portal::{FakePortal, PortalOptions};
use serde_json::json;

use crate::{
    languages::{deal_event, interpreter},
    support::*,
};

/// The host.toml lines `plugin new` printed: from the line after "Add to host.toml:" to the
/// line before "Then".
fn printed_host_toml(stdout: &str) -> String {
    let start = stdout.find("Add to host.toml:\n").expect("the host.toml lines") + 18;
    let end = stdout[start..].find("\nThen ").expect("the line after them") + start;
    stdout[start..end].trim().to_owned() + "\n"
}

/// The outcomes of `plugin`'s attempts on event `id`, as `journal show --json` lists them.
fn outcomes(dir: &HostDir, id: u64, plugin: &str) -> Vec<String> {
    let shown = dir.journal(&["show", &id.to_string()]);
    shown["event"]["attempts"][plugin]
        .as_array()
        .map(|a| a.iter().map(|x| x["outcome"].as_str().unwrap_or("?").to_owned()).collect())
        .unwrap_or_default()
}

fn accepted_id(host: &RunningHost, body: &str) -> u64 {
    let answer = host.post_form(body);
    assert_eq!(answer.status, 200, "{answer:?}");
    answer.body.trim_start_matches("accepted ").parse().unwrap()
}

#[test]
fn a_new_rust_plugin_builds_passes_its_tests_and_receives_events_through_a_host() {
    let work = tempfile::tempdir().unwrap();
    let krate = work.path().join("demo");
    let api = workspace_root().join("plugin-api");
    let new = |dir: &std::path::Path| {
        Command::new(&built().host)
            .args(["plugin", "new", "demo", "--lang", "rust", "--api-path"])
            .arg(&api)
            .arg("--dir")
            .arg(dir)
            .output()
            .expect("cannot run b24-host")
    };
    let out = new(&krate);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("wrote the Rust plugin demo in "), "{stdout}");
    // Its folder is not written over.
    let again = new(&krate);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(!again.status.success() && stderr.contains("exists and is not empty"), "{stderr}");

    // The generated unit tests pass: a realistic event from the test kit, a fake host.
    let test = author_cargo(&krate, &["test", "--offline"]);
    let test_out = String::from_utf8_lossy(&test.stdout);
    assert!(
        test.status.success() && test_out.contains("test result: ok. 3 passed"),
        "cargo test of the new plugin:\n{test_out}{}",
        String::from_utf8_lossy(&test.stderr)
    );

    // Built, copied into a host's plugins folder and enabled with the printed lines.
    let library = build_author_folder(&krate, "demo");
    let dir = HostDir::new(&[]);
    dir.add_plugin_file(&library);
    let lines = printed_host_toml(&stdout);
    dir.write_config(&format!(
        "state_dir = \"state\"\n\n[server]\npath = \"/b24/events\"\n\n[auth.portals]\n\
         \"{MEMBER}\" = \"{TOKEN}\"\n\n{lines}"
    ));
    let check = dir.run_cli(&["check", "--config", "host.toml"]);
    let check_out = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success() && check_out.contains("demo 0.1.0"), "{check_out}");

    let host = start(&dir);
    let deal = accepted_id(&host, &fixture("ONCRMDEALUSERFIELDUPDATE"));
    let contact = accepted_id(&host, &fixture("ONCRMCONTACTUSERFIELDADD"));
    let line = "UPDATE deal field 554 (UF_CRM_1724771514) by user 1 on some-domain.bitrix24.com";
    assert!(host.wait_log(line, PATIENCE), "no `{line}` in the log:\n{}", host.log_text());
    // The printed settings (`entities = ["deal"]`) make it skip the contact's field.
    let both = eventually(PATIENCE, || {
        (outcomes(&dir, deal, "demo"), outcomes(&dir, contact, "demo"))
            == (vec!["done".to_owned()], vec!["skipped".to_owned()])
    });
    assert!(
        both,
        "{:?} {:?}\n{}",
        outcomes(&dir, deal, "demo"),
        outcomes(&dir, contact, "demo"),
        host.log_text()
    );
    assert!(host.stop());
}

/// `plugin new demo --lang LANG` into a fresh folder, its own test run there by the real
/// interpreter (`test`: the program, then its arguments), then the plugin enabled in a host with
/// exactly the printed lines: `check` starts it, and a deal event posted to the host reaches it,
/// its `crm.deal.get` reads the deal from the fake portal, and it logs the deal and answers done.
fn exec_plugin_new(lang: &str, title: &str, test: &[&str], passed: &str) {
    let program = interpreter(test[0]);
    let work = tempfile::tempdir().unwrap();
    let folder = work.path().join("demo");
    let out = Command::new(&built().host)
        .args(["plugin", "new", "demo", "--lang", lang, "--dir"])
        .arg(&folder)
        .output()
        .expect("cannot run b24-host");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(&format!("wrote the {title} plugin demo in ")), "{stdout}");

    // Its own test, with nothing but the interpreter, in its folder.
    let mut command = Command::new(&program);
    command.args(&test[1..]).current_dir(&folder);
    let run = b24_tests::output_or_hang(command, &test.join(" "));
    let said =
        format!("{}{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success() && said.contains(passed), "{}:\n{said}", test.join(" "));

    let portal = FakePortal::start(PortalOptions::default());
    let deal = portal.add_deal("Pipes for the plant", "PREPARATION");
    let dir = HostDir::new(&[]);
    let lines = printed_host_toml(&stdout);
    dir.write_config(&format!(
        "state_dir = \"state\"\n\n[server]\npath = \"/b24/events\"\n\n[auth.portals]\n\
         \"{MEMBER}\" = \"{TOKEN}\"\n\n{lines}"
    ));
    let check = dir.run_cli(&["check", "--config", "host.toml"]);
    let check_out = String::from_utf8_lossy(&check.stdout);
    let started = check_out.contains("plugin demo ")
        && check_out.contains(&format!("(exec: {} {}", test[0], folder.display()));
    assert!(check.status.success() && started, "{check_out}");

    let host = start(&dir);
    let token = portal.issue_access_token();
    let id = accepted_id(
        &host,
        &deal_event(&portal, json!({"FIELDS": {"ID": deal.to_string()}}), &token),
    );
    // The sentinel: its log line, which it writes once the host gave it the deal.
    let line = format!(
        "deal {deal} \"Pipes for the plant\" is at PREPARATION (ONCRMDEALUPDATE by user 1)"
    );
    assert!(host.wait_log(&line, PATIENCE), "no `{line}` in the log:\n{}", host.log_text());
    let done = eventually(PATIENCE, || outcomes(&dir, id, "demo") == ["done"]);
    assert!(done, "{:?}\n{}", outcomes(&dir, id, "demo"), host.log_text());
    assert!(host.stop());
}

#[test]
fn a_new_php_plugin_passes_its_test_and_receives_an_event_through_a_host() {
    exec_plugin_new("php", "PHP", &["php", "test.php"], "3 passed");
}

#[test]
fn a_new_python_plugin_passes_its_test_and_receives_an_event_through_a_host() {
    exec_plugin_new("python", "Python", &["python3", "-m", "unittest"], "Ran 3 tests");
}

#[test]
fn a_new_node_plugin_passes_its_test_and_receives_an_event_through_a_host() {
    exec_plugin_new("node", "Node.js", &["node", "--test"], "# pass 3");
}
