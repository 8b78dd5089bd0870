//! The host's configuration: `host.toml`, read strictly.
//!
//! Every key is optional; what the file leaves out comes from the embedded defaults
//! ([`Config::default_for`], also what an empty file gives). Unknown keys are errors everywhere
//! except inside `[plugin.<name>.settings]`, which is the plugin's own business and is passed on
//! as TOML text. Every [`ConfigError`] names the file, the line and column, and the full key
//! path, and never contains a token:
//!
//! ```text
//! host.toml:14:14: plugin.audit-log.timeout_ms: invalid type: string "10s", expected an integer (milliseconds)
//! host.toml:3:1: server.lisen: unknown key; expected one of listen, path, max_body_bytes, header_read_timeout_ms, shutdown_grace_ms
//! ```
//!
//! Relative paths (`state_dir`, `plugins.dir`) are resolved against the folder of the file.
//! The shipped, commented `host.toml` at the repository root is read by the tests at run time
//! (not embedded: editing it must not rebuild the host).
//!
//! Layout: `model.rs` holds the types and defaults, `load.rs` the reading, `error.rs` the errors
//! and the source positions both stages use, `raw.rs` the serde shapes of the file,
//! `validate.rs` the checks after deserializing.

mod error;
mod load;
mod model;
mod raw;
mod validate;
mod validate_nats;

#[cfg(test)]
mod tests;

use std::{env::VarError, path::Path};

pub use error::{ConfigError, Position};
pub use model::{
    AuthConfig, BindConfig, Config, DEFAULT_CONCURRENCY, DEFAULT_ENABLED,
    DEFAULT_EXEC_MEMORY_LIMIT_MB, DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_KILL_AFTER, DEFAULT_LISTEN,
    DEFAULT_LOG_LEVEL, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CRASHES, DEFAULT_MEMORY_LIMIT_MB,
    DEFAULT_NATS_ACK_TIMEOUT, DEFAULT_NATS_REPLICAS, DEFAULT_NATS_STREAM, DEFAULT_PATH,
    DEFAULT_PLUGIN_TIMEOUT, DEFAULT_PLUGINS_DIR, DEFAULT_RETRY_ATTEMPTS, DEFAULT_RETRY_BASE,
    DEFAULT_RETRY_CAP, DEFAULT_SHUTDOWN_GRACE, DEFAULT_START_TIMEOUT, DEFAULT_STATE_DIR,
    DEFAULT_WINDOW, ExecConfig, ForwardFormat, HttpConfig, Isolation, JournalBackend,
    JournalConfig, LogConfig, LogFormat, MAX_CONCURRENCY, MAX_MILLIS, MAX_WINDOW, NatsAuth,
    NatsConfig, NatsSync, NatsTls, OfflineConfig, PluginConfig, PluginKind, PluginLogLimits,
    PluginsConfig, RestConfig, RestPortalConfig, RetryConfig, ServerConfig,
};
pub use validate::non_loopback_without_token;

impl Config {
    /// Reads and checks the file at `path`; environment-variable tokens are read from the
    /// process environment. Relative paths in it resolve against its folder, made absolute.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        load::load(path)
    }

    /// Checks `text` as if it were the contents of `path`: `path` is used in messages and its
    /// folder as `base_dir`; the file itself is not read. Environment variables come from the
    /// process environment.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        load::parse(text, path, &|name| std::env::var(name))
    }

    /// Like [`Config::parse`], but reads environment variables through `env` (same contract as
    /// [`std::env::var`]), so tests and tools need not touch the process environment.
    pub fn parse_with_env(
        text: &str,
        path: &Path,
        env: impl Fn(&str) -> Result<String, VarError>,
    ) -> Result<Config, ConfigError> {
        load::parse(text, path, &env)
    }

    /// The embedded defaults (also what an empty file gives): listen on 127.0.0.1:8024, events
    /// on `/`, `audit-log` enabled, no portals, no token learning. Relative paths are joined to
    /// `base_dir` as given (it is not made absolute).
    pub fn default_for(base_dir: &Path) -> Config {
        model::default_config(base_dir)
    }

    /// The table of plugin `name`, or the defaults when the file has none.
    pub fn plugin_config(&self, name: &str) -> PluginConfig {
        self.plugin.get(name).cloned().unwrap_or_default()
    }
}
