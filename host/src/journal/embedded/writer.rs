//! The group-commit writer: one thread owns every write to the journal. Concurrent requests'
//! appends, and the workers' outcomes, are gathered for up to the commit window and written in
//! one transaction; one fsync then makes a whole batch durable.
//!
//! Appends need durability before their 200, so a batch with an append commits with
//! `Durability::Immediate`. A batch of outcomes only commits with `Durability::None`: losing one
//! in a crash means a redelivery, which at-least-once allows, and the next durable commit
//! persists it anyway.

use std::{
    collections::HashMap,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use redb::{Database, Durability, WriteTransaction};
use tokio::sync::oneshot;

use super::{
    Shared, Slot,
    store::{self, db},
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

/// Runs the writer until every sender is gone.
///
/// After a storage error (a full disk, say) redb refuses every later write, so the writer
/// closes and reopens the file, with back-off, until a test write succeeds; meanwhile every
/// append is refused at once (503: nothing accepted) and `/readyz` says why.
pub fn run(
    slot: Arc<Slot>,
    rx: mpsc::Receiver<Command>,
    settings: Settings,
    shared: Arc<Shared>,
    mut mark: Option<super::mark::Mark>,
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
    while closers.is_empty() {
        let wake_at = broken.as_ref().map_or(next_prune, |b| b.retry_at.min(next_prune));
        let first = match rx.recv_timeout(wake_at.saturating_duration_since(Instant::now())) {
            Ok(command) => Some(command),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        if let Some(b) = &mut broken
            && Instant::now() >= b.retry_at
        {
            match slot.reopen() {
                Ok(database) => {
                    let stored = store::guard("reading the next id", || store::next_id(&database));
                    next_id = next_id.max(stored.unwrap_or(1));
                    shared.commit_result(None);
                    broken = None;
                    tracing::info!(
                        "journal reopened after a storage error; accepting events again"
                    );
                    bury_one_by_one(&database, std::mem::take(&mut unwritten), &shared);
                }
                Err(e) => {
                    b.backoff = (b.backoff * 2).min(REOPEN_MAX);
                    b.retry_at = Instant::now() + b.backoff;
                    b.reason = e.to_string();
                    shared.commit_result(Some(format!("{e} (retrying)")));
                    tracing::warn!(
                        retry_ms = b.backoff.as_millis() as u64,
                        "the journal still cannot be written: {e}"
                    );
                }
            }
        }
        if let Some(mark) = &mut mark {
            mark.tick();
        }
        let Some(first) = first else {
            if broken.is_none()
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
        let burials: Vec<Burial> = batch.iter().filter_map(Burial::of).collect();
        let database = match (&broken, slot.get()) {
            (None, Ok(database)) => database,
            (Some(b), _) => {
                let reason = format!("the journal cannot be written: {}", b.reason);
                fail_all(batch, &StoreError::Storage(reason));
                unwritten.extend(burials);
                continue;
            }
            (None, Err(e)) => {
                fail_all(batch, &e);
                unwritten.extend(burials);
                continue;
            }
        };
        let id_before = next_id;
        let appends = batch.iter().filter(|c| matches!(c, Command::Append { .. })).count();
        // Each batch that adds events (and each batch while a backlog to prune remains)
        // deletes up to about twice what it adds, in the same transaction: pruning keeps pace
        // with the load without pauses of its own. With nothing to prune this costs a few
        // look-ups.
        let prune_budget =
            (settings.maintain && (pruning || appends > 0)).then_some(2 * appends + 64);
        // A panic of the storage library (a damaged page) drops the batch's replies (their
        // callers get an error: 503, nothing claimed) and is handled as a storage error: the
        // file is reopened, and meanwhile `/readyz` says why.
        let written = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            write_batch(
                &database,
                batch,
                &mut next_id,
                &mut window,
                &shared,
                &settings,
                prune_budget,
            )
        }));
        let (pruned, failed) = written.unwrap_or_else(|payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            let error = StoreError::Damaged { what: "writing the journal", message };
            tracing::error!("{error}");
            shared.commit_result(Some(error.to_string()));
            (None, Some(error.to_string()))
        });
        drop(database);
        if let Some(reason) = failed {
            tracing::warn!("the journal will be reopened after this storage error");
            unwritten.extend(burials);
            broken = Some(Broken {
                retry_at: Instant::now() + REOPEN_FIRST,
                backoff: REOPEN_FIRST,
                reason,
            });
            continue;
        }
        if next_id != id_before
            && let Some(mark) = &mut mark
        {
            mark.note(next_id - 1);
        }
        shared.next_id.fetch_max(next_id, std::sync::atomic::Ordering::SeqCst);
        if let (Some(budget), Some(done)) = (prune_budget, pruned) {
            pruning = done >= budget;
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
    Append(oneshot::Sender<Result<Appended, StoreError>>, Result<Appended, ()>, Option<DedupKey>),
    Admin(
        oneshot::Sender<Result<Vec<(String, u64)>, StoreError>>,
        Result<(Vec<(String, u64)>, Notice), StoreError>,
    ),
    Flush(oneshot::Sender<()>),
    OAuth(oneshot::Sender<Result<(), StoreError>>),
}

/// Writes one batch in one transaction; with a `prune_budget`, also prunes up to that many
/// completed events and returns how many it pruned. The second value is why the batch could
/// not be written, if it could not (the file then needs reopening).
fn write_batch(
    database: &Database,
    batch: Vec<Command>,
    next_id: &mut u64,
    window: &mut Window,
    shared: &Shared,
    settings: &Settings,
    prune_budget: Option<usize>,
) -> (Option<usize>, Option<String>) {
    let mut pruned = None;
    let now = crate::journal::now_ms();
    let mut replies = Vec::with_capacity(batch.len());
    let mut durable = false;
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
            return (None, Some(error.to_string()));
        }
    };
    let mut failure: Option<StoreError> = None;
    // Operators' changes open tables themselves: run them before this batch's tables are open.
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
            let id_before = *next_id;
            for command in regular {
                apply(
                    &mut tables,
                    command,
                    now,
                    next_id,
                    window,
                    &mut woken,
                    &mut replies,
                    &mut failure,
                );
            }
            if *next_id != id_before {
                durable = true;
                note(&mut failure, tables.set_next_id(*next_id));
                // Handed out from now on, committed or not (ids are never handed out twice):
                // a consumer whose scan begins after this commit must not take them for damage.
                shared.next_id.fetch_max(*next_id, std::sync::atomic::Ordering::SeqCst);
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
        commands = replies.len(),
        durable,
        commit_us = commit_started.elapsed().as_micros() as u64,
        "journal batch"
    );
    for reply in replies {
        match reply {
            Reply::Append(tx, outcome, key) => {
                let result = match (&committed, outcome) {
                    (Ok(()), Ok(appended)) => Ok(appended),
                    (Ok(()), Err(())) | (Err(_), _) => {
                        if let Some(key) = key {
                            window.remove(&key);
                        }
                        Err(StoreError::Closed.or_storage(&committed))
                    }
                };
                let _ = tx.send(result);
            }
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
            Reply::Flush(tx) => {
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
    (pruned, committed.err().map(|e| e.to_string()))
}

/// Whether a reply waits on something that must be durable: a flush or stored tokens.
fn durable_flush(replies: &[Reply]) -> bool {
    replies.iter().any(|r| matches!(r, Reply::Flush(_) | Reply::OAuth(_)))
}

/// Applies one regular command to the batch's open tables.
#[allow(clippy::too_many_arguments)]
fn apply(
    tables: &mut store::Tables<'_>,
    command: Command,
    now: i64,
    next_id: &mut u64,
    window: &mut Window,
    woken: &mut HashMap<Arc<str>, u64>,
    replies: &mut Vec<Reply>,
    failure: &mut Option<StoreError>,
) {
    match command {
        Command::Append { record, plugins, key, change, permanent, reply } => {
            if let Some(original) = window.check(&key, now) {
                replies.push(Reply::Append(reply, Ok(Appended::Duplicate(original)), None));
                return;
            }
            if permanent {
                match tables.offline_seen(&key) {
                    Ok(Some(original)) => {
                        replies.push(Reply::Append(reply, Ok(Appended::Duplicate(original)), None));
                        return;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        failure.get_or_insert(e);
                        replies.push(Reply::Append(reply, Err(()), None));
                        return;
                    }
                }
            }
            let id = *next_id;
            let written = tables
                .insert_event(id, &record, &plugins)
                .and_then(|()| match &change {
                    Some(change) => tables.change_portal(change),
                    None => Ok(()),
                })
                .and_then(|()| if permanent { tables.remember_offline(&key, id) } else { Ok(()) });
            match written {
                Ok(()) => {
                    *next_id += 1;
                    record_key(window, &record, key, id, now);
                    for plugin in plugins {
                        woken.insert(plugin, id);
                    }
                    replies.push(Reply::Append(reply, Ok(Appended::New(id)), Some(key)));
                }
                Err(e) => {
                    tracing::error!("cannot journal an event: {e}");
                    failure.get_or_insert(e);
                    replies.push(Reply::Append(reply, Err(()), None));
                }
            }
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
            Command::Flush(reply) | Command::Close(reply) => {
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
