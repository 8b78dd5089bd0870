//! A plugin's delivery worker: takes the plugin's pending events from the journal in id
//! order and hands them to the plugin's own threads (its *lanes*: one, or `concurrency` for a
//! plugin that declares itself concurrent). A lane calls the plugin (directly, or through its
//! runner process: one code path either way, see `instance`), waits out the back-off between
//! attempts, and reports each outcome back: done, failed (kept, with exponential back-off and
//! jitter), crashed (the runner died: `crash::after_crash` counts it) or given up (dead letter).
//!
//! Lanes are long-lived threads fed through a short queue, so a plugin with a backlog is called
//! back to back: no thread wake-up per call, and the consumer reads ahead while the plugin works.
//! A watchdog task marks the plugin degraded while a call runs past its timeout, kills a
//! runner whose call runs past `kill_after_ms`, and kills (interrupts) a runner whose call's
//! event an operator skipped (`journal skip`): the lane is freed, the skipped event is not
//! tried again and counts no crash, the runner's other calls are made again, uncounted.

use std::{
    collections::VecDeque,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use b24_plugin_api::{ErrorKind, Outcome, PluginError};
use rand::Rng;
use tokio::{runtime::Handle, sync::mpsc};

use super::{
    crash::{self, CrashVerdict},
    inflight::Inflight,
    instance::{Instance, PluginStatus},
    pause::{self, Breaker},
};
use crate::{
    call::{CallError, Envelope},
    config::{MAX_WINDOW, PluginConfig, RetryConfig},
    journal::{Consumer, DeadLetter, Delivery, Pending, Reporter, Stopper, admin::Attempt, now_ms},
    metrics::{Metrics, PluginLabel},
    rest::{self, EventContext, context::LimitNote},
    route::Route,
    runner::BatchItem,
};

/// Deliveries read ahead of the lanes: enough to keep them busy, few enough that a reload or
/// a stop finds little queued.
const READ_AHEAD: usize = 32;

/// The most deliveries a lane sends its runner in one frame (at most what is read ahead
/// anyway).
const BATCH: usize = READ_AHEAD;

/// The outcome of a first attempt a batch already made: the result, how long it took, and until
/// when a Bitrix24 limit held the event's REST calls, if one did.
type Made = (Result<Outcome, CallError>, Duration, Option<i64>);

/// A delivery as read from the journal: its envelope (not decoded yet) and pending state.
fn open(delivery: Delivery) -> Opened {
    Opened { envelope: Envelope::new(delivery.id, delivery.record), pending: delivery.pending }
}

/// A delivery read from the journal, before its attempts.
struct Opened {
    envelope: Envelope,
    pending: Pending,
}

/// How often a lane waiting out a back-off checks whether its plugin was disabled.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// Everything a worker needs to deliver to one plugin. A reload swaps the instance, route and
/// settings in place; deliveries already running finish with what they started with.
pub struct Worker {
    /// The plugin's name.
    pub name: String,
    instance: Mutex<Arc<Instance>>,
    route: Mutex<Route>,
    config: Mutex<PluginConfig>,
    metrics: Arc<Metrics>,
    inflight: Arc<Inflight>,
    /// `pause_after_failures`: the plugin's failed calls in a row.
    breaker: Breaker,
}

fn locked<T: Clone>(m: &Mutex<T>) -> T {
    m.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// What a lane shares with the worker's watchdog: when its current call started.
#[derive(Default)]
struct Lane {
    /// The lane's number (a runner runs each host lane's calls on a lane of its own).
    index: usize,
    /// Microseconds since `Lanes::epoch` at which the running call started, plus one; 0 when
    /// the lane is idle.
    busy_since: AtomicU64,
    /// The event id of the call a runner is making for this lane (0: none), for the watchdog
    /// to see it skipped.
    event: AtomicU64,
}

/// A worker's lanes and what they need.
struct Lanes {
    epoch: Instant,
    lanes: Vec<Lane>,
    reporter: Reporter,
    stopper: Stopper,
    runtime: Handle,
}

impl Lanes {
    fn micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64 + 1
    }

    /// Whether deliveries should stop starting: the host is shutting down or the plugin was
    /// disabled. What is not delivered stays pending in the journal.
    fn stopping(&self) -> bool {
        self.reporter.is_closed() || self.stopper.is_stopped()
    }

    /// Sleeps for `wait` before an attempt at event `id`, or less if delivery stops (the host
    /// shuts down or the plugin is disabled) or an operator skips the event; whether it slept
    /// the whole time.
    fn sleep(&self, wait: Duration, id: u64) -> bool {
        let reporter = &self.reporter;
        let until = tokio::time::Instant::now() + wait;
        self.runtime.block_on(async {
            loop {
                if self.stopping() || reporter.is_skipped(id) {
                    return false;
                }
                let now = tokio::time::Instant::now();
                if now >= until {
                    return true;
                }
                tokio::select! {
                    () = tokio::time::sleep((until - now).min(STOP_CHECK)) => {}
                    () = reporter.closed() => return false,
                }
            }
        })
    }
}

impl Worker {
    /// A worker for `name`.
    pub fn new(
        name: String,
        instance: Arc<Instance>,
        route: Route,
        config: PluginConfig,
        metrics: Arc<Metrics>,
    ) -> Worker {
        Worker {
            breaker: Breaker::new(&name, metrics.clone()),
            name,
            instance: Mutex::new(instance),
            route: Mutex::new(route),
            config: Mutex::new(config),
            metrics,
            inflight: Arc::new(Inflight::off()),
        }
    }

    /// Records each call's event in `record` (an in-process plugin: see `inflight`).
    pub fn with_inflight(mut self, record: Arc<Inflight>) -> Worker {
        self.inflight = record;
        self
    }

    fn label(&self) -> PluginLabel {
        PluginLabel { plugin: self.name.clone() }
    }

    /// The live instance.
    pub fn instance(&self) -> Arc<Instance> {
        locked(&self.instance)
    }

    /// The plugin's route.
    pub fn route(&self) -> Route {
        locked(&self.route)
    }

    /// The plugin's host-side settings.
    pub fn config(&self) -> PluginConfig {
        locked(&self.config)
    }

    /// Swaps in a new instance (a reload); calls already running finish on the old one, which
    /// is shut down when the last of them ends.
    pub fn swap(&self, instance: Arc<Instance>, route: Route, config: PluginConfig) {
        *self.instance.lock().unwrap_or_else(|p| p.into_inner()) = instance;
        *self.route.lock().unwrap_or_else(|p| p.into_inner()) = route;
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }

    /// Delivers the plugin's events until the journal closes or the plugin is disabled; calls
    /// in flight then finish.
    pub async fn run(self: Arc<Self>, mut consumer: Consumer) {
        let config = self.config();
        let count = if self.instance().info().concurrent { config.concurrency.max(1) } else { 1 };
        let lanes = Arc::new(Lanes {
            epoch: Instant::now(),
            lanes: (0..count).map(|index| Lane { index, ..Lane::default() }).collect(),
            reporter: consumer.reporter(),
            stopper: consumer.stopper(),
            runtime: Handle::current(),
        });
        // An exec plugin's window may be larger than the usual read-ahead (and grow on a reload).
        let exec = self.instance().runner().is_some_and(|r| r.is_exec());
        let read_ahead = if exec { READ_AHEAD.max(MAX_WINDOW) } else { READ_AHEAD };
        let (queue, receiver) = mpsc::channel::<Delivery>(read_ahead);
        let receiver = Arc::new(Mutex::new(receiver));
        let mut finished = Vec::with_capacity(count);
        for index in 0..count {
            let (done, done_rx) = tokio::sync::oneshot::channel::<()>();
            let worker = self.clone();
            let lanes = lanes.clone();
            let receiver = receiver.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("plugin-{index}-{}", self.name))
                .spawn(move || {
                    worker.lane(&lanes, index, &receiver);
                    drop(done);
                });
            match spawned {
                Ok(_) => finished.push(done_rx),
                Err(e) => {
                    tracing::error!(plugin = %self.name, "cannot start a delivery thread: {e}")
                }
            }
        }
        if finished.is_empty() {
            return;
        }
        // Aborted with this task too (a shutdown past its grace aborts it): the watchdog holds
        // the lanes' journal handle, which the journal writer waits for at exit.
        let watchdog = AbortOnDrop(tokio::spawn(self.clone().watch(lanes.clone())));
        while let Some(delivery) = consumer.next().await {
            if queue.send(delivery).await.is_err() {
                break;
            }
        }
        drop(queue);
        for done in finished {
            let _ = done.await;
        }
        drop(watchdog);
    }

    /// One lane: takes deliveries from the queue until it closes. Through a runner, a lane
    /// that finds more deliveries already waiting sends up to [`BATCH`] of them in one frame
    /// (see [`Worker::deliver_batch`]); the ones a batch did not attempt come next, in order.
    fn lane(&self, lanes: &Arc<Lanes>, index: usize, receiver: &Mutex<mpsc::Receiver<Delivery>>) {
        // The runtime is this thread's context, as on tokio's own threads: an instance replaced
        // by a reload and dropped here is shut down on a blocking thread, not in this lane.
        let _runtime = lanes.runtime.enter();
        let mut ahead: VecDeque<Opened> = VecDeque::new();
        loop {
            // A paused plugin's lane starts nothing until it is resumed.
            pause::hold(&lanes.reporter, &lanes.runtime, || lanes.stopping());
            let first = match ahead.pop_front() {
                Some(opened) => opened,
                None => {
                    // Lanes take turns at the queue; the one holding the lock waits for the next
                    // event.
                    let next = receiver.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
                    let Some(delivery) = next else { return };
                    open(delivery)
                }
            };
            let limit = self.instance().runner().map(|r| r.batch_limit().unwrap_or(BATCH));
            if let Some(limit) = limit
                && self.batchable(&first, lanes)
            {
                let mut batch = vec![first];
                // Only what is already waiting: a batch never waits for more.
                while batch.len() < limit {
                    let next = match ahead.pop_front() {
                        Some(opened) => opened,
                        None => {
                            let Ok(mut queue) = receiver.try_lock() else { break };
                            let Ok(delivery) = queue.try_recv() else { break };
                            drop(queue);
                            open(delivery)
                        }
                    };
                    if !self.batchable(&next, lanes) {
                        ahead.push_front(next);
                        break;
                    }
                    batch.push(next);
                }
                if batch.len() > 1 {
                    for opened in self.deliver_batch(batch, lanes, index).into_iter().rev() {
                        ahead.push_front(opened);
                    }
                    continue;
                }
                let Some(first) = batch.pop() else { continue };
                self.deliver_opened(first, lanes, index, None);
                continue;
            }
            self.deliver_opened(first, lanes, index, None);
        }
    }

    /// Whether an event can go in a batch: due now, for this plugin, not skipped, not paused,
    /// and delivery goes on. Anything else takes the one-event path.
    fn batchable(&self, opened: &Opened, lanes: &Lanes) -> bool {
        opened.pending.next_at_ms <= now_ms()
            && !lanes.stopping()
            && !lanes.reporter.is_paused()
            && !lanes.reporter.is_skipped(opened.envelope.id)
            && self.wants(&opened.envelope)
            && self.instance().runner().is_none_or(|r| r.prepare(&opened.envelope).is_ok())
    }

    /// Whether the plugin's route takes the event, from its record's metadata; decoded only
    /// for a record journaled before the metadata named the field, when the route filters by
    /// entity or field.
    fn wants(&self, envelope: &Envelope) -> bool {
        let route = self.route();
        let meta = envelope.meta();
        match &meta.user_field {
            Some((entity, field)) => route.matches_parts(&meta.code, Some((entity, field))),
            None if route.filters_fields() && crate::decode::is_user_field_code(&meta.code) => {
                // A body that no longer decodes is the call's to reject (a dead letter).
                envelope.event().map_or(true, |event| route.matches(event))
            }
            None => route.matches_parts(&meta.code, None),
        }
    }

    /// Delivers one event in its span; `first` is the outcome of its first attempt when a
    /// batch made it.
    fn deliver_opened(&self, opened: Opened, lanes: &Lanes, index: usize, first: Option<Made>) {
        let Opened { envelope, pending } = opened;
        let span = tracing::info_span!(
            "deliver",
            plugin = %self.name,
            event_id = envelope.id,
            member_id = %envelope.meta().member_id,
            code = %envelope.meta().code,
        );
        let _entered = span.enter();
        self.deliver(&envelope, &pending, lanes, &lanes.lanes[index], first);
    }

    /// Sends `batch` (due now, in order) to the runner in one frame. Each answered event is
    /// then handled as a single delivery's first attempt would be: the Done/Skipped ones
    /// completed, the first that is not (retry, reject, panic, or the runner's death during
    /// it) delivered on from there as today, back-off and all, on this lane. What follows it
    /// was not attempted and is returned, in order, to be delivered next; so per-plugin order
    /// holds and a retrying event still holds back the later ones.
    fn deliver_batch(&self, batch: Vec<Opened>, lanes: &Arc<Lanes>, index: usize) -> Vec<Opened> {
        let lane = &lanes.lanes[index];
        let instance = self.instance();
        let Some(runner) = instance.runner() else { return batch };
        let config = self.config();
        let items: Vec<BatchItem<'_>> = batch
            .iter()
            .map(|o| BatchItem {
                envelope: &o.envelope,
                attempt: o.pending.attempts + 1,
                context: Arc::new(EventContext::of_record(&o.envelope.record)),
            })
            .collect();
        // What a Bitrix24 limit did to each event's REST calls, read once its call ended.
        let notes: Vec<LimitNote> = items.iter().map(|i| i.context.limit.clone()).collect();
        // Each call's end restarts the lane's clock: timeout and kill_after_ms stay per event;
        // and the lane's event is the next one.
        let watched = lanes.clone();
        let ids: Vec<u64> = batch.iter().map(|o| o.envelope.id).collect();
        let first = ids[0];
        let progress = Box::new(move |next: usize| {
            let lane = &watched.lanes[index];
            lane.event.store(ids.get(next).copied().unwrap_or(0), Ordering::Relaxed);
            lane.busy_since.store(watched.micros(), Ordering::Relaxed)
        });
        tracing::debug!(plugin = %self.name, events = items.len(), "calling the runner with a batch in one frame");
        let sent = || {
            lane.event.store(first, Ordering::Relaxed);
            lane.busy_since.store(lanes.micros(), Ordering::Relaxed)
        };
        let outcome = runner.call_batch(lane.index, &items, &|| lanes.stopping(), sent, progress);
        lane.busy_since.store(0, Ordering::Relaxed);
        lane.event.store(0, Ordering::Relaxed);
        drop(items);
        let longest = outcome
            .answered
            .iter()
            .map(|(_, took)| *took)
            .chain(outcome.end.as_ref().map(|(_, took)| *took))
            .max()
            .unwrap_or_default();
        if longest > config.timeout {
            self.degraded(&instance, "the call has ended");
        } else if instance.set_status(PluginStatus::Ready) == PluginStatus::Degraded {
            tracing::info!("plugin answers within its timeout again");
        }
        let mut batch = batch.into_iter().enumerate();
        let mut notes = notes.into_iter().map(|n| n.until());
        for (result, took) in outcome.answered {
            let Some((_, opened)) = batch.next() else { break };
            let held = notes.next().flatten();
            self.deliver_opened(
                opened,
                lanes,
                index,
                Some((result.map_err(CallError::Plugin), took, held)),
            );
        }
        if let Some((end, took)) = outcome.end
            && let Some((_, opened)) = batch.next()
        {
            let held = notes.next().flatten();
            self.deliver_opened(opened, lanes, index, Some((Err(end), took, held)));
        }
        // What follows was not attempted, except what an exec plugin's window already answered
        // Done or Skipped: those are finished (the plugin handled them), the rest come again.
        let mut later = outcome.later.into_iter().peekable();
        let mut again = Vec::new();
        for ((position, opened), held) in batch.zip(notes) {
            match later.next_if(|(at, _, _)| *at == position) {
                Some((_, outcome, took)) => {
                    self.deliver_opened(opened, lanes, index, Some((Ok(outcome), took, held)));
                }
                None => again.push(opened),
            }
        }
        again
    }

    /// Marks the plugin degraded while a call runs past its timeout (the call cannot be
    /// cancelled: its outcome still decides the event).
    async fn watch(self: Arc<Self>, lanes: Arc<Lanes>) {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let config = self.config();
            let now = lanes.micros();
            let longest = lanes
                .lanes
                .iter()
                .map(|lane| lane.busy_since.load(Ordering::Relaxed))
                .filter(|since| *since != 0)
                .map(|since| now.saturating_sub(since))
                .max()
                .unwrap_or(0);
            let instance = self.instance();
            if longest > config.timeout.as_micros() as u64 {
                self.degraded(&instance, "still waiting for it");
            }
            // A call whose event an operator skipped is of no use: its runner goes, uncounted.
            let skipped = lanes
                .lanes
                .iter()
                .map(|lane| lane.event.load(Ordering::Relaxed))
                .find(|id| *id != 0 && lanes.reporter.is_skipped(*id));
            if let (Some(runner), Some(id)) = (instance.runner(), skipped) {
                tracing::warn!(
                    plugin = %self.name,
                    event_id = id,
                    "an operator skipped the event a call is running for; killing its runner"
                );
                runner.interrupt(&format!("killed: event {id} was skipped by an operator"));
                continue;
            }
            // A process can be stopped where a thread cannot: past kill_after_ms, the runner goes.
            if let Some(runner) = instance.runner()
                && longest > config.kill_after.as_micros() as u64
            {
                tracing::error!(
                    plugin = %self.name,
                    kill_after_ms = config.kill_after.as_millis() as u64,
                    "plugin call ran past kill_after_ms; killing its runner"
                );
                runner.kill("killed: ran past kill_after_ms");
            }
        }
    }

    /// Marks the plugin degraded, saying so once.
    fn degraded(&self, instance: &Instance, now: &str) {
        if instance.set_status(PluginStatus::Degraded) == PluginStatus::Ready {
            tracing::warn!(
                plugin = %self.name,
                timeout_ms = self.config().timeout.as_millis() as u64,
                "plugin call exceeded its timeout; plugin marked degraded, {now}"
            );
        }
    }

    /// Delivers one event until it succeeds, is rejected, runs out of attempts, or delivery
    /// stops (then it stays pending for the next start). `first`: the outcome of its first
    /// attempt and how long it took, when a batch already made it.
    ///
    /// A retry asked for while a Bitrix24 limit refused one of the event's REST calls (the
    /// event's [`LimitNote`]) uses no attempt: the event is delivered again when the limit
    /// lifts, however long that is (a method blocked for its operating time: up to ten
    /// minutes), never given up for it.
    fn deliver(
        &self,
        envelope: &Envelope,
        pending: &Pending,
        lanes: &Lanes,
        lane: &Lane,
        mut first: Option<Made>,
    ) {
        let reporter = &lanes.reporter;
        let id = envelope.id;
        if first.is_none() && !self.wants(envelope) {
            reporter.complete(id);
            return;
        }
        let config = self.config();
        let retry = &config.retry;
        let mut attempt = pending.attempts;
        let mut due = pending.next_at_ms;
        let mut crashes = pending.crashes;
        // Attempts an http target could not be reached for (uncounted), for their back-off.
        let mut unreachable = 0u32;
        loop {
            let made = first.take();
            if made.is_none() {
                let wait = due - now_ms();
                if wait > 0 {
                    lanes.sleep(Duration::from_millis(wait as u64), id);
                }
                // A retry due while the plugin is paused waits for the resume.
                pause::hold(reporter, &lanes.runtime, || lanes.stopping());
                if lanes.stopping() {
                    return;
                }
                if reporter.take_skipped(id) {
                    tracing::warn!("skipped by an operator; left in the plugin's dead letters");
                    return;
                }
            }
            attempt += 1;
            // The in-flight record of an in-process plugin (off in process isolation).
            let _inflight = made.is_none().then(|| self.inflight.mark(id));
            let (result, elapsed, held) = match made {
                Some(made) => made,
                None => {
                    let context = Arc::new(EventContext::of_record(&envelope.record));
                    let note = context.limit.clone();
                    let started = Instant::now();
                    let result = self.call(envelope, attempt, context, &config, lanes, lane);
                    (result, started.elapsed(), note.until())
                }
            };
            let seconds = elapsed.as_secs_f64();
            let label = match &result {
                Ok(Outcome::Done) => "done",
                Ok(Outcome::Skipped) => "skipped",
                Err(CallError::Plugin(e)) => match e.kind {
                    ErrorKind::Retry => "retry",
                    ErrorKind::Reject => "reject",
                    ErrorKind::Panicked => "panicked",
                },
                Err(CallError::Retry { .. }) => "retry",
                Err(CallError::Crashed(_)) => "crashed",
                Err(CallError::Abandoned | CallError::Interrupted(_)) => "abandoned",
            };
            self.metrics.call(&self.name, label, seconds);
            self.breaker.after_call(
                config.pause_after_failures,
                &result,
                held,
                reporter,
                &lanes.runtime,
            );
            // For the console's history: when the call started and how long it took.
            let at_ms = now_ms() - elapsed.as_millis() as i64;
            let duration_us = elapsed.as_micros() as u64;
            // An operator skipped the event while its call ran (or its runner died): its call
            // is abandoned, no crash is counted, and it is not tried again.
            if matches!(result, Err(CallError::Crashed(_) | CallError::Interrupted(_)))
                && reporter.take_skipped(id)
            {
                tracing::warn!("skipped by an operator during its call; the call was abandoned");
                return;
            }
            // An http target's Retry-After, and whether the attempt counts.
            let mut earliest = None;
            let mut uncounted = false;
            let result = match result {
                Err(CallError::Retry { message, not_before_ms, counted }) => {
                    earliest = not_before_ms;
                    uncounted = !counted;
                    Err(PluginError { kind: ErrorKind::Retry, message: message.into() })
                }
                // Cut short by a shutdown or a disabled plugin: the event stays pending as it was.
                Err(CallError::Abandoned) => return,
                // Its runner was killed for another event's sake: the call is made again.
                Err(CallError::Interrupted(reason)) => {
                    tracing::warn!("call cut short ({reason}); delivering the event again");
                    attempt -= 1;
                    continue;
                }
                Err(CallError::Crashed(reason)) => {
                    // The call never answered: it uses up no attempt, it counts as a crash.
                    attempt -= 1;
                    let state = Pending {
                        attempts: attempt,
                        next_at_ms: due,
                        last_error: String::new(),
                        crashes,
                    };
                    let cause = format!("plugin process died: {reason}");
                    let verdict = crash::after_crash(&state, &cause, config.max_crashes);
                    if let CrashVerdict::Again(next) = &verdict {
                        crashes = next.crashes;
                        tracing::error!(
                            crashes,
                            max_crashes = config.max_crashes,
                            "{cause}; delivering the event again"
                        );
                    } else {
                        tracing::error!(
                            crashes = crashes + 1,
                            "{cause}; moved to the plugin's dead letters"
                        );
                    }
                    // A runner killed for running past kill_after_ms timed out; others crashed.
                    let outcome =
                        if reason.contains("kill_after_ms") { "timeout" } else { "crashed" };
                    if crash::report(reporter, id, verdict, outcome, at_ms, duration_us) {
                        self.metrics.dead_letters.get_or_create(&self.label()).inc();
                        return;
                    }
                    continue;
                }
                Err(CallError::Plugin(error)) => Err(error),
                Ok(outcome) => Ok(outcome),
            };
            let (outcome, error) = match &result {
                Ok(Outcome::Done) => ("done", String::new()),
                Ok(Outcome::Skipped) => ("skipped", String::new()),
                Err(e) => match e.kind {
                    ErrorKind::Retry => ("retry", e.to_string()),
                    ErrorKind::Reject => ("rejected", e.to_string()),
                    ErrorKind::Panicked => ("panicked", e.to_string()),
                },
            };
            reporter.attempt(
                id,
                Attempt { n: attempt, at_ms, duration_us, outcome: outcome.into(), error },
            );
            let error = match result {
                Ok(outcome) => {
                    tracing::debug!(
                        attempt,
                        ?outcome,
                        elapsed_us = elapsed.as_micros() as u64,
                        "delivered"
                    );
                    reporter.complete(id);
                    return;
                }
                Err(error) => error,
            };
            // A retry that uses no attempt: Bitrix24 refused a REST call for a limit that lifts
            // by itself (the event comes again once it has), or an http target could not be
            // reached (the event waits for it, with back-off).
            let uncounted_retry = if error.kind == ErrorKind::Retry
                && let Some(until) = held.filter(|until| *until > now_ms())
            {
                Some((
                    until,
                    "a Bitrix24 limit held the plugin's REST call; delivering the event again when it lifts (no attempt used)",
                ))
            } else if uncounted {
                unreachable = unreachable.saturating_add(1);
                Some((
                    now_ms() + backoff(retry, unreachable).as_millis() as i64,
                    "the plugin's target cannot be reached; delivering the event again (no attempt used)",
                ))
            } else {
                None
            };
            if let Some((next_at, why)) = uncounted_retry {
                attempt -= 1;
                due = next_at;
                tracing::warn!(
                    attempts = attempt,
                    wait_ms = due - now_ms(),
                    reason = %error.message,
                    "{why}"
                );
                self.metrics.retries.get_or_create(&self.label()).inc();
                reporter.update(
                    id,
                    Pending {
                        attempts: attempt,
                        next_at_ms: due,
                        last_error: error.to_string(),
                        crashes,
                    },
                );
                continue;
            }
            match error.kind {
                ErrorKind::Reject => {
                    tracing::error!(attempt, reason = %error.message, "plugin rejected the event; moved to its dead letters");
                    reporter.bury(id, dead(format!("rejected: {}", error.message), attempt));
                    self.metrics.dead_letters.get_or_create(&self.label()).inc();
                    return;
                }
                ErrorKind::Panicked => {
                    tracing::error!(attempt, panic = %error.message, "plugin panicked; re-creating its instance");
                    if let Err(e) = self.instance().recreate() {
                        tracing::error!("cannot re-create the plugin: {e}");
                    }
                }
                ErrorKind::Retry => {
                    tracing::warn!(attempt, reason = %error.message, "plugin asked to retry");
                }
            }
            if attempt >= retry.attempts {
                tracing::error!(
                    attempts = attempt,
                    "no attempts left; moved to the plugin's dead letters"
                );
                reporter
                    .bury(id, dead(format!("gave up after {attempt} attempts: {error}"), attempt));
                self.metrics.dead_letters.get_or_create(&self.label()).inc();
                return;
            }
            self.metrics.retries.get_or_create(&self.label()).inc();
            due = now_ms() + backoff(retry, attempt).as_millis() as i64;
            if let Some(earliest) = earliest {
                // The target said when to come back (Retry-After).
                due = due.max(earliest);
            }
            // The crash count carries over: a retry does not forgive a crash.
            reporter.update(
                id,
                Pending {
                    attempts: attempt,
                    next_at_ms: due,
                    last_error: error.to_string(),
                    crashes,
                },
            );
        }
    }

    /// One call, on the lane's thread: an http target's request, a runner's call, or the
    /// guarded call of an in-process plugin ([`crate::call::Local::call`]: a panic costs one attempt, not
    /// the lane).
    #[allow(clippy::too_many_arguments)]
    fn call(
        &self,
        envelope: &Envelope,
        attempt: u32,
        context: Arc<EventContext>,
        config: &PluginConfig,
        lanes: &Lanes,
        lane: &Lane,
    ) -> Result<Outcome, CallError> {
        let instance = self.instance();
        let mut started = Instant::now();
        if let Some(target) = instance.target() {
            // One request at a time on this lane: the plugin's order holds.
            lane.busy_since.store(lanes.micros(), Ordering::Relaxed);
            let result = target.call(envelope, attempt, &|| lanes.stopping());
            lane.busy_since.store(0, Ordering::Relaxed);
            if started.elapsed() > config.timeout {
                self.degraded(&instance, "the call has ended");
            } else if instance.set_status(PluginStatus::Ready) == PluginStatus::Degraded {
                tracing::info!("plugin answers within its timeout again");
            }
            return result;
        }
        let result = match (instance.runner(), instance.local()) {
            // Process isolation: the runner decodes and calls; REST calls it makes come back to
            // this thread, inside the event's context. The call's clock starts when it is sent:
            // waiting for a runner to restart is not the plugin's time (nor kill_after_ms's).
            (Some(runner), _) if let Err(reason) = runner.prepare(envelope) => {
                Err(CallError::Plugin(PluginError::reject(reason)))
            }
            (Some(runner), _) => rest::context::with(context, || {
                let sent = || {
                    started = Instant::now();
                    lane.event.store(envelope.id, Ordering::Relaxed);
                    lane.busy_since.store(lanes.micros(), Ordering::Relaxed);
                };
                let result = runner.call(lane.index, envelope, attempt, &|| lanes.stopping(), sent);
                lane.event.store(0, Ordering::Relaxed);
                result
            }),
            (None, Some(local)) => {
                lane.busy_since.store(lanes.micros(), Ordering::Relaxed);
                // What the plugin prints during the call is logged under its name.
                let _output = crate::plugin_output::in_plugin(&instance.info().name);
                // The context tells REST calls made during the call which portal they are for.
                rest::context::with(context, || local.call(envelope, attempt))
                    .map_err(CallError::Plugin)
            }
            (None, None) => Err(CallError::Abandoned),
        };
        lane.busy_since.store(0, Ordering::Relaxed);
        if started.elapsed() > config.timeout {
            self.degraded(&instance, "the call has ended");
        } else if instance.set_status(PluginStatus::Ready) == PluginStatus::Degraded {
            tracing::info!("plugin answers within its timeout again");
        }
        result
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn dead(reason: String, attempts: u32) -> DeadLetter {
    DeadLetter { reason, attempts, at_ms: now_ms() }
}

/// The wait before attempt `attempt + 1`: `base * 2^(attempt-1)` capped at `cap`, then
/// jittered into its upper half so that retries of many events spread out.
pub fn backoff(retry: &RetryConfig, attempt: u32) -> Duration {
    let exp = retry.base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let full = exp.min(retry.cap);
    let half = full / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_stays_under_the_cap() {
        let retry = RetryConfig {
            attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        for _ in 0..100 {
            let first = backoff(&retry, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&retry, 3);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&retry, 30);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_millis(1000));
        }
    }
}
