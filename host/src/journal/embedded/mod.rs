//! The embedded backend: a write-ahead log (`state_dir/wal/`) and one redb file behind it
//! (`journal.redb`), written by one group-commit thread. The default: it needs no server.
//!
//! - [`store`]: the redb tables and the reads and writes on them.
//! - [`writer`]: the group-commit thread, the only writer; after a storage error it reopens
//!   the file ([`Slot`], with back-off) and refuses appends until a test write succeeds.
//! - [`admin`]: statistics, listings and the operator's changes on the tables.
//! - [`window`]: the duplicate window the writer checks appends against.
//! - [`repair`]: `journal verify` and `journal salvage`, offline; [`raw`] their scan of a file
//!   the storage library cannot open.
//! - [`mark`]: the highest event id journaled, kept outside the file: a journal found missing,
//!   empty or cut short is refused rather than started empty.
//! - [`wal`]: the write-ahead log, the one durable write an append waits for; the tables
//!   follow behind it and are brought up to it when the journal is opened ([`recover`]).
//! - [`records`]: the event files, where the tables' thread keeps the events' records
//!   (written and read back by location, deleted whole); the `events` table points there.
//!
//! [`Embedded`], [`Consumer`], [`Reporter`] and [`Stopper`] are what the journal's face
//! (`journal::Journal` and its namesakes) dispatch to.

pub mod admin;
pub mod apply;
#[cfg(test)]
mod damage;
mod files;
pub mod mark;
pub mod raw;
pub mod records;
pub mod recover;
pub mod repair;
mod retry;
pub mod store;
pub mod wal;
pub mod window;
pub mod writer;

use std::{
    collections::{HashMap, HashSet, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
};

use b24_plugin_api::Secret;
use tokio::sync::{Notify, oneshot};

use super::{
    Appended, Delivery, StoreError,
    admin::{DeadRow, EventDetail, EventSummary, Selection, Stats},
    checksum::Damage,
    dedup::DedupKey,
    now_ms,
    record::{DeadLetter, EventRecord, Pending},
};
use crate::config::JournalConfig;
use writer::Command;

/// The file name of the journal inside the state folder.
pub const FILE_NAME: &str = "journal.redb";

/// Per-plugin wake-up signals, shared by the writer and the consumers.
#[derive(Default)]
pub struct Shared {
    last_error: Mutex<Option<String>>,
    plugins: std::sync::RwLock<HashMap<Arc<str>, Arc<Signal>>>,
    closed: AtomicBool,
    closing: Notify,
    /// Records found damaged (or missing) on a read, made dead letters: for the metric.
    damaged: std::sync::atomic::AtomicU64,
    /// The next event id the writer hands out: a row naming this id or a higher one is
    /// damage.
    next_id: AtomicU64,
    /// The highest id of the write-ahead log the tables hold.
    applied: AtomicU64,
    /// The highest id of the write-ahead log a durable checkpoint of the tables holds: the
    /// log's thread recycles the segments behind it.
    checkpointed: AtomicU64,
    /// The log holds enough segments that it wants a checkpoint soon.
    want_checkpoint: AtomicBool,
    /// Held by the log's thread while it writes, and by the tables' thread while it catches
    /// up with the log.
    gate: Mutex<()>,
    /// Why the tables cannot be written now, if they cannot: appends are refused meanwhile.
    tables_refusal: Mutex<Option<String>>,
    /// Whether `tables_refusal` holds a reason (read on every batch).
    refusing: AtomicBool,
    /// Why the file, closed after a storage error, cannot be opened again, when the storage
    /// library says it is damaged (not a full disk): the consumers then say where they stopped.
    unopenable: Mutex<Option<String>>,
    /// Why the last write of the log failed, if it did (cleared once it takes writes again).
    log_error: Mutex<Option<String>>,
    /// Plugins whose rows were found damaged beyond what single dead letters account for.
    trouble: Mutex<std::collections::BTreeMap<String, Trouble>>,
    /// Whether `trouble` holds anything (read on every append).
    troubled: AtomicBool,
    /// Wakes the thread that looks for events no row holds ([`watch_unheld`]) before its
    /// interval is up: the tables' thread reopened the file after an error.
    recheck: Mutex<Option<mpsc::Sender<()>>>,
    /// How many looks for events no row holds have ended (a test waits on it).
    rechecked: AtomicU64,
}

/// What damage did to one plugin's pending rows, as `/readyz` says it.
#[derive(Debug, Default, Clone)]
struct Trouble {
    /// Its consumer cannot read on (events for it are refused meanwhile): why.
    stuck: Option<String>,
    /// Rows were found damaged in a way that may hide others (a row under a wrong key, rows
    /// out of order): the first such finding. Lasts until the host restarts.
    damaged: Option<String>,
}

/// One plugin's wake-ups: new rows, dead letters put back into delivery, and pending events an
/// operator skipped (a lane may hold them already: it drops them at its next look).
#[derive(Default)]
pub struct Signal {
    notify: Notify,
    /// The highest event id appended for the plugin (committed), or found as its last pending
    /// row when its consumer started: a scan that ends before it ended early.
    appended: AtomicU64,
    replayed: Mutex<VecDeque<u64>>,
    skipped: Mutex<HashSet<u64>>,
    /// The plugin's new entries as the log's thread wrote them, for its consumer to take
    /// without reading the tables (see [`Tail`]).
    tail: Mutex<Tail>,
}

/// The most entries a tail holds; past it the log's thread drops the tail and the consumer
/// reads the tables again (it fell behind: a slow or paused plugin, a backlog).
const TAIL_MAX: usize = 4096;

/// A plugin's live tail: the entries the log's thread wrote for it since its consumer asked,
/// so that a consumer that keeps up delivers them straight from memory, in id order, instead
/// of waiting for the tables' thread to apply them and reading them back.
///
/// Its invariant, under its lock: while `on`, every entry for the plugin with an id above
/// `after` is in `entries` or was taken from it by the consumer of generation `owner`. The
/// consumer reads the tables up to `after` first (the rows below it come from there, as
/// before), then only takes from the tail. An overflow ([`TAIL_MAX`]) turns the tail off; the
/// consumer then reads the tables from its cursor again, which finds everything it did not
/// take (the tables hold every entry, behind the log).
#[derive(Default)]
struct Tail {
    on: bool,
    after: u64,
    /// The highest id the log's thread wrote for the plugin.
    written: u64,
    /// The consumer that may take from the tail (each new consumer gets a new one).
    owner: u64,
    /// The events as ingress made them: shared by every plugin's tail, never read back from
    /// storage (a delivery from the tables unseals and checks the stored record).
    entries: VecDeque<(u64, Arc<EventRecord>)>,
}

impl Shared {
    /// Records how the last commit of the tables went.
    fn commit_result(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// Records how the last write of the log went.
    fn log_result(&self, error: Option<String>) {
        *self.log_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
    }

    /// Sets (or with `None` lifts) the tables' refusal of appends.
    fn refuse(&self, reason: Option<String>) {
        let mut refusal = self.tables_refusal.lock().unwrap_or_else(|p| p.into_inner());
        self.refusing.store(reason.is_some(), Ordering::SeqCst);
        *refusal = reason;
    }

    /// Why the tables refuse appends now, if they do.
    fn refusal_of_tables(&self) -> Option<String> {
        if !self.refusing.load(Ordering::SeqCst) {
            return None;
        }
        self.tables_refusal.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn signal(&self, plugin: &str) -> Option<Arc<Signal>> {
        self.plugins.read().unwrap_or_else(|p| p.into_inner()).get(plugin).cloned()
    }

    /// The signal of `plugin`, created if it is new (a plugin enabled by a reload).
    fn signal_or_new(&self, plugin: &str) -> Arc<Signal> {
        if let Some(signal) = self.signal(plugin) {
            return signal;
        }
        let mut plugins = self.plugins.write().unwrap_or_else(|p| p.into_inner());
        plugins.entry(Arc::from(plugin)).or_default().clone()
    }

    /// The log's thread wrote events `entries` (id, plugins; durable now) made of `records`
    /// (one each, in the same order): each record goes into the tail of each of its plugins
    /// whose consumer keeps one, and that consumer is woken.
    fn feed_tails(&self, entries: &[(u64, Vec<Arc<str>>)], records: &[Arc<EventRecord>]) {
        let mut signals: Vec<(Arc<str>, Option<Arc<Signal>>)> = Vec::new();
        for ((id, plugins), record) in entries.iter().zip(records) {
            for plugin in plugins {
                let signal = match signals.iter().find(|(p, _)| p == plugin) {
                    Some((_, signal)) => signal.clone(),
                    None => {
                        let signal = self.signal(plugin);
                        signals.push((plugin.clone(), signal.clone()));
                        signal
                    }
                };
                let Some(signal) = signal else { continue };
                let mut tail = signal.tail.lock().unwrap_or_else(|p| p.into_inner());
                tail.written = tail.written.max(*id);
                if !tail.on {
                    continue;
                }
                if tail.entries.len() >= TAIL_MAX {
                    tail.on = false;
                    tail.entries.clear();
                    continue;
                }
                tail.entries.push_back((*id, record.clone()));
            }
        }
        for (_, signal) in signals {
            if let Some(signal) = signal
                && signal.tail.lock().unwrap_or_else(|p| p.into_inner()).on
            {
                signal.notify.notify_one();
            }
        }
    }

    /// Notes that events up to `id` were appended for `plugin` (committed).
    fn appended(&self, plugin: &str, id: u64) {
        if let Some(signal) = self.signal(plugin) {
            signal.appended.fetch_max(id, Ordering::SeqCst);
        }
    }

    /// Notes damage to `plugin`'s rows: `stuck` when its consumer cannot read on (new events
    /// for it are refused until it can), else damage that may hide rows. Logged once per
    /// change.
    fn note_damage(&self, plugin: &str, stuck: bool, reason: String) {
        let mut trouble = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        let entry = trouble.entry(plugin.to_owned()).or_default();
        let slot = if stuck { &mut entry.stuck } else { &mut entry.damaged };
        if slot.is_none() || (stuck && slot.as_deref() != Some(reason.as_str())) {
            tracing::error!(
                plugin,
                "the journal is damaged: {reason}; stop the host and copy what is readable with \
                 `b24-host journal salvage --to NEW`"
            );
            *slot = Some(reason);
        }
        self.troubled.store(true, Ordering::SeqCst);
    }

    /// Asks for a look for events no row holds now ([`watch_unheld`]).
    fn recheck(&self) {
        if let Some(wake) = &*self.recheck.lock().unwrap_or_else(|p| p.into_inner()) {
            let _ = wake.send(());
        }
    }

    /// `plugin`'s consumer reads on again: its events are accepted again.
    fn unstuck(&self, plugin: &str) {
        if !self.troubled.load(Ordering::SeqCst) {
            return;
        }
        let mut trouble = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = trouble.get_mut(plugin)
            && entry.stuck.take().is_some()
        {
            tracing::info!(plugin, "the journal's pending rows of this plugin read again");
            if entry.damaged.is_none() {
                trouble.remove(plugin);
            }
        }
        self.troubled.store(!trouble.is_empty(), Ordering::SeqCst);
    }

    /// Why an event for `plugins` cannot be accepted: one of them cannot read its rows.
    fn refusal(&self, plugins: &[Arc<str>]) -> Option<String> {
        if !self.troubled.load(Ordering::SeqCst) {
            return None;
        }
        let trouble = self.trouble.lock().unwrap_or_else(|p| p.into_inner());
        plugins.iter().find_map(|p| {
            let reason = trouble.get(&**p)?.stuck.as_ref()?;
            Some(format!(
                "the journal is damaged: the pending events of plugin {p} cannot be read ({reason}), \
                 so events for it are not accepted"
            ))
        })
    }

    fn wake(&self, plugin: &str) {
        if let Some(signal) = self.signal(plugin) {
            signal.notify.notify_one();
        }
    }

    fn skipped(&self, plugin: &str, id: u64) {
        if let Some(signal) = self.signal(plugin) {
            signal.skipped.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        }
    }

    fn replayed(&self, plugin: &str, id: u64) {
        if let Some(signal) = self.signal(plugin) {
            signal.skipped.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            signal.replayed.lock().unwrap_or_else(|p| p.into_inner()).push_back(id);
            signal.notify.notify_one();
        }
    }
}

/// How often the host looks again for events no row holds ([`watch_unheld`]).
const RECHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// Looks for events no row holds ([`check_unheld`]) at the start, after each reopen of the
/// file after an error (`woken`), and every [`RECHECK_EVERY`]: damage that appears or spreads
/// while the host runs is said within that time. Ends with the journal (`shared` gone).
fn watch_unheld(slot: &Slot, shared: &std::sync::Weak<Shared>, woken: &mpsc::Receiver<()>) {
    loop {
        match shared.upgrade() {
            Some(shared) if !shared.closed.load(Ordering::SeqCst) => {
                check_unheld(slot, &shared);
                shared.rechecked.fetch_add(1, Ordering::SeqCst);
            }
            _ => return,
        }
        match woken.recv_timeout(RECHECK_EVERY) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Looks for events that are not complete and that no row holds ([`store::unheld_events`]):
/// a damaged page hid their rows from every scan without an error, so they would never be
/// delivered, nor be dead letters. Each enabled plugin is marked damaged (`/readyz` says so,
/// with an ERROR line): which of them the events were for is not known. `journal verify`
/// names each event and `journal salvage` makes them dead letters.
fn check_unheld(slot: &Slot, shared: &Shared) {
    let Ok(database) = slot.get() else { return };
    let unheld =
        store::guard("checking which events rows hold", || store::unheld_events(&**database));
    drop(database);
    let Ok(Some(unheld)) = unheld else { return };
    let (Some(first), Some(last)) = (unheld.first(), unheld.last()) else { return };
    let which = match unheld.len() {
        1 => format!("event {first} is"),
        n => format!("{n} events from {first} to {last} are"),
    };
    let reason = format!(
        "{which} not complete, yet no pending row or dead letter holds them (a damaged page \
         hides their rows; `b24-host journal verify` names each)"
    );
    let plugins: Vec<Arc<str>> =
        shared.plugins.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
    for plugin in plugins {
        shared.note_damage(&plugin, false, reason.clone());
    }
}

/// The open database file, which the writer replaces when it reopens the file after a storage
/// error (redb refuses every write after an I/O error until the file is opened again).
/// Readers take a handle for the length of one read; while the file is being reopened, or
/// cannot be, reads fail too.
pub struct Slot {
    path: PathBuf,
    pub(super) current: std::sync::RwLock<Option<Arc<store::Store>>>,
}

impl Slot {
    /// The open database.
    pub fn get(&self) -> Result<Arc<store::Store>, StoreError> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| {
            StoreError::Storage("the journal is being reopened after a storage error".into())
        })
    }

    /// Closes the file and opens it again. Waits (up to a second) for readers to let go of
    /// the old handle, whose file lock would refuse the new one.
    fn reopen(&self) -> Result<Arc<store::Store>, StoreError> {
        let old = self.current.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut old) = old {
            let started = std::time::Instant::now();
            loop {
                match Arc::try_unwrap(old) {
                    Ok(database) => {
                        // Closing a damaged file can panic in the library too.
                        let _ = store::guard("closing the journal", || {
                            drop(database);
                            Ok(())
                        });
                        break;
                    }
                    Err(still) if started.elapsed() > std::time::Duration::from_secs(1) => {
                        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(still);
                        return Err(StoreError::Storage(
                            "the journal is still in use by a reader; reopening later".into(),
                        ));
                    }
                    Err(still) => {
                        old = still;
                        std::thread::sleep(std::time::Duration::from_millis(5));
                    }
                }
            }
        }
        let database = Arc::new(store::open(&self.path)?);
        store::probe_write(&database)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(database.clone());
        Ok(database)
    }
}

/// The embedded journal of a running host (or of a `journal` command on a stopped one).
#[derive(Clone)]
pub struct Embedded {
    slot: Arc<Slot>,
    commands: mpsc::Sender<Command>,
    /// Straight to the tables' thread: the plugins' outcomes, which the log never holds, so
    /// they do not wake or hold up the log's thread that every 200 waits for (see
    /// [`Embedded::report`]).
    tables: mpsc::Sender<apply::Work>,
    shared: Arc<Shared>,
}

impl Embedded {
    /// Opens the journal in `state_dir` for the enabled `plugins` and starts its writer
    /// thread; `maintain`: see [`writer::Settings::maintain`].
    pub fn open(
        state_dir: &Path,
        config: &JournalConfig,
        plugins: &[String],
        maintain: bool,
    ) -> Result<(Embedded, std::thread::JoinHandle<()>), StoreError> {
        let path = state_dir.join(FILE_NAME);
        // The host checks its journal against the mark; a `journal` command only reads it.
        let marked = if maintain { mark::read(state_dir)? } else { None };
        mark::check_file(state_dir, &path, marked)?;
        let database = match store::open(&path) {
            Ok(database) => Arc::new(database),
            Err(e @ StoreError::InUse { .. }) => return Err(e),
            Err(e) => {
                return Err(match marked.filter(|m| m.highest_id > 0) {
                    Some(m) => {
                        mark::refusal(state_dir, &path, &format!("cannot be opened ({e})"), m)
                    }
                    None => e,
                });
            }
        };
        // The event files the rows point into are part of the journal: a host refuses to start
        // without them (a `journal` command reads on: each such record reads as missing).
        if maintain {
            let missing = store::guard("looking for the event files", || {
                store::missing_event_files(&database)
            })?;
            if let Some(file) = missing.first() {
                return Err(StoreError::Refused(format!(
                    "{} is missing, but rows of {} point into it: the event files                      ({}) hold the records of the events the journal keeps. Restore {} and                      the event files together from a backup, or copy what is readable with                      `b24-host journal salvage --to NEW` (events whose records are gone become                      dead letters) and put NEW in its place",
                    file.display(),
                    path.display(),
                    state_dir.join(records::DIR).display(),
                    path.display(),
                )));
            }
        }
        // The tables are brought up to the log: what it holds above their last checkpoint.
        let recovered = recover::replay(state_dir, &database)?;
        let stored = store::guard("reading the next id", || store::next_id(&database));
        // A command on a stopped host runs no consumer: it needs no next id to check rows by.
        let stored = if maintain { stored? } else { stored.unwrap_or(1) };
        let highest = stored.saturating_sub(1).max(recovered.highest);
        let stored = stored.max(recovered.next_id);
        let mark = if maintain {
            if let Some(m) = marked.filter(|m| m.highest_id > highest) {
                let what = format!("holds events only up to id {highest}");
                return Err(mark::refusal(state_dir, &path, &what, m));
            }
            Some(mark::Mark::open(state_dir, &path, highest)?)
        } else {
            None
        };
        let slot = Arc::new(Slot { path, current: std::sync::RwLock::new(Some(database)) });
        let shared = Arc::new(Shared {
            plugins: std::sync::RwLock::new(
                plugins.iter().map(|p| (Arc::from(p.as_str()), Arc::default())).collect(),
            ),
            next_id: AtomicU64::new(stored),
            applied: AtomicU64::new(recovered.applied),
            checkpointed: AtomicU64::new(recovered.applied),
            ..Shared::default()
        });
        let (commands, rx) = mpsc::channel();
        let settings = writer::Settings {
            window: config.commit_window,
            dedup_window_ms: config.dedup_window.as_millis() as i64,
            keep_for_ms: config.keep_completed_for.as_millis() as i64,
            keep_max: config.keep_completed_events,
            maintain,
        };
        let (work, work_rx) = mpsc::channel();
        let outcomes = work.clone();
        let tables = {
            let slot = slot.clone();
            let shared = shared.clone();
            let settings = settings.clone();
            let dir = recovered.wal.dir().to_owned();
            std::thread::Builder::new()
                .name("journal-tables".into())
                .spawn(move || apply::run(slot, work_rx, settings, shared, dir))
                .map_err(|e| StoreError::Storage(format!("cannot start the tables' thread: {e}")))?
        };
        let thread = {
            let slot = slot.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || {
                    writer::run(slot, rx, &settings, shared, mark, recovered.wal, work, tables)
                })
                .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?
        };
        if maintain {
            // Off the start's path: a file of a million events takes a second or so.
            let (wake, woken) = mpsc::channel();
            *shared.recheck.lock().unwrap_or_else(|p| p.into_inner()) = Some(wake);
            let (slot, shared) = (slot.clone(), Arc::downgrade(&shared));
            let _ = std::thread::Builder::new()
                .name("journal-check".into())
                .spawn(move || watch_unheld(&slot, &shared, &woken));
        }
        Ok((Embedded { slot, commands, tables: outcomes, shared }, thread))
    }

    /// Opens the journal of a stopped host for a `journal` command: [`StoreError::InUse`]
    /// when a running host holds it, [`StoreError::NotFound`] when there is none.
    pub fn open_for_command(
        state_dir: &Path,
        config: &JournalConfig,
    ) -> Result<(Embedded, std::thread::JoinHandle<()>), StoreError> {
        let path = state_dir.join(FILE_NAME);
        if !path.exists() {
            return Err(StoreError::NotFound { path: path.display().to_string() });
        }
        Embedded::open(state_dir, config, &[], false)
    }

    /// Why the last journal commit failed, if it did (cleared by the next good one).
    pub fn last_write_error(&self) -> Option<String> {
        let log = self.shared.log_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        log.or_else(|| self.shared.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// Records found damaged or missing on a read since the host started (each a dead letter).
    pub fn damaged_records(&self) -> u64 {
        self.shared.damaged.load(Ordering::Relaxed)
    }

    /// Damage found on the running host that dead letters do not account for, one line per
    /// plugin and kind (`/readyz`): empty while none is known.
    pub fn damage(&self) -> Vec<String> {
        if !self.shared.troubled.load(Ordering::SeqCst) {
            return Vec::new();
        }
        let trouble = self.shared.trouble.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (plugin, t) in trouble.iter() {
            if let Some(reason) = &t.stuck {
                out.push(format!(
                    "the journal is damaged: the pending events of plugin {plugin} cannot be \
                     read ({reason}); events for it get 503. Stop the host and copy what is \
                     readable with `b24-host journal salvage --to NEW`"
                ));
            }
            if let Some(reason) = &t.damaged {
                out.push(format!(
                    "the journal is damaged: pending rows of plugin {plugin}: {reason}; rows \
                     beside it may be unreadable. Stop the host and copy what is readable with \
                     `b24-host journal salvage --to NEW` (what it cannot read becomes dead letters)"
                ));
            }
        }
        out
    }

    /// The journal file's size.
    pub fn size_bytes(&self) -> Option<u64> {
        std::fs::metadata(&self.slot.path).ok().map(|m| m.len())
    }

    /// Learned application tokens.
    pub fn learned_tokens(&self) -> Result<std::collections::BTreeMap<String, Secret>, StoreError> {
        store::guard("reading tokens", || store::learned_tokens(&*self.slot.get()?))
    }

    /// See `Journal::append`: the record and its key are made by the face.
    pub async fn append(
        &self,
        record: Box<EventRecord>,
        key: DedupKey,
        plugins: Vec<Arc<str>>,
        change: Option<crate::journal::PortalChange>,
        permanent: bool,
    ) -> Result<Appended, StoreError> {
        if let Some(reason) = self.shared.refusal(&plugins) {
            return Err(StoreError::Storage(reason));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Command::Append { record, plugins, key, change, permanent, reply })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs an operator's change in the writer's next transaction.
    async fn change(&self, op: writer::AdminOp) -> Result<Vec<(String, u64)>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Admin { op, reply })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Puts the selected dead letters back into delivery.
    pub async fn replay(&self, which: Selection) -> Result<Vec<(String, u64)>, StoreError> {
        self.change(admin::replay(which)).await
    }

    /// Deletes the selected dead letters.
    pub async fn purge(&self, which: Selection) -> Result<Vec<(String, u64)>, StoreError> {
        self.change(admin::purge(which)).await
    }

    /// Moves `plugin`'s pending `ids` to its dead letters.
    pub async fn skip(
        &self,
        plugin: String,
        ids: Vec<u64>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        self.change(admin::skip(plugin, ids)).await
    }

    /// Runs a read on a blocking thread.
    async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&store::Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        // Appends answered 200 may still wait for the tables: let the writer apply them first.
        let (reply, applied) = oneshot::channel();
        if self.send(Command::Apply(reply)).is_ok() {
            let _ = applied.await;
        }
        let slot = self.slot.clone();
        tokio::task::spawn_blocking(move || {
            store::guard("reading the journal", || read(&*slot.get()?))
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))?
    }

    /// Per-plugin numbers.
    pub async fn stats(&self, enabled: Vec<String>) -> Result<Stats, StoreError> {
        self.read(move |database| admin::stats(database, &enabled)).await
    }

    /// The newest events.
    pub async fn list(&self, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
        self.read(move |database| admin::list(database, limit)).await
    }

    /// One page of a filtered listing (console).
    pub async fn query(
        &self,
        query: crate::journal::admin::Query,
    ) -> Result<crate::journal::admin::Page, StoreError> {
        self.read(move |database| admin::query(database, &query)).await
    }

    /// One event in detail.
    pub async fn show(&self, id: u64) -> Result<Option<EventDetail>, StoreError> {
        self.read(move |database| admin::show(database, id)).await
    }

    /// One page of dead letters.
    pub async fn dead_page(
        &self,
        query: crate::journal::admin::DeadQuery,
    ) -> Result<crate::journal::admin::DeadPage, StoreError> {
        self.read(move |database| admin::dead_page(database, &query)).await
    }

    /// Dead letters.
    pub async fn dead(&self, plugin: Option<String>) -> Result<Vec<DeadRow>, StoreError> {
        self.read(move |database| admin::dead(database, plugin.as_deref())).await
    }

    /// Stores a portal's OAuth tokens (JSON) durably; returns once they are on disk.
    pub async fn save_oauth(&self, member_id: &str, tokens: Vec<u8>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::SetOAuth(member_id.to_owned(), tokens, reply))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Sets (`Some`) or removes (`None`) a named state value, durably.
    pub async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::SetState(name.to_owned(), value, reply))?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// A named state value, if set.
    pub fn state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        store::guard("reading state", || store::state(&*self.slot.get()?, name))
    }

    /// A portal's stored OAuth tokens (JSON), if any.
    pub fn oauth(&self, member_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        store::guard("reading tokens", || store::oauth(&*self.slot.get()?, member_id))
    }

    /// `plugin`'s pending state of event `id`, if it is pending for it.
    pub fn pending(&self, plugin: &str, id: u64) -> Result<Option<Pending>, StoreError> {
        store::guard("reading a pending row", || store::pending(&*self.slot.get()?, plugin, id))
    }

    /// Waits until everything reported so far is durable.
    pub async fn flush(&self) {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Flush(reply)).is_ok() {
            let _ = answer.await;
        }
    }

    /// Commits what is pending and closes the file cleanly (the host's last step).
    pub async fn finish(&self) {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Close(reply)).is_ok() {
            let _ = answer.await;
        }
    }

    fn send(&self, command: Command) -> Result<(), StoreError> {
        self.commands.send(command).map_err(|_| StoreError::Closed)
    }

    /// Hands a plugin's outcome (done, a retry's state, an attempt, a dead letter) to the
    /// tables' thread directly. Its event is there before it: the log's thread hands each
    /// batch to the tables before any consumer's tail gets it, and an event read from the
    /// tables is there already. A command sent through the log's thread after it (a flush,
    /// an operator's change) reaches the tables after it too.
    fn report(&self, command: Command) {
        let _ = self.tables.send(apply::Work::Command(command));
    }

    /// The consumer of `plugin`'s pending events. One per plugin.
    pub fn consumer(&self, plugin: &str) -> Consumer {
        let name: Arc<str> = Arc::from(plugin);
        let signal = self.shared.signal_or_new(plugin);
        // A new consumer starts from the tables: the tail is its own from now on (a stopped
        // one's, which may have taken entries it never delivered, no longer counts).
        let generation = {
            let mut tail = signal.tail.lock().unwrap_or_else(|p| p.into_inner());
            tail.owner += 1;
            tail.on = false;
            tail.entries.clear();
            tail.owner
        };
        Consumer {
            journal: self.clone(),
            plugin: name,
            signal,
            generation,
            cursor: 0,
            through: 0,
            ahead: HashSet::new(),
            started: false,
            moved: HashSet::new(),
            unsure: None,
            buffer: VecDeque::new(),
            stopped: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Stops handing out events: consumers return `None` from now on.
    pub fn close(&self) {
        self.shared.closed.store(true, Ordering::SeqCst);
        self.shared.closing.notify_waiters();
        for signal in self.shared.plugins.read().unwrap_or_else(|p| p.into_inner()).values() {
            signal.notify.notify_one();
        }
    }

    fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

/// How many pending rows a consumer reads at a time.
const SCAN_BATCH: usize = 256;

/// One plugin's view of the journal: its pending events in id order, then new ones as they
/// arrive, and dead letters put back by `journal replay`.
pub struct Consumer {
    journal: Embedded,
    plugin: Arc<str>,
    signal: Arc<Signal>,
    /// Which consumer of the plugin this is (see [`Tail::owner`]).
    generation: u64,
    cursor: u64,
    /// A scan that found no more rows proved the plugin has none up to here (beyond the
    /// cursor, which only moves with rows delivered).
    through: u64,
    /// Replayed events above the cursor delivered while on the tail: a later scan (after the
    /// tail overflowed) passes their rows by.
    ahead: HashSet<u64>,
    /// Whether the plugin's last pending row was looked up (see [`Signal::appended`]).
    started: bool,
    /// Keys of rows found under a wrong key and made dead letters already: a scan that meets
    /// one again (its page is out of order) passes it by.
    moved: HashSet<u64>,
    /// Why rows after some point may be hidden for good: a scan from there found rows past a
    /// gap it could not check (see [`store::Scanned::unchecked`]). The plugin stays stuck at
    /// that point, the earliest, whatever later scans read (damage seeds 233 and 8: events
    /// 127-175 and 631-665 never delivered while `/readyz` named only a later point).
    unsure: Option<String>,
    buffer: VecDeque<Delivery>,
    stopped: Arc<AtomicBool>,
}

/// Stops one consumer (its plugin was disabled); its events stay in the journal.
#[derive(Clone)]
pub struct Stopper {
    stopped: Arc<AtomicBool>,
    signal: Arc<Signal>,
}

impl Stopper {
    /// The consumer returns `None` from its next `next()` on.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.signal.notify.notify_one();
    }

    /// Whether the consumer was stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

impl Consumer {
    /// The plugin's name.
    pub fn plugin(&self) -> &Arc<str> {
        &self.plugin
    }

    /// A handle that stops this consumer.
    pub fn stopper(&self) -> Stopper {
        Stopper { stopped: self.stopped.clone(), signal: self.signal.clone() }
    }

    /// The next event to deliver; `None` once the journal is closed or the consumer stopped.
    pub async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.journal.is_closed() || self.stopped.load(Ordering::SeqCst) {
                return None;
            }
            if let Some(delivery) = self.buffer.pop_front() {
                return Some(delivery);
            }
            let signal = self.signal.clone();
            let shared = self.journal.shared.clone();
            let notified = signal.notify.notified();
            let closing = shared.closing.notified();
            if let Err(e) = store::guard("reading pending events", || self.fill()) {
                tracing::error!(plugin = %self.plugin, "cannot read the journal: {e}");
            }
            if !self.buffer.is_empty() {
                continue;
            }
            tokio::select! {
                () = notified => {},
                () = closing => {},
                // A missed wake-up or a read error costs at most this long.
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {},
            }
        }
    }

    /// Reads replayed and newly pending events into the buffer.
    ///
    /// A damaged page must never make events vanish: a row whose key a flipped bit changed
    /// (its checksum names another event), a row out of order or naming an id never handed
    /// out, moves the cursor nowhere (later rows are not skipped); rows a search through a
    /// damaged index page went past are found by walking back, or by reading the table from its
    /// start (see [`store::scan_pending`]), and delivered; such damage may hide other rows, so
    /// the plugin is marked damaged (`/readyz`). A scan that cannot read on, or that ends
    /// before the last row the writer added for the plugin, marks it stuck: its new events are
    /// refused (503) until a scan gets past.
    fn fill(&mut self) -> Result<(), StoreError> {
        let database = match self.journal.slot.get() {
            Ok(database) => database,
            // The tables cannot be read (being reopened after a storage error, or for good):
            // what the tail holds is in the log, so it is delivered meanwhile (an outcome the
            // tables cannot take means a redelivery later, never a loss).
            Err(e) => {
                if self.started && self.take_tail() && !self.buffer.is_empty() {
                    return Ok(());
                }
                // Damage that keeps the file from opening again stops this plugin here, until
                // a reopen succeeds (damage seed 23: events 513-2000 pending, `/readyz` naming
                // only the journal's reopen).
                let unopenable = self
                    .journal
                    .shared
                    .unopenable
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone();
                if let Some(reason) = unopenable {
                    self.stuck(format!(
                        "after event {}: the journal file cannot be opened again: {reason}",
                        self.cursor
                    ));
                }
                return Err(e);
            }
        };
        let replayed: Vec<u64> =
            self.signal.replayed.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for id in replayed {
            if id > self.cursor {
                // A table scan reaches it; on the tail, which holds it if it is still to come,
                // nothing reads the tables: it is delivered now, and a later scan passes it by.
                match self.on_tail(id) {
                    None => continue,
                    Some(true) => continue,
                    Some(false) => {
                        self.ahead.insert(id);
                    }
                }
            }
            if let Some(record) = store::event(&database, id)? {
                self.push(id, id, Ok(Pending::default()), record);
            }
        }
        // What the writer committed, read before the scan's own transaction begins: the scan
        // sees all of it.
        let next_id = self.journal.shared.next_id.load(Ordering::SeqCst);
        if !self.started {
            let plugin = self.plugin.clone();
            let last = store::guard("reading the last pending row", || {
                store::last_pending(&database, &plugin)
            })
            .inspect_err(|e| {
                self.stuck(format!("its last row cannot be read: {e}"));
            })?;
            match last {
                Some(id) if id >= next_id => self.journal.shared.note_damage(
                    &self.plugin,
                    false,
                    format!("its last row names event {id}, an id never handed out"),
                ),
                Some(id) => {
                    self.signal.appended.fetch_max(id, Ordering::SeqCst);
                }
                None => {}
            }
            self.started = true;
        }
        if self.take_tail() {
            return Ok(());
        }
        let appended = self.signal.appended.load(Ordering::SeqCst);
        // What the tables held before the scan's transaction began: a scan that finds no more
        // rows proves the plugin has none up to it.
        let applied = self.journal.shared.applied.load(Ordering::SeqCst);
        let scanned = store::scan_pending(&database, &self.plugin, self.cursor, SCAN_BATCH)
            .inspect_err(|e| self.stuck(format!("after event {}: {e}", self.cursor)))?;
        if let Some(e) = &scanned.unchecked
            && self.unsure.is_none()
        {
            let found = match scanned.rows.first() {
                Some(first) => format!("were found from event {} on", first.key),
                None => "were not found".to_owned(),
            };
            tracing::error!(
                plugin = %self.plugin,
                "the journal's pending rows are damaged: the rows after event {} {found}, and \
                 whether the index hides rows there could not be checked: {e}",
                self.cursor
            );
            self.unsure = Some(format!(
                "after event {}: rows after it may be hidden (they {found}, and the index could \
                 not be checked: {e})",
                self.cursor
            ));
        }
        // Rows found another way come alone: the ones after them are read next.
        let full = scanned.rows.len() >= SCAN_BATCH || scanned.passed_over;
        if scanned.passed_over
            && let (Some(first), Some(last)) = (scanned.rows.first(), scanned.rows.last())
        {
            // Delivered as found; the damage that hid them may hide others.
            let (first, last) = (first.key, last.key);
            tracing::error!(
                plugin = %self.plugin,
                "the journal's index of pending rows is damaged: a search for the rows after \
                 event {} went past events {first} to {last}, which were found by walking back \
                 or by reading the table from its start",
                self.cursor
            );
            self.journal.shared.note_damage(
                &self.plugin,
                false,
                format!(
                    "a search for the rows after event {} went past events {first} to {last} (a \
                     damaged index page)",
                    self.cursor
                ),
            );
        }
        for row in scanned.rows {
            if self.ahead.remove(&row.key) {
                self.cursor = self.cursor.max(row.key);
                continue; // A replay delivered it already (see `on_tail`).
            }
            if row.id != row.key {
                if !self.moved.insert(row.key) {
                    continue;
                }
                self.journal.shared.note_damage(
                    &self.plugin,
                    false,
                    format!(
                        "the row of event {} was found under event {} (a flipped bit in its key)",
                        row.id, row.key
                    ),
                );
                self.push(row.id, row.key, Err(Damage::Checksum), Err(Damage::Missing));
                continue;
            }
            if row.key <= self.cursor || row.key >= next_id {
                let what = if row.key <= self.cursor { "out of order" } else { "never handed out" };
                self.journal.shared.note_damage(
                    &self.plugin,
                    false,
                    format!("a row names event {} ({what}, after event {})", row.key, self.cursor),
                );
                continue;
            }
            self.cursor = row.key;
            self.push(row.id, row.key, row.pending, row.record);
        }
        if let Some(e) = scanned.failed {
            tracing::error!(plugin = %self.plugin, "the journal's pending rows are unreadable past a point: {e}");
            self.stuck(format!("after event {}: {e}", self.cursor));
            return Ok(());
        }
        if !full && appended > self.cursor {
            // The scan found no more rows: the last one the writer added must be gone (done,
            // or skipped by an operator), or the scan ended early.
            let plugin = self.plugin.clone();
            let still = store::guard("reading a pending row", || {
                store::pending(&database, &plugin, appended)
            })
            .inspect_err(|e| self.stuck(format!("after event {}: {e}", self.cursor)))?;
            if still.is_some() {
                self.stuck(format!(
                    "a scan ends at event {}, before event {appended}, which is pending",
                    self.cursor
                ));
                return Ok(());
            }
        }
        // Only a scan that ended where the rows end proves none left up to what the tables
        // held: one cut short (damage) keeps the consumer on the tables, scanning again, so the
        // tail never skips the rows behind it.
        if !full {
            self.through = self.through.max(applied);
        }
        match &self.unsure {
            Some(reason) => self.journal.shared.note_damage(&self.plugin, true, reason.clone()),
            None => self.journal.shared.unstuck(&self.plugin),
        }
        Ok(())
    }

    /// Marks the plugin stuck: at the earliest point rows may be hidden from, if one is known.
    fn stuck(&self, reason: String) {
        let reason = self.unsure.clone().unwrap_or(reason);
        self.journal.shared.note_damage(&self.plugin, true, reason);
    }

    /// Whether this consumer is on its tail (`None`: it reads the tables), and if so whether
    /// the tail still holds event `id`.
    fn on_tail(&self, id: u64) -> Option<bool> {
        let tail = self.signal.tail.lock().unwrap_or_else(|p| p.into_inner());
        let on =
            tail.owner == self.generation && tail.on && self.cursor.max(self.through) >= tail.after;
        on.then(|| tail.entries.iter().any(|(held, _)| *held == id))
    }

    /// Takes the plugin's new entries from its tail once the tables were read up to where
    /// the tail begins, turning the tail on first if it is off; whether the tables need no
    /// reading now (the consumer is on the tail).
    fn take_tail(&mut self) -> bool {
        let taken: Vec<(u64, Arc<EventRecord>)> = {
            let mut tail = self.signal.tail.lock().unwrap_or_else(|p| p.into_inner());
            if tail.owner != self.generation {
                return false;
            }
            if !tail.on {
                // Rows up to here come from the tables: every id handed out so far (those
                // the log's thread is about to feed are in the tail too, and passed by there
                // once the tables gave them). A scan proves the rest absent (`through`).
                tail.on = true;
                let handed_out = self.journal.shared.next_id.load(Ordering::SeqCst);
                tail.after = tail.written.max(handed_out.saturating_sub(1));
                tail.entries.clear();
            }
            if self.cursor.max(self.through) < tail.after {
                return false;
            }
            tail.entries.drain(..).collect()
        };
        for (id, record) in taken {
            if id <= self.cursor {
                continue;
            }
            self.cursor = id;
            // The last plugin to take it gets the record itself; the others a copy (the body
            // is shared), not a decode of the stored bytes.
            let record = Arc::try_unwrap(record).unwrap_or_else(|shared| (*shared).clone());
            self.push(id, id, Ok(Pending::default()), Ok(record));
        }
        true
    }

    /// Buffers a checked event for delivery; a damaged or missing one is never delivered: it
    /// becomes a dead letter with the reason, an ERROR line and a count for the metric.
    /// `stored_under` is the key its pending row was read under.
    fn push(
        &mut self,
        id: u64,
        stored_under: u64,
        pending: Result<Pending, Damage>,
        record: Result<EventRecord, Damage>,
    ) {
        match (pending, record) {
            (Ok(pending), Ok(record)) => self.buffer.push_back(Delivery { id, pending, record }),
            (pending, record) => {
                let (what, damage) = match (&pending, &record) {
                    (_, Err(e)) => ("event", *e),
                    (Err(e), _) => ("pending row:", *e),
                    (Ok(_), Ok(_)) => unreachable!("matched above"),
                };
                let reason = if stored_under == id {
                    format!("{what} {damage}")
                } else {
                    format!("pending row damaged: found under event {stored_under}")
                };
                tracing::error!(
                    event_id = id,
                    plugin = %self.plugin,
                    "journal {reason}: the event is not delivered; it is a dead letter now"
                );
                self.journal.shared.damaged.fetch_add(1, Ordering::Relaxed);
                let attempts = pending.map(|p| p.attempts).unwrap_or(0);
                let letter = DeadLetter { reason, attempts, at_ms: now_ms() };
                self.journal.report(Command::BuryDamaged(
                    self.plugin.clone(),
                    id,
                    stored_under,
                    letter,
                ));
            }
        }
    }

    /// A handle to report outcomes with, usable from other tasks.
    pub fn reporter(&self) -> Reporter {
        Reporter {
            journal: self.journal.clone(),
            plugin: self.plugin.clone(),
            signal: self.signal.clone(),
        }
    }
}

/// Reports one plugin's outcomes to the journal.
#[derive(Clone)]
pub struct Reporter {
    journal: Embedded,
    plugin: Arc<str>,
    signal: Arc<Signal>,
}

impl Reporter {
    /// Resolves once the journal is closing (the host is shutting down).
    pub async fn closed(&self) {
        let closing = self.journal.shared.closing.notified();
        if self.journal.is_closed() {
            return;
        }
        closing.await;
    }

    /// Whether the journal is closing.
    pub fn is_closed(&self) -> bool {
        self.journal.is_closed()
    }

    /// Whether an operator skipped event `id` since it was read.
    pub fn is_skipped(&self, id: u64) -> bool {
        self.signal.skipped.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// [`Reporter::is_skipped`], and forgets it.
    pub fn take_skipped(&self, id: u64) -> bool {
        self.signal.skipped.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    /// The plugin finished event `id` (done or skipped).
    pub fn complete(&self, id: u64) {
        self.journal.report(Command::Complete(self.plugin.clone(), id));
    }

    /// An attempt failed; remember the attempt count and the next attempt's time.
    pub fn update(&self, id: u64, state: Pending) {
        self.journal.report(Command::Update(self.plugin.clone(), id, state));
    }

    /// One attempt ended (console history).
    pub fn attempt(&self, id: u64, attempt: crate::journal::admin::Attempt) {
        self.journal.report(Command::Attempt(self.plugin.clone(), id, Box::new(attempt)));
    }

    /// The plugin gave up on event `id`.
    pub fn bury(&self, id: u64, dead: DeadLetter) {
        self.journal.report(Command::Bury(self.plugin.clone(), id, dead));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use bytes::Bytes;

    use super::*;
    use crate::journal::{checksum, record::seal_row};

    fn record(id: u64) -> EventRecord {
        crate::record::fixture(
            now_ms(),
            crate::journal::dedup::hex(&crate::journal::dedup::key_of(&[&id.to_le_bytes()])),
            Bytes::from_static(b"event=ONCRMDEALUSERFIELDUPDATE"),
        )
    }

    /// Closes the journal as the host does at the end, and waits for its threads.
    async fn end(journal: Embedded, consumer: Consumer, writer: std::thread::JoinHandle<()>) {
        journal.finish().await;
        journal.close();
        drop((consumer, journal));
        writer.join().unwrap();
    }

    async fn next(consumer: &mut Consumer) -> u64 {
        let delivery = tokio::time::timeout(std::time::Duration::from_secs(20), consumer.next());
        delivery.await.expect("a delivery in time").expect("a delivery").id
    }

    /// The journal in `dir` opened as a host opens it, for the one plugin `plugin`, with that
    /// plugin's consumer.
    fn opened(dir: &Path, plugin: &str) -> (Embedded, std::thread::JoinHandle<()>, Consumer) {
        let config = JournalConfig::default();
        let (journal, writer) = Embedded::open(dir, &config, &[plugin.into()], true).unwrap();
        let consumer = journal.consumer(plugin);
        (journal, writer, consumer)
    }

    /// A damaged journal kept from an e2e run (gzipped, in `testdata/`), unpacked into `dir`.
    fn unpack(packed: &[u8], dir: &Path) {
        use std::io::Read as _;
        let mut file = Vec::new();
        flate2::read::GzDecoder::new(packed).read_to_end(&mut file).unwrap();
        std::fs::write(dir.join(FILE_NAME), file).unwrap();
    }

    /// A stopped journal in `dir` holding events 1..=10, each pending for plugin `p`, with
    /// `damage` done to it in the same transaction.
    fn ten_pending(dir: &Path, damage: impl FnOnce(&redb::WriteTransaction)) {
        let database = store::open(&dir.join(FILE_NAME)).unwrap();
        let txn = database.begin_write().unwrap();
        {
            let p: Arc<str> = Arc::from("p");
            let mut tables = store::Tables::open(&txn).unwrap();
            for id in 1..=10 {
                tables.insert_event(id, &record(id), std::slice::from_ref(&p)).unwrap();
            }
            tables.set_next_id(11).unwrap();
        }
        damage(&txn);
        txn.commit().unwrap();
    }

    /// A row a damaged page hides from every scan without an error (damage seed 8's 35
    /// events) is found at the start, off its path: `/readyz` says events are held by no row,
    /// and every other event is delivered. The hidden row is modelled by removing it behind the
    /// index's back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_no_row_holds_are_found_at_the_start_and_said() {
        let dir = tempfile::tempdir().unwrap();
        ten_pending(dir.path(), |txn| {
            txn.open_table(store::PENDING).unwrap().remove(("p", 4)).unwrap();
        });
        let (journal, writer, mut consumer) = opened(dir.path(), "p");
        let mut got = Vec::new();
        for _ in 0..9 {
            let id = next(&mut consumer).await;
            consumer.reporter().complete(id);
            got.push(id);
        }
        assert_eq!(got, vec![1, 2, 3, 5, 6, 7, 8, 9, 10]);
        let started = std::time::Instant::now();
        while journal.damage().is_empty() && started.elapsed() < std::time::Duration::from_secs(20)
        {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let damage = journal.damage();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert!(damage[0].contains("event 4 is not complete"), "{damage:?}");
        end(journal, consumer, writer).await;
    }

    /// Damage seed 27's journal (2000 events pending for `probe`, bits flipped in the pending
    /// table's index), kept from an e2e run: once the first 256 events' rows are deleted, the
    /// storage library's searches for the rows after event 256 land on event 631, and the walk
    /// back from there finds nothing. Events 257-630 were then never delivered, with `/readyz`
    /// ready. Now the gap's events, pending with no row that a look-up finds, send the scan to
    /// read the table from its start: every event with a sound record is delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_every_search_goes_past_after_the_writes_spread_the_damage_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        unpack(include_bytes!("testdata/damage-seed-27.redb.gz"), dir.path());
        let (journal, writer, mut consumer) = opened(dir.path(), "probe");
        let mut got = BTreeSet::new();
        // The first scan's rows, done and their rows deleted before the next scan.
        while got.len() < 256 {
            let id = next(&mut consumer).await;
            consumer.reporter().complete(id);
            got.insert(id);
        }
        journal.flush().await;
        while !got.contains(&2000) {
            let id = next(&mut consumer).await;
            consumer.reporter().complete(id);
            got.insert(id);
        }
        // Their records are damaged: dead letters.
        let damaged = [260, 341, 368, 486, 564];
        let missing: Vec<u64> =
            (257..=630).filter(|id| !got.contains(id) && !damaged.contains(id)).collect();
        assert!(missing.is_empty(), "{} events never delivered: {missing:?}", missing.len());
        assert!(!journal.damage().is_empty(), "the damage is named");
        end(journal, consumer, writer).await;
    }

    /// Damage found while the host runs: a row that vanishes from the file after the start's
    /// look is found at the next one (the tables' thread asks for one after each reopen).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_no_row_holds_later_are_found_when_the_tables_ask_for_a_look() {
        let dir = tempfile::tempdir().unwrap();
        ten_pending(dir.path(), |_| {});
        let (journal, writer, consumer) = opened(dir.path(), "p");
        let shared = journal.shared.clone();
        let looked = |n: u64| {
            let shared = shared.clone();
            async move {
                let started = std::time::Instant::now();
                while shared.rechecked.load(Ordering::SeqCst) < n {
                    assert!(started.elapsed() < std::time::Duration::from_secs(20), "no look");
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
            }
        };
        looked(1).await;
        assert!(journal.damage().is_empty(), "a sound file: {:?}", journal.damage());
        {
            let database = journal.slot.get().unwrap();
            let txn = database.begin_write().unwrap();
            txn.open_table(store::PENDING).unwrap().remove(("p", 7)).unwrap();
            txn.commit().unwrap();
        }
        journal.shared.recheck();
        looked(2).await;
        let damage = journal.damage();
        assert!(damage.iter().any(|d| d.contains("event 7 is not complete")), "{damage:?}");
        end(journal, consumer, writer).await;
    }

    /// Damage seed 47's journal, kept from an e2e run: once the host's own deletes spread its
    /// damage, the seek for the plugin names after `probe` landed among `probe`'s rows again,
    /// so the tables' thread looked for the next name for ever (a whole core, and every read
    /// of the admin face waiting behind it). Now the names are read without a seek then, the
    /// writes go on, and the plugin is said stuck where its rows cannot be read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_damaged_index_that_sends_the_name_seek_back_does_not_spin_the_tables_thread() {
        let dir = tempfile::tempdir().unwrap();
        unpack(include_bytes!("testdata/damage-seed-47.redb.gz"), dir.path());
        let (journal, writer, mut consumer) = opened(dir.path(), "probe");
        // Every event it can read, until it meets the damage and what it read before is done
        // (buffered deliveries come at once): outcomes in batches as a runner's frames bring
        // them, each batch applied on its own.
        let (started, mut done) = (std::time::Instant::now(), 0);
        loop {
            assert!(started.elapsed() < std::time::Duration::from_secs(60), "no damage named");
            let wait = std::time::Duration::from_millis(100);
            match tokio::time::timeout(wait, consumer.next()).await {
                Ok(Some(delivery)) => {
                    consumer.reporter().complete(delivery.id);
                    done += 1;
                    if done % 32 == 0 {
                        tokio::time::sleep(2 * apply::APPLY_EVERY).await;
                    }
                }
                _ if !journal.damage().is_empty() => break,
                _ => {}
            }
        }
        let flushed = tokio::time::timeout(std::time::Duration::from_secs(20), journal.flush());
        assert!(flushed.await.is_ok(), "the tables' thread never took the flush");
        end(journal, consumer, writer).await;
    }

    /// A flipped bit in the key of event 5's pending row moved it under an id never handed
    /// out. It used to move the consumer's cursor there, past every later event (and past the
    /// events appended afterwards, answered 200 and never delivered); now event 5 is a dead
    /// letter saying so, every other event is delivered, and `/readyz` names the damage.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pending_row_under_a_flipped_key_is_its_events_dead_letter_and_skips_nothing() {
        let dir = tempfile::tempdir().unwrap();
        ten_pending(dir.path(), |txn| {
            let mut pending = txn.open_table(store::PENDING).unwrap();
            pending.remove(("p", 5)).unwrap();
            let row = seal_row("p", 5, &Pending::default());
            pending.insert(("p", 5 | 1 << 40), row.as_slice()).unwrap();
            assert!(
                checksum::matching_id(&row, 5 | 1 << 40, |id| checksum::row_key("p", id))
                    == Some(5)
            );
        });
        let (journal, writer, mut consumer) = opened(dir.path(), "p");
        let mut got = Vec::new();
        for _ in 0..9 {
            got.push(next(&mut consumer).await);
        }
        assert_eq!(got, vec![1, 2, 3, 4, 6, 7, 8, 9, 10]);
        // A later event still reaches the plugin: nothing moved the cursor past it.
        let key = crate::journal::dedup::key_of(&[b"later"]);
        let appended = journal.append(Box::new(record(11)), key, vec![Arc::from("p")], None, false);
        assert_eq!(appended.await.unwrap(), Appended::New(11));
        assert_eq!(next(&mut consumer).await, 11);
        journal.flush().await;
        let dead = journal.dead(Some("p".into())).await.unwrap();
        assert_eq!(dead.iter().map(|d| d.id).collect::<Vec<_>>(), vec![5]);
        assert!(dead[0].dead.reason.contains("found under event"), "{:?}", dead[0].dead);
        let damage = journal.damage();
        let flipped = (5u64 | 1 << 40).to_string();
        assert!(
            damage.len() == 1 && damage[0].contains(&flipped) && damage[0].contains("salvage"),
            "{damage:?}"
        );
        end(journal, consumer, writer).await;
    }

    /// A flipped bit in a key of the pending table's index (a branch page) sends a search for
    /// a range's start past rows that are in the table, and nothing fails: a consumer, which
    /// starts a new range after every batch of rows, went past them without a word (damage
    /// seed 14: 524 events neither delivered nor dead letters, `/readyz` ready). Now the rows
    /// are found by walking back from where the search landed, delivered, and the damage named.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_a_search_through_a_damaged_index_page_goes_past_are_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let p: Arc<str> = Arc::from("p");
        let path = dir.path().join(FILE_NAME);
        let events = 3 * SCAN_BATCH as u64;
        {
            let database = store::open(&path).unwrap();
            let txn = database.begin_write().unwrap();
            {
                let mut tables = store::Tables::open(&txn).unwrap();
                for id in 1..=events {
                    tables.insert_event(id, &record(id), std::slice::from_ref(&p)).unwrap();
                }
                tables.set_next_id(events + 1).unwrap();
            }
            txn.commit().unwrap();
        }
        // The index's keys between the consumer's first and second batch: (len 1, "p", id).
        // Clearing bit 8 of such a key (ids 256..=511 have it) sends every search for an id
        // between the damaged key and the true one to the page after it.
        let mut bytes = std::fs::read(&path).unwrap();
        let after_first_batch = SCAN_BATCH as u64 + 1;
        let mut damaged = 0;
        for page in (0..bytes.len()).step_by(4096) {
            if bytes[page] != 2 {
                continue;
            }
            let at = (page..page + 4096 - 10).find(|&at| {
                let id = u64::from_le_bytes(bytes[at + 2..at + 10].try_into().unwrap());
                bytes[at..at + 2] == *b"\x01p" && id > after_first_batch && id < 512
            });
            if let Some(at) = at {
                bytes[at + 3] ^= 1; // bit 8 of the id
                damaged += 1;
            }
        }
        assert!(damaged > 0, "no index page of the pending table holds such a key");
        std::fs::write(&path, bytes).unwrap();

        let (journal, writer, mut consumer) = opened(dir.path(), "p");
        let mut got = Vec::new();
        for _ in 0..events {
            got.push(next(&mut consumer).await);
        }
        got.sort_unstable();
        assert_eq!(got, (1..=events).collect::<Vec<_>>());
        let damage = journal.damage();
        assert!(damage.len() == 1 && damage[0].contains("damaged index page"), "{damage:?}");
        end(journal, consumer, writer).await;
    }

    /// An install's pair is written in the event's own write (its entry in the write-ahead
    /// log, then the same transaction of the tables): stored once the append answers, and not
    /// at all for an append that is a duplicate (nothing of it is written).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_installs_pair_is_stored_with_its_event_and_not_with_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let config = JournalConfig::default();
        let (journal, writer) = Embedded::open(dir.path(), &config, &[], true).unwrap();
        let change = |pair: &str| {
            Some(crate::journal::PortalChange {
                member_id: "m".into(),
                token: Some(Some(Secret::new("app"))),
                oauth: Some(pair.as_bytes().to_vec()),
            })
        };
        let key = crate::journal::dedup::key_of(&[b"install"]);
        let first = journal.append(Box::new(record(1)), key, vec![], change("first"), false);
        assert_eq!(first.await.unwrap(), Appended::New(1));
        // In the log's entry with the event; the tables take it at the next flush (ingress
        // flushes after an append that stores an install, before anything reads it).
        journal.flush().await;
        assert_eq!(journal.oauth("m").unwrap().as_deref(), Some(b"first".as_slice()));
        let tokens = journal.learned_tokens().unwrap();
        assert_eq!(tokens.get("m").map(|t| t.expose().to_owned()), Some("app".into()));
        let again = journal.append(Box::new(record(1)), key, vec![], change("again"), false);
        assert_eq!(again.await.unwrap(), Appended::Duplicate(1));
        journal.flush().await;
        assert_eq!(journal.oauth("m").unwrap().as_deref(), Some(b"first".as_slice()));
        journal.finish().await;
        journal.close();
        drop(journal);
        writer.join().unwrap();
    }

    /// Events answered 200 that the tables never took (the writer ended first, as at a crash)
    /// come back from the write-ahead log at the next open, each process writes a segment of
    /// its own, and the segments behind the tables' checkpoint are reclaimed: the log does not
    /// grow with what it already handed on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_log_replays_what_the_tables_lacked_and_reclaims_what_they_hold() {
        let dir = tempfile::tempdir().unwrap();
        let p: Arc<str> = Arc::from("p");
        let config = JournalConfig::default();
        let segments = || -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(dir.path().join(wal::DIR))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".seg"))
                .collect();
            names.sort();
            names
        };
        let mut id = 0u64;
        for _ in 0..3 {
            let (journal, writer) =
                Embedded::open(dir.path(), &config, &["p".into()], true).unwrap();
            for _ in 0..5 {
                id += 1;
                let key = crate::journal::dedup::key_of(&[&id.to_le_bytes()]);
                let appended =
                    journal.append(Box::new(record(id)), key, vec![p.clone()], None, false);
                assert_eq!(appended.await.unwrap(), Appended::New(id));
            }
            // No flush, no close: what waits for the tables is dropped with the writer.
            drop(journal);
            writer.join().unwrap();
        }
        let (journal, writer) = Embedded::open(dir.path(), &config, &["p".into()], true).unwrap();
        // Replayed at the open (each earlier open replayed its predecessor's): the first two
        // segments are wholly behind the checkpoint and gone, the newest stays.
        assert_eq!(segments(), vec![format!("{:020}.seg", 11)]);
        let mut consumer = journal.consumer("p");
        let mut got = Vec::new();
        for _ in 0..15 {
            got.push(next(&mut consumer).await);
        }
        assert_eq!(got, (1..=15).collect::<Vec<_>>());
        end(journal, consumer, writer).await;
    }

    fn attempt(n: u32, outcome: &str) -> crate::journal::admin::Attempt {
        crate::journal::admin::Attempt {
            n,
            at_ms: now_ms(),
            duration_us: 7,
            outcome: outcome.into(),
            error: String::new(),
        }
    }

    async fn append_all(journal: &Embedded, ids: std::ops::RangeInclusive<u64>, p: &Arc<str>) {
        let appends = ids.map(|id| {
            let key = crate::journal::dedup::key_of(&[&id.to_le_bytes()]);
            journal.append(Box::new(record(id)), key, vec![p.clone()], None, false)
        });
        for appended in futures_util::future::join_all(appends).await {
            assert!(matches!(appended.unwrap(), Appended::New(_)));
        }
    }

    /// A consumer that keeps up takes new events from its tail (the log's thread's entries),
    /// those from before it started from the tables, each once and in order; outcomes of
    /// events the tables had not taken yet leave no pending row behind, and every attempt and
    /// completion is kept as if the rows had been written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_consumer_on_its_tail_gets_every_event_once_in_order_and_the_tables_the_same_outcomes()
     {
        let dir = tempfile::tempdir().unwrap();
        let p: Arc<str> = Arc::from("p");
        let config = JournalConfig::default();
        let (journal, writer) = Embedded::open(dir.path(), &config, &["p".into()], true).unwrap();
        append_all(&journal, 1..=20, &p).await;
        let mut consumer = journal.consumer("p");
        let reporter = consumer.reporter();
        let mut got = Vec::new();
        for round in 0..5u64 {
            if round > 0 {
                append_all(&journal, round * 20 + 1..=round * 20 + 20, &p).await;
            }
            for _ in 0..20 {
                let id = next(&mut consumer).await;
                reporter.attempt(id, attempt(1, "done"));
                reporter.complete(id);
                got.push(id);
            }
        }
        assert_eq!(got, (1..=100).collect::<Vec<_>>());
        journal.flush().await;
        let database = journal.slot.get().unwrap();
        assert_eq!(store::last_pending(&database, "p").unwrap(), None, "no pending row is left");
        for id in [1, 50, 100] {
            let kept = store::attempts(&database, id).unwrap();
            assert_eq!(kept["p"].len(), 1, "event {id}: {kept:?}");
            assert_eq!((kept["p"][0].n, kept["p"][0].outcome.as_str()), (1, "done"));
        }
        let txn = redb::ReadableDatabase::begin_read(&**database).unwrap();
        let completed = txn.open_table(store::COMPLETED).unwrap();
        assert_eq!(redb::ReadableTableMetadata::len(&completed).unwrap(), 100, "all complete");
        drop((txn, database));
        end(journal, consumer, writer).await;
    }

    /// A consumer that falls behind by more than its tail holds reads the tables again from
    /// where it was: nothing the tail dropped is lost, nothing comes twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tail_that_overflows_leaves_its_consumer_to_the_tables_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let p: Arc<str> = Arc::from("p");
        let (journal, writer, mut consumer) = opened(dir.path(), "p");
        append_all(&journal, 1..=3, &p).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(next(&mut consumer).await);
        }
        // On its tail now; this overflows it.
        let more = TAIL_MAX as u64 + 500;
        append_all(&journal, 4..=3 + more, &p).await;
        for _ in 0..more {
            got.push(next(&mut consumer).await);
        }
        assert_eq!(got, (1..=3 + more).collect::<Vec<_>>());
        end(journal, consumer, writer).await;
    }
}
