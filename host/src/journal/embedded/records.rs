//! The event files (`state_dir/events/<first id>.rec`): where the tables' thread keeps each
//! journaled event's record, the `events` table holding a small row that points here instead
//! of the record itself (issue 23, part 3: the tables behind the log hold the pending rows,
//! dead letters, attempts and tokens; a B-tree that stores and prunes a record an event was
//! most of the tables' cost, BENCHMARKS.md). `store::Store` reads through the rows; a file
//! goes once no row points into it (`store::remove_unpointed_files`), the records plugins
//! still hold copied into the table first (`Tables::copy_forward`).
//!
//! Why files of their own and not the write-ahead log's segments kept longer: the log reuses
//! its segments as spares, so that its `fdatasync` (what the 200 waits for) never pays for
//! newly allocated blocks; segments kept for the retention period could not be reused. These
//! files are written by the tables' thread off the request path, without an fsync of their
//! own: [`Writer::sync`] runs before each durable checkpoint of the tables, so a checkpoint
//! never points at bytes a crash can take, and what a crash takes above the checkpoint the
//! log replays. Each process starts a new file with its first append, never writing after a
//! tail a crash may have torn.
//!
//! A file starts with a header (magic, its first id, a CRC of both); then frames
//! `[u64 id][u32 length][u32 crc32(id, length, payload)][payload]` (little-endian), the
//! payload a sealed record with its own checksum. A read goes by [`Location`] and checks the
//! frame's CRC and that it names the id asked for: a location that no longer holds its event
//! reads as damage, never as another event. Files are deleted whole, oldest first, once
//! every event in them is gone ([`Writer::remove_below`]).

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::files::{create_private, storage, sync_dir};
use crate::journal::StoreError;

/// The folder of the event files inside the state folder.
pub const DIR: &str = "events";
/// A file's header: magic (8), first id (8), CRC of both (4), 0 (4).
pub const HEADER: usize = 24;
/// A frame's header: id (8), payload length (4), CRC (4).
pub const FRAME_HEADER: usize = 16;
/// A new file is started once the next frame would take the current one past this size.
pub const FILE_BYTES: u64 = 32 * 1024 * 1024;
/// The largest payload a frame may claim: anything larger is damage.
const MAX_PAYLOAD: usize = 256 * 1024 * 1024;
const MAGIC: &[u8; 8] = b"b24evt1\0";
/// Frames are buffered up to this size before they are written.
const BUFFER: usize = 256 * 1024;

/// Where an event's record is: the first id of its file, the offset of its frame, and the
/// frame's whole length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    /// The file's first id (its name).
    pub file: u64,
    /// The frame's offset in the file.
    pub offset: u64,
    /// The frame's length, header included.
    pub len: u32,
}

impl Location {
    /// The encoded size.
    pub const BYTES: usize = 20;

    /// `[u64 file][u64 offset][u32 len]`, little-endian.
    pub fn encode(&self) -> [u8; Self::BYTES] {
        let mut out = [0u8; Self::BYTES];
        out[..8].copy_from_slice(&self.file.to_le_bytes());
        out[8..16].copy_from_slice(&self.offset.to_le_bytes());
        out[16..].copy_from_slice(&self.len.to_le_bytes());
        out
    }

    /// The inverse of [`Location::encode`]; `None` for bytes of another length.
    pub fn decode(bytes: &[u8]) -> Option<Location> {
        let bytes: &[u8; Self::BYTES] = bytes.try_into().ok()?;
        Some(Location {
            file: u64::from_le_bytes(bytes[..8].try_into().ok()?),
            offset: u64::from_le_bytes(bytes[8..16].try_into().ok()?),
            len: u32::from_le_bytes(bytes[16..].try_into().ok()?),
        })
    }
}

/// Why a record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Its file is gone (deleted once every event in it was).
    #[error("the event file {0} is gone")]
    Missing(u64),
    /// What the location holds is not the event's frame.
    #[error("the event file {file} is damaged at offset {offset}: {why}")]
    Damaged {
        /// The file's first id.
        file: u64,
        /// The frame's offset.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// The file could not be read.
    #[error("cannot read the event file {file}: {message}")]
    Io {
        /// The file's first id.
        file: u64,
        /// The error.
        message: String,
    },
}

fn file_name(first_id: u64) -> String {
    format!("{first_id:020}.rec")
}

fn first_id_of(path: &Path) -> Option<u64> {
    path.file_name()?.to_str()?.strip_suffix(".rec")?.parse().ok()
}

fn header(first_id: u64) -> [u8; HEADER] {
    let mut out = [0u8; HEADER];
    out[..8].copy_from_slice(MAGIC);
    out[8..16].copy_from_slice(&first_id.to_le_bytes());
    let sum = crc32fast::hash(&out[..16]);
    out[16..20].copy_from_slice(&sum.to_le_bytes());
    out
}

/// A file header's first id, if the header is sound.
pub fn header_of(bytes: &[u8]) -> Option<u64> {
    let h = bytes.get(..HEADER)?;
    if &h[..8] != MAGIC || crc32fast::hash(&h[..16]).to_le_bytes() != h[16..20] {
        return None;
    }
    Some(u64::from_le_bytes(h[8..16].try_into().ok()?))
}

fn frame_crc(id: u64, len: u32, payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&id.to_le_bytes());
    hasher.update(&len.to_le_bytes());
    hasher.update(payload);
    hasher.finalize()
}

/// The frame at the start of `bytes`, if one is whole and sound: its id and payload.
fn frame_of(bytes: &[u8]) -> Result<(u64, &[u8]), &'static str> {
    let head = bytes.get(..FRAME_HEADER).ok_or("cut short")?;
    let id = u64::from_le_bytes(head[..8].try_into().map_err(|_| "cut short")?);
    let len = u32::from_le_bytes(head[8..12].try_into().map_err(|_| "cut short")?);
    let crc = u32::from_le_bytes(head[12..16].try_into().map_err(|_| "cut short")?);
    if id == 0 && len == 0 {
        return Err("never written");
    }
    if len as usize > MAX_PAYLOAD {
        return Err("an absurd length");
    }
    let payload = bytes.get(FRAME_HEADER..FRAME_HEADER + len as usize).ok_or("cut short")?;
    if frame_crc(id, len, payload) != crc {
        return Err("a checksum mismatch");
    }
    Ok((id, payload))
}

/// The files in `dir`, by first id, oldest first (a missing folder has none).
fn list(dir: &Path) -> Result<Vec<(u64, PathBuf)>, StoreError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(storage("read", dir, e)),
    };
    let mut files: Vec<(u64, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| first_id_of(&p).map(|id| (id, p)))
        .collect();
    files.sort();
    Ok(files)
}

/// The file being written.
struct Current {
    first_id: u64,
    file: File,
    path: PathBuf,
    /// Where the next frame goes (buffered frames included).
    pos: u64,
    /// Where the buffer's first byte goes.
    written: u64,
    /// Written since the last sync.
    dirty: bool,
}

/// The event files as the tables' thread writes them.
pub struct Writer {
    dir: PathBuf,
    file_bytes: u64,
    current: Option<Current>,
    /// Every file, oldest first: its first id.
    files: VecDeque<u64>,
    buf: Vec<u8>,
}

impl Writer {
    /// The event files of `state_dir`; the first append starts a new file (and creates the
    /// folder if it is missing: opening creates nothing).
    pub fn open(state_dir: &Path) -> Result<Writer, StoreError> {
        Writer::open_with(state_dir, FILE_BYTES)
    }

    /// [`Writer::open`] with files of `file_bytes` (tests).
    pub fn open_with(state_dir: &Path, file_bytes: u64) -> Result<Writer, StoreError> {
        let dir = state_dir.join(DIR);
        let listed = list(&dir)?;
        // A writer of this process before (the file reopened after a storage error) may have
        // left frames written and not synced, that rows it committed point at: the checkpoints
        // from now on sync this writer's file, so that one is synced here.
        if let Some((_, newest)) = listed.last() {
            File::open(newest)
                .and_then(|f| f.sync_data())
                .map_err(|e| storage("sync", newest, e))?;
        }
        let files = listed.into_iter().map(|(id, _)| id).collect();
        Ok(Writer { dir, file_bytes, current: None, files, buf: Vec::new() })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The first ids of the files, oldest first.
    pub fn files(&self) -> impl Iterator<Item = u64> + '_ {
        self.files.iter().copied()
    }

    /// Adds event `id`'s sealed record (ids ascending within a process) and says where it
    /// is. It is buffered: a reader finds it after [`Writer::flush`], and a crash keeps it
    /// after [`Writer::sync`].
    pub fn append(&mut self, id: u64, sealed: &[u8]) -> Result<Location, StoreError> {
        let len = u32::try_from(sealed.len())
            .ok()
            .filter(|l| (*l as usize) <= MAX_PAYLOAD)
            .ok_or_else(|| StoreError::Storage(format!("event {id}: a record too large")))?;
        let need = (FRAME_HEADER + sealed.len()) as u64;
        let full = self
            .current
            .as_ref()
            .is_some_and(|c| c.pos > HEADER as u64 && c.pos + need > self.file_bytes);
        if self.current.is_none() || full {
            self.roll(id)?;
        }
        if self.buf.len() + need as usize > BUFFER {
            self.flush()?;
        }
        let current = self.current.as_mut().ok_or(StoreError::Closed)?;
        let at = current.pos;
        self.buf.extend_from_slice(&id.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        self.buf.extend_from_slice(&frame_crc(id, len, sealed).to_le_bytes());
        self.buf.extend_from_slice(sealed);
        current.pos += need;
        Ok(Location { file: current.first_id, offset: at, len: need as u32 })
    }

    /// Writes the buffered frames (no sync): readers on other threads find them.
    pub fn flush(&mut self) -> Result<(), StoreError> {
        let Some(current) = self.current.as_mut() else { return Ok(()) };
        if self.buf.is_empty() {
            return Ok(());
        }
        let written = current.file.write_all_at(&self.buf, current.written);
        if let Err(e) = written {
            // Never write on behind frames that may be torn: the next append starts a file.
            let path = current.path.clone();
            self.current = None;
            self.buf.clear();
            return Err(storage("write", &path, e));
        }
        current.written += self.buf.len() as u64;
        current.dirty = true;
        self.buf.clear();
        Ok(())
    }

    /// Writes the buffered frames and makes every frame appended so far durable.
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.flush()?;
        if let Some(current) = self.current.as_mut().filter(|c| c.dirty) {
            current.file.sync_data().map_err(|e| storage("sync", &current.path, e))?;
            current.dirty = false;
        }
        Ok(())
    }

    /// Starts a new file whose first id is `first_id` (the current one is written and synced
    /// first), then syncs the folder.
    fn roll(&mut self, first_id: u64) -> Result<(), StoreError> {
        self.sync()?;
        self.current = None;
        std::fs::create_dir_all(&self.dir).map_err(|e| storage("create", &self.dir, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        }
        let path = self.dir.join(file_name(first_id));
        let file = create_private(&path)?;
        if let Err(e) = file.write_all_at(&header(first_id), 0).and_then(|()| file.sync_data()) {
            drop(file);
            let _ = std::fs::remove_file(&path);
            return Err(storage("start", &path, e));
        }
        sync_dir(&self.dir)?;
        if self.files.back() != Some(&first_id) {
            self.files.push_back(first_id);
        }
        let pos = HEADER as u64;
        self.current = Some(Current { first_id, file, path, pos, written: pos, dirty: false });
        Ok(())
    }

    /// Deletes the files whose every event is below `lowest_kept` (the next file starts at or
    /// below it), never the one being written; then syncs the folder. Returns how many went.
    pub fn remove_below(&mut self, lowest_kept: u64) -> usize {
        let writing = self.current.as_ref().map(|c| c.first_id);
        let mut removed = 0;
        while self.files.len() > 1
            && self.files.get(1).is_some_and(|next| *next <= lowest_kept)
            && self.files.front().copied() != writing
        {
            let Some(first) = self.files.pop_front() else { break };
            let path = self.dir.join(file_name(first));
            match std::fs::remove_file(&path) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!("cannot remove {}: {e}", path.display());
                    self.files.push_front(first);
                    break;
                }
            }
        }
        if removed > 0
            && let Err(e) = sync_dir(&self.dir)
        {
            tracing::warn!("{e}");
        }
        removed
    }
}

/// Reads records back by location, from any thread; keeps the files it opened open.
pub struct Reader {
    dir: PathBuf,
    open: Mutex<HashMap<u64, Arc<File>>>,
}

impl Reader {
    /// A reader of the event files of `state_dir`.
    pub fn new(state_dir: &Path) -> Reader {
        Reader { dir: state_dir.join(DIR), open: Mutex::new(HashMap::new()) }
    }

    fn file(&self, first_id: u64) -> Result<Arc<File>, ReadError> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(file) = open.get(&first_id) {
            return Ok(file.clone());
        }
        let path = self.dir.join(file_name(first_id));
        let file = match File::open(&path) {
            Ok(file) => Arc::new(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ReadError::Missing(first_id));
            }
            Err(e) => return Err(ReadError::Io { file: first_id, message: e.to_string() }),
        };
        open.insert(first_id, file.clone());
        Ok(file)
    }

    /// The path of the file whose first id is `first_id`.
    pub fn path_of(&self, first_id: u64) -> PathBuf {
        self.dir.join(file_name(first_id))
    }

    /// The payload (a sealed record) of event `id` at `at`.
    pub fn read(&self, at: Location, id: u64) -> Result<Vec<u8>, ReadError> {
        let damaged = |why| ReadError::Damaged { file: at.file, offset: at.offset, why };
        if (at.len as usize) < FRAME_HEADER || at.offset < HEADER as u64 {
            return Err(damaged("a location that cannot hold a frame"));
        }
        let file = self.file(at.file)?;
        let mut bytes = vec![0u8; at.len as usize];
        match file.read_exact_at(&mut bytes, at.offset) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(damaged("the file ends before the frame does"));
            }
            Err(e) => return Err(ReadError::Io { file: at.file, message: e.to_string() }),
        }
        let (found, payload) = frame_of(&bytes).map_err(damaged)?;
        if found != id {
            return Err(damaged("a frame of another event"));
        }
        if FRAME_HEADER + payload.len() != bytes.len() {
            return Err(damaged("a frame of another length"));
        }
        bytes.drain(..FRAME_HEADER);
        Ok(bytes)
    }

    /// Closes the files whose first id is below `first_id` (they were removed).
    pub fn forget_below(&self, first_id: u64) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| *id >= first_id);
    }
}

/// One sound frame found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The event id it names.
    pub id: u64,
    /// Where it is.
    pub at: Location,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// What [`scan`] read of one file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FileScan {
    /// The file's first id (its name).
    pub first_id: u64,
    /// Whether its header is sound.
    pub header: bool,
    /// Stretches (offset, length) that held no sound frame and were not zeros: damage, or a
    /// torn tail.
    pub damaged: Vec<(u64, u64)>,
}

/// Every sound frame of every event file of `state_dir`, oldest file first, for `journal
/// verify` and `journal salvage`: past a frame that is damaged, the scan looks for the next
/// sound one at each later byte (a frame proves itself by its CRC); zeros end a file.
pub fn scan(state_dir: &Path) -> Result<(Vec<Found>, Vec<FileScan>), StoreError> {
    let dir = state_dir.join(DIR);
    let mut found = Vec::new();
    let mut files = Vec::new();
    for (first_id, path) in list(&dir)? {
        let bytes = std::fs::read(&path).map_err(|e| storage("read", &path, e))?;
        let mut report =
            FileScan { first_id, header: header_of(&bytes) == Some(first_id), damaged: Vec::new() };
        let mut at = HEADER.min(bytes.len());
        let mut bad_from: Option<usize> = None;
        while at < bytes.len() {
            match frame_of(&bytes[at..]) {
                Ok((id, payload)) => {
                    if let Some(from) = bad_from.take() {
                        report.damaged.push((from as u64, (at - from) as u64));
                    }
                    let len = FRAME_HEADER + payload.len();
                    found.push(Found {
                        id,
                        at: Location { file: first_id, offset: at as u64, len: len as u32 },
                        payload: payload.to_vec(),
                    });
                    at += len;
                }
                // Zeros to the end: never written (checked only where a frame would start
                // with zeros, so a damaged stretch costs one pass, not one a byte).
                Err("never written") if bytes[at..].iter().all(|b| *b == 0) => break,
                Err(_) => {
                    bad_from.get_or_insert(at);
                    at += 1;
                }
            }
        }
        if let Some(from) = bad_from {
            report.damaged.push((from as u64, (at - from) as u64));
        }
        files.push(report);
    }
    Ok((found, files))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(id: u64) -> Vec<u8> {
        format!("record of event {id} ").repeat((id % 7 + 1) as usize).into_bytes()
    }

    #[test]
    fn records_read_back_by_location_once_flushed_and_a_wrong_id_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path()).unwrap();
        let at: Vec<(u64, Location)> =
            (1..=50).map(|id| (id, writer.append(id, &payload(id)).unwrap())).collect();
        writer.flush().unwrap();
        let reader = Reader::new(dir.path());
        for (id, location) in &at {
            assert_eq!(reader.read(*location, *id).unwrap(), payload(*id));
            assert_eq!(Location::decode(&location.encode()), Some(*location));
        }
        let (id, location) = at[3];
        assert!(matches!(reader.read(location, id + 1), Err(ReadError::Damaged { .. })));
        let shifted = Location { offset: location.offset + 1, ..location };
        assert!(matches!(reader.read(shifted, id), Err(ReadError::Damaged { .. })));
        let missing = Location { file: 999, ..location };
        assert_eq!(reader.read(missing, id), Err(ReadError::Missing(999)));
    }

    #[test]
    fn a_flipped_byte_reads_as_damage_and_the_scan_finds_the_frames_around_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path()).unwrap();
        let at: Vec<Location> =
            (1..=20).map(|id| writer.append(id, &payload(id)).unwrap()).collect();
        writer.sync().unwrap();
        let path = dir.path().join(DIR).join(file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        let hit = at[9].offset as usize + FRAME_HEADER + 3;
        bytes[hit] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let reader = Reader::new(dir.path());
        assert!(matches!(reader.read(at[9], 10), Err(ReadError::Damaged { .. })));
        assert_eq!(reader.read(at[10], 11).unwrap(), payload(11));
        let (found, files) = scan(dir.path()).unwrap();
        let ids: Vec<u64> = found.iter().map(|f| f.id).collect();
        assert_eq!(ids, (1..=20).filter(|id| *id != 10).collect::<Vec<_>>());
        assert!(found.iter().all(|f| f.payload == payload(f.id)));
        assert_eq!(files.len(), 1);
        assert!(files[0].header);
        assert_eq!(files[0].damaged, vec![(at[9].offset, u64::from(at[9].len))]);
    }

    #[test]
    fn files_roll_over_and_go_whole_once_every_event_in_them_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open_with(dir.path(), 1024).unwrap();
        let at: Vec<Location> =
            (1..=100).map(|id| writer.append(id, &payload(id)).unwrap()).collect();
        writer.sync().unwrap();
        let firsts: Vec<u64> = writer.files().collect();
        assert!(firsts.len() > 5, "{firsts:?}");
        assert_eq!(firsts[0], 1);
        // Nothing goes while the second file's first event is kept.
        assert_eq!(writer.remove_below(firsts[1]), 1);
        assert_eq!(writer.remove_below(firsts[1]), 0);
        let reader = Reader::new(dir.path());
        assert_eq!(reader.read(at[0], 1), Err(ReadError::Missing(1)));
        let second = (firsts[1] - 1) as usize;
        assert_eq!(reader.read(at[second], firsts[1]).unwrap(), payload(firsts[1]));
        // Everything but the file being written.
        writer.remove_below(u64::MAX);
        assert_eq!(writer.files().collect::<Vec<_>>(), vec![*firsts.last().unwrap()]);
        assert_eq!(reader.read(at[99], 100).unwrap(), payload(100));
        reader.forget_below(*firsts.last().unwrap());
        assert_eq!(reader.read(at[0], 1), Err(ReadError::Missing(1)));
    }

    #[test]
    fn a_new_process_starts_a_new_file_after_a_torn_tail_and_the_scan_reads_both() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path()).unwrap();
        for id in 1..=10 {
            writer.append(id, &payload(id)).unwrap();
        }
        writer.sync().unwrap();
        drop(writer);
        // A torn frame after the last sound one, as a crash mid-write leaves.
        let path = dir.path().join(DIR).join(file_name(1));
        let mut file = std::fs::OpenOptions::new().append(true).open(&path).unwrap();
        std::io::Write::write_all(&mut file, &[7, 0, 0, 0, 0, 0, 0, 0, 9, 9]).unwrap();
        drop(file);
        let mut writer = Writer::open(dir.path()).unwrap();
        let later = writer.append(11, &payload(11)).unwrap();
        writer.flush().unwrap();
        assert_eq!(later.file, 11);
        assert_eq!(writer.files().collect::<Vec<_>>(), vec![1, 11]);
        assert_eq!(Reader::new(dir.path()).read(later, 11).unwrap(), payload(11));
        let (found, files) = scan(dir.path()).unwrap();
        assert_eq!(found.iter().map(|f| f.id).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
        assert_eq!(files[0].damaged.len(), 1, "{files:?}");
        assert!(files[1].damaged.is_empty());
    }

    #[test]
    fn a_damaged_header_is_reported_and_its_frames_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = Writer::open(dir.path()).unwrap();
        for id in 1..=3 {
            writer.append(id, &payload(id)).unwrap();
        }
        writer.sync().unwrap();
        let path = dir.path().join(DIR).join(file_name(1));
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[2] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let (found, files) = scan(dir.path()).unwrap();
        assert_eq!(found.len(), 3);
        assert!(!files[0].header);
    }
}
