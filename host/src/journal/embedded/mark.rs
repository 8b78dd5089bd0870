//! The mark (`journal.mark` beside `journal.redb`): the highest event id this host journaled
//! and the journal file's size, kept outside the file so that a journal found missing, empty or
//! cut short can be told apart from a new one. The host refuses to start on such a journal
//! rather than start empty and lose its events without a word.
//!
//! The writer rewrites the mark in place (one `pwrite`, no fsync) after each write of the
//! write-ahead log that added events (`wal.rs`: the events are durable there before the file
//! holds them), and fsyncs it every few seconds and at shutdown: the mark never claims more
//! than the journal made durable, and may lag it by a few seconds after a power loss, which
//! errs on the side of starting. At the start the highest id the journal holds is the file's
//! or the log's, whichever is higher (the log is replayed into the file first): a journal file
//! or a log missing or cut short where the other does not hold what the mark says is refused.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::journal::StoreError;

/// The mark's file name inside the state folder.
pub const FILE_NAME: &str = "journal.mark";

/// How often a changed mark is fsynced.
const SYNC_EVERY: Duration = Duration::from_secs(5);

/// What the mark says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marked {
    /// The highest event id journaled.
    pub highest_id: u64,
    /// The journal file's size when last noted, bytes.
    pub file_bytes: u64,
}

fn line(marked: Marked) -> String {
    format!(
        "b24-host journal mark 1 highest_id={:020} file_bytes={:020}\n",
        marked.highest_id, marked.file_bytes
    )
}

/// Reads the mark in `state_dir`; `None` if there is none.
pub fn read(state_dir: &Path) -> Result<Option<Marked>, StoreError> {
    let path = state_dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(StoreError::Refused(format!("cannot read {}: {e}", path.display())));
        }
    };
    let field = |name: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(name)?.strip_prefix('=')?.parse::<u64>().ok())
    };
    match (text.starts_with("b24-host journal mark 1 "), field("highest_id"), field("file_bytes")) {
        (true, Some(highest_id), Some(file_bytes)) => Ok(Some(Marked { highest_id, file_bytes })),
        _ => Err(StoreError::Refused(format!(
            "{} is not a journal mark this host can read; remove it to start without the check",
            path.display()
        ))),
    }
}

/// Checks the journal file in `state_dir` against the mark before it is opened: missing or
/// empty where the host had journaled events is refused with what to do.
pub fn check_file(
    state_dir: &Path,
    journal: &Path,
    marked: Option<Marked>,
) -> Result<(), StoreError> {
    let Some(marked) = marked.filter(|m| m.highest_id > 0) else { return Ok(()) };
    let state = match std::fs::metadata(journal) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is missing",
        Ok(meta) if meta.len() == 0 => "is empty",
        _ => return Ok(()),
    };
    Err(refusal(state_dir, journal, state, marked))
}

/// The refusal for a journal that lost what the mark says it held.
pub fn refusal(state_dir: &Path, journal: &Path, what: &str, marked: Marked) -> StoreError {
    StoreError::Refused(format!(
        "{} {what}, but this host had journaled events up to id {} ({} bytes then; {}). \
         Restore it from a backup, or copy what is readable with \
         `b24-host journal salvage --to NEW` and put NEW in its place, \
         or remove {} to start with what is there",
        journal.display(),
        marked.highest_id,
        marked.file_bytes,
        state_dir.join(FILE_NAME).display(),
        state_dir.join(FILE_NAME).display(),
    ))
}

/// The writer's handle on the mark.
pub struct Mark {
    file: File,
    journal: PathBuf,
    marked: Marked,
    dirty: bool,
    synced_at: Instant,
}

impl Mark {
    /// Opens (creating) the mark in `state_dir`, noting `highest_id` at once.
    pub fn open(state_dir: &Path, journal: &Path, highest_id: u64) -> Result<Mark, StoreError> {
        let path = state_dir.join(FILE_NAME);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::Storage(format!("cannot open {}: {e}", path.display())))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        }
        let mut mark = Mark {
            file,
            journal: journal.to_owned(),
            marked: Marked { highest_id, file_bytes: 0 },
            dirty: true,
            synced_at: Instant::now(),
        };
        mark.sync();
        Ok(mark)
    }

    /// Notes a committed highest id (page cache only; see [`Mark::tick`]).
    pub fn note(&mut self, highest_id: u64) {
        if highest_id <= self.marked.highest_id {
            return;
        }
        self.marked.highest_id = highest_id;
        self.dirty = true;
        let _ = self.file.write_all_at(line(self.marked).as_bytes(), 0);
    }

    /// Fsyncs a changed mark if the last fsync is [`SYNC_EVERY`] old.
    pub fn tick(&mut self) {
        if self.dirty && self.synced_at.elapsed() >= SYNC_EVERY {
            self.sync();
        }
    }

    /// Writes the mark with the file's current size and fsyncs it (also at shutdown).
    pub fn sync(&mut self) {
        if let Ok(meta) = std::fs::metadata(&self.journal) {
            self.marked.file_bytes = meta.len();
        }
        let text = line(self.marked);
        let _ = self.file.set_len(text.len() as u64);
        if let Err(e) =
            self.file.write_all_at(text.as_bytes(), 0).and_then(|()| self.file.sync_data())
        {
            tracing::warn!("cannot write the journal mark: {e}");
        }
        self.dirty = false;
        self.synced_at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_journal_is_refused_only_where_events_were_journaled() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.redb");
        assert!(read(dir.path()).unwrap().is_none());
        check_file(dir.path(), &journal, None).unwrap();
        let mut mark = Mark::open(dir.path(), &journal, 0).unwrap();
        mark.note(3000);
        mark.sync();
        let marked = read(dir.path()).unwrap().unwrap();
        assert_eq!(marked.highest_id, 3000);
        let e = check_file(dir.path(), &journal, Some(marked)).unwrap_err().to_string();
        assert!(e.contains("is missing") && e.contains("up to id 3000"), "{e}");
        std::fs::write(&journal, b"").unwrap();
        let e = check_file(dir.path(), &journal, Some(marked)).unwrap_err().to_string();
        assert!(e.contains("is empty") && e.contains("journal salvage"), "{e}");
    }
}
