//! `plugin new`'s templating, names, folders and API sources (the e2e test `plugin_new` builds
//! what it writes and runs it in a host).

use super::*;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

fn args(name: &str) -> NewPluginArgs {
    NewPluginArgs {
        name: name.to_owned(),
        lang: PluginLang::Rust,
        dir: None,
        api_path: None,
        api_git: None,
        api_rev: None,
        api_tag: None,
        api_branch: None,
    }
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join(file)).unwrap()
}

fn toml_of(text: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[test]
fn the_rust_kind_is_a_crate_against_the_api_with_its_test_kit_and_the_host_toml_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("deal-watch");
    let api = ApiSource::Path(workspace().join("plugin-api"));
    let written = write("deal-watch", PluginLang::Rust, &dir, &api).unwrap();
    assert_eq!(written.files, ["Cargo.toml", "src/lib.rs", "README.md", ".gitignore"]);
    for file in &written.files {
        let text = read(&dir, file);
        assert_eq!(placeholders(&text).count(), 0, "{file}:\n{text}");
    }

    let manifest = toml_of(&read(&dir, "Cargo.toml"));
    assert_eq!(manifest["package"]["name"].as_str(), Some("deal-watch"));
    assert_eq!(manifest["lib"]["crate-type"].as_array().unwrap()[0].as_str(), Some("cdylib"));
    let api_path = workspace().join("plugin-api").to_string_lossy().into_owned();
    let dependency = &manifest["dependencies"]["b24-plugin-api"];
    assert_eq!(dependency["path"].as_str(), Some(api_path.as_str()));
    assert_eq!(dependency["version"].as_str(), Some(abi_line()));
    let dev = &manifest["dev-dependencies"]["b24-plugin-api"];
    assert_eq!(dev["path"].as_str(), Some(api_path.as_str()));
    assert_eq!(dev["features"].as_array().unwrap()[0].as_str(), Some("testkit"));
    assert!(manifest.contains_key("workspace"), "its own workspace");

    let lib = read(&dir, "src/lib.rs");
    for needle in [
        "pub struct DealWatch {",
        "impl Plugin for DealWatch {",
        "export_plugin!(DealWatch);",
        "let settings: Settings = ctx.settings()?;",
        "return Ok(Outcome::Skipped);",
        "testkit::user_field_from_form(DEAL_FIELD_UPDATE)",
        "FakeHost::new().named(\"deal-watch\")",
        "\"deal-watch settings: unknown key `entity`\"",
        // Rust's own `{{` in a format string is no placeholder and stays.
        r##"&format!(r#"{{"id": {}}}"#, event.field_id)"##,
    ] {
        assert!(lib.contains(needle), "no {needle:?} in:\n{lib}");
    }

    let host_toml = toml_of(&written.host_toml);
    assert_eq!(host_toml["plugins"]["enabled"].as_array().unwrap()[0].as_str(), Some("deal-watch"));
    let settings = &host_toml["plugin"]["deal-watch"]["settings"];
    assert_eq!(settings["entities"].as_array().unwrap()[0].as_str(), Some("deal"));
    let readme = read(&dir, "README.md");
    assert!(readme.contains(&written.host_toml), "{readme}");
    let library = crate::loader::library_file_name("deal-watch");
    assert!(readme.contains(&format!("target/release/{library}")), "{readme}");
    assert!(written.next.contains(&format!("cp target/release/{library} ")), "{}", written.next);
    assert!(written.next.contains(&format!("cd {}", dir.display())), "{}", written.next);
    assert_eq!(read(&dir, ".gitignore"), "/target\n");
}

#[test]
fn a_git_source_is_written_with_its_tag_rev_or_branch() {
    let source = |configure: fn(&mut NewPluginArgs)| {
        let mut a = args("p");
        a.api_git = Some("https://git.example.com/b24-host.git".to_owned());
        configure(&mut a);
        api_source(&a, None).unwrap()
    };
    let tagged = source(|a| a.api_tag = Some("v0.2.1".to_owned()));
    let tmp = tempfile::tempdir().unwrap();
    write("p", PluginLang::Rust, &tmp.path().join("p"), &tagged).unwrap();
    let manifest = toml_of(&read(&tmp.path().join("p"), "Cargo.toml"));
    for table in ["dependencies", "dev-dependencies"] {
        let dependency = &manifest[table]["b24-plugin-api"];
        assert_eq!(dependency["git"].as_str(), Some("https://git.example.com/b24-host.git"));
        assert_eq!(dependency["tag"].as_str(), Some("v0.2.1"));
        assert!(dependency.get("path").is_none());
    }
    let rev = source(|a| a.api_rev = Some("abc123".to_owned()));
    assert_eq!(rev.toml_keys(), r#"git = "https://git.example.com/b24-host.git", rev = "abc123""#);
    let branch = source(|a| a.api_branch = Some("main".to_owned()));
    assert!(branch.toml_keys().ends_with(r#"branch = "main""#));
    assert_eq!(source(|_| {}).toml_keys(), r#"git = "https://git.example.com/b24-host.git""#);
    // A path with quotes or backslashes is still one TOML string.
    let odd = ApiSource::Path(PathBuf::from("/src/a \"b\"\\c/plugin-api"));
    let table = toml_of(&format!("x = {{ {} }}", odd.toml_keys()));
    assert_eq!(table["x"]["path"].as_str(), Some("/src/a \"b\"\\c/plugin-api"));
}

#[test]
fn the_api_path_is_checked_and_defaults_to_the_checkout_this_host_was_built_from() {
    // The checkout itself, or its plugin-api folder.
    let api = workspace().join("plugin-api");
    let api = api.canonicalize().unwrap();
    assert_eq!(api_folder(&workspace()).unwrap(), api);
    assert_eq!(api_folder(&api).unwrap(), api);
    assert_eq!(built_from_checkout().map(|d| d.canonicalize().unwrap()), Some(api.clone()));
    assert_eq!(
        api_source(&args("p"), built_from_checkout()).unwrap(),
        ApiSource::Path(api.clone())
    );
    let mut relative = args("p");
    relative.api_path = Some(workspace().join("host/../plugin-api"));
    assert_eq!(api_source(&relative, None).unwrap(), ApiSource::Path(api.clone()));

    let err = api_folder(&workspace().join("host")).unwrap_err().to_string();
    assert!(err.contains("that is not b24-plugin-api (its Cargo.toml names `b24-host`)"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let err = format!("{:#}", api_folder(tmp.path()).unwrap_err());
    assert!(err.contains("no Cargo.toml there"), "{err}");
    std::fs::write(
        tmp.path().join("Cargo.toml"),
        "[package]\nname = \"b24-plugin-api\"\nversion = \"0.3.0\"\n",
    )
    .unwrap();
    let err = api_folder(tmp.path()).unwrap_err().to_string();
    let line = abi_line();
    assert!(
        err.contains(&format!(
            "that is b24-plugin-api 0.3.0, and this host loads plugins built against {line}.x"
        )),
        "{err}"
    );
    // Each source's error says which source it was.
    let mut given = args("p");
    given.api_path = Some(tmp.path().to_owned());
    let err = format!("{:#}", api_source(&given, None).unwrap_err());
    assert!(err.starts_with(&format!("--api-path: {}: that is", tmp.path().display())), "{err}");
    let err = format!("{:#}", api_source(&args("p"), Some(tmp.path().to_owned())).unwrap_err());
    assert!(
        err.starts_with("the b24-plugin-api of the checkout this b24-host was built from"),
        "{err}"
    );

    // Installed from a package: nothing to fall back on, and the error says what to give.
    let err = api_source(&args("p"), None).unwrap_err().to_string();
    assert!(err.contains("--api-path") && err.contains("--api-git"), "{err}");
}

#[test]
fn names_that_cannot_name_a_plugin_crate_are_refused_with_the_rule() {
    for good in ["demo", "deal-watch", "a1_b-2", "x"] {
        assert_eq!(check_name(good), Ok(()), "{good}");
    }
    let long = "a".repeat(65);
    for bad in ["", "Demo", "9lives", "-x", "_x", "a b", "../evil", "dé", long.as_str()] {
        let err = check_name(bad).unwrap_err();
        assert!(err.contains("is not a plugin name: lower-case ASCII letters"), "{bad}: {err}");
    }
    assert_eq!(check_name("fn").unwrap_err(), "\"fn\" is a Rust keyword; choose another name");
    assert!(check_name("self").unwrap_err().contains("keyword"));
    for taken in ["std", "serde", "b24-plugin-api", "b24_plugin_api", "proc-macro"] {
        assert!(check_name(taken).unwrap_err().contains("crate the plugin uses"), "{taken}");
    }
}

#[test]
fn the_plugin_type_never_shadows_a_name_the_template_uses() {
    assert_eq!(type_name("deal-watch"), "DealWatch");
    assert_eq!(type_name("a_b-c2"), "ABC2");
    for (name, ty) in
        [("vec", "VecPlugin"), ("plugin", "PluginPlugin"), ("settings", "SettingsPlugin")]
    {
        assert_eq!(type_name(name), ty);
    }
    for name in IN_SCOPE {
        let ty = type_name(&name.to_lowercase());
        assert!(!IN_SCOPE.contains(&ty.as_str()), "{name}: {ty}");
    }
}

#[test]
fn a_folder_that_exists_and_is_not_empty_is_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let api = ApiSource::Path(workspace().join("plugin-api"));
    std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
    let err = write("demo", PluginLang::Rust, tmp.path(), &api).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{} exists and is not empty; give another --dir, or remove it first",
            tmp.path().display()
        )
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    let file = tmp.path().join("notes.txt");
    let err = write("demo", PluginLang::Rust, &file, &api).unwrap_err().to_string();
    assert!(err.ends_with("exists and is not a folder; give another --dir"), "{err}");
    // An empty folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    write("demo", PluginLang::Rust, &empty, &api).unwrap();
    assert!(empty.join("src/lib.rs").is_file());
}

#[test]
fn the_exec_languages_say_not_yet_and_name_the_option() {
    for lang in [PluginLang::Php, PluginLang::Python, PluginLang::Node] {
        let err = template(lang).err().unwrap().to_string();
        assert!(
            err.starts_with(&format!(
                "--lang {}: not yet: a {} plugin is an exec plugin",
                lang.name(),
                lang.title()
            )),
            "{err}"
        );
        assert!(err.contains("--lang rust"), "{err}");
        let tmp = tempfile::tempdir().unwrap();
        let api = ApiSource::Path(workspace().join("plugin-api"));
        assert!(write("demo", lang, &tmp.path().join("demo"), &api).is_err());
        assert!(!tmp.path().join("demo").exists(), "nothing written for {lang:?}");
    }
}

#[test]
fn a_placeholder_without_a_value_is_an_error_and_every_template_has_its_values() {
    let err = render("a {{nope}} b", &[("name", "x".to_owned())]).unwrap_err().to_string();
    assert_eq!(err, "template placeholder {{nope}} has no value");
    let vars = vars(&RUST, "x", Path::new("x"), &ApiSource::Path(PathBuf::from("/p"))).unwrap();
    for (path, text) in
        RUST.files.iter().chain([&("host.toml", RUST.host_toml), &("next", RUST.next)])
    {
        render(text, &vars).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}
