//! The README's plugin guide, taken from README.md as it is at test time, built as an author
//! would build it against this workspace's plugin API, and run in a real host.

use crate::support::*;

/// The first fenced block of `lang` in the README's "Writing a plugin" section.
fn guide_block(lang: &str) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let section = &readme[readme.find("## Writing a plugin").expect("the guide section")..];
    let fence = format!("```{lang}\n");
    let start = section.find(&fence).unwrap_or_else(|| panic!("no {lang} block")) + fence.len();
    let len = section[start..].find("```\n").expect("the block's end");
    section[start..start + len].to_owned()
}

#[test]
fn the_readme_plugin_guide_builds_reads_its_settings_and_logs_through_the_host() {
    let rust = guide_block("rust");
    let code: Vec<&str> = rust
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("//"))
        .collect();
    assert!(code.len() <= 15, "the guide's plugin has {} lines of Rust:\n{rust}", code.len());
    let api = workspace_root().join("plugin-api");
    let manifest = guide_block("toml")
        .replace("\"<b24-host checkout>/plugin-api\"", &format!("{:?}", api.display().to_string()));
    let work = tempfile::tempdir().unwrap();
    let library = build_author_crate(work.path(), "field-watch", &manifest, &rust);

    let dir = HostDir::new(&[]);
    dir.add_plugin_file(&library);
    // A key the settings type does not know stops the plugin, and the message says which.
    dir.write_config(&config(&["field-watch"], "[plugin.field-watch.settings]\nprefx = \"x\"\n"));
    let out = dir.run_cli(&["check", "--config", "host.toml"]);
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("field-watch settings: unknown key `prefx`"), "{text}");

    dir.write_config(&config(
        &["field-watch"],
        "[plugin.field-watch.settings]\nprefix = \"watch: \"\n",
    ));
    let host = start(&dir);
    assert_eq!(host.post_form(&fixture("ONCRMQUOTEUSERFIELDADD")).status, 200);
    let line = "watch: ONCRMQUOTEUSERFIELDADD UF_CRM_1724771514 by Some(";
    assert!(host.wait_log(line, PATIENCE), "no `{line}` in the log:\n{}", host.log_text());
    assert!(host.stop());
}
