//! Dispatch: one worker per loaded plugin takes that plugin's pending events from the journal
//! and calls the plugin. A slow, failing or panicking plugin only ever delays itself.
//!
//! - [`convert`]: decoded event -> stable-ABI view.
//! - [`instance`]: the live plugin instance, re-created after a panic.
//! - [`worker`]: ordered delivery, timeouts, retries with back-off.
//! - [`host_services`]: what plugins can ask of the host.

pub mod convert;
pub mod host_services;
pub mod instance;
pub mod worker;

use std::{sync::Arc, time::Duration};

use tokio::task::JoinSet;

use crate::journal::Journal;
pub use instance::{Instance, PluginStatus};
pub use worker::Worker;

/// The running workers.
pub struct Dispatcher {
    workers: Vec<Arc<Worker>>,
    running: JoinSet<()>,
}

impl Dispatcher {
    /// Starts one worker per plugin, each with its own consumer of `journal`.
    pub fn start(workers: Vec<Worker>, journal: &Journal) -> Dispatcher {
        let workers: Vec<Arc<Worker>> = workers.into_iter().map(Arc::new).collect();
        let mut running = JoinSet::new();
        for worker in &workers {
            running.spawn(worker.clone().run(journal.consumer(&worker.name)));
        }
        Dispatcher { workers, running }
    }

    /// After the journal is closed: lets calls in flight finish for up to `grace`, then stops
    /// the workers and calls every plugin's `shutdown`. Undelivered events stay in the journal.
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
