//! The [`export_plugin!`] macro and the panic-catching glue behind it.
//!
//! A panic that unwinds across an `extern "C"` function or a `#[sabi_trait]` method aborts the
//! whole host process. Everything here therefore runs plugin code inside `catch_unwind` and turns
//! a panic into a [`PluginError`] of kind [`ErrorKind::Panicked`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RResult, RStr, RString, RVec},
};

use serde::de::DeserializeOwned;

use crate::{
    ErrorKind, Event, Host, Outcome, Plugin, PluginContext, PluginError, UserFieldEvent,
    abi::{
        HostHandle, PluginHandle, PluginInfo, PluginModule, PluginModuleRef, PluginObj,
        PluginObj_TO,
    },
    log::with_host,
};

/// Exports a [`Plugin`] type as the root module of this library. Write it once, at the crate
/// root of a `cdylib`:
///
/// ```ignore
/// b24_plugin_api::export_plugin!(MyPlugin);            // made by `Create` (or `Default`)
/// b24_plugin_api::export_plugin!(MyPlugin, settings);  // read from its settings table
/// ```
///
/// The second form is for a plugin that is nothing but its settings: a `serde::Deserialize +
/// Default` type, read as [`PluginContext::settings`](crate::PluginContext::settings) reads it
/// (unknown keys refused, no table gives `Default`); it logs with [`crate::log`].
///
/// The plugin's name and version are the package's (`CARGO_PKG_NAME`, `CARGO_PKG_VERSION`); its
/// subscriptions and concurrency come from [`Plugin::EVENTS`] and [`Plugin::CONCURRENT`].
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        $crate::export_plugin!(@export $plugin, guarded_create);
    };
    ($plugin:ty, settings) => {
        $crate::export_plugin!(@export $plugin, guarded_create_from_settings);
    };
    (@export $plugin:ty, $create:ident) => {
        /// The abi_stable library header: the symbol the host looks up when it loads this file.
        #[unsafe(no_mangle)]
        pub static _1as_0lib_1header_0root_bmodule_bloader:
            $crate::__private::abi_stable::library::LibHeader = {
            extern "C" fn info() -> $crate::abi::PluginInfo {
                $crate::__private::plugin_info::<$plugin>(
                    env!("CARGO_PKG_NAME"),
                    env!("CARGO_PKG_VERSION"),
                )
            }
            extern "C" fn create(
                settings: $crate::abi::RStr<'_>,
                host: $crate::abi::HostHandle,
            ) -> $crate::abi::RResult<$crate::abi::PluginHandle, $crate::PluginError> {
                $crate::__private::$create::<$plugin>(env!("CARGO_PKG_NAME"), settings, host)
            }
            fn root_module() -> $crate::abi::PluginModuleRef {
                $crate::__private::root_module(info, create)
            }
            extern "C" fn load() -> $crate::__private::abi_stable::library::RootModuleResult {
                $crate::__private::abi_stable::library::__call_root_module_loader(root_module)
            }
            // SAFETY: `load` returns the root module of type `PluginModuleRef`, which is the
            // module type given here, and its layout is included for the loader to check.
            unsafe {
                $crate::__private::abi_stable::library::LibHeader::from_constructor::<
                    $crate::abi::PluginModuleRef,
                >(load, $crate::__private::abi_stable::library::CheckTypeLayout::Yes)
            }
        };
    };
}

/// Builds the [`PluginInfo`] of plugin `P`.
pub fn plugin_info<P: Plugin>(name: &str, version: &str) -> PluginInfo {
    PluginInfo {
        name: name.into(),
        version: version.into(),
        events: P::EVENTS.iter().map(|glob| RString::from(*glob)).collect::<RVec<_>>(),
        concurrent: P::CONCURRENT,
        api_version: env!("CARGO_PKG_VERSION").into(),
    }
}

/// Builds the root module from the two exported functions.
pub fn root_module(
    info: extern "C" fn() -> PluginInfo,
    create: extern "C" fn(RStr<'_>, HostHandle) -> RResult<PluginHandle, PluginError>,
) -> PluginModuleRef {
    PluginModule { info, create }.leak_into_prefix()
}

/// Creates plugin `P` through [`crate::Create`] with panics caught, and wraps it so that its
/// calls catch panics too.
pub fn guarded_create<P: Plugin>(
    name: &str,
    settings: RStr<'_>,
    host: HostHandle,
) -> RResult<PluginHandle, PluginError> {
    create_with::<P>(name, settings, host, P::create)
}

/// Creates plugin `P` from its settings table ([`PluginContext::settings`]), as
/// `export_plugin!(P, settings)` asks.
pub fn guarded_create_from_settings<P: Plugin + DeserializeOwned + Default>(
    name: &str,
    settings: RStr<'_>,
    host: HostHandle,
) -> RResult<PluginHandle, PluginError> {
    create_with::<P>(name, settings, host, |ctx| ctx.settings::<P>())
}

fn create_with<P: Plugin>(
    name: &str,
    settings: RStr<'_>,
    host: HostHandle,
    create: impl FnOnce(PluginContext) -> Result<P, PluginError>,
) -> RResult<PluginHandle, PluginError> {
    let host = Host::new(host.into_services());
    let ctx = PluginContext { name: name.to_owned(), settings: settings.as_str().to_owned(), host };
    let host = ctx.host.clone();
    match with_host(&host, || guard(|| create(ctx))) {
        Ok(plugin) => {
            ROk(PluginHandle::new(PluginObj_TO::from_value(Guarded { plugin, host }, TD_Opaque)))
        }
        Err(err) => RErr(err),
    }
}

/// A plugin whose every call runs inside `catch_unwind`, with its host current on the calling
/// thread ([`Host::current`], [`crate::log`]).
struct Guarded<P> {
    plugin: P,
    host: Host,
}

impl<P: Plugin> PluginObj for Guarded<P> {
    fn on_user_field(&self, event: &UserFieldEvent) -> RResult<Outcome, PluginError> {
        with_host(&self.host, || guard(|| self.plugin.on_user_field(event))).into()
    }

    fn on_event(&self, event: &Event) -> RResult<Outcome, PluginError> {
        with_host(&self.host, || guard(|| self.plugin.on_event(event))).into()
    }

    fn shutdown(&self) {
        let _ = with_host(&self.host, || {
            guard(|| {
                self.plugin.shutdown();
                Ok(())
            })
        });
    }
}

/// Runs `f`, turning a panic into a [`PluginError`] of kind [`ErrorKind::Panicked`] that carries
/// the panic message.
fn guard<T>(f: impl FnOnce() -> Result<T, PluginError>) -> Result<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(payload) => {
            let message = if let Some(s) = payload.downcast_ref::<&str>() {
                (*s).to_owned()
            } else if let Some(s) = payload.downcast_ref::<String>() {
                s.clone()
            } else {
                "panic with a non-string payload".to_owned()
            };
            Err(PluginError { kind: ErrorKind::Panicked, message: message.into() })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exported_symbol_is_the_one_abi_stable_looks_up() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn a_panic_becomes_a_panicked_error_with_its_message() {
        let err = guard::<()>(|| panic!("boom {}", 42)).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Panicked);
        assert_eq!(err.message.as_str(), "boom 42");
    }
}
