//! The embedded backend's tables in the redb file, and the reads and writes on them: writes
//! only from the writer thread, reads from anyone holding the `Slot`'s current handle.
//!
//! | table | key | value |
//! |---|---|---|
//! | `events` | event id | [`EventRecord`]: metadata + raw body |
//! | `pending` | (plugin, event id) | [`Pending`]: attempts so far, next attempt time, last error, crashes |
//! | `dead` | (plugin, event id) | [`DeadLetter`]: why the plugin gave up on it |
//! | `tokens` | member_id | application token learned from `ONAPPINSTALL` |
//! | `meta` | name | counters (`next_id`) |
//! | `oauth` | member_id | the portal's OAuth tokens, from `ONAPPINSTALL` and refreshes |
//! | `offline_seen` | offline row key | the event id an offline-queue row became |
//! | `state` | name | small state of the host's tasks (an offline batch's `process_id`) |
//! | `attempts` | (event id, plugin, n) | [`Attempt`]: one delivery attempt, for the console |
//! | `completed` | event id | an empty sealed value: the event has no pending or dead row left |
//!
//! An event is *complete* for a plugin when it has neither a pending nor a dead row for it;
//! a complete event with no rows at all may be pruned. Its attempt rows go with it: they are
//! history, bounded to [`MAX_ATTEMPTS_KEPT`] per (event, plugin) (the first and the latest),
//! and keyed by event first so that one event's attempts are one range read.
//!
//! `completed` is the index pruning reads, so that it never walks the events some plugin still
//! holds (issue 20: a plugin without its library held 22,000 events and every write batch
//! walked them). An event enters it in the transaction that removes its last row (a plugin's
//! `complete`, a purged dead letter) or, with no recipient, in the one that appends it; it
//! leaves it when pruned. Being in the same transactions as the rows, it cannot go stale in a
//! crash; a file without it (written before it existed) gets it built when opened
//! ([`rebuild_completed`], once: `meta` `completed_index`), as does a salvaged journal. Prune
//! trusts it only as a list of candidates: each is checked to hold no row before it goes, and
//! a wrong entry (damage) is dropped.

use crate::journal::record::Sealed as _;
use std::{collections::BTreeMap, path::Path};

/// A storage library error as the backend-neutral [`StoreError::Db`].
pub(super) fn db_error(e: impl Into<redb::Error>) -> StoreError {
    StoreError::Db(e.into().to_string())
}

use b24_plugin_api::Secret;
use redb::{
    Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    WriteTransaction,
};

use super::records;
use crate::journal::{
    StoreError,
    admin::{Attempt, MAX_ATTEMPTS_KEPT, SKIPPED, Selection},
    checksum::{self, Damage},
    dedup::DedupKey,
    record::{self, EventMeta},
    record::{DeadLetter, EventRecord, Pending, seal_row, unseal_row},
};

/// Event id -> where its record is in the event files ([`Pointer`], sealed), or the record
/// itself (events journaled before the event files, records copied out of a file about to go,
/// and tests and salvage, which write no event files): [`Row`].
pub const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
/// (plugin, event id) -> pending state.
pub const PENDING: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("pending");
/// (plugin, event id) -> dead letter.
pub const DEAD: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("dead");
/// member_id -> learned application token.
pub const TOKENS: TableDefinition<&str, &str> = TableDefinition::new("tokens");
/// Counters.
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Duplicate key of an offline row -> the event it became. Kept as long as the event, so a
/// batch pulled again after a crash is recognised however long the host was down.
pub const OFFLINE_SEEN: TableDefinition<&[u8], u64> = TableDefinition::new("offline_seen");
/// Small named state of the host's own tasks (e.g. `offline_process:<member_id>`).
pub const STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("state");
/// member_id -> the portal's OAuth tokens (JSON), for REST calls on its behalf.
pub const OAUTH: TableDefinition<&str, &[u8]> = TableDefinition::new("oauth");

/// (event id, plugin, attempt number) -> attempt (checksummed JSON).
pub const ATTEMPTS: TableDefinition<(u64, &str, u32), &[u8]> = TableDefinition::new("attempts");

/// Event id -> an empty value sealed under [`checksum::completed_key`]: the events no plugin
/// holds any more, oldest first, which is what pruning reads.
pub const COMPLETED: TableDefinition<u64, &[u8]> = TableDefinition::new("completed");

/// The `meta` entry saying which version of the `completed` index the file holds; a file
/// without it gets the index built when opened.
pub const COMPLETED_INDEX: &str = "completed_index";
/// `meta` key: the highest id of the write-ahead log whose entry the tables hold. The
/// write-ahead log's entries above it are replayed at the start (`wal.rs`).
pub const WAL_APPLIED: &str = "wal_applied";

/// Shorthand: a redb result into a store result.
pub fn db<T, E: Into<redb::Error>>(result: Result<T, E>) -> Result<T, StoreError> {
    result.map_err(db_error)
}

/// Runs `work` on the file, turning a panic of the storage library (redb panics on some
/// damaged pages) into [`StoreError::Damaged`]: no storage panic ends the host.
pub fn guard<T>(
    what: &'static str,
    work: impl FnOnce() -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        tracing::error!(what, "the journal's storage library panicked: {message}");
        Err(StoreError::Damaged { what, message })
    })
}

/// redb's page cache. Its default (1 GiB) would let the cache grow with the journal; the hot
/// part is the newest pages, which this holds many times over. It is most of the host's
/// resident memory: at 16 MiB the peak at point (4) of `bench/load.sh` was 10 MiB higher with
/// the same CPU an event and p99 (the prune's reads of the oldest pages miss at any size that
/// does not hold the whole journal; BENCHMARKS.md, 2026-12-07 evening).
const CACHE_BYTES: usize = 8 * 1024 * 1024;

/// The journal's redb file and the event files beside it ([`records`]): the `events` table's
/// rows of new events point into those files, so whatever reads a record goes through here.
/// Derefs to the redb file.
pub struct Store {
    database: Database,
    /// Reads the records the `events` table points at, from any thread.
    pub files: records::Reader,
    /// Writes them: the tables' thread's alone (and recovery's, before it starts).
    pub writer: std::sync::Mutex<records::Writer>,
}

impl std::ops::Deref for Store {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.database
    }
}

impl Store {
    /// The record of event `id` from its `events` row `stored`, checked against its checksum
    /// (the row's, and for a row that points into the event files, the frame's and the
    /// record's own).
    pub fn record(&self, id: u64, stored: &[u8]) -> Result<EventRecord, Damage> {
        match opened(id, stored)? {
            Row::Record(body) => EventRecord::decode(body).ok_or(Damage::Unreadable),
            Row::At(pointer) => self.pointed(id, &pointer),
        }
    }

    /// Only the metadata of event `id`'s record, from its `events` row `stored`.
    pub fn meta(&self, id: u64, stored: &[u8]) -> Result<EventMeta, Damage> {
        match opened(id, stored)? {
            Row::Record(body) => record::meta_of(body),
            Row::At(pointer) => self.pointed(id, &pointer).map(|r| r.meta),
        }
    }

    /// Event `id`'s record, checked, from the event files; when its file is gone or the frame
    /// is not its own, the row is read again first: the tables' thread may have copied the
    /// record into the table (and removed the file) since the row was read.
    fn pointed(&self, id: u64, pointer: &Pointer) -> Result<EventRecord, Damage> {
        let error = match self.files.read(pointer.at, id) {
            Ok(sealed) => return EventRecord::unseal(id, &sealed),
            Err(e) => e,
        };
        // (Another thread's read of a row it read before the copy.)
        let again = guard("reading an event record again", || {
            let txn = db(self.database.begin_read())?;
            let events = db(txn.open_table(EVENTS))?;
            Ok(db(events.get(id))?.map(|v| v.value().to_vec()))
        });
        if let Ok(Some(stored)) = again
            && let Ok(Row::Record(body)) = opened(id, &stored)
        {
            return EventRecord::decode(body).ok_or(Damage::Unreadable);
        }
        tracing::warn!(event_id = id, "{error}");
        Err(damage_of(&error))
    }
}

/// What a failed read of the event files means for the record.
fn damage_of(error: &records::ReadError) -> Damage {
    match error {
        records::ReadError::Missing(_) => Damage::Missing,
        records::ReadError::Damaged { .. } => Damage::Checksum,
        records::ReadError::Io { .. } => Damage::Unreadable,
    }
}

/// Event `id`'s record from its `events` row `stored`, a row that points reading `files`
/// (`journal verify` and `salvage`, on a stopped host: nothing changes the rows meanwhile).
pub fn record_in(
    files: &records::Reader,
    id: u64,
    stored: &[u8],
) -> Result<EventRecord, (Damage, Option<records::ReadError>)> {
    match opened(id, stored).map_err(|d| (d, None))? {
        Row::Record(body) => EventRecord::decode(body).ok_or((Damage::Unreadable, None)),
        Row::At(pointer) => match files.read(pointer.at, id) {
            Ok(sealed) => EventRecord::unseal(id, &sealed).map_err(|d| (d, None)),
            Err(e) => Err((damage_of(&e), Some(e))),
        },
    }
}

/// What an `events` row holds: a record (events journaled before the event files, and those
/// copied out of a file about to go), or where the event files hold it.
pub enum Row<'a> {
    /// The record's unsealed body.
    Record(&'a [u8]),
    /// Where it is.
    At(Pointer),
}

/// An `events` row that points into the event files, with what pruning needs to know
/// without reading the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pointer {
    /// Where the record is.
    pub at: records::Location,
    /// When the tables took the event: within milliseconds of its receipt (later for events
    /// the log replayed after a crash, which are then kept that much longer).
    pub received_at_ms: i64,
    /// An offline row's key, kept as long as its event.
    pub offline_key: Option<DedupKey>,
}

/// A pointer row's body starts with these bytes; a record's starts with the length of its
/// metadata, which is never this large.
const POINTER: [u8; 4] = [0xFE, 0xFF, 0xFF, 0xFF];

/// `pointer` sealed as event `id`'s `events` row.
pub fn seal_pointer(id: u64, pointer: &Pointer) -> Vec<u8> {
    checksum::seal_with(&checksum::event_key(id), 4 + 20 + 8 + 17, |out| {
        out.extend_from_slice(&POINTER);
        out.extend_from_slice(&pointer.at.encode());
        out.extend_from_slice(&pointer.received_at_ms.to_le_bytes());
        match &pointer.offline_key {
            Some(key) => {
                out.push(1);
                out.extend_from_slice(key);
            }
            None => out.push(0),
        }
    })
}

/// Event `id`'s `events` row `stored`, checked against its checksum.
pub fn opened(id: u64, stored: &[u8]) -> Result<Row<'_>, Damage> {
    let body = checksum::unseal(&checksum::event_key(id), stored)?;
    let Some(rest) = body.strip_prefix(&POINTER) else { return Ok(Row::Record(body)) };
    let at = rest.get(..records::Location::BYTES).and_then(records::Location::decode);
    let received = rest.get(20..28).and_then(|b| b.try_into().ok()).map(i64::from_le_bytes);
    let offline_key = match rest.get(28) {
        Some(0) => Some(None),
        Some(1) => rest.get(29..45).and_then(|k| k.try_into().ok()).map(Some),
        _ => None,
    };
    match (at, received, offline_key) {
        (Some(at), Some(received_at_ms), Some(offline_key)) => {
            Ok(Row::At(Pointer { at, received_at_ms, offline_key }))
        }
        _ => Err(Damage::Unreadable),
    }
}

/// When event `id` (its `events` row `stored`) was received, and its offline key if it is an
/// offline event's, without reading a record the row points at.
pub fn received_and_key(id: u64, stored: &[u8]) -> Result<(i64, Option<DedupKey>), Damage> {
    match opened(id, stored)? {
        Row::Record(body) => {
            let meta = record::meta_of(body)?;
            let key = (meta.source == crate::journal::record::Source::Offline)
                .then(|| crate::journal::dedup::from_hex(&meta.dedup_key))
                .flatten();
            Ok((meta.received_at_ms, key))
        }
        Row::At(pointer) => Ok((pointer.received_at_ms, pointer.offline_key)),
    }
}

/// Opens (creating if needed) the journal at `path`, with every table present, and the event
/// files beside it.
pub fn open(path: &Path) -> Result<Store, StoreError> {
    let database = guard("opening the journal", || open_unguarded(path))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    Ok(Store {
        database,
        files: records::Reader::new(dir),
        writer: std::sync::Mutex::new(records::Writer::open(dir)?),
    })
}

fn open_unguarded(path: &Path) -> Result<Database, StoreError> {
    let database =
        redb::Builder::new().set_cache_size(CACHE_BYTES).create(path).map_err(|e| match e {
            redb::DatabaseError::DatabaseAlreadyOpen => {
                StoreError::InUse { path: path.display().to_string() }
            }
            other => db_error(other),
        })?;
    let txn = db(database.begin_write())?;
    {
        db(txn.open_table(EVENTS))?;
        db(txn.open_table(PENDING))?;
        db(txn.open_table(DEAD))?;
        db(txn.open_table(TOKENS))?;
        db(txn.open_table(META))?;
        db(txn.open_table(OAUTH))?;
        db(txn.open_table(OFFLINE_SEEN))?;
        db(txn.open_table(STATE))?;
        db(txn.open_table(ATTEMPTS))?;
        db(txn.open_table(COMPLETED))?;
        let indexed = db(db(txn.open_table(META))?.get(COMPLETED_INDEX))?.is_some();
        if !indexed {
            let found = rebuild_completed(&txn)?;
            if found > 0 {
                tracing::info!(complete = found, "built the journal's index of complete events");
            }
        }
    }
    db(txn.commit())?;
    // The file holds tokens: owner only.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
    }
    Ok(database)
}

/// Proves the file can take new data: writes a 64 KiB state value durably, then removes it.
/// A file reopened on a still-full disk fails here rather than on the next event.
pub fn probe_write(database: &Database) -> Result<(), StoreError> {
    guard("test-writing the journal", || probe_write_unguarded(database))
}

fn probe_write_unguarded(database: &Database) -> Result<(), StoreError> {
    const PROBE: &str = "write_probe";
    let txn = db(database.begin_write())?;
    {
        let mut state = db(txn.open_table(STATE))?;
        db(state.insert(PROBE, vec![0u8; 64 * 1024].as_slice()))?;
    }
    db(txn.commit())?;
    let txn = db(database.begin_write())?;
    {
        let mut state = db(txn.open_table(STATE))?;
        db(state.remove(PROBE))?;
    }
    db(txn.commit())
}

/// The next event id to hand out.
pub fn next_id(database: &Database) -> Result<u64, StoreError> {
    let txn = db(database.begin_read())?;
    let meta = db(txn.open_table(META))?;
    let stored = db(meta.get("next_id"))?.map(|v| v.value()).unwrap_or(1);
    let events = db(txn.open_table(EVENTS))?;
    let after_last = db(events.last())?.map(|(k, _)| k.value() + 1).unwrap_or(1);
    Ok(stored.max(after_last))
}

/// The highest id of the write-ahead log the tables hold (0: none yet).
pub fn wal_applied(database: &Database) -> Result<u64, StoreError> {
    let txn = db(database.begin_read())?;
    let meta = db(txn.open_table(META))?;
    Ok(db(meta.get(WAL_APPLIED))?.map(|v| v.value()).unwrap_or(0))
}

/// The event an offline row with `key` already became, if any.
pub fn offline_seen(database: &Database, key: &[u8]) -> Result<Option<u64>, StoreError> {
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(OFFLINE_SEEN))?;
    Ok(db(table.get(key))?.map(|v| v.value()))
}

/// Learned application tokens.
pub fn learned_tokens(database: &Database) -> Result<BTreeMap<String, Secret>, StoreError> {
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(TOKENS))?;
    let mut out = BTreeMap::new();
    for row in db(table.iter())? {
        let (k, v) = db(row)?;
        out.insert(k.value().to_owned(), Secret::new(v.value()));
    }
    Ok(out)
}

/// A portal's stored OAuth tokens (JSON), if any.
pub fn oauth(database: &Database, member_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(OAUTH))?;
    Ok(db(table.get(member_id))?.map(|v| v.value().to_vec()))
}

/// A named state value, if set.
pub fn state(database: &Database, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(STATE))?;
    Ok(db(table.get(name))?.map(|v| v.value().to_vec()))
}

/// Reads one event record, checked against its checksum.
pub fn event(database: &Store, id: u64) -> Result<Option<Result<EventRecord, Damage>>, StoreError> {
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(EVENTS))?;
    Ok(db(table.get(id))?.map(|v| database.record(id, v.value())))
}

/// `plugin`'s pending state of event `id`, if it is pending for it.
pub fn pending(database: &Database, plugin: &str, id: u64) -> Result<Option<Pending>, StoreError> {
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(PENDING))?;
    Ok(db(table.get((plugin, id)))?.map(|v| unseal_row(plugin, id, v.value()).unwrap_or_default()))
}

/// Up to `limit` of `plugin`'s pending rows with ids above `after`, in key order, each with
/// its event's record; each checked against its checksum (a missing record is
/// [`Damage::Missing`]). A row whose checksum names another id one flipped bit away (see
/// [`checksum::matching_id`]) belongs to that event: it is returned with both ids, and its
/// record is not read. A damaged page that stops the scan ends it with the rows read before
/// it and the reason.
///
/// The scan starts where a search for `after + 1` through the table's index (its branch pages)
/// lands; a damaged key there sends the search past rows that are in the table, and nothing
/// fails. So the rows just before where it landed are read by walking back from there (the
/// walk goes from page to page, not through the search): any row above `after` found that way
/// was passed over. Then only those rows are returned, in key order, and
/// [`Scanned::passed_over`] says so. Damage that writes spread can send the walk back astray
/// too: when the walk finds nothing and an event of the gap before the first row is pending
/// though no row of it can be looked up ([`gap_hides_rows`]), the table is read from its start
/// (no search) up to that row, and what it holds in the gap is returned the same way.
pub fn scan_pending(
    database: &Store,
    plugin: &str,
    after: u64,
    limit: usize,
) -> Result<Scanned, StoreError> {
    let txn = db(database.begin_read())?;
    let pending = db(txn.open_table(PENDING))?;
    let events = db(txn.open_table(EVENTS))?;
    let mut rows = Vec::new();
    let Some(start) = after.checked_add(1) else {
        return Ok(Scanned { rows, failed: None, passed_over: false, unchecked: None });
    };
    let read = |key: u64, value: &[u8]| {
        let moved = checksum::matching_id(value, key, |id| checksum::row_key(plugin, id));
        let id = moved.unwrap_or(key);
        let record = if moved.is_some() {
            Err(Damage::Missing)
        } else {
            guard("reading an event record", || {
                Ok(match db(events.get(id))? {
                    Some(v) => database.record(id, v.value()),
                    None => Err(Damage::Missing),
                })
            })
            .unwrap_or(Err(Damage::Unreadable))
        };
        ScannedRow { key, id, pending: unseal_row(plugin, id, value), record }
    };
    let mut passed_over = false;
    let mut unchecked = None;
    // A damaged page under one event's record makes that event unreadable, not the scan: the
    // rows read before a damaged pending page are still delivered. The range is open above:
    // redb ends a bounded range at the first key past it, and a row whose plugin name a
    // flipped bit changed would end it there, hiding every row after it.
    let forward = guard("reading pending rows", || {
        for row in db(pending.range((plugin, start)..))? {
            if rows.len() >= limit {
                break;
            }
            let (key, value) = db(row)?;
            let (owner, key) = key.value();
            // A search sent astray may land among another plugin's rows.
            match owner_of(plugin, owner, key, value.value()) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Equal => rows.push(read(key, value.value())),
            }
        }
        Ok(())
    });
    // Rows between `after` and the first one found may have been passed over by a search
    // through a damaged index: unless the first is `after + 1`, they are looked for.
    let gap_open = rows.first().is_none_or(|first| first.key > start);
    let failed = match forward {
        Err(e) if rows.is_empty() => return Err(e),
        Err(e) => {
            if gap_open {
                unchecked = Some(e.to_string());
            }
            Some(e)
        }
        Ok(()) if !gap_open => None,
        Ok(()) => {
            let walked = guard("walking back over pending rows", || {
                let back = match rows.first() {
                    Some(first) => db(pending.range((plugin, 0)..(plugin, first.key)))?,
                    None => db(pending.range((plugin, 0)..=(plugin, u64::MAX)))?,
                };
                let mut skipped = Vec::new();
                for row in back.rev() {
                    let (key, value) = db(row)?;
                    let (owner, key) = key.value();
                    let ours = owner_of(plugin, owner, key, value.value()).is_eq();
                    if !ours || key <= after {
                        break;
                    }
                    skipped.push(read(key, value.value()));
                }
                skipped.reverse();
                Ok(skipped)
            });
            match walked {
                Err(e) if rows.is_empty() => return Err(e),
                // The forward rows are delivered; what lies before them is not known.
                Err(e) => unchecked = Some(e.to_string()),
                Ok(skipped) if !skipped.is_empty() => {
                    rows = skipped;
                    passed_over = true;
                }
                Ok(_) => {
                    // With no row found at all, the gap runs to the end: a search astray can
                    // land past every row as well (damage seed 4: events 1693-2000 pending,
                    // none found, and a look-up of the last one missed it too).
                    let first = rows.first().map_or(u64::MAX, |r| r.key);
                    match hidden_in_gap(&txn, &events, &pending, plugin, after, first, limit, &read)
                    {
                        Err(e) => unchecked = Some(e.to_string()),
                        Ok(found) if !found.is_empty() => {
                            rows = found;
                            passed_over = true;
                        }
                        Ok(_) => {}
                    }
                }
            }
            None
        }
    };
    Ok(Scanned { rows, failed, passed_over, unchecked })
}

/// Whether a pending row keyed `(owner, key)` belongs to `plugin`, as an ordering of `owner`
/// against `plugin`: `Equal` also when a flipped bit changed the row's plugin name, for its
/// checksum still holds under `plugin` (damage seed 233: event 126's row renamed "pvobe" hid
/// every row after it). Costs a checksum only at the edge of the plugin's rows.
fn owner_of(plugin: &str, owner: &str, key: u64, value: &[u8]) -> std::cmp::Ordering {
    match owner.cmp(plugin) {
        std::cmp::Ordering::Equal => std::cmp::Ordering::Equal,
        _ if checksum::unseal(&checksum::row_key(plugin, key), value).is_ok() => {
            std::cmp::Ordering::Equal
        }
        order => order,
    }
}

/// Damage the writes spread can send every search near the rows past them, the walk back's
/// too (damage seed 27: events 257-630, with `/readyz` ready). When an event of the gap
/// between `after` and `first` is pending and no plugin's row can be looked up
/// ([`gap_hides_rows`]), the table is read from its start, without a search, and `plugin`'s
/// rows of the gap are returned. An error means the gap could not be checked.
#[allow(clippy::too_many_arguments)]
fn hidden_in_gap(
    txn: &redb::ReadTransaction,
    events: &redb::ReadOnlyTable<u64, &'static [u8]>,
    pending: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    plugin: &str,
    after: u64,
    first: u64,
    limit: usize,
    read: &dyn Fn(u64, &[u8]) -> ScannedRow,
) -> Result<Vec<ScannedRow>, StoreError> {
    guard("checking a gap in the pending rows", || {
        if !gap_hides_rows(txn, events, pending, after, first)? {
            return Ok(Vec::new());
        }
        let mut found = Vec::new();
        for row in db(pending.iter())? {
            let (key, value) = db(row)?;
            let (owner, key) = key.value();
            match owner_of(plugin, owner, key, value.value()) {
                std::cmp::Ordering::Less => continue,
                std::cmp::Ordering::Greater => break,
                std::cmp::Ordering::Equal if key <= after => continue,
                std::cmp::Ordering::Equal => {}
            }
            if key >= first || found.len() >= limit {
                break;
            }
            found.push(read(key, value.value()));
        }
        Ok(found)
    })
}

/// The most events of a gap [`gap_hides_rows`] looks at.
const GAP_LOOKS: usize = 64;

/// Whether the gap between `after` and `first` (the first row a scan found) may hide pending
/// rows: one of its first events (at most [`GAP_LOOKS`]) is not complete, yet no plugin's row
/// of it can be looked up. In a sound file every such event is held by a row (the routes'
/// gaps: another plugin's), so this costs a few look-ups per gap and never reads on.
fn gap_hides_rows(
    txn: &redb::ReadTransaction,
    events: &impl ReadableTable<u64, &'static [u8]>,
    pending: &redb::ReadOnlyTable<(&'static str, u64), &'static [u8]>,
    after: u64,
    first: u64,
) -> Result<bool, StoreError> {
    let completed = db(txn.open_table(COMPLETED))?;
    let dead = db(txn.open_table(DEAD))?;
    let owners = owners(pending, &dead)?;
    for row in db(events.range(after + 1..first))?.take(GAP_LOOKS) {
        let id = db(row)?.0.value();
        if db(completed.get(id))?.is_none() && !held(pending, &dead, &owners, id)? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a consumer's scan read.
pub struct Scanned {
    /// The rows, in key order.
    pub rows: Vec<ScannedRow>,
    /// Why the scan could not read on past the last row (a damaged page), if it could not.
    pub failed: Option<StoreError>,
    /// The search for where to start went past these rows (a damaged index page); they were
    /// found by walking back, or by reading the table from its start.
    pub passed_over: bool,
    /// Why the rows between the scan's start and its first row could not be checked for rows
    /// a damaged index made the search pass over (the walk back failed): some may be hidden.
    pub unchecked: Option<String>,
}

/// A pending row as a consumer reads it, each part checked.
pub struct ScannedRow {
    /// The event id in the row's key.
    pub key: u64,
    /// The event the row belongs to: `key`, or the id its checksum names when a flipped bit
    /// in the key moved the row (its record is then not read).
    pub id: u64,
    /// Its pending state.
    pub pending: Result<Pending, Damage>,
    /// Its event's record.
    pub record: Result<EventRecord, Damage>,
}

/// The last of `plugin`'s pending rows, if it has any (read from the right end of its range).
pub fn last_pending(database: &Database, plugin: &str) -> Result<Option<u64>, StoreError> {
    let txn = db(database.begin_read())?;
    let pending = db(txn.open_table(PENDING))?;
    Ok(match db(pending.range((plugin, 0)..=(plugin, u64::MAX)))?.next_back() {
        Some(row) => Some(db(row)?.0.value().1),
        None => None,
    })
}

/// Up to `limit` records of events received at or after `since_ms`, newest first (for the
/// duplicate window).
pub fn recent_events(
    database: &Store,
    since_ms: i64,
    limit: usize,
) -> Result<Vec<(u64, EventRecord)>, StoreError> {
    let txn = db(database.begin_read())?;
    let events = db(txn.open_table(EVENTS))?;
    let mut out = Vec::new();
    for row in db(events.iter())?.rev().take(limit) {
        let (k, v) = db(row)?;
        let Ok(record) = database.record(k.value(), v.value()) else { continue };
        if record.meta.received_at_ms < since_ms {
            break;
        }
        out.push((k.value(), record));
    }
    Ok(out)
}

/// The tables a batch of the writer works on, opened once per transaction: opening a table
/// costs a lookup and allocations, far more than one small insert.
pub struct Tables<'txn> {
    state: redb::Table<'txn, &'static str, &'static [u8]>,
    offline_seen: redb::Table<'txn, &'static [u8], u64>,
    oauth: redb::Table<'txn, &'static str, &'static [u8]>,
    events: redb::Table<'txn, u64, &'static [u8]>,
    pending: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    dead: redb::Table<'txn, (&'static str, u64), &'static [u8]>,
    tokens: redb::Table<'txn, &'static str, &'static str>,
    meta: redb::Table<'txn, &'static str, u64>,
    attempts: redb::Table<'txn, (u64, &'static str, u32), &'static [u8]>,
    completed: redb::Table<'txn, u64, &'static [u8]>,
    /// The plugins holding rows, read once the batch first needs them (then kept up to date).
    owners: Option<Vec<String>>,
    /// Where new events' records go; without it (tests, salvage) into the `events` table.
    files: Option<&'txn mut records::Writer>,
}

impl<'txn> Tables<'txn> {
    /// Opens every table in `txn`.
    pub fn open(txn: &'txn WriteTransaction) -> Result<Tables<'txn>, StoreError> {
        Ok(Tables {
            state: db(txn.open_table(STATE))?,
            offline_seen: db(txn.open_table(OFFLINE_SEEN))?,
            oauth: db(txn.open_table(OAUTH))?,
            events: db(txn.open_table(EVENTS))?,
            pending: db(txn.open_table(PENDING))?,
            dead: db(txn.open_table(DEAD))?,
            tokens: db(txn.open_table(TOKENS))?,
            meta: db(txn.open_table(META))?,
            attempts: db(txn.open_table(ATTEMPTS))?,
            completed: db(txn.open_table(COMPLETED))?,
            owners: None,
            files: None,
        })
    }

    /// These tables with new events' records written to the event files, the `events` table
    /// holding where each is.
    pub fn with_files(mut self, files: &'txn mut records::Writer) -> Tables<'txn> {
        self.files = Some(files);
        self
    }

    /// The plugins that hold pending or dead rows (found by seeking, a few look-ups per
    /// plugin), read once per transaction.
    fn owners(&mut self) -> Result<&[String], StoreError> {
        if self.owners.is_none() {
            self.owners = Some(owners(&self.pending, &self.dead)?);
        }
        Ok(self.owners.as_deref().unwrap_or_default())
    }

    /// Puts event `id` into the index of complete events if no plugin holds a row of it.
    fn settle(&mut self, id: u64) -> Result<(), StoreError> {
        self.owners()?;
        let owners = self.owners.as_deref().unwrap_or_default();
        if !held(&self.pending, &self.dead, owners, id)? {
            mark_completed(&mut self.completed, id)?;
        }
        Ok(())
    }

    /// Writes a new event and a pending row for each of `plugins`.
    pub fn insert_event(
        &mut self,
        id: u64,
        record: &EventRecord,
        plugins: &[std::sync::Arc<str>],
    ) -> Result<(), StoreError> {
        self.insert_sealed(id, &record.seal(id), plugins, None)
    }

    /// [`Tables::insert_event`] with the record already sealed (as the write-ahead log holds it),
    /// and an offline event's key (kept in a row that points into the event files).
    pub fn insert_sealed(
        &mut self,
        id: u64,
        sealed: &[u8],
        plugins: &[std::sync::Arc<str>],
        offline_key: Option<DedupKey>,
    ) -> Result<(), StoreError> {
        match self.files.as_deref_mut() {
            Some(files) => {
                let pointer = Pointer {
                    at: files.append(id, sealed)?,
                    received_at_ms: crate::journal::now_ms(),
                    offline_key,
                };
                db(self.events.insert(id, seal_pointer(id, &pointer).as_slice()))?;
            }
            None => {
                db(self.events.insert(id, sealed))?;
            }
        }
        for plugin in plugins {
            let fresh = seal_row(plugin, id, &Pending::default());
            db(self.pending.insert((&**plugin, id), fresh.as_slice()))?;
            if let Some(owners) = &mut self.owners
                && !owners.iter().any(|o| **o == **plugin)
            {
                owners.push(plugin.to_string());
            }
        }
        if plugins.is_empty() {
            mark_completed(&mut self.completed, id)?;
        }
        Ok(())
    }

    /// The event an offline row with `key` already became, if any.
    pub fn offline_seen(&self, key: &[u8]) -> Result<Option<u64>, StoreError> {
        Ok(db(self.offline_seen.get(key))?.map(|v| v.value()))
    }

    /// Remembers that the offline row with `key` became event `id`.
    pub fn remember_offline(&mut self, key: &[u8], id: u64) -> Result<(), StoreError> {
        db(self.offline_seen.insert(key, id))?;
        Ok(())
    }

    /// Records the next id to hand out (once per batch).
    pub fn set_next_id(&mut self, next_id: u64) -> Result<(), StoreError> {
        db(self.meta.insert("next_id", next_id))?;
        Ok(())
    }

    /// Records the highest id of the write-ahead log these tables hold (see [`WAL_APPLIED`]).
    pub fn set_wal_applied(&mut self, id: u64) -> Result<(), StoreError> {
        db(self.meta.insert(WAL_APPLIED, id))?;
        Ok(())
    }

    /// Whether event `id` is stored.
    pub fn has_event(&self, id: u64) -> Result<bool, StoreError> {
        Ok(db(self.events.get(id))?.is_some())
    }

    /// The plugin finished the event; the last plugin to finish it makes it complete.
    pub fn complete(&mut self, plugin: &str, id: u64) -> Result<(), StoreError> {
        if db(self.pending.remove((plugin, id)))?.is_some() {
            self.settle(id)?;
        }
        Ok(())
    }

    /// Updates the plugin's pending state of the event (after a failed attempt), unless a
    /// replay or purge changed it in between.
    pub fn set_pending(
        &mut self,
        plugin: &str,
        id: u64,
        state: &Pending,
    ) -> Result<(), StoreError> {
        if db(self.pending.get((plugin, id)))?.is_some() {
            db(self.pending.insert((plugin, id), seal_row(plugin, id, state).as_slice()))?;
        }
        Ok(())
    }

    /// Moves the event from the plugin's pending rows to its dead letters, unless it is no
    /// longer pending (an operator skipped it in between: that dead letter stays as it is).
    pub fn bury(&mut self, plugin: &str, id: u64, dead: &DeadLetter) -> Result<(), StoreError> {
        if db(self.pending.remove((plugin, id)))?.is_some() {
            db(self.dead.insert((plugin, id), seal_row(plugin, id, dead).as_slice()))?;
        }
        Ok(())
    }

    /// Makes event `id` a dead letter of `plugin` because its rows were found damaged: the
    /// pending row (stored under `stored_under`, which differs from `id` when a flipped bit
    /// moved it) is removed if it can be found, and the letter written unless the plugin has
    /// one for the event already (an operator skipped it).
    pub fn bury_damaged(
        &mut self,
        plugin: &str,
        id: u64,
        stored_under: u64,
        dead: &DeadLetter,
    ) -> Result<(), StoreError> {
        db(self.pending.remove((plugin, stored_under)))?;
        if stored_under != id {
            db(self.pending.remove((plugin, id)))?;
        }
        if db(self.dead.get((plugin, id)))?.is_none() {
            db(self.dead.insert((plugin, id), seal_row(plugin, id, dead).as_slice()))?;
        }
        Ok(())
    }

    /// Writes only the dead letter of [`Tables::bury_damaged`], leaving the pending rows
    /// alone: what is left to do when the page holding the pending row cannot be written.
    pub fn bury_letter_only(
        &mut self,
        plugin: &str,
        id: u64,
        dead: &DeadLetter,
    ) -> Result<(), StoreError> {
        if db(self.dead.get((plugin, id)))?.is_none() {
            db(self.dead.insert((plugin, id), seal_row(plugin, id, dead).as_slice()))?;
        }
        Ok(())
    }

    /// [`Tables::add_attempt`] for a pair without earlier attempts, of an event this
    /// transaction wrote: nothing to look up.
    pub fn add_first_attempt(
        &mut self,
        plugin: &str,
        id: u64,
        attempt: &Attempt,
    ) -> Result<(), StoreError> {
        let n = attempt.n.max(1);
        let row = Attempt { n, ..attempt.clone() };
        db(self.attempts.insert((id, plugin, n), seal_attempt(id, plugin, &row).as_slice()))?;
        Ok(())
    }

    /// Keeps one attempt of `plugin` on event `id` (unless the event is gone). It is numbered
    /// after the ones kept already (a replayed dead letter's attempts start again from 1 in the
    /// worker, but its history goes on); beyond [`MAX_ATTEMPTS_KEPT`] the oldest but the first
    /// is dropped.
    pub fn add_attempt(
        &mut self,
        plugin: &str,
        id: u64,
        attempt: &Attempt,
    ) -> Result<(), StoreError> {
        if db(self.events.get(id))?.is_none() {
            return Ok(());
        }
        let last =
            match db(self.attempts.range((id, plugin, 0)..=(id, plugin, u32::MAX)))?.next_back() {
                Some(row) => Some(db(row)?.0.value().2),
                None => None,
            };
        let n = attempt.n.max(last.map_or(1, |last| last.saturating_add(1)));
        let row = Attempt { n, ..attempt.clone() };
        db(self.attempts.insert((id, plugin, n), seal_attempt(id, plugin, &row).as_slice()))?;
        // Numbers only grow, so there can be more than the bound only past it.
        if n as usize > MAX_ATTEMPTS_KEPT {
            let mut kept = Vec::new();
            for row in db(self.attempts.range((id, plugin, 0)..=(id, plugin, u32::MAX)))? {
                kept.push(db(row)?.0.value().2);
            }
            while kept.len() > MAX_ATTEMPTS_KEPT {
                db(self.attempts.remove((id, plugin, kept.remove(1))))?;
            }
        }
        Ok(())
    }

    /// Deletes up to `max_delete` complete events (no pending or dead row for any plugin),
    /// oldest first: those older than `keep_for_ms`, and beyond that the oldest while more than
    /// `keep_max` complete events remain. `max_delete` keeps each round short, so that appends
    /// never wait long behind a prune.
    ///
    /// It reads the index of complete events, never the events a plugin still holds: a round
    /// reads one index row per event it deletes (and one more, which ends it), checks that no
    /// plugin holds it (a look-up per plugin holding rows), and reads nothing else, however
    /// many events are pending.
    pub fn prune(
        &mut self,
        now_ms: i64,
        keep_for_ms: i64,
        keep_max: u64,
        max_delete: usize,
    ) -> Result<Pruned, StoreError> {
        let mut complete = db(self.completed.len())?;
        let mut visited = 0;
        let mut doomed = Vec::new();
        let mut wrong = Vec::new();
        {
            self.owners()?;
            let owners = self.owners.as_deref().unwrap_or_default();
            for row in db(self.completed.iter())? {
                if doomed.len() >= max_delete {
                    break;
                }
                let id = db(row)?.0.value();
                visited += 1;
                // The index is a list of candidates: an entry that a plugin still holds, or
                // whose event is gone, is wrong (damage) and is dropped, never acted on.
                if held(&self.pending, &self.dead, owners, id)? {
                    wrong.push(id);
                    complete = complete.saturating_sub(1);
                    continue;
                }
                // Past the count, the event goes whatever its age: nothing to read (whether
                // it is there at all, its removal below tells).
                if complete > keep_max {
                    doomed.push(id);
                    complete = complete.saturating_sub(1);
                    continue;
                }
                let received = match db(self.events.get(id))? {
                    None => {
                        wrong.push(id);
                        complete = complete.saturating_sub(1);
                        continue;
                    }
                    Some(v) => received_and_key(id, v.value()).ok().map(|(at, _)| at),
                };
                if received.is_none_or(|at| now_ms - at > keep_for_ms) {
                    doomed.push(id);
                    complete = complete.saturating_sub(1);
                } else {
                    // Ids grow with time: every later event is younger, and the count is in bounds.
                    break;
                }
            }
        }
        for &id in &wrong {
            tracing::warn!(event_id = id, "the index of complete events was wrong about an event");
            db(self.completed.remove(id))?;
        }
        // Only an offline event has a row in `offline_seen`, found from its metadata: with none
        // there, a removed event's record is not read at all.
        let offline = db(self.offline_seen.len())? > 0;
        let attempts = db(self.attempts.len())? > 0;
        let mut deleted = 0;
        for &id in &doomed {
            db(self.completed.remove(id))?;
            let offline_key = match db(self.events.remove(id))? {
                Some(v) => {
                    deleted += 1;
                    if offline {
                        received_and_key(id, v.value()).ok().and_then(|(_, key)| key)
                    } else {
                        None
                    }
                }
                None => {
                    tracing::warn!(
                        event_id = id,
                        "the index of complete events was wrong about an event"
                    );
                    None
                }
            };
            if let Some(key) = offline_key {
                db(self.offline_seen.remove(key.as_slice()))?;
            }
            if attempts {
                remove_attempts(&mut self.attempts, id, None)?;
            }
        }
        Ok(Pruned { deleted, visited })
    }

    /// Sets (`Some`) or removes (`None`) a named state value.
    pub fn set_state(&mut self, name: &str, value: Option<&[u8]>) -> Result<(), StoreError> {
        match value {
            Some(v) => db(self.state.insert(name, v))?,
            None => db(self.state.remove(name))?,
        };
        Ok(())
    }

    /// Stores a portal's OAuth tokens (JSON).
    pub fn set_oauth(&mut self, member_id: &str, tokens: &[u8]) -> Result<(), StoreError> {
        db(self.oauth.insert(member_id, tokens))?;
        Ok(())
    }

    /// Writes what an accepted event changes of its portal's state: its learned token, its
    /// stored install.
    pub fn change_portal(
        &mut self,
        change: &crate::journal::PortalChange,
    ) -> Result<(), StoreError> {
        if let Some(token) = &change.token {
            self.set_token(&change.member_id, token.as_ref())?;
        }
        if let Some(oauth) = &change.oauth {
            self.set_oauth(&change.member_id, oauth)?;
        }
        Ok(())
    }

    /// Remembers or forgets a portal's learned token.
    pub fn set_token(&mut self, member_id: &str, token: Option<&Secret>) -> Result<(), StoreError> {
        match token {
            Some(token) => db(self.tokens.insert(member_id, token.expose()))?,
            None => db(self.tokens.remove(member_id))?,
        };
        Ok(())
    }
}

/// An attempt as stored under (`id`, `plugin`, its number).
pub fn seal_attempt(id: u64, plugin: &str, attempt: &Attempt) -> Vec<u8> {
    checksum::seal(
        &checksum::attempt_key(id, plugin, attempt.n),
        &crate::journal::record::to_json(attempt),
    )
}

/// An attempt stored under (`id`, `plugin`, `n`), checked against its checksum.
pub fn unseal_attempt(id: u64, plugin: &str, n: u32, stored: &[u8]) -> Result<Attempt, Damage> {
    let body = checksum::unseal(&checksum::attempt_key(id, plugin, n), stored)?;
    serde_json::from_slice(body).map_err(|_| Damage::Unreadable)
}

/// The keys of every attempt row of event `id`.
fn event_attempts(id: u64) -> std::ops::Range<(u64, &'static str, u32)> {
    (id, "", 0)..(id.saturating_add(1), "", 0)
}

/// Deletes event `id`'s attempt rows: of `plugin` only, or of every plugin.
fn remove_attempts(
    table: &mut redb::Table<'_, (u64, &'static str, u32), &'static [u8]>,
    id: u64,
    plugin: Option<&str>,
) -> Result<(), StoreError> {
    let mut keys: Vec<(String, u32)> = Vec::new();
    let rows = match plugin {
        Some(p) => db(table.range((id, p, 0)..=(id, p, u32::MAX)))?,
        None => db(table.range(event_attempts(id)))?,
    };
    for row in rows {
        let (key, _) = db(row)?;
        let (_, p, n) = key.value();
        keys.push((p.to_owned(), n));
    }
    for (p, n) in keys {
        db(table.remove((id, p.as_str(), n)))?;
    }
    Ok(())
}

/// Every attempt row of event `id`: per plugin, oldest first (damaged rows left out).
pub fn attempts(
    database: &Database,
    id: u64,
) -> Result<BTreeMap<String, Vec<Attempt>>, StoreError> {
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(ATTEMPTS))?;
    let mut out: BTreeMap<String, Vec<Attempt>> = BTreeMap::new();
    for row in db(table.range(event_attempts(id)))? {
        let (k, v) = db(row)?;
        let (_, plugin, n) = k.value();
        match unseal_attempt(id, plugin, n, v.value()) {
            Ok(attempt) => out.entry(plugin.to_owned()).or_default().push(attempt),
            Err(e) => tracing::warn!(event_id = id, plugin, n, "an attempt row is {e}"),
        }
    }
    Ok(out)
}

/// The dead letters `which` selects: a range of one plugin's rows when it names one, the
/// letters' own times checked only when it asks for a time.
fn selected_dead(
    txn: &WriteTransaction,
    which: &Selection,
) -> Result<Vec<(String, u64)>, StoreError> {
    let table = db(txn.open_table(DEAD))?;
    let mut out = Vec::new();
    let rows = match which.plugin.as_deref() {
        Some(p) => db(table.range((p, 0)..=(p, u64::MAX)))?,
        None => db(table.iter())?,
    };
    for row in rows {
        let (key, value) = db(row)?;
        let (plugin, id) = key.value();
        let at_ms = match which.since_ms {
            None => i64::MAX,
            // A damaged letter has no time: only a selection without one reaches it.
            Some(_) => unseal_row::<DeadLetter>(plugin, id, value.value())
                .map_or(i64::MIN, |letter| letter.at_ms),
        };
        if which.matches(plugin, id, at_ms) {
            out.push((plugin.to_owned(), id));
        }
    }
    Ok(out)
}

/// Puts the selected dead letters back into delivery (attempts start again from 1).
pub fn replay(txn: &WriteTransaction, which: &Selection) -> Result<Vec<(String, u64)>, StoreError> {
    let chosen = selected_dead(txn, which)?;
    let mut dead = db(txn.open_table(DEAD))?;
    let mut pending = db(txn.open_table(PENDING))?;
    for (plugin, id) in &chosen {
        db(dead.remove((plugin.as_str(), *id)))?;
        let fresh = seal_row(plugin, *id, &Pending::default());
        db(pending.insert((plugin.as_str(), *id), fresh.as_slice()))?;
    }
    Ok(chosen)
}

/// Moves `plugin`'s pending rows of `ids` to its dead letters (reason [`SKIPPED`]), keeping
/// their attempt counts; ids without a pending row of the plugin are left alone. Returns the
/// pairs moved.
pub fn skip(
    txn: &WriteTransaction,
    plugin: &str,
    ids: &[u64],
    now_ms: i64,
) -> Result<Vec<(String, u64)>, StoreError> {
    let mut pending = db(txn.open_table(PENDING))?;
    let mut dead = db(txn.open_table(DEAD))?;
    let mut out = Vec::new();
    for &id in ids {
        let Some(row) = db(pending.remove((plugin, id)))? else { continue };
        let state: Pending = unseal_row(plugin, id, row.value()).unwrap_or_default();
        drop(row);
        let letter = DeadLetter { reason: SKIPPED.into(), attempts: state.attempts, at_ms: now_ms };
        db(dead.insert((plugin, id), seal_row(plugin, id, &letter).as_slice()))?;
        out.push((plugin.to_owned(), id));
    }
    Ok(out)
}

/// Deletes the selected dead letters for good.
pub fn purge_dead(
    txn: &WriteTransaction,
    which: &Selection,
) -> Result<Vec<(String, u64)>, StoreError> {
    let chosen = selected_dead(txn, which)?;
    let mut dead = db(txn.open_table(DEAD))?;
    let mut attempts = db(txn.open_table(ATTEMPTS))?;
    for (plugin, id) in &chosen {
        db(dead.remove((plugin.as_str(), *id)))?;
        remove_attempts(&mut attempts, *id, Some(plugin))?;
    }
    // An event whose last letter went is complete now, if its record is still there.
    let pending = db(txn.open_table(PENDING))?;
    let events = db(txn.open_table(EVENTS))?;
    let mut completed = db(txn.open_table(COMPLETED))?;
    let owners = owners(&pending, &dead)?;
    let mut ids: Vec<u64> = chosen.iter().map(|(_, id)| *id).collect();
    ids.dedup();
    for id in ids {
        if db(events.get(id))?.is_some() && !held(&pending, &dead, &owners, id)? {
            mark_completed(&mut completed, id)?;
        }
    }
    Ok(chosen)
}

/// The plugins holding pending or dead rows.
fn owners<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    pending: &T,
    dead: &T,
) -> Result<Vec<String>, StoreError> {
    let mut owners = plugins_in(pending)?;
    owners.extend(plugins_in(dead)?);
    owners.sort();
    owners.dedup();
    Ok(owners)
}

/// Whether one of `owners` holds a pending or dead row of event `id`.
fn held<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    pending: &T,
    dead: &T,
    owners: &[String],
    id: u64,
) -> Result<bool, StoreError> {
    for plugin in owners {
        if db(pending.get((plugin.as_str(), id)))?.is_some()
            || db(dead.get((plugin.as_str(), id)))?.is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Adds event `id` to the index of complete events.
fn mark_completed(
    completed: &mut redb::Table<'_, u64, &'static [u8]>,
    id: u64,
) -> Result<(), StoreError> {
    db(completed.insert(id, checksum::seal(&checksum::completed_key(id), b"").as_slice()))?;
    Ok(())
}

/// Builds the index of complete events from the tables: every event that no pending or dead
/// row refers to. One pass over the rows' keys (their ids sorted, 8 bytes each) and one over
/// the events: run once for a file written before the index existed, and for a salvaged one.
/// Returns how many events it found complete.
pub fn rebuild_completed(txn: &WriteTransaction) -> Result<u64, StoreError> {
    let mut held = Vec::new();
    for table in [PENDING, DEAD] {
        for row in db(db(txn.open_table(table))?.iter())? {
            held.push(db(row)?.0.value().1);
        }
    }
    held.sort_unstable();
    held.dedup();
    let mut completed = db(txn.open_table(COMPLETED))?;
    db(completed.retain(|_, _| false))?;
    let events = db(txn.open_table(EVENTS))?;
    let mut found = 0;
    let mut rows = held.iter().peekable();
    for row in db(events.iter())? {
        let id = db(row)?.0.value();
        while rows.next_if(|&&h| h < id).is_some() {}
        if rows.peek() != Some(&&id) {
            mark_completed(&mut completed, id)?;
            found += 1;
        }
    }
    db(db(txn.open_table(META))?.insert(COMPLETED_INDEX, 1))?;
    Ok(found)
}

/// The events that are not complete and that no pending row or dead letter holds: each had a
/// row that a damaged page hides (a leaf every scan passes by without an error). `None` for a
/// file without the index of complete events. Keys only, one pass over each table.
pub fn unheld_events<D: ReadableDatabase>(database: &D) -> Result<Option<Vec<u64>>, StoreError> {
    let txn = db(database.begin_read())?;
    if db(db(txn.open_table(META))?.get(COMPLETED_INDEX))?.is_none() {
        return Ok(None);
    }
    let mut accounted = Vec::new();
    for row in db(db(txn.open_table(COMPLETED))?.iter())? {
        accounted.push(db(row)?.0.value());
    }
    for table in [PENDING, DEAD] {
        for row in db(db(txn.open_table(table))?.iter())? {
            accounted.push(db(row)?.0.value().1);
        }
    }
    accounted.sort_unstable();
    let mut unheld = Vec::new();
    for row in db(db(txn.open_table(EVENTS))?.iter())? {
        let id = db(row)?.0.value();
        if accounted.binary_search(&id).is_err() {
            unheld.push(id);
        }
    }
    Ok(Some(unheld))
}

/// The plugin names that have rows in `table`, found by seeking past each name in turn. A
/// damaged index can send a seek back among the names already found (damage seed 47: the
/// same name for ever, and the tables' thread spinning); then the keys are read in order
/// instead, without a seek.
pub fn plugins_in<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    table: &T,
) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = Vec::new();
    let mut next = db(table.first())?.map(|(k, _)| k.value().0.to_owned());
    while let Some(name) = next {
        if names.last().is_some_and(|last| *last >= name) {
            return plugins_read_in(table);
        }
        // The smallest key above every key of `name`.
        let after = format!("{name}\0");
        next = match db(table.range((after.as_str(), 0)..))?.next() {
            Some(row) => Some(db(row)?.0.value().0.to_owned()),
            None => None,
        };
        names.push(name);
    }
    Ok(names)
}

/// The most rows [`plugins_read_in`] reads: a damaged page that links back to an earlier one
/// could make a read of the table go round for ever.
const MAX_NAME_READ: usize = 50_000_000;

/// [`plugins_in`] by reading every key in order (no seek).
fn plugins_read_in<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    table: &T,
) -> Result<Vec<String>, StoreError> {
    let mut names: Vec<String> = Vec::new();
    for row in db(table.iter())?.take(MAX_NAME_READ) {
        let (key, _) = db(row)?;
        let name = key.value().0;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names.sort_unstable();
    Ok(names)
}

/// Deletes up to `max_delete` complete events in a transaction of its own; see
/// [`Tables::prune`].
pub fn prune(
    txn: &WriteTransaction,
    now_ms: i64,
    keep_for_ms: i64,
    keep_max: u64,
    max_delete: usize,
) -> Result<Pruned, StoreError> {
    Tables::open(txn)?.prune(now_ms, keep_for_ms, keep_max, max_delete)
}

impl Tables<'_> {
    /// Copies the records of the oldest event file's events into the `events` table (their
    /// rows then hold the record, not where it is), up to `budget` of them, once no complete
    /// event of the file is kept any more: what is left of it is held by a plugin (pending or
    /// a dead letter), and a plugin stuck on one event must not keep a whole file. The
    /// newest two files are never copied out of (a backlog is likely to finish there).
    /// `firsts`: the files' first ids, oldest first. Returns how many it copied; the file
    /// goes after the next durable checkpoint ([`remove_unpointed_files`]).
    pub fn copy_forward(
        &mut self,
        files: &records::Reader,
        firsts: &[u64],
        budget: usize,
    ) -> Result<usize, StoreError> {
        let [from, to, _, ..] = firsts else { return Ok(0) };
        let (from, to) = (*from, *to);
        if let Some((id, _)) = db(self.completed.first())?
            && id.value() < to
        {
            return Ok(0);
        }
        let mut pointed = Vec::new();
        for row in db(self.events.range(from..to))? {
            let (k, v) = db(row)?;
            if let Ok(Row::At(pointer)) = opened(k.value(), v.value()) {
                pointed.push((k.value(), pointer));
                if pointed.len() >= budget {
                    break;
                }
            }
        }
        let mut copied = 0;
        for (id, pointer) in pointed {
            match files.read(pointer.at, id) {
                // The frame's payload is the record sealed as the table stores it.
                Ok(sealed) if EventRecord::unseal(id, &sealed).is_ok() => {
                    db(self.events.insert(id, sealed.as_slice()))?;
                    copied += 1;
                }
                Ok(_) => tracing::warn!(
                    event_id = id,
                    "an event's record in an old event file is damaged; the file is kept"
                ),
                Err(e) => tracing::warn!(event_id = id, "{e}; the file is kept"),
            }
        }
        Ok(copied)
    }
}

/// The event files that rows of the `events` table point into and that are not there: the
/// files of its newest row and of the first row that points (among its first 10,000). A
/// journal restored without its event files is refused at the start, like one cut short,
/// rather than every event it keeps becoming a dead letter.
pub fn missing_event_files(store: &Store) -> Result<Vec<std::path::PathBuf>, StoreError> {
    let txn = db(store.database.begin_read())?;
    let events = db(txn.open_table(EVENTS))?;
    let mut wanted = std::collections::BTreeSet::new();
    if let Some((k, v)) = db(events.last())?
        && let Ok(Row::At(pointer)) = opened(k.value(), v.value())
    {
        wanted.insert(pointer.at.file);
    }
    for row in db(events.iter())?.take(10_000) {
        let (k, v) = db(row)?;
        if let Ok(Row::At(pointer)) = opened(k.value(), v.value()) {
            wanted.insert(pointer.at.file);
            break;
        }
    }
    Ok(wanted.into_iter().map(|f| store.files.path_of(f)).filter(|p| !p.exists()).collect())
}

/// Deletes the oldest event files no row of the (durable, just committed) `events` table
/// points into any more. Looks at a few files a call; the file being written stays.
pub fn remove_unpointed_files(store: &Store, files: &mut records::Writer) {
    let checked = guard("looking for event files no row points into", || {
        let txn = db(store.database.begin_read())?;
        let events = db(txn.open_table(EVENTS))?;
        let firsts: Vec<u64> = files.files().collect();
        let mut free_below = None;
        for pair in firsts.windows(2).take(4) {
            let (from, to) = (pair[0], pair[1]);
            let mut pointed = false;
            for row in db(events.range(from..to))? {
                let (k, v) = db(row)?;
                if matches!(opened(k.value(), v.value()), Ok(Row::At(_)) | Err(_)) {
                    pointed = true;
                    break;
                }
            }
            if pointed {
                break;
            }
            free_below = Some(to);
        }
        Ok(free_below)
    });
    if let Ok(Some(below)) = checked {
        let removed = files.remove_below(below);
        if removed > 0 {
            // Their space comes back once no descriptor holds them: the readers' go too.
            if let Some(oldest) = files.files().next() {
                store.files.forget_below(oldest);
            }
            tracing::debug!(removed, "removed event files no event points into");
        }
    }
}

/// What one prune round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Complete events deleted.
    pub deleted: usize,
    /// Rows the round read to find them: bounded by what it deleted, never by what is pending.
    pub visited: usize,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn record(received_at_ms: i64) -> EventRecord {
        crate::record::fixture(
            received_at_ms,
            String::new(),
            Bytes::from_static(b"event=ONCRMDEALUSERFIELDUPDATE"),
        )
    }

    /// Issue 20: one plugin holding 100,000 events (enabled without its library, or hung) must
    /// not make pruning walk them: a round reads about what it deletes.
    #[test]
    fn a_prune_round_reads_what_it_deletes_not_the_events_pending_for_a_plugin() {
        let dir = tempfile::tempdir().unwrap();
        let database = open(&dir.path().join("journal.redb")).unwrap();
        let (ghost, done): (Arc<str>, Arc<str>) = (Arc::from("ghost"), Arc::from("done"));
        // 100,000 events pending for ghost; every 100th also went to `done`, which finished
        // it, and every 1,000th went to `done` alone: 100 complete events among them, oldest
        // first, plus 1,000 finished ones ghost still holds.
        let txn = database.begin_write().unwrap();
        {
            let mut tables = Tables::open(&txn).unwrap();
            for id in 1..=100_000u64 {
                let plugins = match (id % 1_000, id % 100) {
                    (0, _) => vec![done.clone()],
                    (_, 0) => vec![ghost.clone(), done.clone()],
                    _ => vec![ghost.clone()],
                };
                tables.insert_event(id, &record(0), &plugins).unwrap();
                if id % 100 == 0 {
                    tables.complete("done", id).unwrap();
                }
            }
            tables.set_next_id(100_001).unwrap();
        }
        txn.commit().unwrap();
        let round = |max_delete| {
            let txn = database.begin_write().unwrap();
            let pruned = prune(&txn, 1_000, 0, 0, max_delete).unwrap();
            txn.commit().unwrap();
            pruned
        };
        // Rounds of 30: 30, 30, 30, 10, then nothing; each reads at most one row past what it
        // deletes (the one that ends it), and none reads the pending events between them.
        let rounds: Vec<Pruned> = (0..5).map(|_| round(30)).collect();
        let deleted: Vec<usize> = rounds.iter().map(|r| r.deleted).collect();
        assert_eq!(deleted, vec![30, 30, 30, 10, 0]);
        for r in &rounds {
            assert!(
                r.visited <= r.deleted + 1,
                "a round read {} rows to delete {}",
                r.visited,
                r.deleted
            );
        }
        let txn = database.begin_read().unwrap();
        let events = txn.open_table(EVENTS).unwrap();
        assert_eq!(events.len().unwrap(), 99_900);
        assert!(events.get(1_000).unwrap().is_none() && events.get(999).unwrap().is_some());
        assert!(events.get(100).unwrap().is_some(), "ghost still holds event 100");
        assert_eq!(txn.open_table(PENDING).unwrap().len().unwrap(), 99_900);
    }

    fn ids_in(database: &Database, table: TableDefinition<u64, &[u8]>) -> Vec<u64> {
        let txn = database.begin_read().unwrap();
        let table = txn.open_table(table).unwrap();
        table.iter().unwrap().map(|r| r.unwrap().0.value()).collect()
    }

    /// The event files: rows point into them and records read back through the rows; once a
    /// file keeps no complete event, the records plugins still hold are copied into the table
    /// and, after a durable commit, the file goes; what is held stays readable throughout.
    #[test]
    fn records_live_in_the_event_files_and_a_held_event_outlives_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("journal.redb")).unwrap();
        *store.writer.lock().unwrap() = records::Writer::open_with(dir.path(), 2048).unwrap();
        let stuck: Arc<str> = Arc::from("stuck");
        let body = |id: u64| Bytes::from(format!("event=ONCRMDEALUSERFIELDUPDATE&n={id}"));
        let record_of = |id: u64| crate::record::fixture(0, String::new(), body(id));
        let commit = |txn: WriteTransaction, durable: bool| {
            let mut files = store.writer.lock().unwrap();
            if durable {
                files.sync().unwrap()
            } else {
                files.flush().unwrap()
            }
            txn.commit().unwrap();
            if durable {
                remove_unpointed_files(&store, &mut files);
            }
        };
        let txn = store.begin_write().unwrap();
        {
            let mut files = store.writer.lock().unwrap();
            let mut tables = Tables::open(&txn).unwrap().with_files(&mut files);
            for id in 1..=100u64 {
                let plugins = if id % 10 == 0 { vec![stuck.clone()] } else { vec![] };
                tables.insert_sealed(id, &record_of(id).seal(id), &plugins, None).unwrap();
            }
        }
        commit(txn, true);
        let files: Vec<u64> = store.writer.lock().unwrap().files().collect();
        assert!(files.len() > 4, "{files:?}");
        for id in 1..=100 {
            assert_eq!(event(&store, id).unwrap().unwrap().unwrap().raw, body(id));
        }
        // Every complete event pruned; the held ones copied out of all but the newest two files.
        for _ in 0..50 {
            let txn = store.begin_write().unwrap();
            let copied = {
                let firsts: Vec<u64> = store.writer.lock().unwrap().files().collect();
                let mut tables = Tables::open(&txn).unwrap();
                tables.prune(i64::MAX, 0, 0, 1000).unwrap();
                tables.copy_forward(&store.files, &firsts, 3).unwrap()
            };
            commit(txn, true);
            for id in (10..=100).step_by(10) {
                let read = event(&store, id).unwrap().unwrap().unwrap();
                assert_eq!(read.raw, body(id), "event {id}");
            }
            if copied == 0 && store.writer.lock().unwrap().files().count() <= 2 {
                break;
            }
        }
        let left: Vec<u64> = store.writer.lock().unwrap().files().collect();
        assert_eq!(left, files[files.len() - 2..].to_vec());
        // The reader let go of the removed files too (their space comes back).
        let held = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter(|target| target.to_string_lossy().contains("(deleted)"))
            .filter(|target| target.starts_with(dir.path()))
            .count();
        assert_eq!(held, 0, "descriptors of removed event files are still open");
        let on_disk = std::fs::read_dir(dir.path().join(records::DIR)).unwrap().count();
        assert_eq!(on_disk, 2);
        assert_eq!(ids_in(&store, EVENTS), (10..=100).step_by(10).collect::<Vec<_>>());
        // The rows of the removed files' events hold their records.
        let txn = store.begin_read().unwrap();
        let events = txn.open_table(EVENTS).unwrap();
        for id in (10..left[0]).step_by(10) {
            let row = events.get(id).unwrap().unwrap();
            assert!(matches!(opened(id, row.value()), Ok(Row::Record(_))), "event {id}");
        }
    }

    #[test]
    fn a_journal_from_before_the_index_gets_it_built_once_when_opened_and_is_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        {
            let database = open(&path).unwrap();
            let txn = database.begin_write().unwrap();
            {
                let mut tables = Tables::open(&txn).unwrap();
                // 1: nobody's; 2: a finished it; 3: pending for a; 4: dead for b; 5: a and b,
                // b finished.
                tables.insert_event(1, &record(0), &[]).unwrap();
                tables.insert_event(2, &record(0), std::slice::from_ref(&a)).unwrap();
                tables.complete("a", 2).unwrap();
                tables.insert_event(3, &record(0), std::slice::from_ref(&a)).unwrap();
                tables.insert_event(4, &record(0), std::slice::from_ref(&b)).unwrap();
                let letter = DeadLetter { reason: "r".into(), attempts: 1, at_ms: 0 };
                tables.bury("b", 4, &letter).unwrap();
                tables.insert_event(5, &record(0), &[a.clone(), b.clone()]).unwrap();
                tables.complete("b", 5).unwrap();
            }
            txn.commit().unwrap();
            assert_eq!(ids_in(&database, COMPLETED), vec![1, 2]);
            // What an older release left: no index, no note of one.
            let txn = database.begin_write().unwrap();
            txn.delete_table(COMPLETED).unwrap();
            txn.open_table(META).unwrap().remove(COMPLETED_INDEX).unwrap();
            txn.commit().unwrap();
        }
        let database = open(&path).unwrap();
        assert_eq!(ids_in(&database, COMPLETED), vec![1, 2]);
        let txn = database.begin_write().unwrap();
        assert_eq!(prune(&txn, 1_000, 0, 0, 100).unwrap(), Pruned { deleted: 2, visited: 2 });
        txn.commit().unwrap();
        assert_eq!(ids_in(&database, EVENTS), vec![3, 4, 5]);
        // Built once: a later open finds the note and leaves the index as it is.
        let txn = database.begin_write().unwrap();
        mark_completed(&mut txn.open_table(COMPLETED).unwrap(), 3).unwrap();
        txn.commit().unwrap();
        drop(database);
        let database = open(&path).unwrap();
        assert_eq!(ids_in(&database, COMPLETED), vec![3]);
        // ... and that wrong entry (a still holds 3) is dropped by the next prune, never acted
        // on; purging b's letter of 4 makes 4 complete.
        let txn = database.begin_write().unwrap();
        assert_eq!(prune(&txn, 1_000, 0, 0, 100).unwrap(), Pruned { deleted: 0, visited: 1 });
        let all = Selection { plugin: None, ids: vec![], since_ms: None };
        assert_eq!(purge_dead(&txn, &all).unwrap(), vec![("b".to_owned(), 4)]);
        txn.commit().unwrap();
        assert_eq!(ids_in(&database, COMPLETED), vec![4]);
        let txn = database.begin_write().unwrap();
        assert_eq!(prune(&txn, 1_000, 0, 0, 100).unwrap().deleted, 1);
        txn.commit().unwrap();
        assert_eq!(ids_in(&database, EVENTS), vec![3, 5]);
    }

    #[test]
    fn pruning_keeps_the_newest_complete_events_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let database = open(&dir.path().join("journal.redb")).unwrap();
        let txn = database.begin_write().unwrap();
        {
            let mut tables = Tables::open(&txn).unwrap();
            // Received at 1..=10 s.
            for id in 1..=10u64 {
                tables.insert_event(id, &record(id as i64 * 1_000), &[]).unwrap();
            }
        }
        txn.commit().unwrap();
        let round = |now, keep_for, keep_max| {
            let txn = database.begin_write().unwrap();
            let pruned = prune(&txn, now, keep_for, keep_max, 100).unwrap();
            txn.commit().unwrap();
            pruned
        };
        // At 10 s, keeping 5.5 s: events 1..=4 are older.
        assert_eq!(round(10_000, 5_500, 100), Pruned { deleted: 4, visited: 5 });
        // Keeping at most 3: 5, 6 and 7 go although young.
        assert_eq!(round(10_000, 60_000, 3).deleted, 3);
        assert_eq!(ids_in(&database, EVENTS), vec![8, 9, 10]);
        assert_eq!(ids_in(&database, COMPLETED), vec![8, 9, 10]);
    }
}
