//! Delivery from the log: one durable pull consumer per plugin, its `Consumer`, `Reporter`
//! and `Stopper`.
//!
//! STUB: to be written (issue 12, item 2).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use super::connect::Link;
use crate::config::JournalConfig;
use crate::journal::{Delivery, StoreError, record::{DeadLetter, Pending}};

/// What the consumers share.
pub(super) struct Shared {
    closed: Arc<AtomicBool>,
}

impl Shared {
    pub async fn open(
        link: &Link,
        config: &JournalConfig,
        plugins: &[String],
    ) -> Result<Shared, StoreError> {
        let _ = (link, config, plugins);
        Ok(Shared { closed: Arc::default() })
    }

    pub fn damaged(&self) -> u64 {
        0
    }

    pub async fn pending(
        &self,
        link: &Link,
        plugin: &str,
        id: u64,
    ) -> Result<Option<Pending>, StoreError> {
        let _ = (link, plugin, id);
        Ok(None)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }
}

/// One plugin's consumer.
pub struct Consumer {
    plugin: Arc<str>,
    stopped: Arc<AtomicBool>,
}

impl Consumer {
    pub(super) fn new(link: Link, shared: &Shared, plugin: &str) -> Consumer {
        let _ = (link, shared);
        Consumer { plugin: Arc::from(plugin), stopped: Arc::default() }
    }

    pub fn plugin(&self) -> &Arc<str> {
        &self.plugin
    }

    pub fn stopper(&self) -> Stopper {
        Stopper { stopped: self.stopped.clone() }
    }

    pub async fn next(&mut self) -> Option<Delivery> {
        None
    }

    pub fn reporter(&self) -> Reporter {
        Reporter {}
    }
}

/// Stops one consumer.
#[derive(Clone)]
pub struct Stopper {
    stopped: Arc<AtomicBool>,
}

impl Stopper {
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

/// Reports one plugin's outcomes: acks on the log.
#[derive(Clone)]
pub struct Reporter {}

impl Reporter {
    pub async fn closed(&self) {
        std::future::pending::<()>().await
    }

    pub fn is_closed(&self) -> bool {
        false
    }

    pub fn is_skipped(&self, id: u64) -> bool {
        let _ = id;
        false
    }

    pub fn take_skipped(&self, id: u64) -> bool {
        let _ = id;
        false
    }

    pub fn complete(&self, id: u64) {
        let _ = id;
    }

    pub fn update(&self, id: u64, state: Pending) {
        let _ = (id, state);
    }

    pub fn bury(&self, id: u64, dead: DeadLetter) {
        let _ = (id, dead);
    }
}
