//! **probe**: a test-only b24-host plugin. It records every call it receives as a JSON line and
//! misbehaves on command, so the end-to-end tests can watch what the host really delivers.
//!
//! Settings (`[plugin.probe.settings]`):
//! - `record`: file to append one JSON line per call to (required).
//! - `sleep_ms`: sleep this long in every call (a slow plugin).
//! - `panic_always`: panic in every call.
//! - `fail_while`: a file name; while that file exists, every call asks for a retry.
//! - `hold_while`: a file name; while that file exists, every call waits (after it is recorded).
//! - `shutdown_sleep_ms`: sleep this long in `shutdown` (a plugin that hangs at the end).
//! - `create_sleep_ms`: sleep this long when created (a plugin that hangs at a reload).
//! - `children`: file to append the process id of every child process the probe starts to, one
//!   a line (the process commands below), so a test can look for them in `/proc`.
//! - `log_flood_lines`, `log_flood_bytes`: when created, start a thread that writes this many
//!   lines of this many bytes each (0 lines: without end) alternately to stdout and through
//!   `Host::log`, as fast as it can (a plugin flooding the host's log).
//!
//! Commands in the field name of a user-field event:
//! `PRINT` prints a line on stdout and one on stderr, `PANIC` panics, `REJECT` rejects, `RETRY<n>` asks for a retry until attempt n+1,
//! `SLEEP<ms>` sleeps that long.
//!
//! Faults, for the crash tests (each on every attempt, after the call is recorded): `ABORT`
//! calls `std::process::abort()` (SIGABRT), `SEGV` writes through a pointer into the null page
//! (SIGSEGV; address 8 rather than 0, so that debug builds' null-pointer checks do not turn it
//! into an abort), `STACK` recurses without bound (stack overflow: Rust reports it and aborts),
//! `EXIT` calls `std::process::exit(0)` (the process ends with status 0), `LOOP` never returns,
//! `LEAK` allocates and touches memory without bound (16 MiB at a time).
//!
//! Processes (the child processes' ids go to the `children` file, if set): `FORKABORT` forks a
//! child that holds everything the plugin's process holds and waits for ever, then aborts;
//! `SPAWNABORT` starts two `sleep 100000` processes, then aborts; `SPAWN` starts two and
//! returns Done (children that outlive the call); `FORKLOOP` forks such a child and never
//! returns.
//!
//! `WRITE` in the field name changes the field through the host's REST call
//! (`crm.<entity>.userfield.update`, a write the portal echoes as an event) and records the
//! answer as a `rest` line. `READ` reads the field back (`crm.<entity>.userfield.get`), records
//! the answer as a `rest` line and passes a failure on with `?` (a transient one is a retry, any
//! other a rejection), as a plugin written the README's way does.
//!
//! Every call's record names the tokens the plugin was given: the user's access token, and
//! whether it got a refresh token (it never should: the host keeps those).

use std::{
    fs::{File, OpenOptions},
    io::Write,
    sync::Mutex,
    time::Duration,
};

use b24_plugin_api::{
    Create, Event, Outcome, Plugin, PluginContext, PluginError, ROption, UserFieldEvent,
    export_plugin,
};
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    record: String,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    panic_always: bool,
    #[serde(default)]
    fail_while: Option<String>,
    #[serde(default)]
    hold_while: Option<String>,
    #[serde(default)]
    shutdown_sleep_ms: u64,
    #[serde(default)]
    create_sleep_ms: u64,
    #[serde(default)]
    children: Option<String>,
    #[serde(default)]
    log_flood_lines: Option<u64>,
    #[serde(default)]
    log_flood_bytes: usize,
}

/// The probe plugin.
pub struct Probe {
    host: b24_plugin_api::Host,
    settings: Settings,
    file: Mutex<File>,
    fail_flag: Option<std::path::PathBuf>,
    hold_flag: Option<std::path::PathBuf>,
    children: Option<std::path::PathBuf>,
}

impl Create for Probe {
    fn create(ctx: PluginContext) -> Result<Self, PluginError> {
        let settings: Settings = toml::from_str(&ctx.settings)
            .map_err(|e| PluginError::reject(format!("probe settings: {e}")))?;
        std::thread::sleep(Duration::from_millis(settings.create_sleep_ms));
        let path = ctx.host.resolve_path(&settings.record);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| PluginError::reject(format!("cannot open {}: {e}", path.display())))?;
        ctx.host.info("probe created");
        let fail_flag = settings.fail_while.as_deref().map(|f| ctx.host.resolve_path(f));
        let hold_flag = settings.hold_while.as_deref().map(|f| ctx.host.resolve_path(f));
        let children = settings.children.as_deref().map(|f| ctx.host.resolve_path(f));
        if let Some(lines) = settings.log_flood_lines {
            flood(ctx.host.clone(), lines, settings.log_flood_bytes);
        }
        Ok(Probe {
            host: ctx.host,
            settings,
            file: Mutex::new(file),
            fail_flag,
            hold_flag,
            children,
        })
    }
}

impl Probe {
    fn record(&self, line: serde_json::Value) {
        let mut text = line.to_string();
        text.push('\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = file.write_all(text.as_bytes());
    }

    /// Appends a child's process id to the `children` file.
    fn note_child(&self, pid: u32) {
        let Some(path) = &self.children else { return };
        if let Ok(mut file) = OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{pid}");
            let _ = file.sync_all();
        }
    }

    /// Starts child processes as the process commands in `name` say (see the crate docs).
    fn processes(&self, name: &str) {
        if name.contains("SPAWN") {
            for _ in 0..2 {
                if let Ok(child) = std::process::Command::new("sleep").arg("100000").spawn() {
                    self.note_child(child.id());
                    // Not waited for: the child outlives this call.
                    std::mem::forget(child);
                }
            }
            if name.contains("SPAWNABORT") {
                std::process::abort();
            }
        }
        if name.contains("FORK") {
            // SAFETY: the child calls only async-signal-safe functions (pause, _exit) in a
            // loop: fork in a threaded process allows no more.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                loop {
                    // SAFETY: pause has no preconditions.
                    unsafe { libc::pause() };
                }
            }
            if pid > 0 {
                self.note_child(pid as u32);
            }
            if name.contains("FORKABORT") {
                std::process::abort();
            }
            if name.contains("FORKLOOP") {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
    }

    fn common(&self) -> Result<(), PluginError> {
        if self.fail_flag.as_ref().is_some_and(|flag| flag.exists()) {
            return Err(PluginError::retry("probe told to fail while its flag file exists"));
        }
        if self.settings.sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(self.settings.sleep_ms));
        }
        while self.hold_flag.as_ref().is_some_and(|flag| flag.exists()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.settings.panic_always {
            panic!("probe told to panic always");
        }
        Ok(())
    }
}

impl Plugin for Probe {
    const EVENTS: &'static [&'static str] = &["*"];

    fn on_user_field(&self, event: &UserFieldEvent) -> Result<Outcome, PluginError> {
        let user = match &event.user {
            ROption::RSome(_) if event.delivery.user_id_unknown() => json!("unknown"),
            ROption::RSome(user) => json!(user.user_id),
            ROption::RNone => json!("system"),
        };
        self.record(json!({
            "kind": "user_field",
            "event_id": event.delivery.event_id,
            "attempt": event.delivery.attempt,
            "code": event.code.as_str(),
            "action": event.action.as_str(),
            "entity": event.entity.name(),
            "entity_id": event.entity_id.as_str(),
            "field_id": event.field_id,
            "field_name": event.field_name.as_str(),
            "member_id": event.portal.member_id.as_str(),
            "user": user,
            "access_token": access_token(&event.user),
            "refresh_token": refresh_token(&event.user),
            "origin": format!("{:?}", event.delivery.origin),
            "message_id": extra(&event.delivery.extra, "message_id"),
            "timestamp": extra(&event.delivery.extra, "timestamp"),
            "version": env!("CARGO_PKG_VERSION"),
        }));
        let name = event.field_name.as_str();
        self.processes(name);
        fault(name);
        if name.contains("PRINT") {
            println!("probe prints for field {name}");
            eprintln!("probe complains about field {name}");
        }
        if name.contains("REJECT") {
            return Err(PluginError::reject("probe told to reject"));
        }
        self.common()?;
        if name.contains("PANIC") {
            panic!("probe told to panic by field {name}");
        }
        if let Some(n) = command_number(name, "RETRY")
            && u64::from(event.delivery.attempt) <= n
        {
            return Err(PluginError::retry(format!("probe told to retry {n} times")));
        }
        if let Some(ms) = command_number(name, "SLEEP") {
            std::thread::sleep(Duration::from_millis(ms));
        }
        if name.contains("READ") {
            let method = format!("crm.{}.userfield.get", event.entity.name());
            let params = json!({ "id": event.field_id });
            let answer = self.host.rest(&method, &params.to_string());
            self.record(json!({
                "kind": "rest",
                "event_id": event.delivery.event_id,
                "attempt": event.delivery.attempt,
                "method": method,
                "ok": answer.is_ok(),
                "error": answer.as_ref().err().map(|e| e.to_string()),
            }));
            answer?;
        }
        if name.contains("WRITE") {
            let method = format!("crm.{}.userfield.update", event.entity.name());
            let params = json!({ "id": event.field_id, "fields": { "EDIT_FORM_LABEL": "probe" } });
            let answer = self.host.rest(&method, &params.to_string());
            self.record(json!({
                "kind": "rest",
                "event_id": event.delivery.event_id,
                "method": method,
                "ok": answer.is_ok(),
                "error": answer.err().map(|e| e.to_string()),
            }));
        }
        Ok(Outcome::Done)
    }

    fn on_event(&self, event: &Event) -> Result<Outcome, PluginError> {
        let data: Vec<_> =
            event.data.iter().map(|kv| json!([kv.key.as_str(), kv.value.as_str()])).collect();
        self.record(json!({
            "kind": "generic",
            "event_id": event.delivery.event_id,
            "attempt": event.delivery.attempt,
            "code": event.code.as_str(),
            "member_id": event.portal.member_id.as_str(),
            "user": event.user.is_some(),
            "access_token": access_token(&event.user),
            "refresh_token": refresh_token(&event.user),
            "data": data,
            "origin": format!("{:?}", event.delivery.origin),
            "message_id": extra(&event.delivery.extra, "message_id"),
        }));
        self.common()?;
        Ok(Outcome::Done)
    }

    fn shutdown(&self) {
        self.record(json!({"kind": "shutdown"}));
        std::thread::sleep(Duration::from_millis(self.settings.shutdown_sleep_ms));
    }
}

/// Misbehaves as the fault command in `name` says (see the crate docs); returns if there is none.
fn fault(name: &str) {
    if name.contains("ABORT") {
        std::process::abort();
    }
    if name.contains("SEGV") {
        // Non-null and aligned, so no debug precondition check fires: the write itself faults.
        let address = std::hint::black_box(8usize);
        // SAFETY: none; the point is to fault. The write is volatile so it is not elided.
        unsafe { std::ptr::write_volatile(std::ptr::without_provenance_mut::<u64>(address), 1) };
    }
    if name.contains("STACK") {
        std::hint::black_box(recurse(0));
    }
    if name.contains("EXIT") {
        std::process::exit(0);
    }
    if name.contains("LOOP") {
        loop {
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    if name.contains("LEAK") {
        let mut kept: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut chunk = vec![0u8; 16 << 20];
            // Touch every page, so the memory is really committed.
            for byte in chunk.iter_mut().step_by(4096) {
                *byte = 1;
            }
            kept.push(std::hint::black_box(chunk));
        }
    }
}

/// Writes `lines` lines (0: without end) of `bytes` bytes each, alternately to stdout and through
/// `Host::log`, as fast as it can, on a thread of its own.
fn flood(host: b24_plugin_api::Host, lines: u64, bytes: usize) {
    std::thread::spawn(move || {
        let text = "x".repeat(bytes.max(1));
        let mut n = 0u64;
        while lines == 0 || n < lines {
            let on_stdout = n & 1 == 0;
            if on_stdout {
                println!("flood {n} {text}");
            } else {
                host.info(&format!("flood {n} {text}"));
            }
            n += 1;
        }
    });
}

/// Recurses until the stack overflows; the frame's buffer and the work after the call keep the
/// compiler from turning it into a loop.
fn recurse(depth: u64) -> u64 {
    let frame = std::hint::black_box([depth as u8; 1024]);
    if std::hint::black_box(depth) == u64::MAX {
        return 0;
    }
    recurse(depth + 1).wrapping_add(u64::from(frame[0]))
}

/// The user's access token the plugin was given, if any.
fn access_token(user: &ROption<b24_plugin_api::UserAuth>) -> Option<String> {
    user.as_ref().into_option().map(|u| u.access_token.expose().to_owned())
}

/// The refresh token the plugin was given, if any (the host gives none).
fn refresh_token(user: &ROption<b24_plugin_api::UserAuth>) -> Option<String> {
    user.as_ref().into_option().and_then(|u| u.refresh_token().map(|t| t.expose().to_owned()))
}

/// A value of the delivery's extra pairs.
fn extra(pairs: &[b24_plugin_api::KeyValue], key: &str) -> Option<String> {
    pairs.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

/// The number after `command` in `name`: `RETRY3` -> 3.
fn command_number(name: &str, command: &str) -> Option<u64> {
    let rest = &name[name.find(command)? + command.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

export_plugin!(Probe);
