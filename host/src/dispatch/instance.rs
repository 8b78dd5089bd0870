//! One plugin's live instance, wherever its code runs: inside the host (`in-process`: created
//! from its library, re-created after a panic) or in a runner process (`process`: the runner
//! does both, see [`crate::runner`]; an exec plugin's program is a runner too) or at an HTTP
//! endpoint (an http plugin, [`crate::forward`]). The worker calls either kind through this one type, so
//! retries, back-off, order, timeouts, metrics and outcomes are one code path.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU8, Ordering},
    },
    time::Duration,
};

use b24_plugin_api::{HostServicesArc, PluginBox};

use crate::{
    call::Local,
    forward::HttpTarget,
    loader::{LoadError, LoadedPlugin, PluginMeta},
    runner::RunnerHandle,
};

/// Health of a plugin as the host sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PluginStatus {
    /// Loaded and answering within its timeout.
    Ready = 0,
    /// Its last call ran past `timeout_ms`.
    Degraded = 1,
}

/// Where the plugin's code runs.
pub enum Kind {
    /// In this process.
    Local(Local),
    /// In a runner process (a library's runner, or an exec plugin's program).
    Runner(RunnerHandle),
    /// At an HTTP endpoint (an http plugin).
    Http(HttpTarget),
}

/// A created plugin and what it takes to create it again.
pub struct Instance {
    meta: PluginMeta,
    kind: Kind,
    status: AtomicU8,
    shut_down: AtomicBool,
}

impl Instance {
    /// Creates the first instance of `plugin` in this process.
    pub fn create(
        plugin: LoadedPlugin,
        settings: String,
        host: HostServicesArc,
    ) -> Result<Instance, LoadError> {
        let local = Local::create(plugin, settings, host)?;
        Ok(Instance::new(local.meta().clone(), Kind::Local(local)))
    }

    /// The instance a runner process holds.
    pub fn in_runner(runner: RunnerHandle) -> Instance {
        Instance::new(runner.meta().clone(), Kind::Runner(runner))
    }

    fn new(meta: PluginMeta, kind: Kind) -> Instance {
        Instance {
            meta,
            kind,
            status: AtomicU8::new(PluginStatus::Ready as u8),
            shut_down: AtomicBool::new(false),
        }
    }

    /// An http plugin's instance: its target.
    pub fn http(meta: PluginMeta, target: HttpTarget) -> Instance {
        Instance::new(meta, Kind::Http(target))
    }

    /// The target, for an http plugin.
    pub fn target(&self) -> Option<&HttpTarget> {
        match &self.kind {
            Kind::Http(target) => Some(target),
            _ => None,
        }
    }

    /// What the host knows of the plugin's library.
    pub fn info(&self) -> &PluginMeta {
        &self.meta
    }

    /// The runner, for a plugin in process isolation.
    pub fn runner(&self) -> Option<&RunnerHandle> {
        match &self.kind {
            Kind::Runner(runner) => Some(runner),
            Kind::Local(_) | Kind::Http(_) => None,
        }
    }

    /// The instance to call now (in-process plugins only; `None` for a runner).
    pub fn current(&self) -> Option<Arc<PluginBox>> {
        match &self.kind {
            Kind::Local(local) => Some(local.current()),
            Kind::Runner(_) | Kind::Http(_) => None,
        }
    }

    /// The plugin created in this process (in-process plugins only).
    pub fn local(&self) -> Option<&Local> {
        match &self.kind {
            Kind::Local(local) => Some(local),
            Kind::Runner(_) | Kind::Http(_) => None,
        }
    }

    /// Replaces the instance with a fresh one (after a panic); the old one is shut down once
    /// its last call has finished. A runner re-creates its instance itself.
    pub fn recreate(&self) -> Result<(), LoadError> {
        let Kind::Local(local) = &self.kind else { return Ok(()) };
        local.recreate()
    }

    /// Calls the plugin's `shutdown` (blocking), once. A runner is told to finish its calls,
    /// shut the plugin down and exit, within `grace`.
    pub fn shutdown_within(&self, grace: Duration) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        match &self.kind {
            Kind::Local(local) => local.shutdown(),
            Kind::Runner(runner) => runner.shutdown(grace),
            Kind::Http(_) => {}
        }
    }

    /// [`Instance::shutdown_within`] with the default grace for a runner.
    pub fn shutdown(&self) {
        self.shutdown_within(crate::runner::SHUTDOWN_GRACE);
    }

    /// Ends the plugin's calls now, at the end of the host's shutdown grace: a runner is killed
    /// (its calls' events stay pending). An in-process call cannot be stopped; this does
    /// nothing for it.
    pub fn stop_now(&self) {
        if let Kind::Runner(runner) = &self.kind {
            runner.stop_now();
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
    /// An instance replaced by a reload goes when its last call has finished: shut it down then
    /// (a runner is drained and stopped).
    fn drop(&mut self) {
        if self.shut_down.swap(true, Ordering::SeqCst) {
            return;
        }
        let name = self.meta.name.clone();
        let version = self.meta.version.clone();
        let shut: Box<dyn FnOnce() + Send> = match &self.kind {
            Kind::Local(_) => {
                let Some(current) = self.current() else { return };
                Box::new(move || {
                    let output = crate::plugin_output::in_plugin(&name);
                    current.shutdown();
                    drop(output);
                    tracing::info!(plugin = %name, %version, "replaced plugin instance shut down");
                })
            }
            Kind::Runner(runner) => {
                let runner = runner.clone();
                Box::new(move || {
                    runner.shutdown(crate::runner::SHUTDOWN_GRACE);
                    tracing::info!(plugin = %name, %version, "replaced plugin runner shut down");
                })
            }
            Kind::Http(_) => return,
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn_blocking(shut);
            }
            Err(_) => shut(),
        }
    }
}
