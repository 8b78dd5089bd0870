//! Unit tests of the config module: exact positions and key paths of errors, defaults, path
//! resolution, settings pass-through, secrets kept out of `Debug` and messages.

use std::{
    env::VarError,
    path::{Path, PathBuf},
    time::Duration,
};

use b24_plugin_api::Secret;

use super::*;

const TOKEN: &str = "51856fefc120afa4b628cc82d3935cce";
const MEMBER: &str = "a223c6b3710f85df22e9377d6c4f7553";

/// The shipped example `host.toml` (every key, commented), read at run time so that editing
/// it does not rebuild the host. It parses (given no environment variables) to the defaults
/// plus the test tool's default portal and the audit-log settings.
fn example() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../host.toml");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An environment with only `B24_TOKEN_ACME` set.
fn fake_env(name: &str) -> Result<String, VarError> {
    match name {
        "B24_TOKEN_ACME" => Ok("acme-secret-token-0123456789".to_owned()),
        "DEAL_WATCH_KEY" | "FORWARD_SECRET" => Ok("example-secret-0123456789".to_owned()),
        "B24_EMPTY" => Ok(String::new()),
        "B24_NOT_UTF8" => Err(VarError::NotUnicode("\u{fffd}".into())),
        _ => Err(VarError::NotPresent),
    }
}

fn parse_at(text: &str, path: &str) -> Result<Config, ConfigError> {
    Config::parse_with_env(text, Path::new(path), fake_env)
}

fn parse(text: &str) -> Config {
    match parse_at(text, "/etc/b24/host.toml") {
        Ok(config) => config,
        Err(e) => panic!("unexpected error: {e}"),
    }
}

fn error(text: &str) -> ConfigError {
    match parse_at(text, "host.toml") {
        Ok(config) => panic!("expected an error, got {config:?}"),
        Err(e) => e,
    }
}

/// Asserts an `Invalid` error's line, column and key, and returns its message.
#[track_caller]
fn invalid(text: &str, line: usize, column: usize, key: &str) -> String {
    let e = error(text);
    assert!(matches!(e, ConfigError::Invalid { .. }), "not Invalid: {e:?}");
    assert_eq!(e.position(), Some(Position { line, column }), "{e}");
    assert_eq!(e.key(), Some(key), "{e}");
    assert_eq!(e.file(), Path::new("host.toml"));
    let ConfigError::Invalid { message, .. } = e else { unreachable!() };
    message
}

// ---- unknown keys ----------------------------------------------------------------------------

#[test]
fn unknown_key_at_top_level() {
    let e = error("state_dir = \"s\"\n\nstatedir = \"x\"\n");
    assert_eq!(
        e.to_string(),
        "host.toml:3:1: statedir: unknown key; expected one of state_dir, server, log, auth, \
         admin, journal, rest, plugins, plugin, bind"
    );
}

// ---- bind ------------------------------------------------------------------------------------

#[test]
fn bind_takes_a_handler_url_the_portal_accepts() {
    let config = parse("[bind]\nhandler = \"https://b24.example.com/b24/events\"\nprune = true\n");
    assert_eq!(config.bind.handler.as_deref(), Some("https://b24.example.com/b24/events"));
    assert!(config.bind.prune);
    assert_eq!(config.bind.nudge_min_timeout_s, 1, "Bitrix24's own default");
    assert_eq!(parse("").bind, crate::config::BindConfig::default());
    assert_eq!(parse("").bind.handler, None, "no handler: the host binds nothing");
    for wrong in ["b24.example.com/events", "ftp://b24.example.com/", "https://localhost/events"] {
        let message = invalid(&format!("[bind]\nhandler = {wrong:?}\n"), 2, 11, "bind.handler");
        assert!(message.contains("https://b24.example.com/b24/events"), "{message}");
    }
    let message =
        invalid("[bind]\nnudge_min_timeout_s = 90000\n", 2, 23, "bind.nudge_min_timeout_s");
    assert!(message.contains("86400"), "{message}");
    assert_eq!(parse("[bind]\nnudge_min_timeout_s = 0\n").bind.nudge_min_timeout_s, 0);
}

#[test]
fn an_offline_table_says_when_a_lost_batch_is_taken_over() {
    let text = "[rest.portals.\"m1\".offline]\nresume_lost_after_ms = 5000\n";
    let offline = parse(text).rest.portals["m1"].offline.clone().unwrap();
    assert_eq!(offline.resume_lost_after, std::time::Duration::from_millis(5000));
    let offline =
        parse("[rest.portals.\"m1\".offline]\n").rest.portals["m1"].offline.clone().unwrap();
    assert_eq!(offline.resume_lost_after, std::time::Duration::from_secs(600));
    invalid(
        "[rest.portals.\"m1\".offline]\nresume_lost_after_ms = 0\n",
        2,
        24,
        "rest.portals.m1.offline.resume_lost_after_ms",
    );
}

#[test]
fn journal_backend_is_embedded_by_default_and_by_name() {
    assert_eq!(parse("").journal.backend, JournalBackend::Embedded);
    let config = parse("[journal]\nbackend = \"embedded\"\n");
    assert_eq!(config.journal.backend, JournalBackend::Embedded);
}

#[test]
fn journal_backend_other_than_embedded_is_refused_with_file_line_and_key() {
    let message = invalid("[journal]\nbackend = \"nats\"\n", 2, 11, "journal.backend");
    assert!(message.contains("needs a [journal.nats] table"), "{message}");
    let message = invalid("\n[journal]\nbackend = \"redis\"\n", 3, 11, "journal.backend");
    assert!(message.contains("unknown backend \"redis\""), "{message}");
    let e = error("[journal]\nbackend = \"Embedded\"\n");
    assert!(e.to_string().starts_with("host.toml:2:11: journal.backend: unknown backend"), "{e}");
    let e = error("[journal]\nbackend = 1\n");
    assert!(e.to_string().starts_with("host.toml:2:11"), "{e}");
}

#[test]
fn journal_nats_is_read_with_defaults_and_secrets_from_the_environment() {
    let config = parse(
        "[journal]\nbackend = \"nats\"\n[journal.nats]\nurls = [\"nats://127.0.0.1:4222\", \"tls://n2:4222\"]\n",
    );
    let nats = config.journal.nats.expect("nats");
    assert_eq!(nats.urls, ["nats://127.0.0.1:4222", "tls://n2:4222"]);
    assert!(nats.tls.required, "a tls:// url asks for TLS");
    assert_eq!(nats.stream, "B24_EVENTS");
    assert_eq!(nats.replicas, 3);
    assert_eq!(nats.sync, crate::config::NatsSync::Server);
    assert_eq!(nats.ack_timeout, std::time::Duration::from_millis(1000));
    assert_eq!(nats.auth, crate::config::NatsAuth::None);
    let config = parse(
        "[journal]\nbackend = \"nats\"\n[journal.nats]\nurls = [\"nats://a:1\"]\nuser = \"b24\"\npassword = \"pw-secret\"\nreplicas = 1\nsync = \"always\"\nack_timeout_ms = 250\nstream = \"EV\"\n",
    );
    let nats = config.journal.nats.expect("nats");
    assert!(!format!("{nats:?}").contains("pw-secret"), "no secret in Debug output");
    assert_eq!((nats.replicas, nats.stream.as_str()), (1, "EV"));
}

#[test]
fn journal_nats_mistakes_name_the_line_and_key() {
    let head = "[journal]\nbackend = \"nats\"\n[journal.nats]\n";
    let message = invalid(&format!("{head}urls = []\n"), 4, 8, "journal.nats.urls");
    assert!(message.contains("at least one server"), "{message}");
    let message = invalid(&format!("{head}urls = [\"http://x:1\"]\n"), 4, 9, "journal.nats.urls");
    assert!(message.contains("not a NATS url scheme"), "{message}");
    let message = invalid(
        &format!("{head}urls = [\"nats://a:1\"]\nreplicas = 7\n"),
        5,
        12,
        "journal.nats.replicas",
    );
    assert!(message.contains("at most 5"), "{message}");
    let message = invalid(
        &format!("{head}urls = [\"nats://a:1\"]\ntoken = \"t\"\nuser = \"u\"\n"),
        6,
        8,
        "journal.nats.user",
    );
    assert!(message.contains("one way to authenticate"), "{message}");
    let message = invalid(
        &format!("{head}urls = [\"nats://a:1\"]\nsync = \"never\"\n"),
        5,
        8,
        "journal.nats.sync",
    );
    assert!(message.contains("\"always\""), "{message}");
    let message = invalid("[journal.nats]\nurls = [\"nats://a:1\"]\n", 1, 1, "journal.nats");
    assert!(message.contains("only read with journal.backend = \"nats\""), "{message}");
}

#[test]
fn journal_keys_are_checked() {
    let e = error("[journal]\ncommit_window_ms = 500\n");
    assert!(
        e.to_string().starts_with("host.toml:2:20: journal.commit_window_ms: must be at most 50"),
        "{e}"
    );
    let e = error("[journal]\nkeep_completed_events = 0\n");
    assert!(
        e.to_string()
            .starts_with("host.toml:2:25: journal.keep_completed_events: must be at least 1"),
        "{e}"
    );
    let e = error("[journal]\nwindow = 1\n");
    assert!(e.to_string().starts_with("host.toml:2:1: journal.window: unknown key"), "{e}");
}

#[test]
fn unknown_key_in_server() {
    let text = "# comment\n[server]\nlisen = \"127.0.0.1:1\"\n";
    assert_eq!(
        error(text).to_string(),
        "host.toml:3:1: server.lisen: unknown key; expected one of listen, path, max_body_bytes, \
         header_read_timeout_ms, request_read_timeout_ms, max_connections, \
         max_connections_per_address, shutdown_grace_ms"
    );
    // Same through a dotted key at the top level.
    assert_eq!(invalid("server.lisen = 1\n", 1, 8, "server.lisen").as_str(), {
        "unknown key; expected one of listen, path, max_body_bytes, header_read_timeout_ms, \
         request_read_timeout_ms, max_connections, max_connections_per_address, shutdown_grace_ms"
    });
}

#[test]
fn unknown_key_in_plugin_table() {
    let text = "[plugins]\nenabled = [\"audit-log\"]\n\n[plugin.audit-log]\ntimeout_ms = 5\n  timeout = 5\n";
    let message = invalid(text, 6, 3, "plugin.audit-log.timeout");
    assert_eq!(
        message,
        "unknown key; expected one of events, entities, fields, timeout_ms, concurrency, isolation, \
         memory_limit_mb, kill_after_ms, max_crashes, pause_after_failures, retry, settings, kind, \
         command, env, window, url, format, secret"
    );
}

#[test]
fn unknown_key_in_plugin_retry_table() {
    let text = "[plugin.audit-log.retry]\nattempts = 3\nbase = 100\n";
    let message = invalid(text, 3, 1, "plugin.audit-log.retry.base");
    assert_eq!(message, "unknown key; expected one of attempts, base_ms, cap_ms");
    // Inline form.
    let text = "[plugin.x]\nretry = { attempts = 2, cap = 1 }\n";
    invalid(text, 2, 25, "plugin.x.retry.cap");
}

#[test]
fn unknown_key_in_other_tables() {
    assert_eq!(
        invalid("[log]\nlevel = \"info\"\ncolor = true\n", 3, 1, "log.color"),
        "unknown key; expected one of level, format, plugin_max_line_bytes, \
         plugin_lines_per_second, plugin_log_burst"
    );
    invalid("[auth]\nlearn = true\n", 2, 1, "auth.learn");
    invalid("[plugins]\ndirectory = \"p\"\n", 2, 1, "plugins.directory");
    let message = invalid(
        "[auth.portals]\nm1 = { env = \"B24_TOKEN_ACME\", token = \"x\" }\n",
        2,
        32,
        "auth.portals.m1.token",
    );
    assert_eq!(message, "unknown key; expected env");
}

// ---- types and values ------------------------------------------------------------------------

#[test]
fn wrong_type_names_the_expected_unit() {
    let text = "[plugin.audit-log]\ntimeout_ms = \"10s\"\n";
    assert_eq!(
        error(text).to_string(),
        "host.toml:2:14: plugin.audit-log.timeout_ms: invalid type: string \"10s\", expected an \
         integer (milliseconds)"
    );
    assert_eq!(
        invalid("[server]\nmax_body_bytes = 1.5\n", 2, 18, "server.max_body_bytes"),
        "invalid type: floating point `1.5`, expected an integer (bytes)"
    );
    assert_eq!(
        invalid("[server]\nshutdown_grace_ms = -1\n", 2, 21, "server.shutdown_grace_ms"),
        "invalid value: integer `-1`, expected an integer (milliseconds)"
    );
    assert_eq!(
        invalid(
            "[auth]\nlearn_tokens_on_install = \"yes\"\n",
            2,
            27,
            "auth.learn_tokens_on_install"
        ),
        "invalid type: string \"yes\", expected a boolean"
    );
    invalid("[server]\npath = 5\n", 2, 8, "server.path");
    invalid("server = 5\n", 1, 10, "server");
    assert_eq!(
        invalid("[plugin]\nx = 5\n", 2, 5, "plugin.x"),
        "invalid type: integer `5`, expected a table"
    );
    assert_eq!(
        invalid("[plugin.x]\nsettings = [1]\n", 2, 12, "plugin.x.settings"),
        "invalid type: array, expected a table"
    );
    assert_eq!(
        invalid("[plugins]\nenabled = \"audit-log\"\n", 2, 11, "plugins.enabled"),
        "invalid type: string \"audit-log\", expected an array"
    );
    assert_eq!(
        invalid(
            "[server]\nmax_body_bytes = 99999999999999999999\n",
            2,
            18,
            "server.max_body_bytes"
        ),
        "invalid value: an out-of-range integer, expected an integer (bytes)"
    );
    // A date-time where a table or string belongs.
    assert_eq!(
        invalid("[server]\nlisten = 1979-05-27\n", 2, 10, "server.listen"),
        "invalid type: date-time, expected a string"
    );
    assert_eq!(
        invalid("server = 1979-05-27\n", 1, 10, "server"),
        "invalid type: date-time, expected a table"
    );
}

#[test]
fn wrong_type_inside_a_list_names_the_index() {
    let message = invalid("[plugins]\nenabled = [\"a\", 5]\n", 2, 17, "plugins.enabled[1]");
    assert_eq!(message, "invalid type: integer `5`, expected a string");
    invalid("[plugin.x]\nevents = [\"A\", [\"B\"]]\n", 2, 16, "plugin.x.events[1]");
}

#[test]
fn bad_listen_address() {
    let text = "[server]\n\n\n\nlisten = \"localhost:80x\"\n";
    assert_eq!(
        error(text).to_string(),
        "host.toml:5:10: server.listen: \"localhost:80x\" is not an address like 127.0.0.1:8024"
    );
    invalid("[server]\nlisten = \"127.0.0.1\"\n", 2, 10, "server.listen");
    let config = parse("[server]\nlisten = \"[::1]:9000\"\n");
    assert_eq!(config.server.listen, "[::1]:9000".parse().unwrap());
}

#[test]
fn duplicate_enabled_name_points_at_the_second() {
    let text = "[plugins]\nenabled = [\"audit-log\", \"probe\", \"audit-log\"]\n";
    assert_eq!(
        error(text).to_string(),
        "host.toml:2:34: plugins.enabled: \"audit-log\" is listed twice"
    );
}

#[test]
fn bad_plugin_names() {
    let message = invalid("[plugins]\nenabled = [\"../evil\"]\n", 2, 12, "plugins.enabled");
    assert_eq!(message, "\"../evil\" is not a plugin name (ASCII letters, digits, '-' and '_')");
    invalid("[plugins]\nenabled = [\"\"]\n", 2, 12, "plugins.enabled");
    invalid("[plugin.\"a b\"]\n", 1, 9, "plugin.\"a b\"");
    let config = parse("[plugins]\nenabled = []\n");
    assert!(config.plugins.enabled.is_empty());
}

#[test]
fn server_path_must_start_with_slash() {
    let text = "[server]\npath = \"events\"\n";
    assert_eq!(
        error(text).to_string(),
        "host.toml:2:8: server.path: \"events\" must start with '/'"
    );
    invalid("[server]\npath = \"\"\n", 2, 8, "server.path");
    invalid("[server]\npath = \"/a?b=1\"\n", 2, 8, "server.path");
    invalid("[server]\npath = \"/a b\"\n", 2, 8, "server.path");
    assert_eq!(parse("[server]\npath = \"/b24/events\"\n").server.path, "/b24/events");
}

#[test]
fn zero_and_out_of_range_values() {
    assert_eq!(
        invalid("[plugin.audit-log]\ntimeout_ms = 0\n", 2, 14, "plugin.audit-log.timeout_ms"),
        "must be greater than 0"
    );
    assert_eq!(
        invalid("[server]\nheader_read_timeout_ms = 0\n", 2, 26, "server.header_read_timeout_ms"),
        "must be greater than 0"
    );
    assert_eq!(
        invalid("[server]\nrequest_read_timeout_ms = 0\n", 2, 27, "server.request_read_timeout_ms"),
        "must be greater than 0"
    );
    assert_eq!(
        invalid("[server]\nmax_connections = 0\n", 2, 19, "server.max_connections"),
        "must be at least 1"
    );
    assert_eq!(
        invalid(
            "[server]\nmax_connections_per_address = 0\n",
            2,
            31,
            "server.max_connections_per_address"
        ),
        "must be at least 1"
    );
    assert_eq!(
        invalid("[admin]\nmax_connections = 0\n", 2, 19, "admin.max_connections"),
        "must be at least 1"
    );
    assert_eq!(
        invalid("[server]\nmax_body_bytes = 0\n", 2, 18, "server.max_body_bytes"),
        "must be greater than 0"
    );
    assert_eq!(
        invalid("[plugin.p]\nconcurrency = 0\n", 2, 15, "plugin.p.concurrency"),
        "must be at least 1"
    );
    assert_eq!(
        invalid("[plugin.p]\nconcurrency = 100000\n", 2, 15, "plugin.p.concurrency"),
        "must be at most 1024"
    );
    assert_eq!(
        invalid("[plugin.p]\nisolation = \"thread\"\n", 2, 13, "plugin.p.isolation"),
        "\"thread\" is not an isolation mode; expected process or in-process"
    );
    assert_eq!(
        invalid("[plugin.p]\nmax_crashes = 0\n", 2, 15, "plugin.p.max_crashes"),
        "must be at least 1"
    );
    assert_eq!(
        invalid("[plugin.p]\npause_after_failures = 0\n", 2, 24, "plugin.p.pause_after_failures"),
        "must be at least 1"
    );
    assert_eq!(
        invalid("[plugin.p.retry]\nattempts = 0\n", 2, 12, "plugin.p.retry.attempts"),
        "must be at least 1"
    );
    assert_eq!(
        invalid("[plugin.p.retry]\nattempts = 4294967296\n", 2, 12, "plugin.p.retry.attempts"),
        "must be at most 4294967295"
    );
    assert_eq!(
        invalid("[plugin.p]\ntimeout_ms = 86400001\n", 2, 14, "plugin.p.timeout_ms"),
        "must be at most 86400000 (one day)"
    );
    // Zero grace and zero base are fine.
    let config = parse("[server]\nshutdown_grace_ms = 0\n[plugin.p.retry]\nbase_ms = 0\n");
    assert_eq!(config.server.shutdown_grace, Duration::ZERO);
    assert_eq!(config.plugin_config("p").retry.base, Duration::ZERO);
}

#[test]
fn retry_cap_must_not_be_below_base() {
    assert_eq!(
        invalid("[plugin.p.retry]\nbase_ms = 500\ncap_ms = 100\n", 3, 10, "plugin.p.retry.cap_ms"),
        "must be at least base_ms (500)"
    );
    // Only cap given, below the default base.
    assert_eq!(
        invalid("[plugin.p.retry]\ncap_ms = 100\n", 2, 10, "plugin.p.retry.cap_ms"),
        "must be at least base_ms (200)"
    );
    // Only base given, above the default cap.
    assert_eq!(
        invalid("[plugin.p.retry]\nbase_ms = 70000\n", 2, 11, "plugin.p.retry.base_ms"),
        "must be at most cap_ms (60000)"
    );
    let retry = parse("[plugin.p.retry]\nbase_ms = 100\ncap_ms = 100\n").plugin_config("p").retry;
    assert_eq!(retry.base, retry.cap);
}

#[test]
fn plugin_limits_have_defaults_and_zero_turns_some_off() {
    let d = Config::default_for(Path::new("rel"));
    assert_eq!(d.plugins.start_timeout, Duration::from_secs(30));
    assert_eq!(d.plugin_config("p").memory_limit_mb, Some(1024));
    let config = parse(
        "[log]\nplugin_max_line_bytes = 300\nplugin_lines_per_second = 0\nplugin_log_burst = 5\n\
         [plugins]\nstart_timeout_ms = 1500\n[plugin.p]\nmemory_limit_mb = 0\n\
         [plugin.q]\nmemory_limit_mb = 64\n",
    );
    assert_eq!(
        config.log.plugin,
        PluginLogLimits { max_line_bytes: 300, lines_per_second: 0, burst: 5 }
    );
    assert_eq!(config.plugins.start_timeout, Duration::from_millis(1500));
    assert_eq!(config.plugin_config("p").memory_limit_mb, None);
    assert_eq!(config.plugin_config("q").memory_limit_mb, Some(64));
    assert_eq!(
        invalid("[log]\nplugin_max_line_bytes = 10\n", 2, 25, "log.plugin_max_line_bytes"),
        "must be from 256 to 1048576"
    );
    assert_eq!(
        invalid("[log]\nplugin_log_burst = 0\n", 2, 20, "log.plugin_log_burst"),
        "must be at least 1"
    );
    assert_eq!(
        invalid("[plugins]\nstart_timeout_ms = 0\n", 2, 20, "plugins.start_timeout_ms"),
        "must be greater than 0"
    );
}

#[test]
fn log_format_is_checked() {
    assert_eq!(
        invalid("[log]\nformat = \"xml\"\n", 2, 10, "log.format"),
        "\"xml\" is not a log format; expected pretty or json"
    );
    let config = parse("[log]\nformat = \"json\"\nlevel = \"b24_host=debug,warn\"\n");
    assert_eq!(config.log.format, LogFormat::Json);
    assert_eq!(config.log.level, "b24_host=debug,warn");
}

#[test]
fn empty_globs_and_paths_are_rejected() {
    invalid("[plugin.p]\nfields = [\"UF_*\", \"\"]\n", 2, 19, "plugin.p.fields");
    invalid("state_dir = \"\"\n", 1, 13, "state_dir");
    invalid("[plugins]\ndir = \"\"\n", 2, 7, "plugins.dir");
}

// ---- portals and environment variables -------------------------------------------------------

#[test]
fn missing_env_var() {
    let text = format!(
        "[auth.portals]\n\"{MEMBER}\" = \"{TOKEN}\"\n\"0b5e1c\" = {{ env = \"B24_TOKEN_NOPE\" }}\n"
    );
    let e = error(&text);
    assert_eq!(
        e.to_string(),
        "host.toml:3:1: auth.portals.0b5e1c: environment variable B24_TOKEN_NOPE is not set"
    );
    // A member id that needs quoting is shown quoted.
    let e = error("[auth.portals]\n\"0b5e1c...\" = { env = \"B24_TOKEN_NOPE\" }\n");
    assert_eq!(
        e.to_string(),
        "host.toml:2:1: auth.portals.\"0b5e1c...\": environment variable B24_TOKEN_NOPE is not set"
    );
}

#[test]
fn missing_env_var_in_the_real_environment() {
    let name = "B24_HOST_CONFIG_TEST_SURELY_UNSET_5F0C";
    assert!(std::env::var_os(name).is_none());
    let text = format!("[auth.portals]\nm = {{ env = \"{name}\" }}\n");
    let e = Config::parse(&text, Path::new("host.toml")).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("host.toml:2:1: auth.portals.m: environment variable {name} is not set")
    );
}

#[test]
fn env_var_present_resolves() {
    let config = parse(&format!(
        "[auth.portals]\n\"{MEMBER}\" = \"{TOKEN}\"\n\"0b5e1c\" = {{ env = \"B24_TOKEN_ACME\" }}\n"
    ));
    assert_eq!(config.auth.portals.len(), 2);
    assert_eq!(config.auth.portals["0b5e1c"].expose(), "acme-secret-token-0123456789");
    assert_eq!(config.auth.portals[MEMBER].expose(), TOKEN);

    // And through the real process environment, with a variable that is there anyway.
    if let Ok(path) = std::env::var("PATH")
        && !path.is_empty()
    {
        let config =
            Config::parse("[auth.portals]\nm = { env = \"PATH\" }\n", Path::new("host.toml"))
                .unwrap();
        assert_eq!(config.auth.portals["m"].expose(), path);
    }
}

#[test]
fn env_var_edge_cases() {
    assert_eq!(
        invalid("[auth.portals]\nm = { env = \"B24_EMPTY\" }\n", 2, 1, "auth.portals.m"),
        "environment variable B24_EMPTY is empty"
    );
    assert_eq!(
        invalid("[auth.portals]\nm = { env = \"B24_NOT_UTF8\" }\n", 2, 1, "auth.portals.m"),
        "environment variable B24_NOT_UTF8 is not valid UTF-8"
    );
    assert_eq!(
        invalid("[auth.portals]\nm = { env = \"A=B\" }\n", 2, 13, "auth.portals.m.env"),
        "\"A=B\" is not an environment variable name"
    );
    invalid("[auth.portals]\nm = { env = \"\" }\n", 2, 13, "auth.portals.m.env");
    invalid("[auth.portals]\nm = { env = \"A\\u0000\" }\n", 2, 13, "auth.portals.m.env");
    assert_eq!(invalid("[auth.portals]\nm = {}\n", 2, 5, "auth.portals.m"), "missing key env");
    assert_eq!(invalid("[auth.portals]\nm = \"\"\n", 2, 5, "auth.portals.m"), "must not be empty");
    invalid("[auth.portals]\n\"\" = \"t\"\n", 2, 1, "auth.portals.\"\"");
}

#[test]
fn errors_never_echo_a_token() {
    for text in [
        format!("[auth]\nportals = \"{TOKEN}\"\n"),
        format!("[auth]\nportals = [\"{TOKEN}\"]\n"),
        "[auth.portals]\nm = 51856123456789\n".to_owned(),
        "[auth.portals]\nm = 5185612345.6789\n".to_owned(),
        format!("[auth.portals]\nm = [\"{TOKEN}\"]\n"),
        format!("[auth.portals]\nm = {{ env = \"B24_TOKEN_ACME\", value = \"{TOKEN}\" }}\n"),
        format!("[auth.portals]\nm = {{ value = \"{TOKEN}\" }}\n"),
        format!("[auth.portals]\nm = \"{TOKEN}\"\n[server]\nlisten = 5\n"),
        format!("[auth.portals]\nm = \"{TOKEN}\n"),
        format!("[auth.portals]\nm = \"{TOKEN}\"\nm = \"{TOKEN}\"\n"),
    ] {
        let e = error(&text);
        let shown = format!("{e} {e:?}");
        assert!(!shown.contains(TOKEN), "{shown}");
        assert!(!shown.contains("51856123456789"), "{shown}");
        assert!(!shown.contains("5185612345.6789"), "{shown}");
        assert!(!shown.contains("5185612345"), "{shown}");
    }
    let e = error("[auth.portals]\nm = 123\n");
    assert_eq!(
        e.to_string(),
        "host.toml:2:5: auth.portals.m: invalid type: integer, expected a token string or \
         { env = \"VARIABLE\" }"
    );
}

#[test]
fn debug_output_contains_no_token() {
    let config = parse(&format!(
        "[auth.portals]\n\"{MEMBER}\" = \"{TOKEN}\"\n\"0b5e1c\" = {{ env = \"B24_TOKEN_ACME\" }}\n\
         [plugin.p.settings]\npassword = \"plugin-password-42\"\n"
    ));
    let debug = format!("{config:?} {config:#?}");
    assert!(debug.contains(MEMBER), "member ids are not secret: {debug}");
    assert!(debug.contains("Secret(<redacted>)"));
    assert!(!debug.contains(TOKEN), "{debug}");
    assert!(!debug.contains("acme-secret-token"), "{debug}");
    // Plugin settings may hold credentials too: only their length is shown.
    assert!(!debug.contains("plugin-password-42"), "{debug}");
    assert!(debug.contains("bytes of TOML"), "{debug}");
}

// ---- syntax errors ---------------------------------------------------------------------------

#[test]
fn toml_syntax_error_has_a_position() {
    let e = error("[server]\nlisten = \"127.0.0.1:8024\"\npath = = \"/\"\n");
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert_eq!(e.position(), Some(Position { line: 3, column: 8 }), "{e}");
    assert_eq!(e.key(), None);
    assert!(e.to_string().starts_with("host.toml:3:8: "), "{e}");

    let e = error("a = 1\n[server\n");
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert_eq!(e.position().map(|p| p.line), Some(2), "{e}");

    // A key given twice is a TOML error, pointing at the second one.
    let e = error("[server]\npath = \"/\"\npath = \"/x\"\n");
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert_eq!(e.position(), Some(Position { line: 3, column: 1 }), "{e}");
    assert_eq!(e.to_string(), "host.toml:3:1: duplicate key");

    // Unterminated string at the end of the file.
    let e = error("[log]\nlevel = \"info\n");
    assert_eq!(e.position().map(|p| p.line), Some(2), "{e}");
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    // A syntax error on the value's line, saying why, not a stack overflow.
    fn assert_too_deep(e: &ConfigError) {
        assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
        assert_eq!(e.position().map(|p| p.line), Some(2), "{e}");
        assert!(e.to_string().starts_with("host.toml:2:"), "{e}");
        assert!(e.to_string().contains("max recursion depth"), "{e}");
    }

    let text = format!("[plugin.p.settings]\nx = {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
    let e = parse_at(&text, "host.toml").unwrap_err();
    assert_too_deep(&e);
    let text =
        format!("[plugin.p.settings]\nx = {}1{}\n", "{a=".repeat(50_000), "}".repeat(50_000));
    let e = parse_at(&text, "host.toml").unwrap_err();
    assert_too_deep(&e);
}

#[test]
fn mutated_example_never_panics() {
    let example = example();
    let example = example.as_bytes();
    let inserts: &[&[u8]] = &[b"", b"\"", b"[", b"]", b"=", b"\n", b"0", b"{", b"\xc3\xa9"];
    for pos in (0..=example.len()).step_by(5) {
        for insert in inserts {
            for cut in [0, 1] {
                let end = (pos + cut).min(example.len());
                let mut text = example[..pos].to_vec();
                text.extend_from_slice(insert);
                text.extend_from_slice(&example[end..]);
                if let Ok(text) = String::from_utf8(text) {
                    let _ = parse_at(&text, "host.toml");
                }
            }
        }
    }
}

// ---- paths, defaults, settings, the example --------------------------------------------------

#[test]
fn relative_paths_resolve_against_the_config_folder() {
    let config = parse("state_dir = \"var/state\"\n[plugins]\ndir = \"../lib/plugins\"\n");
    assert_eq!(config.base_dir, Path::new("/etc/b24"));
    assert_eq!(config.state_dir, Path::new("/etc/b24/var/state"));
    assert_eq!(config.plugins.dir, Path::new("/etc/b24/../lib/plugins"));
    assert_eq!(config.source.as_deref(), Some(Path::new("/etc/b24/host.toml")));

    let config = parse("state_dir = \"/var/lib/b24\"\n[plugins]\ndir = \"/usr/lib/b24\"\n");
    assert_eq!(config.state_dir, Path::new("/var/lib/b24"));
    assert_eq!(config.plugins.dir, Path::new("/usr/lib/b24"));

    // A bare file name: the current folder, made absolute.
    let config = parse_at("", "host.toml").unwrap();
    let cwd = std::env::current_dir().unwrap();
    assert_eq!(config.base_dir, cwd);
    assert_eq!(config.state_dir, cwd.join("state"));
    let config = parse_at("", "conf/host.toml").unwrap();
    assert_eq!(config.plugins.dir, cwd.join("conf/plugins"));
}

#[test]
fn empty_file_gives_the_defaults() {
    for text in ["", "\n# nothing here\n", "[server]\n[log]\n[auth]\n[auth.portals]\n[plugins]\n"] {
        let config = parse(text);
        let mut expected = Config::default_for(Path::new("/etc/b24"));
        expected.source = Some(PathBuf::from("/etc/b24/host.toml"));
        assert_eq!(config, expected);
    }
    let d = Config::default_for(Path::new("rel"));
    assert_eq!(d.source, None);
    assert_eq!(d.base_dir, Path::new("rel"));
    assert_eq!(d.state_dir, Path::new("rel/state"));
    assert_eq!(d.plugins.dir, Path::new("rel/plugins"));
    assert_eq!(d.server.listen, "127.0.0.1:8024".parse().unwrap());
    assert_eq!(d.server.path, "/");
    assert_eq!(d.server.max_body_bytes, 262_144);
    assert_eq!(d.server.header_read_timeout, Duration::from_secs(5));
    assert_eq!(d.server.max_connections_per_address, None);
    assert_eq!(d.admin_max_connections, 64);
    assert_eq!(d.server.shutdown_grace, Duration::from_secs(10));
    assert_eq!(
        d.log,
        LogConfig {
            level: "info".into(),
            format: LogFormat::Pretty,
            plugin: PluginLogLimits { max_line_bytes: 8192, lines_per_second: 1000, burst: 2000 },
        }
    );
    assert!(!d.auth.learn_tokens_on_install);
    assert!(d.auth.portals.is_empty());
    assert_eq!(d.plugins.enabled, ["audit-log"]);
    assert!(d.plugin.is_empty());
    let p = d.plugin_config("audit-log");
    assert_eq!(p, PluginConfig::default());
    assert_eq!((p.events, p.entities, p.fields), (None, None, None));
    assert_eq!(p.timeout, Duration::from_secs(10));
    assert_eq!(p.concurrency, 1);
    assert_eq!(
        p.retry,
        RetryConfig { attempts: 8, base: Duration::from_millis(200), cap: Duration::from_secs(60) }
    );
    assert_eq!(p.settings, "");
}

#[test]
fn plugin_table_is_read() {
    let config = parse(
        "[plugin.audit-log]\nevents = [\"ONCRM*USERFIELD*\"]\nentities = [\"CRM_CONTACT\", \
         \"CRM_DEAL\"]\nfields = [\"UF_CRM_*\"]\ntimeout_ms = 2500\nconcurrency = 4\n\
         [plugin.audit-log.retry]\nattempts = 3\nbase_ms = 50\ncap_ms = 1000\n\
         [plugin.other]\n",
    );
    let p = config.plugin_config("audit-log");
    assert_eq!(p.events, Some(vec!["ONCRM*USERFIELD*".to_owned()]));
    assert_eq!(p.entities, Some(vec!["CRM_CONTACT".to_owned(), "CRM_DEAL".to_owned()]));
    assert_eq!(p.fields, Some(vec!["UF_CRM_*".to_owned()]));
    assert_eq!(p.timeout, Duration::from_millis(2500));
    assert_eq!(p.concurrency, 4);
    assert_eq!(
        p.retry,
        RetryConfig { attempts: 3, base: Duration::from_millis(50), cap: Duration::from_secs(1) }
    );
    // A table for a plugin that is not enabled is kept; an absent one gives the defaults.
    assert_eq!(config.plugin_config("other"), PluginConfig::default());
    assert!(config.plugin.contains_key("other"));
    assert_eq!(config.plugin_config("absent"), PluginConfig::default());
    // An empty list is kept as an empty list (matches nothing), not as "all".
    assert_eq!(parse("[plugin.p]\nevents = []\n").plugin_config("p").events, Some(vec![]));
}

#[test]
fn settings_round_trip_as_toml_text() {
    let text = r#"
[plugin.p.settings]
path = "audit.jsonl"
anything_goes = true
ratio = 0.5
when = 1979-05-27T07:32:00Z
list = [1, 2, 3]
mixed = ["a", { b = 1 }]

[plugin.p.settings.nested]
deeper = { x = "y", z = [true, false] }

[[plugin.p.settings.rules]]
name = "first"
match = ["UF_*"]

[[plugin.p.settings.rules]]
name = "second"
"#;
    let settings = parse(text).plugin_config("p").settings;
    let back: toml::Table = toml::from_str(&settings).unwrap();
    let expected: toml::Table = toml::from_str(text).unwrap();
    let expected = expected["plugin"]["p"]["settings"].as_table().unwrap();
    assert_eq!(&back, expected, "{settings}");
    assert_eq!(back["nested"]["deeper"]["z"][1].as_bool(), Some(false));
    assert_eq!(back["rules"].as_array().map(Vec::len), Some(2));
    assert!(settings.contains("path = \"audit.jsonl\""), "{settings}");

    // Inline form, and an empty table.
    let settings =
        parse("[plugin.p]\nsettings = { path = \"a.jsonl\" }\n").plugin_config("p").settings;
    assert_eq!(settings.trim(), "path = \"a.jsonl\"");
    assert_eq!(parse("[plugin.p.settings]\n").plugin_config("p").settings, "");
}

/// What the shipped example is meant to be: the defaults, the test tool's portal, and the
/// audit-log settings.
fn expected_example(path: &Path) -> Config {
    let base = path.parent().unwrap();
    let mut expected = Config::default_for(base);
    expected.source = Some(path.to_path_buf());
    expected.auth.portals.insert(MEMBER.to_owned(), Secret::new(TOKEN));
    expected.plugin.insert(
        "audit-log".to_owned(),
        PluginConfig { settings: "path = \"audit.jsonl\"\n".to_owned(), ..PluginConfig::default() },
    );
    let line = example().lines().position(|l| l.starts_with("[plugin.audit-log]")).unwrap() + 1;
    expected.plugin_positions.insert("audit-log".to_owned(), Position { line, column: 9 });
    expected
}

#[test]
fn shipped_example_parses_to_the_intended_config() {
    let path = Path::new("/opt/b24/host.toml");
    // Even with no environment at all: the env portal in the example is commented out.
    let config = Config::parse_with_env(&example(), path, |_| Err(VarError::NotPresent)).unwrap();
    assert_eq!(config, expected_example(path));
    assert_eq!(config.plugins.enabled, ["audit-log"]);
    assert_eq!(config.plugin_config("audit-log").settings, "path = \"audit.jsonl\"\n");
}

#[test]
fn shipped_example_parses_with_its_examples_switched_on() {
    // (That it names every key is `it::config_load::the_shipped_example_names_every_key`.)
    let example = example();
    // With the commented-out keys switched on (and the variable set), it still parses.
    // The audit-log's commented filters and the second portal, then (from the exec plugin's
    // paragraph on) every commented TOML line: the exec and http plugin examples whole.
    let kinds = example.find("# A plugin in any language").expect("the exec example");
    let toml_line = |rest: &str| {
        rest.starts_with('[')
            || rest
                .split_once(" = ")
                .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    };
    let filters = |rest: &str| {
        rest.starts_with('"')
            || ["events = [", "entities = [", "fields = ["].iter().any(|k| rest.starts_with(k))
    };
    let (before, after) = example.split_at(kinds);
    let uncommented = before
        .lines()
        .map(|l| (l, &filters as &dyn Fn(&str) -> bool))
        .chain(after.lines().map(|l| (l, &toml_line as &dyn Fn(&str) -> bool)))
        .map(|(l, switch)| match l.strip_prefix("# ") {
            Some(rest) if switch(rest) => rest,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let config = Config::parse_with_env(&uncommented, Path::new("/opt/b24/host.toml"), fake_env)
        .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    assert_eq!(config.auth.portals.len(), 2);
    assert!(config.plugin_config("audit-log").events.is_some());
    assert!(config.plugin_config("audit-log").entities.is_some());
    assert!(config.plugin_config("audit-log").fields.is_some());
    assert!(matches!(config.plugin_config("deal-watch").kind, PluginKind::Exec(_)));
    assert!(matches!(config.plugin_config("legacy-handler").kind, PluginKind::Http(_)));
}

#[test]
fn install_verification_keys_are_read_and_checked() {
    let d = parse("");
    assert_eq!(d.auth.max_learned_portals, 1000);
    assert_eq!(d.auth.unknown_installs_per_minute, 10);
    assert_eq!(
        d.rest.oauth_servers,
        ["https://oauth.bitrix.info/oauth/token/", "https://oauth.bitrix24.tech/oauth/token/"]
    );
    let c = parse(
        "[auth]\nmax_learned_portals = 3\nunknown_installs_per_minute = 2\n\
         [rest]\noauth_url = \"https://oauth.bitrix24.tech/oauth/token/\"\n",
    );
    assert_eq!(c.auth.max_learned_portals, 3);
    assert_eq!(c.auth.unknown_installs_per_minute, 2);
    // The older key is a one-server list.
    assert_eq!(c.rest.oauth_servers, ["https://oauth.bitrix24.tech/oauth/token/"]);
    assert_eq!(
        invalid("[auth]\nmax_learned_portals = 0\n", 2, 23, "auth.max_learned_portals"),
        "must be at least 1"
    );
    for bad in ["oauth.bitrix.info", "http://oauth.bitrix.info/oauth/token/", "ftp://x/"] {
        let text = format!("[rest]\noauth_url = {bad:?}\n");
        assert!(invalid(&text, 2, 13, "rest.oauth_url").contains("is not an https URL"));
        let text =
            format!("[rest]\noauth_servers = [\"https://a.example/oauth/token/\", {bad:?}]\n");
        assert!(invalid(&text, 2, 52, "rest.oauth_servers").contains("is not an https URL"));
    }
    let local = parse("[rest]\noauth_url = \"http://127.0.0.1:9/oauth/token/\"\n");
    assert_eq!(local.rest.oauth_servers, ["http://127.0.0.1:9/oauth/token/"]);
    let both = "[rest]\noauth_url = \"https://a.example/t/\"\noauth_servers = [\"https://b.example/t/\"]\n";
    assert!(invalid(both, 3, 17, "rest.oauth_servers").contains("not both"));
    assert!(
        invalid("[rest]\noauth_servers = []\n", 2, 17, "rest.oauth_servers").contains("no server")
    );
    let twice =
        "[rest]\noauth_servers = [\"https://a.example/t/\", \"https://A.example:443/u/\"]\n";
    assert!(
        invalid(twice, 2, 17, "rest.oauth_servers").contains("two servers at https://a.example")
    );
}

#[test]
fn an_install_picks_the_oauth_server_its_server_endpoint_names() {
    let two = parse(
        "[rest]\noauth_servers = [\"https://oauth.bitrix.info/oauth/token/\", \"http://127.0.0.1:9/oauth/token/\"]\n",
    )
    .rest;
    assert_eq!(
        two.oauth_server_for(Some("https://oauth.bitrix.info/rest/")),
        Ok("https://oauth.bitrix.info/oauth/token/")
    );
    assert_eq!(
        two.oauth_server_for(Some("http://127.0.0.1:9/rest/")),
        Ok("http://127.0.0.1:9/oauth/token/")
    );
    // Another port, host or scheme is another server; nothing is asked there.
    for other in [
        "http://127.0.0.1:10/rest/",
        "https://oauth.bitrix24.tech/rest/",
        "http://oauth.bitrix.info/rest/",
        "nonsense",
    ] {
        let e = two.oauth_server_for(Some(other)).unwrap_err();
        assert!(e.contains("not in rest.oauth_servers"), "{other}: {e}");
    }
    assert!(two.oauth_server_for(None).unwrap_err().contains("names no OAuth server"));
    let one = parse("[rest]\noauth_url = \"https://oauth.bitrix24.tech/oauth/token/\"\n").rest;
    assert_eq!(one.oauth_server_for(None), Ok("https://oauth.bitrix24.tech/oauth/token/"));
    assert!(one.oauth_server_for(Some("https://oauth.bitrix.info/rest/")).is_err());
}

// ---- [admin] ---------------------------------------------------------------------------------

#[test]
fn admin_listen_off_loopback_needs_a_token() {
    let message = invalid("[admin]\nlisten = \"0.0.0.0:8025\"\n", 2, 10, "admin.listen");
    assert!(
        message.contains("not a loopback address") && message.contains("admin.token"),
        "{message}"
    );
    let e = error("\n[admin]\nlisten = \"[::]:8025\"\n");
    assert!(e.to_string().starts_with("host.toml:3:10: admin.listen: "), "{e}");
    // Loopback needs none; the default is loopback.
    assert_eq!(parse("[admin]\nlisten = \"[::1]:8025\"\n").admin_token, None);
    assert_eq!(parse("").admin_token, None);
}

#[test]
fn admin_token_is_read_from_the_file_or_the_environment_and_never_shown() {
    let config = parse("[admin]\nlisten = \"0.0.0.0:8025\"\ntoken = \"console-secret-1\"\n");
    assert_eq!(config.admin_token, Some(Secret::new("console-secret-1")));
    assert!(!format!("{config:?}").contains("console-secret-1"));
    let config = parse("[admin]\nlisten = \"10.0.0.1:1\"\ntoken = { env = \"B24_TOKEN_ACME\" }\n");
    assert_eq!(config.admin_token, Some(Secret::new("acme-secret-token-0123456789")));
    let message = invalid("[admin]\ntoken = { env = \"NOPE\" }\n", 2, 1, "admin.token");
    assert!(message.contains("NOPE is not set"), "{message}");
    let message = invalid("[admin]\ntoken = \"\"\n", 2, 9, "admin.token");
    assert!(message.contains("must not be empty"), "{message}");
}
