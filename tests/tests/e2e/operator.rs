//! The operator's rough edges: typos in plugin names, events whose user is unknown, and where a
//! plugin's own output (println!, panics) ends up.

use crate::support::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The 1-based line of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).expect("line present") + 1
}

#[test]
fn a_plugin_table_that_matches_no_plugin_is_warned_about_by_check_and_serve() {
    let dir = HostDir::new(&["audit-log", "field-registry"]);
    // A typo of an enabled plugin, a disabled plugin whose library is there (fine: its settings
    // wait for it), and a name that matches nothing at all.
    let text = config(
        &["audit-log"],
        "[plugin.audti-log]\ntimeout_ms = 5000\n\n[plugin.field-registry]\ntimeout_ms = 5000\n\n\
         [plugin.nothing-like-it]\ntimeout_ms = 5000\n",
    );
    dir.write_config(&text);
    let typo_line = line_of(&text, "[plugin.audti-log]");
    let unrelated_line = line_of(&text, "[plugin.nothing-like-it]");

    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let err = stderr(&out);
    assert!(out.status.success(), "a warning is not a failure: {err}");
    assert!(
        err.contains(&format!(
            "warning: host.toml:{typo_line}:9: [plugin.audti-log] matches no enabled plugin and no library in"
        )),
        "{err}"
    );
    assert!(err.contains("so it is ignored; did you mean `audit-log`?"), "{err}");
    assert!(
        err.contains(&format!("host.toml:{unrelated_line}:9: [plugin.nothing-like-it] matches no")),
        "{err}"
    );
    assert!(!err.contains("[plugin.field-registry]"), "{err}");
    // Only the two tables are warned about (the template's other warnings are not this test's).
    assert_eq!(err.matches("] matches no").count(), 2, "{err}");

    let host = start(&dir);
    let log = host.log_text();
    assert!(
        log.contains("[plugin.audti-log]") && log.contains("did you mean `audit-log`?"),
        "{log}"
    );
    assert!(log.contains("[plugin.nothing-like-it]"), "{log}");
    assert!(host.stop());
}

#[test]
fn an_enabled_plugin_without_a_library_gets_the_closest_library_as_a_suggestion() {
    let dir = HostDir::new(&["audit-log", "field-registry"]);
    dir.write_config(&config(&["audit-lgo", "feild-registry"], ""));
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("plugin `audit-lgo`: no library in")
            && err.contains("(expected libaudit_lgo.so); build it and copy it there, or remove it from plugins.enabled; did you mean `audit-log`?"),
        "{err}"
    );
    assert!(err.contains("did you mean `field-registry`?"), "{err}");

    let host = start(&dir);
    assert!(host.wait_log("did you mean `audit-log`?", PATIENCE), "{}", host.log_text());
    assert!(host.stop());
}

/// The form body of a user-field update as Bitrix24's documentation shows it: a user's token,
/// but no `auth[user_id]`.
fn without_user_id(body: &str) -> String {
    let kept: Vec<&str> = body
        .split('&')
        .filter(|p| !p.starts_with("auth%5Buser_id%5D=") && !p.starts_with("auth[user_id]="))
        .collect();
    assert!(kept.len() < body.split('&').count(), "the body had a user id: {body}");
    kept.join("&")
}

#[test]
fn a_user_token_without_a_user_id_reads_as_unknown_not_as_user_zero() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("", "")));
    let host = start(&dir);

    let unknown = without_user_id(&field_event(1, "UF_UNKNOWN"));
    assert_eq!(host.post_form(&unknown).status, 200);
    let zero = field_event(2, "UF_ZERO").replace("auth%5Buser_id%5D=1", "auth%5Buser_id%5D=0");
    assert!(zero.contains("auth%5Buser_id%5D=0"), "{zero}");
    assert_eq!(host.post_form(&zero).status, 200);
    let mut system = args("ONCRMDEALUSERFIELDUPDATE");
    system.field_id = 3;
    system.system = true;
    assert_eq!(host.post_form(&form(&system)).status, 200);

    let audit = dir.wait_lines("audit.jsonl", 3, PATIENCE, |_| true);
    let users: Vec<_> = audit.iter().map(|l| (l["field_id"].clone(), l["user"].clone())).collect();
    assert_eq!(
        users,
        [(1.into(), "unknown".into()), (2.into(), "0".into()), (3.into(), "system".into())]
    );
    // What plugins see: UserAuth::user_id is 0 in both, but the delivery says which is unknown.
    let probe = dir.wait_lines("probe.jsonl", 3, PATIENCE, |l| l["kind"] == "user_field");
    let users: Vec<_> = probe.iter().map(|l| l["user"].clone()).collect();
    assert_eq!(users, [serde_json::json!("unknown"), 0.into(), "system".into()]);
    // And the journal's view of the event says so too.
    let shown = dir.journal(&["show", "1"]);
    assert_eq!(shown["event"]["decoded"]["auth"]["user_id"], "unknown", "{shown}");
    assert!(host.stop());
}

#[test]
fn a_plugins_prints_and_panics_become_log_lines_with_its_name_and_stdout_stays_the_hosts() {
    let dir = HostDir::new(&["probe"]);
    let text = config(&["probe"], &probe("", "")).replace("level = \"debug\"", "format = \"json\"");
    dir.write_config(&text);
    // The host's stdout and stderr into files, to see everything that reaches them.
    let stdout_file = dir.path().join("stdout.txt");
    let stderr_file = dir.path().join("stderr.txt");
    let mut child = std::process::Command::new(&built().host)
        .current_dir(dir.path())
        .args(["serve", "--config", "host.toml", "--listen", "127.0.0.1:0", "--admin-listen"])
        .arg("127.0.0.1:0")
        .stdout(std::fs::File::create(&stdout_file).unwrap())
        .stderr(std::fs::File::create(&stderr_file).unwrap())
        .spawn()
        .unwrap();
    let read = |f: &std::path::Path| std::fs::read_to_string(f).unwrap_or_default();
    let wait_for = |f: &std::path::Path, needle: &str| {
        let found = eventually(PATIENCE, || read(f).contains(needle));
        assert!(found, "no {needle:?} in {}:\n{}", f.display(), read(f));
    };
    wait_for(&stdout_file, "\n");
    let first = read(&stdout_file);
    let addr = first
        .split("listening on http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("no listening line on stdout: {first:?}"))
        .to_owned();
    let body = field_event(1, "UF_PRINT_PANIC");
    let answer = try_request(
        &addr,
        "POST",
        "/b24/events",
        Some("application/x-www-form-urlencoded"),
        body.as_bytes(),
    )
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    // The panic makes a retry; the sentinels are the second attempt's record and its panic.
    let calls = dir.wait_lines("probe.jsonl", 2, PATIENCE, |l| l["kind"] == "user_field");
    assert!(calls.len() >= 2, "{}", read(&stderr_file));
    wait_for(&stderr_file, "\"attempt\":2,\"panic\"");
    wait_for(&stderr_file, "probe told to panic");
    let _ = std::process::Command::new("kill").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success());

    // On stdout, the host's one line and nothing the plugin printed.
    let stdout = read(&stdout_file);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    assert!(stdout.starts_with("b24-host: listening on http://"), "{stdout}");
    // On stderr, only JSON log lines (parsed below): nothing raw.
    let log = read(&stderr_file);
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line {l:?}: {e}"))
        })
        .collect();
    let find = |needle: &str| {
        lines
            .iter()
            .find(|l| l["message"].as_str().is_some_and(|m| m.contains(needle)))
            .unwrap_or_else(|| panic!("no log line with {needle:?}:\n{log}"))
            .clone()
    };
    let printed = find("probe prints for field UF_PRINT_PANIC");
    assert_eq!((&printed["plugin"], &printed["stream"]), (&"probe".into(), &"stdout".into()));
    assert_eq!(printed["level"], "INFO");
    let complained = find("probe complains about field UF_PRINT_PANIC");
    assert_eq!((&complained["plugin"], &complained["stream"]), (&"probe".into(), &"stderr".into()));
    let panicked = find("plugin panicked: probe told to panic by field UF_PRINT_PANIC");
    assert_eq!(panicked["plugin"], "probe");
    assert_eq!(panicked["level"], "ERROR");
    assert!(panicked["location"].as_str().is_some_and(|l| l.contains("src/lib.rs")), "{panicked}");
}
