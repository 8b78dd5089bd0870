//! The configuration types the rest of the host works with, and their embedded defaults.
//!
//! Everything here is already checked and resolved: durations are [`Duration`]s, paths are
//! resolved against the folder of `host.toml`, environment-variable tokens are read. The
//! serde-facing shapes of the file live in `raw.rs`; the checks live in `validate.rs`.

use std::{
    collections::BTreeMap,
    fmt,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    time::Duration,
};

use b24_plugin_api::Secret;

/// Default of `state_dir`, relative to the config folder.
pub const DEFAULT_STATE_DIR: &str = "state";
/// Default of `server.listen`.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8024));
/// Default of `server.path`.
pub const DEFAULT_PATH: &str = "/";
/// Default of `server.max_body_bytes` (256 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 256 * 1024;
/// Default of `server.header_read_timeout_ms`.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_millis(5_000);
/// Default of `server.request_read_timeout_ms`: headers and body of one request.
pub const DEFAULT_REQUEST_READ_TIMEOUT: Duration = Duration::from_millis(10_000);
/// Default of `server.max_connections`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default of `admin.max_connections`: a console and a scraper need a few.
pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
/// Default of `server.shutdown_grace_ms`.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_millis(10_000);
/// Default of `log.level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// Default of `log.plugin_max_line_bytes`: a plugin's longer log lines are cut there.
pub const DEFAULT_PLUGIN_MAX_LINE_BYTES: usize = 8 * 1024;
/// Smallest accepted `log.plugin_max_line_bytes`.
pub const MIN_PLUGIN_LINE_BYTES: u64 = 256;
/// Largest accepted `log.plugin_max_line_bytes` (1 MiB).
pub const MAX_PLUGIN_LINE_BYTES: u64 = 1 << 20;
/// Largest accepted `log.plugin_lines_per_second` and `log.plugin_log_burst`.
pub const MAX_PLUGIN_LINES: u64 = 1_000_000;
/// Default of `log.plugin_lines_per_second`.
pub const DEFAULT_PLUGIN_LINES_PER_SECOND: u32 = 1000;
/// Default of `log.plugin_log_burst`.
pub const DEFAULT_PLUGIN_LOG_BURST: u32 = 2000;
/// Default of `plugins.dir`, relative to the config folder.
pub const DEFAULT_PLUGINS_DIR: &str = "plugins";
/// Default of `plugins.enabled`.
pub const DEFAULT_ENABLED: &[&str] = &["audit-log"];
/// Default of `plugins.start_timeout_ms`: how long a plugin's load and `create` may take before
/// it is reported failed (the host listens meanwhile).
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_millis(30_000);
/// Default of `plugin.<name>.timeout_ms`.
pub const DEFAULT_PLUGIN_TIMEOUT: Duration = Duration::from_millis(10_000);
/// Default of `plugin.<name>.concurrency`.
pub const DEFAULT_CONCURRENCY: usize = 1;
/// Default of `plugin.<name>.kill_after_ms`: a call running this long kills its runner.
pub const DEFAULT_KILL_AFTER: Duration = Duration::from_millis(60_000);
/// Default of `plugin.<name>.max_crashes`.
pub const DEFAULT_MAX_CRASHES: u32 = 3;
/// Default of `plugin.<name>.memory_limit_mb`: the runner's address space (virtual memory,
/// which thread stacks and allocator arenas reserve far beyond what they use: see README's
/// "Process isolation" for what a runner maps).
pub const DEFAULT_MEMORY_LIMIT_MB: u64 = 1024;
/// Default of `plugin.<name>.memory_limit_mb` for `kind = "exec"`: interpreters reserve far more
/// address space than they use (node maps about 700 MiB before it runs a line, and fails at
/// 1024 MiB once its heap grows past about 150 MiB); php and python3 start in 256 MiB.
pub const DEFAULT_EXEC_MEMORY_LIMIT_MB: u64 = 2048;
/// Default of `plugin.<name>.window` (`kind = "exec"`): one event in flight at a time.
pub const DEFAULT_WINDOW: usize = 1;
/// Largest accepted `plugin.<name>.window`.
pub const MAX_WINDOW: usize = 256;
/// Largest accepted `plugin.<name>.memory_limit_mb` (1 TiB).
pub const MAX_MEMORY_LIMIT_MB: u64 = 1 << 20;
/// Largest accepted `plugin.<name>.max_crashes`.
pub const MAX_CRASHES: u32 = 1000;
/// Largest accepted `plugin.<name>.pause_after_failures`.
pub const MAX_PAUSE_AFTER_FAILURES: u32 = 1_000_000;
/// Default of `plugin.<name>.retry.attempts`.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 8;
/// Default of `plugin.<name>.retry.base_ms`.
pub const DEFAULT_RETRY_BASE: Duration = Duration::from_millis(200);
/// Default of `plugin.<name>.retry.cap_ms`.
pub const DEFAULT_RETRY_CAP: Duration = Duration::from_millis(60_000);

/// Largest accepted millisecond value of any `*_ms` key: one day. Bigger values are surely
/// mistakes and could overflow `Instant` arithmetic further down.
pub const MAX_MILLIS: u64 = 24 * 60 * 60 * 1000;
/// Largest accepted `plugin.<name>.concurrency`.
pub const MAX_CONCURRENCY: usize = 1024;

/// The whole host configuration: `host.toml` merged over the embedded defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file this was read from; `None` for [`Config::default_for`].
    pub source: Option<PathBuf>,
    /// The folder relative paths are resolved against (the config file's folder, made absolute).
    pub base_dir: PathBuf,
    /// Where the host keeps its state (learned tokens, queues), already resolved.
    pub state_dir: PathBuf,
    /// The HTTP endpoint (`[server]`).
    pub server: ServerConfig,
    /// Logging (`[log]`).
    pub log: LogConfig,
    /// Event authentication (`[auth]`).
    pub auth: AuthConfig,
    /// Which plugins to load and from where (`[plugins]`).
    pub plugins: PluginsConfig,
    /// Per-plugin tables (`[plugin.<name>]`), by plugin name; enabled or not.
    pub plugin: BTreeMap<String, PluginConfig>,
    /// Where each `[plugin.<name>]` table is named in the file, for warnings about tables that
    /// match no plugin.
    pub plugin_positions: BTreeMap<String, super::Position>,
    /// The durable journal (`[journal]`).
    pub journal: JournalConfig,
    /// REST calls for plugins (`[rest]`).
    pub rest: RestConfig,
    /// The admin listener (`[admin]`): `None` when disabled.
    pub admin: Option<SocketAddr>,
    /// Open admin connections at most (`admin.max_connections`); past it 503.
    pub admin_max_connections: usize,
    /// The token the admin listener's console and endpoints ask for (`admin.token`, read from
    /// the environment when `{ env = .. }`); `None`: no login (allowed on loopback only).
    /// `Debug` never shows it.
    pub admin_token: Option<Secret>,
    /// Binding the events plugins receive on each portal (`[bind]`).
    pub bind: BindConfig,
}

/// Binding what the plugins receive on each portal (`[bind]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindConfig {
    /// The public handler URL Bitrix24 posts events to (`handler`), e.g.
    /// `https://b24.example.com/b24/events`; `None`: the host binds nothing.
    pub handler: Option<String>,
    /// Also unbind the codes bound to this handler (and this connector's offline codes) that no
    /// plugin receives any more (`prune`).
    pub prune: bool,
    /// `options[minTimeout]` of the `ONOFFLINEEVENT` binding: at least this many seconds
    /// between two nudges (`nudge_min_timeout_s`; 0 = one per portal hit).
    pub nudge_min_timeout_s: u32,
}

/// Default of `bind.nudge_min_timeout_s` (Bitrix24's own default).
pub const DEFAULT_NUDGE_MIN_TIMEOUT_S: u32 = 1;

impl Default for BindConfig {
    fn default() -> Self {
        BindConfig { handler: None, prune: false, nudge_min_timeout_s: DEFAULT_NUDGE_MIN_TIMEOUT_S }
    }
}

/// Default of `admin.listen`.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8025));

/// The HTTP endpoint that receives events (`[server]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// The address to listen on (`listen`).
    pub listen: SocketAddr,
    /// The path events are POSTed to; starts with `/` (`path`).
    pub path: String,
    /// The largest accepted request body, in bytes; more than 0 (`max_body_bytes`).
    pub max_body_bytes: usize,
    /// How long a client may take to send the request headers (`header_read_timeout_ms`).
    pub header_read_timeout: Duration,
    /// How long a client may take to send a whole request, headers and body
    /// (`request_read_timeout_ms`); past it the connection is closed.
    pub request_read_timeout: Duration,
    /// Open connections at most (`max_connections`); past it a new one is answered 503.
    pub max_connections: usize,
    /// Open connections from one client address at most (`max_connections_per_address`; an
    /// IPv6 client by its /64); `None`: no such cap (the default: behind a reverse proxy every
    /// connection comes from the proxy).
    pub max_connections_per_address: Option<usize>,
    /// How long shutdown waits for in-flight deliveries (`shutdown_grace_ms`).
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN,
            path: DEFAULT_PATH.to_owned(),
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            request_read_timeout: DEFAULT_REQUEST_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: None,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

/// Logging (`[log]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// A `tracing` `EnvFilter` directive string such as `info` or `b24_host=debug,info`.
    /// Not checked here; `RUST_LOG` overrides it at the binary's edge.
    pub level: String,
    /// How log lines look.
    pub format: LogFormat,
    /// What one plugin may write into the log (`plugin_*`).
    pub plugin: PluginLogLimits,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: DEFAULT_LOG_LEVEL.to_owned(),
            format: LogFormat::default(),
            plugin: PluginLogLimits::default(),
        }
    }
}

/// What one plugin may write into the host's log, its output and `Host::log` lines together
/// (`[log]` `plugin_max_line_bytes`, `plugin_lines_per_second`, `plugin_log_burst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginLogLimits {
    /// A longer line is cut there and marked (`plugin_max_line_bytes`).
    pub max_line_bytes: usize,
    /// Lines a second on average; 0: no limit (`plugin_lines_per_second`).
    pub lines_per_second: u32,
    /// Lines at once above the average (`plugin_log_burst`).
    pub burst: u32,
}

impl Default for PluginLogLimits {
    fn default() -> Self {
        PluginLogLimits {
            max_line_bytes: DEFAULT_PLUGIN_MAX_LINE_BYTES,
            lines_per_second: DEFAULT_PLUGIN_LINES_PER_SECOND,
            burst: DEFAULT_PLUGIN_LOG_BURST,
        }
    }
}

/// Where a plugin's code runs (`plugin.<name>.isolation`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Isolation {
    /// In a runner process of its own (`"process"`), the default: a crash, an abort or an
    /// endless call ends the runner, never the host.
    #[default]
    Process,
    /// Inside the host process (`"in-process"`): the fast path, for code you trust.
    InProcess,
}

impl Isolation {
    /// The spelling used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Process => "process",
            Isolation::InProcess => "in-process",
        }
    }

    /// Parses the spelling used in the file (exact, lower case).
    pub fn from_name(name: &str) -> Option<Isolation> {
        match name {
            "process" => Some(Isolation::Process),
            "in-process" => Some(Isolation::InProcess),
            _ => None,
        }
    }
}

/// How log lines look (`log.format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum LogFormat {
    /// Human-readable lines (`"pretty"`), the default.
    #[default]
    Pretty,
    /// One JSON object per line (`"json"`).
    Json,
}

impl LogFormat {
    /// The spelling used in the file: `pretty` or `json`.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Pretty => "pretty",
            LogFormat::Json => "json",
        }
    }

    /// Parses the spelling used in the file (exact, lower case).
    pub fn from_name(name: &str) -> Option<LogFormat> {
        match name {
            "pretty" => Some(LogFormat::Pretty),
            "json" => Some(LogFormat::Json),
            _ => None,
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Event authentication (`[auth]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    /// Whether the application token of an `ONAPPINSTALL` event from an unknown portal is
    /// remembered once the install is verified at the OAuth server (`learn_tokens_on_install`).
    pub learn_tokens_on_install: bool,
    /// Known portals: `member_id` → application token, environment-variable tokens already read
    /// (`[auth.portals]`). `Debug` never shows the tokens.
    pub portals: BTreeMap<String, Secret>,
    /// At most this many portals are learned (`max_learned_portals`).
    pub max_learned_portals: usize,
    /// Installs from unknown portals verified per minute at most, all portals together; also
    /// the burst (`unknown_installs_per_minute`).
    pub unknown_installs_per_minute: u32,
}

/// Default of `auth.max_learned_portals`.
pub const DEFAULT_MAX_LEARNED_PORTALS: usize = 1000;
/// Default of `auth.unknown_installs_per_minute`.
pub const DEFAULT_UNKNOWN_INSTALLS_PER_MINUTE: u32 = 10;

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            learn_tokens_on_install: false,
            portals: BTreeMap::new(),
            max_learned_portals: DEFAULT_MAX_LEARNED_PORTALS,
            unknown_installs_per_minute: DEFAULT_UNKNOWN_INSTALLS_PER_MINUTE,
        }
    }
}

/// Which plugins to load and from where (`[plugins]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginsConfig {
    /// The folder holding the plugin libraries, already resolved (`dir`).
    pub dir: PathBuf,
    /// The plugins to load, in order; no name twice (`enabled`).
    pub enabled: Vec<String>,
    /// How long loading and creating one plugin may take at start or a reload before it is
    /// reported failed (`start_timeout_ms`); plugins are created in parallel while the host
    /// listens.
    pub start_timeout: Duration,
}

/// What a plugin is (`plugin.<name>.kind`): a Rust library (no `kind`), a program speaking JSON
/// lines (`"exec"`), or an HTTP handler events are forwarded to (`"http"`).
#[derive(Clone, Default, PartialEq, Eq)]
pub enum PluginKind {
    /// A library in `plugins.dir` (no `kind` key).
    #[default]
    Library,
    /// A program the host starts and talks to over its stdin and stdout (`kind = "exec"`).
    Exec(ExecConfig),
    /// An HTTP endpoint each event is POSTed to (`kind = "http"`).
    Http(HttpConfig),
}

impl PluginKind {
    /// The spelling used in the file and on the console: `library`, `exec` or `http`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PluginKind::Library => "library",
            PluginKind::Exec(_) => "exec",
            PluginKind::Http(_) => "http",
        }
    }
}

/// An exec plugin's program (`kind = "exec"`).
#[derive(Clone, PartialEq, Eq)]
pub struct ExecConfig {
    /// The argv (`command`); a relative program or argument path is relative to the config's
    /// folder, which is the program's working folder.
    pub command: Vec<String>,
    /// Its environment beyond `PATH`, `HOME` and `LANG` (`env`), `{ env = "VAR" }` values
    /// already read. Values are never shown (`Debug` prints the names only).
    pub env: Vec<(String, Secret)>,
    /// How many events may be sent before the first is answered (`window`, 1..=256).
    pub window: usize,
}

/// How an http plugin's request body is made (`format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ForwardFormat {
    /// The body as Bitrix24 sent it, with its content type (`"form"`).
    #[default]
    Form,
    /// The exec protocol's event object (`"json"`).
    Json,
}

impl ForwardFormat {
    /// The spelling used in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            ForwardFormat::Form => "form",
            ForwardFormat::Json => "json",
        }
    }
}

/// An http plugin's target (`kind = "http"`).
#[derive(Clone, PartialEq, Eq)]
pub struct HttpConfig {
    /// Where events are POSTed (`url`): http or https.
    pub url: String,
    /// `form` or `json` (`format`).
    pub format: ForwardFormat,
    /// The Standard Webhooks signing secret (`secret`), if requests are signed.
    pub secret: Option<Secret>,
}

impl fmt::Debug for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PluginKind::Library => f.write_str("Library"),
            PluginKind::Exec(exec) => f
                .debug_struct("Exec")
                .field("command", &exec.command)
                .field("env", &exec.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
                .field("window", &exec.window)
                .finish(),
            PluginKind::Http(http) => f
                .debug_struct("Http")
                .field("url", &http.url)
                .field("format", &http.format)
                .field("secret", &http.secret.as_ref().map(|_| "<redacted>"))
                .finish(),
        }
    }
}

/// One plugin's table (`[plugin.<name>]`); every key optional.
#[derive(Clone, PartialEq, Eq)]
pub struct PluginConfig {
    /// What the plugin is (`kind`, with `command`, `env`, `window`, `url`, `format`, `secret`).
    pub kind: PluginKind,
    /// Case-insensitive globs on event codes that narrow the plugin's own subscriptions;
    /// `None` keeps them all (`events`).
    pub events: Option<Vec<String>>,
    /// Globs on `data[FIELDS][ENTITY_ID]` of user-field events; `None` accepts all (`entities`).
    pub entities: Option<Vec<String>>,
    /// Globs on `FIELD_NAME`; `None` accepts all (`fields`).
    pub fields: Option<Vec<String>>,
    /// How long one delivery may take; more than 0 (`timeout_ms`).
    pub timeout: Duration,
    /// At most this many deliveries at once; at least 1. The host uses 1 unless the plugin
    /// declares itself concurrent (`concurrency`).
    pub concurrency: usize,
    /// Where the plugin's code runs (`isolation`): its own runner process (the default) or
    /// inside the host.
    pub isolation: Isolation,
    /// An address-space limit on the plugin's runner, in MiB (`memory_limit_mb`; process
    /// isolation only; default [`DEFAULT_MEMORY_LIMIT_MB`]); `None` = no limit (`0` in the file).
    pub memory_limit_mb: Option<u64>,
    /// A call running this long kills the plugin's runner, which counts as a crash of that
    /// event (`kill_after_ms`; process isolation only).
    pub kill_after: Duration,
    /// After this many crashes during one event (the runner, or the host for an in-process
    /// plugin, died while calling it) the event becomes a dead letter of the plugin
    /// (`max_crashes`).
    pub max_crashes: u32,
    /// The plugin pauses itself after this many consecutive failed calls, until an operator
    /// resumes it (`pause_after_failures`; `None`: never).
    pub pause_after_failures: Option<u32>,
    /// Redelivery of failed events (`[plugin.<name>.retry]`).
    pub retry: RetryConfig,
    /// The plugin's own settings as TOML text (the `[plugin.<name>.settings]` table), `""` if
    /// there is none. `Debug` shows only its length: plugin settings may hold credentials.
    pub settings: String,
}

impl Default for PluginConfig {
    fn default() -> Self {
        PluginConfig {
            kind: PluginKind::Library,
            events: None,
            entities: None,
            fields: None,
            timeout: DEFAULT_PLUGIN_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            isolation: Isolation::default(),
            memory_limit_mb: Some(DEFAULT_MEMORY_LIMIT_MB),
            kill_after: DEFAULT_KILL_AFTER,
            max_crashes: DEFAULT_MAX_CRASHES,
            pause_after_failures: None,
            retry: RetryConfig::default(),
            settings: String::new(),
        }
    }
}

impl fmt::Debug for PluginConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginConfig")
            .field("kind", &self.kind)
            .field("events", &self.events)
            .field("entities", &self.entities)
            .field("fields", &self.fields)
            .field("timeout", &self.timeout)
            .field("concurrency", &self.concurrency)
            .field("isolation", &self.isolation)
            .field("memory_limit_mb", &self.memory_limit_mb)
            .field("kill_after", &self.kill_after)
            .field("max_crashes", &self.max_crashes)
            .field("pause_after_failures", &self.pause_after_failures)
            .field("retry", &self.retry)
            .field("settings", &format_args!("<{} bytes of TOML>", self.settings.len()))
            .finish()
    }
}

/// Redelivery of failed events (`[plugin.<name>.retry]`): exponential backoff from `base`,
/// each wait at most `cap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    /// Total delivery attempts before giving up, the first one included; at least 1 (`attempts`).
    pub attempts: u32,
    /// The first wait (`base_ms`).
    pub base: Duration,
    /// The longest wait; at least `base` (`cap_ms`).
    pub cap: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            base: DEFAULT_RETRY_BASE,
            cap: DEFAULT_RETRY_CAP,
        }
    }
}

/// Bitrix24 REST calls made for plugins (`[rest]`).
#[derive(Debug, Clone, PartialEq)]
pub struct RestConfig {
    /// The application's OAuth client id (`client_id`), needed to refresh stored tokens.
    pub client_id: Option<Secret>,
    /// The application's OAuth client secret (`client_secret`).
    pub client_secret: Option<Secret>,
    /// The OAuth servers' token URLs (`oauth_servers`, or the older one-item `oauth_url`):
    /// an install is verified at the one whose origin its `auth[server_endpoint]` names, and
    /// that choice is kept with the portal's stored tokens for their refreshes. An address not
    /// on this list is never asked.
    pub oauth_servers: Vec<String>,
    /// How long one HTTP request may take (`timeout_ms`).
    pub timeout: Duration,
    /// Default leaky-bucket rate per portal, requests per second (`rate_per_sec`).
    pub rate_per_sec: f64,
    /// Default bucket size per portal (`burst`).
    pub burst: u32,
    /// Per-portal settings (`[rest.portals."<member_id>"]`).
    pub portals: BTreeMap<String, RestPortalConfig>,
}

impl RestConfig {
    /// The configured OAuth token URL for an install that names `server_endpoint`
    /// (`auth[server_endpoint]`, e.g. `https://oauth.bitrix24.tech/rest/`): the one at the same
    /// origin (scheme, host and port). An install that names no server is verified at the only
    /// configured one, if there is only one. `Err` says why none fits (safe to log: the
    /// origin only).
    pub fn oauth_server_for(&self, server_endpoint: Option<&str>) -> Result<&str, String> {
        let named = server_endpoint.map(str::trim).filter(|s| !s.is_empty());
        match named {
            Some(endpoint) => {
                let wanted = url_origin(endpoint);
                self.oauth_servers
                    .iter()
                    .find(|url| wanted.is_some() && url_origin(url) == wanted)
                    .map(String::as_str)
                    .ok_or_else(|| {
                        let shown: String = wanted
                            .unwrap_or_else(|| "an unreadable address".to_owned())
                            .chars()
                            .take(100)
                            .collect();
                        format!("its OAuth server {shown} is not in rest.oauth_servers")
                    })
            }
            None if self.oauth_servers.len() == 1 => Ok(self.oauth_servers[0].as_str()),
            None => Err("it names no OAuth server (auth[server_endpoint]) and rest.oauth_servers lists several".to_owned()),
        }
    }
}

/// The origin of `url` (`https://oauth.bitrix.info` for `https://oauth.bitrix.info/rest/`),
/// with the port when it is not the scheme's default; `None` for text that is no URL.
pub fn url_origin(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let host = parsed.host_str()?.to_ascii_lowercase();
    Some(match parsed.port() {
        Some(port) => format!("{}://{host}:{port}", parsed.scheme()),
        None => format!("{}://{host}", parsed.scheme()),
    })
}

/// One portal's REST settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RestPortalConfig {
    /// Its rate, when not the default (Enterprise portals: 5).
    pub rate_per_sec: Option<f64>,
    /// Its bucket size, when not the default (Enterprise portals: 250).
    pub burst: Option<u32>,
    /// An incoming-webhook URL (`https://portal/rest/1/<secret>/`) for local integrations.
    pub webhook: Option<Secret>,
    /// Pulling the portal's offline-event queue (`offline`), when configured.
    pub offline: Option<OfflineConfig>,
}

/// Pulling a portal's offline-event queue (`[rest.portals."<member_id>".offline]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OfflineConfig {
    /// Whether the host polls (`enabled`, default true when the table is present).
    pub enabled: bool,
    /// Time between polls when nothing wakes the poller earlier (`poll_interval_ms`).
    pub poll_interval: Duration,
    /// Rows per `event.offline.get` (`batch`, 1 to 50).
    pub batch: u32,
    /// `auth_connector` passed to `event.offline.get`, to skip the app's own changes.
    pub auth_connector: Option<String>,
    /// A batch reserved on the portal under a `process_id` this host does not hold, seen
    /// reserved this long, is taken over (`resume_lost_after_ms`): its reply was lost, and the
    /// portal would keep its rows reserved for `PROCESS_ID_LIFETIME` (34 days).
    pub resume_lost_after: Duration,
}

/// Default of `offline.poll_interval_ms`.
pub const DEFAULT_OFFLINE_POLL: Duration = Duration::from_millis(30_000);
/// Default of `offline.resume_lost_after_ms`: ten minutes, far beyond any batch in progress.
pub const DEFAULT_RESUME_LOST_AFTER: Duration = Duration::from_millis(600_000);

impl Default for OfflineConfig {
    fn default() -> Self {
        OfflineConfig {
            enabled: true,
            poll_interval: DEFAULT_OFFLINE_POLL,
            batch: 50,
            auth_connector: None,
            resume_lost_after: DEFAULT_RESUME_LOST_AFTER,
        }
    }
}

impl Default for RestConfig {
    fn default() -> Self {
        RestConfig {
            client_id: None,
            client_secret: None,
            oauth_servers: DEFAULT_OAUTH_SERVERS.iter().map(|s| (*s).to_owned()).collect(),
            timeout: DEFAULT_REST_TIMEOUT,
            rate_per_sec: DEFAULT_REST_RATE,
            burst: DEFAULT_REST_BURST,
            portals: BTreeMap::new(),
        }
    }
}

/// Default of `rest.oauth_servers`: Bitrix24's two OAuth servers (portals are served by one
/// or the other by region; an install's `auth[server_endpoint]` names its own).
pub const DEFAULT_OAUTH_SERVERS: [&str; 2] =
    ["https://oauth.bitrix.info/oauth/token/", "https://oauth.bitrix24.tech/oauth/token/"];
/// Default of `rest.timeout_ms`.
pub const DEFAULT_REST_TIMEOUT: Duration = Duration::from_millis(10_000);
/// Default of `rest.rate_per_sec` (Bitrix24's standard plans).
pub const DEFAULT_REST_RATE: f64 = 2.0;
/// Default of `rest.burst`.
pub const DEFAULT_REST_BURST: u32 = 50;

/// The durable journal (`[journal]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// Which backend holds the journal (`backend`).
    pub backend: JournalBackend,
    /// How long the group commit waits for more events to share one durable write
    /// (`commit_window_ms`; 0, the default, batches what arrived while the previous write ran).
    pub commit_window: Duration,
    /// An identical event arriving again within this window is answered 200 and not delivered
    /// twice (`dedup_window_ms`; 0 turns duplicate suppression off).
    pub dedup_window: Duration,
    /// Completed events are pruned after this long (`keep_completed_hours`).
    pub keep_completed_for: Duration,
    /// At most this many completed events are kept (`keep_completed_events`).
    pub keep_completed_events: u64,
    /// The shared log (`[journal.nats]`): set exactly when `backend = "nats"`.
    pub nats: Option<NatsConfig>,
}

/// `[journal.nats]`: the NATS JetStream log several hosts share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Servers to connect to (`urls`), e.g. `nats://10.0.0.1:4222`; any one is enough to join.
    pub urls: Vec<String>,
    /// How the host authenticates (`token`, `user` + `password`, `nkey_seed` or `creds_file`).
    pub auth: NatsAuth,
    /// TLS to the servers (`tls_required`, `tls_ca_file`, `tls_cert_file`, `tls_key_file`).
    pub tls: NatsTls,
    /// The events stream's name (`stream`); the dead letters' stream, the key/value buckets and
    /// the consumers are named after it.
    pub stream: String,
    /// Copies of every message (`replicas`, 1 to 5; 3 survives one node failing).
    pub replicas: usize,
    /// What the host expects of the servers' disk writes (`sync`).
    pub sync: NatsSync,
    /// How long an append waits for the log's acknowledgement before the event goes to the
    /// local spool instead (`ack_timeout_ms`).
    pub ack_timeout: Duration,
}

/// Credentials for the NATS servers. Secrets never show in `Debug` output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// `token`.
    Token(Secret),
    /// `user` and `password`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
    /// `nkey_seed`: an nkey seed (`SU...`).
    NkeySeed(Secret),
    /// `creds_file`: a `.creds` file (JWT + nkey seed), read at connect time.
    CredsFile(PathBuf),
}

/// TLS settings for the NATS connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    /// Refuse a server that does not speak TLS (`tls_required`; implied by `tls://` urls).
    pub required: bool,
    /// Extra root certificates, PEM (`tls_ca_file`).
    pub ca_file: Option<PathBuf>,
    /// The host's client certificate, PEM (`tls_cert_file`, with `tls_key_file`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key, PEM (`tls_key_file`).
    pub key_file: Option<PathBuf>,
}

/// `journal.nats.sync`: how durable the servers make an acknowledged message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NatsSync {
    /// `"server"` (default): the servers' own `sync_interval` (2 minutes unless set); an
    /// acknowledged message is in the memory of a majority of replicas and reaches their disks
    /// later, so losing it takes a majority failing together (power loss of one rack).
    #[default]
    Server,
    /// `"always"`: the servers must run with `jetstream { sync_interval: always }`; every
    /// message is fsynced before it is acknowledged (about half the throughput).
    Always,
}

/// Default of `journal.nats.stream`.
pub const DEFAULT_NATS_STREAM: &str = "B24_EVENTS";
/// Default of `journal.nats.replicas`.
pub const DEFAULT_NATS_REPLICAS: usize = 3;
/// Default of `journal.nats.ack_timeout_ms`.
pub const DEFAULT_NATS_ACK_TIMEOUT: Duration = Duration::from_millis(1_000);

/// Where the journal lives (`journal.backend`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JournalBackend {
    /// `"embedded"`: a redb file in the state folder, no server needed (the default).
    #[default]
    Embedded,
    /// `"nats"`: a NATS JetStream cluster several hosts share (`[journal.nats]`); the embedded
    /// journal is kept as the local spool for appends the log does not acknowledge in time.
    Nats,
}

/// Default of `journal.commit_window_ms`.
pub const DEFAULT_COMMIT_WINDOW: Duration = Duration::ZERO;
/// Default of `journal.dedup_window_ms`.
pub const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_millis(600_000);
/// Default of `journal.keep_completed_hours`.
pub const DEFAULT_KEEP_COMPLETED_HOURS: u64 = 24;
/// Default of `journal.keep_completed_events`.
pub const DEFAULT_KEEP_COMPLETED_EVENTS: u64 = 100_000;
/// Upper bound of `journal.keep_completed_hours` (one year).
pub const MAX_KEEP_COMPLETED_HOURS: u64 = 24 * 366;

impl Default for JournalConfig {
    fn default() -> Self {
        JournalConfig {
            backend: JournalBackend::default(),
            commit_window: DEFAULT_COMMIT_WINDOW,
            dedup_window: DEFAULT_DEDUP_WINDOW,
            keep_completed_for: Duration::from_secs(DEFAULT_KEEP_COMPLETED_HOURS * 3600),
            keep_completed_events: DEFAULT_KEEP_COMPLETED_EVENTS,
            nats: None,
        }
    }
}

/// The embedded defaults, relative paths joined to `base_dir`; see [`Config::default_for`].
pub(crate) fn default_config(base_dir: &Path) -> Config {
    Config {
        source: None,
        base_dir: base_dir.to_path_buf(),
        state_dir: base_dir.join(DEFAULT_STATE_DIR),
        server: ServerConfig::default(),
        admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
        log: LogConfig::default(),
        auth: AuthConfig::default(),
        journal: JournalConfig::default(),
        rest: RestConfig::default(),
        admin: Some(DEFAULT_ADMIN_LISTEN),
        admin_token: None,
        bind: BindConfig::default(),
        plugins: PluginsConfig {
            dir: base_dir.join(DEFAULT_PLUGINS_DIR),
            enabled: DEFAULT_ENABLED.iter().map(|s| (*s).to_owned()).collect(),
            start_timeout: DEFAULT_START_TIMEOUT,
        },
        plugin: BTreeMap::new(),
        plugin_positions: BTreeMap::new(),
    }
}
