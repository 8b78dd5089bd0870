//! Delivery from the log: one durable pull consumer per plugin, its `Consumer`, `Reporter`
//! and `Stopper`, with the embedded backend's semantics (lanes retry in place and report
//! `update`; `complete`; `bury`; skips; `closed`).
//!
//! - **One host at a time pulls a plugin**: the pull task takes the lease `deliver.<plugin>`
//!   (`lease.rs`), renews it every [`RENEW`], and pulls only while holding it; on loss it stops
//!   pulling (what it already holds it still finishes). That is what keeps per-plugin order
//!   across hosts.
//! - **Handing over**: a host that stops (or whose plugin is disabled) stops pulling, keeps
//!   the lease while its lanes finish, then naks what it still holds in id order and releases
//!   the lease. A host taking the lease while the consumer has messages pending elsewhere waits
//!   one `ack_wait` (what the other host had pulled but not given back comes back then, before
//!   anything newer) and hands that many on in stream order (the server redelivers in the order
//!   the deliveries expired, not in stream order).
//! - **Held messages**: every pulled message addressed to the plugin is held (event id ->
//!   its acker) until the plugin's outcome; a background task extends each held message with
//!   `AckKind::Progress` every [`PROGRESS`], well inside the consumer's `ack_wait`
//!   (`setup::ACK_WAIT`, 5 s, shorter than the lease's 10 s): when a host dies, its held
//!   messages become redeliverable before another host can take the lease, and the server
//!   gives them out first.
//! - An event whose `B24-Plugins` does not name the plugin is acked at once, never yielded. A
//!   payload failing its checksum is never delivered: a dead letter with the reason, an ERROR
//!   line, the `damaged` count.
//! - `update` writes the plugin's `Pending` state to the bucket `S_pending`, key
//!   `<plugin>.<id>` (read back when the message comes again: `info.delivered > 1`);
//!   `complete` acks (and deletes a written state); `bury` stores the dead letter
//!   (`dead::bury`) and only then terminates the message; while that fails the message stays
//!   held and the dead letter is tried again.
//! - Skips (`journal skip`): the core subject `b24.S.skip.<plugin>` (an event id in decimal)
//!   and the keys `skip.<plugin>.<id>` of `S_pending`, loaded when the lease is taken. A
//!   skipped event is terminated when seen, or when its lane drops it (`take_skipped`).
//! - Replays come on `b24.S.replay.<plugin>.>` with `B24-Event-Id`: delivered under that id.
//! - A plugin's consumer is created (or updated) when its `Consumer` is made: a plugin enabled
//!   by a reload gets one before it pulls.
//! - The message stream yields errors while a consumer's leader is elected: logged, and the
//!   pull goes on.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, AckKind, consumer::PullConsumer, kv, message::Acker};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::{mpsc, watch};

use super::{
    append::PAYLOAD_KEY,
    connect::{Link, subject_token},
    dead,
    lease::{Lease, Leases},
    resequence::{Mark, Recent, Resequencer, Seen},
    setup,
};
use crate::journal::{
    Delivery, StoreError, checksum, now_ms,
    record::{self, DeadLetter, EventRecord, Pending},
};

/// How often the holder renews a plugin's delivery lease.
const RENEW: Duration = Duration::from_secs(3);

/// How often held messages are extended (`AckKind::Progress`).
const PROGRESS: Duration = Duration::from_secs(2);

/// Messages one pull request asks for.
const PULL_BATCH: usize = 256;

/// Messages whose fate this host remembers (`Recent`): enough for every message in flight
/// (`max_ack_pending` is 1024) many times over.
const RECENT: usize = 65_536;

/// How long delivery waits for lost deliveries to come back after a gap before going on
/// without them: a new consumer leader's election, their ack wait running out, and a pull
/// request lost with the old leader being sent again (async-nats does after its expiry + 5 s).
const GAP_WAIT: Duration = Duration::from_secs(30);

/// How long a disabled plugin's lanes may take to finish what they hold before it goes back.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How long a pull request waits on the server. Short: a dead host's pending request would
/// take new messages meant for the next holder (to be redelivered only after `ack_wait`, after
/// later ones: out of order); it must expire before the lease can pass to another host.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

fn storage(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("NATS delivery: cannot {what}: {e}"))
}

/// What the consumers share.
#[derive(Clone)]
pub(super) struct Shared {
    common: Arc<Common>,
}

struct Common {
    closed: watch::Sender<bool>,
    /// Outcome tasks (acks, states, dead letters) not finished yet: `finish` waits for them.
    outcomes: watch::Sender<usize>,
    /// Pull tasks running: `finish` waits for them to give back what they hold.
    pullers: watch::Sender<usize>,
    /// The host's lanes are done (`Journal::finish`): what is still held goes back.
    finished: watch::Sender<bool>,
    damaged: AtomicU64,
    /// `None` for a `journal` command.
    stream: Option<jetstream::stream::Stream>,
    pending: Option<kv::Store>,
    leases: Option<Leases>,
    runtime: tokio::runtime::Handle,
}

impl Shared {
    /// For a running host: the events stream and the bucket `setup.rs` made, and the leases.
    pub async fn open(
        link: &Link,
        replicas: usize,
        stream: jetstream::stream::Stream,
        pending: kv::Store,
    ) -> Result<Shared, StoreError> {
        let leases = Leases::open(link, replicas).await?;
        Ok(Shared::new(Some(stream), Some(pending), Some(leases)))
    }

    /// For a `journal` command: no consumers; the bucket if it exists (to read states).
    pub async fn for_command(link: &Link) -> Shared {
        let pending = link.js.get_key_value(setup::pending_bucket(link)).await.ok();
        Shared::new(None, pending, None)
    }

    fn new(
        stream: Option<jetstream::stream::Stream>,
        pending: Option<kv::Store>,
        leases: Option<Leases>,
    ) -> Shared {
        Shared {
            common: Arc::new(Common {
                closed: watch::Sender::new(false),
                outcomes: watch::Sender::new(0),
                pullers: watch::Sender::new(0),
                finished: watch::Sender::new(false),
                damaged: AtomicU64::new(0),
                stream,
                pending,
                leases,
                runtime: tokio::runtime::Handle::current(),
            }),
        }
    }

    /// Payloads found damaged since the host started (each a dead letter).
    pub fn damaged(&self) -> u64 {
        self.common.damaged.load(Ordering::Relaxed)
    }

    /// `plugin`'s stored retry state of event `id`, if one was written.
    pub async fn pending(
        &self,
        link: &Link,
        plugin: &str,
        id: u64,
    ) -> Result<Option<Pending>, StoreError> {
        let _ = link;
        let Some(store) = &self.common.pending else { return Ok(None) };
        read_state(store, plugin, id).await
    }

    pub fn close(&self) {
        self.common.closed.send_replace(true);
    }

    /// Waits (at most `limit`) for the outcomes reported so far to reach the connection.
    /// The lanes are done: the pull tasks give back what is still held, in id order, and
    /// release their leases; waits for that (and the outcomes) at most `limit`.
    pub async fn drain(&self, limit: Duration) {
        self.common.finished.send_replace(true);
        let mut outcomes = self.common.outcomes.subscribe();
        let mut pullers = self.common.pullers.subscribe();
        let _ = tokio::time::timeout(limit, async {
            let _ = pullers.wait_for(|n| *n == 0).await;
            let _ = outcomes.wait_for(|n| *n == 0).await;
        })
        .await;
    }

    /// Runs an outcome's task, counted for [`Shared::drain`].
    fn outcome(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.common.outcomes.send_modify(|n| *n += 1);
        let common = self.common.clone();
        self.common.runtime.spawn(async move {
            task.await;
            common.outcomes.send_modify(|n| *n -= 1);
        });
    }

    fn is_closed(&self) -> bool {
        *self.common.closed.borrow()
    }
}

/// The subject of `plugin`'s attempts on event `id`.
pub(super) fn attempts_subject(link: &Link, plugin: &str, id: u64) -> String {
    format!("b24.{}.attempts.{}.{id}", link.names.stream, subject_token(plugin))
}

fn state_key(plugin: &str, id: u64) -> String {
    format!("{}.{id}", subject_token(plugin))
}

fn skip_key(plugin: &str, id: u64) -> String {
    format!("skip.{}.{id}", subject_token(plugin))
}

async fn read_state(
    store: &kv::Store,
    plugin: &str,
    id: u64,
) -> Result<Option<Pending>, StoreError> {
    let value =
        store.get(state_key(plugin, id)).await.map_err(|e| storage("read a retry state", e))?;
    Ok(value.and_then(|v| record::unseal_row::<Pending>(plugin, id, &v).ok()))
}

/// A message held for the plugin's outcome.
struct Held {
    acker: Arc<Acker>,
    /// Its place in the stream (a replay's differs from its event id).
    sequence: u64,
    member: String,
    code: String,
    payload: Bytes,
    /// A retry state was written to `S_pending`.
    state_written: bool,
    /// Its dead letter is being stored.
    burying: bool,
    /// Handed to a lane (`Consumer::next`).
    yielded: bool,
}

/// One plugin's delivery state on this host.
struct Plugin {
    held: Mutex<HashMap<u64, Held>>,
    /// What this host did with the latest messages, by stream sequence.
    recent: Mutex<Recent>,
    skipped: Mutex<HashSet<u64>>,
    /// Buried before the message came (by the crash count at start): buried when it comes.
    doomed: Mutex<HashMap<u64, DeadLetter>>,
}

impl Default for Plugin {
    fn default() -> Plugin {
        Plugin {
            held: Mutex::default(),
            recent: Mutex::new(Recent::new(RECENT)),
            skipped: Mutex::default(),
            doomed: Mutex::default(),
        }
    }
}

impl Plugin {
    fn mark(&self, sequence: u64, mark: Mark) {
        lock(&self.recent).mark(sequence, mark);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One plugin's consumer.
pub struct Consumer {
    plugin: Arc<str>,
    stopped: Arc<watch::Sender<bool>>,
    rx: mpsc::UnboundedReceiver<Delivery>,
    reporter: Reporter,
}

impl Consumer {
    pub(super) fn new(link: Link, shared: &Shared, plugin: &str) -> Consumer {
        let (tx, rx) = mpsc::unbounded_channel();
        let stopped = Arc::new(watch::Sender::new(false));
        let state = Arc::new(Plugin::default());
        let reporter = Reporter {
            plugin: Arc::from(plugin),
            state: state.clone(),
            shared: shared.clone(),
            link: Arc::new(link.clone()),
        };
        if shared.common.stream.is_some() {
            let puller = Puller {
                link,
                shared: shared.clone(),
                plugin: plugin.to_owned(),
                state,
                tx,
                stopped: stopped.subscribe(),
            };
            shared.common.runtime.spawn(puller.clone().progress());
            shared.common.pullers.send_modify(|n| *n += 1);
            let common = shared.common.clone();
            shared.common.runtime.spawn(async move {
                puller.run().await;
                common.pullers.send_modify(|n| *n -= 1);
            });
        }
        Consumer { plugin: Arc::from(plugin), stopped, rx, reporter }
    }

    pub fn plugin(&self) -> &Arc<str> {
        &self.plugin
    }

    pub fn stopper(&self) -> Stopper {
        Stopper { stopped: self.stopped.clone() }
    }

    /// The next event to deliver; `None` once the journal is closed or the consumer stopped.
    pub async fn next(&mut self) -> Option<Delivery> {
        let mut closed = self.reporter.shared.common.closed.subscribe();
        let mut stopped = self.stopped.subscribe();
        if *closed.borrow() || *stopped.borrow() {
            return None;
        }
        let delivery = tokio::select! {
            delivery = self.rx.recv() => delivery,
            _ = closed.wait_for(|c| *c) => None,
            _ = stopped.wait_for(|s| *s) => None,
        }?;
        if let Some(held) = lock(&self.reporter.state.held).get_mut(&delivery.id) {
            held.yielded = true;
        }
        Some(delivery)
    }

    pub fn reporter(&self) -> Reporter {
        self.reporter.clone()
    }
}

/// Stops one consumer: its pull task gives the lease up; what it held goes to another host
/// (or this one, when the plugin is enabled again) after `ack_wait`.
#[derive(Clone)]
pub struct Stopper {
    stopped: Arc<watch::Sender<bool>>,
}

impl Stopper {
    pub fn stop(&self) {
        self.stopped.send_replace(true);
    }

    pub fn is_stopped(&self) -> bool {
        *self.stopped.borrow()
    }
}

/// The pull task of one plugin on this host.
#[derive(Clone)]
struct Puller {
    link: Link,
    shared: Shared,
    plugin: String,
    state: Arc<Plugin>,
    tx: mpsc::UnboundedSender<Delivery>,
    stopped: watch::Receiver<bool>,
}

impl Puller {
    fn done(&self) -> bool {
        self.shared.is_closed() || *self.stopped.borrow()
    }

    /// Resolves when the host closes or the consumer is stopped.
    async fn ended(&self) {
        let mut closed = self.shared.common.closed.subscribe();
        let mut stopped = self.stopped.clone();
        tokio::select! {
            _ = closed.wait_for(|c| *c) => {}
            _ = stopped.wait_for(|s| *s) => {}
        }
    }

    /// Keeps every held message alive (`AckKind::Progress`) while the consumer runs, and after
    /// it ended while the lanes still finish what they have.
    async fn progress(self) {
        let mut tick = tokio::time::interval(PROGRESS);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.done() && lock(&self.state.held).is_empty() {
                return;
            }
            let ackers: Vec<Arc<Acker>> =
                lock(&self.state.held).values().map(|h| h.acker.clone()).collect();
            for acker in ackers {
                if let Err(e) = acker.ack_with(AckKind::Progress).await {
                    tracing::debug!(plugin = %self.plugin, "cannot extend a held message: {e}");
                }
            }
        }
    }

    async fn run(self) {
        let (Some(stream), Some(leases)) =
            (self.shared.common.stream.clone(), self.shared.common.leases.clone())
        else {
            return;
        };
        let name = setup::consumer_name(&self.link, &self.plugin);
        // The consumer exists before anything is pulled (a plugin enabled by a reload).
        let consumer: PullConsumer = loop {
            let made = async {
                setup::ensure_consumer(&self.link, &stream, &self.plugin).await?;
                stream.get_consumer(&name).await.map_err(|e| storage("open the consumer", e))
            };
            match made.await {
                Ok(consumer) => break consumer,
                Err(e) => {
                    tracing::warn!(plugin = %self.plugin, "the plugin's NATS consumer is not ready: {e}; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = self.ended() => return,
                    }
                }
            }
        };
        let lease_name = format!("deliver.{}", subject_token(&self.plugin));
        while !self.done() {
            let lease = tokio::select! {
                taken = leases.acquire(&lease_name, Duration::from_secs(2)) => taken,
                () = self.ended() => return,
            };
            match lease {
                Ok(Some(lease)) => {
                    tracing::info!(plugin = %self.plugin, "this host delivers the plugin now (lease {lease_name} taken)");
                    let lease = self.pull(&consumer, lease).await;
                    if let Some(lease) = lease {
                        lease.release().await;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(plugin = %self.plugin, "cannot take the delivery lease: {e}");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        () = self.ended() => return,
                    }
                }
            }
        }
    }

    /// Pulls while the lease holds; the lease back if it is still ours.
    async fn pull(&self, consumer: &PullConsumer, mut lease: Lease) -> Option<Lease> {
        let skip_subject =
            format!("b24.{}.skip.{}", self.link.names.stream, subject_token(&self.plugin));
        let mut skips = match self.link.client.subscribe(skip_subject).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, "cannot listen for skips: {e}");
                None
            }
        };
        self.load_skips().await;
        let mut renew = tokio::time::interval(RENEW);
        renew.tick().await;
        // What another host had pulled and not acked when it died (or lost the lease): the
        // server redelivers it before anything new, but in the order the deliveries expired,
        // not in stream order. So the first that many messages are gathered and handled in
        // stream order (for at most two ack waits). Deliveries lost on the way later (a
        // consumer leader killed, a dropped pull) are put back in order the same way.
        let (takeover, last_delivery) = match consumer.get_info().await {
            Ok(info) => (
                info.num_ack_pending.saturating_sub(lock(&self.state.held).len()),
                Some(info.delivered.consumer_sequence),
            ),
            Err(e) => {
                tracing::debug!(plugin = %self.plugin, "cannot read the consumer's state: {e}");
                (0, None)
            }
        };
        let mut order = Resequencer::new(GAP_WAIT, last_delivery);
        if takeover > 0 {
            tracing::info!(plugin = %self.plugin, events = takeover, "taking over events another host had in flight");
            // Whatever that host had pulled and not given back (its client's buffer, or all of
            // it after a crash) comes back when its ack wait runs out: wait for that, so it
            // comes before anything newer.
            tokio::select! {
                () = tokio::time::sleep(setup::ACK_WAIT + Duration::from_millis(500)) => {}
                () = self.ended() => return Some(lease),
            }
        }
        let now = tokio::time::Instant::now();
        order.expect(takeover, now, now + 2 * setup::ACK_WAIT);
        let mut messages = None;
        loop {
            if messages.is_none() {
                match consumer
                    .stream()
                    .max_messages_per_batch(PULL_BATCH)
                    .expires(PULL_EXPIRES)
                    .messages()
                    .await
                {
                    Ok(m) => messages = Some(m),
                    Err(e) => {
                        tracing::warn!(plugin = %self.plugin, "cannot pull from the NATS log: {e}; retrying");
                    }
                }
            }
            let wake = order.wake_at();
            tokio::select! {
                () = self.ended() => return self.leave(lease).await,
                () = tokio::time::sleep_until(wake.unwrap_or_else(tokio::time::Instant::now)), if wake.is_some() => {
                    let ready = order.wake(tokio::time::Instant::now());
                    if !order.gathering() && !ready.is_empty() {
                        tracing::debug!(plugin = %self.plugin, events = ready.len(), "gathered events handed on in stream order");
                    }
                    for message in ready {
                        self.handle(message).await;
                    }
                }
                _ = renew.tick() => {
                    match lease.renew().await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(plugin = %self.plugin, "the delivery lease was lost; this host stops pulling the plugin");
                            return None;
                        }
                        Err(e) if lease.is_fresh() => {
                            tracing::debug!(plugin = %self.plugin, "cannot renew the delivery lease yet: {e}");
                        }
                        Err(e) => {
                            tracing::warn!(plugin = %self.plugin, "the delivery lease expired ({e}); this host stops pulling the plugin");
                            return None;
                        }
                    }
                }
                Some(skip) = async { match skips.as_mut() { Some(s) => s.next().await, None => std::future::pending().await } } => {
                    if let Some(id) = std::str::from_utf8(&skip.payload).ok().and_then(|s| s.trim().parse().ok()) {
                        self.skipped(id).await;
                    }
                }
                next = async { match messages.as_mut() { Some(m) => m.next().await, None => { tokio::time::sleep(Duration::from_secs(1)).await; None } } } => {
                    match next {
                        Some(Ok(message)) => {
                            let Some(seen) = self.seen(&message) else {
                                self.handle(message).await;
                                continue;
                            };
                            let (ready, lost) = order.push(seen, message, tokio::time::Instant::now());
                            if lost > 0 {
                                tracing::warn!(plugin = %self.plugin, lost, "deliveries from the NATS log never reached this host (a node or a connection failed on the way); later events wait until those come again, so the plugin keeps its order");
                            }
                            for message in ready {
                                self.handle(message).await;
                            }
                        }
                        Some(Err(e)) => {
                            // Leader elections, missed heartbeats: the stream goes on.
                            tracing::debug!(plugin = %self.plugin, "pulling from the NATS log: {e}");
                        }
                        None => messages = None,
                    }
                }
            }
        }
    }

    /// What the resequencer needs of a message; `None` without delivery info.
    fn seen(&self, message: &jetstream::Message) -> Option<Seen> {
        let info = message.info().ok()?;
        let returning = {
            let mut recent = lock(&self.state.recent);
            let returning = info.delivered > 1 && recent.get(info.stream_sequence).is_none();
            recent.mark(info.stream_sequence, Mark::Received);
            returning
        };
        Some(Seen {
            consumer_sequence: info.consumer_sequence,
            stream_sequence: info.stream_sequence,
            returning,
        })
    }

    /// The event id a message is delivered under, and whether it is a replay: the stream
    /// sequence, or a replay's `B24-Event-Id`.
    fn event_id(&self, message: &async_nats::Message, sequence: u64) -> (u64, bool) {
        let replay_prefix = format!("b24.{}.replay.", self.link.names.stream);
        if !message.subject.as_str().starts_with(&replay_prefix) {
            return (sequence, false);
        }
        let id = message
            .headers
            .as_ref()
            .and_then(|h| h.get("B24-Event-Id"))
            .and_then(|v| v.as_str().parse::<u64>().ok())
            .unwrap_or(sequence);
        (id, true)
    }

    /// The host stops or the plugin was disabled: pulling has stopped; the lease is kept
    /// (renewed) while the lanes finish what they have: until `Journal::finish` (the host's
    /// lanes are done), or for a disabled plugin until nothing is held or [`STOP_GRACE`]
    /// passed. Then what is still held goes back to the log (`Nak`, in id order, ahead of
    /// anything newer for the next holder, rather than after `ack_wait`) and the lease is
    /// released.
    async fn leave(&self, mut lease: Lease) -> Option<Lease> {
        let mut finished = self.shared.common.finished.subscribe();
        let started = tokio::time::Instant::now();
        let mut renew = tokio::time::interval(RENEW);
        renew.tick().await;
        loop {
            tokio::select! {
                true = async { finished.wait_for(|f| *f).await.is_ok() } => break,
                _ = renew.tick() => {
                    if !matches!(lease.renew().await, Ok(true)) && !lease.is_fresh() {
                        self.give_back().await;
                        return None;
                    }
                }
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    let empty = lock(&self.state.held).is_empty();
                    if empty || (!self.shared.is_closed() && started.elapsed() > STOP_GRACE) {
                        break;
                    }
                }
            }
        }
        self.give_back().await;
        Some(lease)
    }

    /// What is still held goes back to the log, in id order.
    async fn give_back(&self) {
        let mut held: Vec<(u64, Arc<Acker>)> = {
            let mut held = lock(&self.state.held);
            let back: Vec<u64> =
                held.iter().filter(|(_, h)| !h.burying).map(|(id, _)| *id).collect();
            back.into_iter().filter_map(|id| held.remove(&id).map(|h| (id, h.acker))).collect()
        };
        held.sort_by_key(|(id, _)| *id);
        // In order on one connection; the last one confirmed, so all are with the consumer's
        // leader before the lease is released and the next holder pulls.
        let last = held.pop();
        for (_, acker) in held {
            let _ = acker.ack_with(AckKind::Nak(None)).await;
        }
        if let Some((_, acker)) = last {
            if let Err(e) = acker.double_ack_with(AckKind::Nak(None)).await {
                tracing::debug!(plugin = %self.plugin, "giving back held events: {e}");
            }
        }
    }

    /// The `skip.<plugin>.*` keys: skips made while no host held the lease.
    async fn load_skips(&self) {
        let Some(store) = &self.shared.common.pending else { return };
        let prefix = format!("skip.{}.", subject_token(&self.plugin));
        let mut keys = match store.keys().await {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, "cannot read the skips: {e}");
                return;
            }
        };
        while let Some(key) = keys.next().await {
            if let Some(id) =
                key.ok().and_then(|k| k.strip_prefix(&prefix).and_then(|id| id.parse::<u64>().ok()))
            {
                lock(&self.state.skipped).insert(id);
            }
        }
    }

    /// An operator skipped event `id`: terminated when it comes, or dropped by the lane that
    /// holds it at its next look (`take_skipped`).
    async fn skipped(&self, id: u64) {
        lock(&self.state.skipped).insert(id);
    }

    async fn handle(&self, message: jetstream::Message) {
        let (sequence, delivered) = match message.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(e) => {
                tracing::warn!(plugin = %self.plugin, "a message without delivery info: {e}");
                return;
            }
        };
        let (message, acker) = message.split();
        if delivered > 1 {
            // Finished here already; the ack (or termination) was lost (a consumer leader
            // killed): say it again rather than deliver it again.
            let again = match lock(&self.state.recent).get(sequence) {
                Some(Mark::Acked) => Some(AckKind::Ack),
                Some(Mark::Terminated) => Some(AckKind::Term),
                _ => None,
            };
            if let Some(kind) = again {
                if let Err(e) = acker.ack_with(kind).await {
                    tracing::debug!(plugin = %self.plugin, "cannot acknowledge a finished event again: {e}");
                }
                return;
            }
        }
        let acker = Arc::new(acker);
        let header = |name: &str| {
            message.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned())
        };
        let (id, is_replay) = self.event_id(&message, sequence);
        let addressed = header("B24-Plugins")
            .is_some_and(|list| list.split(',').any(|p| p.trim() == self.plugin));
        if !addressed {
            self.state.mark(sequence, Mark::Acked);
            if let Err(e) = acker.ack().await {
                tracing::debug!(plugin = %self.plugin, "cannot ack an event for other plugins: {e}");
            }
            return;
        }
        if is_replay {
            lock(&self.state.skipped).remove(&id);
        }
        // member and code from the subject, for a dead letter of an unreadable payload.
        let tokens: Vec<&str> = message.subject.as_str().split('.').collect();
        let (member, code) = match tokens.len() {
            n if n >= 2 => (tokens[n - 2].to_owned(), tokens[n - 1].to_owned()),
            _ => ("_".to_owned(), "_".to_owned()),
        };
        if lock(&self.state.skipped).remove(&id) {
            // Already a dead letter (journal skip).
            self.state.mark(sequence, Mark::Terminated);
            let _ = acker.ack_with(AckKind::Term).await;
            self.forget_skip(id).await;
            return;
        }
        {
            let mut held = lock(&self.state.held);
            if let Some(old) = held.get_mut(&id) {
                // Redelivered while a lane still has it: keep it alive with the new acker.
                old.acker = acker;
                return;
            }
        }
        let payload = message.payload.clone();
        let record = checksum::unseal(PAYLOAD_KEY, &payload).ok().and_then(EventRecord::decode);
        let (member, code) = match &record {
            Some(r) => (r.meta.member_id.clone(), r.meta.code.clone()),
            None => (member, code),
        };
        let held = Held {
            acker,
            sequence,
            member,
            code,
            payload,
            state_written: false,
            burying: false,
            yielded: false,
        };
        let Some(record) = record else {
            let reason = "event damaged: the payload on the log fails its checksum".to_owned();
            tracing::error!(event_id = id, plugin = %self.plugin, "journal {reason}: the event is not delivered; it is a dead letter now");
            self.shared.common.damaged.fetch_add(1, Ordering::Relaxed);
            lock(&self.state.held).insert(id, held);
            self.reporter().bury(id, DeadLetter { reason, attempts: 0, at_ms: now_ms() });
            return;
        };
        let doomed = lock(&self.state.doomed).remove(&id);
        if let Some(dead) = doomed {
            lock(&self.state.held).insert(id, held);
            self.reporter().bury(id, dead);
            return;
        }
        let mut pending = Pending::default();
        let mut held = held;
        if delivered > 1 && !is_replay {
            if let Some(store) = &self.shared.common.pending {
                match read_state(store, &self.plugin, id).await {
                    Ok(Some(state)) => {
                        pending = state;
                        held.state_written = true;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(plugin = %self.plugin, event_id = id, "{e}"),
                }
            }
        }
        lock(&self.state.held).insert(id, held);
        if self.tx.send(Delivery { id, pending, record }).is_err() {
            // The consumer is gone: the message goes back after ack_wait.
            lock(&self.state.held).remove(&id);
        }
    }

    async fn forget_skip(&self, id: u64) {
        if let Some(store) = &self.shared.common.pending {
            let _ = store.delete(skip_key(&self.plugin, id)).await;
        }
    }

    fn reporter(&self) -> Reporter {
        Reporter {
            plugin: Arc::from(self.plugin.as_str()),
            state: self.state.clone(),
            shared: self.shared.clone(),
            link: Arc::new(self.link.clone()),
        }
    }
}

/// Reports one plugin's outcomes: acks on the log.
#[derive(Clone)]
pub struct Reporter {
    plugin: Arc<str>,
    state: Arc<Plugin>,
    shared: Shared,
    link: Arc<Link>,
}

impl Reporter {
    pub async fn closed(&self) {
        let mut closed = self.shared.common.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
    }

    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    pub fn is_skipped(&self, id: u64) -> bool {
        lock(&self.state.skipped).contains(&id)
    }

    /// [`Reporter::is_skipped`], and forgets it: the held message is terminated (its dead
    /// letter was stored by the skip).
    pub fn take_skipped(&self, id: u64) -> bool {
        if !lock(&self.state.skipped).remove(&id) {
            return false;
        }
        let held = lock(&self.state.held).remove(&id);
        if let Some(held) = &held {
            self.state.mark(held.sequence, Mark::Terminated);
        }
        let (store, key) = (self.shared.common.pending.clone(), skip_key(&self.plugin, id));
        self.shared.outcome(async move {
            if let Some(held) = held {
                let _ = held.acker.ack_with(AckKind::Term).await;
            }
            if let Some(store) = store {
                let _ = store.delete(key).await;
            }
        });
        true
    }

    pub fn complete(&self, id: u64) {
        let Some(held) = lock(&self.state.held).remove(&id) else { return };
        self.state.mark(held.sequence, Mark::Acked);
        let skipped = lock(&self.state.skipped).remove(&id);
        let store = self.shared.common.pending.clone();
        let plugin = self.plugin.clone();
        self.shared.outcome(async move {
            if let Err(e) = held.acker.ack().await {
                tracing::warn!(%plugin, event_id = id, "cannot ack a delivered event (it comes again): {e}");
            }
            if let Some(store) = store {
                if held.state_written {
                    let _ = store.delete(state_key(&plugin, id)).await;
                }
                if skipped {
                    let _ = store.delete(skip_key(&plugin, id)).await;
                }
            }
        });
    }

    pub fn update(&self, id: u64, state: Pending) {
        if let Some(held) = lock(&self.state.held).get_mut(&id) {
            held.state_written = true;
        }
        let Some(store) = self.shared.common.pending.clone() else { return };
        let plugin = self.plugin.clone();
        let value = Bytes::from(record::seal_row(&plugin, id, &state));
        self.shared.outcome(async move {
            if let Err(e) = store.put(state_key(&plugin, id), value).await {
                tracing::warn!(%plugin, event_id = id, "cannot store the retry state: {e}");
            }
        });
    }

    /// One attempt ended (console history): published to `b24.<S>.attempts.<plugin>.<id>`
    /// without waiting for the log's acknowledgement (history, not data: a lost one is a WARN
    /// line, never a held-up delivery). A first call that delivered is not recorded: nearly
    /// every event is one, each record is a replicated write (it doubled the cluster's CPU
    /// per event with two plugins), and an event every plugin finished leaves the log, so no
    /// page could show it; an event needing more calls has all of them recorded.
    pub fn attempt(&self, id: u64, attempt: crate::journal::admin::Attempt) {
        if attempt.n == 1 && matches!(attempt.outcome.as_str(), "done" | "skipped") {
            return;
        }
        let subject = attempts_subject(&self.link, &self.plugin, id);
        let payload = Bytes::from(record::to_json(&attempt));
        let client = self.link.client.clone();
        let plugin = self.plugin.clone();
        self.shared.outcome(async move {
            if let Err(e) = client.publish(subject, payload).await {
                tracing::warn!(%plugin, event_id = id, "cannot record a delivery attempt: {e}");
            }
        });
    }

    /// The plugin gave up on event `id`: its dead letter is stored, then the message
    /// terminated; until the dead letter is stored the message stays held (tried again with
    /// back-off). For an event not held here (a crash count at start), when it comes.
    pub fn bury(&self, id: u64, dead: DeadLetter) {
        let found = {
            let mut held = lock(&self.state.held);
            match held.get_mut(&id) {
                Some(h) if h.burying => return,
                Some(h) => {
                    h.burying = true;
                    Some((h.payload.clone(), h.member.clone(), h.code.clone()))
                }
                None => None,
            }
        };
        let Some((payload, member, code)) = found else {
            lock(&self.state.doomed).insert(id, dead);
            return;
        };
        let this = self.clone();
        self.shared.outcome(async move {
            let mut delay = Duration::from_millis(250);
            loop {
                match dead::bury(&this.link, &this.plugin, id, payload.clone(), &member, &code, &dead).await {
                    Ok(()) => break,
                    Err(e) => {
                        tracing::warn!(plugin = %this.plugin, event_id = id, "cannot store the dead letter yet: {e}; the event stays held");
                        if this.shared.is_closed() {
                            return;
                        }
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(30));
                    }
                }
            }
            let Some(held) = lock(&this.state.held).remove(&id) else { return };
            this.state.mark(held.sequence, Mark::Terminated);
            if let Err(e) = held.acker.ack_with(AckKind::Term).await {
                tracing::debug!(plugin = %this.plugin, event_id = id, "cannot terminate a buried event: {e}");
            }
            if held.state_written {
                if let Some(store) = &this.shared.common.pending {
                    let _ = store.delete(state_key(&this.plugin, id)).await;
                }
            }
        });
    }
}
