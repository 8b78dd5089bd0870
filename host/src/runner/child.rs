//! The runner process (`b24-host runner`, hidden): loads one plugin through the same loader and
//! ABI checks as the host, and calls it for the host. It reads frames from descriptor 3 (see
//! [`super::protocol`]), runs each call on a lane thread of its own (one per host lane, so the
//! plugin sees the same concurrency as in the host), decodes the event's record there (the
//! only place its body is decoded: the host sends the record as the journal keeps it), and
//! answers with the outcome. `HostServices::log` and `rest` become
//! frames to the host, which logs the line and makes the REST call with its own client and
//! tokens. Its stdout and stderr are pipes the host logs under the plugin's name.
//!
//! It leads a process group of its own (the host starts it so, see [`super::process`]), which
//! every process the plugin starts joins; when the host goes, the runner takes that group with
//! it: its death signal (`PR_SET_PDEATHSIG`) is SIGUSR2, whose handler kills the group, and
//! the end of the host's socket does the same (a SIGKILLed host cannot kill the group itself).
//! `HostServices::log` lines finer than the host's log level are not sent, longer ones are cut
//! and a token bucket limits their rate as the host does (`[log]`), counting what it drops.

use std::{
    collections::HashMap,
    io::{BufReader, BufWriter, Write},
    os::{fd::FromRawFd, unix::net::UnixStream},
    process::ExitCode,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
    time::Duration,
};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, RResult, RStr, RString},
};
use b24_plugin_api::{
    ErrorKind, HostServices, HostServices_TO, LogLevel, Outcome, PluginError, RestError,
    RestErrorKind,
};

use super::{
    group::{die_with_the_host, end_group},
    protocol::{FromRunner, RUNNER_FD, ToRunner, WireError, read_frame, write_frame},
};
use crate::{
    call::{Envelope, Local},
    config::PluginLogLimits,
    plugin_output::{Bucket, clip},
    record::EventRecord,
};

/// The write half of the socket, shared by the lanes and the host services.
#[derive(Clone)]
struct Out(Arc<Mutex<BufWriter<UnixStream>>>);

impl Out {
    fn send(&self, message: &FromRunner) {
        let mut out = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // A host that went away ends this process through its death signal or our reader.
        let _ = write_frame(&mut *out, message, b"").and_then(|()| out.flush());
    }
}

thread_local! {
    /// The host's id of the call this lane thread is making.
    static CURRENT_CALL: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// REST requests waiting for the host's answer.
type Waiting = Arc<Mutex<HashMap<u64, mpsc::Sender<Result<String, RestError>>>>>;

/// What the plugin may log, and what it dropped.
struct LogBudget {
    limits: PluginLogLimits,
    /// The finest level sent (0 error .. 4 trace), `None`: nothing.
    level: Option<u8>,
    bucket: Mutex<Bucket>,
    /// Dropped since the last [`FromRunner::LogDropped`].
    dropped: AtomicU64,
}

/// The plugin's host services inside a runner: everything goes to the host.
#[derive(Clone)]
struct Remote {
    out: Out,
    config_dir: RString,
    state_dir: RString,
    next_request: Arc<AtomicU64>,
    waiting: Waiting,
    log: Arc<LogBudget>,
}

impl HostServices for Remote {
    fn log(&self, level: LogLevel, message: RStr<'_>) {
        let budget = &self.log;
        if budget.level.is_none_or(|finest| level as u8 > finest) {
            return;
        }
        if !budget.bucket.lock().unwrap_or_else(|p| p.into_inner()).admit() {
            budget.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let message = clip(message.as_str(), budget.limits.max_line_bytes).into_owned();
        self.out.send(&FromRunner::Log { level: level as u8, message });
    }

    fn config_dir(&self) -> RString {
        self.config_dir.clone()
    }

    fn state_dir(&self) -> RString {
        self.state_dir.clone()
    }

    fn rest(&self, method: RStr<'_>, params: RStr<'_>) -> RResult<RString, RestError> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.waiting.lock().unwrap_or_else(|p| p.into_inner()).insert(request, tx);
        self.out.send(&FromRunner::Rest {
            request,
            call: CURRENT_CALL.with(|c| c.get()),
            method: method.to_string(),
            params: params.to_string(),
        });
        match rx.recv() {
            Ok(Ok(result)) => RResult::ROk(result.into()),
            Ok(Err(e)) => RResult::RErr(e),
            Err(_) => RResult::RErr(RestError {
                kind: RestErrorKind::Unavailable,
                status: 0,
                error: "HOST_GONE".into(),
                description: "the host stopped answering".into(),
            }),
        }
    }
}

/// One call as a lane receives it (a lane receives them in runs, see `ToRunner::CallBatch`).
struct Call {
    call: u64,
    id: u64,
    attempt: u32,
    /// The event's record as the frame carried it (`None`: it does not parse).
    record: Option<EventRecord>,
}

/// The runner's lanes: the sender of each host lane's calls and its thread.
type Lanes = HashMap<usize, (LaneSender, std::thread::JoinHandle<()>)>;

/// The first call ids of the batches the host stopped.
type Stops = Arc<Mutex<std::collections::HashSet<u64>>>;

/// What feeds a lane thread.
struct LaneSender(mpsc::Sender<Vec<Call>>);

impl LaneSender {
    fn send(&self, calls: Vec<Call>) {
        let _ = self.0.send(calls);
    }
}

/// Host lane `lane`'s lane thread, started on its first call.
fn lane_of<'a>(
    lanes: &'a mut Lanes,
    lane: usize,
    instance: &Arc<Local>,
    out: &Out,
    stops: &Stops,
) -> &'a LaneSender {
    &lanes
        .entry(lane)
        .or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<Vec<Call>>();
            let instance = instance.clone();
            let out = out.clone();
            let stops = stops.clone();
            let thread = std::thread::Builder::new()
                .name(format!("plugin-{lane}"))
                .spawn(move || run_lane(&instance, &out, &rx, &stops))
                .expect("cannot start a lane thread");
            (LaneSender(tx), thread)
        })
        .0
}

/// Runs the runner until the host says shutdown or goes away.
pub fn main() -> ExitCode {
    // SAFETY: fcntl(F_GETFD) only asks whether descriptor 3 is open.
    if unsafe { libc::fcntl(RUNNER_FD, libc::F_GETFD) } < 0 {
        eprintln!("b24-host runner: this command is started by `b24-host serve`, not by hand");
        return ExitCode::FAILURE;
    }
    if !die_with_the_host() {
        end_group();
    }
    // SAFETY: the host started this process with its end of the socketpair on descriptor 3
    // (checked open above); nothing else in this process owns it.
    let socket = unsafe { UnixStream::from_raw_fd(RUNNER_FD) };
    // Not inherited by processes the plugin may start.
    // SAFETY: fcntl on a descriptor we own.
    unsafe { libc::fcntl(RUNNER_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    let writer = match socket.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("b24-host runner: cannot use descriptor 3: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = Out(Arc::new(Mutex::new(BufWriter::new(writer))));
    let mut input = BufReader::new(socket);
    let Ok(Some((
        ToRunner::Init { plugin, library, settings, config_dir, state_dir, log, log_level },
        _,
    ))) = read_frame::<ToRunner>(&mut input)
    else {
        eprintln!("b24-host runner: no Init frame from the host (this command is for the host)");
        return ExitCode::FAILURE;
    };
    let waiting: Waiting = Arc::default();
    let budget = Arc::new(LogBudget {
        limits: log,
        level: log_level,
        bucket: Mutex::new(Bucket::new(&log)),
        dropped: AtomicU64::new(0),
    });
    report_dropped_lines(&budget, &out);
    let host = HostServices_TO::from_ptr(
        RArc::new(Remote {
            out: out.clone(),
            config_dir: config_dir.into(),
            state_dir: state_dir.into(),
            next_request: Arc::new(AtomicU64::new(1)),
            waiting: waiting.clone(),
            log: budget,
        }),
        TD_Opaque,
    );
    let created = crate::loader::load_file(&plugin, std::path::Path::new(&library))
        .and_then(|loaded| Local::create(loaded, settings, host));
    let instance = match created {
        Ok(instance) => Arc::new(instance),
        Err(e) => {
            out.send(&FromRunner::InitFailed { reason: e.to_string() });
            return ExitCode::FAILURE;
        }
    };
    let info = instance.meta().clone();
    out.send(&FromRunner::Ready {
        name: info.name,
        version: info.version,
        events: info.events,
        concurrent: info.concurrent,
        api_version: info.api_version,
        load_us: info.load_time.as_micros() as u64,
    });
    let mut lanes: Lanes = HashMap::new();
    let stops: Stops = Arc::default();
    loop {
        let frame = match read_frame::<ToRunner>(&mut input) {
            Ok(Some(frame)) => frame,
            // The host went away: nothing is left to do for it, nor for what the plugin started.
            Ok(None) | Err(_) => end_group(),
        };
        match frame {
            (ToRunner::Call { call, lane, id, attempt }, tail) => {
                let item = Call { call, id, attempt, record: EventRecord::decode(&tail) };
                lane_of(&mut lanes, lane, &instance, &out, &stops).send(vec![item]);
            }
            (ToRunner::CallBatch { lane, items }, tail) => {
                let mut at = 0usize;
                let mut calls = Vec::with_capacity(items.len());
                for item in items {
                    // A length past the tail is the host's bug; the call gets no record (and is
                    // rejected as unreadable) rather than the runner a panic.
                    let end = at.saturating_add(item.len).min(tail.len());
                    let record = EventRecord::decode(&tail[at.min(end)..end]);
                    at = end;
                    calls.push(Call {
                        call: item.call,
                        id: item.id,
                        attempt: item.attempt,
                        record,
                    });
                }
                lane_of(&mut lanes, lane, &instance, &out, &stops).send(calls);
            }
            (ToRunner::StopBatch { call, .. }, _) => {
                stops.lock().unwrap_or_else(|p| p.into_inner()).insert(call);
            }
            (ToRunner::RestAnswer { request, result }, _) => {
                let waiter = waiting.lock().unwrap_or_else(|p| p.into_inner()).remove(&request);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(result.map_err(RestError::from));
                }
            }
            (ToRunner::Shutdown, _) => {
                // Calls in flight finish first.
                for (_, (tx, thread)) in lanes.drain() {
                    drop(tx);
                    let _ = thread.join();
                }
                instance.shutdown();
                out.send(&FromRunner::ShutdownDone);
                std::process::exit(0);
            }
            (ToRunner::Init { .. }, _) => {}
        }
    }
}

/// Tells the host, once a second at most, how many log lines the plugin's budget dropped.
fn report_dropped_lines(budget: &Arc<LogBudget>, out: &Out) {
    let (budget, out) = (budget.clone(), out.clone());
    let spawned = std::thread::Builder::new().name("log-dropped".into()).spawn(move || {
        loop {
            std::thread::sleep(Duration::from_secs(1));
            let lines = budget.dropped.swap(0, Ordering::Relaxed);
            if lines > 0 {
                out.send(&FromRunner::LogDropped { lines });
            }
        }
    });
    if let Err(e) = spawned {
        eprintln!("b24-host runner: cannot count dropped log lines: {e}");
    }
}

/// One lane: calls the plugin for each call it receives, one at a time and in order; in a run
/// of calls it stops at the first that is not Done or Skipped (the host re-queues the rest).
/// The body is decoded here, as a lane does in the host.
fn run_lane(instance: &Local, out: &Out, runs: &mpsc::Receiver<Vec<Call>>, stops: &Stops) {
    while let Ok(calls) = runs.recv() {
        let batch = calls.first().map(|c| c.call).unwrap_or_default();
        let stopped = || stops.lock().unwrap_or_else(|p| p.into_inner()).remove(&batch);
        for (index, item) in calls.into_iter().enumerate() {
            let call = item.call;
            if index > 0 && stopped() {
                out.send(&FromRunner::NotAttempted { call });
                break;
            }
            // The body is decoded here, once, by the guarded call (an undecodable one is
            // rejected there, as in the host).
            let result = match item.record {
                Some(record) => {
                    call_plugin(instance, call, &Envelope::new(item.id, record), item.attempt)
                }
                None => Err(PluginError::reject("the runner cannot read the event's record")),
            };
            let success = result.is_ok();
            let result = match result {
                Ok(outcome) => Ok(outcome == Outcome::Done),
                Err(e) => Err(WireError::from(&e)),
            };
            // Sent (and flushed) before the next call starts: the host sees each call's end,
            // for its watchdog and to know which call a crash interrupted.
            out.send(&FromRunner::Outcome { call, result });
            if !success {
                break;
            }
        }
        stopped();
    }
}

/// One guarded call of the plugin ([`Local::call`]) as the host's call `call`; the instance
/// is re-created after a panic.
fn call_plugin(
    instance: &Local,
    call: u64,
    envelope: &Envelope,
    attempt: u32,
) -> Result<Outcome, PluginError> {
    CURRENT_CALL.with(|c| c.set(Some(call)));
    let result = instance.call(envelope, attempt);
    CURRENT_CALL.with(|c| c.set(None));
    if let Err(e) = &result
        && e.kind == ErrorKind::Panicked
        && let Err(e) = instance.recreate()
    {
        eprintln!("cannot re-create the plugin after its panic: {e}");
    }
    result
}
