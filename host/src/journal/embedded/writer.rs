//! The group-commit writer of the write-ahead log: one thread owns the log. Concurrent
//! requests' appends are gathered into one batch, written with one `pwrite` and made durable
//! with one `fdatasync` ([`super::wal`]); then their 200s go out. That is the only durable
//! write an append waits for.
//!
//! Every command but the plugins' outcomes reaches this thread first, so that the tables'
//! thread ([`super::apply`]), which gets the written entries and every other command from
//! here, sees them in the order they came: a flush or a read after a 200 finds its event. The
//! outcomes go to the tables' thread directly (`Embedded::report`); a batch is handed to the
//! tables before the consumers' tails get it, so an outcome comes after its event. This
//! thread never waits for the tables: it recycles the log's segments behind their durable
//! checkpoints, asks for a checkpoint when the log grows to [`CHECKPOINT_SEGMENTS`]
//! segments, and refuses appends (503) while the tables cannot be written (see
//! [`super::apply`]).

use std::{
    sync::{Arc, atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

use crate::journal::record::Sealed as _;
use redb::WriteTransaction;
use tokio::sync::oneshot;

use super::{
    Shared, Slot,
    apply::{CHECKPOINT_SEGMENTS, Work},
    retry::Retry,
    store,
    wal::{Entry, Wal},
    window::{self, Window},
};
use crate::journal::{
    Appended, PortalChange, StoreError,
    dedup::{self, DedupKey},
    record::{DeadLetter, EventRecord, Pending},
};

/// What the writer is asked to do.
pub enum Command {
    /// Journal a new event for `plugins`, unless it is a duplicate.
    Append {
        /// The record (boxed: it is most of the command's size).
        record: Box<EventRecord>,
        /// The plugins that will receive it.
        plugins: Vec<Arc<str>>,
        /// Its duplicate-suppression key.
        key: DedupKey,
        /// What it changes of its portal's state, in the same transaction.
        change: Option<PortalChange>,
        /// An offline row: its key is recognised for as long as its event is kept, not only
        /// within the duplicate window.
        permanent: bool,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Appended, StoreError>>,
    },
    /// A plugin finished an event.
    Complete(Arc<str>, u64),
    /// A plugin's attempt failed; keep its state.
    Update(Arc<str>, u64, Pending),
    /// A plugin gave up on an event.
    Bury(Arc<str>, u64, DeadLetter),
    /// A consumer found the event's rows damaged: a dead letter whatever state the pending row
    /// is in (see [`store::Tables::bury_damaged`]); the second id is the key the row was found
    /// under.
    BuryDamaged(Arc<str>, u64, u64, DeadLetter),
    /// One delivery attempt ended: kept for the console, in the outcomes' batch (no fsync
    /// of its own).
    Attempt(Arc<str>, u64, Box<crate::journal::admin::Attempt>),
    /// An operator's change, run inside the next transaction.
    Admin {
        /// The change.
        op: AdminOp,
        /// Where the outcome goes.
        reply: oneshot::Sender<Result<Vec<(String, u64)>, StoreError>>,
    },
    /// Make everything so far durable, then answer.
    Flush(oneshot::Sender<()>),
    /// Bring the tables up to everything so far (no fsync), then answer: a read of the admin
    /// face sees every event answered 200 before it.
    Apply(oneshot::Sender<()>),
    /// Commit what came before, close the file cleanly (so that it opens without redb's
    /// repair, and read-only for `journal verify`/`salvage`), then answer; later commands fail.
    Close(oneshot::Sender<()>),
    /// Store a portal's OAuth tokens (JSON) durably.
    SetOAuth(String, Vec<u8>, oneshot::Sender<Result<(), StoreError>>),
    /// Set or remove a named state value durably.
    SetState(String, Option<Vec<u8>>, oneshot::Sender<Result<(), StoreError>>),
}

/// An operator's change to the journal: (plugin, event id) pairs it touched come back, with
/// what the consumers must be told about them.
pub type AdminOp =
    Box<dyn FnOnce(&WriteTransaction) -> Result<(Vec<(String, u64)>, Notice), StoreError> + Send>;

/// What an operator's change means to the plugins' consumers and lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// Nothing (dead letters purged).
    Nothing,
    /// The rows are pending again (replayed): deliver them.
    Replayed,
    /// The rows were moved from pending to dead letters (skipped): stop delivering them, also
    /// when a lane already holds them (read ahead, or waiting out a back-off).
    Skipped,
}

/// The writer's settings.
#[derive(Clone)]
pub struct Settings {
    /// How long a batch waits for more commands after its first.
    pub window: Duration,
    /// Duplicate window in ms (0 = off).
    pub dedup_window_ms: i64,
    /// Completed events are kept this long (ms)...
    pub keep_for_ms: i64,
    /// ... and at most this many.
    pub keep_max: u64,
    /// Whether this writer keeps the journal tidy (loads the duplicate window, prunes). Off
    /// when a `journal` command opened the file of a stopped host: it only reads and runs
    /// operators' changes.
    pub maintain: bool,
}

/// The largest batch; beyond it a batch is written without waiting for its window.
const MAX_BATCH: usize = 4096;
/// How long the thread sleeps at most with nothing to do (the journal's mark is synced then).
const IDLE: Duration = Duration::from_secs(1);

/// Runs the log's writer until every sender is gone or a `Close` came; hands the entries it
/// wrote and every other command to the tables' thread (`tables`), and waits for that thread
/// (`tables_thread`) to end before it returns.
///
/// After a failed write (a full disk, say) the next appends are refused at once (503: nothing
/// accepted) until a new segment can be started, with back-off; `/readyz` says why.
#[allow(clippy::too_many_arguments)]
pub fn run(
    slot: Arc<Slot>,
    rx: mpsc::Receiver<Command>,
    settings: &Settings,
    shared: Arc<Shared>,
    mut mark: Option<super::mark::Mark>,
    mut wal: Wal,
    tables: mpsc::Sender<Work>,
    tables_thread: std::thread::JoinHandle<()>,
) {
    let mut next_id = shared.next_id.load(Ordering::SeqCst);
    let mut window = Window::new(settings.dedup_window_ms);
    if settings.maintain
        && window.enabled()
        && let Ok(database) = slot.get()
    {
        let since = crate::journal::now_ms() - settings.dedup_window_ms;
        if let Ok(recent) = store::guard("reading recent events", || {
            store::recent_events(&database, since, window::MAX_KEYS)
        }) {
            for (id, record) in recent.into_iter().rev() {
                if let Some(key) = dedup::from_hex(&record.meta.dedup_key) {
                    record_key(&mut window, &record, key, id, record.meta.received_at_ms);
                }
            }
        }
    }
    let mut stuck: Option<Retry> = None;
    // Offline rows' keys the log holds and the tables may not yet.
    let mut offline: Vec<(DedupKey, u64)> = Vec::new();
    let mut recycled = 0;
    loop {
        let wait =
            stuck.as_ref().map_or(IDLE, |s| s.at().saturating_duration_since(Instant::now()));
        let first = match rx.recv_timeout(wait) {
            Ok(command) => Some(command),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(mark) = &mut mark {
            mark.tick();
        }
        let checkpointed = shared.checkpointed.load(Ordering::SeqCst);
        if checkpointed > recycled {
            recycled = checkpointed;
            wal.recycle(checkpointed);
        }
        let applied = shared.applied.load(Ordering::SeqCst);
        offline.retain(|(_, id)| *id > applied);
        if let Some(s) = &mut stuck
            && s.due()
        {
            match wal.ensure_open(next_id) {
                Ok(()) => {
                    stuck = None;
                    shared.log_result(None);
                    tracing::info!(
                        "journal reopened after a storage error: the write-ahead log takes writes \
                         again, in a new segment; accepting events again"
                    );
                }
                Err(e) => {
                    let backoff = s.again(e.to_string());
                    shared.log_result(Some(format!("{} (retrying)", s.reason)));
                    tracing::warn!(
                        retry_ms = backoff.as_millis() as u64,
                        "the write-ahead log still cannot be written: {e}"
                    );
                }
            }
        }
        let Some(first) = first else { continue };
        let mut batch = vec![first];
        // Let concurrent appends gather: one sleep instead of a wake-up per arriving command.
        // A batch of outcomes alone does not wait: nobody is blocked on it.
        if stuck.is_none()
            && !settings.window.is_zero()
            && matches!(batch[0], Command::Append { .. })
        {
            std::thread::sleep(settings.window);
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(command) => batch.push(command),
                Err(_) => break,
            }
        }
        let (appends, others): (Vec<Command>, Vec<Command>) =
            batch.into_iter().partition(|c| matches!(c, Command::Append { .. }));
        if !appends.is_empty() {
            // The tables' thread holds the gate while it reads the log to catch up.
            let gate = shared.gate.lock().unwrap_or_else(|p| p.into_inner());
            let refused =
                stuck.as_ref().map(|s| s.reason.clone()).or_else(|| shared.refusal_of_tables());
            match refused {
                Some(reason) => {
                    let reason = format!("the journal cannot be written: {reason}");
                    fail_all(appends, &StoreError::Storage(reason));
                }
                None => {
                    let logged = log_appends(
                        &slot,
                        &mut wal,
                        appends,
                        &mut next_id,
                        &mut window,
                        &shared,
                        &mut offline,
                    );
                    match logged {
                        Ok((entries, _)) if entries.is_empty() => {}
                        Ok((entries, records)) => {
                            if let Some(mark) = &mut mark {
                                mark.note(next_id - 1);
                            }
                            let fed: Vec<(u64, Vec<Arc<str>>)> =
                                entries.iter().map(|e| (e.id, e.plugins.clone())).collect();
                            // The log holds them: if the tables' thread is gone (the host
                            // is ending), a restart replays them. Handed over before any
                            // consumer can take them, so that the outcomes, which go to the
                            // tables' thread directly, come after them.
                            let _ = tables.send(Work::Entries(entries));
                            // Consumers that keep up take them from their tails.
                            shared.feed_tails(&fed, &records);
                        }
                        Err(reason) => {
                            shared.log_result(Some(format!("{reason} (retrying)")));
                            tracing::warn!(
                                "the write-ahead log will be tried again after this storage error"
                            );
                            stuck = Some(Retry::new(reason));
                        }
                    }
                }
            }
            drop(gate);
        }
        let mut closing = false;
        for command in others {
            closing |= matches!(command, Command::Close(_));
            if let Err(mpsc::SendError(Work::Command(command))) =
                tables.send(Work::Command(command))
            {
                fail_all(vec![command], &StoreError::Closed);
            }
        }
        if wal.segments() >= CHECKPOINT_SEGMENTS {
            shared.want_checkpoint.store(true, Ordering::SeqCst);
        }
        if closing {
            break;
        }
    }
    if let Some(mark) = &mut mark {
        mark.sync();
    }
    // Later commands fail; the tables' thread applies what it was handed, closes the file and
    // answers the closers.
    drop(rx);
    drop(tables);
    let _ = tables_thread.join();
}

/// Journals a batch of appends: duplicates answered from the window, the rest numbered,
/// written to the log and fsynced, then answered 200; the entries written come back, for the
/// tables, with their records, for the consumers' tails. A write that fails answers them all
/// with the error (503) and returns why.
fn log_appends(
    slot: &Slot,
    wal: &mut Wal,
    appends: Vec<Command>,
    next_id: &mut u64,
    window: &mut Window,
    shared: &Shared,
    offline: &mut Vec<(DedupKey, u64)>,
) -> Result<(Vec<Entry>, Vec<Arc<EventRecord>>), String> {
    let now = crate::journal::now_ms();
    let mut entries: Vec<Entry> = Vec::with_capacity(appends.len());
    let mut records: Vec<Arc<EventRecord>> = Vec::with_capacity(appends.len());
    let mut replies = Vec::with_capacity(appends.len());
    for command in appends {
        let Command::Append { record, plugins, key, change, permanent, reply } = command else {
            continue;
        };
        if let Some(original) = window.check(&key, now) {
            let _ = reply.send(Ok(Appended::Duplicate(original)));
            continue;
        }
        if permanent {
            // An offline row's key: the log's entries the tables may not hold yet first.
            let logged = offline
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, id)| *id)
                .or_else(|| entries.iter().find(|e| e.offline_key == Some(key)).map(|e| e.id));
            let seen = match logged {
                Some(id) => Ok(Some(id)),
                None => slot.get().and_then(|database| {
                    store::guard("reading offline keys", || store::offline_seen(&database, &key))
                }),
            };
            match seen {
                Ok(Some(original)) => {
                    let _ = reply.send(Ok(Appended::Duplicate(original)));
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = reply.send(Err(StoreError::Storage(e.to_string())));
                    continue;
                }
            }
        }
        let id = *next_id;
        *next_id += 1;
        record_key(window, &record, key, id, now);
        entries.push(Entry {
            id,
            sealed: record.seal(id),
            plugins,
            change,
            offline_key: permanent.then_some(key),
        });
        records.push(Arc::from(record));
        replies.push((reply, id, key));
    }
    if entries.is_empty() {
        return Ok((entries, records));
    }
    let started = Instant::now();
    let written = wal.append(&entries);
    tracing::trace!(
        appends = entries.len(),
        sync_us = started.elapsed().as_micros() as u64,
        "journal log batch"
    );
    match written {
        Ok(()) => {
            // Handed out from now on (ids are never handed out twice): a consumer whose scan
            // begins after the tables take them must not take them for damage.
            shared.next_id.fetch_max(*next_id, std::sync::atomic::Ordering::SeqCst);
            for (reply, id, _) in replies {
                let _ = reply.send(Ok(Appended::New(id)));
            }
            offline.extend(entries.iter().filter_map(|e| Some((e.offline_key?, e.id))));
            Ok((entries, records))
        }
        Err(e) => {
            tracing::error!("cannot write to the journal: {e}; events get 503 meanwhile");
            shared.log_result(Some(e.to_string()));
            for (reply, _, key) in replies {
                window.remove(&key);
                let _ = reply.send(Err(StoreError::Storage(e.to_string())));
            }
            Err(e.to_string())
        }
    }
}

/// Records an accepted event's key in the duplicate window; a lifecycle event (install,
/// uninstall) also ends its portal's previous cycle there.
fn record_key(window: &mut Window, record: &EventRecord, key: DedupKey, id: u64, at: i64) {
    if dedup::is_lifecycle(&record.meta.code) {
        window.insert_lifecycle(&record.meta.member_id, key, id, at);
    } else {
        window.insert(key, id, at);
    }
}

pub(super) fn fail_all(batch: Vec<Command>, error: &StoreError) {
    for command in batch {
        match command {
            Command::Append { reply, .. } => {
                let _ = reply.send(Err(StoreError::Storage(error.to_string())));
            }
            Command::Admin { reply, .. } => {
                let _ = reply.send(Err(StoreError::Storage(error.to_string())));
            }
            Command::Flush(reply) | Command::Close(reply) | Command::Apply(reply) => {
                let _ = reply.send(());
            }
            Command::SetOAuth(_, _, reply) | Command::SetState(_, _, reply) => {
                let _ = reply.send(Err(StoreError::Storage(error.to_string())));
            }
            Command::Complete(..)
            | Command::Update(..)
            | Command::Bury(..)
            | Command::BuryDamaged(..)
            | Command::Attempt(..) => {}
        }
    }
}
