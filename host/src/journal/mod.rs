//! The durable journal: the seam between accepting an event and delivering it.
//!
//! Ingress [`Journal::append`]s an event; the call returns only once the raw body, its metadata
//! and one pending row per subscribed plugin are on disk (group commit: concurrent appends
//! share one fsync). Each plugin's worker reads its own pending rows in id order through a
//! [`Consumer`] and reports each outcome back: done, failed (kept with its attempt count) or
//! given up (a dead letter). Nothing is lost on a crash or restart: on start every pending row
//! is delivered again.
//!
//! - [`record`]: what is stored.
//! - [`store`]: the redb tables and the reads and writes on them.
//! - [`writer`]: the group-commit thread.
//! - [`dedup`]: the duplicate window.
//! - [`admin`]: what the `journal` commands show and change.

pub mod admin;
pub mod dedup;
pub mod record;
pub mod store;
pub mod writer;

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc,
    },
};

use b24_plugin_api::Secret;
use bytes::Bytes;
use redb::Database;
use tokio::sync::{Notify, oneshot};

use crate::{
    config::JournalConfig,
    decode::{self, BodyFormat, Decoded},
};
pub use record::{DeadLetter, EventMeta, EventRecord, Pending, Source};
pub use store::{Selection, StoreError};
pub use writer::Appended;
use writer::Command;

/// The file name of the journal inside the state folder.
pub const FILE_NAME: &str = "journal.redb";

/// An accepted event as it travels to a plugin.
#[derive(Debug)]
pub struct Envelope {
    /// The journal's id for the event: stable across retries and restarts.
    pub id: u64,
    /// When the host accepted it, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The body exactly as received (for offline rows, the JSON payload built from the row).
    pub raw: Bytes,
    /// The decoded event.
    pub event: Decoded,
    /// Where it came from.
    pub source: Source,
    /// Further delivery facts for the plugins (offline rows: `message_id`, `user_id`).
    pub extra: Vec<(String, String)>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn record(
    raw: Bytes,
    format: BodyFormat,
    event: &Decoded,
    source: Source,
    key: &dedup::DedupKey,
    extra: Vec<(String, String)>,
) -> EventRecord {
    EventRecord {
        meta: EventMeta {
            received_at_ms: now_ms(),
            format: format.into(),
            source,
            code: event.code.clone(),
            member_id: event.auth.member_id.clone(),
            domain: event.auth.domain.clone(),
            dedup_key: dedup::hex(key),
            extra,
        },
        raw,
    }
}

/// Per-plugin wake-up signals, shared by the writer and the consumers.
#[derive(Default)]
pub struct Shared {
    last_error: Mutex<Option<String>>,
    plugins: std::sync::RwLock<HashMap<Arc<str>, Arc<Signal>>>,
    closed: AtomicBool,
    closing: Notify,
}

/// One plugin's wake-ups: new rows, dead letters put back into delivery, and pending events an
/// operator skipped (a lane may hold them already: it drops them at its next look).
#[derive(Default)]
struct Signal {
    notify: Notify,
    replayed: Mutex<VecDeque<u64>>,
    skipped: Mutex<std::collections::HashSet<u64>>,
}

impl Shared {
    /// Records how the last commit went.
    fn commit_result(&self, error: Option<String>) {
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = error;
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

/// The open database file, which the writer replaces when it reopens the file after a storage
/// error (redb refuses every write after an I/O error until the file is opened again).
/// Readers take a handle for the length of one read; while the file is being reopened, or
/// cannot be, reads fail too.
pub struct Slot {
    path: PathBuf,
    current: std::sync::RwLock<Option<Arc<Database>>>,
}

impl Slot {
    /// The open database.
    pub fn get(&self) -> Result<Arc<Database>, StoreError> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone().ok_or_else(|| {
            StoreError::Storage("the journal is being reopened after a storage error".into())
        })
    }

    /// Closes the file and opens it again. Waits (up to a second) for readers to let go of
    /// the old handle, whose file lock would refuse the new one.
    fn reopen(&self) -> Result<Arc<Database>, StoreError> {
        let old = self.current.write().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut old) = old {
            let started = std::time::Instant::now();
            loop {
                match Arc::try_unwrap(old) {
                    Ok(database) => {
                        drop(database);
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

/// The journal of a running host.
#[derive(Clone)]
pub struct Journal {
    slot: Arc<Slot>,
    commands: mpsc::Sender<Command>,
    shared: Arc<Shared>,
}

impl Journal {
    /// Opens the journal at `path` for the enabled `plugins` and starts its writer thread.
    pub fn open(
        path: &Path,
        config: &JournalConfig,
        plugins: &[String],
    ) -> Result<(Journal, std::thread::JoinHandle<()>), StoreError> {
        let database = Arc::new(store::open(path)?);
        let slot = Arc::new(Slot {
            path: path.to_owned(),
            current: std::sync::RwLock::new(Some(database)),
        });
        let shared = Arc::new(Shared {
            plugins: std::sync::RwLock::new(
                plugins.iter().map(|p| (Arc::from(p.as_str()), Arc::default())).collect(),
            ),
            ..Shared::default()
        });
        let (commands, rx) = mpsc::channel();
        let settings = writer::Settings {
            window: config.commit_window,
            dedup_window_ms: config.dedup_window.as_millis() as i64,
            keep_for_ms: config.keep_completed_for.as_millis() as i64,
            keep_max: config.keep_completed_events,
        };
        let thread = {
            let slot = slot.clone();
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("journal-writer".into())
                .spawn(move || writer::run(slot, rx, settings, shared))
                .map_err(|e| StoreError::Storage(format!("cannot start the writer thread: {e}")))?
        };
        Ok((Journal { slot, commands, shared }, thread))
    }

    /// Why the last journal commit failed, if it did (cleared by the next good one).
    pub fn last_write_error(&self) -> Option<String> {
        self.shared.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The database, for reads; an error while the writer reopens it after a storage error.
    pub fn database(&self) -> Result<Arc<Database>, StoreError> {
        self.slot.get()
    }

    /// Learned application tokens.
    pub fn learned_tokens(&self) -> Result<std::collections::BTreeMap<String, Secret>, StoreError> {
        store::learned_tokens(&*self.slot.get()?)
    }

    /// Journals `event` (received as `raw` in `format`) for `plugins`, with an optional token
    /// change, durably. Returns once it is on disk, or says it was a duplicate.
    pub async fn append(
        &self,
        raw: Bytes,
        format: BodyFormat,
        event: &Decoded,
        plugins: Vec<Arc<str>>,
        token: Option<(String, Option<Secret>)>,
    ) -> Result<Appended, StoreError> {
        let key = dedup::key(event);
        let record = Box::new(record(raw, format, event, Source::Online, &key, Vec::new()));
        let (reply, answer) = oneshot::channel();
        self.send(Command::Append { record, plugins, key, token, permanent: false, reply })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Journals a row pulled from a portal's offline queue (`raw` is its JSON payload), keyed by
    /// `row_key` (the row's message id and state): the same row pulled again after a crash is
    /// a duplicate however long ago the first pull was.
    pub async fn append_offline(
        &self,
        raw: Bytes,
        event: &Decoded,
        plugins: Vec<Arc<str>>,
        row_key: &str,
        extra: Vec<(String, String)>,
    ) -> Result<Appended, StoreError> {
        let key = dedup::key_of(&[b"offline", event.auth.member_id.as_bytes(), row_key.as_bytes()]);
        let record = Box::new(record(raw, BodyFormat::Json, event, Source::Offline, &key, extra));
        let (reply, answer) = oneshot::channel();
        self.send(Command::Append { record, plugins, key, token: None, permanent: true, reply })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs an operator's change in the writer's next transaction.
    pub async fn admin(&self, op: writer::AdminOp) -> Result<Vec<(String, u64)>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Admin { op, reply })?;
        answer.await.map_err(|_| StoreError::Closed)?
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
        store::state(&*self.slot.get()?, name)
    }

    /// A portal's stored OAuth tokens (JSON), if any.
    pub fn oauth(&self, member_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        store::oauth(&*self.slot.get()?, member_id)
    }

    /// Waits until everything reported so far is durable.
    pub async fn flush(&self) {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::Flush(reply)).is_ok() {
            let _ = answer.await;
        }
    }

    fn send(&self, command: Command) -> Result<(), StoreError> {
        self.commands.send(command).map_err(|_| StoreError::Closed)
    }

    /// The consumer of `plugin`'s pending events. One per plugin.
    pub fn consumer(&self, plugin: &str) -> Consumer {
        let name: Arc<str> = Arc::from(plugin);
        let signal = self.shared.signal_or_new(plugin);
        Consumer {
            journal: self.clone(),
            plugin: name,
            signal,
            cursor: 0,
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

/// One event for one plugin, as the journal holds it: [`Delivery::open`] decodes it. Decoding
/// is left to the plugin's delivery thread, off the async threads that serve HTTP.
#[derive(Debug)]
pub struct Delivery {
    /// The journal's id for the event.
    pub id: u64,
    /// The plugin's pending state of the event as read: attempts already made (before a
    /// restart, too), when the next one is due, crashes counted so far.
    pub pending: Pending,
    record: EventRecord,
}

impl Delivery {
    /// The event as plugins get it, with its pending state (attempts, next attempt time,
    /// crashes), or why it cannot be delivered (its journaled body no longer decodes: a dead
    /// letter).
    pub fn open(self) -> Result<(Envelope, Pending), DeadLetter> {
        let Delivery { id, pending, record } = self;
        match decode::decode(&record.raw, record.meta.format.into()) {
            Ok(event) => Ok((
                Envelope {
                    id,
                    received_at_ms: record.meta.received_at_ms,
                    raw: record.raw,
                    event,
                    source: record.meta.source,
                    extra: record.meta.extra,
                },
                pending,
            )),
            Err(e) => Err(DeadLetter {
                reason: format!("cannot decode the journaled body: {e}"),
                attempts: pending.attempts,
                at_ms: now_ms(),
            }),
        }
    }
}

/// How many pending rows a consumer reads at a time.
const SCAN_BATCH: usize = 256;

/// One plugin's view of the journal: its pending events in id order, then new ones as they
/// arrive, and dead letters put back by `journal replay`.
pub struct Consumer {
    journal: Journal,
    plugin: Arc<str>,
    signal: Arc<Signal>,
    cursor: u64,
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
            if let Err(e) = self.fill() {
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
    fn fill(&mut self) -> Result<(), StoreError> {
        let database = self.journal.slot.get()?;
        let replayed: Vec<u64> =
            self.signal.replayed.lock().unwrap_or_else(|p| p.into_inner()).drain(..).collect();
        for id in replayed {
            if id > self.cursor {
                continue; // The scan below reaches it anyway.
            }
            if let Some(record) = store::event(&database, id)? {
                self.push(id, Pending::default(), Some(record));
            }
        }
        let rows = store::scan_pending(&database, &self.plugin, self.cursor, SCAN_BATCH)?;
        for (id, pending, record) in rows {
            self.cursor = id;
            self.push(id, pending, record);
        }
        Ok(())
    }

    fn push(&mut self, id: u64, pending: Pending, record: Option<EventRecord>) {
        match record {
            Some(record) => self.buffer.push_back(Delivery { id, pending, record }),
            None => self.bury(
                id,
                DeadLetter {
                    reason: "the journal record is missing or damaged".into(),
                    attempts: pending.attempts,
                    at_ms: now_ms(),
                },
            ),
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

    fn bury(&self, id: u64, dead: DeadLetter) {
        self.reporter().bury(id, dead);
    }
}

/// Reports one plugin's outcomes to the journal.
#[derive(Clone)]
pub struct Reporter {
    journal: Journal,
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

    /// Whether an operator skipped event `id` (`journal skip`) since it was read: it is a dead
    /// letter now, so stop delivering it (a process-mode plugin stuck on it can be killed).
    pub fn is_skipped(&self, id: u64) -> bool {
        self.signal.skipped.lock().unwrap_or_else(|p| p.into_inner()).contains(&id)
    }

    /// [`Reporter::is_skipped`], and forgets it: for the lane that drops the event.
    pub fn take_skipped(&self, id: u64) -> bool {
        self.signal.skipped.lock().unwrap_or_else(|p| p.into_inner()).remove(&id)
    }

    /// The plugin finished event `id` (done or skipped).
    pub fn complete(&self, id: u64) {
        let _ = self.journal.send(Command::Complete(self.plugin.clone(), id));
    }

    /// An attempt failed; remember the attempt count and the next attempt's time.
    pub fn update(&self, id: u64, state: Pending) {
        let _ = self.journal.send(Command::Update(self.plugin.clone(), id, state));
    }

    /// The plugin gave up on event `id`.
    pub fn bury(&self, id: u64, dead: DeadLetter) {
        let _ = self.journal.send(Command::Bury(self.plugin.clone(), id, dead));
    }
}

impl Delivery {
    /// How the journaled body is encoded (a runner decodes it again on its side).
    pub fn format(&self) -> record::Format {
        self.record.meta.format
    }
}
