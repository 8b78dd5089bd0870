//! One entry of the write-ahead log: everything an append journals, so that the tables behind
//! the log can be rebuilt from it after a crash. The event's id, its record sealed as the
//! `events` table stores it (its own checksum inside), the plugins it is pending for, what it
//! changes of its portal's state (a token learned or forgotten, an install's OAuth pair), and
//! an offline row's key.
//!
//! On disk an entry is a frame: `[u32 LE payload length][u32 LE crc32(length, payload)][payload]`,
//! the payload `[u64 id][u8 flags][u16 plugins]{[u16 len][name]}[member?][token?][oauth?][key?]
//! [sealed record]` (the member a token or an OAuth pair is for, once; an OAuth pair as `[u32
//! len][bytes]`)
//! (little-endian; lengths before bytes). A length of 0 is the end of the written part of a
//! segment (its preallocated rest reads as zeros).

use std::sync::Arc;

use b24_plugin_api::Secret;

use crate::journal::{PortalChange, dedup::DedupKey};

/// The frame header's size: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// The largest payload a frame may claim: anything larger is damage, not an entry.
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

const PERMANENT: u8 = 1;
const TOKEN: u8 = 2;
const TOKEN_VALUE: u8 = 4;
const OAUTH: u8 = 8;

/// What one append journaled.
#[derive(Clone)]
pub struct Entry {
    /// The event id.
    pub id: u64,
    /// The event record as the `events` table stores it (`EventRecord::seal`).
    pub sealed: Vec<u8>,
    /// The plugins it is pending for.
    pub plugins: Vec<Arc<str>>,
    /// What it changes of its portal's state (a token, an install's OAuth pair).
    pub change: Option<PortalChange>,
    /// An offline row's key, recognised for as long as its event is kept.
    pub offline_key: Option<DedupKey>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry")
            .field("id", &self.id)
            .field("sealed_bytes", &self.sealed.len())
            .field("plugins", &self.plugins)
            .field("change", &self.change)
            .finish()
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a payload front to back; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = self.u16()? as usize;
        std::str::from_utf8(self.take(len)?).ok()
    }
}

fn crc(len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

impl Entry {
    /// Appends the entry's frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        out.extend_from_slice(&self.id.to_le_bytes());
        let mut flags = 0;
        if self.offline_key.is_some() {
            flags |= PERMANENT;
        }
        if let Some(change) = &self.change {
            if let Some(value) = &change.token {
                flags |= TOKEN | if value.is_some() { TOKEN_VALUE } else { 0 };
            }
            if change.oauth.is_some() {
                flags |= OAUTH;
            }
        }
        out.push(flags);
        out.extend_from_slice(&(self.plugins.len() as u16).to_le_bytes());
        for plugin in &self.plugins {
            put_str(out, plugin);
        }
        if let Some(change) = self.change.as_ref().filter(|c| !c.is_empty()) {
            put_str(out, &change.member_id);
            if let Some(Some(value)) = &change.token {
                put_str(out, value.expose());
            }
            if let Some(oauth) = &change.oauth {
                out.extend_from_slice(&(oauth.len() as u32).to_le_bytes());
                out.extend_from_slice(oauth);
            }
        }
        if let Some(key) = &self.offline_key {
            out.extend_from_slice(key);
        }
        out.extend_from_slice(&self.sealed);
        let len = (out.len() - start - FRAME_HEADER) as u32;
        let sum = crc(len, &out[start + FRAME_HEADER..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + 8].copy_from_slice(&sum.to_le_bytes());
    }

    /// The entry framed at the start of `bytes` and the frame's length; [`Framed::End`] where
    /// nothing was written (zeros), [`Framed::Bad`] for a frame that fails its checksum, is
    /// cut short or does not parse.
    pub fn decode(bytes: &[u8]) -> Framed {
        let Some(header) = bytes.get(..FRAME_HEADER) else {
            return if bytes.iter().all(|b| *b == 0) { Framed::End } else { Framed::Bad };
        };
        let len = u32::from_le_bytes(header[..4].try_into().unwrap_or_default());
        let sum = u32::from_le_bytes(header[4..8].try_into().unwrap_or_default());
        if len == 0 && sum == 0 {
            return Framed::End;
        }
        let Some(payload) = bytes.get(FRAME_HEADER..FRAME_HEADER + len as usize) else {
            return Framed::Bad;
        };
        if len as usize > MAX_PAYLOAD || crc(len, payload) != sum {
            return Framed::Bad;
        }
        match Entry::parse(payload) {
            Some(entry) => Framed::Entry(entry, FRAME_HEADER + len as usize),
            None => Framed::Bad,
        }
    }

    fn parse(payload: &[u8]) -> Option<Entry> {
        let mut r = Reader(payload);
        let id = r.u64()?;
        let flags = r.u8()?;
        let count = r.u16()?;
        let mut plugins = Vec::with_capacity(count as usize);
        for _ in 0..count {
            plugins.push(Arc::from(r.str()?));
        }
        let change = if flags & (TOKEN | OAUTH) != 0 {
            let member_id = r.str()?.to_owned();
            let token = if flags & TOKEN != 0 {
                Some(if flags & TOKEN_VALUE != 0 { Some(Secret::new(r.str()?)) } else { None })
            } else {
                None
            };
            let oauth = if flags & OAUTH != 0 {
                let len = u32::from_le_bytes(r.take(4)?.try_into().ok()?) as usize;
                Some(r.take(len)?.to_vec())
            } else {
                None
            };
            Some(PortalChange { member_id, token, oauth })
        } else {
            None
        };
        let offline_key = if flags & PERMANENT != 0 {
            Some(r.take(std::mem::size_of::<DedupKey>())?.try_into().ok()?)
        } else {
            None
        };
        Some(Entry { id, sealed: r.0.to_vec(), plugins, change, offline_key })
    }
}

/// What the bytes at a position in a segment hold.
#[derive(Debug)]
pub enum Framed {
    /// An entry and its frame's length.
    Entry(Entry, usize),
    /// Nothing written here.
    End,
    /// A frame that cannot be trusted: a torn write, or damage.
    Bad,
}
