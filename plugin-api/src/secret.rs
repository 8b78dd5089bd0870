//! [`Secret`]: a string that never shows in `Debug` output or logs.

use std::fmt;

use abi_stable::{StableAbi, std_types::RString};

/// A token (access, refresh or application token) that must never reach a log.
///
/// `Debug` prints `Secret(<redacted>)`; read the value with [`Secret::expose`] only where it is
/// really sent somewhere.
#[repr(transparent)]
#[derive(StableAbi, Clone, Default, PartialEq, Eq)]
pub struct Secret(RString);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<RString>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself. Never log it.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }

    /// Whether the value is empty (the sender left it out).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}
