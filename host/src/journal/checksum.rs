//! The checksum every stored record carries, checked on every read: a disk that flips bits
//! must never make the host deliver a changed event, or a pending row count for another plugin.
//!
//! A sealed value is `[FF FF FF 01][crc32 LE][body]`; the CRC (crc32fast, IEEE) covers the
//! row's key and its body, so a value that moved under another key fails too. Values written
//! before checksums existed (an event record begins with its metadata length, which never has
//! an `FF` high byte; pending rows and dead letters begin with `{`) are read unchecked.

/// The format marker of a sealed value (version 1).
pub const MAGIC: [u8; 4] = [0xFF, 0xFF, 0xFF, 0x01];

/// Why a stored value cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The bytes do not match their checksum.
    #[error("record damaged: checksum mismatch")]
    Checksum,
    /// The checksum holds (or there is none: an old value) but the content does not parse.
    #[error("record damaged: unreadable")]
    Unreadable,
    /// A row refers to an event record that is not there.
    #[error("record missing")]
    Missing,
}

fn crc(key: &[u8], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(key);
    hasher.update(body);
    hasher.finalize()
}

/// `body` sealed under `key`; `body` is written by `fill` straight after the header.
pub fn seal_with(key: &[u8], capacity: usize, fill: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + capacity);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[0; 4]);
    fill(&mut out);
    let sum = crc(key, &out[8..]);
    out[4..8].copy_from_slice(&sum.to_le_bytes());
    out
}

/// `body` sealed under `key`.
pub fn seal(key: &[u8], body: &[u8]) -> Vec<u8> {
    seal_with(key, body.len(), |out| out.extend_from_slice(body))
}

/// The body of a stored value, checked against its checksum (an unsealed, older value is
/// returned as it is).
pub fn unseal<'a>(key: &[u8], stored: &'a [u8]) -> Result<&'a [u8], Damage> {
    if !stored.starts_with(&MAGIC) {
        return Ok(stored);
    }
    let (Some(sum), Some(body)) = (stored.get(4..8), stored.get(8..)) else {
        return Err(Damage::Checksum);
    };
    let sum = u32::from_le_bytes(sum.try_into().map_err(|_| Damage::Checksum)?);
    if crc(key, body) == sum { Ok(body) } else { Err(Damage::Checksum) }
}

/// The id a sealed value was stored under when the id in its key fails its checksum but an id
/// one flipped bit away matches: a bit flip in a row's key (which moves the row under another
/// event's id) rather than in its value. `key_of` makes the checksum key of an id. `None` when
/// the value is not sealed, matches `id` itself, or matches no such neighbour.
pub fn matching_id(stored: &[u8], id: u64, key_of: impl Fn(u64) -> Vec<u8>) -> Option<u64> {
    if !stored.starts_with(&MAGIC) {
        return None;
    }
    let sum = u32::from_le_bytes(stored.get(4..8)?.try_into().ok()?);
    let body = stored.get(8..)?;
    if crc(&key_of(id), body) == sum {
        return None;
    }
    (0..64).map(|bit| id ^ (1u64 << bit)).find(|&other| crc(&key_of(other), body) == sum)
}

/// The checksum key of an event record.
pub fn event_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

/// The checksum key of an event's row in the index of complete events (apart from the event
/// record's, whose key is the same id).
pub fn completed_key(id: u64) -> [u8; 9] {
    let mut key = [b'c'; 9];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

/// The checksum key of a plugin's pending row or dead letter.
pub fn row_key(plugin: &str, id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(plugin.len() + 9);
    key.extend_from_slice(plugin.as_bytes());
    key.push(0);
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The checksum key of an attempt row: the event, the plugin and the attempt's number.
pub fn attempt_key(id: u64, plugin: &str, n: u32) -> Vec<u8> {
    let mut key = row_key(plugin, id);
    key.extend_from_slice(&n.to_be_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_reads_back_and_any_flip_is_caught() {
        let sealed = seal(b"k", b"hello world");
        assert_eq!(unseal(b"k", &sealed), Ok(&b"hello world"[..]));
        assert_eq!(unseal(b"other", &sealed), Err(Damage::Checksum));
        for byte in 4..sealed.len() {
            for bit in 0..8 {
                let mut bad = sealed.clone();
                bad[byte] ^= 1 << bit;
                assert_eq!(unseal(b"k", &bad), Err(Damage::Checksum), "byte {byte} bit {bit}");
            }
        }
        assert_eq!(unseal(b"k", &sealed[..6]), Err(Damage::Checksum));
    }

    #[test]
    fn a_row_moved_under_another_id_by_a_flipped_bit_names_its_own() {
        let sealed = seal(&row_key("probe", 1226), b"{}");
        let key_of = |id| row_key("probe", id);
        assert_eq!(matching_id(&sealed, 1226 | 1 << 25, key_of), Some(1226));
        assert_eq!(matching_id(&sealed, 1226 ^ 8, key_of), Some(1226));
        assert_eq!(matching_id(&sealed, 1226, key_of), None, "its own key");
        assert_eq!(matching_id(&sealed, 99, key_of), None, "no neighbour matches");
        assert_eq!(matching_id(b"{}", 1227, key_of), None, "not sealed");
    }

    #[test]
    fn an_old_unsealed_value_reads_as_it_is() {
        assert_eq!(unseal(b"k", b"{\"attempts\":1}"), Ok(&b"{\"attempts\":1}"[..]));
    }
}
