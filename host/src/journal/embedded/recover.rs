//! Bringing the tables up to the write-ahead log: when the journal is opened, and by the writer
//! each time it reopens the file after a storage error. The log is read (every frame checked),
//! its entries above the file's durable checkpoint (`meta` `wal_applied`) are written into the
//! tables (an event the tables hold already is left as it is, so a replay done twice changes
//! nothing) in one durable transaction, and the segments behind it are recycled.
//!
//! The file's own checkpoint is what counts, not what the writer applied before the error:
//! changes committed without an fsync may be gone from a file reopened after an error, and the
//! log still holds them.
//!
//! A log that lacks entries its own headers say were written (a segment missing, a damaged
//! frame in the middle) above what the tables hold is refused like a journal cut short: those
//! events were answered 200.

use std::{collections::HashMap, path::Path, sync::Arc};

use super::{
    apply, store,
    store::db,
    wal::{self, Wal, read},
};
use crate::journal::StoreError;

/// What recovery found, and the log ready for the writer.
pub struct Recovered {
    /// The log.
    pub wal: Wal,
    /// The highest id of any entry the log holds (0: none).
    pub highest: u64,
    /// The lowest id the writer may hand out, as far as the log knows.
    pub next_id: u64,
    /// The highest log id the tables hold now.
    pub applied: u64,
}

/// The tables brought up to the log.
pub struct CaughtUp {
    /// What the log holds.
    pub scan: read::Scan,
    /// The highest log id the tables durably hold now.
    pub applied: u64,
    /// How many entries the tables took now.
    pub taken: usize,
    /// Per plugin, the highest event id taken now for it.
    pub woken: HashMap<Arc<str>, u64>,
}

/// Reads the log in `dir` and writes into `database`, durably, what it holds above the file's
/// checkpoint; `next_id` is the lowest id the writer may hand out (at least).
pub fn catch_up(dir: &Path, database: &store::Store, next_id: u64) -> Result<CaughtUp, StoreError> {
    let applied = store::guard("reading the checkpoint", || store::wal_applied(database))?;
    let mut scan = read::scan(dir, applied)?;
    if let Some(lost) = scan.describe_lost() {
        return Err(StoreError::Refused(format!(
            "{lost}. Copy what is readable with `b24-host journal salvage --to NEW` and put NEW \
             in place of {} (it takes what the log holds), or move {} away to start with what \
             {} holds",
            dir.with_file_name(super::FILE_NAME).display(),
            dir.display(),
            dir.with_file_name(super::FILE_NAME).display(),
        )));
    }
    let entries = std::mem::take(&mut scan.entries);
    let mut woken: HashMap<Arc<str>, u64> = HashMap::new();
    let Some(last) = entries.last().map(|e| e.id) else {
        return Ok(CaughtUp { scan, applied, taken: 0, woken });
    };
    store::guard("replaying the write-ahead log", || {
        let txn = db(database.begin_write())?;
        let mut files = database.writer.lock().unwrap_or_else(|p| p.into_inner());
        {
            let mut tables = store::Tables::open(&txn)?.with_files(&mut files);
            for entry in &entries {
                if !tables.has_event(entry.id)? {
                    apply::insert_entry(&mut tables, entry)?;
                    for plugin in &entry.plugins {
                        woken.insert(plugin.clone(), entry.id);
                    }
                }
            }
            tables.set_wal_applied(last)?;
            let next = store::next_id(database).unwrap_or(1).max(scan.next_id).max(next_id);
            tables.set_next_id(next)?;
        }
        // The records the rows point at are durable before the rows are.
        files.sync()?;
        db(txn.commit())
    })
    .map_err(|e| {
        StoreError::Refused(format!(
            "{} cannot take the events its write-ahead log holds after id {applied} (up to \
             {last}; they stay in {}): {e}. The file may be damaged: check it with `b24-host \
             journal verify`, and copy what is readable, with the log's events, with `b24-host \
             journal salvage --to NEW`",
            dir.with_file_name(super::FILE_NAME).display(),
            dir.display(),
        ))
    })?;
    Ok(CaughtUp { scan, applied: last, taken: entries.len(), woken })
}

/// Reads the log in `state_dir` and replays into `database` what it lacks.
pub fn replay(state_dir: &Path, database: &store::Store) -> Result<Recovered, StoreError> {
    let caught = catch_up(&state_dir.join(wal::DIR), database, 1)?;
    if caught.taken > 0 {
        tracing::info!(
            events = caught.taken,
            up_to = caught.applied,
            "replayed the write-ahead log's events the journal file did not hold yet"
        );
    }
    let mut wal = Wal::open(state_dir, wal::SEGMENT_BYTES, &caught.scan)?;
    wal.recycle(caught.applied);
    Ok(Recovered {
        wal,
        highest: caught.scan.highest,
        next_id: caught.scan.next_id,
        applied: caught.applied,
    })
}
