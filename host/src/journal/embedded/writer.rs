//! The group-commit writer: one thread owns every write to the journal. Concurrent requests'
//! appends are gathered into one batch, written to the write-ahead log with one `pwrite` and
//! made durable with one `fdatasync` ([`super::wal`]); then their 200s go out. That is the
//! only durable write an append waits for.
//!
//! The tables in `journal.redb` (events, pending rows, dead letters, attempts, tokens) follow
//! behind: the appends the log holds and the workers' outcomes are applied in one transaction
//! without an fsync of its own once [`APPLY_EVERY`] passed since the first of them arrived,
//! [`APPLY_MAX`] are waiting, or something needs the tables now (an operator's change, a read
//! of the admin face, a flush, tokens or state to store). Every [`CHECKPOINT_EVERY`] (and for
//! those that need it) the transaction is durable: a checkpoint, recording in `meta`
//! `wal_applied` the highest log id the tables hold; the log's segments behind it are recycled.
//! After a crash the tables are as of the last checkpoint and `Embedded::open` replays the
//! log above it. A lost outcome means a redelivery, which at-least-once allows.

use std::{
    collections::HashMap,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use crate::journal::record::Sealed as _;
use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use super::{
    Shared, Slot, recover,
    store::{self, db},
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

/// The largest batch; beyond it a batch commits without waiting for its window.
const MAX_BATCH: usize = 4096;
/// How long appends and outcomes may wait before the tables take them.
pub const APPLY_EVERY: Duration = Duration::from_millis(10);
/// How many appends and outcomes may wait before the tables take them.
const APPLY_MAX: usize = 4096;
/// How often the tables are made durable (a checkpoint) while they change. A checkpoint runs
/// on this thread, so the appends of its moment wait for it: a small one often (its cost grows
/// with what changed since the last) keeps that wait short (at 1 s, p99 of point (3) of
/// `bench/load.sh` was about 20 ms, at 200 ms under 10).
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);
/// A checkpoint is also made once the log has this many segments.
const CHECKPOINT_SEGMENTS: usize = 3;
/// How often completed events are pruned when there is little to prune.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often while a prune round found more than it may delete at once.
const PRUNE_AGAIN: Duration = Duration::from_millis(100);
/// The most events one prune round of its own deletes, so that appends never wait long behind it.
const PRUNE_BATCH: usize = 500;

/// The first wait before reopening the journal after a storage error; it doubles per failed
/// try up to [`REOPEN_MAX`].
const REOPEN_FIRST: Duration = Duration::from_millis(100);
/// The longest wait between tries to reopen the journal.
const REOPEN_MAX: Duration = Duration::from_secs(2);

/// The journal could not be written: when to try reopening it, and why.
struct Broken {
    retry_at: Instant,
    backoff: Duration,
    reason: String,
}

/// What waits for the tables: appends the log holds, and every other command.
#[derive(Default)]
struct Waiting {
    /// Entries in the log, not yet in the tables (kept until a transaction takes them).
    entries: Vec<Entry>,
    /// The other commands, in arrival order.
    commands: Vec<Command>,
    /// When the first of them arrived.
    since: Option<Instant>,
}

impl Waiting {
    fn is_empty(&self) -> bool {
        self.entries.is_empty() && self.commands.is_empty()
    }

    /// Whether the tables should take what waits now.
    fn due(&self) -> bool {
        !self.is_empty()
            && (self.entries.len() + self.commands.len() >= APPLY_MAX
                || self.since.is_some_and(|t| t.elapsed() >= APPLY_EVERY)
                || self.commands.iter().any(|c| {
                    matches!(
                        c,
                        Command::Admin { .. }
                            | Command::Flush(_)
                            | Command::Apply(_)
                            | Command::Close(_)
                            | Command::SetOAuth(..)
                            | Command::SetState(..)
                    )
                }))
    }

    /// When what waits becomes due by age.
    fn due_at(&self) -> Option<Instant> {
        self.since.map(|t| t + APPLY_EVERY)
    }
}

/// Runs the writer until every sender is gone.
///
/// After a storage error (a full disk, say) redb refuses every later write, so the writer
/// closes and reopens the file and starts a new log segment, with back-off, until a test
/// write succeeds; meanwhile every append is refused at once (503: nothing accepted) and
/// `/readyz` says why. Appends the log already holds stay waiting for the tables.
pub fn run(
    slot: Arc<Slot>,
    rx: mpsc::Receiver<Command>,
    settings: Settings,
    shared: Arc<Shared>,
    mut mark: Option<super::mark::Mark>,
    mut wal: Wal,
) {
    let Ok(database) = slot.get() else { return };
    let mut next_id =
        store::guard("reading the next id", || store::next_id(&database)).unwrap_or(1);
    shared.next_id.store(next_id, std::sync::atomic::Ordering::SeqCst);
    let mut window = Window::new(settings.dedup_window_ms);
    if settings.maintain && window.enabled() {
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
    // Start from a tidy journal: what became prunable while the host was down goes now.
    while settings.maintain && prune(&database, &settings) {}
    drop(database);
    let mut pruning = false;
    let mut next_prune = Instant::now() + PRUNE_EVERY;
    let mut broken: Option<Broken> = None;
    // Dead letters of a batch that could not be written, written again one at a time once the
    // file is reopened: losing one would leave its event neither delivered nor a dead letter.
    let mut unwritten: Vec<Burial> = Vec::new();
    let mut closers = Vec::new();
    let mut waiting = Waiting::default();
    let mut checkpoint_at = Instant::now() + CHECKPOINT_EVERY;
    // Whether the tables changed since the last checkpoint.
    let mut dirty = false;
    while closers.is_empty() {
        let mut wake_at = broken.as_ref().map_or(next_prune, |b| b.retry_at.min(next_prune));
        if broken.is_none()
            && let Some(due) = waiting.due_at()
        {
            wake_at = wake_at.min(due);
        }
        if broken.is_none() && dirty {
            wake_at = wake_at.min(checkpoint_at);
        }
        let first = match rx.recv_timeout(wake_at.saturating_duration_since(Instant::now())) {
            Ok(command) => Some(command),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(b) = &mut broken
            && Instant::now() >= b.retry_at
        {
            // The file reopened, a new segment if a log write failed, and the tables brought
            // up to the log from the file's own checkpoint (what was applied without an fsync
            // may be gone with the error): only then are events accepted again.
            let reopened = slot.reopen().and_then(|database| {
                wal.ensure_open(next_id)?;
                let caught = recover::catch_up(wal.dir(), &database, next_id)?;
                Ok((database, caught))
            });
            match reopened {
                Ok((database, caught)) => {
                    let stored = store::guard("reading the next id", || store::next_id(&database));
                    next_id = next_id.max(stored.unwrap_or(1));
                    // Every entry waiting is in the log, and the log is in the tables now.
                    waiting.entries.clear();
                    if waiting.commands.is_empty() {
                        waiting.since = None;
                    }
                    shared.applied.store(caught.applied, std::sync::atomic::Ordering::SeqCst);
                    wal.recycle(caught.applied);
                    dirty = false;
                    checkpoint_at = Instant::now() + CHECKPOINT_EVERY;
                    for (plugin, id) in &caught.woken {
                        shared.appended(plugin, *id);
                        shared.wake(plugin);
                    }
                    shared.commit_result(None);
                    broken = None;
                    tracing::info!(
                        taken = caught.taken,
                        "journal reopened after a storage error; the tables hold every event the \
                         write-ahead log holds; accepting events again"
                    );
                    bury_one_by_one(&database, std::mem::take(&mut unwritten), &shared);
                }
                Err(e) => {
                    b.backoff = (b.backoff * 2).min(REOPEN_MAX);
                    b.retry_at = Instant::now() + b.backoff;
                    b.reason = e.to_string();
                    let said = b.say(&wal, &shared);
                    tracing::warn!(
                        retry_ms = b.backoff.as_millis() as u64,
                        "the journal still cannot be written: {said}"
                    );
                }
            }
        }
        if let Some(mark) = &mut mark {
            mark.tick();
        }
        let Some(first) = first else {
            // Idle: what waits is applied when due, and changes applied without an fsync are
            // made durable by a checkpoint of their own (so that a crash long after the last
            // load redelivers nothing it need not).
            if broken.is_none() && (waiting.due() || dirty && Instant::now() >= checkpoint_at) {
                let applied = apply_waiting(
                    &slot,
                    &mut waiting,
                    &mut wal,
                    &mut checkpoint_at,
                    &mut dirty,
                    next_id,
                    &shared,
                    &settings,
                    pruning,
                    &mut unwritten,
                );
                match applied {
                    Ok(Some(done)) => pruning = done,
                    Ok(None) => {}
                    Err(reason) => broken = Some(Broken::new(reason, &wal, &shared)),
                }
            } else if broken.is_none()
                && settings.maintain
                && Instant::now() >= next_prune
                && let Ok(database) = slot.get()
            {
                pruning |= prune(&database, &settings);
                next_prune = Instant::now() + if pruning { PRUNE_AGAIN } else { PRUNE_EVERY };
            }
            continue;
        };
        let mut batch = vec![first];
        // Let concurrent appends gather: one sleep instead of a wake-up per arriving command.
        // A batch of outcomes alone does not wait: nobody is blocked on it.
        if broken.is_none()
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
        let (close, rest): (Vec<Command>, Vec<Command>) =
            batch.into_iter().partition(|c| matches!(c, Command::Close(_)));
        let mut batch = rest;
        if !close.is_empty() {
            closers.extend(close.into_iter().filter_map(|c| match c {
                Command::Close(tx) => Some(tx),
                _ => None,
            }));
            batch.push(Command::Flush(oneshot::channel().0));
        }
        let (appends, others): (Vec<Command>, Vec<Command>) =
            batch.into_iter().partition(|c| matches!(c, Command::Append { .. }));
        if !appends.is_empty() {
            match &broken {
                Some(b) => {
                    let reason = format!("the journal cannot be written: {}", b.reason);
                    fail_all(appends, &StoreError::Storage(reason));
                }
                None => {
                    let id_before = next_id;
                    let logged = log_appends(
                        &slot,
                        &mut wal,
                        appends,
                        &mut next_id,
                        &mut window,
                        &shared,
                        &mut waiting,
                    );
                    if let Err(reason) = logged {
                        broken = Some(Broken::new(reason, &wal, &shared));
                    } else if next_id != id_before
                        && let Some(mark) = &mut mark
                    {
                        mark.note(next_id - 1);
                    }
                }
            }
        }
        if !others.is_empty() {
            waiting.commands.extend(others);
        }
        if !waiting.is_empty() && waiting.since.is_none() {
            waiting.since = Some(Instant::now());
        }
        if let Some(b) = &broken {
            // Nothing reaches the tables until they are reopened: what needs an answer gets
            // the error now; the entries the log holds wait.
            let commands = std::mem::take(&mut waiting.commands);
            unwritten.extend(commands.iter().filter_map(Burial::of));
            let reason = format!("the journal cannot be written: {}", b.reason);
            fail_all(commands, &StoreError::Storage(reason));
            if waiting.entries.is_empty() {
                waiting.since = None;
            }
            continue;
        }
        if waiting.due() {
            let applied = apply_waiting(
                &slot,
                &mut waiting,
                &mut wal,
                &mut checkpoint_at,
                &mut dirty,
                next_id,
                &shared,
                &settings,
                pruning,
                &mut unwritten,
            );
            match applied {
                Ok(Some(done)) => pruning = done,
                Ok(None) => {}
                Err(reason) => {
                    broken = Some(Broken::new(reason, &wal, &shared));
                    continue;
                }
            }
        }
        // A round of its own (up to PRUNE_BATCH deletes in one transaction) holds up the
        // requests waiting for the next batch, so under load it only runs when the batches are
        // not pruning (a stream of outcomes alone, say), and at most every PRUNE_EVERY.
        if !pruning
            && settings.maintain
            && Instant::now() >= next_prune
            && let Ok(database) = slot.get()
        {
            pruning = prune(&database, &settings);
            next_prune = Instant::now() + PRUNE_EVERY;
        }
    }
    if let Some(mark) = &mut mark {
        mark.sync();
    }
    // Make the last outcomes durable before the process ends, and close the file: once the
    // readers of the moment let go, redb marks it shut down cleanly.
    let last = slot.current.write().unwrap_or_else(|p| p.into_inner()).take();
    if let Some(database) = last {
        let _ = store::guard("closing the journal", || {
            if let Ok(txn) = database.begin_write() {
                let _ = txn.commit();
            }
            drop(database);
            Ok(())
        });
    }
    for tx in closers {
        let _ = tx.send(());
    }
}

impl Broken {
    /// The writer stops taking appends after a storage error; `/readyz` and every refused
    /// append say why (and, when the log holds events the file's tables may lack, that they
    /// are kept there), with an ERROR line for those.
    fn new(reason: String, wal: &Wal, shared: &Shared) -> Broken {
        let broken =
            Broken { retry_at: Instant::now() + REOPEN_FIRST, backoff: REOPEN_FIRST, reason };
        let said = broken.say(wal, shared);
        if wal.held().is_some() {
            tracing::error!("{said}");
        }
        tracing::warn!("the journal will be reopened after this storage error");
        broken
    }

    /// Why appends are refused, as `/readyz` says it; stored as the journal's write error.
    fn say(&self, wal: &Wal, shared: &Shared) -> String {
        let said = match wal.held() {
            Some((from, to)) => format!(
                "{}; the events answered 200 with ids {from} to {to} are held in the write-ahead \
                 log ({}) and the journal file has not taken them: they are kept there (a \
                 restart replays them, `b24-host journal salvage --to NEW` copies them), and new \
                 events get 503 until the file takes them. If this lasts, the file may be \
                 damaged: check it with `b24-host journal verify`",
                self.reason,
                wal.dir().display()
            ),
            None => format!("{} (retrying)", self.reason),
        };
        shared.commit_result(Some(said.clone()));
        said
    }
}

/// Journals a batch of appends: duplicates answered from the window, the rest numbered,
/// written to the log and fsynced, then answered 200 and left waiting for the tables. A write
/// that fails answers them all with the error (503) and returns why.
fn log_appends(
    slot: &Slot,
    wal: &mut Wal,
    appends: Vec<Command>,
    next_id: &mut u64,
    window: &mut Window,
    shared: &Shared,
    waiting: &mut Waiting,
) -> Result<(), String> {
    let now = crate::journal::now_ms();
    let mut entries = Vec::with_capacity(appends.len());
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
            // An offline row's key: the log's entries not yet in the tables first.
            let logged = waiting
                .entries
                .iter()
                .chain(entries.iter())
                .find(|e: &&Entry| e.offline_key == Some(key))
                .map(|e| e.id);
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
        replies.push((reply, id, key));
    }
    if entries.is_empty() {
        return Ok(());
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
            waiting.entries.extend(entries);
            Ok(())
        }
        Err(e) => {
            tracing::error!("cannot write to the journal: {e}; events get 503 meanwhile");
            shared.commit_result(Some(e.to_string()));
            for (reply, _, key) in replies {
                window.remove(&key);
                let _ = reply.send(Err(StoreError::Storage(e.to_string())));
            }
            Err(e.to_string())
        }
    }
}

/// Applies what waits to the tables in one transaction (a durable one when something needs
/// it or a checkpoint is due; then the log's segments behind it are recycled). `Ok(Some(more))`
/// says whether the prune had more to delete; `Err` is why the tables could not be written
/// (the entries stay waiting, the other commands got the error).
#[allow(clippy::too_many_arguments)]
fn apply_waiting(
    slot: &Slot,
    waiting: &mut Waiting,
    wal: &mut Wal,
    checkpoint_at: &mut Instant,
    dirty: &mut bool,
    next_id: u64,
    shared: &Shared,
    settings: &Settings,
    pruning: bool,
    unwritten: &mut Vec<Burial>,
) -> Result<Option<bool>, String> {
    let checkpoint = Instant::now() >= *checkpoint_at || wal.segments() >= CHECKPOINT_SEGMENTS;
    let mut commands = std::mem::take(&mut waiting.commands);
    if waiting.entries.is_empty() {
        // A read waits for the appends the tables have not taken; with none, it waits for
        // nothing, and no transaction is written for it (on a damaged file every write risks
        // more).
        commands = commands
            .into_iter()
            .filter_map(|c| match c {
                Command::Apply(reply) => {
                    let _ = reply.send(());
                    None
                }
                other => Some(other),
            })
            .collect();
    }
    if commands.is_empty() && waiting.entries.is_empty() && !(*dirty && checkpoint) {
        waiting.since = None;
        return Ok(None);
    }
    let burials: Vec<Burial> = commands.iter().filter_map(Burial::of).collect();
    let database = match slot.get() {
        Ok(database) => database,
        Err(e) => {
            fail_all(commands, &e);
            unwritten.extend(burials);
            return Err(e.to_string());
        }
    };
    let applied_to = waiting.entries.last().map(|e| e.id);
    // Each batch that adds events (and each batch while a backlog to prune remains) deletes up
    // to about twice what it adds, in the same transaction: pruning keeps pace with the load
    // without pauses of its own. With nothing to prune this costs a few look-ups.
    let appends = waiting.entries.len();
    let prune_budget = (settings.maintain && (pruning || appends > 0)).then_some(2 * appends + 64);
    // A panic of the storage library (a damaged page) drops the batch's replies (their
    // callers get an error) and is handled as a storage error: the file is reopened, and
    // meanwhile `/readyz` says why.
    let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        write_batch(
            &database,
            &waiting.entries,
            commands,
            next_id,
            shared,
            settings,
            prune_budget,
            checkpoint,
        )
    }));
    let (pruned, failed, durable) = written.unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        let error = StoreError::Damaged { what: "writing the journal", message };
        tracing::error!("{error}");
        shared.commit_result(Some(error.to_string()));
        (None, Some(error.to_string()), false)
    });
    drop(database);
    if let Some(reason) = failed {
        unwritten.extend(burials);
        return Err(reason);
    }
    waiting.entries.clear();
    waiting.since = None;
    if let Some(id) = applied_to {
        shared.applied.fetch_max(id, std::sync::atomic::Ordering::SeqCst);
    }
    *dirty = !durable;
    if durable {
        *checkpoint_at = Instant::now() + CHECKPOINT_EVERY;
        wal.recycle(shared.applied.load(std::sync::atomic::Ordering::SeqCst));
    }
    Ok(match (prune_budget, pruned) {
        (Some(budget), Some(done)) => Some(done >= budget),
        _ => None,
    })
}

/// One prune round; whether it had more to delete than one round may.
fn prune(database: &Database, settings: &Settings) -> bool {
    let result = store::guard("pruning the journal", || {
        let mut txn = db(database.begin_write())?;
        let _ = txn.set_durability(Durability::None);
        let now = crate::journal::now_ms();
        let pruned = store::prune(&txn, now, settings.keep_for_ms, settings.keep_max, PRUNE_BATCH)?;
        db(txn.commit())?;
        Ok::<_, StoreError>(pruned.deleted)
    });
    match result {
        Ok(0) => false,
        Ok(n) => {
            tracing::debug!(pruned = n, "pruned completed events");
            n >= PRUNE_BATCH
        }
        Err(e) => {
            tracing::warn!("pruning the journal failed: {e}");
            false
        }
    }
}

/// A dead letter a batch was to write: kept apart so that it is not lost with the batch.
struct Burial {
    plugin: Arc<str>,
    id: u64,
    stored_under: Option<u64>,
    letter: DeadLetter,
}

impl Burial {
    fn of(command: &Command) -> Option<Burial> {
        match command {
            Command::Bury(plugin, id, letter) => Some(Burial {
                plugin: plugin.clone(),
                id: *id,
                stored_under: None,
                letter: letter.clone(),
            }),
            Command::BuryDamaged(plugin, id, under, letter) => Some(Burial {
                plugin: plugin.clone(),
                id: *id,
                stored_under: Some(*under),
                letter: letter.clone(),
            }),
            _ => None,
        }
    }
}

/// Writes the dead letters of a batch that failed, each in a transaction of its own; one
/// whose pending row cannot be removed (its page is damaged) is written as a letter alone. One
/// that cannot be written at all leaves its event undeliverable and unaccounted: the plugin is
/// marked so (`/readyz` names it).
fn bury_one_by_one(database: &Database, burials: Vec<Burial>, shared: &Shared) {
    for burial in burials {
        let Burial { plugin, id, stored_under, letter } = &burial;
        let whole = store::guard("writing a dead letter", || {
            let txn = db(database.begin_write())?;
            {
                let mut tables = store::Tables::open(&txn)?;
                match stored_under {
                    None => tables.bury(plugin, *id, letter)?,
                    Some(under) => tables.bury_damaged(plugin, *id, *under, letter)?,
                }
            }
            db(txn.commit())
        });
        let Err(first) = whole else { continue };
        let alone = store::guard("writing a dead letter", || {
            let txn = db(database.begin_write())?;
            store::Tables::open(&txn)?.bury_letter_only(plugin, *id, letter)?;
            db(txn.commit())
        });
        match alone {
            Ok(()) => tracing::warn!(
                event_id = id,
                plugin = %plugin,
                "the dead letter is written, its pending row could not be removed: {first}"
            ),
            Err(e) => shared.note_damage(
                plugin,
                true,
                format!("event {id} could not be made a dead letter ({e})"),
            ),
        }
    }
}

/// A reply to send once the batch is committed.
enum Reply {
    Admin(
        oneshot::Sender<Result<Vec<(String, u64)>, StoreError>>,
        Result<(Vec<(String, u64)>, Notice), StoreError>,
    ),
    Flush(oneshot::Sender<()>),
    Applied(oneshot::Sender<()>),
    OAuth(oneshot::Sender<Result<(), StoreError>>),
}

/// Writes the log's waiting `entries` and a batch of other commands in one transaction,
/// durable when `checkpoint` or a command needs it; with a `prune_budget`, also prunes up to
/// that many completed events. Returns how many it pruned, why the batch could not be
/// written if it could not (the file then needs reopening), and whether it was durable.
#[allow(clippy::too_many_arguments)]
fn write_batch(
    database: &Database,
    entries: &[Entry],
    batch: Vec<Command>,
    next_id: u64,
    shared: &Shared,
    settings: &Settings,
    prune_budget: Option<usize>,
    checkpoint: bool,
) -> (Option<usize>, Option<String>, bool) {
    let mut pruned = None;
    let now = crate::journal::now_ms();
    let mut replies = Vec::with_capacity(batch.len());
    let mut durable = checkpoint;
    // Per plugin woken, the highest event id appended for it.
    let mut woken: HashMap<Arc<str>, u64> = HashMap::new();
    let txn = database.begin_write();
    let mut txn = match txn {
        Ok(txn) => txn,
        Err(e) => {
            let error = store::db_error(e);
            tracing::error!("cannot write to the journal: {error}; events get 503 meanwhile");
            shared.commit_result(Some(error.to_string()));
            fail_all(batch, &error);
            return (None, Some(error.to_string()), false);
        }
    };
    let mut failure: Option<StoreError> = None;
    if let Some(last) = entries.last() {
        match store::Tables::open(&txn) {
            Err(e) => {
                failure.get_or_insert(e);
            }
            Ok(mut tables) => {
                for entry in entries {
                    note(&mut failure, insert_entry(&mut tables, entry));
                    for plugin in &entry.plugins {
                        woken.insert(plugin.clone(), entry.id);
                    }
                }
                note(&mut failure, tables.set_next_id(next_id));
                note(&mut failure, tables.set_wal_applied(last.id));
            }
        }
    }
    // Operators' changes open tables themselves: run them while no tables are open.
    let (admin, regular): (Vec<Command>, Vec<Command>) =
        batch.into_iter().partition(|c| matches!(c, Command::Admin { .. }));
    for command in admin {
        if let Command::Admin { op, reply } = command {
            let result = op(&txn);
            if let Ok((touched, notice)) = &result {
                durable = true;
                if *notice == Notice::Replayed {
                    for (plugin, id) in touched {
                        shared.replayed(plugin, *id);
                    }
                }
            }
            replies.push(Reply::Admin(reply, result));
        }
    }
    match store::Tables::open(&txn) {
        Err(e) => {
            failure.get_or_insert(e);
            fail_all(regular, &StoreError::Storage("cannot open the journal's tables".into()));
        }
        Ok(mut tables) => {
            for command in regular {
                apply(&mut tables, command, &mut replies, &mut failure);
            }
            if let Some(budget) = prune_budget {
                match tables.prune(now, settings.keep_for_ms, settings.keep_max, budget) {
                    Ok(n) => pruned = Some(n.deleted),
                    Err(e) => tracing::warn!("pruning the journal failed: {e}"),
                }
            }
        }
    }
    if durable_flush(&replies) {
        durable = true;
    }
    if !durable {
        let _ = txn.set_durability(Durability::None);
    }
    let commit_started = Instant::now();
    let committed = match failure {
        Some(e) => {
            drop(txn);
            Err(e)
        }
        None => txn.commit().map_err(store::db_error),
    };
    if let Err(e) = &committed {
        tracing::error!("journal commit failed: {e}");
    }
    shared.commit_result(committed.as_ref().err().map(|e| e.to_string()));
    tracing::trace!(
        entries = entries.len(),
        commands = replies.len(),
        durable,
        commit_us = commit_started.elapsed().as_micros() as u64,
        "journal batch"
    );
    for reply in replies {
        match reply {
            Reply::Admin(tx, result) => {
                let result = match &committed {
                    Ok(()) => {
                        if let Ok((touched, Notice::Skipped)) = &result {
                            for (plugin, id) in touched {
                                shared.skipped(plugin, *id);
                            }
                        }
                        result.map(|(touched, _)| touched)
                    }
                    Err(_) => Err(StoreError::Closed.or_storage(&committed)),
                };
                let _ = tx.send(result);
            }
            Reply::Flush(tx) | Reply::Applied(tx) => {
                let _ = tx.send(());
            }
            Reply::OAuth(tx) => {
                let _ = tx.send(match &committed {
                    Ok(()) => Ok(()),
                    Err(e) => Err(StoreError::Storage(e.to_string())),
                });
            }
        }
    }
    if committed.is_ok() {
        for (plugin, id) in &woken {
            shared.appended(plugin, *id);
            shared.wake(plugin);
        }
    }
    (pruned, committed.err().map(|e| e.to_string()), durable)
}

/// Writes one entry of the log into the tables: the event, its pending rows, what it changes
/// of its portal's state and the offline key it carries.
pub(super) fn insert_entry(
    tables: &mut store::Tables<'_>,
    entry: &Entry,
) -> Result<(), StoreError> {
    tables.insert_sealed(entry.id, &entry.sealed, &entry.plugins)?;
    if let Some(change) = &entry.change {
        tables.change_portal(change)?;
    }
    if let Some(key) = &entry.offline_key {
        tables.remember_offline(key, entry.id)?;
    }
    Ok(())
}

/// Whether a reply waits on something that must be durable: a flush or stored tokens.
fn durable_flush(replies: &[Reply]) -> bool {
    replies.iter().any(|r| matches!(r, Reply::Flush(_) | Reply::OAuth(_)))
}

/// Applies one regular command to the batch's open tables.
fn apply(
    tables: &mut store::Tables<'_>,
    command: Command,
    replies: &mut Vec<Reply>,
    failure: &mut Option<StoreError>,
) {
    match command {
        Command::Append { reply, .. } => {
            let _ = reply.send(Err(StoreError::Storage("internal: append out of place".into())));
        }
        Command::Complete(plugin, id) => note(failure, tables.complete(&plugin, id)),
        Command::Update(plugin, id, state) => {
            note(failure, tables.set_pending(&plugin, id, &state))
        }
        Command::Bury(plugin, id, dead) => note(failure, tables.bury(&plugin, id, &dead)),
        Command::BuryDamaged(plugin, id, under, dead) => {
            note(failure, tables.bury_damaged(&plugin, id, under, &dead))
        }
        Command::Attempt(plugin, id, attempt) => {
            note(failure, tables.add_attempt(&plugin, id, &attempt))
        }
        Command::Flush(reply) => replies.push(Reply::Flush(reply)),
        Command::Apply(reply) => replies.push(Reply::Applied(reply)),
        Command::Close(reply) => replies.push(Reply::Flush(reply)),
        Command::SetState(name, value, reply) => {
            let result = tables.set_state(&name, value.as_deref());
            if let Err(e) = &result {
                failure.get_or_insert(StoreError::Storage(e.to_string()));
            }
            replies.push(Reply::OAuth(reply));
        }
        Command::SetOAuth(member, tokens, reply) => {
            let result = tables.set_oauth(&member, &tokens);
            if let Err(e) = &result {
                failure.get_or_insert(StoreError::Storage(e.to_string()));
            }
            replies.push(Reply::OAuth(reply));
        }
        Command::Admin { reply, .. } => {
            let _ =
                reply.send(Err(StoreError::Storage("internal: admin command out of place".into())));
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

fn note(failure: &mut Option<StoreError>, result: Result<(), StoreError>) {
    if let Err(e) = result {
        tracing::error!("cannot record a delivery outcome: {e}");
        failure.get_or_insert(e);
    }
}

fn fail_all(batch: Vec<Command>, error: &StoreError) {
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

impl StoreError {
    /// The commit's error as a reply, or this one when the commit itself went fine.
    fn or_storage(self, committed: &Result<(), StoreError>) -> StoreError {
        match committed {
            Err(e) => StoreError::Storage(e.to_string()),
            Ok(()) => self,
        }
    }
}
