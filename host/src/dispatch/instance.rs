//! One plugin's live instance: created from its library, re-created after a panic, shut down
//! at the end.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU8, Ordering},
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
            old.shutdown();
        }
        Ok(())
    }

    /// Calls the plugin's `shutdown` (blocking).
    pub fn shutdown(&self) {
        self.current().shutdown();
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
