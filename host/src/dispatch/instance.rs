//! One plugin's live instance: created from its library, re-created after a panic, shut down
//! at the end.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicU8, Ordering},
};

use b24_plugin_api::{HostServicesArc, PluginBox};

use crate::loader::{LoadError, LoadedPlugin};

/// Health of a plugin as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PluginStatus {
    /// Loaded and answering within its timeout.
    Ready = 0,
    /// Its last call ran past `timeout_ms`.
    Degraded = 1,
}

/// A created plugin and what it takes to create it again.
pub struct Instance {
    plugin: LoadedPlugin,
    settings: String,
    host: HostServicesArc,
    current: Mutex<Arc<PluginBox>>,
    status: AtomicU8,
    shut_down: AtomicBool,
}

impl Instance {
    /// Creates the first instance of `plugin`.
    pub fn create(
        plugin: LoadedPlugin,
        settings: String,
        host: HostServicesArc,
    ) -> Result<Instance, LoadError> {
        let first = plugin.create(&settings, host.clone())?;
        Ok(Instance {
            plugin,
            settings,
            host,
            current: Mutex::new(Arc::new(first)),
            status: AtomicU8::new(PluginStatus::Ready as u8),
            shut_down: AtomicBool::new(false),
        })
    }

    /// The library this instance comes from.
    pub fn plugin(&self) -> &LoadedPlugin {
        &self.plugin
    }

    /// The instance to call now.
    pub fn current(&self) -> Arc<PluginBox> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the instance with a fresh one (after a panic); the old one is shut down once
    /// its last call has finished.
    pub fn recreate(&self) -> Result<(), LoadError> {
        let fresh = Arc::new(self.plugin.create(&self.settings, self.host.clone())?);
        let old =
            std::mem::replace(&mut *self.current.lock().unwrap_or_else(|p| p.into_inner()), fresh);
        if let Some(old) = Arc::into_inner(old) {
            let _output = crate::plugin_output::in_plugin(&self.plugin.name);
            old.shutdown();
        }
        Ok(())
    }

    /// Calls the plugin's `shutdown` (blocking), once.
    pub fn shutdown(&self) {
        if !self.shut_down.swap(true, Ordering::SeqCst) {
            let _output = crate::plugin_output::in_plugin(&self.plugin.name);
            self.current().shutdown();
        }
    }

    /// The current health.
    pub fn status(&self) -> PluginStatus {
        match self.status.load(Ordering::Relaxed) {
            1 => PluginStatus::Degraded,
            _ => PluginStatus::Ready,
        }
    }

    /// Sets the health; returns the previous one.
    pub fn set_status(&self, status: PluginStatus) -> PluginStatus {
        match self.status.swap(status as u8, Ordering::Relaxed) {
            1 => PluginStatus::Degraded,
            _ => PluginStatus::Ready,
        }
    }
}

impl Drop for Instance {
    /// An instance replaced by a reload goes when its last call has finished: shut it down then.
    fn drop(&mut self) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let current = self.current();
        let name = self.plugin.name.clone();
        let version = self.plugin.version.clone();
        let shut = move || {
            let output = crate::plugin_output::in_plugin(&name);
            current.shutdown();
            drop(output);
            tracing::info!(plugin = %name, %version, "replaced plugin instance shut down");
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(shut);
            }
            Err(_) => shut(),
        }
    }
}
