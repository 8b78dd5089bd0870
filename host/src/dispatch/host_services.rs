//! The host's side of [`b24_plugin_api::HostServices`]: what a plugin can ask of the host.

use std::{path::Path, sync::Arc};

use abi_stable::std_types::RResult;
use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RStr, RString},
};
use b24_plugin_api::{
    HostServices, HostServices_TO, HostServicesArc, LogLevel, RestError, RestErrorKind,
};

/// The services given to one plugin; its log lines carry its name.
#[derive(Clone)]
struct PluginHost {
    plugin: Arc<str>,
    config_dir: RString,
    state_dir: RString,
}

impl HostServices for PluginHost {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let plugin = &*self.plugin;
        let message = message.as_str();
        match level {
            LogLevel::Error => tracing::error!(target: "plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
        }
    }

    fn config_dir(&self) -> RString {
        self.config_dir.clone()
    }

    fn state_dir(&self) -> RString {
        self.state_dir.clone()
    }

    fn rest(&self, _method: RStr<'_>, _params: RStr<'_>) -> RResult<RString, RestError> {
        RResult::RErr(RestError {
            kind: RestErrorKind::Usage,
            status: 0,
            error: "NOT_CONFIGURED".into(),
            description: "REST calls are not available yet".into(),
        })
    }
}

/// The host services for plugin `plugin`.
pub fn for_plugin(plugin: &str, config_dir: &Path, state_dir: &Path) -> HostServicesArc {
    let host = PluginHost {
        plugin: plugin.into(),
        config_dir: config_dir.display().to_string().into(),
        state_dir: state_dir.display().to_string().into(),
    };
    HostServices_TO::from_ptr(RArc::new(host), TD_Opaque)
}
