//! Where a plugin's own output goes: its `println!`/`eprintln!` and the panic messages of its
//! copy of std become lines of the host's log, with the plugin's name, instead of raw text on
//! the host's stdout and stderr.
//!
//! Plugins run in the host's process and each carries its own copy of std, so neither the
//! host's panic hook nor its `stdout()` sees what they print: they write to file descriptors 1
//! and 2. [`capture`] therefore keeps duplicates of the original stdout and stderr for the host
//! (the `listening on` line, and the log itself, which must not write into the pipe it reads),
//! points 1 and 2 at pipes, and reads each pipe on a thread that logs every line. Lines are
//! attributed through [`in_plugin`], which the host holds around every call into plugin code: a
//! line gets the plugin's name when exactly one plugin ran code while its bytes were written;
//! otherwise the log line names the candidates (`plugins`). A plugin's panic report (std's
//! `thread '…' panicked at FILE:LINE:` and the message on the next line) becomes one error line.
//!
//! The file descriptors are process-wide, so this module keeps the one piece of global state in
//! the host: which plugins are running code. A plugin in a runner process (the default
//! isolation) prints into pipes of its own, which [`forward`] reads with the same line rules.
//!
//! **A plugin cannot flood the log.** Each plugin has a budget (`[log]`, set by [`configure`]):
//! a line longer than `plugin_max_line_bytes` is cut there and marked `[truncated: N bytes]`
//! (the rest is read and thrown away, never held), and lines past a token bucket of
//! `plugin_lines_per_second` (bursts of `plugin_log_burst`) are dropped, its output and its
//! `Host::log` lines together ([`admit`]). Drops are counted in
//! `b24_plugin_log_dropped_lines_total{plugin}` and said in a WARN line at the first drop,
//! every 10 s while dropping goes on, and when the plugin's lines pass again. A runner cuts
//! and limits its plugin's `Host::log` lines itself before they become frames (with the same
//! [`Bucket`]) and reports what it dropped ([`count_dropped`]).

use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet, HashMap},
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, family::Family};

use crate::{config::PluginLogLimits, metrics::PluginLabel};

/// Which of the two streams a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    Stdout = 0,
    Stderr = 1,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Plugins running code now, and per stream the plugins that ran code since its last read,
/// with the last time they did.
struct Activity {
    running: BTreeMap<Arc<str>, usize>,
    since_read: [BTreeMap<Arc<str>, Instant>; 2],
}

/// A blocked reader wakes within microseconds of a write: a plugin that last ran code longer
/// ago than this before a read is not a likely writer of what the read returned (it still is,
/// when no other plugin is).
const RECENT: Duration = Duration::from_millis(50);

static ACTIVITY: Mutex<Activity> = Mutex::new(Activity {
    running: BTreeMap::new(),
    since_read: [BTreeMap::new(), BTreeMap::new()],
});

fn activity() -> std::sync::MutexGuard<'static, Activity> {
    ACTIVITY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Marks the calling thread as running code of plugin `name` until the guard is dropped. On
/// the delivery path: after a plugin's first call it allocates nothing (names stay in the map,
/// with a count of 0 when idle).
pub fn in_plugin(name: &str) -> InPlugin {
    let mut a = activity();
    let name = match a.running.get_key_value(name) {
        Some((known, _)) => known.clone(),
        None => Arc::from(name),
    };
    *a.running.entry(name.clone()).or_default() += 1;
    a.touch(&name);
    InPlugin { name }
}

/// See [`in_plugin`].
#[must_use = "the plugin counts as running only while the guard lives"]
pub struct InPlugin {
    name: Arc<str>,
}

impl Drop for InPlugin {
    fn drop(&mut self) {
        let mut a = activity();
        if let Some(count) = a.running.get_mut(&self.name) {
            *count = count.saturating_sub(1);
        }
        // Its last bytes may still be in the pipe: it stays a candidate until the next read.
        a.touch(&self.name);
    }
}

impl Activity {
    /// Notes that `name` runs code now, for both streams.
    fn touch(&mut self, name: &Arc<str>) {
        let now = Instant::now();
        for seen in &mut self.since_read {
            match seen.get_mut(&**name) {
                Some(at) => *at = now,
                None => {
                    seen.insert(name.clone(), now);
                }
            }
        }
    }
}

/// The plugins that may have written what `stream`'s reader just read: those running code now
/// or a moment ago; else every one that ran code since the previous read.
fn writers_since_last_read(stream: Stream) -> BTreeSet<Arc<str>> {
    let mut a = activity();
    let seen = std::mem::take(&mut a.since_read[stream as usize]);
    let now = Instant::now();
    let mut names: BTreeSet<Arc<str>> = a
        .running
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(name, _)| name.clone())
        .chain(
            seen.iter()
                .filter(|(_, at)| now.duration_since(**at) <= RECENT)
                .map(|(name, _)| name.clone()),
        )
        .collect();
    if names.is_empty() {
        names = seen.into_keys().collect();
    }
    names
}

/// The original stdout and stderr, kept for the host while plugins' output is captured;
/// dropping it points descriptors 1 and 2 back at them and ends the readers.
pub struct Captured {
    stdout: &'static File,
    stderr: &'static File,
    readers: Vec<JoinHandle<()>>,
}

impl Captured {
    /// The host's own stdout (for the `listening on` line).
    pub fn stdout(&self) -> &'static File {
        self.stdout
    }

    /// The host's own stderr: where the log must be written.
    pub fn stderr(&self) -> &'static File {
        self.stderr
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        // Restoring 1 and 2 closes the pipes' last write ends: the readers see the end, log
        // what is left and stop.
        let _ = dup2(self.stdout.as_raw_fd(), 1);
        let _ = dup2(self.stderr.as_raw_fd(), 2);
        // A child process a plugin started may still hold a write end: wait a moment, not
        // forever.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
        while self.readers.iter().any(|r| !r.is_finished()) && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    }
}

/// Points descriptors 1 and 2 at pipes read by threads that log each line (see the module
/// docs), and installs a panic hook that logs the host's own panics. Call once, before the
/// logger is set up with [`Captured::stderr`] as its output.
pub fn capture() -> io::Result<Captured> {
    let stdout: &'static File = Box::leak(Box::new(File::from(dup(1)?)));
    let stderr: &'static File = Box::leak(Box::new(File::from(dup(2)?)));
    let mut readers = Vec::new();
    for stream in [Stream::Stdout, Stream::Stderr] {
        let (read, write) = pipe()?;
        // Flush what the host's own std buffered for the old stdout first.
        let _ = io::stdout().flush();
        dup2(write.as_raw_fd(), stream as i32 + 1)?;
        drop(write);
        readers.push(
            std::thread::Builder::new()
                .name(format!("plugin-{}", stream.name()))
                .spawn(move || read_lines(File::from(read), stream))?,
        );
    }
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let location = info.location().map(|l| l.to_string()).unwrap_or_default();
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "(no message)".to_owned());
        tracing::error!(thread = thread.name().unwrap_or("<unnamed>"), %location, "panicked: {message}");
    }));
    Ok(Captured { stdout, stderr, readers })
}

/// A token bucket: `lines_per_second` on average, `burst` at once (no limit at a rate of 0).
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A full bucket for `limits`.
    pub fn new(limits: &PluginLogLimits) -> Bucket {
        let burst = f64::from(limits.burst.max(1));
        Bucket {
            rate: f64::from(limits.lines_per_second),
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Whether one more line may pass now.
    pub fn admit(&mut self) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let now = Instant::now();
        let refill = now.duration_since(self.last).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The budget (and metric label) of output lines no plugin can be named for.
const UNATTRIBUTED: &str = "(unknown)";

/// How often a plugin that keeps dropping lines is told about in the log.
const DROP_REPORT_EVERY: Duration = Duration::from_secs(10);

/// One plugin's log budget.
struct Budget {
    bucket: Bucket,
    /// Its `b24_plugin_log_dropped_lines_total` counter.
    dropped: Counter,
    /// Dropped since the last report line.
    unreported: u64,
    /// When the last report line was written; `None`: no drop reported yet.
    reported_at: Option<Instant>,
}

/// Every plugin's log budget.
struct Budgets {
    limits: PluginLogLimits,
    dropped: Family<PluginLabel, Counter>,
    by_plugin: HashMap<Arc<str>, Budget>,
}

static BUDGETS: Mutex<Option<Budgets>> = Mutex::new(None);

/// Sets the limits of every plugin's log lines and where drops are counted (the host's
/// `[log]` and metrics; called once at start, before plugins run). Until then, and in other
/// commands, lines are cut at the default length and not limited.
pub fn configure(limits: PluginLogLimits, dropped: Family<PluginLabel, Counter>) {
    *BUDGETS.lock().unwrap_or_else(|p| p.into_inner()) =
        Some(Budgets { limits, dropped, by_plugin: HashMap::new() });
}

/// The limits [`configure`] set (the defaults before).
pub fn limits() -> PluginLogLimits {
    BUDGETS.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map(|b| b.limits).unwrap_or_default()
}

/// Whether a log line of `plugin` may be written now; a dropped one is counted (and reported,
/// see the module docs).
pub fn admit(plugin: &str) -> bool {
    let (admitted, report) = {
        let mut guard = BUDGETS.lock().unwrap_or_else(|p| p.into_inner());
        let Some(budgets) = guard.as_mut() else { return true };
        let limits = budgets.limits;
        let budget = budgets.budget(plugin);
        if budget.bucket.admit() {
            // A flood is over: say how much of it went since the last report.
            let n = std::mem::take(&mut budget.unreported);
            (true, (n > 0).then_some((n, limits)))
        } else {
            budget.dropped.inc();
            (false, budget.note_dropped(1).map(|n| (n, limits)))
        }
    };
    if let Some((n, limits)) = report {
        report_dropped(plugin, n, &limits);
    }
    admitted
}

/// Counts `lines` of `plugin`'s log lines that its runner dropped before sending them.
pub fn count_dropped(plugin: &str, lines: u64) {
    let report = {
        let mut guard = BUDGETS.lock().unwrap_or_else(|p| p.into_inner());
        let Some(budgets) = guard.as_mut() else { return };
        let limits = budgets.limits;
        let budget = budgets.budget(plugin);
        budget.dropped.inc_by(lines);
        budget.note_dropped(lines).map(|n| (n, limits))
    };
    if let Some((n, limits)) = report {
        report_dropped(plugin, n, &limits);
    }
}

impl Budgets {
    fn budget(&mut self, plugin: &str) -> &mut Budget {
        if !self.by_plugin.contains_key(plugin) {
            let dropped = self.dropped.get_or_create(&PluginLabel { plugin: plugin.to_owned() });
            let budget = Budget {
                bucket: Bucket::new(&self.limits),
                dropped: dropped.clone(),
                unreported: 0,
                reported_at: None,
            };
            self.by_plugin.insert(Arc::from(plugin), budget);
        }
        self.by_plugin.get_mut(plugin).expect("inserted above")
    }
}

impl Budget {
    /// Notes `n` more dropped lines; the count to report now, if it is time.
    fn note_dropped(&mut self, n: u64) -> Option<u64> {
        self.unreported += n;
        let due = self.reported_at.is_none_or(|at| at.elapsed() >= DROP_REPORT_EVERY);
        if !due {
            return None;
        }
        self.reported_at = Some(Instant::now());
        Some(std::mem::take(&mut self.unreported))
    }
}

fn report_dropped(plugin: &str, lines: u64, limits: &PluginLogLimits) {
    tracing::warn!(
        plugin,
        dropped_lines = lines,
        lines_per_second = limits.lines_per_second,
        burst = limits.burst,
        "the plugin writes log lines faster than log.plugin_lines_per_second allows; lines dropped (b24_plugin_log_dropped_lines_total)"
    );
}

/// `text` cut to `max` bytes (on a character boundary) and marked, if longer.
pub fn clip(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    Cow::Owned(format!("{}… [truncated: {} bytes]", &text[..cut], text.len()))
}

/// The reader of one pipe: one log line per line of text, until the pipe ends.
fn read_lines(pipe: File, stream: Stream) {
    let mut lines = Lines::new(stream);
    each_chunk(pipe, |chunk| lines.push(chunk, &writers_since_last_read(stream)));
    lines.finish();
}

/// Hands `chunk` each read from `pipe` until it ends (or fails other than by an interruption).
fn each_chunk(mut pipe: File, mut chunk: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 8192];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => chunk(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// Logs one output pipe of a runner process line by line under `plugin`'s name, as [`capture`]
/// does for in-process plugins (a runner runs one plugin, so every line is its own);
/// `inspect` sees each chunk of text first. Returns when the pipe ends.
pub fn forward(pipe: File, plugin: &str, stderr: bool, mut inspect: impl FnMut(&str)) {
    let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
    let writers: BTreeSet<Arc<str>> = [Arc::from(plugin)].into_iter().collect();
    let mut lines = Lines::new(stream);
    each_chunk(pipe, |chunk| {
        inspect(&String::from_utf8_lossy(chunk));
        lines.push(chunk, &writers);
    });
    lines.finish();
}

/// Logs one line `plugin` wrote (an exec plugin's stdout line that is no protocol object, see
/// `runner::lines`), cut and limited as every other output line of the plugin.
pub fn output_line(plugin: &str, stderr: bool, text: &str) {
    let stream = if stderr { Stream::Stderr } else { Stream::Stdout };
    let text = clip(text, limits().max_line_bytes);
    let writers: BTreeSet<Arc<str>> = [Arc::from(plugin)].into_iter().collect();
    emit(stream, Kind::Line, &text, &writers);
}

/// Splits a stream into lines and logs them; joins std's two-line panic report into one.
struct Lines {
    stream: Stream,
    line: Vec<u8>,
    /// The longest line kept ([`limits`]); the rest of a longer one is only counted.
    max: usize,
    /// Bytes of the current line past `max`.
    cut: usize,
    writers: BTreeSet<Arc<str>>,
    /// `thread '…' panicked at FILE:LINE:COL`, waiting for the message on the next line.
    panic_at: Option<(String, BTreeSet<Arc<str>>)>,
}

impl Lines {
    fn new(stream: Stream) -> Lines {
        let max = limits().max_line_bytes;
        Lines { stream, line: Vec::new(), max, cut: 0, writers: BTreeSet::new(), panic_at: None }
    }

    fn push(&mut self, bytes: &[u8], writers: &BTreeSet<Arc<str>>) {
        for piece in bytes.split_inclusive(|b| *b == b'\n') {
            let ends = piece.ends_with(b"\n");
            let text = if ends { &piece[..piece.len() - 1] } else { piece };
            let room = self.max.saturating_sub(self.line.len());
            self.line.extend_from_slice(&text[..text.len().min(room)]);
            self.cut += text.len().saturating_sub(room);
            if !writers.is_subset(&self.writers) {
                self.writers.extend(writers.iter().cloned());
            }
            if ends {
                self.end_line();
            }
        }
    }

    fn end_line(&mut self) {
        let mut text =
            String::from_utf8_lossy(&self.line).trim_end_matches(['\n', '\r']).to_owned();
        if self.cut > 0 {
            text.push_str(&format!("… [truncated: {} bytes]", self.line.len() + self.cut));
        }
        let writers = std::mem::take(&mut self.writers);
        self.line.clear();
        self.cut = 0;
        // The output is captured before the host reads its config: the limit may change.
        self.max = limits().max_line_bytes;
        if let Some((at, panic_writers)) = self.panic_at.take() {
            let mut all = panic_writers;
            all.extend(writers);
            emit(self.stream, Kind::Panic { at: &at }, &text, &all);
            return;
        }
        if let Some(at) = panic_location(&text) {
            self.panic_at = Some((at.to_owned(), writers));
            return;
        }
        if text.trim().is_empty() || text.starts_with("note: run with `RUST_BACKTRACE=1`") {
            return;
        }
        emit(self.stream, Kind::Line, &text, &writers);
    }

    fn finish(&mut self) {
        if !self.line.is_empty() || self.cut > 0 {
            self.end_line();
        }
        if let Some((at, writers)) = self.panic_at.take() {
            emit(self.stream, Kind::Panic { at: &at }, "", &writers);
        }
    }
}

/// `FILE:LINE:COL` of std's panic report line `thread 'NAME' panicked at FILE:LINE:COL:` (newer
/// std writes `thread 'NAME' (TID) panicked at ...`).
fn panic_location(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("thread '")?;
    let (_, at) = rest.split_once(" panicked at ")?;
    Some(at.strip_suffix(':').unwrap_or(at))
}

enum Kind<'a> {
    Line,
    Panic { at: &'a str },
}

fn emit(stream: Stream, kind: Kind<'_>, text: &str, writers: &BTreeSet<Arc<str>>) {
    let stream = stream.name();
    let names = writers.iter().map(|n| &**n).collect::<Vec<_>>().join(",");
    // Lines that could be any of several plugins' share the budget of that set of names; lines
    // no plugin can be named for (written by a plugin's own thread outside any call) share one.
    if !admit(if names.is_empty() { UNATTRIBUTED } else { &names }) {
        return;
    }
    match (kind, writers.len()) {
        (Kind::Panic { at }, 1) => {
            tracing::error!(plugin = %names, stream, location = at, "plugin panicked: {text}")
        }
        (Kind::Panic { at }, _) => {
            tracing::error!(plugins = %names, stream, location = at, "plugin panicked: {text}")
        }
        (Kind::Line, 1) if stream == "stdout" => {
            tracing::info!(plugin = %names, stream, "plugin output: {text}")
        }
        (Kind::Line, _) if stream == "stdout" => {
            tracing::info!(plugins = %names, stream, "plugin output: {text}")
        }
        (Kind::Line, 1) => tracing::warn!(plugin = %names, stream, "plugin output: {text}"),
        (Kind::Line, _) => tracing::warn!(plugins = %names, stream, "plugin output: {text}"),
    }
}

fn dup(fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own, or -1.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

fn dup2(from: i32, to: i32) -> io::Result<()> {
    // SAFETY: dup2 on descriptors we hold; 1 and 2 are replaced atomically.
    if unsafe { libc::dup2(from, to) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two fresh descriptors on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors nobody else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_location_of_a_std_panic_report() {
        assert_eq!(
            panic_location("thread '<unnamed>' panicked at src/lib.rs:12:5:"),
            Some("src/lib.rs:12:5")
        );
        assert_eq!(panic_location("thread 'a' b' panicked at x.rs:1:1:"), Some("x.rs:1:1"));
        assert_eq!(
            panic_location("thread '<unnamed>' (11947) panicked at src/lib.rs:120:13:"),
            Some("src/lib.rs:120:13")
        );
        assert_eq!(panic_location("hello"), None);
    }

    #[test]
    fn a_long_line_is_cut_on_a_character_boundary_and_says_how_long_it_was() {
        assert_eq!(clip("short", 8), "short");
        assert_eq!(clip("0123456789", 4), "0123… [truncated: 10 bytes]");
        // "é" is two bytes: a cut inside it moves back to its start.
        assert_eq!(clip("aé", 2), "a… [truncated: 3 bytes]");
    }

    #[test]
    fn the_bucket_lets_a_burst_through_then_the_rate() {
        let limits = PluginLogLimits { max_line_bytes: 1024, lines_per_second: 10, burst: 5 };
        let mut bucket = Bucket::new(&limits);
        let passed = (0..20).filter(|_| bucket.admit()).count();
        // The burst, and what the rate refilled while the loop ran (well under a line).
        assert_eq!(passed, 5);
        let slept = Instant::now();
        std::thread::sleep(Duration::from_millis(250));
        let later = (0..20).filter(|_| bucket.admit()).count();
        // At least 2.5 lines' worth came back, at most what the time really slept allows.
        let most = ((slept.elapsed().as_secs_f64() * 10.0) as usize + 1).min(5);
        assert!(later >= 2 && later <= most, "{later} lines after {:?}", slept.elapsed());
        let off = PluginLogLimits { lines_per_second: 0, ..limits };
        let mut unlimited = Bucket::new(&off);
        assert!((0..10_000).all(|_| unlimited.admit()));
    }

    #[test]
    fn a_plugin_that_ran_since_the_last_read_stays_a_candidate() {
        let guard = in_plugin("unit-test-plugin");
        drop(guard);
        let names = writers_since_last_read(Stream::Stdout);
        assert!(names.contains("unit-test-plugin"));
        let again = writers_since_last_read(Stream::Stdout);
        assert!(!again.contains("unit-test-plugin"));
    }

    #[test]
    fn a_plugin_that_ran_long_before_the_read_is_not_a_writer_when_another_just_ran() {
        drop(in_plugin("unit-test-long-ago"));
        std::thread::sleep(RECENT * 2);
        drop(in_plugin("unit-test-just-now"));
        let names = writers_since_last_read(Stream::Stderr);
        assert!(names.contains("unit-test-just-now"));
        assert!(!names.contains("unit-test-long-ago"), "{names:?}");
    }
}
