//! `plugin new`'s templating, names, folders and API sources (the e2e tests `plugin_new` build
//! or run what it writes, run its own tests, and deliver events to it through a host).

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
    let written = write("deal-watch", PluginLang::Rust, &dir, Some(&api)).unwrap();
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
    write("p", PluginLang::Rust, &tmp.path().join("p"), Some(&tagged)).unwrap();
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
        assert_eq!(check_name(good, PluginLang::Rust), Ok(()), "{good}");
    }
    let long = "a".repeat(65);
    for bad in ["", "Demo", "9lives", "-x", "_x", "a b", "../evil", "dé", long.as_str()] {
        for lang in [PluginLang::Rust, PluginLang::Php, PluginLang::Python, PluginLang::Node] {
            let err = check_name(bad, lang).unwrap_err();
            assert!(err.contains("is not a plugin name: lower-case ASCII letters"), "{bad}: {err}");
        }
    }
    let rust = |name| check_name(name, PluginLang::Rust);
    assert_eq!(rust("fn").unwrap_err(), "\"fn\" is a Rust keyword; choose another name");
    assert!(rust("self").unwrap_err().contains("keyword"));
    for taken in ["std", "serde", "b24-plugin-api", "b24_plugin_api", "proc-macro"] {
        assert!(rust(taken).unwrap_err().contains("crate the plugin uses"), "{taken}");
    }
    // An exec plugin is no crate: Rust's names are fine for it.
    for name in ["fn", "self", "std", "serde"] {
        assert_eq!(check_name(name, PluginLang::Php), Ok(()), "{name}");
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
    let err = write("demo", PluginLang::Rust, tmp.path(), Some(&api)).unwrap_err().to_string();
    assert_eq!(
        err,
        format!(
            "{} exists and is not empty; give another --dir, or remove it first",
            tmp.path().display()
        )
    );
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    let file = tmp.path().join("notes.txt");
    let err = write("demo", PluginLang::Rust, &file, Some(&api)).unwrap_err().to_string();
    assert!(err.ends_with("exists and is not a folder; give another --dir"), "{err}");
    // An empty folder is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    write("demo", PluginLang::Rust, &empty, Some(&api)).unwrap();
    assert!(empty.join("src/lib.rs").is_file());
}

/// The exec languages: (language, interpreter, handler, test file, test command).
const EXEC: [(PluginLang, &str, &str, &str, &str); 3] = [
    (PluginLang::Php, "php", "handler.php", "test.php", "php test.php"),
    (PluginLang::Python, "python3", "handler.py", "test_handler.py", "python3 -m unittest"),
    (PluginLang::Node, "node", "handler.js", "handler.test.js", "node --test"),
];

#[test]
fn an_exec_language_writes_a_handler_with_its_test_and_the_exec_table_naming_it() {
    for (lang, interpreter, handler, test, run_test) in EXEC {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("deal-watch");
        let written = write("deal-watch", lang, &dir, None).unwrap();
        assert_eq!(written.files[..3], [handler, test, "README.md"], "{lang:?}");
        for file in &written.files {
            let text = read(&dir, file);
            assert_eq!(placeholders(&text).count(), 0, "{file}:\n{text}");
        }

        // The lines to add: the plugin enabled, its exec table running the handler in this
        // folder by its absolute path, and its settings.
        let host_toml = toml_of(&written.host_toml);
        let enabled = host_toml["plugins"]["enabled"].as_array().unwrap();
        assert_eq!(enabled[0].as_str(), Some("deal-watch"));
        let table = &host_toml["plugin"]["deal-watch"];
        assert_eq!(table["kind"].as_str(), Some("exec"), "{lang:?}");
        let command: Vec<&str> =
            table["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
        let path = dir.join(handler).display().to_string();
        assert_eq!(command, [interpreter, path.as_str()], "{lang:?}");
        let events = table["events"].as_array().unwrap();
        assert_eq!(events[0].as_str(), Some("ONCRMDEALADD"));
        assert_eq!(table["settings"]["stages"].as_array().map(Vec::len), Some(0));

        // The handler speaks the protocol and calls REST through the host; its test says its
        // name in `hello`.
        // A string literal in either quote.
        let has = |text: &str, s: &str| {
            text.contains(&format!("'{s}'")) || text.contains(&format!("\"{s}\""))
        };
        let code = read(&dir, handler);
        for needle in ["ready", "rest", "crm.deal.get", "done", "skip", "retry", "reject"] {
            assert!(has(&code, needle), "{lang:?}: no {needle:?} in:\n{code}");
        }
        assert!(has(&read(&dir, test), "deal-watch"), "{lang:?}: its name in its test's hello");
        let readme = read(&dir, "README.md");
        assert!(readme.contains(&written.host_toml), "{readme}");
        assert!(readme.contains(run_test), "{readme}");
        assert!(
            written.next.contains(&format!("cd {}\n  {run_test}", dir.display())),
            "{}",
            written.next
        );
    }
}

#[test]
fn a_relative_folder_is_written_into_the_command_as_an_absolute_path() {
    let command = command_toml(&["php", "handler.php"], Path::new("deal-watch")).unwrap();
    let here = std::env::current_dir().unwrap().join("deal-watch/handler.php");
    assert_eq!(toml_of(&format!("c = {command}"))["c"][1].as_str(), Some(&*here.to_string_lossy()));
    // Quotes and backslashes stay one TOML string.
    let odd = command_toml(&["node", "handler.js"], Path::new("/srv/a \"b\"\\c")).unwrap();
    let table = toml_of(&format!("c = {odd}"));
    assert_eq!(table["c"][1].as_str(), Some("/srv/a \"b\"\\c/handler.js"));
}

#[test]
fn a_rust_plugin_needs_its_api_source_and_an_exec_one_takes_none() {
    let tmp = tempfile::tempdir().unwrap();
    let err = write("demo", PluginLang::Rust, &tmp.path().join("demo"), None).unwrap_err();
    assert_eq!(err.to_string(), "a Rust plugin needs b24-plugin-api's source");
    assert!(!tmp.path().join("demo").exists(), "nothing written");
    let mut php = args("demo");
    php.lang = PluginLang::Php;
    php.api_path = Some(workspace());
    let err = run(&php).unwrap_err();
    assert_eq!(
        format!("{err:#}"),
        "plugin new: --api-path and --api-git are for --lang rust: a PHP plugin uses no library"
    );
}

#[test]
fn an_exec_language_refuses_a_folder_that_is_not_empty() {
    for (lang, ..) in EXEC {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "mine").unwrap();
        let err = write("demo", lang, tmp.path(), None).unwrap_err().to_string();
        assert!(err.ends_with("exists and is not empty; give another --dir, or remove it first"));
        assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
    }
}

#[test]
fn a_placeholder_without_a_value_is_an_error_and_every_template_has_its_values() {
    let err = render("a {{nope}} b", &[("name", "x".to_owned())]).unwrap_err().to_string();
    assert_eq!(err, "template placeholder {{nope}} has no value");
    let api = ApiSource::Path(PathBuf::from("/p"));
    for lang in [PluginLang::Rust, PluginLang::Php, PluginLang::Python, PluginLang::Node] {
        let template = template(lang);
        let api = (lang == PluginLang::Rust).then_some(&api);
        let vars = vars(template, "x", Path::new("x"), api).unwrap();
        let extra = [&("host.toml", template.host_toml), &("next", template.next)];
        for (path, text) in template.files.iter().chain(extra) {
            render(text, &vars).unwrap_or_else(|e| panic!("{lang:?} {path}: {e}"));
        }
    }
}
