//! Loading plugins and reading the config: the errors a user sees, and the plugin-author flow.

use std::{path::Path, process::Command};

use crate::support::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn check_lists_each_plugin_with_its_version_and_subscriptions() {
    let dir = HostDir::new(&["audit-log", "probe"]);
    dir.write_config(&config(&["audit-log", "probe"], &probe("events = [\"ONCRMDEAL*\"]", "")));
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", stderr(&out));
    assert!(stdout.contains("plugin audit-log 0.1.0"), "{stdout}");
    assert!(stdout.contains("ONCRM*USERFIELD*"), "{stdout}");
    assert!(stdout.contains("plugin probe 0.1.0"), "{stdout}");
    assert!(stdout.contains("narrowed to ONCRMDEAL*"), "{stdout}");
}

#[test]
fn a_missing_plugin_and_a_library_that_is_not_a_plugin_are_reported_together_and_the_rest_serves() {
    let dir = HostDir::new(&["audit-log"]);
    // A real shared library without a plugin root module.
    let source = dir.path().join("notaplugin.c");
    std::fs::write(&source, "int answer(void) { return 42; }\n").unwrap();
    let library = dir.path().join("plugins").join(plugin_file("notaplugin"));
    let cc = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&library)
        .arg(&source)
        .status()
        .expect("cannot run cc");
    assert!(cc.success());
    dir.write_config(&config(&["audit-log", "notaplugin", "ghost"], ""));

    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("plugin `notaplugin`") && err.contains("is not a b24-host plugin"),
        "{err}"
    );
    assert!(err.contains("plugin `ghost`") && err.contains("libghost.so"), "{err}");
    assert!(err.contains("2 problem(s)"), "{err}");
    // audit-log itself was fine and is still listed.
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugin audit-log"));

    // serve still starts (the broken plugins' events wait in the journal) and logs the same
    // reasons; the good plugin serves.
    let host = start(&dir);
    assert!(host.wait_log("is not a b24-host plugin", PATIENCE), "{}", host.log_text());
    assert!(host.log_text().contains("libghost.so"));
    assert_eq!(host.post_form(&fixture("ONCRMDEALUSERFIELDADD")).status, 200);
    assert_eq!(dir.wait_lines("audit.jsonl", 1, PATIENCE, |_| true).len(), 1);
    assert!(host.stop());
}

#[test]
fn a_config_error_names_the_file_line_and_key() {
    let dir = HostDir::new(&[]);
    dir.write_config("state_dir = \"state\"\n\n[server]\nlisten = \"127.0.0.1:0\"\ntimeout = 5\n");
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("host.toml:5"), "{err}");
    assert!(err.contains("server.timeout"), "{err}");
}

/// The version of the workspace's b24-plugin-api.
fn current_api_version() -> String {
    let manifest = std::fs::read_to_string(workspace_root().join("plugin-api/Cargo.toml")).unwrap();
    manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = \"").and_then(|v| v.strip_suffix('"')))
        .expect("a version line")
        .to_owned()
}

/// Makes a plugin crate outside the workspace, as a plugin author would, against `api` (the
/// path of a b24-plugin-api crate), builds it and returns the library.
fn author_plugin(work: &Path, api: &Path, name: &str) -> std::path::PathBuf {
    let manifest = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.3.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n[dependencies]\nb24-plugin-api = {{ path = {:?} }}\n\n[workspace]\n",
        api.display().to_string()
    );
    build_author_crate(work, name, &manifest, FIELD_WATCH)
}

/// A plugin that appends each user-field event's code, field id and name to `field-watch.txt`,
/// written with the root paths every API line has (so it builds against 0.2.0 too).
const FIELD_WATCH: &str = r#"use b24_plugin_api::{export_plugin, Outcome, Plugin, PluginError, UserFieldEvent};

#[derive(Default)]
pub struct FieldWatch;

impl Plugin for FieldWatch {
    fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError> {
        let line = format!("{} {} {}\n", event.code, event.field_id, event.field_name);
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open("field-watch.txt")
            .map_err(PluginError::retry)?;
        file.write_all(line.as_bytes()).map_err(PluginError::retry)?;
        Ok(Outcome::Done)
    }
}

export_plugin!(FieldWatch);
"#;

#[test]
fn a_plugin_author_builds_a_plugin_outside_the_workspace_and_the_host_runs_it() {
    let work = tempfile::tempdir().unwrap();
    // Named apart from the README guide's `field-watch`: author crates share a target folder.
    let library = author_plugin(work.path(), &workspace_root().join("plugin-api"), "quote-watch");
    let dir = HostDir::new(&[]);
    dir.add_plugin_file(&library);
    dir.write_config(&config(&["quote-watch"], ""));
    // The plugin writes into the host's working folder, which the harness sets to `dir`.
    let out_file = dir.path().join("field-watch.txt");
    let host = start(&dir);
    assert_eq!(host.post_form(&fixture("ONCRMQUOTEUSERFIELDADD")).status, 200);
    let text = eventually(PATIENCE, || std::fs::read_to_string(&out_file).ok()).unwrap_or_default();
    assert_eq!(text, "ONCRMQUOTEUSERFIELDADD 554 UF_CRM_1724771514\n");
    assert!(host.stop());
}

/// Copies the folder `from` with its subfolders to `to`.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

#[test]
fn a_plugin_built_against_another_api_version_is_refused_with_the_version_to_use() {
    let work = tempfile::tempdir().unwrap();
    // A copy of b24-plugin-api that claims to be 0.3.0: another ABI line.
    let api = work.path().join("plugin-api-0.3");
    copy_tree(&workspace_root().join("plugin-api/src"), &api.join("src"));
    let manifest = std::fs::read_to_string(workspace_root().join("plugin-api/Cargo.toml")).unwrap();
    let manifest = manifest
        .replace(&format!("version = \"{}\"", current_api_version()), "version = \"0.3.0\"")
        .replace("edition.workspace = true", "edition = \"2024\"")
        .replace("license.workspace = true", "")
        .replace("rust-version.workspace = true", "")
        .replace(
            "abi_stable.workspace = true",
            "abi_stable = { version = \"0.11\", default-features = false }",
        )
        .replace("serde.workspace = true", "serde = { version = \"1\", features = [\"derive\"] }")
        .replace("serde_ignored.workspace = true", "serde_ignored = \"0.1\"")
        .replace("serde_json.workspace = true", "serde_json = \"1\"")
        .replace("toml.workspace = true", "toml = \"0.9\"");
    std::fs::write(api.join("Cargo.toml"), manifest).unwrap();
    let library = author_plugin(work.path(), &api, "other-line-watch");

    let dir = HostDir::new(&[]);
    dir.add_plugin_file(&library);
    dir.write_config(&config(&["other-line-watch"], ""));
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("built against b24-plugin-api 0.3")
            && err.contains("rebuild the plugin against b24-plugin-api 0.2"),
        "{err}"
    );
}

#[test]
fn a_plugin_built_against_plugin_api_0_2_0_still_loads_and_runs_in_this_host() {
    // tests/fixtures/plugin-api-0.2.0 is the API as released before HostServices::rest was
    // appended; this host's services have one more method than that plugin knows.
    let work = tempfile::tempdir().unwrap();
    let api = workspace_root().join("tests/fixtures/plugin-api-0.2.0");
    let library = author_plugin(work.path(), &api, "legacy-watch");
    let dir = HostDir::new(&[]);
    dir.add_plugin_file(&library);
    dir.write_config(&config(&["legacy-watch"], ""));
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", stderr(&out));
    assert!(
        stdout.contains("plugin legacy-watch 0.3.0") && stdout.contains("api 0.2.0"),
        "{stdout}"
    );
    let host = start(&dir);
    assert_eq!(host.post_form(&fixture("ONCRMLEADUSERFIELDDELETE")).status, 200);
    let out_file = dir.path().join("field-watch.txt");
    let text = eventually(PATIENCE, || std::fs::read_to_string(&out_file).ok()).unwrap_or_default();
    assert_eq!(text, "ONCRMLEADUSERFIELDDELETE 554 UF_CRM_1724771514\n");
    assert!(host.stop());
}
