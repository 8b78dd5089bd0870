//! End-to-end tests of `Config::load`: real files on disk, paths resolved against their folder,
//! read errors, and the shipped example.

use std::{fs, path::Path, time::Duration};

use b24_host::config::{Config, ConfigError, LogFormat, Position};

#[test]
fn load_resolves_relative_paths_against_the_file_folder() {
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("conf");
    fs::create_dir(&conf).unwrap();
    let file = conf.join("host.toml");
    fs::write(
        &file,
        "state_dir = \"data/state\"\n\
         [server]\nlisten = \"0.0.0.0:9000\"\npath = \"/b24\"\n\
         [log]\nformat = \"json\"\n\
         [plugins]\ndir = \"/usr/lib/b24/plugins\"\nenabled = [\"audit-log\", \"probe\"]\n\
         [plugin.probe]\ntimeout_ms = 250\n\
         [plugin.probe.settings]\nmode = \"record\"\n",
    )
    .unwrap();

    let config = Config::load(&file).unwrap();
    assert_eq!(config.source.as_deref(), Some(file.as_path()));
    assert_eq!(config.base_dir, conf);
    assert_eq!(config.state_dir, conf.join("data/state"));
    assert_eq!(config.plugins.dir, Path::new("/usr/lib/b24/plugins"));
    assert_eq!(config.plugins.enabled, ["audit-log", "probe"]);
    assert_eq!(config.server.listen, "0.0.0.0:9000".parse().unwrap());
    assert_eq!(config.server.path, "/b24");
    assert_eq!(config.log.format, LogFormat::Json);
    let probe = config.plugin_config("probe");
    assert_eq!(probe.timeout, Duration::from_millis(250));
    assert_eq!(probe.settings, "mode = \"record\"\n");
    assert_eq!(config.plugin_config("audit-log").settings, "");
}

#[test]
fn load_of_a_missing_file_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host.toml");
    let e = Config::load(&file).unwrap_err();
    assert!(
        matches!(&e, ConfigError::Read { error, .. } if error.kind() == std::io::ErrorKind::NotFound)
    );
    assert_eq!(e.file(), file);
    assert_eq!(e.position(), None);
    assert_eq!(
        e.to_string(),
        format!("{}: cannot read: No such file or directory (os error 2)", file.display())
    );

    // Relative, as the user typed it.
    let e = Config::load(Path::new("surely/not/here/host.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        "surely/not/here/host.toml: cannot read: No such file or directory (os error 2)"
    );
}

#[test]
fn load_of_a_folder_or_non_utf8_file_is_a_read_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = Config::load(dir.path()).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
    assert!(e.to_string().contains(": cannot read: "), "{e}");

    let file = dir.path().join("host.toml");
    fs::write(&file, b"state_dir = \"\xff\"\n").unwrap();
    let e = Config::load(&file).unwrap_err();
    assert!(matches!(e, ConfigError::Read { .. }), "{e:?}");
}

#[test]
fn errors_from_a_file_name_that_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host.toml");
    fs::write(
        &file,
        "[server]\nlisten = \"127.0.0.1:8024\"\n\n[plugin.audit-log.retry]\nattempts = 0\n",
    )
    .unwrap();
    let e = Config::load(&file).unwrap_err();
    assert_eq!(e.position(), Some(Position { line: 5, column: 12 }));
    assert_eq!(e.key(), Some("plugin.audit-log.retry.attempts"));
    assert_eq!(
        e.to_string(),
        format!("{}:5:12: plugin.audit-log.retry.attempts: must be at least 1", file.display())
    );
}

#[test]
fn the_shipped_example_loads_from_disk() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host.toml");
    // The shipped file, read at run time (the host does not embed it).
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host.toml");
    fs::copy(&shipped, &file).unwrap();
    let config = Config::load(&file).unwrap();
    let defaults = Config::default_for(dir.path());
    assert_eq!(config.server, defaults.server);
    assert_eq!(config.log, defaults.log);
    assert_eq!(config.plugins, defaults.plugins);
    assert_eq!(config.bind, defaults.bind, "[bind] shows the defaults");
    assert_eq!(config.state_dir, dir.path().join("state"));
    assert_eq!(config.auth.portals.len(), 1);
    assert_eq!(
        config.auth.portals["a223c6b3710f85df22e9377d6c4f7553"].expose(),
        "51856fefc120afa4b628cc82d3935cce"
    );
    assert!(!config.auth.learn_tokens_on_install);
    assert_eq!(config.plugin_config("audit-log").settings, "path = \"audit.jsonl\"\n");
    assert!(!format!("{config:?}").contains("51856fefc120afa4b628cc82d3935cce"));
}

/// The shipped host.toml names every key the config takes (set to its default, or commented
/// out): each table's keys are read from the loader's own "unknown key; expected one of .."
/// answer to a key it does not know, so a key added to the config and left out of host.toml
/// fails here.
#[test]
fn the_shipped_example_names_every_key() {
    let shipped =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../host.toml")).unwrap();
    let named = |key: &str| {
        shipped.lines().any(|line| {
            let line = line.trim_start().trim_start_matches('#').trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('=') || rest.starts_with(']'))
                || line.starts_with(&format!("[{key}"))
                || line.contains(&format!(".{key}]"))
        })
    };
    // Each table, as the header (and the lines it needs) under which an unknown key is tried.
    let tables = [
        "",
        "[server]",
        "[admin]",
        "[log]",
        "[auth]",
        "[journal]",
        "[journal.nats]\nurls = [\"nats://127.0.0.1:4222\"]",
        "[rest]",
        "[rest.portals.\"m\"]",
        "[rest.portals.\"m\".offline]",
        "[bind]",
        "[plugins]",
        "[plugin.audit-log]",
        "[plugin.audit-log.retry]",
    ];
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("host.toml");
    let mut missing = Vec::new();
    for table in tables {
        fs::write(&file, format!("{table}\nzz_not_a_key = 1\n")).unwrap();
        let error = Config::load(&file).expect_err("an unknown key is an error").to_string();
        let Some((_, expected)) = error.split_once("expected one of ") else {
            panic!("{table}: no list of keys in {error}");
        };
        for key in expected.split(", ").map(str::trim) {
            if !named(key) {
                missing.push(format!("{table} {key}"));
            }
        }
    }
    assert!(missing.is_empty(), "keys the shipped host.toml does not name: {missing:?}");
}

/// `scripts/run` rebuilds only what changed, and users edit host.toml: no source of the host may
/// embed it (tests read it at run time instead), or every edit would rebuild the binary.
#[test]
fn no_source_embeds_the_shipped_host_toml() {
    fn walk(dir: &Path, found: &mut Vec<String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, found);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = fs::read_to_string(&path).unwrap();
                let embeds = text.lines().any(|l| {
                    (l.contains("include_str!") || l.contains("include_bytes!"))
                        && l.contains("host.toml")
                });
                if embeds {
                    found.push(path.display().to_string());
                }
            }
        }
    }
    let mut found = Vec::new();
    walk(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), &mut found);
    assert!(found.is_empty(), "these embed host.toml: {found:?}");
}
