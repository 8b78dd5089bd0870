//! Duplicate suppression: the same event delivered again within the window (Bitrix24 sends one
//! change through every binding, and a sender may resend) is answered 200 but not delivered
//! twice.
//!
//! The key is a SHA-256 over the portal (`member_id`), the event code, `ts` and the whole `data`
//! block, in order. It leaves out `event_handler_id` (which differs per binding) and the `auth`
//! block (tokens rotate); so two bindings of one change share a key, while a real second change
//! differs in `ts` or data.
//!
//! Install and uninstall events mark a portal's lifecycle: an accepted `ONAPPINSTALL` or
//! `ONAPPUNINSTALL` ends the portal's previous cycle, so the window forgets the portal's earlier
//! lifecycle events. A re-install after an uninstall is then never taken for a duplicate of the
//! first install, however alike the two are; a repeat within one cycle still is.
//!
//! The key is backend-neutral (it depends only on the event, so every host computes the same
//! one); keeping the window is the backend's (`embedded::window` for the embedded one).

use sha2::{Digest, Sha256};

use crate::decode::Decoded;

/// A duplicate-suppression key.
pub type DedupKey = [u8; 16];

/// The key of `event`.
pub fn key(event: &Decoded) -> DedupKey {
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    field(event.auth.member_id.as_bytes());
    field(event.code.as_bytes());
    field(event.ts.map(|ts| ts.to_string()).unwrap_or_default().as_bytes());
    for (k, v) in &event.data {
        field(k.as_bytes());
        field(v.as_bytes());
    }
    let digest = hash.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// A key over arbitrary parts (each length-prefixed, so parts cannot run into each other).
pub fn key_of(parts: &[&[u8]]) -> DedupKey {
    let mut hash = Sha256::new();
    for part in parts {
        hash.update((part.len() as u64).to_le_bytes());
        hash.update(part);
    }
    let digest = hash.finalize();
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// Lower-case hex of a key.
pub fn hex(key: &DedupKey) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses [`hex`] output.
pub fn from_hex(text: &str) -> Option<DedupKey> {
    if text.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `code` is a lifecycle event (see the module docs).
pub fn is_lifecycle(code: &str) -> bool {
    matches!(code, "ONAPPINSTALL" | "ONAPPUNINSTALL")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let k = [7u8; 16];
        assert_eq!(from_hex(&hex(&k)), Some(k));
        assert_eq!(from_hex("7"), None);
    }
}
