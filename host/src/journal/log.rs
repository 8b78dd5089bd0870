//! The journal's face for the event log: appends (ingress, the offline pollers), each
//! plugin's [`Consumer`] (what its worker delivers and reports through), the in-flight
//! record's look-ups, and the host's last steps (close, flush, finish).

use std::sync::Arc;

use super::{
    Appended, Backend, Consumer, EventRecord, Pending, PortalChange, State, StoreError,
    consume::{ConsumerBackend, PauseHandle},
    dedup::DedupKey,
};

/// The event log, whichever backend holds it.
#[derive(Clone)]
pub struct Log {
    pub(super) backend: Backend,
    /// Where a plugin's consumer finds its pause.
    pub(super) state: State,
}

impl Log {
    /// Journals `record` (built once by ingress: `decode::record`) under its duplicate key
    /// `key` for `plugins`, with what it changes of its portal's state (written with it),
    /// durably. Returns once it is
    /// durable, or says it was a duplicate.
    pub async fn append(
        &self,
        record: EventRecord,
        key: DedupKey,
        plugins: Vec<Arc<str>>,
        change: Option<PortalChange>,
    ) -> Result<Appended, StoreError> {
        let record = Box::new(record);
        let change = change.filter(|c| !c.is_empty());
        match &self.backend {
            Backend::Embedded(j) => j.append(record, key, plugins, change, false).await,
            Backend::Nats(j) => j.append(record, key, plugins, change, false).await,
        }
    }

    /// Journals a row pulled from a portal's offline queue (the record's body is its JSON
    /// payload), keyed by the row's message id and state (`offline::row_key`): the same row
    /// pulled again after a crash is a duplicate however long ago the first pull was.
    pub async fn append_offline(
        &self,
        record: EventRecord,
        key: DedupKey,
        plugins: Vec<Arc<str>>,
    ) -> Result<Appended, StoreError> {
        let record = Box::new(record);
        match &self.backend {
            Backend::Embedded(j) => j.append(record, key, plugins, None, true).await,
            Backend::Nats(j) => j.append(record, key, plugins, None, true).await,
        }
    }

    /// `plugin`'s pending state of event `id`, if the event is pending for it.
    pub async fn pending(&self, plugin: &str, id: u64) -> Result<Option<Pending>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.pending(plugin, id),
            Backend::Nats(j) => j.pending(plugin, id).await,
        }
    }

    /// Waits until everything reported so far is durable.
    pub async fn flush(&self) {
        match &self.backend {
            Backend::Embedded(j) => j.flush().await,
            Backend::Nats(j) => j.flush().await,
        }
    }

    /// Makes everything durable and closes the storage cleanly: the host's last step (later
    /// outcomes are lost, as after a crash: redelivered).
    pub async fn finish(&self) {
        match &self.backend {
            Backend::Embedded(j) => j.finish().await,
            Backend::Nats(j) => j.finish().await,
        }
    }

    /// The consumer of `plugin`'s pending events. One per plugin. It and its lanes honour the
    /// plugin's pause (read now if this process does not know it yet: a plugin enabled by a
    /// reload; on the NATS backend the watch has brought every stored pause already).
    pub fn consumer(&self, plugin: &str) -> Consumer {
        let gate = self.state.gate(plugin);
        let backend = match &self.backend {
            Backend::Embedded(j) => ConsumerBackend::Embedded(j.consumer(plugin)),
            Backend::Nats(j) => ConsumerBackend::Nats(j.consumer(plugin)),
        };
        Consumer {
            backend,
            pause: PauseHandle { plugin: Arc::from(plugin), gate, state: self.state.clone() },
        }
    }

    /// Stops handing out events: consumers return `None` from now on.
    pub fn close(&self) {
        match &self.backend {
            Backend::Embedded(j) => j.close(),
            Backend::Nats(j) => j.close(),
        }
    }
}
