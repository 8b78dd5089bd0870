//! What a plugin call returns: an [`Outcome`] or a [`PluginError`].

use std::fmt;

use abi_stable::{StableAbi, std_types::RString};

/// The result of a successful plugin call.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The plugin handled the event.
    Done,
    /// The plugin looked at the event and chose to do nothing with it.
    Skipped,
}

/// How the host should treat a failed call.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A transient failure (network, rate limit, busy resource): deliver the event again later.
    Retry,
    /// A permanent failure: this event will never succeed; do not deliver it again.
    Reject,
    /// The plugin panicked. Set by the export macro, not by plugin code; the host re-creates the
    /// plugin instance and delivers the event again.
    Panicked,
}

/// A failed plugin call: its kind and a human-readable message.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// How the host should treat the failure.
    pub kind: ErrorKind,
    /// What went wrong, for the host's logs. Never put a token in it.
    pub message: RString,
}

impl PluginError {
    /// A transient failure: the host delivers the event again after a back-off.
    pub fn retry(message: impl fmt::Display) -> Self {
        PluginError { kind: ErrorKind::Retry, message: message.to_string().into() }
    }

    /// A permanent failure: the host stops delivering this event to the plugin.
    pub fn reject(message: impl fmt::Display) -> Self {
        PluginError { kind: ErrorKind::Reject, message: message.to_string().into() }
    }
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Retry => "retry",
            ErrorKind::Reject => "reject",
            ErrorKind::Panicked => "panicked",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for PluginError {}
