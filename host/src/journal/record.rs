//! What the journal stores, and how: the event record, a plugin's pending state and a dead
//! letter. Each is JSON metadata; an event record is followed by the raw body. Stored, each is
//! sealed with a checksum ([`super::checksum`]) and checked when read back.

use serde::{Deserialize, Serialize};

use super::checksum::{self, Damage};
pub use crate::record::{EventMeta, EventRecord, Format, Source};

/// How the journal stores an event record: sealed with its checksum under its id.
pub trait Sealed: Sized {
    /// The record as stored under event `id`: its encoding sealed with its checksum.
    fn seal(&self, id: u64) -> Vec<u8>;
    /// Only the metadata of the record stored under event `id`, checked against its
    /// checksum (the body is not copied): what a listing needs.
    fn unseal_meta(id: u64, stored: &[u8]) -> Result<EventMeta, Damage>;
    /// The record stored under event `id`, checked against its checksum.
    fn unseal(id: u64, stored: &[u8]) -> Result<Self, Damage>;
}

impl Sealed for EventRecord {
    /// The record as stored under event `id`: [`EventRecord::encode`] sealed with its checksum.
    fn seal(&self, id: u64) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        checksum::seal_with(&checksum::event_key(id), 4 + meta.len() + self.raw.len(), |out| {
            out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
            out.extend_from_slice(&meta);
            out.extend_from_slice(&self.raw);
        })
    }

    /// Only the metadata of the record stored under event `id`, checked against its checksum
    /// (the body is not copied): what a listing needs.
    fn unseal_meta(id: u64, stored: &[u8]) -> Result<EventMeta, Damage> {
        meta_of(checksum::unseal(&checksum::event_key(id), stored)?)
    }

    /// The record stored under event `id`, checked against its checksum.
    fn unseal(id: u64, stored: &[u8]) -> Result<Self, Damage> {
        let body = checksum::unseal(&checksum::event_key(id), stored)?;
        EventRecord::decode(body).ok_or(Damage::Unreadable)
    }
}

/// The metadata of an unsealed record's `body` (the body is not copied).
pub fn meta_of(body: &[u8]) -> Result<EventMeta, Damage> {
    {
        let len = body
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .ok_or(Damage::Unreadable)?;
        let meta = body.get(4..4 + len).ok_or(Damage::Unreadable)?;
        serde_json::from_slice(meta).map_err(|_| Damage::Unreadable)
    }
}

/// A pending row or dead letter as stored under (`plugin`, `id`): JSON sealed with its checksum.
pub fn seal_row<T: Serialize>(plugin: &str, id: u64, value: &T) -> Vec<u8> {
    checksum::seal(&checksum::row_key(plugin, id), &to_json(value))
}

/// A pending row or dead letter stored under (`plugin`, `id`), checked against its checksum.
pub fn unseal_row<T: for<'de> Deserialize<'de>>(
    plugin: &str,
    id: u64,
    stored: &[u8],
) -> Result<T, Damage> {
    let body = checksum::unseal(&checksum::row_key(plugin, id), stored)?;
    serde_json::from_slice(body).map_err(|_| Damage::Unreadable)
}

/// A plugin's state for an event it has not finished.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// Attempts made so far.
    pub attempts: u32,
    /// Not before this time (ms since the epoch) is the next attempt due; 0 = now.
    pub next_at_ms: i64,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub last_error: String,
    /// Deliveries that ended with the plugin's process dying (the host's, for an in-process
    /// plugin): counted apart from `attempts`, against `max_crashes` (see
    /// `dispatch::crash::after_crash`). Rows written before the field existed read as 0.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crashes: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// An event a plugin gave up on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// Why: the plugin's rejection or the last error when the attempts ran out.
    pub reason: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was given up, ms since the epoch.
    pub at_ms: i64,
}

/// JSON for a small state value.
pub fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A small state value from JSON; the default for a damaged one.
pub fn from_json<T: for<'de> Deserialize<'de> + Default>(bytes: &[u8]) -> T {
    serde_json::from_slice(bytes).unwrap_or_default()
}
