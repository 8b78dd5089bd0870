//! The plugin traits: [`Plugin`] and [`Create`], which plugin authors implement, and
//! [`PluginObj`], the stable-ABI trait object the host calls (built by [`crate::export_plugin!`]).

// `#[sabi_trait]` expands to impls that rustc flags as non-local; they are abi_stable's, not ours.
#![allow(non_local_definitions)]

use abi_stable::{
    sabi_trait,
    std_types::{RBox, RResult},
};

use crate::{Event, Host, Outcome, PluginError, UserFieldEvent};

/// What a plugin gets when the host creates it. `Debug` shows the settings' length only: they
/// may hold credentials.
#[derive(Clone)]
pub struct PluginContext {
    /// The plugin's name (its package name), for messages.
    pub name: String,
    /// The plugin's own settings: the `[plugin.<name>.settings]` table of `host.toml`, as TOML
    /// text (empty when there is none). Read them with [`PluginContext::settings`], which
    /// checks them against your type.
    pub settings: String,
    /// The plugin's handle on the host.
    pub host: Host,
}

impl std::fmt::Debug for PluginContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginContext")
            .field("name", &self.name)
            .field("settings", &format_args!("<{} bytes of TOML>", self.settings.len()))
            .field("host", &self.host)
            .finish()
    }
}

/// How a plugin instance is made. Types that implement `Default` get this for free; implement it
/// yourself to read settings ([`PluginContext::settings`]) or keep the [`Host`] handle. A plugin
/// that is nothing but its settings needs neither: export it with
/// `export_plugin!(MyPlugin, settings)` (see [`crate::export_plugin!`]).
pub trait Create: Sized {
    /// Creates the plugin. An `Err` stops the plugin from loading; its message is shown to the
    /// operator, so say what is wrong with the settings.
    fn create(ctx: PluginContext) -> Result<Self, PluginError>;
}

impl<T: Default> Create for T {
    fn create(_ctx: PluginContext) -> Result<Self, PluginError> {
        Ok(T::default())
    }
}

/// A b24-host plugin. Implement [`Plugin::on_user_field`] and export the type with
/// [`crate::export_plugin!`].
///
/// Calls come from the host's worker threads. Unless [`Plugin::CONCURRENT`] is `true`, the host
/// makes one call at a time, in the order the events arrived.
pub trait Plugin: Create + Send + Sync + 'static {
    /// Event codes this plugin wants, as case-insensitive globs (`*` and `?`). The host's config
    /// can narrow this list further but never widen it.
    const EVENTS: &'static [&'static str] = &["ONCRM*USERFIELD*"];

    /// Whether the host may call this plugin from several threads at once.
    const CONCURRENT: bool = false;

    /// Handles one user-field event.
    fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError>;

    /// Handles any other subscribed event. The default skips it.
    fn on_event(&self, event: &Event) -> Result<Outcome, PluginError> {
        let _ = event;
        Ok(Outcome::Skipped)
    }

    /// Called once before the host stops or replaces this instance; flush files here.
    fn shutdown(&self) {}
}

/// The stable-ABI face of a plugin instance, as the host sees it (in [`crate::abi`]). Plugin
/// authors do not implement this: [`crate::export_plugin!`] wraps a [`Plugin`] in it and catches
/// panics.
#[sabi_trait]
pub trait PluginObj: Send + Sync {
    /// See [`Plugin::on_user_field`].
    fn on_user_field(&self, event: &UserFieldEvent) -> RResult<Outcome, PluginError>;

    /// See [`Plugin::on_event`].
    fn on_event(&self, event: &Event) -> RResult<Outcome, PluginError>;

    /// See [`Plugin::shutdown`].
    #[sabi(last_prefix_field)]
    fn shutdown(&self);
}

/// A boxed plugin instance.
pub type PluginBox = PluginObj_TO<'static, RBox<()>>;

/// A plugin instance as it crosses the ABI out of `create`: opaque to the load-time check for
/// the same reason as [`crate::abi::HostHandle`], so that methods appended to [`PluginObj`] (each
/// with a default) do not break older plugins.
#[repr(C)]
#[derive(abi_stable::StableAbi)]
#[sabi(unsafe_opaque_fields)]
pub struct PluginHandle {
    plugin: PluginBox,
}

impl PluginHandle {
    /// Wraps an instance (plugin side).
    pub fn new(plugin: PluginBox) -> PluginHandle {
        PluginHandle { plugin }
    }

    /// The instance (host side).
    pub fn into_plugin(self) -> PluginBox {
        self.plugin
    }
}
