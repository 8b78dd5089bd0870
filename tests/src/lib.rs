//! Harness for the b24-host end-to-end tests: builds the real host binary and plugins once,
//! lays out a temporary host folder (config, plugins, state), starts the host as a child
//! process on port 0, talks plain HTTP/1.1 to it, and reads what the plugins wrote.

pub mod browser;
pub mod fake_portal;
pub mod http;
pub mod http_target;
pub mod nats;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The workspace root (the folder with the top-level Cargo.toml).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_owned()
}

/// The folder cargo builds into for this workspace.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Paths of the built artefacts.
#[derive(Debug)]
pub struct Built {
    /// The `b24-host` binary.
    pub host: PathBuf,
    /// The folder with the compiled plugin libraries.
    pub lib_dir: PathBuf,
}

/// The environment variables (by prefix) that cargo sets for a test process.
const CARGO_TEST_VARS: &[&str] = &[
    "CARGO_PKG_",
    "CARGO_MANIFEST_",
    "CARGO_CRATE_",
    "CARGO_BIN_",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// Builds the host and the plugins once per test run (`cargo build`, debug profile).
pub fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        let mut cargo = Command::new(env!("CARGO"));
        // What `cargo test` sets for this test process (the package's name, version, folder..)
        // is not passed on: ring's build script watches some of it, so this build and the next
        // `cargo test` would rebuild ring, and everything above it up to the host, in turn.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if CARGO_TEST_VARS.iter().any(|prefix| name_text.starts_with(prefix)) {
                cargo.env_remove(&name);
            }
        }
        let status = cargo
            .current_dir(workspace_root())
            .args([
                "build",
                "--quiet",
                "-p",
                "b24-host",
                "-p",
                "audit-log",
                "-p",
                "probe",
                "-p",
                "field-registry",
            ])
            .status()
            .expect("cannot run cargo");
        assert!(status.success(), "cargo build of the host and plugins failed");
        let dir = target_dir().join("debug");
        Built { host: dir.join("b24-host"), lib_dir: dir }
    })
}

/// The library file of a plugin built in this workspace, e.g. `libaudit_log.so`.
pub fn plugin_file(name: &str) -> String {
    format!(
        "{}{}{}",
        std::env::consts::DLL_PREFIX,
        name.replace('-', "_"),
        std::env::consts::DLL_SUFFIX
    )
}

/// A temporary host folder: `host.toml`, `plugins/`, `state/`, and whatever plugins write.
pub struct HostDir {
    /// The temporary folder (removed on drop).
    pub dir: tempfile::TempDir,
}

impl HostDir {
    /// An empty host folder with a `plugins/` folder holding copies of the named workspace
    /// plugins (copies, so each test loads its own file).
    pub fn new(plugins: &[&str]) -> HostDir {
        let dir = tempfile::tempdir().expect("cannot make a temp dir");
        std::fs::create_dir_all(dir.path().join("plugins")).expect("plugins dir");
        let host_dir = HostDir { dir };
        for name in plugins {
            host_dir.add_plugin_file(&built().lib_dir.join(plugin_file(name)));
        }
        host_dir
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Copies a library into `plugins/`.
    pub fn add_plugin_file(&self, library: &Path) {
        let target = self.path().join("plugins").join(library.file_name().expect("file name"));
        std::fs::copy(library, &target)
            .unwrap_or_else(|e| panic!("cannot copy {} into plugins/: {e}", library.display()));
    }

    /// Writes `host.toml` with `text`.
    pub fn write_config(&self, text: &str) -> PathBuf {
        let path = self.path().join("host.toml");
        std::fs::write(&path, text).expect("cannot write host.toml");
        path
    }

    /// Reads a JSON-lines file, skipping lines that do not parse (a line torn by SIGKILL).
    pub fn read_lines_lenient(&self, file: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.path().join(file)).unwrap_or_default();
        text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
    }

    /// Runs `b24-host journal ARGS --json` here and parses the answer.
    pub fn journal(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["journal"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", "host.toml", "--json"]);
        let out = self.run_cli(&all);
        assert!(
            out.status.success(),
            "b24-host {all:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("journal --json prints JSON")
    }

    /// Per plugin (name -> backlog, retrying, dead) from `journal stats`.
    pub fn stats(&self) -> std::collections::BTreeMap<String, (u64, u64, u64)> {
        let answer = self.journal(&["stats"]);
        answer["plugins"]
            .as_array()
            .map(|plugins| {
                plugins
                    .iter()
                    .map(|p| {
                        let n = |k: &str| p[k].as_u64().unwrap_or(0);
                        (
                            p["plugin"].as_str().unwrap_or_default().to_owned(),
                            (n("backlog"), n("retrying"), n("dead")),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Reads a JSON-lines file the plugins wrote (empty if it does not exist yet).
    pub fn read_lines(&self, file: &str) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.path().join(file)).unwrap_or_default();
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
            .collect()
    }

    /// Waits until `file` has at least `n` lines matching `pred`, up to `limit`; returns them.
    pub fn wait_lines(
        &self,
        file: &str,
        n: usize,
        limit: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Vec<serde_json::Value> {
        let mut lines = Vec::new();
        eventually(limit, || {
            lines = self.read_lines(file).into_iter().filter(|l| pred(l)).collect();
            lines.len() >= n
        });
        lines
    }

    /// Waits until every id of `expected` is the `key` (a number) of a line of `file`, up to
    /// `limit`; returns the ids still missing then. Waiting on distinct ids, not on a count of
    /// lines: an event delivered again after a crash writes its line twice, and a count would
    /// be reached before the last event's line is written.
    pub fn wait_ids(
        &self,
        file: &str,
        key: &str,
        expected: &std::collections::BTreeSet<u64>,
        limit: Duration,
    ) -> Vec<u64> {
        let mut missing = Vec::new();
        eventually(limit, || {
            let seen: std::collections::BTreeSet<u64> =
                self.read_lines(file).iter().filter_map(|l| l[key].as_u64()).collect();
            missing = expected.difference(&seen).copied().collect();
            missing.is_empty()
        });
        missing
    }

    /// Runs `b24-host ARGS` to completion in this folder.
    pub fn run_cli(&self, args: &[&str]) -> std::process::Output {
        let mut command = Command::new(&built().host);
        command.current_dir(self.path()).args(args);
        output_or_hang(command, &format!("b24-host {}", args.join(" ")))
    }

    /// Starts `b24-host serve --config host.toml --listen 127.0.0.1:0` in this folder and waits
    /// for it to listen.
    pub fn start(&self) -> Result<RunningHost, String> {
        self.start_with(Launch::default())
    }

    /// Starts the host as `launch` says.
    pub fn start_with(&self, launch: Launch) -> Result<RunningHost, String> {
        let log_path = self.path().join(format!("host-{}.log", unique()));
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let listen = launch.listen.unwrap_or_else(|| "127.0.0.1:0".to_owned());
        let host = built().host.display().to_string();
        // The shell sets the limits; it ignores SIGXFSZ, so writes past a file size limit fail
        // with EFBIG (a full disk, as far as the host can tell) instead of killing the process.
        let mut limits = String::new();
        if let Some(kib) = launch.file_size_limit_kib {
            limits.push_str(&format!("ulimit -f {kib}; trap '' XFSZ; "));
        }
        if let Some(n) = launch.open_files_soft {
            limits.push_str(&format!("ulimit -S -n {n}; "));
        }
        if let Some(n) = launch.open_files {
            limits.push_str(&format!("ulimit -n {n}; "));
        }
        // Socket activation as systemd does it: the socket as fd 3, LISTEN_FDS=1 and
        // LISTEN_PID naming the host's own pid (the shell's, which `exec` keeps).
        let mut redirect = String::new();
        if let Some(fd) = launch.listen_fd {
            limits.push_str("export LISTEN_PID=$$ LISTEN_FDS=1; ");
            if fd != 3 {
                redirect = format!(" 3<&{fd} {fd}<&-");
            }
        }
        let mut command = if limits.is_empty() {
            Command::new(&host)
        } else {
            let mut c = Command::new("bash");
            c.args(["-c", &format!("{limits}exec \"$0\" \"$@\"{redirect}"), &host]);
            c
        };
        if let Some(fd) = launch.listen_fd {
            use std::os::unix::process::CommandExt;
            // SAFETY: only `fcntl`, which is async-signal-safe, runs between fork and exec: the
            // socket is inherited by this child alone (it stays close-on-exec in this process).
            unsafe {
                command.pre_exec(move || {
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let mut child = command
            .current_dir(self.path())
            .args([
                "serve",
                "--config",
                "host.toml",
                "--listen",
                &listen,
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .env("RUST_LOG", "info,b24_host=debug")
            .envs(launch.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let stdout = child.stdout.take().expect("piped stdout");
        // The first line says where the host listens; a thread reads it and then keeps
        // draining stdout, so the host never blocks on a full pipe. A host that neither prints
        // it nor exits (stuck opening a damaged journal, say) is killed after HUNG and the
        // start fails with its log, instead of the test waiting for ever.
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = first_tx.send(lines.next());
            for _ in lines {}
        });
        let first = match first_rx.recv_timeout(HUNG) {
            Ok(first) => first,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!(
                    "host neither listened nor exited in {HUNG:?} (killed):\n{log}"
                ));
            }
        };
        match first {
            Some(Ok(line)) if line.contains("listening on http://") => {
                let admin = line
                    .split(" admin http://")
                    .nth(1)
                    .map(|a| a.trim().trim_end_matches('/').to_owned());
                let url = line
                    .split("listening on ")
                    .nth(1)
                    .unwrap_or_default()
                    .split(' ')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned();
                let addr = url
                    .trim_start_matches("http://")
                    .split('/')
                    .next()
                    .unwrap_or_default()
                    .to_owned();
                let host = RunningHost {
                    admin,
                    child,
                    addr,
                    path: format!("/{}", url.splitn(4, '/').nth(3).unwrap_or("")),
                    log: log_path,
                };
                if !launch.before_plugins && !host.wait_log("plugins ready", PLUGINS_PATIENCE) {
                    return Err(format!("host never logged `plugins ready`:\n{}", host.log_text()));
                }
                Ok(host)
            }
            _ => {
                let status = match wait_or_kill(&mut child, HUNG) {
                    Some(status) => status.to_string(),
                    None => format!("still running after {HUNG:?}, killed"),
                };
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                Err(format!("host did not start ({status}):\n{log}"))
            }
        }
    }
}

/// How long [`HostDir::start_with`] waits for the plugins (beyond the default
/// `plugins.start_timeout_ms` of 30 s).
const PLUGINS_PATIENCE: Duration = Duration::from_secs(60);

/// How to start the host.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// `--listen` address (default `127.0.0.1:0`).
    pub listen: Option<String>,
    /// A limit on the size of files the host may write, in KiB (`ulimit -f`).
    pub file_size_limit_kib: Option<u64>,
    /// A soft limit on open files (`ulimit -S -n`), below the hard one.
    pub open_files_soft: Option<u64>,
    /// A limit on open files, soft and hard (`ulimit -n`): the host cannot raise it.
    pub open_files: Option<u64>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// A listening socket (its descriptor in this process) handed to the host as systemd's
    /// socket activation does: as fd 3, with `LISTEN_FDS=1` and `LISTEN_PID`.
    pub listen_fd: Option<std::os::fd::RawFd>,
    /// Return at the `listening on` line: the host listens before its plugins are created. By
    /// default the start waits until the host logs `plugins ready` (every plugin created,
    /// failed, or past `plugins.start_timeout_ms`), so tests see the plugins as they were.
    pub before_plugins: bool,
}

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

fn unique() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A host process started by [`HostDir::start`]; killed on drop.
pub struct RunningHost {
    child: Child,
    /// The admin listener, `127.0.0.1:PORT`.
    pub admin: Option<String>,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The event path.
    pub path: String,
    /// The host's stderr log.
    pub log: PathBuf,
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Body text.
    pub body: String,
}

impl RunningHost {
    /// Posts a form body (as Bitrix24 does) to the event path.
    pub fn post_form(&self, body: &str) -> Answer {
        self.request(
            "POST",
            &self.path.clone(),
            Some("application/x-www-form-urlencoded"),
            body.as_bytes(),
        )
    }

    /// Posts a JSON body to the event path.
    pub fn post_json(&self, body: &str) -> Answer {
        self.request("POST", &self.path.clone(), Some("application/json"), body.as_bytes())
    }

    /// Sends one request on a fresh connection and reads the whole answer.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Answer {
        try_request(&self.addr, method, path, content_type, body).expect("cannot talk to the host")
    }

    /// The host's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the host's log contains `needle`, up to `limit`.
    pub fn wait_log(&self, needle: &str, limit: Duration) -> bool {
        eventually(limit, || self.log_text().contains(needle))
    }

    /// GET (or POST) on the admin listener.
    pub fn admin_request(&self, method: &str, path: &str) -> Answer {
        let admin = self.admin.as_deref().expect("the host has an admin listener");
        try_request(admin, method, path, None, b"").expect("cannot talk to the admin listener")
    }

    /// Sends a signal (`HUP`, `TERM`, ...) to the host.
    pub fn signal(&self, name: &str) {
        signal(&self.child, name);
    }

    /// The host's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for a graceful exit; returns whether it exited successfully.
    pub fn stop(mut self) -> bool {
        signal(&self.child, "TERM");
        match self.wait_exit(Duration::from_secs(30)) {
            Some(status) => status.success(),
            None => {
                let _ = self.child.kill();
                false
            }
        }
    }

    /// Waits up to `limit` for the process to exit; its status, or `None` if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        eventually(limit, || self.child.try_wait().ok().flatten())
    }

    /// Kills the host with SIGKILL, as a crash would.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for RunningHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill").args([format!("-{name}"), child.id().to_string()]).status();
}

/// Sends one request to `addr` on a fresh connection ([`http::request`]); an error when there
/// is no answer (the host is down or died mid-request).
pub fn try_request(
    addr: &str,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Answer, String> {
    let headers: Vec<(&str, &str)> =
        content_type.map(|ct| ("Content-Type", ct)).into_iter().collect();
    let response = http::request(addr, method, path, &headers, body)?;
    Ok(Answer { status: response.status, body: response.body.trim().to_owned() })
}

/// What [`eventually`] polls: `true`, or `Some` value, once the awaited state is reached.
pub trait Reached {
    /// Whether the state is reached.
    fn reached(&self) -> bool;
}

impl Reached for bool {
    fn reached(&self) -> bool {
        *self
    }
}

impl<T> Reached for Option<T> {
    fn reached(&self) -> bool {
        self.is_some()
    }
}

/// Calls `check` every 20 ms until it reports the state reached or `limit` has passed, and
/// returns its last answer: the one polling loop of the tests. Callers assert on the answer (or
/// on the state itself, for a message that shows it), so a test that waits in vain fails.
pub fn eventually<R: Reached>(limit: Duration, mut check: impl FnMut() -> R) -> R {
    let started = Instant::now();
    loop {
        let answer = check();
        if answer.reached() || started.elapsed() >= limit {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// [`eventually`] for work that takes as long as it takes on a loaded machine: calls `check`
/// every 20 ms until it reports the state reached, and gives up only when the progress it also
/// reports (a count, a size: anything that changes while the work goes on) has stayed the same
/// for `stall`. So a slow machine only waits longer, and a stalled one still fails.
pub fn eventually_progressing<R: Reached, P: PartialEq>(
    stall: Duration,
    mut check: impl FnMut() -> (R, P),
) -> R {
    let mut since = Instant::now();
    let mut last: Option<P> = None;
    loop {
        let (answer, progress) = check();
        if answer.reached() {
            return answer;
        }
        if last.as_ref() != Some(&progress) {
            last = Some(progress);
            since = Instant::now();
        } else if since.elapsed() >= stall {
            return answer;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A reference event body made by Bitrix24's own PHP encoder (committed fixtures in
/// host/tests/fixtures), by event code.
pub fn fixture(name: &str) -> String {
    let path = workspace_root().join("host/tests/fixtures").join(format!("{name}.form"));
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// The member id and token of the fixtures.
pub const MEMBER: &str = "a223c6b3710f85df22e9377d6c4f7553";
/// The application token of the fixtures.
pub const TOKEN: &str = "51856fefc120afa4b628cc82d3935cce";

/// Builds a plugin crate outside the workspace, as a plugin author would: `manifest` as its
/// Cargo.toml and `lib_rs` as src/lib.rs, in `work/<name>`, with the workspace's Cargo.lock
/// (same dependency versions, so the build needs no network) and one target folder for all such
/// crates, `target/author-plugins`, so their dependencies build once. Returns a copy of the built
/// library of this call's own (`target/author-plugins/copies/<pid>-<n>/`): the output file is
/// shared, and cargo's lock ends with the build, so a test building the same crate name at the
/// same time (ops' two reload tests both build probe 0.2.0 from their own folders) could
/// rebuild it between another's build and its copy; builds and copies here take turns.
pub fn build_author_crate(work: &Path, name: &str, manifest: &str, lib_rs: &str) -> PathBuf {
    let krate = work.join(name);
    std::fs::create_dir_all(krate.join("src")).expect("create the crate folder");
    std::fs::write(krate.join("Cargo.toml"), manifest).expect("write Cargo.toml");
    std::fs::write(krate.join("src/lib.rs"), lib_rs).expect("write src/lib.rs");
    build_author_folder(&krate, name)
}

/// Builds the plugin crate (package `name`) in the folder `krate` as [`build_author_crate`]
/// does (the workspace's Cargo.lock, offline, `target/author-plugins`) and returns this call's
/// copy of its library.
pub fn build_author_folder(krate: &Path, name: &str) -> PathBuf {
    static TURN: std::sync::Mutex<u64> = std::sync::Mutex::new(0);
    let mut turn = TURN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    *turn += 1;
    let output = author_cargo(krate, &["build", "--quiet", "--offline"]);
    assert!(
        output.status.success(),
        "building {name} failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let target = target_dir().join("author-plugins");
    let copies = target.join("copies").join(format!("{}-{turn}", std::process::id()));
    std::fs::create_dir_all(&copies).expect("create the copies folder");
    let library = copies.join(plugin_file(name));
    std::fs::copy(target.join("debug").join(plugin_file(name)), &library)
        .expect("copy the built library");
    library
}

/// How long a command the tests run to completion may take before it counts as hung: far
/// beyond what any of them needs on a loaded machine, so it never decides a test by speed,
/// only turns a command that never ends (a loop on a damaged file, say) into a failure that
/// names it, instead of a suite that never finishes.
pub const HUNG: Duration = Duration::from_secs(300);

/// Waits for `child` to exit, for at most `limit`; past that kills it (and reaps it) and
/// returns `None`. Polled from 1 ms up, since most commands end within milliseconds.
pub fn wait_or_kill(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            _ if started.elapsed() >= limit => break,
            _ => std::thread::sleep(pause),
        }
        pause = (pause * 2).min(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Runs `command` to completion like `Command::output`, but kills it and fails, naming `what`
/// and showing what it printed so far, once it has run for [`HUNG`].
pub fn output_or_hang(command: Command, what: &str) -> std::process::Output {
    output_within(command, what, HUNG)
}

/// [`output_or_hang`] with a limit of its own (a cold cargo build needs more than [`HUNG`]).
pub fn output_within(mut command: Command, what: &str, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    // Each pipe is read on its own thread, so a child filling one never waits on the other.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let Some(status) = wait_or_kill(&mut child, limit) else {
        let out = stdout.join().unwrap_or_default();
        let err = stderr.join().unwrap_or_default();
        panic!(
            "{what} still ran after {limit:?} (hung; killed): {}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        );
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// Runs cargo with `args` in the plugin crate folder `krate` as an author would, with the
/// workspace's Cargo.lock put there and `target/author-plugins` as its target folder (so
/// `--offline` builds need no network and dependencies build once); returns its output.
pub fn author_cargo(krate: &Path, args: &[&str]) -> std::process::Output {
    std::fs::copy(workspace_root().join("Cargo.lock"), krate.join("Cargo.lock"))
        .expect("copy Cargo.lock");
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .current_dir(krate)
        .args(args)
        .env("CARGO_TARGET_DIR", target_dir().join("author-plugins"));
    // A first build compiles the plugin API and its dependencies: minutes on a loaded machine,
    // never half an hour.
    output_within(cargo, &format!("cargo {} in {}", args.join(" "), krate.display()), AUTHOR_BUILD)
}

/// How long an author's cargo command may run before it counts as hung.
const AUTHOR_BUILD: Duration = Duration::from_secs(1800);
