//! The root module every plugin library exports, and the ABI version check.

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    sabi_types::VersionStrings,
    std_types::{RResult, RStr, RString, RVec},
};

use crate::{HostHandle, PluginError, PluginHandle};

/// The ABI line of this crate: `MAJOR.MINOR.0` of its version. The host loads a plugin only when
/// the plugin was built against the same line.
pub const ABI_VERSION: &str =
    concat!(env!("CARGO_PKG_VERSION_MAJOR"), ".", env!("CARGO_PKG_VERSION_MINOR"), ".0");

/// Static facts about a plugin, read before it is created.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// The plugin's name (its package name); the library file must be named after it.
    pub name: RString,
    /// The plugin's own version (its package version).
    pub version: RString,
    /// The event-code globs it subscribes to.
    pub events: RVec<RString>,
    /// Whether the host may call it from several threads at once.
    pub concurrent: bool,
    /// The exact `b24-plugin-api` version it was built against.
    pub api_version: RString,
}

/// The root module of a plugin library. Built by [`crate::export_plugin!`].
///
/// This is a prefix type: later releases of an ABI line append fields after `create`, and the
/// host reads those as optional.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModuleRef)))]
pub struct PluginModule {
    /// The plugin's static facts.
    pub info: extern "C" fn() -> PluginInfo,

    /// Creates an instance from its settings (TOML text) and the host services. Panics inside
    /// are caught and returned as [`crate::ErrorKind::Panicked`].
    #[sabi(last_prefix_field)]
    pub create:
        extern "C" fn(settings: RStr<'_>, host: HostHandle) -> RResult<PluginHandle, PluginError>,
}

impl RootModule for PluginModuleRef {
    declare_root_module_statics! {PluginModuleRef}

    const BASE_NAME: &'static str = "b24_plugin";
    const NAME: &'static str = "b24 plugin";
    const VERSION_STRINGS: VersionStrings = abi_version_strings();
}

const fn abi_version_strings() -> VersionStrings {
    // Not `package_version_strings!`: that would stamp the full crate version, and abi_stable's
    // check would then refuse plugins built against an older patch release of the same line.
    VersionStrings::new(ABI_VERSION)
}
