//! [`Envelope`]: one event on its way to one plugin: the journal's id and the stored record,
//! decoded only when something asks for the decoded event (an in-process call, an exec
//! plugin's JSON, a route filter on a record older than its metadata). A plugin in a runner
//! gets the record's bytes and decodes them there, so the host never decodes for it.

use std::sync::OnceLock;

use crate::{
    decode::{self, DecodeError, Decoded},
    record::{EventMeta, EventRecord},
};

/// One event for one plugin.
#[derive(Debug)]
pub struct Envelope {
    /// The journal's id for the event: stable across retries and restarts.
    pub id: u64,
    /// The event as journaled: its metadata and its body as received (tokens blanked).
    pub record: EventRecord,
    decoded: OnceLock<Result<Decoded, DecodeError>>,
}

impl Envelope {
    /// The event `id` journaled as `record`, not decoded yet.
    pub fn new(id: u64, record: EventRecord) -> Envelope {
        Envelope { id, record, decoded: OnceLock::new() }
    }

    /// The record's metadata.
    pub fn meta(&self) -> &EventMeta {
        &self.record.meta
    }

    /// The decoded event, decoded on the first call; why the journaled body does not decode.
    pub fn event(&self) -> Result<&Decoded, &DecodeError> {
        self.decoded
            .get_or_init(|| decode::decode(&self.record.raw, self.record.meta.format))
            .as_ref()
    }
}
