//! Recovery when the journal is opened: the write-ahead log is read (every frame checked), the
//! tables are brought up to it (its entries above `meta` `wal_applied`, the last checkpoint;
//! an event the tables hold already is left as it is, so a replay done twice changes nothing)
//! in one durable transaction, and the segments behind it are recycled.
//!
//! A log that lacks entries its own headers say were written (a segment missing, a damaged
//! frame in the middle) above what the tables hold is refused like a journal cut short: those
//! events were answered 200.

use std::path::Path;

use redb::Database;

use super::{
    store,
    store::db,
    wal::{self, Wal, read},
    writer,
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

/// Reads the log in `state_dir` and replays into `database` what it lacks.
pub fn replay(state_dir: &Path, database: &Database) -> Result<Recovered, StoreError> {
    let applied = store::guard("reading the checkpoint", || store::wal_applied(database))?;
    let dir = state_dir.join(wal::DIR);
    let scan = read::scan(&dir, applied)?;
    if let Some(lost) = scan.describe_lost() {
        return Err(StoreError::Refused(format!(
            "{lost}. Copy what is readable with `b24-host journal salvage --to NEW` and put NEW \
             in place of {} (it takes what the log holds), or move {} away to start with what \
             {} holds",
            state_dir.join(super::FILE_NAME).display(),
            dir.display(),
            state_dir.join(super::FILE_NAME).display(),
        )));
    }
    let mut applied_now = applied;
    if let Some(last) = scan.entries.last() {
        let count = scan.entries.len();
        store::guard("replaying the write-ahead log", || {
            let txn = db(database.begin_write())?;
            {
                let mut tables = store::Tables::open(&txn)?;
                for entry in &scan.entries {
                    if !tables.has_event(entry.id)? {
                        writer::insert_entry(&mut tables, entry)?;
                    }
                }
                tables.set_wal_applied(last.id)?;
                let next = store::next_id(database).unwrap_or(1).max(scan.next_id);
                tables.set_next_id(next)?;
            }
            db(txn.commit())
        })?;
        applied_now = last.id;
        tracing::info!(
            events = count,
            up_to = last.id,
            "replayed the write-ahead log's events the journal file did not hold yet"
        );
    }
    let mut wal = Wal::open(state_dir, wal::SEGMENT_BYTES, &scan)?;
    wal.recycle(applied_now);
    Ok(Recovered { wal, highest: scan.highest, next_id: scan.next_id, applied: applied_now })
}
