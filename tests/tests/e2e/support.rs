//! Shared helpers of the end-to-end tests: configs and event bodies.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use b24_host::cli::SendArgs;
pub use b24_tests::*;

/// How long a test waits for plugins to catch up before it fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

thread_local! {
    /// Whether this test thread's configs run audit-log and probe in-process (see
    /// [`in_process`]); the default is process isolation, as in production.
    static IN_PROCESS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `test` with `isolation = "in-process"` for audit-log and probe in every config that
/// [`config`] and [`probe`] write on this thread: the plugin-facing tests run in both modes.
pub fn in_process(test: fn()) {
    IN_PROCESS.with(|c| c.set(true));
    test();
}

/// The `isolation` line of this thread's mode.
fn isolation_line() -> &'static str {
    if IN_PROCESS.with(|c| c.get()) { "isolation = \"in-process\"\n" } else { "" }
}

/// For each named test function of the calling module, a test of the same name in a
/// submodule `in_process` that runs it with in-process plugins.
#[macro_export]
macro_rules! in_process_too {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[test]
                fn $name() {
                    $crate::support::in_process(super::$name);
                }
            )*
        }
    };
}

/// A config with the fixtures' portal, the given plugins enabled, and `extra` appended
/// (which may add `[plugin.NAME]` tables but not repeat the ones written here).
pub fn config(enabled: &[&str], extra: &str) -> String {
    let enabled: Vec<String> = enabled.iter().map(|p| format!("{p:?}")).collect();
    format!(
        r#"state_dir = "state"

[server]
path = "/b24/events"
max_body_bytes = 65536
shutdown_grace_ms = 5000

[log]
level = "debug"

[auth]
learn_tokens_on_install = true

[auth.portals]
"{MEMBER}" = "{TOKEN}"

[plugins]
dir = "plugins"
enabled = [{}]

[plugin.audit-log]
{isolation}
[plugin.audit-log.settings]
path = "audit.jsonl"

{extra}
"#,
        enabled.join(", "),
        isolation = isolation_line(),
    )
}

/// The `[plugin.probe]` tables with the given extra host-side keys and settings.
pub fn probe(host_keys: &str, settings: &str) -> String {
    format!(
        "[plugin.probe]\n{}{host_keys}\n[plugin.probe.retry]\nattempts = 3\nbase_ms = 10\ncap_ms = 50\n\n[plugin.probe.settings]\nrecord = \"probe.jsonl\"\n{settings}\n",
        isolation_line()
    )
}

/// Options for an event body built like Bitrix24 builds it.
pub fn args(event: &str) -> SendArgs {
    SendArgs {
        url: String::new(),
        event: event.to_owned(),
        field_id: 554,
        field_name: "UF_CRM_1724771514".to_owned(),
        entity_id: None,
        member_id: MEMBER.to_owned(),
        token: TOKEN.to_owned(),
        domain: "some-domain.bitrix24.com".to_owned(),
        handler_id: 15,
        client_endpoint: None,
        server_endpoint: None,
        access_token: None,
        refresh_token: None,
        system: false,
        json: false,
        print: false,
    }
}

/// The form body for `args`.
pub fn form(args: &SendArgs) -> String {
    b24_host::cmd::send::body(args).0
}

/// A user-field update of field `id` named `name`, form-encoded.
pub fn field_event(id: u64, name: &str) -> String {
    let mut a = args("ONCRMDEALUSERFIELDUPDATE");
    a.field_id = id;
    a.field_name = name.to_owned();
    form(&a)
}

/// Starts the host or fails the test with its log.
pub fn start(dir: &HostDir) -> RunningHost {
    dir.start().unwrap_or_else(|e| panic!("{e}"))
}

/// Installs the app on `portal` as the portal would: posts to `host` an ONAPPINSTALL carrying
/// the portal's first OAuth pair and endpoints, which the host stores for REST calls.
pub fn post_app_install(host: &RunningHost, portal: &b24_tests::fake_portal::FakePortal) {
    assert_eq!(host.post_form(&app_install(portal)).status, 200);
}

/// The body of `portal`'s install, with its first OAuth pair.
pub fn app_install(portal: &b24_tests::fake_portal::FakePortal) -> String {
    let (access, refresh) = portal.initial_oauth();
    let mut a = args("ONAPPINSTALL");
    a.access_token = Some(access);
    a.refresh_token = Some(refresh);
    a.client_endpoint = Some(portal.client_endpoint());
    a.server_endpoint = Some(portal.server_endpoint());
    form(&a)
}

/// A tiny xorshift step: random enough for test sequences, reproducible from its seed.
pub fn next_random(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

/// Posts a user-field event for each field id in `ids` (field name `name`), asserts each was
/// accepted, and returns the journal ids the host answered with, in order.
pub fn post_fields(host: &RunningHost, ids: std::ops::RangeInclusive<u64>, name: &str) -> Vec<u64> {
    ids.map(|id| {
        let answer = host.post_form(&field_event(id, name));
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.body.trim_start_matches("accepted ").parse::<u64>().unwrap()
    })
    .collect()
}

/// Posts a user-field event for field `field_id` and waits until the probe is called with it;
/// returns the probe's record lines before that call. The probe gets its events in journal
/// order, so these lines are all it will ever get of the events accepted before the sentinel:
/// the way to check that something did not reach it, without sleeping.
pub fn probe_sentinel(host: &RunningHost, dir: &HostDir, field_id: u64) -> Vec<serde_json::Value> {
    assert_eq!(host.post_form(&field_event(field_id, "UF_CRM_SENTINEL")).status, 200);
    let is_sentinel =
        |l: &serde_json::Value| l["kind"] == "user_field" && l["field_id"] == field_id;
    let arrived =
        eventually(PATIENCE, || dir.read_lines_lenient("probe.jsonl").iter().any(is_sentinel));
    assert!(arrived, "the sentinel event {field_id} never reached the probe:\n{}", host.log_text());
    dir.read_lines_lenient("probe.jsonl").into_iter().take_while(|l| !is_sentinel(l)).collect()
}

/// The journal ids of the probe's user-field calls so far, in call order.
pub fn probe_calls(dir: &HostDir) -> Vec<u64> {
    event_ids(&dir.read_lines("probe.jsonl"))
}

/// The `event_id`s of the user-field lines among `lines`, in order.
pub fn event_ids(lines: &[serde_json::Value]) -> Vec<u64> {
    lines
        .iter()
        .filter(|l| l["kind"] == "user_field")
        .map(|l| l["event_id"].as_u64().unwrap())
        .collect()
}

/// A small tmpfs mounted for one test (a folder on a disk that can fill up); unmounted on
/// drop. Needs root, as CI has.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`5120k`, `8m`) at `at`, or fails the test.
    pub fn mount(at: &std::path::Path, size: &str) -> Tmpfs {
        Tmpfs::try_mount(at, size).unwrap_or_else(|e| panic!("{e} (this test needs root)"))
    }

    /// [`Tmpfs::mount`], or `None` with a loud notice when it cannot be mounted (not root)
    /// and `CI` is not `true`; under `CI=true` that fails the test (CI runs as root).
    pub fn mount_or_skip(test: &str, at: &std::path::Path, size: &str) -> Option<Tmpfs> {
        match Tmpfs::try_mount(at, size) {
            Ok(disk) => Some(disk),
            Err(e) if std::env::var("CI").as_deref() != Ok("true") => {
                use std::io::Write;
                // Straight to the stderr handle: libtest captures `eprintln!`, and a skip must show.
                let _ = writeln!(
                    std::io::stderr(),
                    "\n==== SKIPPED {test}: {e} (it needs root) ====\n==== (under CI=true this test fails) ====\n"
                );
                None
            }
            Err(e) => panic!("{test}: {e}"),
        }
    }

    fn try_mount(at: &std::path::Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(at).map_err(|e| format!("cannot create {}: {e}", at.display()))?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !status.success() {
            return Err(format!("cannot mount a tmpfs at {}", at.display()));
        }
        Ok(Tmpfs(at.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Posts user-field events `UF_CRM_OK` from field id 10_000 on until stopped; returns the
/// field ids answered 200 and the number of requests that were not.
pub fn steady_client(addr: String, path: String, stop: Arc<AtomicBool>) -> (Vec<u64>, u64) {
    let mut acked = Vec::new();
    let mut refused = 0;
    let mut id = 10_000;
    while !stop.load(Ordering::SeqCst) {
        let body = field_event(id, "UF_CRM_OK");
        match try_request(
            &addr,
            "POST",
            &path,
            Some("application/x-www-form-urlencoded"),
            body.as_bytes(),
        ) {
            Ok(answer) if answer.status == 200 => acked.push(id),
            _ => refused += 1,
        }
        id += 1;
        std::thread::sleep(Duration::from_millis(10));
    }
    (acked, refused)
}

/// The dead letters of `plugin` (event id -> reason).
pub fn dead_letters(dir: &HostDir, plugin: &str) -> Vec<(u64, String)> {
    let dead = dir.journal(&["dead", "--plugin", plugin]);
    dead["rows"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|r| {
                    (
                        r["id"].as_u64().unwrap_or(0),
                        r["dead"]["reason"].as_str().unwrap_or("").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether process `pid` runs: it exists and is not a zombie (a process that ended but was not
/// reaped: where the container's init does not reap orphans, killed children stay so).
pub fn alive(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The state follows the command name in parentheses, which may itself hold ") ".
    match stat.rfind(") ") {
        Some(at) => !matches!(stat.as_bytes().get(at + 2), Some(b'Z' | b'X')),
        None => false,
    }
}

/// The value of the first sample in a `/metrics` exposition whose line starts with `series`
/// (a whole series, `b24_plugin_backlog{plugin="probe"}`, or its start).
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// [`metric`] of a fresh scrape of `host`'s `/metrics`.
pub fn scrape(host: &RunningHost, series: &str) -> Option<f64> {
    metric(&host.admin_request("GET", "/metrics").body, series)
}
