//! Calling a plugin's code in this process: the host's in-process lanes (`dispatch::worker`)
//! and a runner's lanes (`runner::child`) both call through here, so a panic, the event's
//! view and the outcome are handled one way wherever the plugin runs.
//!
//! - [`local`]: [`Local`], a plugin created in this process (re-created after a panic), and
//!   its guarded call: the event's stable-ABI view built and the plugin called inside
//!   `catch_unwind`, its answer (or a panic) mapped to one `Result<Outcome, PluginError>`.
//! - [`envelope`]: [`Envelope`], one event for one plugin, decoded once and only when asked.
//! - [`convert`]: decoded event -> stable-ABI view.
//! - [`host_services`]: what plugins can ask of the host (logging, REST calls).
//! - [`CallError`]: how a call ended apart from the plugin's own answer, for every kind of
//!   plugin (in process, in a runner, an exec program, an http target).

pub mod convert;
pub mod envelope;
pub mod host_services;
pub mod local;

use b24_plugin_api::PluginError;
pub use envelope::Envelope;
pub use local::Local;

/// How a call ended, apart from the plugin's own answer.
#[derive(Debug)]
pub enum CallError {
    /// The plugin answered with an error.
    Plugin(PluginError),
    /// The runner died during the call: the reason ("killed by SIGSEGV").
    Crashed(String),
    /// The host or the plugin is stopping: the call did not happen or was cut short; its event
    /// stays pending, no attempt is counted.
    Abandoned,
    /// The runner was killed for another reason than this call (an operator skipped the event
    /// of one of its calls): nothing is counted; the event is delivered again unless it is the
    /// skipped one.
    Interrupted(String),
    /// An http plugin's target asked for a retry (408, 429, 5xx, a timeout, a broken
    /// connection: `counted`, an attempt used) or could not be reached at all (not counted:
    /// the event waits however long the target is down); no attempt before `not_before_ms`
    /// (its `Retry-After`).
    Retry {
        /// Why, for the log and the pending row.
        message: String,
        /// The earliest next attempt, ms since the epoch.
        not_before_ms: Option<i64>,
        /// Whether it uses an attempt.
        counted: bool,
    },
}
