//! The host's side of [`b24_plugin_api::HostServices`]: what a plugin can ask of the host.

use std::{path::Path, sync::Arc};

use crate::rest::{self, RestClient};

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
    rest: Option<(Arc<RestClient>, tokio::runtime::Handle)>,
}

impl HostServices for PluginHost {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let plugin = &*self.plugin;
        // A line the log level hides costs nothing of the plugin's budget.
        if !enabled(level) || !crate::plugin_output::admit(plugin) {
            return;
        }
        let message = crate::plugin_output::clip(
            message.as_str(),
            crate::plugin_output::limits().max_line_bytes,
        );
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

    fn rest(&self, method: RStr<'_>, params: RStr<'_>) -> RResult<RString, RestError> {
        let Some((client, handle)) = &self.rest else {
            return RResult::RErr(RestError {
                kind: RestErrorKind::Usage,
                status: 0,
                error: "NOT_AVAILABLE".into(),
                description: "REST calls are only available while the host serves".into(),
            });
        };
        match rest::call_blocking(client, handle, method.as_str(), params.as_str()) {
            Ok(result) => RResult::ROk(result.into()),
            Err(e) => {
                tracing::debug!(target: "plugin", plugin = &*self.plugin, %method, error = %e.error, "REST call failed");
                RResult::RErr(e)
            }
        }
    }
}

/// Whether the log writes a plugin's line at `level`.
pub fn enabled(level: LogLevel) -> bool {
    match level {
        LogLevel::Error => tracing::enabled!(target: "plugin", tracing::Level::ERROR),
        LogLevel::Warn => tracing::enabled!(target: "plugin", tracing::Level::WARN),
        LogLevel::Info => tracing::enabled!(target: "plugin", tracing::Level::INFO),
        LogLevel::Debug => tracing::enabled!(target: "plugin", tracing::Level::DEBUG),
        LogLevel::Trace => tracing::enabled!(target: "plugin", tracing::Level::TRACE),
    }
}

/// The host services for plugin `plugin`; REST calls need the client and the runtime to run
/// them on (`None` in `check`).
pub fn for_plugin(
    plugin: &str,
    config_dir: &Path,
    state_dir: &Path,
    rest: Option<(Arc<RestClient>, tokio::runtime::Handle)>,
) -> HostServicesArc {
    let host = PluginHost {
        plugin: plugin.into(),
        config_dir: config_dir.display().to_string().into(),
        state_dir: state_dir.display().to_string().into(),
        rest,
    };
    HostServices_TO::from_ptr(RArc::new(host), TD_Opaque)
}
