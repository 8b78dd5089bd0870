//! The tables' thread: it applies what the write-ahead log holds, and every other change, to
//! the tables in `journal.redb` (events, pending rows, dead letters, attempts, tokens), behind
//! the log and off the path of the 200s ([`super::writer`] writes the log).
//!
//! The log's thread hands over the entries it wrote (answered 200 already) and, in the order
//! they arrived, every other command. They are applied in one transaction without an fsync of
//! its own once [`APPLY_EVERY`] passed since the first of them arrived, [`APPLY_MAX`] are
//! waiting, or something needs the tables now (an operator's change, a read of the admin face,
//! a flush, tokens or state to store). Every [`CHECKPOINT_EVERY`] (and for those that need it,
//! and when the log asks because it holds [`CHECKPOINT_SEGMENTS`] segments) the transaction is
//! durable: a checkpoint, recording in `meta` `wal_applied` the highest log id the tables hold;
//! the log's thread then recycles the segments behind it. After a crash the tables are as of
//! the last checkpoint and `Embedded::open` replays the log above it. A lost outcome means a
//! redelivery, which at-least-once allows.
//!
//! A checkpoint (an fsync of the file, 5-15 ms under load) ran on the log's thread before, and
//! every request that arrived meanwhile waited for it: p99 of `bench/load.sh` with plugins.
//!
//! After a storage error (a full disk, a damaged page) redb refuses every later write, so this
//! thread closes and reopens the file, with back-off, and brings its tables up to the log
//! ([`recover::catch_up`]); until then the log's thread refuses every append (503: nothing
//! accepted) and `/readyz` says why. Appends the log already holds stay there.

use std::{
    collections::{HashMap, HashSet},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering, mpsc},
    time::{Duration, Instant},
};

use redb::Durability;
use tokio::sync::oneshot;

use super::{
    Shared, Slot, recover,
    retry::Retry,
    store::{self, db},
    wal::Entry,
    writer::{Command, Notice, Settings, fail_all},
};
use crate::journal::{StoreError, record::DeadLetter};

/// What the log's thread hands over.
pub enum Work {
    /// Entries the log holds now (answered 200), ids ascending.
    Entries(Vec<Entry>),
    /// Any other command, in the order it arrived.
    Command(Command),
}

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
pub const CHECKPOINT_SEGMENTS: usize = 3;
/// How often completed events are pruned when there is little to prune.
const PRUNE_EVERY: Duration = Duration::from_secs(10);
/// How often while a prune round found more than it may delete at once.
const PRUNE_AGAIN: Duration = Duration::from_millis(100);
/// The most events one prune round of its own deletes, so that appends never wait long behind it.
const PRUNE_BATCH: usize = 500;

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

/// What the tables' thread keeps from one round to the next.
struct Behind {
    /// What waits for the tables.
    waiting: Waiting,
    /// When the next checkpoint is due.
    checkpoint_at: Instant,
    /// Whether the tables changed since the last checkpoint.
    dirty: bool,
    /// Whether the last prune had more to delete than one round may.
    pruning: bool,
    /// Dead letters of a batch that could not be written, written again one at a time once the
    /// file is reopened: losing one would leave its event neither delivered nor a dead letter.
    unwritten: Vec<Burial>,
}

impl Behind {
    /// Applies what waits ([`apply_waiting`]); why the tables could not be written, if they
    /// could not.
    fn apply(&mut self, slot: &Slot, shared: &Shared, settings: &Settings) -> Result<(), String> {
        let more = apply_waiting(
            slot,
            &mut self.waiting,
            &mut self.checkpoint_at,
            &mut self.dirty,
            shared,
            settings,
            self.pruning,
            &mut self.unwritten,
        )?;
        if let Some(more) = more {
            self.pruning = more;
        }
        Ok(())
    }
}

/// The largest number of handovers taken at once.
const MAX_TAKE: usize = 4096;

/// Runs the tables' thread until the log's thread is gone (or a `Close` came), then commits
/// what came before, closes the file cleanly and answers the closers. `dir` is the log's folder
/// (read when the tables catch up with it after an error).
pub fn run(
    slot: Arc<Slot>,
    rx: mpsc::Receiver<Work>,
    settings: Settings,
    shared: Arc<Shared>,
    dir: PathBuf,
) {
    // Start from a tidy journal: what became prunable while the host was down goes now.
    if let Ok(database) = slot.get() {
        while settings.maintain && prune(&database, &settings) {}
    }
    let mut next_prune = Instant::now() + PRUNE_EVERY;
    let mut broken: Option<Retry> = None;
    let mut closers = Vec::new();
    let mut behind = Behind {
        waiting: Waiting::default(),
        checkpoint_at: Instant::now() + CHECKPOINT_EVERY,
        dirty: false,
        pruning: false,
        unwritten: Vec::new(),
    };
    // Entries up to this id are in the tables already: a catch-up after an error took them
    // from the log while their handover was still on its way.
    let mut taken_to = 0u64;
    let mut gone = false;
    while closers.is_empty() && !gone {
        let mut wake_at = broken.as_ref().map_or(next_prune, |b| b.at().min(next_prune));
        if broken.is_none()
            && let Some(due) = behind.waiting.due_at()
        {
            wake_at = wake_at.min(due);
        }
        if broken.is_none() && behind.dirty {
            wake_at = wake_at.min(behind.checkpoint_at);
        }
        let mut works = Vec::new();
        match rx.recv_timeout(wake_at.saturating_duration_since(Instant::now())) {
            Ok(work) => works.push(work),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => gone = true,
        }
        if let Some(b) = &mut broken
            && b.due()
        {
            // The log's thread writes nothing while the gate is held, and refuses appends
            // until `refuse(None)`: the log read now is all there is. What it handed over
            // before is in it.
            let gate = shared.gate.lock().unwrap_or_else(|p| p.into_inner());
            while let Ok(work) = rx.try_recv() {
                works.push(work);
            }
            // The file reopened, and the tables brought up to the log from the file's own
            // checkpoint (what was applied without an fsync may be gone with the error): only
            // then are events accepted again.
            let reopened = slot.reopen().and_then(|database| {
                let next_id = shared.next_id.load(Ordering::SeqCst);
                let caught = recover::catch_up(&dir, &database, next_id)?;
                Ok((database, caught))
            });
            match reopened {
                Ok((database, caught)) => {
                    // Every entry waiting is in the log, and the log is in the tables now.
                    behind.waiting.entries.clear();
                    if behind.waiting.commands.is_empty() {
                        behind.waiting.since = None;
                    }
                    taken_to = caught.applied;
                    shared.applied.store(caught.applied, Ordering::SeqCst);
                    shared.checkpointed.fetch_max(caught.applied, Ordering::SeqCst);
                    behind.dirty = false;
                    behind.checkpoint_at = Instant::now() + CHECKPOINT_EVERY;
                    for (plugin, id) in &caught.woken {
                        shared.appended(plugin, *id);
                        shared.wake(plugin);
                    }
                    shared.commit_result(None);
                    shared.refuse(None);
                    *shared.unopenable.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    broken = None;
                    tracing::info!(
                        taken = caught.taken,
                        "journal reopened after a storage error; the tables hold every event the \
                         write-ahead log holds; accepting events again"
                    );
                    bury_one_by_one(&database, std::mem::take(&mut behind.unwritten), &shared);
                    // The error may have been damage that hides rows from every scan.
                    shared.recheck();
                }
                Err(e) => {
                    if is_damage(&e) {
                        *shared.unopenable.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(e.to_string());
                    }
                    let backoff = b.again(e.to_string());
                    let said = say(b, &dir, &shared);
                    tracing::warn!(
                        retry_ms = backoff.as_millis() as u64,
                        "the journal still cannot be written: {said}"
                    );
                }
            }
            drop(gate);
        }
        if works.is_empty() {
            // Idle: what waits is applied when due, and changes applied without an fsync are
            // made durable by a checkpoint of their own (so that a crash long after the last
            // load redelivers nothing it need not).
            if broken.is_none()
                && (behind.waiting.due() || behind.dirty && Instant::now() >= behind.checkpoint_at)
            {
                if let Err(reason) = behind.apply(&slot, &shared, &settings) {
                    broken = Some(broken_by(reason, &dir, &shared));
                }
            } else if broken.is_none()
                && settings.maintain
                && Instant::now() >= next_prune
                && let Ok(database) = slot.get()
            {
                behind.pruning |= prune(&database, &settings);
                next_prune =
                    Instant::now() + if behind.pruning { PRUNE_AGAIN } else { PRUNE_EVERY };
            }
            continue;
        }
        while works.len() < MAX_TAKE {
            match rx.try_recv() {
                Ok(work) => works.push(work),
                Err(_) => break,
            }
        }
        for work in works {
            match work {
                Work::Entries(entries) => {
                    behind.waiting.entries.extend(entries.into_iter().filter(|e| e.id > taken_to));
                }
                Work::Command(Command::Close(reply)) => {
                    closers.push(reply);
                    behind.waiting.commands.push(Command::Flush(oneshot::channel().0));
                }
                Work::Command(command) => behind.waiting.commands.push(command),
            }
        }
        if !behind.waiting.is_empty() && behind.waiting.since.is_none() {
            behind.waiting.since = Some(Instant::now());
        }
        if let Some(b) = &broken {
            // Nothing reaches the tables until they are reopened: what needs an answer gets
            // the error now; the entries the log holds wait.
            let commands = std::mem::take(&mut behind.waiting.commands);
            behind.unwritten.extend(commands.iter().filter_map(Burial::of));
            let reason = format!("the journal cannot be written: {}", b.reason);
            fail_all(commands, &StoreError::Storage(reason));
            if behind.waiting.entries.is_empty() {
                behind.waiting.since = None;
            }
            continue;
        }
        if behind.waiting.due() {
            if let Err(reason) = behind.apply(&slot, &shared, &settings) {
                broken = Some(broken_by(reason, &dir, &shared));
                continue;
            }
        }
        // A round of its own (up to PRUNE_BATCH deletes in one transaction) holds up what
        // waits for the tables, so under load it only runs when the batches are not pruning
        // (a stream of outcomes alone, say), and at most every PRUNE_EVERY.
        if !behind.pruning
            && settings.maintain
            && Instant::now() >= next_prune
            && let Ok(database) = slot.get()
        {
            behind.pruning = prune(&database, &settings);
            next_prune = Instant::now() + PRUNE_EVERY;
        }
    }
    if !behind.waiting.is_empty() && broken.is_none() {
        // The log's thread is gone without a close: apply what it handed over (the log holds
        // it anyway).
        behind.waiting.commands.push(Command::Flush(oneshot::channel().0));
        let _ = behind.apply(&slot, &shared, &settings);
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

/// The ids the log holds above the tables' last durable checkpoint (first, last), if any:
/// events answered 200 that only the log keeps.
fn held(shared: &Shared) -> Option<(u64, u64)> {
    let checkpointed = shared.checkpointed.load(Ordering::SeqCst);
    let last = shared.next_id.load(Ordering::SeqCst).saturating_sub(1);
    (last > checkpointed).then_some((checkpointed + 1, last))
}

/// The log stops taking appends after a storage error of the tables; `/readyz` and every
/// refused append say why (and, when the log holds events the file's tables may lack, that
/// they are kept there), with an ERROR line for those.
fn broken_by(reason: String, dir: &Path, shared: &Shared) -> Retry {
    let broken = Retry::new(reason);
    let said = say(&broken, dir, shared);
    if held(shared).is_some() {
        tracing::error!("{said}");
    }
    tracing::warn!("the journal will be reopened after this storage error");
    broken
}

/// The hint every refusal of the tables ends with.
const VERIFY: &str = "the file may be damaged: check it with `b24-host journal verify`";

/// Why appends are refused, as `/readyz` says it; stored as the journal's write error.
fn say(broken: &Retry, dir: &Path, shared: &Shared) -> String {
    let said = match held(shared) {
        Some((from, to)) => format!(
            "{}; the events answered 200 with ids {from} to {to} are held in the write-ahead \
             log ({}) and the journal file has not taken them: they are kept there (a \
             restart replays them, `b24-host journal salvage --to NEW` copies them), and new \
             events get 503 until the file takes them. If this lasts, {VERIFY}",
            broken.reason,
            dir.display()
        ),
        None => format!("{} (retrying; if this lasts, {VERIFY})", broken.reason),
    };
    shared.commit_result(Some(said.clone()));
    shared.refuse(Some(broken.reason.clone()));
    said
}

/// Applies what waits to the tables in one transaction (a durable one when something needs
/// it or a checkpoint is due; then the log's segments behind it are recycled). `Ok(Some(more))`
/// says whether the prune had more to delete; `Err` is why the tables could not be written
/// (the entries stay waiting, the other commands got the error).
#[allow(clippy::too_many_arguments)]
fn apply_waiting(
    slot: &Slot,
    waiting: &mut Waiting,
    checkpoint_at: &mut Instant,
    dirty: &mut bool,
    shared: &Shared,
    settings: &Settings,
    pruning: bool,
    unwritten: &mut Vec<Burial>,
) -> Result<Option<bool>, String> {
    // The log asks for one when it holds CHECKPOINT_SEGMENTS segments.
    let checkpoint =
        Instant::now() >= *checkpoint_at || shared.want_checkpoint.load(Ordering::SeqCst);
    let next_id = shared.next_id.load(Ordering::SeqCst);
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
        shared.applied.fetch_max(id, Ordering::SeqCst);
    }
    *dirty = !durable;
    if durable {
        *checkpoint_at = Instant::now() + CHECKPOINT_EVERY;
        // The log's thread recycles the segments behind it.
        shared.want_checkpoint.store(false, Ordering::SeqCst);
        shared.checkpointed.fetch_max(shared.applied.load(Ordering::SeqCst), Ordering::SeqCst);
    }
    Ok(match (prune_budget, pruned) {
        (Some(budget), Some(done)) => Some(done >= budget),
        _ => None,
    })
}

/// One prune round; whether it had more to delete than one round may.
fn prune(database: &store::Store, settings: &Settings) -> bool {
    let result = store::guard("pruning the journal", || {
        let mut txn = db(database.begin_write())?;
        let _ = txn.set_durability(Durability::None);
        let now = crate::journal::now_ms();
        let pruned = store::prune(&txn, now, settings.keep_for_ms, settings.keep_max, PRUNE_BATCH)?;
        let firsts: Vec<u64> =
            database.writer.lock().unwrap_or_else(|p| p.into_inner()).files().collect();
        store::Tables::open(&txn)?.copy_forward(&database.files, &firsts, PRUNE_BATCH)?;
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
fn bury_one_by_one(database: &redb::Database, burials: Vec<Burial>, shared: &Shared) {
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
    database: &store::Store,
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
    let done = done_in_batch(entries, &batch);
    let mut attempted: HashSet<(u64, Arc<str>)> = HashSet::new();
    let mut files = database.writer.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(last) = entries.last() {
        match store::Tables::open(&txn) {
            Err(e) => {
                failure.get_or_insert(e);
            }
            Ok(tables) => {
                let mut tables = tables.with_files(&mut files);
                for entry in entries {
                    let result = if done.is_empty() {
                        insert_entry(&mut tables, entry)
                    } else {
                        let plugins: Vec<Arc<str>> = entry
                            .plugins
                            .iter()
                            .filter(|p| !done.contains(&(entry.id, (*p).clone())))
                            .cloned()
                            .collect();
                        insert_entry_for(&mut tables, entry, &plugins)
                    };
                    note(&mut failure, result);
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
            if result.is_ok() {
                durable = true;
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
                // An outcome of a pair whose row was never written: its first attempt is the
                // first row of its kind (the event is new in this transaction), and its
                // completion has nothing to remove.
                let fresh = match &command {
                    Command::Attempt(plugin, id, _) | Command::Complete(plugin, id) => {
                        done.contains(&(*id, plugin.clone()))
                    }
                    Command::Update(plugin, id, _) => done.contains(&(*id, plugin.clone())),
                    _ => false,
                };
                if fresh {
                    match command {
                        // A second attempt of the pair in this batch looks up the first.
                        Command::Attempt(plugin, id, attempt) => {
                            let result = if attempted.insert((id, plugin.clone())) {
                                tables.add_first_attempt(&plugin, id, &attempt)
                            } else {
                                tables.add_attempt(&plugin, id, &attempt)
                            };
                            note(&mut failure, result);
                        }
                        // Nothing to remove (and, for a retry state, nothing to update).
                        Command::Complete(..) | Command::Update(..) => {}
                        _ => unreachable!("matched above"),
                    }
                    continue;
                }
                apply(&mut tables, command, &mut replies, &mut failure);
            }
            if let Some(budget) = prune_budget {
                match tables.prune(now, settings.keep_for_ms, settings.keep_max, budget) {
                    Ok(n) => pruned = Some(n.deleted),
                    Err(e) => tracing::warn!("pruning the journal failed: {e}"),
                }
                let firsts: Vec<u64> = files.files().collect();
                match tables.copy_forward(&database.files, &firsts, budget) {
                    Ok(0) => {}
                    Ok(copied) => {
                        tracing::debug!(copied, "records copied out of an old event file")
                    }
                    Err(e) => {
                        tracing::warn!("copying records out of an old event file failed: {e}")
                    }
                }
            }
        }
    }
    if durable_flush(&replies) {
        durable = true;
    }
    // The records the new rows point at: readable once the rows are, durable before they are.
    if failure.is_none()
        && let Err(e) = if durable { files.sync() } else { files.flush() }
    {
        failure = Some(e);
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
                        // Told once committed: a consumer woken by a replay finds its row.
                        match &result {
                            Ok((touched, Notice::Skipped)) => {
                                for (plugin, id) in touched {
                                    shared.skipped(plugin, *id);
                                }
                            }
                            Ok((touched, Notice::Replayed)) => {
                                for (plugin, id) in touched {
                                    shared.replayed(plugin, *id);
                                }
                            }
                            _ => {}
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
    // Event files no durable row points into any more go.
    if durable && committed.is_ok() {
        store::remove_unpointed_files(database, &mut files);
    }
    drop(files);
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
    insert_entry_for(tables, entry, &entry.plugins)
}

/// [`insert_entry`] with pending rows for `plugins` only (the others finished it already).
fn insert_entry_for(
    tables: &mut store::Tables<'_>,
    entry: &Entry,
    plugins: &[Arc<str>],
) -> Result<(), StoreError> {
    tables.insert_sealed(entry.id, &entry.sealed, plugins, entry.offline_key)?;
    if let Some(change) = &entry.change {
        tables.change_portal(change)?;
    }
    if let Some(key) = &entry.offline_key {
        tables.remember_offline(key, entry.id)?;
    }
    Ok(())
}

/// The (event, plugin) pairs of `entries` that a `Complete` of the same `batch` finishes:
/// their pending rows need not be written only to be deleted in the same transaction (a
/// consumer on its tail delivers an event before the tables take it). Empty when the batch
/// holds an operator's change, which runs between the entries and the outcomes and may read
/// or change those rows.
fn done_in_batch(entries: &[Entry], batch: &[Command]) -> HashSet<(u64, Arc<str>)> {
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return HashSet::new();
    };
    if batch.iter().any(|c| matches!(c, Command::Admin { .. })) {
        return HashSet::new();
    }
    batch
        .iter()
        .filter_map(|c| match c {
            Command::Complete(plugin, id) if (first.id..=last.id).contains(id) => {
                Some((*id, plugin.clone()))
            }
            _ => None,
        })
        .collect()
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

fn note(failure: &mut Option<StoreError>, result: Result<(), StoreError>) {
    if let Err(e) = result {
        tracing::error!("cannot record a delivery outcome: {e}");
        failure.get_or_insert(e);
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

/// Whether a failure to open the file again is its damage (the storage library's panic, or
/// its own word for a file it cannot repair), not a passing one such as a full disk.
fn is_damage(e: &StoreError) -> bool {
    match e {
        StoreError::Damaged { .. } => true,
        StoreError::Db(message) => message.starts_with("DB corrupted"),
        _ => false,
    }
}
