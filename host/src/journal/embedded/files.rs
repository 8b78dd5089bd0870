//! The plumbing the journal's own files share (the log's segments and the event files): a new
//! private file, a synced folder, and an I/O failure named with its file.
//!
//! It knows nothing of what the files hold.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::OpenOptionsExt,
    path::Path,
};

use crate::journal::StoreError;

/// An I/O failure on `path`, saying what was being done.
pub fn storage(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Storage(format!("cannot {what} {}: {e}", path.display()))
}

/// Creates `path` empty (emptying a file left there), readable and writable by the owner
/// only: the journal's files hold portal data.
pub fn create_private(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| storage("create", path, e))
}

/// Makes the folder's entries (files created, renamed or removed) durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| storage("sync the folder", dir, e))
}
