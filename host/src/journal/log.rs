//! The journal's face for the event log: appends (ingress, the offline pollers), each
//! plugin's [`Consumer`] (what its worker delivers and reports through), the in-flight
//! record's look-ups, and the host's last steps (close, flush, finish).

use std::sync::Arc;

use b24_plugin_api::Secret;
use bytes::Bytes;

use super::{
    Appended, Backend, Consumer, EventMeta, EventRecord, Pending, Source, State, StoreError,
    consume::{ConsumerBackend, PauseHandle},
    dedup, now_ms,
};
use crate::decode::{BodyFormat, Decoded};

fn record(
    raw: Bytes,
    format: BodyFormat,
    event: &Decoded,
    source: Source,
    key: &dedup::DedupKey,
    extra: Vec<(String, String)>,
) -> EventRecord {
    EventRecord {
        meta: EventMeta {
            received_at_ms: now_ms(),
            format: format.into(),
            source,
            code: event.code.clone(),
            member_id: event.auth.member_id.clone(),
            domain: event.auth.domain.clone(),
            dedup_key: dedup::hex(key),
            extra,
        },
        raw,
    }
}
/// The event log, whichever backend holds it.
#[derive(Clone)]
pub struct Log {
    pub(super) backend: Backend,
    /// Where a plugin's consumer finds its pause.
    pub(super) state: State,
}

impl Log {
    /// Journals `event` (received as `raw` in `format`) for `plugins`, with an optional token
    /// change, durably. Returns once it is durable, or says it was a duplicate.
    pub async fn append(
        &self,
        raw: Bytes,
        format: BodyFormat,
        event: &Decoded,
        plugins: Vec<Arc<str>>,
        token: Option<(String, Option<Secret>)>,
    ) -> Result<Appended, StoreError> {
        let key = dedup::key(event);
        let record = Box::new(record(raw, format, event, Source::Online, &key, Vec::new()));
        match &self.backend {
            Backend::Embedded(j) => j.append(record, key, plugins, token, false).await,
            Backend::Nats(j) => j.append(record, key, plugins, token, false).await,
        }
    }

    /// Journals a row pulled from a portal's offline queue (`raw` is its JSON payload), keyed by
    /// `row_key` (the row's message id and state): the same row pulled again after a crash is
    /// a duplicate however long ago the first pull was.
    pub async fn append_offline(
        &self,
        raw: Bytes,
        event: &Decoded,
        plugins: Vec<Arc<str>>,
        row_key: &str,
        extra: Vec<(String, String)>,
    ) -> Result<Appended, StoreError> {
        let key = dedup::key_of(&[b"offline", event.auth.member_id.as_bytes(), row_key.as_bytes()]);
        let record = Box::new(record(raw, BodyFormat::Json, event, Source::Offline, &key, extra));
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
