//! The one shape of an accepted event: [`EventRecord`], its metadata and the body exactly as
//! received. Ingress (or the offline poller) builds it once (`decode::record`), the journal
//! stores and hands back these bytes, a runner frame carries them, and only the code that
//! calls a plugin decodes the body again.
//!
//! A leaf: this module imports nothing of the host, so the journal can hold records without
//! knowing how a body decodes.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How a body is encoded: the request's content type, and the journaled body's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// `application/x-www-form-urlencoded`, what Bitrix24 sends.
    Form,
    /// A JSON object (tests, proxies, offline rows).
    Json,
}

impl Format {
    /// The format for a `Content-Type` header value (the one place that decides it):
    /// `application/x-www-form-urlencoded` is [`Format::Form`], `application/json` is
    /// [`Format::Json`], in any case and with any parameters (`charset`); anything else is
    /// `None`, a 415. Structured `+json` types (`application/problem+json`, `ld+json`, ...) are
    /// refused: each names a vocabulary of its own, never a Bitrix24 event.
    pub fn from_content_type(content_type: &str) -> Option<Format> {
        let media = content_type.split(';').next().unwrap_or_default().trim();
        if media.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
            Some(Format::Form)
        } else if media.eq_ignore_ascii_case("application/json") {
            Some(Format::Json)
        } else {
            None
        }
    }
}

/// Where an event came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// POSTed to the host.
    Online,
    /// Pulled from the portal's offline-event queue.
    Offline,
}

/// A duplicate-suppression key (see `journal::dedup`).
pub type DedupKey = [u8; 16];

/// A key over `parts`, each length-prefixed so that parts cannot run into each other: the
/// first 16 bytes of their SHA-256.
pub fn key_of(parts: &[&[u8]]) -> DedupKey {
    let mut key = KeyHasher::new();
    for part in parts {
        key.part(part);
    }
    key.finish()
}

/// [`key_of`] fed one part at a time, for callers that have no slice of parts at hand.
#[derive(Clone, Default)]
pub struct KeyHasher(Sha256);

impl KeyHasher {
    /// A key over no parts yet.
    pub fn new() -> KeyHasher {
        KeyHasher::default()
    }

    /// Adds the next part.
    pub fn part(&mut self, part: &[u8]) {
        self.0.update((part.len() as u64).to_le_bytes());
        self.0.update(part);
    }

    /// The key over the parts added.
    pub fn finish(self) -> DedupKey {
        let digest = self.0.finalize();
        let mut out = [0u8; 16];
        out.copy_from_slice(&digest[..16]);
        out
    }
}

/// Lower-case hex of a key.
pub fn hex(key: &DedupKey) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * key.len());
    for b in key {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// An accepted event's facts, as journaled: what listings, routes and the REST context need
/// without decoding the body.
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
    /// A user-field event's entity (`CRM_DEAL`) and field name (`UF_CRM_1`), upper-case, for
    /// the routes' entity and field filters; `None` for other events, and in records journaled
    /// before the field existed (routing decodes those).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_field: Option<(String, String)>,
}

/// An event record: its metadata and the body exactly as received (tokens blanked).
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
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`EventRecord::encode`] appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let meta = serde_json::to_vec(&self.meta).unwrap_or_default();
        out.reserve(4 + meta.len() + self.raw.len());
        out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        out.extend_from_slice(&meta);
        out.extend_from_slice(&self.raw);
    }

    /// The inverse of [`EventRecord::encode`]; `None` for a damaged record.
    pub fn decode(bytes: &[u8]) -> Option<EventRecord> {
        let len = u32::from_le_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
        let meta = serde_json::from_slice(bytes.get(4..4usize.checked_add(len)?)?).ok()?;
        Some(EventRecord { meta, raw: Bytes::copy_from_slice(bytes.get(4 + len..)?) })
    }
}

#[cfg(test)]
pub fn fixture(received_at_ms: i64, dedup_key: String, raw: Bytes) -> EventRecord {
    EventRecord {
        meta: EventMeta {
            received_at_ms,
            format: Format::Form,
            source: Source::Online,
            code: "ONCRMDEALUSERFIELDUPDATE".into(),
            member_id: "m".into(),
            domain: "d".into(),
            dedup_key,
            extra: vec![],
            user_field: None,
        },
        raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> EventRecord {
        EventRecord {
            meta: EventMeta {
                received_at_ms: 1,
                format: Format::Form,
                source: Source::Online,
                code: "ONCRMDEALUSERFIELDADD".into(),
                member_id: "m".into(),
                domain: "d".into(),
                dedup_key: hex(&key_of(&[b"x"])),
                extra: vec![],
                user_field: Some(("CRM_DEAL".into(), "UF_CRM_1".into())),
            },
            raw: Bytes::from_static(b"event=X"),
        }
    }

    #[test]
    fn hex_is_two_lower_case_digits_a_byte() {
        let key: DedupKey =
            [0, 1, 0x0f, 0x10, 0x7f, 0x80, 0xab, 0xff, 9, 10, 11, 12, 13, 14, 15, 16];
        let formatted: String = key.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex(&key), formatted);
        assert_eq!(hex(&key), "00010f107f80abff090a0b0c0d0e0f10");
    }

    #[test]
    fn a_record_round_trips_and_a_cut_one_is_refused() {
        let bytes = record().encode();
        assert_eq!(EventRecord::decode(&bytes), Some(record()));
        assert_eq!(EventRecord::decode(&bytes[..3]), None);
        assert_eq!(EventRecord::decode(&[255, 255, 255, 255, b'{']), None);
    }

    #[test]
    fn a_record_without_the_user_field_reads_as_none() {
        let mut meta = serde_json::to_value(&record().meta).unwrap();
        meta.as_object_mut().unwrap().remove("user_field");
        let meta: EventMeta = serde_json::from_value(meta).unwrap();
        assert_eq!(meta.user_field, None);
    }

    #[test]
    fn content_types() {
        assert_eq!(
            Format::from_content_type("application/x-www-form-urlencoded; charset=UTF-8"),
            Some(Format::Form)
        );
        assert_eq!(Format::from_content_type(" Application/JSON "), Some(Format::Json));
        assert_eq!(
            Format::from_content_type("Application/X-WWW-Form-Urlencoded"),
            Some(Format::Form)
        );
        assert_eq!(
            Format::from_content_type("application/json; charset=utf-8"),
            Some(Format::Json)
        );
        assert_eq!(Format::from_content_type("application/vnd.x+json"), None);
        assert_eq!(Format::from_content_type("application/problem+json"), None);
        assert_eq!(Format::from_content_type("text/plain"), None);
        assert_eq!(Format::from_content_type(""), None);
    }
}
