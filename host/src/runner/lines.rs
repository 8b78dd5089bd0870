//! The exec protocol: what the host and an exec plugin (`kind = "exec"`) say to each other, one
//! JSON object per line (UTF-8) on the program's stdin and stdout. An exec plugin is a runner
//! with this codec in place of the frames ([`super::protocol`]): [`super::handle`] starts and
//! supervises it the same way and translates these lines to and from its frames' messages, so
//! calls, batches (the `window`), REST answers, crashes and restarts are one code path.
//!
//! Host to plugin: `hello` (first), `event` (per delivery, `id` the call's opaque id),
//! `rest_result`/`rest_error` (the answer to a `rest` line, by its `call`), `shutdown` (then
//! stdin closes). Plugin to host: `ready`, `done`/`skip`/`retry`/`reject` (by `id`), `rest`
//! (during an event, by its `id`), `log`. A stdout line that is no protocol object is the
//! plugin's output, logged under its name with the plugin's log budget; a line longer than
//! [`MAX_LINE`] is read and thrown away (counted, never held), so a flood cannot grow the host.
//!
//! An event's JSON is built once per event, whatever the number of plugins ([`EventJson`]): a
//! small cache keyed by event id holds the part that does not depend on the delivery.

use std::{
    collections::{HashMap, VecDeque},
    io::{Read, Write},
    process::{ChildStdin, ChildStdout},
    sync::{Arc, Mutex, mpsc},
};

use b24_plugin_api::Secret;
use serde_json::Value as Json;

use super::protocol::{FromRunner, WireError, WireRestError};
use crate::{
    call::Envelope,
    decode::{self, Decoded, EventKind, php_json},
    record::Source,
};

/// The protocol's version, in `hello`.
pub const PROTOCOL: u32 = 1;

/// The longest line either side uses: a longer stdout line is dropped (and said so in a
/// WARN line).
pub const MAX_LINE: usize = 8 << 20;

/// Events whose JSON [`EventJson`] keeps: enough for every exec or http plugin working on the
/// same stretch of the journal.
const CACHED_EVENTS: usize = 1024;

/// The delivery-independent part of each event's JSON, built once per event and shared by
/// every plugin that receives it.
#[derive(Default)]
pub struct EventJson {
    cache: Mutex<VecDeque<(u64, Arc<str>)>>,
}

impl EventJson {
    /// The fields of `envelope`'s event object after `attempt` (no braces, see
    /// [`event_fields`]), built on the first ask for the event by any plugin; why its
    /// journaled body does not decode (the caller rejects it: a dead letter).
    pub fn of(&self, envelope: &Envelope) -> Result<Arc<str>, String> {
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, json)) = cache.iter().rev().find(|(id, _)| *id == envelope.id) {
                return Ok(json.clone());
            }
        }
        let json: Arc<str> = event_fields(envelope)
            .map_err(|e| format!("cannot decode the journaled body: {e}"))?
            .into();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= CACHED_EVENTS {
            cache.pop_front();
        }
        cache.push_back((envelope.id, json.clone()));
        Ok(json)
    }

    /// The whole event object for one delivery: `{"type":"event","id":..,"event_id":..,
    /// "attempt":..,` then the cached fields.
    /// A body that does not decode (which the worker rejects before it calls, see
    /// [`EventJson::of`]) gets the fields its record's metadata knows.
    pub fn object(&self, id: &str, envelope: &Envelope, attempt: u32) -> String {
        let fields = self.of(envelope).unwrap_or_else(|_| meta_fields(envelope).into());
        let mut out = String::with_capacity(fields.len() + 64);
        out.push_str("{\"type\":\"event\",\"id\":");
        php_json::write_json_str(id, &mut out);
        out.push_str(&format!(",\"event_id\":{},\"attempt\":{attempt},", envelope.id));
        out.push_str(&fields);
        out.push('}');
        out
    }
}

/// An event's fields as the exec protocol sends them (without the braces and the per-delivery
/// `type`, `id`, `event_id`, `attempt`): `code`, `origin`, `portal`, `data` (the decoded tree,
/// as PHP's `json_encode` of `$_REQUEST['data']`), `ts`, for user-field events `entity`,
/// `action`, `field_id`, `field_name`, and `user` and `access_token` when the event has them;
/// also `received_at_ms`, and `extra` (offline rows' `message_id`, `user_id`) when present.
/// Never a refresh token or the application token (the journaled body has them blanked, and
/// `auth` is not sent).
/// The body is parsed once here, for the tree and the event view both.
pub fn event_fields(envelope: &Envelope) -> Result<String, decode::DecodeError> {
    let record = &envelope.record;
    let tree = decode::decode_tree(&record.raw, record.meta.format)?.map;
    let data = tree.get("data").cloned();
    let event = Decoded::from_tree(tree)?;
    let meta = &record.meta;
    let mut out = String::with_capacity(record.raw.len() + 256);
    out.push_str("\"code\":");
    php_json::write_json_str(&event.code, &mut out);
    out.push_str(",\"origin\":");
    out.push_str(match meta.source {
        Source::Online => "\"online\"",
        Source::Offline => "\"offline\"",
    });
    out.push_str(",\"portal\":{\"member_id\":");
    php_json::write_json_str(&event.auth.member_id, &mut out);
    out.push_str(",\"domain\":");
    php_json::write_json_str(&event.auth.domain, &mut out);
    out.push_str("},\"data\":");
    match data {
        Some(data) => php_json::write_value(&data, &mut out),
        None => out.push_str("null"),
    }
    out.push_str(",\"ts\":");
    match event.ts {
        Some(ts) => out.push_str(&ts.to_string()),
        None => out.push_str("null"),
    }
    if let EventKind::UserField(field) = &event.kind {
        out.push_str(",\"entity\":");
        php_json::write_json_str(&field.entity_id, &mut out);
        out.push_str(",\"action\":");
        php_json::write_json_str(field.action.as_str(), &mut out);
        out.push_str(&format!(",\"field_id\":{}", field.field_id));
        out.push_str(",\"field_name\":");
        php_json::write_json_str(&field.field_name, &mut out);
    }
    let offline_user = (meta.source == Source::Offline)
        .then(|| meta.extra.iter().find(|(k, _)| k == "user_id"))
        .flatten()
        .and_then(|(_, id)| id.parse::<u64>().ok())
        .filter(|id| *id > 0);
    let user = event.auth.user.as_ref().and_then(|u| u.user_id).or(offline_user);
    if let Some(user) = user {
        out.push_str(&format!(",\"user\":{user}"));
    }
    if let Some(tokens) = &event.auth.user {
        out.push_str(",\"access_token\":");
        php_json::write_json_str(tokens.access_token.expose(), &mut out);
    }
    push_received_and_extra(envelope, &mut out);
    Ok(out)
}

/// `received_at_ms` and `extra` (when there are extra facts) of `envelope`'s record.
fn push_received_and_extra(envelope: &Envelope, out: &mut String) {
    let meta = envelope.meta();
    out.push_str(&format!(",\"received_at_ms\":{}", meta.received_at_ms));
    if !meta.extra.is_empty() {
        out.push_str(",\"extra\":{");
        for (i, (k, v)) in meta.extra.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            php_json::write_json_str(k, out);
            out.push(':');
            php_json::write_json_str(v, out);
        }
        out.push('}');
    }
}

/// The fields of an event whose body does not decode: what its record's metadata knows
/// (`code`, `origin`, `portal`, `data` null, `received_at_ms`, `extra`).
fn meta_fields(envelope: &Envelope) -> String {
    let meta = envelope.meta();
    let mut out = String::from("\"code\":");
    php_json::write_json_str(&meta.code, &mut out);
    out.push_str(match meta.source {
        Source::Online => ",\"origin\":\"online\"",
        Source::Offline => ",\"origin\":\"offline\"",
    });
    out.push_str(",\"portal\":{\"member_id\":");
    php_json::write_json_str(&meta.member_id, &mut out);
    out.push_str(",\"domain\":");
    php_json::write_json_str(&meta.domain, &mut out);
    out.push_str("},\"data\":null");
    push_received_and_extra(envelope, &mut out);
    out
}

/// The `hello` line: the plugin's name and its settings table as JSON.
pub fn hello(plugin: &str, settings: &str) -> Result<Vec<u8>, String> {
    let table: toml::Table = toml::from_str(settings)
        .map_err(|e| format!("plugin `{plugin}`: its settings cannot be read back: {e}"))?;
    let settings = serde_json::to_value(&table)
        .map_err(|e| format!("plugin `{plugin}`: its settings cannot be sent as JSON: {e}"))?;
    let hello = serde_json::json!({
        "type": "hello",
        "protocol": PROTOCOL,
        "plugin": plugin,
        "settings": settings,
    });
    Ok(line(hello.to_string()))
}

/// `{"type":"shutdown"}`.
pub fn shutdown() -> Vec<u8> {
    line("{\"type\":\"shutdown\"}".to_owned())
}

/// The answer to the plugin's `rest` line `call`: `rest_result` with the method's `result`,
/// or `rest_error` with Bitrix24's error code, its description and the HTTP status.
pub fn rest_answer(call: &str, result: Result<String, WireRestError>) -> Vec<u8> {
    let mut out = String::new();
    match result {
        Ok(json) => {
            out.push_str("{\"type\":\"rest_result\",\"call\":");
            php_json::write_json_str(call, &mut out);
            out.push_str(",\"result\":");
            // JSON has no raw line breaks inside strings: any in the text is whitespace.
            let json = json.trim();
            if json.is_empty() {
                out.push_str("null");
            } else {
                out.extend(json.chars().map(|c| if c == '\n' || c == '\r' { ' ' } else { c }));
            }
            out.push('}');
        }
        Err(e) => {
            out.push_str("{\"type\":\"rest_error\",\"call\":");
            php_json::write_json_str(call, &mut out);
            out.push_str(",\"code\":");
            php_json::write_json_str(&e.error, &mut out);
            out.push_str(",\"description\":");
            php_json::write_json_str(&e.description, &mut out);
            out.push_str(&format!(",\"status\":{}}}", e.status));
        }
    }
    line(out)
}

fn line(mut text: String) -> Vec<u8> {
    text.push('\n');
    text.into_bytes()
}

/// The environment of an exec plugin's program: `PATH`, `HOME` and `LANG` from the host's, then
/// the plugin's `env` table; nothing else.
pub fn environment(own: &[(String, Secret)]) -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = ["PATH", "HOME", "LANG"]
        .into_iter()
        .filter_map(|name| std::env::var(name).ok().map(|v| (name.to_owned(), v)))
        .collect();
    for (name, value) in own {
        vars.retain(|(n, _)| n != name);
        vars.push((name.clone(), value.expose().to_owned()));
    }
    vars
}

/// The plugin's `rest` lines waiting for an answer: the host's request id → the plugin's
/// `call` string.
#[derive(Clone, Default)]
pub struct Requests {
    next: Arc<Mutex<(u64, HashMap<u64, String>)>>,
}

impl Requests {
    fn add(&self, call: String) -> u64 {
        let mut guard = self.next.lock().unwrap_or_else(|p| p.into_inner());
        guard.0 += 1;
        let request = guard.0;
        guard.1.insert(request, call);
        request
    }

    /// The plugin's `call` of request `request`, which is answered now.
    pub fn take(&self, request: u64) -> Option<String> {
        self.next.lock().unwrap_or_else(|p| p.into_inner()).1.remove(&request)
    }
}

/// What the stdout reader hands the supervising thread.
pub enum Incoming {
    /// `{"type":"ready"}`, with the optional `version` it names.
    Ready {
        /// `version`, if the plugin says one.
        version: Option<String>,
    },
    /// A message, as a runner would have sent it.
    Message(FromRunner),
    /// The program ended (its watch saw it): what is still in the pipe follows, then the end.
    Exited,
}

/// Reads the plugin's stdout on a thread of its own: each protocol line becomes an
/// [`Incoming`] on `to`, every other line is logged as the plugin's output. Ends at the end
/// of the pipe (or when nobody listens any more).
pub fn read_stdout(
    stdout: ChildStdout,
    plugin: Arc<str>,
    requests: Requests,
    to: mpsc::Sender<Incoming>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name(format!("exec-out-{plugin}")).spawn(move || {
        let mut reader = LineReader::new(stdout, MAX_LINE);
        loop {
            match reader.next_line() {
                Ok(Some(Line::Text(bytes))) => {
                    if let Some(incoming) = parse(&bytes, &plugin, &requests)
                        && to.send(incoming).is_err()
                    {
                        return;
                    }
                }
                Ok(Some(Line::TooLong(len))) => {
                    if crate::plugin_output::admit(&plugin) {
                        tracing::warn!(plugin = %plugin, bytes = len, max = MAX_LINE, "the plugin wrote a stdout line longer than the protocol allows; dropped");
                    }
                }
                Ok(None) | Err(_) => return,
            }
        }
    })?;
    Ok(())
}

/// What a stdout line says; `None` for a line that is not for the host (logged here).
fn parse(bytes: &[u8], plugin: &str, requests: &Requests) -> Option<Incoming> {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end_matches('\r');
    if text.trim().is_empty() {
        return None;
    }
    let object = match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(object)) if object.get("type").is_some_and(Json::is_string) => object,
        _ => {
            crate::plugin_output::output_line(plugin, false, text);
            return None;
        }
    };
    let str_of = |key: &str| object.get(key).and_then(Json::as_str);
    let kind = str_of("type").unwrap_or_default();
    let call = || -> Option<u64> { str_of("id")?.parse().ok() };
    let outcome = |result: Result<bool, WireError>| -> Option<Incoming> {
        let Some(call) = call() else {
            unusable(plugin, kind, "its `id` names no event sent to the plugin");
            return None;
        };
        Some(Incoming::Message(FromRunner::Outcome { call, result }))
    };
    let error = || str_of("error").unwrap_or("").to_owned();
    match kind {
        "ready" => Some(Incoming::Ready { version: str_of("version").map(str::to_owned) }),
        "done" => outcome(Ok(true)),
        "skip" => outcome(Ok(false)),
        "retry" => outcome(Err(WireError { kind: 0, message: error() })),
        "reject" => outcome(Err(WireError { kind: 1, message: error() })),
        "log" => {
            let level = match str_of("level").unwrap_or("info").to_ascii_lowercase().as_str() {
                "error" | "critical" | "alert" | "emergency" => 0,
                "warn" | "warning" => 1,
                "debug" => 3,
                "trace" => 4,
                _ => 2,
            };
            let message = match object.get("message") {
                Some(Json::String(s)) => s.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            Some(Incoming::Message(FromRunner::Log { level, message }))
        }
        "rest" => {
            let Some(call_name) = str_of("call").map(str::to_owned) else {
                unusable(plugin, kind, "it has no `call` to answer to");
                return None;
            };
            let method = str_of("method").unwrap_or_default().to_owned();
            let params = match object.get("params") {
                None | Some(Json::Null) => "{}".to_owned(),
                Some(params) => params.to_string(),
            };
            let request = requests.add(call_name);
            // No `id` (or not a number): made outside an event; the host answers it with an
            // error, as it has no portal to call.
            Some(Incoming::Message(FromRunner::Rest { request, call: call(), method, params }))
        }
        other => {
            unusable(plugin, other, "the host does not know this type");
            None
        }
    }
}

fn unusable(plugin: &str, kind: &str, why: &str) {
    if crate::plugin_output::admit(plugin) {
        tracing::warn!(plugin, r#type = kind, "a protocol line from the plugin was ignored: {why}");
    }
}

/// A line from a stream.
enum Line {
    /// Its bytes, without the newline.
    Text(Vec<u8>),
    /// A line longer than the limit, thrown away: its length.
    TooLong(usize),
}

/// Splits a stream into lines of at most `max` bytes, holding no more than that.
struct LineReader<R> {
    input: R,
    buf: Vec<u8>,
    start: usize,
    max: usize,
}

impl<R: Read> LineReader<R> {
    fn new(input: R, max: usize) -> LineReader<R> {
        LineReader { input, buf: Vec::with_capacity(64 * 1024), start: 0, max }
    }

    /// The next line; `None` at the end (a last line without a newline is a line).
    fn next_line(&mut self) -> std::io::Result<Option<Line>> {
        let mut skipped: Option<usize> = None;
        loop {
            if let Some(at) = self.buf[self.start..].iter().position(|b| *b == b'\n') {
                let end = self.start + at;
                let line = match skipped {
                    Some(n) => Line::TooLong(n + (end - self.start)),
                    None => Line::Text(self.buf[self.start..end].to_vec()),
                };
                self.start = end + 1;
                return Ok(Some(line));
            }
            // No newline in what is held: too long already, or read more.
            let held = self.buf.len() - self.start;
            if skipped.is_some() || held > self.max {
                *skipped.get_or_insert(0) += held;
                self.buf.clear();
                self.start = 0;
            } else if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let len = self.buf.len();
            self.buf.resize(len + 64 * 1024, 0);
            let n = loop {
                match self.input.read(&mut self.buf[len..]) {
                    Ok(n) => break n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.truncate(len);
                        return Err(e);
                    }
                }
            };
            self.buf.truncate(len + n);
            if n == 0 {
                if let Some(skipped) = skipped {
                    return Ok(Some(Line::TooLong(skipped + len)));
                }
                if len == 0 {
                    return Ok(None);
                }
                let line = std::mem::take(&mut self.buf);
                return Ok(Some(Line::Text(line)));
            }
        }
    }
}

/// Writes lines to the plugin's stdin on a thread of its own, so no host thread ever blocks
/// on a program that does not read (a full pipe): each line is written (and so flushed) as it
/// comes, lines already waiting together.
#[derive(Clone)]
pub struct Outbox {
    to: mpsc::Sender<Option<Vec<u8>>>,
}

impl Outbox {
    /// Starts the writer of `stdin`.
    pub fn start(stdin: ChildStdin, plugin: &str) -> std::io::Result<Outbox> {
        let (to, from) = mpsc::channel::<Option<Vec<u8>>>();
        std::thread::Builder::new().name(format!("exec-in-{plugin}")).spawn(move || {
            let mut stdin = stdin;
            let mut pending = Vec::new();
            while let Ok(first) = from.recv() {
                let mut close = first.is_none();
                pending.extend(first.unwrap_or_default());
                while !close && let Ok(more) = from.try_recv() {
                    match more {
                        Some(bytes) => pending.extend(bytes),
                        None => close = true,
                    }
                }
                // A program that died: its supervisor sees the death; nothing more to write.
                if stdin.write_all(&pending).and_then(|()| stdin.flush()).is_err() {
                    return;
                }
                pending.clear();
                if close {
                    return;
                }
            }
        })?;
        Ok(Outbox { to })
    }

    /// Queues one line (with its newline).
    pub fn send(&self, line: Vec<u8>) {
        let _ = self.to.send(Some(line));
    }

    /// Closes stdin after what is queued.
    pub fn close(&self) {
        let _ = self.to.send(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<String> {
        let mut reader = LineReader::new(input, max);
        let mut out = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            out.push(match line {
                Line::Text(t) => String::from_utf8(t).unwrap(),
                Line::TooLong(n) => format!("<{n}>"),
            });
        }
        out
    }

    #[test]
    fn lines_are_split_and_a_long_one_is_only_counted() {
        assert_eq!(lines(b"a\nbb\n\nc", 10), ["a", "bb", "", "c"]);
        let long = format!("x\n{}\ny\n", "z".repeat(300_000));
        assert_eq!(lines(long.as_bytes(), 1000), ["x", "<300000>", "y"]);
        let unterminated = "z".repeat(200_000);
        assert_eq!(lines(unterminated.as_bytes(), 1000), ["<200000>"]);
    }

    #[test]
    fn protocol_lines_become_messages_and_others_are_output() {
        let requests = Requests::default();
        let outcome = |line: &str| match parse(line.as_bytes(), "t", &requests) {
            Some(Incoming::Message(FromRunner::Outcome { call, result })) => {
                Some((call, result.map_err(|e| (e.kind, e.message))))
            }
            _ => None,
        };
        assert_eq!(outcome(r#"{"type":"done","id":"7"}"#), Some((7, Ok(true))));
        assert_eq!(outcome(r#"{"type":"skip","id":"8"}"#), Some((8, Ok(false))));
        assert_eq!(
            outcome(r#"{"type":"retry","id":"9","error":"later"}"#),
            Some((9, Err((0, "later".into()))))
        );
        assert_eq!(
            outcome(r#"{"type":"reject","id":"10","error":"no"}"#),
            Some((10, Err((1, "no".into()))))
        );
        assert_eq!(outcome(r#"{"type":"done","id":"nope"}"#), None);
        assert_eq!(outcome("hello world"), None);
        assert_eq!(outcome(r#"{"no":"type"}"#), None);
        assert!(matches!(
            parse(br#"{"type":"ready","version":"1.2"}"#, "t", &requests),
            Some(Incoming::Ready { version: Some(v) }) if v == "1.2"
        ));
        let Some(Incoming::Message(FromRunner::Rest { request, call, method, params })) = parse(
            br#"{"type":"rest","id":"3","call":"c1","method":"crm.deal.get","params":{"id":5}}"#,
            "t",
            &requests,
        ) else {
            panic!("not a rest call")
        };
        assert_eq!(
            (call, method.as_str(), params.as_str()),
            (Some(3), "crm.deal.get", r#"{"id":5}"#)
        );
        assert_eq!(requests.take(request).as_deref(), Some("c1"));
        assert_eq!(requests.take(request), None);
    }

    #[test]
    fn rest_answers_are_one_line() {
        let ok = rest_answer("c1", Ok("{\n \"ID\": \"5\"\n}".into()));
        assert_eq!(ok.iter().filter(|b| **b == b'\n').count(), 1);
        let value: Json = serde_json::from_slice(&ok).unwrap();
        assert_eq!(value["result"]["ID"], "5");
        assert_eq!(value["call"], "c1");
        let err = rest_answer(
            "c2",
            Err(WireRestError {
                kind: 0,
                status: 400,
                error: "NOT_FOUND".into(),
                description: "Not found".into(),
            }),
        );
        let value: Json = serde_json::from_slice(&err).unwrap();
        assert_eq!(value["type"], "rest_error");
        assert_eq!(value["code"], "NOT_FOUND");
        assert_eq!(value["status"], 400);
    }

    #[test]
    fn hello_carries_the_settings_as_json() {
        let hello = hello("p", "greeting = \"hi\"\n[nested]\nn = 3\n").unwrap();
        let value: Json = serde_json::from_slice(&hello).unwrap();
        assert_eq!(value["type"], "hello");
        assert_eq!(value["protocol"], 1);
        assert_eq!(value["settings"]["greeting"], "hi");
        assert_eq!(value["settings"]["nested"]["n"], 3);
        let empty: Json = serde_json::from_slice(&super::hello("p", "").unwrap()).unwrap();
        assert_eq!(empty["settings"], serde_json::json!({}));
    }
}
