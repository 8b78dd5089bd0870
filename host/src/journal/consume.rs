//! A plugin's side of the log: its [`Consumer`] hands out [`Delivery`]s in id order (nothing
//! while the plugin is paused), its [`Reporter`] takes each outcome, its [`Stopper`] ends it.

use std::{sync::Arc, time::Duration};

use super::{
    DeadLetter, EventRecord, Pause, Pending, State, StoreError, admin, embedded, nats, pause,
};

/// One event for one plugin, as the journal holds it: the stored record and the plugin's
/// pending state. The journal never decodes it: the plugin's delivery does (`call::Envelope`),
/// in the host only for an in-process or exec plugin, in the runner for one in a runner.
#[derive(Debug)]
pub struct Delivery {
    /// The journal's id for the event.
    pub id: u64,
    /// The plugin's pending state of the event as read: attempts already made (before a
    /// restart, too), when the next one is due, crashes counted so far.
    pub pending: Pending,
    /// The event as journaled.
    pub record: EventRecord,
}

/// One plugin's view of the journal: its pending events in id order, then new ones as they
/// arrive, and dead letters put back by `journal replay`. While the plugin is paused it hands
/// out nothing.
pub struct Consumer {
    pub(super) backend: ConsumerBackend,
    pub(super) pause: PauseHandle,
}

pub(super) enum ConsumerBackend {
    Embedded(embedded::Consumer),
    Nats(nats::Consumer),
}

/// What a plugin's consumer and reporter know of its pause.
#[derive(Clone)]
pub(super) struct PauseHandle {
    pub(super) plugin: Arc<str>,
    pub(super) gate: Arc<pause::Gate>,
    /// To store a pause the plugin makes itself (`Reporter::pause`).
    pub(super) state: State,
}

/// How often a paused plugin's consumer looks whether it was resumed.
const PAUSE_LOOK: Duration = Duration::from_millis(50);

impl Consumer {
    /// The plugin's name.
    pub fn plugin(&self) -> &Arc<str> {
        match &self.backend {
            ConsumerBackend::Embedded(c) => c.plugin(),
            ConsumerBackend::Nats(c) => c.plugin(),
        }
    }

    /// A handle that stops this consumer.
    pub fn stopper(&self) -> Stopper {
        match &self.backend {
            ConsumerBackend::Embedded(c) => Stopper(StopperBackend::Embedded(c.stopper())),
            ConsumerBackend::Nats(c) => Stopper(StopperBackend::Nats(c.stopper())),
        }
    }

    /// The next event to deliver, once the plugin is not paused; `None` once the journal is
    /// closed or the consumer stopped.
    pub async fn next(&mut self) -> Option<Delivery> {
        if self.pause.gate.is_paused() {
            let (stopper, reporter) = (self.stopper(), self.reporter());
            while self.pause.gate.is_paused() {
                if stopper.is_stopped() || reporter.is_closed() {
                    return None;
                }
                tokio::time::sleep(PAUSE_LOOK).await;
            }
        }
        match &mut self.backend {
            ConsumerBackend::Embedded(c) => c.next().await,
            ConsumerBackend::Nats(c) => c.next().await,
        }
    }

    /// A handle to report outcomes with, usable from other tasks and threads.
    pub fn reporter(&self) -> Reporter {
        let backend = match &self.backend {
            ConsumerBackend::Embedded(c) => ReporterBackend::Embedded(c.reporter()),
            ConsumerBackend::Nats(c) => ReporterBackend::Nats(c.reporter()),
        };
        Reporter { backend, pause: self.pause.clone() }
    }
}

/// Stops one consumer (its plugin was disabled); its events stay in the journal.
#[derive(Clone)]
pub struct Stopper(StopperBackend);

#[derive(Clone)]
enum StopperBackend {
    Embedded(embedded::Stopper),
    Nats(nats::Stopper),
}

impl Stopper {
    /// The consumer returns `None` from its next `next()` on.
    pub fn stop(&self) {
        match &self.0 {
            StopperBackend::Embedded(s) => s.stop(),
            StopperBackend::Nats(s) => s.stop(),
        }
    }

    /// Whether the consumer was stopped.
    pub fn is_stopped(&self) -> bool {
        match &self.0 {
            StopperBackend::Embedded(s) => s.is_stopped(),
            StopperBackend::Nats(s) => s.is_stopped(),
        }
    }
}

/// Reports one plugin's outcomes to the journal, and tells its lanes whether it is paused.
#[derive(Clone)]
pub struct Reporter {
    backend: ReporterBackend,
    pause: PauseHandle,
}

#[derive(Clone)]
enum ReporterBackend {
    Embedded(embedded::Reporter),
    Nats(nats::Reporter),
}

impl Reporter {
    /// Whether the plugin is paused now (an operator's pause or its own): lanes start nothing
    /// new while it is.
    pub fn is_paused(&self) -> bool {
        self.pause.gate.is_paused()
    }

    /// How many times the plugin was resumed since the host started: the circuit breaker
    /// counts failures afresh after each.
    pub fn resumes(&self) -> u64 {
        self.pause.gate.resumes()
    }

    /// Pauses the plugin (its circuit breaker: `pause_after_failures`), durably; it is honoured
    /// here at once, even when storing it fails (the error says so).
    pub async fn pause(&self, pause: Pause) -> Result<(), StoreError> {
        let state = &self.pause.state;
        let stored = state.set_pause(&self.pause.plugin, Some(pause.clone())).await;
        if stored.is_err() {
            state.honour(&self.pause.plugin, pause);
        }
        stored
    }

    /// Resolves once the journal is closing (the host is shutting down).
    pub async fn closed(&self) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.closed().await,
            ReporterBackend::Nats(r) => r.closed().await,
        }
    }

    /// Whether the journal is closing.
    pub fn is_closed(&self) -> bool {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.is_closed(),
            ReporterBackend::Nats(r) => r.is_closed(),
        }
    }

    /// Whether an operator skipped event `id` (`journal skip`) since it was read: it is a dead
    /// letter now, so stop delivering it (a process-mode plugin stuck on it can be killed).
    pub fn is_skipped(&self, id: u64) -> bool {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.is_skipped(id),
            ReporterBackend::Nats(r) => r.is_skipped(id),
        }
    }

    /// [`Reporter::is_skipped`], and forgets it: for the lane that drops the event.
    pub fn take_skipped(&self, id: u64) -> bool {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.take_skipped(id),
            ReporterBackend::Nats(r) => r.take_skipped(id),
        }
    }

    /// The plugin finished event `id` (done or skipped).
    pub fn complete(&self, id: u64) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.complete(id),
            ReporterBackend::Nats(r) => r.complete(id),
        }
    }

    /// An attempt failed (or its process crashed); remember the attempt and crash counts and
    /// the next attempt's time.
    pub fn update(&self, id: u64, state: Pending) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.update(id, state),
            ReporterBackend::Nats(r) => r.update(id, state),
        }
    }

    /// One delivery attempt of event `id` ended (before its outcome is reported): kept for
    /// the console, at most [`admin::MAX_ATTEMPTS_KEPT`] per event and plugin, pruned with
    /// the event. Never blocks; a lost attempt record loses no event.
    pub fn attempt(&self, id: u64, attempt: admin::Attempt) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.attempt(id, attempt),
            ReporterBackend::Nats(r) => r.attempt(id, attempt),
        }
    }

    /// The plugin gave up on event `id`: a dead letter.
    pub fn bury(&self, id: u64, dead: DeadLetter) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.bury(id, dead),
            ReporterBackend::Nats(r) => r.bury(id, dead),
        }
    }
}
