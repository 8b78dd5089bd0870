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
    assert_eq!(err.matches("warning:").count(), 2, "{err}");

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
            && err.contains("(expected libaudit_lgo.so); did you mean `audit-log`?"),
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
