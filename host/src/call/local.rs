//! A plugin created inside this process, and the one guarded call of its code.

use std::sync::{Arc, Mutex};

use b24_plugin_api::{ErrorKind, HostServicesArc, Outcome, PluginBox, PluginError};

use super::{
    Envelope,
    convert::{PluginEvent, plugin_event},
};
use crate::loader::{LoadError, LoadedPlugin, PluginMeta};

/// A plugin created inside this process (the host's, for `isolation = "in-process"`, or a
/// runner's), with what it takes to create it again.
pub struct Local {
    plugin: LoadedPlugin,
    settings: String,
    host: HostServicesArc,
    current: Mutex<Arc<PluginBox>>,
}

impl Local {
    /// Creates the first instance of `plugin`.
    pub fn create(
        plugin: LoadedPlugin,
        settings: String,
        host: HostServicesArc,
    ) -> Result<Local, LoadError> {
        let first = plugin.create(&settings, host.clone())?;
        Ok(Local { plugin, settings, host, current: Mutex::new(Arc::new(first)) })
    }

    /// What the host knows of the plugin's library.
    pub fn meta(&self) -> &PluginMeta {
        &self.plugin.meta
    }

    /// The instance to call now.
    pub fn current(&self) -> Arc<PluginBox> {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Calls the plugin with event `envelope` (attempt `attempt`), guarded: the event's view is
    /// built and the plugin called inside `catch_unwind`, so a panic of the host's conversion
    /// code costs one attempt, not the lane (the plugin's own panics are caught on its side,
    /// by `export_plugin!`); either kind of panic is [`ErrorKind::Panicked`]. The caller
    /// re-creates the instance after one ([`Local::recreate`]).
    /// A journaled body that does not decode is rejected (a dead letter) without a call.
    pub fn call(&self, envelope: &Envelope, attempt: u32) -> Result<Outcome, PluginError> {
        let event = match envelope.event() {
            Ok(event) => event,
            Err(e) => {
                return Err(PluginError::reject(format!("cannot decode the journaled body: {e}")));
            }
        };
        let plugin = self.current();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match &plugin_event(envelope, event, attempt) {
                PluginEvent::UserField(e) => plugin.on_user_field(e).into_result(),
                PluginEvent::Generic(e) => plugin.on_event(e).into_result(),
            }
        }))
        .unwrap_or_else(|_| {
            Err(PluginError {
                kind: ErrorKind::Panicked,
                message: "panicked while calling the plugin (outside the plugin's code)".into(),
            })
        })
    }

    /// Replaces the instance with a fresh one (after a panic); the old one is shut down once
    /// its last call has finished.
    pub fn recreate(&self) -> Result<(), LoadError> {
        let fresh = Arc::new(self.plugin.create(&self.settings, self.host.clone())?);
        let old =
            std::mem::replace(&mut *self.current.lock().unwrap_or_else(|p| p.into_inner()), fresh);
        if let Some(old) = Arc::into_inner(old) {
            let _output = crate::plugin_output::in_plugin(&self.plugin.meta.name);
            old.shutdown();
        }
        Ok(())
    }

    /// Calls the plugin's `shutdown` (blocking), its output logged under its name.
    pub fn shutdown(&self) {
        let _output = crate::plugin_output::in_plugin(&self.plugin.meta.name);
        self.current().shutdown();
    }
}
