//! What the host offers a plugin: the [`HostServices`] trait object (in [`crate::abi`]) and its
//! friendly handle [`Host`].

// `#[sabi_trait]` expands to impls that rustc flags as non-local; they are abi_stable's, not ours.
#![allow(non_local_definitions)]

use std::path::PathBuf;

use abi_stable::{
    StableAbi, sabi_trait,
    std_types::{RArc, RResult, RStr, RString},
};

use crate::{ErrorKind, PluginError};

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

    /// Since 0.2.1: calls Bitrix24 REST `method` with `params` (a JSON object) on the portal of
    /// the event being handled, and returns the `result` member of the answer as JSON. The host
    /// picks the credentials (the event's user token, the portal's stored OAuth tokens, or its
    /// incoming webhook), refreshes expired tokens, keeps to the portal's rate limit and retries
    /// when the portal says it is over it. Blocks the calling thread.
    fn rest(&self, method: RStr<'_>, params: RStr<'_>) -> RResult<RString, RestError> {
        // What a plugin sees on a host older than 0.2.1, whose services lack this method.
        let _ = (method, params);
        RResult::RErr(RestError {
            kind: RestErrorKind::Usage,
            status: 0,
            error: "NOT_SUPPORTED".into(),
            description: "this host is older than b24-plugin-api 0.2.1 and cannot make REST calls"
                .into(),
        })
    }
}

/// What went wrong with a REST call.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestErrorKind {
    /// The portal answered with an error (`error`, `error_description`), e.g. `ERROR_NOT_FOUND`.
    Api,
    /// The portal or OAuth server could not be reached, timed out, or stayed over its rate limit:
    /// try again later.
    Unavailable,
    /// No usable credentials for the portal (no user token, no stored OAuth tokens that could be
    /// refreshed, no webhook).
    Credentials,
    /// The call itself was wrong: not during an event, or `params` is not a JSON object.
    Usage,
}

/// A failed REST call.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct RestError {
    /// The kind of failure.
    pub kind: RestErrorKind,
    /// The HTTP status of the last answer, 0 when there was none.
    pub status: u16,
    /// Bitrix24's `error` code (e.g. `ERROR_NOT_FOUND`, `QUERY_LIMIT_EXCEEDED`), or the host's.
    pub error: RString,
    /// Bitrix24's `error_description`, or the host's explanation.
    pub description: RString,
}

impl RestError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        self.kind == RestErrorKind::Unavailable
    }
}

impl std::fmt::Display for RestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error, self.description)?;
        if self.status != 0 {
            write!(f, " (HTTP {})", self.status)?;
        }
        Ok(())
    }
}

impl std::error::Error for RestError {}

impl From<RestError> for PluginError {
    /// Transient failures become [`ErrorKind::Retry`], the rest [`ErrorKind::Reject`].
    fn from(e: RestError) -> PluginError {
        let kind = if e.is_transient() { ErrorKind::Retry } else { ErrorKind::Reject };
        PluginError { kind, message: format!("REST call failed: {e}").into() }
    }
}

/// The host services as a reference-counted trait object.
pub type HostServicesArc = HostServices_TO<'static, RArc<()>>;

/// The host services as they cross the ABI in `create`.
///
/// abi_stable's load-time check refuses a host whose prefix types are longer than the
/// plugin's, which would make every method appended to [`HostServices`] break the plugins built
/// before it. So the check sees this handle as opaque (size and alignment only); compatibility
/// within an ABI line is this crate's promise instead: methods are only ever appended, each
/// with a default body that a plugin falls back to on an older host.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(unsafe_opaque_fields)]
pub struct HostHandle {
    services: HostServicesArc,
}

impl HostHandle {
    /// Wraps the host's services (host side).
    pub fn new(services: HostServicesArc) -> HostHandle {
        HostHandle { services }
    }

    /// The services (plugin side).
    pub fn into_services(self) -> HostServicesArc {
        self.services
    }
}

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

    /// Calls Bitrix24 REST `method` with `params` (a JSON object, e.g.
    /// `{"id": 554}`) on the portal of the event being handled; returns the answer's `result` as
    /// JSON text. See [`HostServices::rest`]. Needs a host of b24-plugin-api 0.2.1 or later.
    ///
    /// ```ignore
    /// let field = ctx.host.rest("crm.deal.userfield.get", r#"{"id": 554}"#)?;
    /// ```
    pub fn rest(&self, method: &str, params: &str) -> Result<String, RestError> {
        self.inner.rest(method.into(), params.into()).into_result().map(RString::into_string)
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
