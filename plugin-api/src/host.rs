//! What the host offers a plugin: the [`HostServices`] trait object and its friendly handle
//! [`Host`].

// `#[sabi_trait]` expands to impls that rustc flags as non-local; they are abi_stable's, not ours.
#![allow(non_local_definitions)]

use std::path::PathBuf;

use abi_stable::{
    StableAbi, sabi_trait,
    std_types::{RArc, RStr, RString},
};

/// Severity of a plugin log line.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Something failed.
    Error,
    /// Something looks wrong.
    Warn,
    /// Normal operation.
    Info,
    /// Details for debugging.
    Debug,
    /// Very verbose details.
    Trace,
}

/// Services the host provides to a plugin, implemented by the host.
///
/// New methods are appended after the last prefix method in later releases of an ABI line, so
/// plugins built against an older release keep loading.
#[sabi_trait]
pub trait HostServices: Clone + Send + Sync {
    /// Writes a line into the host's log under the plugin's name. A plugin has its own copy of
    /// std and of any logging crate; this is the only way its lines reach the host's log.
    fn log(&self, level: LogLevel, message: RStr<'_>);

    /// The folder of the host's config file: resolve relative paths in the plugin's settings
    /// against it.
    fn config_dir(&self) -> RString;

    /// The host's state folder; a plugin may keep its own files below it.
    #[sabi(last_prefix_field)]
    fn state_dir(&self) -> RString;
}

/// The host services as they cross the ABI: a reference-counted trait object.
pub type HostServicesArc = HostServices_TO<'static, RArc<()>>;

/// A plugin's handle on the host: logging and paths. Cheap to clone; keep it in your plugin.
#[derive(Clone)]
pub struct Host {
    inner: HostServicesArc,
}

impl Host {
    /// Wraps the trait object the host passed to `create`.
    pub fn new(inner: HostServicesArc) -> Self {
        Host { inner }
    }

    /// Logs a line at `level` into the host's log, tagged with the plugin's name.
    pub fn log(&self, level: LogLevel, message: &str) {
        self.inner.log(level, message.into());
    }

    /// Logs at [`LogLevel::Error`].
    pub fn error(&self, message: &str) {
        self.log(LogLevel::Error, message);
    }

    /// Logs at [`LogLevel::Warn`].
    pub fn warn(&self, message: &str) {
        self.log(LogLevel::Warn, message);
    }

    /// Logs at [`LogLevel::Info`].
    pub fn info(&self, message: &str) {
        self.log(LogLevel::Info, message);
    }

    /// Logs at [`LogLevel::Debug`].
    pub fn debug(&self, message: &str) {
        self.log(LogLevel::Debug, message);
    }

    /// The folder of the host's config file.
    pub fn config_dir(&self) -> PathBuf {
        PathBuf::from(self.inner.config_dir().as_str())
    }

    /// The host's state folder.
    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(self.inner.state_dir().as_str())
    }

    /// Resolves a path from the plugin's settings: absolute paths stay, relative ones are taken
    /// against the folder of the host's config file.
    pub fn resolve_path(&self, path: &str) -> PathBuf {
        let path = PathBuf::from(path);
        if path.is_absolute() { path } else { self.config_dir().join(path) }
    }

    /// The underlying trait object.
    pub fn services(&self) -> &HostServicesArc {
        &self.inner
    }
}

impl std::fmt::Debug for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}
