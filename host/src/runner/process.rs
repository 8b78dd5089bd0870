//! A supervised child program, whatever it runs: started in a process group of its own, dying
//! with the host, watched by its own process (not by a pipe or socket it may share with its
//! children), its whole group killed when it ends or is killed, and the back-off between
//! restarts. The runner ([`super::handle`]) uses it for `b24-host runner`; nothing here knows
//! what the program speaks.
//!
//! What it guarantees:
//! - **Death is seen** even when a descendant still holds the program's descriptors (a forked
//!   child keeps a socket or pipe open for ever): a thread per process waits for the process
//!   itself (`waitid`), then runs the caller's `on_exit` (e.g. shuts the socket down, so its
//!   reader sees the end).
//! - **No descendant outlives it**: the program leads a new process group; when it ends, is
//!   killed ([`Process::kill`]) or stops, the group is killed with SIGKILL before the leader is
//!   reaped (so the group's id cannot have been reused). A descendant that leaves the group on
//!   purpose (`setsid`, `setpgid`) is not followed: run the host in a cgroup of its own (systemd
//!   does, and its `KillMode=control-group` ends everything at stop).
//! - **It dies with the host**: `PR_SET_PDEATHSIG(SIGKILL)`, armed in the child before `exec`
//!   and checked against a host that died during the fork; the signal follows the *thread*
//!   that forked, so the fork happens on the watching thread, which lives as long as the
//!   process. A SIGKILLed host cannot kill the group itself: a program that may leave children
//!   must kill its own group on its death signal (the runner does, see `child.rs`); for any
//!   other program only the process itself dies with the host.

use std::{
    io,
    os::unix::process::{CommandExt, ExitStatusExt},
    process::{ChildStderr, ChildStdin, ChildStdout, Command, ExitStatus},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

/// Limits applied to the child before `exec`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// `RLIMIT_AS` in bytes (address space), if any. glibc's malloc reserves 64 MiB of address
    /// space for each of its arenas (up to 8 per core, one per thread that allocates), which
    /// the limit counts though little of it is used: a limited program is started with
    /// `MALLOC_ARENA_MAX` = [`ARENAS_UNDER_A_LIMIT`] unless the environment sets it.
    pub address_space: Option<u64>,
}

/// glibc malloc arenas of a program under an address-space limit (see [`Limits`]).
pub const ARENAS_UNDER_A_LIMIT: &str = "4";

/// The pipes the command asked for (`Stdio::piped()`).
pub struct Pipes {
    /// The child's stdin.
    pub stdin: Option<ChildStdin>,
    /// The child's stdout.
    pub stdout: Option<ChildStdout>,
    /// The child's stderr.
    pub stderr: Option<ChildStderr>,
}

struct Life {
    /// How it ended, once reaped.
    status: Option<ExitStatus>,
    /// Reaped: its pid (and group id) may belong to another process now.
    reaped: bool,
}

struct Watched {
    pid: i32,
    life: Mutex<Life>,
    ended: Condvar,
}

impl Watched {
    fn life(&self) -> MutexGuard<'_, Life> {
        self.life.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A started child program and its process group; cheap to clone.
#[derive(Clone)]
pub struct Process {
    watched: Arc<Watched>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("pid", &self.watched.pid).finish_non_exhaustive()
    }
}

impl Process {
    /// Starts `command` as a supervised process (see the module docs): in a new process group,
    /// with `limits`, dying with the host. A thread named `watch-<name>` forks it, waits for it
    /// to end, kills its group, reaps it and then calls `on_exit` with its status. Hooks the
    /// caller set with `pre_exec` run first, in the child.
    pub fn spawn(
        name: &str,
        mut command: Command,
        limits: Limits,
        on_exit: impl FnOnce(ExitStatus) + Send + 'static,
    ) -> io::Result<(Process, Pipes)> {
        let (tx, rx) = std::sync::mpsc::channel();
        if limits.address_space.is_some() && std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            command.env("MALLOC_ARENA_MAX", ARENAS_UNDER_A_LIMIT);
        }
        std::thread::Builder::new().name(format!("watch-{name}")).spawn(move || {
            // SAFETY: getpid has no preconditions.
            let host = unsafe { libc::getpid() };
            command.process_group(0);
            // SAFETY: the hook runs in the forked child before exec and calls only
            // async-signal-safe functions (prctl, getppid, setrlimit).
            unsafe { command.pre_exec(move || prepare(host, limits)) };
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            let watched = Arc::new(Watched {
                pid: child.id() as i32,
                life: Mutex::new(Life { status: None, reaped: false }),
                ended: Condvar::new(),
            });
            let pipes = Pipes {
                stdin: child.stdin.take(),
                stdout: child.stdout.take(),
                stderr: child.stderr.take(),
            };
            // The handle is not waited on: this thread reaps the process.
            drop(child);
            let _ = tx.send(Ok((Process { watched: watched.clone() }, pipes)));
            let status = watch(&watched);
            on_exit(status);
        })?;
        rx.recv().map_err(|_| io::Error::other("the watching thread ended before the fork"))?
    }

    /// The process id (also its group's id).
    pub fn pid(&self) -> i32 {
        self.watched.pid
    }

    /// Kills the process and its whole group with SIGKILL; nothing once it was reaped.
    pub fn kill(&self) {
        self.signal_group(libc::SIGKILL);
    }

    /// Sends `signal` to the whole group while the process is not reaped.
    pub fn signal_group(&self, signal: i32) {
        let life = self.watched.life();
        if !life.reaped {
            // SAFETY: kill(2) on a group whose leader is our unreaped child: its id cannot have
            // been reused.
            unsafe { libc::kill(-self.watched.pid, signal) };
        }
    }

    /// How it ended, once it has (and was reaped).
    pub fn status(&self) -> Option<ExitStatus> {
        self.watched.life().status
    }

    /// Waits up to `limit` for it to end; its status, or `None` while it runs.
    pub fn wait_timeout(&self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        let mut life = self.watched.life();
        while !life.reaped {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            life = self
                .watched
                .ended
                .wait_timeout(life, deadline - now)
                .map(|(l, _)| l)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        life.status
    }

    /// Kills it (and its group) unless it ends within `grace`, then waits for it to end.
    pub fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        if let Some(status) = self.wait_timeout(grace) {
            return Some(status);
        }
        self.kill();
        self.wait_timeout(Duration::from_secs(10))
    }
}

/// The watching thread's wait: for the process to end (without reaping it), then its group
/// killed, then the process reaped.
fn watch(watched: &Watched) -> ExitStatus {
    loop {
        // SAFETY: a zeroed siginfo_t is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child; WNOWAIT leaves it unreaped (a zombie), so its pid
        // and group id stay ours until the waitpid below.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                watched.pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    // Whatever the program left behind goes with it.
    // SAFETY: as above: the leader is not reaped yet.
    unsafe { libc::kill(-watched.pid, libc::SIGKILL) };
    let mut life = watched.life();
    let mut raw = 0;
    let status = loop {
        // SAFETY: waitpid on our own child, reaping it.
        let r = unsafe { libc::waitpid(watched.pid, &mut raw, 0) };
        if r == watched.pid {
            break ExitStatus::from_raw(raw);
        }
        if r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
            continue;
        }
        // Reaped by someone else (nobody in this host should): its status is lost.
        break ExitStatus::from_raw(libc::SIGKILL);
    };
    life.status = Some(status);
    life.reaped = true;
    drop(life);
    watched.ended.notify_all();
    status
}

/// In the forked child, before exec (after the caller's hooks): death with the host, and the
/// limits. Only async-signal-safe calls.
fn prepare(host: i32, limits: Limits) -> io::Result<()> {
    // SAFETY (whole body): async-signal-safe libc calls on this child's own state.
    unsafe {
        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
            return Err(io::Error::last_os_error());
        }
        // The host may have died between fork and prctl: then nobody would kill us.
        if libc::getppid() != host {
            return Err(io::Error::other("the host is gone"));
        }
        if let Some(bytes) = limits.address_space {
            let rlim = libc::rlimit { rlim_cur: bytes, rlim_max: bytes };
            if libc::setrlimit(libc::RLIMIT_AS, &rlim) < 0 {
                return Err(io::Error::last_os_error());
            }
        }
    }
    Ok(())
}

/// Why a process ended, in the words of dead letters and `journal stats`: `killed by
/// SIGSEGV`, `aborted (SIGABRT)`, `exited with status 3`.
pub fn describe_exit(status: ExitStatus) -> String {
    match (status.signal(), status.code()) {
        (Some(libc::SIGABRT), _) => "aborted (SIGABRT)".into(),
        (Some(signal), _) => format!("killed by {}", signal_name(signal)),
        (None, Some(code)) => format!("exited with status {code}"),
        (None, None) => "ended".into(),
    }
}

fn signal_name(signal: i32) -> String {
    let name = match signal {
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGBUS => "SIGBUS",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGHUP => "SIGHUP",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGSYS => "SIGSYS",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        libc::SIGUSR2 => "SIGUSR2",
        _ => return format!("signal {signal}"),
    };
    name.to_owned()
}

/// The wait before restarting a program that died: [`Backoff::MIN`] doubling to
/// [`Backoff::MAX`], back to the minimum after a run of [`Backoff::HEALTHY`].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Backoff::MIN }
    }
}

impl Backoff {
    /// First wait.
    pub const MIN: Duration = Duration::from_millis(100);
    /// Longest wait.
    pub const MAX: Duration = Duration::from_secs(5);
    /// A process that lived this long was healthy: the next wait is the minimum again.
    pub const HEALTHY: Duration = Duration::from_secs(10);

    /// The wait before the next start, after a process that lived `lived` died.
    pub fn after_death(&mut self, lived: Duration) -> Duration {
        if lived >= Backoff::HEALTHY {
            self.next = Backoff::MIN;
        }
        self.next
    }

    /// The wait before the next start.
    pub fn current(&self) -> Duration {
        self.next
    }

    /// A start failed or is about to be tried: the wait after it doubles.
    pub fn grow(&mut self) {
        self.next = (self.next * 2).min(Backoff::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alive(pid: i32) -> bool {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rfind(") ").is_some_and(|at| !matches!(stat.as_bytes().get(at + 2), Some(b'Z' | b'X')))
    }

    /// Whether `pid` is gone within a while (a SIGKILL takes effect a moment after it is sent).
    fn ends(pid: i32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(pid) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// A shell that starts a background `sleep` (a child in its group) and prints its pid.
    fn shell_with_child(script: &str) -> (Process, i32, std::sync::mpsc::Receiver<ExitStatus>) {
        let mut command = Command::new("sh");
        command.args(["-c", script]).stdout(std::process::Stdio::piped());
        let (tx, rx) = std::sync::mpsc::channel();
        let (process, pipes) = Process::spawn("test", command, Limits::default(), move |s| {
            let _ = tx.send(s);
        })
        .unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(pipes.stdout.unwrap()), &mut line)
            .unwrap();
        (process, line.trim().parse().unwrap(), rx)
    }

    #[test]
    fn the_group_is_killed_when_the_leader_ends() {
        // The child keeps stdout open (it inherited it): only the process itself says it ended.
        let (process, child, ended) = shell_with_child("sleep 1000 & echo $!; exit 3");
        let status = ended.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(describe_exit(status), "exited with status 3");
        assert_eq!(process.status(), Some(status));
        assert!(ends(child), "the child {child} outlived its group's leader");
    }

    #[test]
    fn kill_ends_the_leader_and_its_group() {
        let (process, child, ended) = shell_with_child("sleep 1000 & echo $!; sleep 1000");
        assert!(alive(process.pid()) && alive(child));
        assert_eq!(process.wait_timeout(Duration::from_millis(50)), None);
        process.kill();
        let status = ended.recv_timeout(Duration::from_secs(20)).unwrap();
        assert_eq!(describe_exit(status), "killed by SIGKILL");
        assert!(ends(child));
        // After the reap a kill does nothing (the id may be someone else's now).
        process.kill();
    }

    #[test]
    fn exit_reasons_name_the_signal_or_the_status() {
        assert_eq!(describe_exit(ExitStatus::from_raw(libc::SIGSEGV)), "killed by SIGSEGV");
        assert_eq!(describe_exit(ExitStatus::from_raw(libc::SIGABRT)), "aborted (SIGABRT)");
        assert_eq!(describe_exit(ExitStatus::from_raw(0)), "exited with status 0");
        assert_eq!(describe_exit(ExitStatus::from_raw(3 << 8)), "exited with status 3");
        assert_eq!(signal_name(64), "signal 64");
    }

    #[test]
    fn backoff_doubles_to_its_cap_and_resets_after_a_healthy_run() {
        let mut backoff = Backoff::default();
        let short = Duration::from_millis(10);
        assert_eq!(backoff.after_death(short), Backoff::MIN);
        for _ in 0..10 {
            backoff.grow();
        }
        assert_eq!(backoff.after_death(short), Backoff::MAX);
        assert_eq!(backoff.after_death(Backoff::HEALTHY), Backoff::MIN);
    }
}
