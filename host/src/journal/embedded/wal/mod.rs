//! The write-ahead log: what the 200 waits for. Every append is one [`Entry`] framed with its
//! length and a CRC-32 in a segment file (`state_dir/wal/<first id>.seg`, preallocated with
//! zeros in steps of [`CHUNK`]); the writer writes a whole batch with one `pwrite` and makes it durable
//! with one `fdatasync` (group commit). The tables in `journal.redb` follow behind, updated
//! without an fsync of their own and made durable by checkpoints (`meta` `wal_applied`: the
//! highest id they hold); after a crash, `Embedded::open` replays the entries above it.
//!
//! A segment starts with a header: magic, its first id, the highest id its predecessor held
//! (so that a segment missing, or frames lost in the middle, show), and their CRC. A new
//! segment is started when one is full, after a write failed (never writing on behind frames
//! that may be torn), and by each process for its first append; the folder is fsynced when a
//! segment is created, renamed or removed. Segments wholly behind a durable checkpoint are
//! kept as spares (renamed, then reused with a new header: writes into blocks already
//! written cost the file system no allocation at `fdatasync`) or deleted.
//!
//! - [`entry`]: the entry and its frame.
//! - [`read`]: reading segments back, for recovery, `journal verify` and `salvage`.

pub mod entry;
pub mod read;

use std::{
    collections::VecDeque,
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
};

pub use entry::Entry;

use super::files::{create_private, storage, sync_dir};
use crate::journal::StoreError;

/// The log's folder inside the state folder.
pub const DIR: &str = "wal";
/// A segment's header: magic (8), first id (8), the predecessor's highest id (8), CRC (4), 0 (4).
pub const HEADER: usize = 32;
const MAGIC: &[u8; 8] = b"b24wal1\0";
/// A segment is closed once the next batch would take it past this size.
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Space is preallocated in steps of this size.
pub const CHUNK: u64 = 1024 * 1024;
/// Segments kept for reuse.
const SPARES: usize = 2;

fn header(first_id: u64, prev_last: u64) -> [u8; HEADER] {
    let mut out = [0u8; HEADER];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&first_id.to_le_bytes());
    out[16..24].copy_from_slice(&prev_last.to_le_bytes());
    let sum = crc32fast::hash(&out[..24]);
    out[24..28].copy_from_slice(&sum.to_le_bytes());
    out
}

/// A segment header's first id and predecessor's highest id, if it is sound.
pub fn header_of(bytes: &[u8]) -> Option<(u64, u64)> {
    let h = bytes.get(..HEADER)?;
    if &h[..8] != MAGIC || crc32fast::hash(&h[..24]).to_le_bytes() != h[24..28] {
        return None;
    }
    Some((
        u64::from_le_bytes(h[8..16].try_into().ok()?),
        u64::from_le_bytes(h[16..24].try_into().ok()?),
    ))
}

/// Reserves `len` bytes at `offset` of `file` by writing zeros there. Written blocks, not
/// `fallocate`'s unwritten extents: a write into an unwritten extent makes the next
/// `fdatasync` commit the file system's journal too (ext4, XFS), a write into written blocks
/// of a file whose size stays the same flushes the data alone. The zeros become durable with
/// the first batch written into them; a full disk shows here, before any frame is written.
fn preallocate(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let mut at = offset;
    while at < offset + len {
        let n = (offset + len - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// The segment being written.
struct Current {
    file: File,
    pos: u64,
    allocated: u64,
}

/// The log as its writer holds it.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    current: Option<Current>,
    /// Every segment not yet recycled, oldest first: first id and file.
    live: VecDeque<(u64, PathBuf)>,
    spares: Vec<PathBuf>,
    /// The highest id written and synced.
    last_id: u64,
    buf: Vec<u8>,
}

impl Wal {
    /// The log in `state_dir` (created if missing), after `scan` read it; the first append
    /// starts a new segment.
    pub fn open(
        state_dir: &Path,
        segment_bytes: u64,
        scan: &read::Scan,
    ) -> Result<Wal, StoreError> {
        let dir = state_dir.join(DIR);
        std::fs::create_dir_all(&dir).map_err(|e| storage("create", &dir, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let mut spares = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| storage("read", &dir, e))?.flatten() {
            if entry.file_name().to_str().is_some_and(|n| n.ends_with(".spare")) {
                spares.push(entry.path());
            }
        }
        Ok(Wal {
            dir,
            segment_bytes,
            current: None,
            live: scan.segments.iter().map(|s| (s.first_id, s.path.clone())).collect(),
            spares,
            last_id: scan.highest,
            buf: Vec::new(),
        })
    }

    /// The log's folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The number of segments not yet recycled.
    pub fn segments(&self) -> usize {
        self.live.len()
    }

    /// Writes `entries` (ids ascending, above every id written before) and makes them durable
    /// with one `fdatasync`. After an error the segment is left behind: the next append starts
    /// a new one.
    pub fn append(&mut self, entries: &[Entry]) -> Result<(), StoreError> {
        let Some(first) = entries.first() else { return Ok(()) };
        self.buf.clear();
        for entry in entries {
            entry.encode_into(&mut self.buf);
        }
        let need = self.buf.len() as u64;
        let full = self
            .current
            .as_ref()
            .is_some_and(|c| c.pos > HEADER as u64 && c.pos + need > self.segment_bytes);
        if self.current.is_none() || full {
            self.roll(first.id)?;
        }
        let written = self.write(need);
        match written {
            Ok(()) => {
                self.last_id = entries.last().map_or(self.last_id, |e| e.id);
                Ok(())
            }
            Err(e) => {
                self.current = None;
                Err(e)
            }
        }
    }

    fn write(&mut self, need: u64) -> Result<(), StoreError> {
        let path = self.live.back().map(|(_, p)| p.clone()).unwrap_or_default();
        let current = self.current.as_mut().ok_or(StoreError::Closed)?;
        if current.pos + need > current.allocated {
            let more = CHUNK.max(current.pos + need - current.allocated);
            preallocate(&current.file, current.allocated, more)
                .map_err(|e| storage("preallocate", &path, e))?;
            current.allocated += more;
        }
        current
            .file
            .write_all_at(&self.buf, current.pos)
            .map_err(|e| storage("write", &path, e))?;
        current.file.sync_data().map_err(|e| storage("sync", &path, e))?;
        current.pos += need;
        Ok(())
    }

    /// Starts a new segment whose first id is `first_id`: a spare with a new header, or a new
    /// file with its first chunk preallocated; then fsyncs the folder.
    pub fn roll(&mut self, first_id: u64) -> Result<(), StoreError> {
        self.current = None;
        let path = self.dir.join(format!("{first_id:020}.seg"));
        let head = header(first_id, self.last_id);
        let (file, allocated) = match self.spares.pop() {
            Some(spare) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&spare)
                    .map_err(|e| storage("open", &spare, e))?;
                file.write_all_at(&head, 0)
                    .and_then(|()| file.sync_data())
                    .map_err(|e| storage("write", &spare, e))?;
                std::fs::rename(&spare, &path).map_err(|e| storage("rename", &spare, e))?;
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                (file, len)
            }
            None => {
                let file = create_private(&path)?;
                let made = preallocate(&file, 0, CHUNK)
                    .and_then(|()| file.write_all_at(&head, 0))
                    .and_then(|()| file.sync_data());
                if let Err(e) = made {
                    drop(file);
                    let _ = std::fs::remove_file(&path);
                    return Err(storage("start", &path, e));
                }
                (file, CHUNK)
            }
        };
        self.sync_dir()?;
        if self.live.back().is_some_and(|(id, _)| *id == first_id) {
            self.live.pop_back();
        }
        self.live.push_back((first_id, path));
        self.current =
            Some(Current { file, pos: HEADER as u64, allocated: allocated.max(HEADER as u64) });
        Ok(())
    }

    /// Starts a new segment whose first id is `first_id` unless one is open: after a failed
    /// write none is (the next frames must not follow frames that may be torn), while a
    /// segment that only the tables behind failed is written on (a host that keeps failing to
    /// reopen them starts no segment per try).
    pub fn ensure_open(&mut self, first_id: u64) -> Result<(), StoreError> {
        match self.current {
            Some(_) => Ok(()),
            None => self.roll(first_id),
        }
    }

    fn sync_dir(&self) -> Result<(), StoreError> {
        sync_dir(&self.dir)
    }

    /// Recycles the segments wholly at or below `applied`, the highest id a durable checkpoint
    /// of the tables holds (never the newest segment). Only a durable checkpoint may call it:
    /// an entry above `applied` stays in the log until the tables durably hold it.
    pub fn recycle(&mut self, applied: u64) {
        let mut changed = false;
        while self.live.len() > 1 && self.live[1].0 <= applied.saturating_add(1) {
            let Some((first, path)) = self.live.pop_front() else { break };
            let big = std::fs::metadata(&path).is_ok_and(|m| m.len() >= self.segment_bytes / 2);
            let kept = big && self.spares.len() < SPARES && {
                let spare = self.dir.join(format!("{first:020}.spare"));
                std::fs::rename(&path, &spare).is_ok() && {
                    self.spares.push(spare);
                    true
                }
            };
            if !kept && let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("cannot remove {}: {e}", path.display());
            }
            changed = true;
        }
        if changed && let Err(e) = self.sync_dir() {
            tracing::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests;
