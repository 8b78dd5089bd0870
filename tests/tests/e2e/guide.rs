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

/// The fenced block of `lang` in the README's "Writing a plugin" section that contains
/// `needle` (indented blocks in list items too).
fn guide_block_with(lang: &str, needle: &str) -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).unwrap();
    let mut section = &readme[readme.find("## Writing a plugin").expect("the guide section")..];
    let fence = format!("```{lang}\n");
    loop {
        let start = section.find(&fence).unwrap_or_else(|| panic!("no {lang} block with {needle}"));
        let start = start + fence.len();
        let len = section[start..].find("```\n").expect("the block's end");
        let block = &section[start..start + len];
        if block.contains(needle) {
            return block.to_owned();
        }
        section = &section[start + len..];
    }
}

#[test]
fn the_readme_test_kit_example_passes_cargo_test_against_the_readme_rest_example() {
    let plugin = guide_block_with("rust", "impl Plugin for FieldTypes");
    let tests = guide_block_with("rust", "mod tests");
    let lib_rs = format!(
        "use b24_plugin_api::prelude::*;\n\n\
         pub struct FieldTypes {{\n    host: Host,\n}}\n\n\
         impl Create for FieldTypes {{\n    fn create(ctx: PluginContext) -> Result<Self, PluginError> {{\n        \
         Ok(FieldTypes {{ host: ctx.host }})\n    }}\n}}\n\n\
         {plugin}\nexport_plugin!(FieldTypes);\n\n{tests}"
    );
    let api = format!("{:?}", workspace_root().join("plugin-api").display().to_string());
    let dev = guide_block_with("toml", "features = [\"testkit\"]");
    let manifest = guide_block("toml").replace("field-watch", "field-types")
        + &dev.replace("\"<b24-host checkout>/plugin-api\"", &api);
    let manifest = manifest.replace("\"<b24-host checkout>/plugin-api\"", &api);
    let work = tempfile::tempdir().unwrap();
    let krate = work.path().join("field-types");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(krate.join("Cargo.toml"), &manifest).unwrap();
    std::fs::write(krate.join("src/lib.rs"), &lib_rs).unwrap();
    let out = author_cargo(&krate, &["test", "--offline"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("test result: ok. 1 passed"),
        "{stdout}{}\n{manifest}\n{lib_rs}",
        String::from_utf8_lossy(&out.stderr)
    );
}
