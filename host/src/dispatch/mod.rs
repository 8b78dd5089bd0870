//! Dispatch: one worker per enabled plugin takes that plugin's events from the queue and calls
//! the plugin. A slow, failing or panicking plugin only ever delays itself.
//!
//! - [`route`]: which events a plugin receives.
//! - [`convert`]: decoded event -> stable-ABI view.
//! - [`instance`]: the live plugin instance, re-created after a panic.
//! - [`worker`]: ordered delivery, timeouts, retries with back-off.
//! - [`host_services`]: what plugins can ask of the host.

pub mod convert;
pub mod host_services;
pub mod instance;
pub mod route;
pub mod worker;

use std::{sync::Arc, time::Duration};

use tokio::task::JoinSet;

use crate::queue::Queue;
pub use instance::{Instance, PluginStatus};
pub use route::Route;
pub use worker::Worker;

/// The running workers.
pub struct Dispatcher {
    workers: Vec<Arc<Worker>>,
    running: JoinSet<()>,
}

impl Dispatcher {
    /// Starts one worker per plugin, each with its own consumer of `queue`.
    pub fn start(workers: Vec<Worker>, queue: &Queue) -> Dispatcher {
        let workers: Vec<Arc<Worker>> = workers.into_iter().map(Arc::new).collect();
        let mut running = JoinSet::new();
        for worker in &workers {
            running.spawn(worker.clone().run(queue.consumer()));
        }
        Dispatcher { workers, running }
    }

    /// After the queue is closed: lets the workers deliver what is queued for up to `grace`,
    /// then stops them and calls every plugin's `shutdown`.
    pub async fn finish(mut self, grace: Duration) {
        let drained = tokio::time::timeout(grace, async {
            while self.running.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "deliveries still running at the end of the shutdown grace period; stopping them"
            );
            self.running.shutdown().await;
        }
        for worker in self.workers {
            let instance = worker.instance.clone();
            let name = worker.name.clone();
            match tokio::task::spawn_blocking(move || instance.shutdown()).await {
                Ok(()) => tracing::info!(plugin = %name, "plugin shut down"),
                Err(e) => tracing::error!(plugin = %name, "plugin shutdown failed: {e}"),
            }
        }
    }
}
