//! The checks that serde cannot make, and the step from [`RawConfig`] to [`Config`]: defaults,
//! ranges, duplicates, addresses, paths resolved against the config folder, environment-variable
//! tokens read. Every error points at the offending key or value through its [`Spanned`] span.

use std::{
    collections::{BTreeMap, HashSet},
    env::VarError,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use b24_plugin_api::Secret;
use toml::Spanned;

use super::{
    AuthConfig, BindConfig, Config, ConfigError, ExecConfig, ForwardFormat, HttpConfig, Isolation,
    JournalBackend, JournalConfig, LogConfig, LogFormat, PluginConfig, PluginKind, PluginsConfig,
    RestConfig, RestPortalConfig, RetryConfig, ServerConfig,
    error::{Source, join_keys},
    model::OfflineConfig,
    model::{
        DEFAULT_ENABLED, DEFAULT_EXEC_MEMORY_LIMIT_MB, DEFAULT_LOG_LEVEL, DEFAULT_PLUGINS_DIR,
        DEFAULT_START_TIMEOUT, DEFAULT_STATE_DIR, DEFAULT_WINDOW, MAX_CONCURRENCY, MAX_CRASHES,
        MAX_KEEP_COMPLETED_HOURS, MAX_MEMORY_LIMIT_MB, MAX_MILLIS, MAX_PLUGIN_LINE_BYTES,
        MAX_PLUGIN_LINES, MAX_WINDOW, MIN_PLUGIN_LINE_BYTES, PluginLogLimits,
    },
    raw::{
        Bytes, Count, Millis, RawAdmin, RawAuth, RawBind, RawConfig, RawJournal, RawLog, RawPlugin,
        RawPlugins, RawRest, RawRetry, RawServer, RawToken,
    },
};

/// Checks `raw` and builds the [`Config`], resolving relative paths against `base_dir`.
pub(crate) fn build(
    raw: RawConfig,
    src: &Source<'_>,
    base_dir: &Path,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<Config, ConfigError> {
    let state_dir = resolve_dir(src, base_dir, raw.state_dir, "state_dir", DEFAULT_STATE_DIR)?;
    let server = server(src, raw.server)?;
    let admin_max_connections = match &raw.admin.max_connections {
        Some(n) => count(src, n, "admin.max_connections", 10_000)? as usize,
        None => super::model::DEFAULT_ADMIN_MAX_CONNECTIONS,
    };
    let log = log(src, raw.log)?;
    let auth = auth(src, raw.auth, env)?;
    let journal = journal(src, base_dir, raw.journal, env)?;
    let rest = rest(src, raw.rest, env)?;
    let (admin, admin_token) = admin(src, raw.admin, env)?;
    let plugins = plugins(src, base_dir, raw.plugins)?;
    let bind = bind(src, raw.bind)?;
    let mut plugin = BTreeMap::new();
    let mut plugin_positions = BTreeMap::new();
    for (name, table) in raw.plugin {
        if let Some(position) = src.key_position(&["plugin", &name]) {
            plugin_positions.insert(name.clone(), position);
        }
        if !is_plugin_name(&name) {
            return Err(src.invalid_key(&["plugin", &name], 0..0, not_a_plugin_name(&name)));
        }
        let key = join_keys(["plugin", &name]);
        let config = plugin_table(src, &key, table, env)?;
        plugin.insert(name, config);
    }
    Ok(Config {
        source: Some(src.file.to_path_buf()),
        base_dir: base_dir.to_path_buf(),
        state_dir,
        server,
        admin_max_connections,
        log,
        auth,
        plugins,
        plugin,
        plugin_positions,
        journal,
        rest,
        admin,
        admin_token,
        bind,
    })
}

/// `[bind]`: the public handler URL, as Bitrix24's `event.bind` takes it (an absolute `http`
/// or `https` URL whose host has a dot), pruning, and the nudge's minimum interval.
fn bind(src: &Source<'_>, raw: RawBind) -> Result<BindConfig, ConfigError> {
    let mut out = BindConfig::default();
    if let Some(handler) = raw.handler {
        let text = handler.get_ref();
        let usable = url::Url::parse(text).ok().filter(|url| {
            matches!(url.scheme(), "http" | "https")
                && url.host_str().is_some_and(|host| host.find('.').is_some_and(|dot| dot > 0))
        });
        if usable.is_none() {
            return Err(src.invalid(
                handler.span(),
                "bind.handler",
                format!(
                    "{text:?} is not a handler URL Bitrix24 accepts: an absolute https URL like \
                     https://b24.example.com/b24/events (the address the portal posts events to)"
                ),
            ));
        }
        out.handler = Some(text.clone());
    }
    if let Some(prune) = raw.prune {
        out.prune = prune;
    }
    if let Some(seconds) = raw.nudge_min_timeout_s {
        let n = seconds.get_ref().0;
        if n > 86_400 {
            return Err(src.invalid(
                seconds.span(),
                "bind.nudge_min_timeout_s",
                "must be at most 86400 (one day)",
            ));
        }
        out.nudge_min_timeout_s = n as u32;
    }
    Ok(out)
}

/// `[admin]`: the listener's address and its token. A listener that is not on a loopback
/// address needs the token: the console shows every event and can replay and purge.
fn admin(
    src: &Source<'_>,
    raw: RawAdmin,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<(Option<SocketAddr>, Option<Secret>), ConfigError> {
    let token = match raw.token {
        Some(token) => Some(Secret::new(secret(src, &["admin", "token"], token, env)?)),
        None => None,
    };
    if raw.enabled == Some(false) {
        return Ok((None, token));
    }
    let Some(listen) = raw.listen else {
        return Ok((Some(super::model::DEFAULT_ADMIN_LISTEN), token));
    };
    let addr = listen.get_ref().parse::<SocketAddr>().map_err(|_| {
        src.invalid(
            listen.span(),
            "admin.listen",
            format!("{:?} is not an address like 127.0.0.1:8025", listen.get_ref()),
        )
    })?;
    if token.is_none() && !addr.ip().is_loopback() {
        return Err(src.invalid(listen.span(), "admin.listen", non_loopback_without_token(addr)));
    }
    Ok((Some(addr), token))
}

/// Why an admin listener on `addr` (not loopback) is refused without `admin.token`.
pub fn non_loopback_without_token(addr: SocketAddr) -> String {
    format!(
        "{addr} is not a loopback address: set admin.token (a string or {{ env = \"VAR\" }}) \
         so that the console and the admin endpoints ask for it, or listen on 127.0.0.1"
    )
}

fn rest(
    src: &Source<'_>,
    raw: RawRest,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<RestConfig, ConfigError> {
    let mut out = RestConfig::default();
    if let Some(id) = raw.client_id {
        out.client_id = Some(Secret::new(secret(src, &["rest", "client_id"], id, env)?));
    }
    if let Some(secret_value) = raw.client_secret {
        out.client_secret =
            Some(Secret::new(secret(src, &["rest", "client_secret"], secret_value, env)?));
    }
    match (raw.oauth_url, raw.oauth_servers) {
        (Some(_), Some(list)) => {
            return Err(src.invalid(
                list.span(),
                "rest.oauth_servers",
                "set rest.oauth_servers or the older rest.oauth_url, not both (oauth_url is a one-server oauth_servers)",
            ));
        }
        (Some(url), None) => out.oauth_servers = vec![oauth_url(src, url, "rest.oauth_url")?],
        (None, Some(list)) => {
            let span = list.span();
            let mut servers: Vec<String> = Vec::new();
            for url in list.into_inner() {
                let url = oauth_url(src, url, "rest.oauth_servers")?;
                let origin = super::model::url_origin(&url);
                if servers.iter().any(|s| super::model::url_origin(s) == origin) {
                    return Err(src.invalid(
                        span.clone(),
                        "rest.oauth_servers",
                        format!("two servers at {}: the install's server_endpoint could not choose between them", origin.unwrap_or_default()),
                    ));
                }
                servers.push(url);
            }
            if servers.is_empty() {
                return Err(src.invalid(
                    span,
                    "rest.oauth_servers",
                    "lists no server: installs could not be verified nor tokens refreshed",
                ));
            }
            out.oauth_servers = servers;
        }
        (None, None) => {}
    }
    if let Some(ms) = raw.timeout_ms {
        out.timeout = millis(src, &ms, "rest.timeout_ms", 1)?;
    }
    if let Some(rate) = raw.rate_per_sec {
        out.rate_per_sec = positive_rate(src, &rate, "rest.rate_per_sec")?;
    }
    if let Some(burst) = raw.burst {
        out.burst = count(src, &burst, "rest.burst", 100_000)? as u32;
    }
    for (member, portal) in raw.portals {
        let key = join_keys(["rest", "portals", &member]);
        let mut cfg = RestPortalConfig::default();
        if let Some(rate) = portal.rate_per_sec {
            cfg.rate_per_sec = Some(positive_rate(src, &rate, &format!("{key}.rate_per_sec"))?);
        }
        if let Some(burst) = portal.burst {
            cfg.burst = Some(count(src, &burst, &format!("{key}.burst"), 100_000)? as u32);
        }
        if let Some(hook) = portal.webhook {
            let url = secret(src, &["rest", "portals", &member, "webhook"], hook, env)?;
            cfg.webhook = Some(Secret::new(url));
        }
        if let Some(offline) = portal.offline {
            let mut o = OfflineConfig::default();
            if let Some(enabled) = offline.enabled {
                o.enabled = enabled;
            }
            if let Some(ms) = offline.poll_interval_ms {
                o.poll_interval = millis(src, &ms, &format!("{key}.offline.poll_interval_ms"), 1)?;
            }
            if let Some(batch) = offline.batch {
                o.batch = count(src, &batch, &format!("{key}.offline.batch"), 50)? as u32;
            }
            o.auth_connector = offline.auth_connector.map(Spanned::into_inner);
            if let Some(ms) = offline.resume_lost_after_ms {
                o.resume_lost_after =
                    millis(src, &ms, &format!("{key}.offline.resume_lost_after_ms"), 1)?;
            }
            cfg.offline = Some(o);
        }
        out.portals.insert(member, cfg);
    }
    Ok(out)
}

fn positive_rate(src: &Source<'_>, value: &Spanned<f64>, key: &str) -> Result<f64, ConfigError> {
    let rate = *value.get_ref();
    if rate.is_finite() && rate > 0.0 && rate <= 10_000.0 {
        Ok(rate)
    } else {
        Err(src.invalid(value.span(), key, "must be a number of requests per second above 0"))
    }
}

/// A secret value: written in the file, or `{ env = "VAR" }` read from the environment.
pub(super) fn secret(
    src: &Source<'_>,
    path: &[&str],
    token: Spanned<RawToken>,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<String, ConfigError> {
    let key = join_keys(path.iter().copied());
    let span = token.span();
    match token.into_inner() {
        RawToken::Literal(value) => {
            if value.is_empty() {
                return Err(src.invalid(span, key, "must not be empty"));
            }
            Ok(value)
        }
        RawToken::Env(name) => {
            let n = name.get_ref();
            if n.is_empty() || n.contains(['=', '\0']) {
                return Err(src.invalid(
                    name.span(),
                    format!("{key}.env"),
                    format!("{n:?} is not an environment variable name"),
                ));
            }
            let fail = |message: String| Err(src.invalid_key(path, span.clone(), message));
            match env(n) {
                Ok(value) if !value.is_empty() => Ok(value),
                Ok(_) => fail(format!("environment variable {n} is empty")),
                Err(VarError::NotPresent) => fail(format!("environment variable {n} is not set")),
                Err(VarError::NotUnicode(_)) => {
                    fail(format!("environment variable {n} is not valid UTF-8"))
                }
            }
        }
    }
}

fn journal(
    src: &Source<'_>,
    base_dir: &Path,
    raw: RawJournal,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<JournalConfig, ConfigError> {
    let mut out = JournalConfig::default();
    let mut backend_span = 0..0;
    if let Some(backend) = raw.backend {
        backend_span = backend.span();
        out.backend = match backend.get_ref().as_str() {
            "embedded" => JournalBackend::Embedded,
            "nats" => JournalBackend::Nats,
            other => {
                return Err(src.invalid(
                    backend.span(),
                    "journal.backend",
                    format!(
                        "unknown backend {other:?}: use \"embedded\" (the default) or \"nats\""
                    ),
                ));
            }
        };
    }
    match (out.backend, raw.nats) {
        (JournalBackend::Nats, Some(nats)) => {
            out.nats = Some(super::validate_nats::nats(src, base_dir, nats, env)?);
        }
        (JournalBackend::Nats, None) => {
            return Err(src.invalid(
                backend_span,
                "journal.backend",
                "\"nats\" needs a [journal.nats] table with at least urls = [\"nats://host:4222\"]",
            ));
        }
        (JournalBackend::Embedded, Some(nats)) => {
            return Err(src.invalid(
                nats.span(),
                "journal.nats",
                "is only read with journal.backend = \"nats\" (the backend is \"embedded\")",
            ));
        }
        (JournalBackend::Embedded, None) => {}
    }
    if let Some(ms) = raw.commit_window_ms {
        out.commit_window = millis(src, &ms, "journal.commit_window_ms", 0)?;
        if out.commit_window > MAX_COMMIT_WINDOW {
            return Err(src.invalid(
                ms.span(),
                "journal.commit_window_ms",
                format!(
                    "must be at most {} (every accepted request waits this long)",
                    MAX_COMMIT_WINDOW.as_millis()
                ),
            ));
        }
    }
    if let Some(ms) = raw.dedup_window_ms {
        out.dedup_window = millis(src, &ms, "journal.dedup_window_ms", 0)?;
    }
    if let Some(hours) = raw.keep_completed_hours {
        let hours = count(src, &hours, "journal.keep_completed_hours", MAX_KEEP_COMPLETED_HOURS)?;
        out.keep_completed_for = Duration::from_secs(hours * 3600);
    }
    if let Some(n) = raw.keep_completed_events {
        out.keep_completed_events = count(src, &n, "journal.keep_completed_events", u64::MAX)?;
    }
    Ok(out)
}

/// The longest group-commit window: every accepted request may wait this long.
const MAX_COMMIT_WINDOW: Duration = Duration::from_millis(50);

/// A folder key: not empty, relative ones joined to `base_dir`.
fn resolve_dir(
    src: &Source<'_>,
    base_dir: &Path,
    value: Option<Spanned<String>>,
    key: &str,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    let Some(value) = value else {
        return Ok(base_dir.join(default));
    };
    if value.get_ref().is_empty() {
        return Err(src.invalid(value.span(), key, "must not be empty"));
    }
    // `join` keeps an absolute path as it is.
    Ok(base_dir.join(value.get_ref()))
}

fn server(src: &Source<'_>, raw: RawServer) -> Result<ServerConfig, ConfigError> {
    let mut out = ServerConfig::default();
    if let Some(listen) = raw.listen {
        out.listen = listen.get_ref().parse::<SocketAddr>().map_err(|_| {
            src.invalid(
                listen.span(),
                "server.listen",
                format!("{:?} is not an address like 127.0.0.1:8024", listen.get_ref()),
            )
        })?;
    }
    if let Some(path) = raw.path {
        let p = path.get_ref();
        let problem = if !p.starts_with('/') {
            Some("must start with '/'")
        } else if p.contains(['?', '#']) {
            Some("must not contain '?' or '#'")
        } else if p.chars().any(|c| c.is_whitespace() || c.is_control()) {
            Some("must not contain spaces or control characters")
        } else {
            None
        };
        if let Some(problem) = problem {
            return Err(src.invalid(path.span(), "server.path", format!("{p:?} {problem}")));
        }
        out.path = path.into_inner();
    }
    if let Some(bytes) = raw.max_body_bytes {
        out.max_body_bytes = bytes_value(src, &bytes, "server.max_body_bytes")?;
    }
    if let Some(ms) = raw.header_read_timeout_ms {
        out.header_read_timeout = millis(src, &ms, "server.header_read_timeout_ms", 1)?;
    }
    if let Some(ms) = raw.request_read_timeout_ms {
        out.request_read_timeout = millis(src, &ms, "server.request_read_timeout_ms", 1)?;
    }
    if let Some(n) = raw.max_connections {
        out.max_connections = count(src, &n, "server.max_connections", 1_000_000)? as usize;
    }
    if let Some(n) = raw.max_connections_per_address {
        out.max_connections_per_address =
            Some(count(src, &n, "server.max_connections_per_address", 1_000_000)? as usize);
    }
    if let Some(ms) = raw.shutdown_grace_ms {
        out.shutdown_grace = millis(src, &ms, "server.shutdown_grace_ms", 0)?;
    }
    Ok(out)
}

fn log(src: &Source<'_>, raw: RawLog) -> Result<LogConfig, ConfigError> {
    let format = match raw.format {
        None => LogFormat::default(),
        Some(format) => LogFormat::from_name(format.get_ref()).ok_or_else(|| {
            src.invalid(
                format.span(),
                "log.format",
                format!("{:?} is not a log format; expected pretty or json", format.get_ref()),
            )
        })?,
    };
    let level = raw.level.map_or_else(|| DEFAULT_LOG_LEVEL.to_owned(), Spanned::into_inner);
    let mut plugin = PluginLogLimits::default();
    if let Some(n) = raw.plugin_max_line_bytes {
        let key = "log.plugin_max_line_bytes";
        let bytes = n.get_ref().0;
        if !(MIN_PLUGIN_LINE_BYTES..=MAX_PLUGIN_LINE_BYTES).contains(&bytes) {
            return Err(src.invalid(
                n.span(),
                key,
                format!("must be from {MIN_PLUGIN_LINE_BYTES} to {MAX_PLUGIN_LINE_BYTES}"),
            ));
        }
        plugin.max_line_bytes = bytes as usize;
    }
    if let Some(n) = raw.plugin_lines_per_second {
        // 0 turns the limit off.
        plugin.lines_per_second = match n.get_ref().0 {
            0 => 0,
            _ => count(src, &n, "log.plugin_lines_per_second", MAX_PLUGIN_LINES)? as u32,
        };
    }
    if let Some(n) = raw.plugin_log_burst {
        plugin.burst = count(src, &n, "log.plugin_log_burst", MAX_PLUGIN_LINES)? as u32;
    }
    Ok(LogConfig { level, format, plugin })
}

fn auth(
    src: &Source<'_>,
    raw: RawAuth,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<AuthConfig, ConfigError> {
    let mut portals = BTreeMap::new();
    for (member, token) in raw.portals.0 {
        let token_span = token.span();
        let path = ["auth", "portals", member.as_str()];
        if member.is_empty() {
            return Err(src.invalid_key(&path, token_span, "member_id must not be empty"));
        }
        let secret = secret(src, &path, token, env)?;
        portals.insert(member, Secret::new(secret));
    }
    let mut out = AuthConfig {
        learn_tokens_on_install: raw.learn_tokens_on_install.unwrap_or(false),
        portals,
        ..AuthConfig::default()
    };
    if let Some(n) = raw.max_learned_portals {
        out.max_learned_portals = count(src, &n, "auth.max_learned_portals", 1_000_000)? as usize;
    }
    if let Some(n) = raw.unknown_installs_per_minute {
        out.unknown_installs_per_minute =
            count(src, &n, "auth.unknown_installs_per_minute", 10_000)? as u32;
    }
    Ok(out)
}

/// An OAuth token URL (`rest.oauth_url`, each of `rest.oauth_servers`): an https URL (plain
/// http only to a loopback address, for tests and local proxies).
fn oauth_url(src: &Source<'_>, value: Spanned<String>, key: &str) -> Result<String, ConfigError> {
    let text = value.get_ref();
    let loopback = |url: &url::Url| match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(d)) => d == "localhost",
        None => false,
    };
    match url::Url::parse(text) {
        Ok(url) if url.scheme() == "https" && url.has_host() => Ok(text.clone()),
        Ok(url) if url.scheme() == "http" && loopback(&url) => Ok(text.clone()),
        _ => Err(src.invalid(
            value.span(),
            key,
            format!("{text:?} is not an https URL like https://oauth.bitrix.info/oauth/token/"),
        )),
    }
}

/// Whether `name` can name a plugin: ASCII letters, digits, `-` and `_`.
fn is_plugin_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn not_a_plugin_name(name: &str) -> String {
    format!("{name:?} is not a plugin name (ASCII letters, digits, '-' and '_')")
}

fn plugins(
    src: &Source<'_>,
    base_dir: &Path,
    raw: RawPlugins,
) -> Result<PluginsConfig, ConfigError> {
    let dir = resolve_dir(src, base_dir, raw.dir, "plugins.dir", DEFAULT_PLUGINS_DIR)?;
    let enabled = match raw.enabled {
        None => DEFAULT_ENABLED.iter().map(|s| (*s).to_owned()).collect(),
        Some(list) => {
            let mut seen = HashSet::new();
            let mut names = Vec::with_capacity(list.len());
            for name in list {
                if !is_plugin_name(name.get_ref()) {
                    let message = not_a_plugin_name(name.get_ref());
                    return Err(src.invalid(name.span(), "plugins.enabled", message));
                }
                if !seen.insert(name.get_ref().clone()) {
                    return Err(src.invalid(
                        name.span(),
                        "plugins.enabled",
                        format!("{:?} is listed twice", name.get_ref()),
                    ));
                }
                names.push(name.into_inner());
            }
            names
        }
    };
    let start_timeout = match raw.start_timeout_ms {
        Some(ms) => millis(src, &ms, "plugins.start_timeout_ms", 1)?,
        None => DEFAULT_START_TIMEOUT,
    };
    Ok(PluginsConfig { dir, enabled, start_timeout })
}

/// Where each kind-specific key may appear: a key of another kind is an error at its line.
fn check_kind_keys(
    src: &Source<'_>,
    key: &str,
    kind: &str,
    raw: &RawPlugin,
) -> Result<(), ConfigError> {
    fn span<T>(s: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
        s.as_ref().map(Spanned::span)
    }
    /// A key, where it is (if present) and the kinds it belongs to.
    type KindKey<'a> = (&'a str, Option<std::ops::Range<usize>>, &'a [&'a str]);
    let present: [KindKey<'_>; 12] = [
        ("command", span(&raw.command), &["exec"]),
        ("env", span(&raw.env), &["exec"]),
        ("window", span(&raw.window), &["exec"]),
        ("url", span(&raw.url), &["http"]),
        ("format", span(&raw.format), &["http"]),
        ("secret", span(&raw.secret), &["http"]),
        ("isolation", span(&raw.isolation), &["library"]),
        ("concurrency", span(&raw.concurrency), &["library", "http"]),
        ("memory_limit_mb", span(&raw.memory_limit_mb), &["library", "exec"]),
        ("kill_after_ms", span(&raw.kill_after_ms), &["library", "exec"]),
        ("max_crashes", span(&raw.max_crashes), &["library", "exec"]),
        ("settings", span(&raw.settings), &["library", "exec"]),
    ];
    for (name, at, kinds) in present {
        let Some(at) = at else { continue };
        if kinds.contains(&kind) {
            continue;
        }
        let belongs = kinds
            .iter()
            .map(|k| match *k {
                "library" => "a library plugin (no kind)".to_owned(),
                other => format!("kind = \"{other}\""),
            })
            .collect::<Vec<_>>()
            .join(" or ");
        let this = match kind {
            "library" => "a library plugin (no kind)".to_owned(),
            other => format!("kind = \"{other}\""),
        };
        return Err(src.invalid(
            at,
            format!("{key}.{name}"),
            format!("is a key of {belongs}, not of {this}"),
        ));
    }
    Ok(())
}

/// The kind-specific part of a plugin table.
fn plugin_kind(
    src: &Source<'_>,
    key: &str,
    raw: &mut RawPlugin,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<PluginKind, ConfigError> {
    let Some(kind) = raw.kind.take() else {
        check_kind_keys(src, key, "library", raw)?;
        return Ok(PluginKind::Library);
    };
    let at = kind.span();
    let name = kind.into_inner();
    if name != "exec" && name != "http" {
        return Err(src.invalid(
            at,
            format!("{key}.kind"),
            format!(
                "{name:?} is not a plugin kind; expected \"exec\" or \"http\" (leave kind out for a library plugin)"
            ),
        ));
    }
    check_kind_keys(src, key, &name, raw)?;
    let required = |what: &str| {
        src.invalid(
            at.clone(),
            format!("{key}.{what}"),
            format!("is required for kind = \"{name}\""),
        )
    };
    if raw.events.is_none() {
        return Err(required("events"));
    }
    if name == "exec" {
        let Some(command) = raw.command.take() else { return Err(required("command")) };
        let command_at = command.span();
        let command: Vec<String> =
            command.into_inner().into_iter().map(Spanned::into_inner).collect();
        if command.first().is_none_or(|program| program.is_empty()) {
            return Err(src.invalid(
                command_at,
                format!("{key}.command"),
                "must name a program: [\"php\", \"handler.php\"]",
            ));
        }
        let mut vars = Vec::new();
        if let Some(table) = raw.env.take() {
            for (var, value) in table.into_inner().0 {
                let path = ["plugin", key.trim_start_matches("plugin."), "env", var.as_str()];
                let value_at = value.span();
                if var.is_empty() || var.contains(['=', '\0']) {
                    return Err(src.invalid_key(
                        &path,
                        value_at,
                        format!("{var:?} is not an environment variable name"),
                    ));
                }
                let text = match value.into_inner() {
                    RawToken::Literal(text) => text,
                    RawToken::Env(from) => {
                        let n = from.get_ref();
                        if n.is_empty() || n.contains(['=', '\0']) {
                            return Err(src.invalid(
                                from.span(),
                                format!("{}.env", join_keys(path)),
                                format!("{n:?} is not an environment variable name"),
                            ));
                        }
                        match env(n) {
                            Ok(text) => text,
                            Err(VarError::NotPresent) => {
                                return Err(src.invalid_key(
                                    &path,
                                    value_at,
                                    format!("environment variable {n} is not set"),
                                ));
                            }
                            Err(VarError::NotUnicode(_)) => {
                                return Err(src.invalid_key(
                                    &path,
                                    value_at,
                                    format!("environment variable {n} is not valid UTF-8"),
                                ));
                            }
                        }
                    }
                };
                vars.push((var, Secret::new(text)));
            }
        }
        let window = match &raw.window {
            Some(n) => count(src, n, &format!("{key}.window"), MAX_WINDOW as u64)? as usize,
            None => DEFAULT_WINDOW,
        };
        return Ok(PluginKind::Exec(ExecConfig { command, env: vars, window }));
    }
    let Some(url) = raw.url.take() else { return Err(required("url")) };
    let url_at = url.span();
    let url = url.into_inner();
    match url::Url::parse(&url) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => {}
        _ => {
            return Err(src.invalid(
                url_at,
                format!("{key}.url"),
                format!(
                    "{url:?} is not an http or https URL like https://app.example.com/handler.php"
                ),
            ));
        }
    }
    let format = match raw.format.take() {
        None => ForwardFormat::Form,
        Some(f) => match f.get_ref().as_str() {
            "form" => ForwardFormat::Form,
            "json" => ForwardFormat::Json,
            other => {
                return Err(src.invalid(
                    f.span(),
                    format!("{key}.format"),
                    format!("{other:?} is not a format; expected \"form\" or \"json\""),
                ));
            }
        },
    };
    let secret = match raw.secret.take() {
        None => None,
        Some(token) => {
            let name = key.trim_start_matches("plugin.");
            Some(Secret::new(secret(src, &["plugin", name, "secret"], token, env)?))
        }
    };
    Ok(PluginKind::Http(HttpConfig { url, format, secret }))
}

fn plugin_table(
    src: &Source<'_>,
    key: &str,
    mut raw: RawPlugin,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<PluginConfig, ConfigError> {
    let kind = plugin_kind(src, key, &mut raw, env)?;
    let memory_limit_mb = match kind {
        PluginKind::Exec(_) => Some(DEFAULT_EXEC_MEMORY_LIMIT_MB),
        _ => Some(super::model::DEFAULT_MEMORY_LIMIT_MB),
    };
    let mut out = PluginConfig {
        kind,
        memory_limit_mb,
        events: globs(src, raw.events, &format!("{key}.events"))?,
        entities: globs(src, raw.entities, &format!("{key}.entities"))?,
        fields: globs(src, raw.fields, &format!("{key}.fields"))?,
        ..PluginConfig::default()
    };
    if let Some(ms) = raw.timeout_ms {
        out.timeout = millis(src, &ms, &format!("{key}.timeout_ms"), 1)?;
    }
    if let Some(n) = raw.concurrency {
        out.concurrency = count(src, &n, &format!("{key}.concurrency"), MAX_CONCURRENCY as u64)?
            .try_into()
            .unwrap_or(MAX_CONCURRENCY);
    }
    if let Some(isolation) = raw.isolation {
        out.isolation = Isolation::from_name(isolation.get_ref()).ok_or_else(|| {
            src.invalid(
                isolation.span(),
                format!("{key}.isolation"),
                format!(
                    "{:?} is not an isolation mode; expected process or in-process",
                    isolation.get_ref()
                ),
            )
        })?;
    }
    if let Some(mb) = raw.memory_limit_mb {
        // 0 turns the limit off.
        out.memory_limit_mb = match mb.get_ref().0 {
            0 => None,
            _ => Some(count(src, &mb, &format!("{key}.memory_limit_mb"), MAX_MEMORY_LIMIT_MB)?),
        };
    }
    if let Some(ms) = raw.kill_after_ms {
        out.kill_after = millis(src, &ms, &format!("{key}.kill_after_ms"), 1)?;
    }
    if let Some(n) = raw.max_crashes {
        out.max_crashes = count(src, &n, &format!("{key}.max_crashes"), MAX_CRASHES as u64)?
            .try_into()
            .unwrap_or(MAX_CRASHES);
    }
    if let Some(n) = raw.pause_after_failures {
        let (key, max) =
            (format!("{key}.pause_after_failures"), super::model::MAX_PAUSE_AFTER_FAILURES);
        out.pause_after_failures =
            Some(count(src, &n, &key, u64::from(max))?.try_into().unwrap_or(max));
    }
    out.retry = retry(src, &format!("{key}.retry"), raw.retry)?;
    if let Some(settings) = raw.settings {
        out.settings = toml::to_string(settings.get_ref()).map_err(|e| {
            src.invalid(
                settings.span(),
                format!("{key}.settings"),
                format!("cannot be passed on as TOML: {e}"),
            )
        })?;
    }
    Ok(out)
}

fn retry(src: &Source<'_>, key: &str, raw: RawRetry) -> Result<RetryConfig, ConfigError> {
    let mut out = RetryConfig::default();
    if let Some(n) = &raw.attempts {
        out.attempts = count(src, n, &format!("{key}.attempts"), u64::from(u32::MAX))?
            .try_into()
            .unwrap_or(u32::MAX);
    }
    if let Some(ms) = &raw.base_ms {
        out.base = millis(src, ms, &format!("{key}.base_ms"), 0)?;
    }
    if let Some(ms) = &raw.cap_ms {
        out.cap = millis(src, ms, &format!("{key}.cap_ms"), 0)?;
    }
    if out.cap < out.base {
        // Blame the key that is present; cap_ms when both are.
        return Err(match (&raw.cap_ms, &raw.base_ms) {
            (Some(cap), _) => src.invalid(
                cap.span(),
                format!("{key}.cap_ms"),
                format!("must be at least base_ms ({})", out.base.as_millis()),
            ),
            (None, Some(base)) => src.invalid(
                base.span(),
                format!("{key}.base_ms"),
                format!("must be at most cap_ms ({})", out.cap.as_millis()),
            ),
            // Unreachable with sane defaults; reported without a position rather than panicking.
            (None, None) => ConfigError::Invalid {
                file: src.file.to_path_buf(),
                position: None,
                key: key.to_owned(),
                message: "base_ms is greater than cap_ms".to_owned(),
            },
        });
    }
    Ok(out)
}

/// An optional list of globs; each must be non-empty.
fn globs(
    src: &Source<'_>,
    list: Option<Vec<Spanned<String>>>,
    key: &str,
) -> Result<Option<Vec<String>>, ConfigError> {
    let Some(list) = list else { return Ok(None) };
    let mut out = Vec::with_capacity(list.len());
    for glob in list {
        if glob.get_ref().is_empty() {
            return Err(src.invalid(glob.span(), key, "a pattern must not be empty"));
        }
        out.push(glob.into_inner());
    }
    Ok(Some(out))
}

/// A `*_ms` value in `min..=MAX_MILLIS`.
pub(super) fn millis(
    src: &Source<'_>,
    value: &Spanned<Millis>,
    key: &str,
    min: u64,
) -> Result<Duration, ConfigError> {
    let ms = value.get_ref().0;
    if ms < min {
        let message = if min == 1 {
            "must be greater than 0".to_owned()
        } else {
            format!("must be at least {min}")
        };
        return Err(src.invalid(value.span(), key, message));
    }
    if ms > MAX_MILLIS {
        return Err(src.invalid(
            value.span(),
            key,
            format!("must be at most {MAX_MILLIS} (one day)"),
        ));
    }
    Ok(Duration::from_millis(ms))
}

/// A count in `1..=max`.
pub(super) fn count(
    src: &Source<'_>,
    value: &Spanned<Count>,
    key: &str,
    max: u64,
) -> Result<u64, ConfigError> {
    let n = value.get_ref().0;
    if n == 0 {
        return Err(src.invalid(value.span(), key, "must be at least 1"));
    }
    if n > max {
        return Err(src.invalid(value.span(), key, format!("must be at most {max}")));
    }
    Ok(n)
}

/// A byte size: more than 0 and fitting in `usize`.
fn bytes_value(src: &Source<'_>, value: &Spanned<Bytes>, key: &str) -> Result<usize, ConfigError> {
    let n = value.get_ref().0;
    if n == 0 {
        return Err(src.invalid(value.span(), key, "must be greater than 0"));
    }
    usize::try_from(n)
        .map_err(|_| src.invalid(value.span(), key, format!("must be at most {}", usize::MAX)))
}
