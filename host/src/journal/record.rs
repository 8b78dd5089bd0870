//! What the journal stores, and how: the event record, a plugin's pending state and a dead
//! letter. Each is JSON metadata; an event record is followed by the raw body. Stored, each is
//! sealed with a checksum ([`super::checksum`]) and checked when read back.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::checksum::{self, Damage};
use crate::decode::BodyFormat;

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// POSTed to the host.
    Online,
    /// Pulled from the portal's offline-event queue.
    Offline,
}

/// An accepted event as journaled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMeta {
    /// When the host accepted it, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// `form` or `json`.
    pub format: Format,
    /// Where it came from.
    pub source: Source,
    /// The event code, upper-case.
    pub code: String,
    /// The portal.
    pub member_id: String,
    /// The portal's domain at the time.
    pub domain: String,
    /// The duplicate-suppression key, hex.
    pub dedup_key: String,
    /// Further facts for the plugins' delivery info (offline rows: `message_id`, `user_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<(String, String)>,
}

/// The body's encoding, as journaled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `application/x-www-form-urlencoded`
    Form,
    /// `application/json`
    Json,
}

impl From<BodyFormat> for Format {
    fn from(format: BodyFormat) -> Format {
        match format {
            BodyFormat::Form => Format::Form,
            BodyFormat::Json => Format::Json,
        }
    }
}

impl From<Format> for BodyFormat {
    fn from(format: Format) -> BodyFormat {
        match format {
            Format::Form => BodyFormat::Form,
            Format::Json => BodyFormat::Json,
        }
    }
}

/// An event record: its metadata and the body exactly as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRecord {
    /// The metadata.
    pub meta: EventMeta,
    /// The raw body.
    pub raw: Bytes,
}

impl EventRecord {
    /// `[u32 LE length of meta][meta JSON][raw body]`.
    pub fn encode(&self) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        let mut out = Vec::with_capacity(4 + meta.len() + self.raw.len());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.raw);
        out
    }

    /// The inverse of [`EventRecord::encode`]; `None` for a damaged record.
    pub fn decode(bytes: &[u8]) -> Option<EventRecord> {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let meta = serde_json::from_slice(bytes.get(4..4 + len)?).ok()?;
        let raw = Bytes::copy_from_slice(bytes.get(4 + len..)?);
        Some(EventRecord { meta, raw })
    }

    /// The record as stored under event `id`: [`EventRecord::encode`] sealed with its checksum.
    pub fn seal(&self, id: u64) -> Vec<u8> {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        checksum::seal_with(&checksum::event_key(id), 4 + meta.len() + self.raw.len(), |out| {
            out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
            out.extend_from_slice(&meta);
            out.extend_from_slice(&self.raw);
        })
    }

    /// Only the metadata of the record stored under event `id`, checked against its checksum
    /// (the body is not copied): what a listing needs.
    pub fn unseal_meta(id: u64, stored: &[u8]) -> Result<EventMeta, Damage> {
        let body = checksum::unseal(&checksum::event_key(id), stored)?;
        let len = body
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map(|b| u32::from_le_bytes(b) as usize)
            .ok_or(Damage::Unreadable)?;
        let meta = body.get(4..4 + len).ok_or(Damage::Unreadable)?;
        serde_json::from_slice(meta).map_err(|_| Damage::Unreadable)
    }

    /// The record stored under event `id`, checked against its checksum.
    pub fn unseal(id: u64, stored: &[u8]) -> Result<EventRecord, Damage> {
        let body = checksum::unseal(&checksum::event_key(id), stored)?;
        EventRecord::decode(body).ok_or(Damage::Unreadable)
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
