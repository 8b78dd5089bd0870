//! The host's side of one plugin's runner: start, call, supervise, stop.
//!
//! One supervising thread per runner starts the process (a [`Process`]: its own process group,
//! watched by its own process, dying with the host), reads its frames, and when the runner dies
//! (signal, exit, end of stream) ends every call in flight on it as a crash with the reason
//! ("killed by SIGSEGV", ...), and starts a new one after a [`Backoff`]. The death is seen by
//! the process's watch, which kills the runner's group and shuts the socket down: a child the
//! plugin forked may hold the socket open, it does not hide the death. Lanes call through
//! [`RunnerHandle::call`] and block, as an in-process call blocks its lane; the plugin's REST
//! calls are answered on that same lane thread, inside the event's REST context, with the
//! host's own client. [`RunnerHandle::interrupt`] kills a runner for a reason that is no
//! crash of its calls (an operator skipped the event one of them is making).

use std::{
    collections::HashMap,
    fs::File,
    io::{BufReader, BufWriter, Write},
    net::Shutdown,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{net::UnixStream, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        Arc, Condvar, Mutex, MutexGuard,
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc,
    },
    time::{Duration, Instant},
};

use b24_plugin_api::{HostServicesArc, LogLevel, Outcome, PluginError};

use super::{
    lines::{self, EventJson, Incoming, Outbox, Requests},
    process::{Backoff, Limits, Process, describe_exit},
    protocol::{
        BatchCall, FromRunner, RUNNER_FD, ToRunner, WireRestError, read_frame, write_frame,
    },
};
use crate::{
    call::CallError,
    call::Envelope,
    loader::PluginMeta,
    metrics::{Metrics, PluginLabel},
    rest::{self, EventContext},
};

/// How often a lane waiting for a batch checks whether delivery stops.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// What it takes to start a plugin's runner.
#[derive(Clone)]
pub struct RunnerSpec {
    /// The plugin's name as enabled.
    pub plugin: String,
    /// What runs: a library in `b24-host runner`, or an exec plugin's command.
    pub program: Program,
    /// Its settings (TOML text).
    pub settings: String,
    /// `HostServices::config_dir`; an exec plugin's working folder.
    pub config_dir: PathBuf,
    /// `HostServices::state_dir`.
    pub state_dir: PathBuf,
    /// The address-space limit, MiB.
    pub memory_limit_mb: Option<u64>,
    /// How long the runner may take to load and create its plugin (`plugins.start_timeout_ms`);
    /// past it the runner is killed and the start fails.
    pub start_timeout: Duration,
    /// The host services the runner's log lines and REST calls are answered with.
    pub host: HostServicesArc,
    /// The metrics (restarts).
    pub metrics: Arc<Metrics>,
}

/// What a runner runs.
#[derive(Clone)]
pub enum Program {
    /// A Rust plugin library (the content-addressed copy), loaded by `b24-host runner`; frames
    /// on a socketpair.
    Library(PathBuf),
    /// An exec plugin's command under `b24-host exec-shim`; JSON lines on its stdin and stdout
    /// ([`super::lines`]).
    Exec(ExecProgram),
}

/// An exec plugin's program.
#[derive(Clone)]
pub struct ExecProgram {
    /// The argv.
    pub command: Vec<String>,
    /// Its own environment variables (beyond `PATH`, `HOME`, `LANG`).
    pub env: Vec<(String, b24_plugin_api::Secret)>,
    /// How many events it may be sent before the first is answered.
    pub window: usize,
    /// The event globs it receives (its config's `events`).
    pub events: Vec<String>,
    /// The events' JSON, built once per event for every plugin.
    pub json: Arc<EventJson>,
}

/// A runner's state, for metrics, `/readyz` and `journal stats`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunnerState {
    /// `running`, `restarting` or `stopped`.
    pub state: String,
    /// The runner's process id while it runs.
    pub pid: Option<u32>,
    /// How often it was restarted.
    pub restarts: u64,
    /// Why the last runner ended, e.g. `killed by SIGSEGV`.
    pub last_exit: Option<String>,
}

/// What a waiting call hears from the supervising thread.
enum Reply {
    Outcome(Result<Outcome, PluginError>),
    /// A batch ended: all its calls answered, or one that is not Done/Skipped.
    BatchDone,
    Rest {
        request: u64,
        call: u64,
        method: String,
        params: String,
    },
    /// The runner died; the reason, and whether it was [`RunnerHandle::interrupt`]ed.
    Died(String, bool),
}

/// Who waits for a call: a single call's lane, or one call of a batch.
#[derive(Clone)]
struct Waiter {
    tx: mpsc::Sender<Reply>,
    batch: Option<Arc<Batch>>,
}

/// An answer of a batch's call and when it arrived.
type Answer = (Result<Outcome, PluginError>, Instant);

/// A batch in flight: the supervising thread collects its outcomes and wakes the lane once.
struct Batch {
    /// Its call ids, in order.
    calls: Vec<u64>,
    /// The outcomes so far, by position (a runner answers in order; an exec plugin's window
    /// may answer in any order).
    answered: Mutex<Vec<Option<Answer>>>,
    /// Runs when the first unanswered call moves on without ending the batch, with its
    /// position (that call is now the one the lane waits for).
    progress: Box<dyn Fn(usize) + Send + Sync>,
}

impl Batch {
    /// Whether the batch is over: every call answered, or the first that is not Done/Skipped
    /// is answered and so is every call before it.
    fn over(answered: &[Option<Answer>]) -> bool {
        for answer in answered {
            match answer {
                None => return false,
                Some((Err(_), _)) => return true,
                Some((Ok(_), _)) => {}
            }
        }
        true
    }

    /// The position of the first call not answered yet.
    fn first_open(answered: &[Option<Answer>]) -> usize {
        answered.iter().position(Option::is_none).unwrap_or(answered.len())
    }
}

/// One event of [`RunnerHandle::call_batch`].
pub struct BatchItem<'a> {
    /// The event.
    pub envelope: &'a Envelope,
    /// The attempt (1-based).
    pub attempt: u32,
    /// The REST context its plugin's REST calls run in.
    pub context: Arc<EventContext>,
}

/// How a batch ended: the outcomes the runner gave, in order, each with how long its call
/// took; then, if the batch was cut short, why (for the call after the last answered one).
/// The calls after those were not attempted, except those in `later`.
pub struct BatchOutcome {
    /// The plugin's answers, in order (only the last may be an error).
    pub answered: Vec<(Result<Outcome, PluginError>, Duration)>,
    /// The runner died (or delivery stopped) during the next call, after this long.
    pub end: Option<(CallError, Duration)>,
    /// Calls after those that the plugin already answered Done or Skipped (an exec plugin's
    /// window answers out of order): their positions in the batch, in order, with the outcome.
    pub later: Vec<(usize, Outcome, Duration)>,
}

/// What stderr showed before a runner died.
#[derive(Default)]
struct Notes {
    out_of_memory: AtomicBool,
    stack_overflow: AtomicBool,
}

/// How the host writes to a runner.
enum Wire {
    /// Frames on the socketpair.
    Frames(Mutex<BufWriter<UnixStream>>),
    /// JSON lines on an exec plugin's stdin.
    Lines {
        /// The stdin writer.
        out: Outbox,
        /// The plugin's REST calls waiting for their answers.
        requests: Requests,
        /// The events' JSON.
        json: Arc<EventJson>,
    },
}

/// One runner process's connection.
struct Conn {
    process: Process,
    wire: Wire,
    calls: Mutex<HashMap<u64, Waiter>>,
    kill_reason: Mutex<Option<String>>,
    /// Killed by [`RunnerHandle::interrupt`]: its calls' events are not charged.
    interrupted: AtomicBool,
    notes: Arc<Notes>,
}

impl Conn {
    /// Sends `message` (its tail, a frame's bodies). To an exec plugin it goes as its lines:
    /// a REST answer, `shutdown` (and stdin closes); a batch is never stopped early there (the
    /// plugin has its events already; their answers are waited for); events go through
    /// [`Conn::send_call`].
    fn send(&self, message: &ToRunner, tail: &[u8]) -> std::io::Result<()> {
        match &self.wire {
            Wire::Frames(out) => {
                let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                write_frame(&mut *out, message, tail)?;
                out.flush()
            }
            Wire::Lines { out, requests, .. } => {
                match message {
                    ToRunner::RestAnswer { request, result } => {
                        if let Some(call) = requests.take(*request) {
                            out.send(lines::rest_answer(&call, result.clone()));
                        }
                    }
                    ToRunner::Shutdown => {
                        out.send(lines::shutdown());
                        out.close();
                    }
                    ToRunner::Init { .. }
                    | ToRunner::Call { .. }
                    | ToRunner::CallBatch { .. }
                    | ToRunner::StopBatch { .. } => {}
                }
                Ok(())
            }
        }
    }

    /// Sends one event: a `Call` frame, or an `event` line whose `id` is the call id.
    fn send_call(
        &self,
        call: u64,
        lane: usize,
        envelope: &Envelope,
        attempt: u32,
    ) -> std::io::Result<()> {
        match &self.wire {
            Wire::Frames(_) => {
                let message = ToRunner::Call { call, lane, id: envelope.id, attempt };
                self.send(&message, &envelope.record.encode())
            }
            Wire::Lines { out, json, .. } => {
                let mut line = json.object(&call.to_string(), envelope, attempt);
                line.push('\n');
                out.send(line.into_bytes());
                Ok(())
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Restarting,
    Stopped,
}

struct State {
    phase: Phase,
    conn: Option<Arc<Conn>>,
    last_exit: Option<String>,
}

struct Shared {
    spec: RunnerSpec,
    meta: Mutex<Option<PluginMeta>>,
    state: Mutex<State>,
    changed: Condvar,
    stopping: AtomicBool,
    restarts: AtomicU64,
    next_call: AtomicU64,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state());
        self.changed.notify_all();
    }
}

/// A plugin's runner; cheap to clone.
#[derive(Clone)]
pub struct RunnerHandle {
    shared: Arc<Shared>,
    meta: PluginMeta,
}

impl std::fmt::Debug for RunnerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunnerHandle").field("plugin", &self.meta.name).finish_non_exhaustive()
    }
}

/// A started runner, before its supervisor takes it over.
struct Started {
    conn: Arc<Conn>,
    input: Input,
    stderr_done: mpsc::Receiver<()>,
}

/// What the supervising thread reads a runner's messages from.
enum Input {
    /// Frames on the socketpair.
    Frames(BufReader<UnixStream>),
    /// An exec plugin's stdout lines, parsed by their reader thread; `exited` once the
    /// program's watch saw it end (what it wrote before is still read, for a moment).
    Lines { from: mpsc::Receiver<Incoming>, exited: Option<Instant> },
}

/// How long the lines an exec program wrote just before it ended are still waited for.
const LAST_WORDS: Duration = Duration::from_millis(500);

impl Input {
    /// The next message; `None` at the end (the stream ended, or the program did and what it
    /// wrote is read).
    fn next(&mut self, plugin: &str) -> Option<FromRunner> {
        match self {
            Input::Frames(input) => match read_frame::<FromRunner>(input) {
                Ok(Some((frame, _))) => Some(frame),
                Ok(None) => None,
                Err(e) => {
                    tracing::error!(plugin, "bad frame from the plugin's runner: {e}");
                    None
                }
            },
            Input::Lines { from, exited } => loop {
                let next = match exited {
                    None => from.recv().ok(),
                    Some(at) => {
                        let left = (*at + LAST_WORDS).saturating_duration_since(Instant::now());
                        from.recv_timeout(left).ok()
                    }
                };
                match next? {
                    Incoming::Message(message) => return Some(message),
                    Incoming::Ready { .. } => {}
                    Incoming::Exited => *exited = Some(Instant::now()),
                }
            },
        }
    }
}

impl RunnerHandle {
    /// Starts the runner of `spec.plugin` and waits until its plugin is created; the error
    /// says why it could not be (as the loader says it, or how the runner died).
    pub fn start(spec: RunnerSpec) -> Result<RunnerHandle, String> {
        let shared = Arc::new(Shared {
            spec,
            meta: Mutex::new(None),
            state: Mutex::new(State { phase: Phase::Starting, conn: None, last_exit: None }),
            changed: Condvar::new(),
            stopping: AtomicBool::new(false),
            restarts: AtomicU64::new(0),
            next_call: AtomicU64::new(1),
        });
        let (first, first_rx) = mpsc::channel::<Result<PluginMeta, String>>();
        let supervised = shared.clone();
        std::thread::Builder::new()
            .name(format!("runner-{}", shared.spec.plugin))
            .spawn(move || supervise(&supervised, &first))
            .map_err(|e| format!("cannot start a thread for the runner: {e}"))?;
        let meta = first_rx
            .recv()
            .map_err(|_| "the runner's supervising thread ended".to_owned())
            .and_then(|r| r)?;
        Ok(RunnerHandle { shared, meta })
    }

    /// What the runner reported of the plugin's library.
    pub fn meta(&self) -> &PluginMeta {
        &self.meta
    }

    /// The runner's state.
    pub fn state(&self) -> RunnerState {
        let state = self.shared.state();
        RunnerState {
            state: match state.phase {
                Phase::Starting | Phase::Restarting => "restarting",
                Phase::Running => "running",
                Phase::Stopped => "stopped",
            }
            .to_owned(),
            pid: state.conn.as_ref().map(|c| c.process.pid() as u32),
            restarts: self.shared.restarts.load(Ordering::Relaxed),
            last_exit: state.last_exit.clone(),
        }
    }

    /// The most calls to send at once, if this runner sets one (an exec plugin's `window`).
    pub fn batch_limit(&self) -> Option<usize> {
        match &self.shared.spec.program {
            Program::Library(_) => None,
            Program::Exec(exec) => Some(exec.window),
        }
    }

    /// Whether this runner speaks the exec protocol.
    pub fn is_exec(&self) -> bool {
        matches!(self.shared.spec.program, Program::Exec(_))
    }

    /// Readies `envelope` for this plugin: an exec plugin's event JSON is built (once per
    /// event, for every plugin, see [`EventJson`]); why its body cannot be sent (it does not
    /// decode: the caller rejects it). A runner of frames decodes the record itself.
    pub fn prepare(&self, envelope: &Envelope) -> Result<(), String> {
        match &self.shared.spec.program {
            Program::Exec(exec) => exec.json.of(envelope).map(|_| ()),
            _ => Ok(()),
        }
    }

    /// Whether a runner is up and taking calls.
    pub fn is_running(&self) -> bool {
        self.shared.state().phase == Phase::Running
    }

    /// Calls the plugin with `envelope` for attempt `attempt`, from
    /// host lane `lane`; blocks until the outcome. REST calls the plugin makes meanwhile run on
    /// this thread (in the REST context the caller set). While the runner is restarting the
    /// call waits for it, unless `stop` says delivery stops; `sent` runs when the call goes out.
    pub fn call(
        &self,
        lane: usize,
        envelope: &Envelope,
        attempt: u32,
        stop: &dyn Fn() -> bool,
        sent: impl FnOnce(),
    ) -> Result<Outcome, CallError> {
        let Some(conn) = self.running(stop) else { return Err(CallError::Abandoned) };
        let call = self.shared.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        conn.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call, Waiter { tx, batch: None });
        sent();
        // A failed write means the runner is dying: its supervisor answers the call.
        let _ = conn.send_call(call, lane, envelope, attempt);
        loop {
            match rx.recv() {
                Ok(Reply::Outcome(result)) => return result.map_err(CallError::Plugin),
                Ok(Reply::Rest { request, method, params, .. }) => {
                    self.answer_rest(&conn, request, &method, &params);
                }
                Ok(Reply::Died(reason, interrupted)) => return Err(self.died(reason, interrupted)),
                Ok(Reply::BatchDone) => {}
                Err(_) => return Err(CallError::Crashed("the runner connection was lost".into())),
            }
        }
    }

    /// Calls the plugin with several events in one frame, strictly in order on host lane
    /// `lane`, until one is not Done or Skipped; blocks until the batch ends. REST calls the
    /// plugin makes meanwhile run on this thread, each inside its own event's context.
    /// `sent` runs when the batch goes out, `progress` (on the supervising thread) each time
    /// a call of it ends and the next starts.
    pub fn call_batch(
        &self,
        lane: usize,
        items: &[BatchItem<'_>],
        stop: &dyn Fn() -> bool,
        sent: impl FnOnce(),
        progress: Box<dyn Fn(usize) + Send + Sync>,
    ) -> BatchOutcome {
        let Some(conn) = self.running(stop) else {
            return BatchOutcome {
                answered: Vec::new(),
                end: Some((CallError::Abandoned, Duration::ZERO)),
                later: Vec::new(),
            };
        };
        let first = self.shared.next_call.fetch_add(items.len() as u64, Ordering::Relaxed);
        let calls: Vec<u64> = (first..first + items.len() as u64).collect();
        let batch = Arc::new(Batch {
            calls: calls.clone(),
            answered: Mutex::new(vec![None; items.len()]),
            progress,
        });
        let (tx, rx) = mpsc::channel();
        {
            let mut waiting = conn.calls.lock().unwrap_or_else(|p| p.into_inner());
            for call in &calls {
                waiting.insert(*call, Waiter { tx: tx.clone(), batch: Some(batch.clone()) });
            }
        }
        drop(tx);
        let mut tail =
            Vec::with_capacity(items.iter().map(|i| i.envelope.record.raw.len() + 256).sum());
        let message = ToRunner::CallBatch {
            lane,
            items: items
                .iter()
                .zip(&calls)
                .map(|(item, call)| {
                    let at = tail.len();
                    item.envelope.record.encode_into(&mut tail);
                    BatchCall {
                        call: *call,
                        id: item.envelope.id,
                        attempt: item.attempt,
                        len: tail.len() - at,
                    }
                })
                .collect(),
        };
        let started = Instant::now();
        sent();
        // A failed write means the runner is dying: its supervisor answers the calls.
        match &conn.wire {
            Wire::Frames(_) => {
                let _ = conn.send(&message, &tail);
            }
            Wire::Lines { .. } => {
                for (item, call) in items.iter().zip(&calls) {
                    let _ = conn.send_call(*call, lane, item.envelope, item.attempt);
                }
            }
        }
        let mut stop_sent = false;
        let end = loop {
            let reply = match rx.recv_timeout(STOP_CHECK) {
                Ok(reply) => Ok(reply),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    // Delivery stops: the batch ends after the call it is making.
                    if !stop_sent && stop() {
                        stop_sent = true;
                        let _ = conn.send(&ToRunner::StopBatch { lane, call: first }, b"");
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(()),
            };
            match reply {
                Ok(Reply::BatchDone) => break None,
                Ok(Reply::Rest { request, call, method, params }) => {
                    let index = call.checked_sub(first).map(|i| i as usize);
                    match index.and_then(|i| items.get(i)) {
                        Some(item) => rest::context::with(item.context.clone(), || {
                            self.answer_rest(&conn, request, &method, &params)
                        }),
                        None => self.answer_rest(&conn, request, &method, &params),
                    }
                }
                Ok(Reply::Died(reason, interrupted)) => break Some(self.died(reason, interrupted)),
                Ok(Reply::Outcome(_)) => {}
                Err(_) => break Some(CallError::Crashed("the runner connection was lost".into())),
            }
        };
        // The supervisor takes the batch's calls out of the map when it ends; after a death
        // they are gone too (drained).
        conn.calls.lock().unwrap_or_else(|p| p.into_inner()).retain(|c, _| !calls.contains(c));
        let answered =
            std::mem::take(&mut *batch.answered.lock().unwrap_or_else(|p| p.into_inner()));
        batch_outcome(answered, started, end)
    }

    /// The running runner's connection, waiting while it restarts; `None` when delivery stops.
    fn running(&self, stop: &dyn Fn() -> bool) -> Option<Arc<Conn>> {
        loop {
            if self.shared.stopping.load(Ordering::SeqCst) || stop() {
                return None;
            }
            let state = self.shared.state();
            if let (Phase::Running, Some(conn)) = (state.phase, &state.conn) {
                return Some(conn.clone());
            }
            let _ = self.shared.changed.wait_timeout(state, Duration::from_millis(100));
        }
    }

    /// Makes a REST call for the plugin (in the caller's REST context) and answers it.
    fn answer_rest(&self, conn: &Conn, request: u64, method: &str, params: &str) {
        let result = self.shared.spec.host.rest(method.into(), params.into());
        let result = result.into_result().map(|s| s.into_string()).map_err(WireRestError::from);
        let _ = conn.send(&ToRunner::RestAnswer { request, result }, b"");
    }

    /// What a runner's death means for a call in flight.
    fn died(&self, reason: String, interrupted: bool) -> CallError {
        if self.shared.stopping.load(Ordering::SeqCst) {
            CallError::Abandoned
        } else if interrupted {
            CallError::Interrupted(reason)
        } else {
            CallError::Crashed(reason)
        }
    }

    /// Kills the running runner and its process group with SIGKILL; `reason` becomes its exit
    /// reason (e.g. `killed: ran past kill_after_ms`). Its calls end as crashes; a new runner
    /// starts after the back-off.
    pub fn kill(&self, reason: &str) {
        self.kill_as(reason, false);
    }

    /// Kills the running runner as [`RunnerHandle::kill`] does, for a reason that is none of
    /// its calls' doing (an operator skipped the event of one): its calls end
    /// [`CallError::Interrupted`], uncounted.
    pub fn interrupt(&self, reason: &str) {
        self.kill_as(reason, true);
    }

    fn kill_as(&self, reason: &str, interrupted: bool) {
        let state = self.shared.state();
        if let Some(conn) = &state.conn {
            let mut kill_reason = conn.kill_reason.lock().unwrap_or_else(|p| p.into_inner());
            if kill_reason.is_none() {
                *kill_reason = Some(reason.to_owned());
                conn.interrupted.store(interrupted, Ordering::SeqCst);
            }
            conn.process.kill();
        }
    }

    /// Tells the runner to finish its calls, shut its plugin down and exit; kills it when it
    /// takes longer than `grace`. No new runner starts after this.
    pub fn shutdown(&self, grace: Duration) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        let conn = self.shared.state().conn.clone();
        if let Some(conn) = conn {
            let _ = conn.send(&ToRunner::Shutdown, b"");
        }
        if !self.wait_stopped(grace) {
            tracing::warn!(plugin = %self.meta.name, "the plugin's runner did not finish within the grace period; killing it");
            self.kill("killed: still busy at shutdown");
            self.wait_stopped(Duration::from_secs(2));
        }
    }

    /// Kills the runner now (the host's shutdown grace is over): its calls end, their events
    /// stay pending.
    pub fn stop_now(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        self.kill("killed: still busy at shutdown");
    }

    fn wait_stopped(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut state = self.shared.state();
        while state.phase != Phase::Stopped {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, deadline - now)
                .map(|(s, _)| s)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        true
    }
}

/// The supervising thread: starts the runner, reports the first start on `first`, then reads
/// frames and restarts the runner whenever it dies, until the handle stops it.
fn supervise(shared: &Arc<Shared>, first: &mpsc::Sender<Result<PluginMeta, String>>) {
    let name = shared.spec.plugin.clone();
    let mut started = match spawn(shared) {
        Ok((started, meta)) => {
            *shared.meta.lock().unwrap_or_else(|p| p.into_inner()) = Some(meta.clone());
            let _ = first.send(Ok(meta));
            started
        }
        Err(reason) => {
            shared.set(|s| s.phase = Phase::Stopped);
            let _ = first.send(Err(reason));
            return;
        }
    };
    let mut backoff = Backoff::default();
    loop {
        let since = Instant::now();
        let conn = started.conn.clone();
        shared.set(|s| {
            s.phase = Phase::Running;
            s.conn = Some(conn.clone());
        });
        read_frames(shared, &conn, &mut started.input);
        let stopping = shared.stopping.load(Ordering::SeqCst);
        shared.set(|s| {
            s.conn = None;
            s.phase = if stopping { Phase::Stopped } else { Phase::Restarting };
        });
        let reason = reap(&mut started, stopping);
        let interrupted = conn.interrupted.load(Ordering::SeqCst);
        for (_, waiter) in conn.calls.lock().unwrap_or_else(|p| p.into_inner()).drain() {
            let _ = waiter.tx.send(Reply::Died(reason.clone(), interrupted));
        }
        if shared.stopping.load(Ordering::SeqCst) {
            // A runner told to stop exits with status 0; anything else is worth keeping.
            shared.set(|s| {
                s.phase = Phase::Stopped;
                if reason != "exited with status 0" {
                    s.last_exit = Some(reason.clone());
                }
            });
            return;
        }
        shared.set(|s| s.last_exit = Some(reason.clone()));
        shared.restarts.fetch_add(1, Ordering::Relaxed);
        shared
            .spec
            .metrics
            .runner_restarts
            .get_or_create(&PluginLabel { plugin: name.clone() })
            .inc();
        let wait = backoff.after_death(since.elapsed());
        if interrupted {
            tracing::warn!(plugin = %name, reason = %reason, restart_in_ms = wait.as_millis() as u64, "plugin runner killed; starting a new one");
        } else {
            tracing::error!(plugin = %name, reason = %reason, restart_in_ms = wait.as_millis() as u64, "plugin runner died; starting a new one");
        }
        started = loop {
            if !sleep_unless_stopping(shared, backoff.current()) {
                shared.set(|s| s.phase = Phase::Stopped);
                return;
            }
            backoff.grow();
            match spawn(shared) {
                Ok((started, _)) => break started,
                Err(reason) => {
                    tracing::error!(plugin = %name, %reason, "plugin runner failed to start again");
                    shared.set(|s| s.last_exit = Some(reason));
                }
            }
        };
        tracing::info!(plugin = %name, "plugin runner restarted");
    }
}

/// Waits `wait`, or less when the handle stops the runner; whether it waited the whole time.
fn sleep_unless_stopping(shared: &Shared, wait: Duration) -> bool {
    let deadline = Instant::now() + wait;
    let mut state = shared.state();
    loop {
        if shared.stopping.load(Ordering::SeqCst) {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return true;
        }
        state = shared
            .changed
            .wait_timeout(state, deadline - now)
            .map(|(s, _)| s)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// Reads the runner's frames until its end of the socket closes (or it sends garbage).
fn read_frames(shared: &Arc<Shared>, conn: &Arc<Conn>, input: &mut Input) {
    loop {
        let Some(frame) = input.next(&shared.spec.plugin) else { return };
        match frame {
            FromRunner::Outcome { call, result } => {
                let mut waiting = conn.calls.lock().unwrap_or_else(|p| p.into_inner());
                let Some(waiter) = waiting.remove(&call) else { continue };
                let result = match result {
                    Ok(true) => Ok(Outcome::Done),
                    Ok(false) => Ok(Outcome::Skipped),
                    Err(e) => Err(PluginError::from(e)),
                };
                let Some(batch) = &waiter.batch else {
                    let _ = waiter.tx.send(Reply::Outcome(result));
                    continue;
                };
                // A batch wakes its lane once, when it ends; until then an answer to the call
                // the lane waits for is progress (the next call is the one waited for).
                let Some(position) = batch.calls.iter().position(|c| *c == call) else {
                    continue;
                };
                let mut answered = batch.answered.lock().unwrap_or_else(|p| p.into_inner());
                let open_before = Batch::first_open(&answered);
                answered[position] = Some((result, Instant::now()));
                if Batch::over(&answered) {
                    for other in &batch.calls {
                        waiting.remove(other);
                    }
                    drop(answered);
                    let _ = waiter.tx.send(Reply::BatchDone);
                } else {
                    let open = Batch::first_open(&answered);
                    drop(answered);
                    if open != open_before {
                        (batch.progress)(open);
                    }
                }
            }
            FromRunner::NotAttempted { call } => {
                let mut waiting = conn.calls.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(Waiter { tx, batch: Some(batch) }) = waiting.remove(&call) {
                    for other in &batch.calls {
                        waiting.remove(other);
                    }
                    let _ = tx.send(Reply::BatchDone);
                }
            }
            FromRunner::Log { level, message } => log(&shared.spec.host, level, &message),
            FromRunner::LogDropped { lines } => {
                crate::plugin_output::count_dropped(&shared.spec.plugin, lines);
            }
            FromRunner::Rest { request, call, method, params } => {
                let waiter = call.and_then(|call| {
                    conn.calls.lock().unwrap_or_else(|p| p.into_inner()).get(&call).cloned()
                });
                let reply = Reply::Rest { request, call: call.unwrap_or(0), method, params };
                match waiter {
                    Some(waiter) => {
                        let _ = waiter.tx.send(reply);
                    }
                    None => {
                        // Made outside an event (a thread of the plugin's own): answered as the
                        // host answers such a call, without an event context.
                        let Reply::Rest { request, method, params, .. } = reply else { continue };
                        let host = shared.spec.host.clone();
                        let conn = conn.clone();
                        std::thread::spawn(move || {
                            let result = host.rest(method.as_str().into(), params.as_str().into());
                            let result = result
                                .into_result()
                                .map(|s| s.into_string())
                                .map_err(WireRestError::from);
                            let _ = conn.send(&ToRunner::RestAnswer { request, result }, b"");
                        });
                    }
                }
            }
            FromRunner::ShutdownDone | FromRunner::Ready { .. } | FromRunner::InitFailed { .. } => {
            }
        }
    }
}

/// A batch's answers as the lane handles them: the answered calls in order up to the first
/// that is not Done/Skipped or not answered; the end (a death, a stop) charged to the first
/// unanswered call; the Done/Skipped answers after that. A call's time runs from the answer
/// that came before it (or the batch's start) to its own.
fn batch_outcome(
    answered: Vec<Option<Answer>>,
    started: Instant,
    mut end: Option<CallError>,
) -> BatchOutcome {
    let mut arrivals: Vec<Instant> = answered.iter().flatten().map(|(_, at)| *at).collect();
    arrivals.sort();
    let took = |at: Instant| {
        let before = arrivals.iter().rev().find(|a| **a < at).copied().unwrap_or(started);
        at.saturating_duration_since(before)
    };
    let last = arrivals.last().copied().unwrap_or(started);
    let mut out = BatchOutcome { answered: Vec::new(), end: None, later: Vec::new() };
    // The in-order part ended: at a call that failed or was not answered.
    let mut cut = false;
    for (position, answer) in answered.into_iter().enumerate() {
        match answer {
            Some((result, at)) if !cut => {
                cut = result.is_err();
                out.answered.push((result, took(at)));
            }
            None if !cut => {
                cut = true;
                out.end = end.take().map(|e| (e, last.elapsed()));
            }
            Some((Ok(outcome), at)) => out.later.push((position, outcome, took(at))),
            _ => {}
        }
    }
    out
}

/// A plugin's log line from its runner, logged as the host logs an in-process plugin's.
fn log(host: &HostServicesArc, level: u8, message: &str) {
    let level = match level {
        0 => LogLevel::Error,
        1 => LogLevel::Warn,
        2 => LogLevel::Info,
        3 => LogLevel::Debug,
        _ => LogLevel::Trace,
    };
    host.log(level, message.into());
}

/// Waits for a runner whose stream ended to exit (killing it and its group if it does not),
/// and says why it ended.
fn reap(started: &mut Started, stopping: bool) -> String {
    // It closed the socket but lives on: it is of no use any more.
    let grace = Duration::from_millis(if stopping { 2000 } else { 500 });
    let status = started.conn.process.stop(grace);
    // What it wrote last (an allocation failure, a stack overflow) says more than the signal.
    let _ = started.stderr_done.recv_timeout(Duration::from_millis(500));
    let kill_reason = started.conn.kill_reason.lock().unwrap_or_else(|p| p.into_inner()).clone();
    describe(status, kill_reason, &started.conn.notes)
}

/// Why a runner ended, in the words the dead letters and `journal stats` use.
fn describe(status: Option<ExitStatus>, kill_reason: Option<String>, notes: &Notes) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(reason) = kill_reason {
        return reason;
    }
    let Some(status) = status else { return "ended (its exit status is unknown)".into() };
    match status.signal() {
        Some(libc::SIGABRT) if notes.out_of_memory.load(Ordering::Relaxed) => {
            "killed: memory_limit_mb reached (allocation failed, SIGABRT)".into()
        }
        Some(libc::SIGABRT) if notes.stack_overflow.load(Ordering::Relaxed) => {
            "aborted (SIGABRT): stack overflow".into()
        }
        _ => describe_exit(status),
    }
}

/// Starts one runner process and waits for its plugin to be created.
fn spawn(shared: &Arc<Shared>) -> Result<(Started, PluginMeta), String> {
    match &shared.spec.program {
        Program::Library(library) => spawn_library(&shared.spec, library),
        Program::Exec(exec) => spawn_exec(&shared.spec, exec),
    }
}

/// Starts `b24-host runner` for a library and waits for its plugin to be created.
fn spawn_library(spec: &RunnerSpec, library: &Path) -> Result<(Started, PluginMeta), String> {
    let (host_end, runner_end) =
        UnixStream::pair().map_err(|e| format!("cannot make a socketpair: {e}"))?;
    // The running binary even when an upgrade replaced the file on disk.
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("b24-host")
        .args(["runner", "--plugin", &spec.plugin])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let fd = runner_end.as_raw_fd();
    // SAFETY: the closure runs in the forked child before exec and calls only async-signal-safe
    // functions (dup2, fcntl, signal).
    unsafe {
        command.pre_exec(move || prepare_child(fd));
    }
    let limits =
        Limits { address_space: spec.memory_limit_mb.map(|mb| mb.saturating_mul(1 << 20)) };
    // When the runner ends, its end of the socket may live on in a child the plugin forked:
    // shutting the host's end down ends the supervisor's read all the same.
    let closer = host_end.try_clone().map_err(|e| format!("cannot use the socketpair: {e}"))?;
    let on_exit = move |_: ExitStatus| {
        let _ = closer.shutdown(Shutdown::Both);
    };
    let (process, pipes) =
        Process::spawn(&format!("runner-{}", spec.plugin), command, limits, on_exit)
            .map_err(|e| format!("cannot start the runner: {e}"))?;
    drop(runner_end);
    let notes = Arc::new(Notes::default());
    let plugin: Arc<str> = spec.plugin.as_str().into();
    let (stderr_tx, stderr_done) = mpsc::channel();
    if let Some(stdout) = pipes.stdout {
        forward_output(OwnedFd::from(stdout).into(), plugin.clone(), false, notes.clone(), None);
    }
    if let Some(stderr) = pipes.stderr {
        forward_output(OwnedFd::from(stderr).into(), plugin, true, notes.clone(), Some(stderr_tx));
    }
    let writer = host_end.try_clone().map_err(|e| format!("cannot use the socketpair: {e}"))?;
    let conn = Arc::new(Conn {
        process,
        wire: Wire::Frames(Mutex::new(BufWriter::new(writer))),
        calls: Mutex::new(HashMap::new()),
        kill_reason: Mutex::new(None),
        interrupted: AtomicBool::new(false),
        notes,
    });
    let mut started = Started { conn, input: Input::Frames(BufReader::new(host_end)), stderr_done };
    let init = ToRunner::Init {
        plugin: spec.plugin.clone(),
        library: library.display().to_string(),
        settings: spec.settings.clone(),
        config_dir: spec.config_dir.display().to_string(),
        state_dir: spec.state_dir.display().to_string(),
        log: crate::plugin_output::limits(),
        log_level: finest_level(),
    };
    let fail = |started: &mut Started, what: String| -> String {
        started.conn.process.kill();
        started.conn.process.wait_timeout(Duration::from_secs(10));
        what
    };
    if let Err(e) = started.conn.send(&init, b"") {
        let reason = reap(&mut started, false);
        return Err(format!(
            "plugin `{}`: the runner did not take its start-up message ({e}): {reason}",
            spec.plugin
        ));
    }
    // The plugin may log while it is created; the deadline holds all the same.
    let deadline = Instant::now() + spec.start_timeout;
    let Input::Frames(input) = &mut started.input else {
        unreachable!("a library's runner speaks frames")
    };
    let answer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "timed out"));
        }
        let _ = input.get_ref().set_read_timeout(Some(left));
        match read_frame::<FromRunner>(input) {
            Ok(Some((FromRunner::Log { level, message }, _))) => log(&spec.host, level, &message),
            Ok(Some((FromRunner::LogDropped { lines }, _))) => {
                crate::plugin_output::count_dropped(&spec.plugin, lines);
            }
            other => break other,
        }
    };
    let _ = input.get_ref().set_read_timeout(None);
    match answer {
        Ok(Some((
            FromRunner::Ready { name, version, events, concurrent, api_version, load_us },
            _,
        ))) => {
            let meta = PluginMeta {
                name,
                path: library.to_path_buf(),
                version,
                events,
                concurrent,
                api_version,
                load_time: Duration::from_micros(load_us),
            };
            Ok((started, meta))
        }
        Ok(Some((FromRunner::InitFailed { reason }, _))) => {
            let _ = started.conn.process.stop(Duration::from_secs(2));
            Err(reason)
        }
        Ok(Some(_)) => Err(fail(
            &mut started,
            format!("plugin `{}`: the runner answered its start-up out of turn", spec.plugin),
        )),
        Ok(None) => {
            let reason = reap(&mut started, false);
            Err(format!(
                "plugin `{}`: the runner ended while loading the plugin: {reason}",
                spec.plugin
            ))
        }
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            ) =>
        {
            Err(fail(
                &mut started,
                format!(
                    "plugin `{}`: not created within plugins.start_timeout_ms ({} ms); its runner was killed",
                    spec.plugin,
                    spec.start_timeout.as_millis()
                ),
            ))
        }
        Err(e) => Err(fail(
            &mut started,
            format!("plugin `{}`: no start-up answer from the runner: {e}", spec.plugin),
        )),
    }
}

/// Starts an exec plugin's command under `b24-host exec-shim`, says `hello` and waits for
/// `ready` (its log lines pass meanwhile); an exit, or no `ready` within
/// `plugins.start_timeout_ms`, is a failed start.
fn spawn_exec(spec: &RunnerSpec, exec: &ExecProgram) -> Result<(Started, PluginMeta), String> {
    let name = &spec.plugin;
    let hello = lines::hello(name, &spec.settings)?;
    let started_at = Instant::now();
    // The running binary even when an upgrade replaced the file on disk.
    let mut command = Command::new("/proc/self/exe");
    command
        .arg0("b24-host")
        .arg("exec-shim")
        .arg("--")
        .args(&exec.command)
        .env_clear()
        .envs(lines::environment(&exec.env))
        .current_dir(&spec.config_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let limits =
        Limits { address_space: spec.memory_limit_mb.map(|mb| mb.saturating_mul(1 << 20)) };
    let (to_host, from) = mpsc::channel::<Incoming>();
    let exited = to_host.clone();
    // The program's stdout may live on in a child it started in a session of its own: its
    // death is said on the channel all the same.
    let on_exit = move |_: ExitStatus| {
        let _ = exited.send(Incoming::Exited);
    };
    let (process, pipes) = Process::spawn(&format!("exec-{name}"), command, limits, on_exit)
        .map_err(|e| format!("plugin `{name}`: cannot start its program: {e}"))?;
    let notes = Arc::new(Notes::default());
    let plugin: Arc<str> = name.as_str().into();
    let (stderr_tx, stderr_done) = mpsc::channel();
    let requests = Requests::default();
    let (Some(stdin), Some(stdout), Some(stderr)) = (pipes.stdin, pipes.stdout, pipes.stderr)
    else {
        process.kill();
        return Err(format!("plugin `{name}`: its program's pipes are missing"));
    };
    forward_output(
        OwnedFd::from(stderr).into(),
        plugin.clone(),
        true,
        notes.clone(),
        Some(stderr_tx),
    );
    let broken = |e: std::io::Error| {
        process.kill();
        format!("plugin `{name}`: cannot read or write its program's pipes: {e}")
    };
    lines::read_stdout(stdout, plugin.clone(), requests.clone(), to_host).map_err(broken)?;
    let out = Outbox::start(stdin, name).map_err(broken)?;
    out.send(hello);
    let conn = Arc::new(Conn {
        process,
        wire: Wire::Lines { out, requests, json: exec.json.clone() },
        calls: Mutex::new(HashMap::new()),
        kill_reason: Mutex::new(None),
        interrupted: AtomicBool::new(false),
        notes,
    });
    let mut started = Started { conn, input: Input::Lines { from, exited: None }, stderr_done };
    let deadline = Instant::now() + spec.start_timeout;
    let Input::Lines { from, .. } = &started.input else { unreachable!("exec speaks lines") };
    let answer = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match from.recv_timeout(left) {
            Ok(Incoming::Ready { version }) => break Ok(version),
            Ok(Incoming::Message(FromRunner::Log { level, message })) => {
                log(&spec.host, level, &message)
            }
            // Anything else before `ready` has nothing to answer.
            Ok(Incoming::Message(_)) => {}
            Ok(Incoming::Exited) | Err(mpsc::RecvTimeoutError::Disconnected) => break Err(true),
            Err(mpsc::RecvTimeoutError::Timeout) => break Err(false),
        }
    };
    match answer {
        Ok(version) => {
            let meta = PluginMeta {
                name: name.clone(),
                path: PathBuf::from(exec.command.first().cloned().unwrap_or_default()),
                version: version.unwrap_or_else(|| "exec".to_owned()),
                events: exec.events.clone(),
                concurrent: false,
                api_version: format!("exec protocol {}", lines::PROTOCOL),
                load_time: started_at.elapsed(),
            };
            Ok((started, meta))
        }
        Err(true) => {
            let reason = reap(&mut started, false);
            Err(format!(
                "plugin `{name}`: its program ended before it answered ready: {reason} (see its output above)"
            ))
        }
        Err(false) => {
            started.conn.process.kill();
            started.conn.process.wait_timeout(Duration::from_secs(10));
            Err(format!(
                "plugin `{name}`: its program did not answer ready within plugins.start_timeout_ms ({} ms); it was killed",
                spec.start_timeout.as_millis()
            ))
        }
    }
}

/// The finest level the host's log writes for plugins (0 error .. 4 trace), for the runner.
fn finest_level() -> Option<u8> {
    use b24_plugin_api::LogLevel::*;
    [Trace, Debug, Info, Warn, Error]
        .into_iter()
        .find(|level| crate::call::host_services::enabled(*level))
        .map(|level| level as u8)
}

/// In the forked child, before exec: the socket onto descriptor 3, and the host's job-control
/// signals ignored (the host stops its runners itself). [`Process::spawn`] adds the process
/// group, the death signal and the memory limit.
fn prepare_child(fd: i32) -> std::io::Result<()> {
    // SAFETY (whole body): async-signal-safe libc calls on descriptors of this child.
    unsafe {
        if fd == RUNNER_FD {
            if libc::fcntl(fd, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
        } else if libc::dup2(fd, RUNNER_FD) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(signal, libc::SIG_IGN);
        }
    }
    Ok(())
}

/// Reads one of a runner's output pipes into the log under the plugin's name, noting what
/// explains a death; `done` is signalled when the pipe ends.
fn forward_output(
    pipe: File,
    plugin: Arc<str>,
    stderr: bool,
    notes: Arc<Notes>,
    done: Option<mpsc::Sender<()>>,
) {
    let spawned =
        std::thread::Builder::new().name(format!("runner-out-{plugin}")).spawn(move || {
            crate::plugin_output::forward(pipe, &plugin, stderr, |text| {
                if text.contains("memory allocation of") {
                    notes.out_of_memory.store(true, Ordering::Relaxed);
                }
                if text.contains("has overflowed its stack") {
                    notes.stack_overflow.store(true, Ordering::Relaxed);
                }
            });
            drop(done);
        });
    if let Err(e) = spawned {
        tracing::error!("cannot read a runner's output: {e}");
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn exit_reasons_name_the_signal_the_exit_or_the_limit() {
        let quiet = Notes::default();
        let signaled = |signal: i32| Some(ExitStatus::from_raw(signal));
        assert_eq!(describe(signaled(libc::SIGSEGV), None, &quiet), "killed by SIGSEGV");
        assert_eq!(describe(signaled(libc::SIGABRT), None, &quiet), "aborted (SIGABRT)");
        assert_eq!(describe(Some(ExitStatus::from_raw(0)), None, &quiet), "exited with status 0");
        assert_eq!(
            describe(Some(ExitStatus::from_raw(3 << 8)), None, &quiet),
            "exited with status 3"
        );
        let killed = Some("killed: ran past kill_after_ms".to_owned());
        assert_eq!(
            describe(signaled(libc::SIGKILL), killed, &quiet),
            "killed: ran past kill_after_ms"
        );
        let oom = Notes::default();
        oom.out_of_memory.store(true, Ordering::Relaxed);
        assert!(describe(signaled(libc::SIGABRT), None, &oom).contains("memory_limit_mb"));
        let stack = Notes::default();
        stack.stack_overflow.store(true, Ordering::Relaxed);
        assert_eq!(
            describe(signaled(libc::SIGABRT), None, &stack),
            "aborted (SIGABRT): stack overflow"
        );
    }
}
