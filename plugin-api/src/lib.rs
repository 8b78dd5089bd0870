//! The contract between **b24-host** and its plugins.
//!
//! A plugin is a `cdylib` that depends on this crate only. It defines a type, implements
//! [`Plugin`] for it (one method, [`Plugin::on_user_field`], is required), and exports it with one
//! line of [`export_plugin!`]. The host loads the library at run time, checks that it was built
//! against a compatible version of this crate, creates the plugin with its settings from
//! `host.toml`, and calls it for every event it subscribed to.
//!
//! Everything that crosses the library boundary is a stable-ABI type from `abi_stable`
//! ([`RString`], [`RVec`], [`ROption`], ...): a plugin built with another compiler version still
//! works with the host. Panics never cross the boundary: the export macro catches them and turns
//! them into a [`PluginError`] of kind [`ErrorKind::Panicked`].
//!
//! # Example
//!
//! ```
//! use b24_plugin_api::prelude::*;
//!
//! /// Counts the user-field events it has seen.
//! #[derive(Default)]
//! pub struct Counter {
//!     seen: std::sync::atomic::AtomicU64,
//! }
//!
//! impl Plugin for Counter {
//!     fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError> {
//!         self.seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
//!         if event.field_name.is_empty() {
//!             return Ok(Outcome::Skipped);
//!         }
//!         Ok(Outcome::Done)
//!     }
//! }
//!
//! export_plugin!(Counter);
//! ```
//!
//! [`prelude`] has the names a plugin needs. Settings come typed from
//! [`PluginContext::settings`] (or `export_plugin!(MyPlugin, settings)` for a plugin that is
//! nothing but its settings), log lines go through the host with [`Host::log`] or [`log`], and
//! the optional parts of an event read as `Option`s ([`UserFieldEvent::user`], ...). The
//! stable-ABI plumbing the host and the export macro use is in [`abi`].
//!
//! Unit tests of a plugin use the test kit, `testkit` (feature `testkit`, as a dev-dependency):
//! events exactly as the host delivers them, built from a few fields or decoded from a body as
//! Bitrix24 POSTs it, and a fake host that records logs and answers REST calls.
//!
//! # Versioning
//!
//! The host accepts a plugin when both were built against the same ABI line of this crate: the
//! same `MAJOR.MINOR` while the crate is `0.x` (see [`ABI_VERSION`]). Within a line, new functions
//! are only ever appended to the prefix types ([`PluginModule`], the host services), so a plugin
//! built against an older patch release keeps loading. Any other change starts a new line, and
//! the host refuses older plugins with an error that names the version to rebuild against.
//!
//! abi_stable checks every type layout when a plugin loads, but it refuses a host whose prefix
//! types are *longer* than the plugin's, so the two trait objects that may grow (the host
//! services handed to a plugin, the plugin instance handed back) cross the boundary in opaque
//! handles ([`abi::HostHandle`], [`abi::PluginHandle`]); every method appended to them has a
//! default body, which is what a plugin gets on a host older than the method.
//! [`abi::PluginModule`] and the event structs are checked field by field and never change
//! within a line.
//!
//! | release | change |
//! |---|---|
//! | 0.1.0 | first release; its host services could not grow (superseded) |
//! | 0.2.0 | the 0.2 line: host services and plugin instances in opaque, growable handles |
//! | 0.2.1 | appends `HostServices::rest` / [`Host::rest`]: Bitrix24 REST calls through the host |
//! | next | source only, no layout change: [`prelude`], [`abi`], typed settings ([`PluginContext::settings`], `export_plugin!(P, settings)`), [`log`], `Option` accessors, the `testkit` feature |

#![warn(missing_docs)]

mod error;
mod event;
mod export;
mod host;
pub mod log;
mod module;
mod plugin;
mod secret;
mod settings;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use error::{ErrorKind, Outcome, PluginError};
pub use event::{
    Action, AppStatus, Delivery, EXTRA_USER_ID, Entity, Event, KeyValue, Origin, Portal,
    USER_ID_UNKNOWN, UserAuth, UserFieldEvent,
};
pub use host::{Host, LogLevel, RestError, RestErrorKind};
pub use module::ABI_VERSION;
pub use plugin::{Create, Plugin, PluginContext};
pub use secret::Secret;

pub use abi_stable::std_types::{ROption, RString, RVec};

/// What a plugin author needs, in one `use b24_plugin_api::prelude::*;`.
pub mod prelude {
    pub use crate::{
        Action, Create, Delivery, Entity, ErrorKind, Event, Host, KeyValue, LogLevel, Origin,
        Outcome, Plugin, PluginContext, PluginError, Portal, RestError, Secret, UserAuth,
        UserFieldEvent, export_plugin,
    };
}

/// The stable-ABI side of the contract: the root module, the trait objects and the opaque
/// handles that cross the library boundary, and abi_stable's std types. The host and
/// [`crate::export_plugin!`] use these; a plugin author does not need them.
pub mod abi {
    pub use crate::host::{HostHandle, HostServices, HostServices_TO, HostServicesArc};
    pub use crate::module::{ABI_VERSION, PluginInfo, PluginModule, PluginModuleRef};
    pub use crate::plugin::{PluginBox, PluginHandle, PluginObj, PluginObj_TO};
    pub use abi_stable::std_types::{RBox, ROption, RResult, RStr, RString, RVec};
}

// The ABI names at their old root paths, for code written before `abi` (the host among it);
// kept off the front page.
#[doc(hidden)]
pub use abi::{
    HostHandle, HostServices, HostServices_TO, HostServicesArc, PluginBox, PluginHandle,
    PluginInfo, PluginModule, PluginModuleRef, PluginObj, PluginObj_TO, RBox, RResult, RStr,
};

#[doc(hidden)]
pub mod __private {
    //! Items the export macro expands to; not part of the public API.
    pub use crate::export::{
        guarded_create, guarded_create_from_settings, plugin_info, root_module,
    };
    pub use abi_stable;
}
