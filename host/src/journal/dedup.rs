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
//! one): `decode::record` computes it when the record is built; keeping the window is the
//! backend's (`embedded::window` for the embedded one).

pub use crate::record::{DedupKey, hex, key_of};

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
