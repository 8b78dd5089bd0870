//! What the journal tells and lets an operator change, as plain data: per-plugin statistics,
//! event listings, one event in detail (tokens redacted), dead letters, and the outcome of
//! replay, purge and skip. Every backend answers with these types; how they travel (the
//! control socket) and how they print (the `journal` commands) is `control.rs`'s and the
//! commands' business, not the journal's.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::{DeadLetter, EventRecord, Format, Pending};

/// The reason of a dead letter that `journal skip` made.
pub const SKIPPED: &str = "skipped by an operator";

/// Which dead letters an admin command applies to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Selection {
    /// Only this plugin's (all plugins when `None`).
    pub plugin: Option<String>,
    /// Only these event ids (all when empty).
    pub ids: Vec<u64>,
    /// Only dead letters given up at or after this time, ms since the epoch (the console's
    /// "everything since"); `None`: any time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<i64>,
}

impl Selection {
    /// Whether the dead letter of `plugin` for event `id`, given up at `at_ms`, is selected.
    pub fn matches(&self, plugin: &str, id: u64, at_ms: i64) -> bool {
        self.plugin.as_deref().is_none_or(|p| p == plugin)
            && (self.ids.is_empty() || self.ids.contains(&id))
            && self.since_ms.is_none_or(|since| at_ms >= since)
    }
}

/// How many attempts per (event, plugin) the journal keeps: the first and the latest ones
/// (older middle ones are dropped), so a plugin retrying for days stays bounded.
pub const MAX_ATTEMPTS_KEPT: usize = 20;

/// One delivery attempt of an event to a plugin, as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// 1 for the first attempt.
    pub n: u32,
    /// When the call started, ms since the epoch.
    pub at_ms: i64,
    /// How long the call took, microseconds.
    pub duration_us: u64,
    /// `done`, `skipped`, `retry`, `rejected`, `timeout`, `panicked` or `crashed`.
    pub outcome: String,
    /// The error text (empty for `done`/`skipped`); never holds a token.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

/// An event's state, for filtering a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventStatus {
    /// Some plugin has still to deliver it.
    Pending,
    /// No plugin has it pending or dead (delivered, skipped, or addressed to none).
    Done,
    /// Some plugin gave up on it.
    Dead,
}

/// A filtered, paged listing (the console's events page).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Query {
    /// Only this portal's events.
    pub member_id: Option<String>,
    /// Only this event code (compared case-insensitively).
    pub code: Option<String>,
    /// Only events in this state.
    pub status: Option<EventStatus>,
    /// Only events accepted at or after this time, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Only events accepted before this time, ms since the epoch.
    pub until_ms: Option<i64>,
    /// Only events with a smaller id (the next page: the previous page's `next_before`).
    pub before_id: Option<u64>,
    /// At most this many events (the backend caps it at 500).
    pub limit: usize,
}

/// Longest run of events a query reads for one page: a filter that matches little answers
/// with fewer rows and a `next_before` to go on from, instead of reading the whole journal.
pub const QUERY_SCAN_LIMIT: u64 = 20_000;

/// A bounded listing of dead letters (the console's dead-letters page).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadQuery {
    /// Only this plugin's.
    pub plugin: Option<String>,
    /// Only those given up at or after this time, ms since the epoch.
    pub since_ms: Option<i64>,
    /// Only events with a smaller id (the next page).
    pub before_id: Option<u64>,
    /// At most this many rows (capped at 500); 0 only counts.
    pub limit: usize,
}

/// One page of dead letters, newest event first, and how many match in all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadPage {
    /// The rows of this page.
    pub rows: Vec<DeadRow>,
    /// Where the next (older) page starts, while more rows match.
    pub next_before: Option<u64>,
    /// Dead letters matching `plugin` and `since_ms`, on every page.
    pub total: u64,
}

impl DeadPage {
    /// A page of `all` (every matching row, any order): the way a backend without an index
    /// answers.
    pub fn of(mut all: Vec<DeadRow>, query: &DeadQuery) -> DeadPage {
        all.retain(|r| {
            query.plugin.as_deref().is_none_or(|p| p == r.plugin)
                && query.since_ms.is_none_or(|s| r.dead.at_ms >= s)
        });
        let total = all.len() as u64;
        all.retain(|r| query.before_id.is_none_or(|b| r.id < b));
        all.sort_by(|a, b| (b.id, &a.plugin).cmp(&(a.id, &b.plugin)));
        let next_before = cut_page(&mut all, query.limit.min(500), |r| r.id);
        DeadPage { rows: all, next_before, total }
    }
}

/// Cuts `rows` (sorted newest event first) to a page of at most `limit`; returns where the next
/// page starts. A page never ends between two letters of one event (the next page starts below
/// that id), unless that event alone fills it.
pub fn cut_page<T>(rows: &mut Vec<T>, limit: usize, id: impl Fn(&T) -> u64) -> Option<u64> {
    if rows.len() <= limit {
        return None;
    }
    let boundary = id(&rows[limit]);
    rows.truncate(limit);
    let whole = rows.iter().position(|r| id(r) == boundary).unwrap_or(rows.len());
    if whole > 0 {
        // The boundary event's letters all go to the next page.
        rows.truncate(whole);
        return Some(boundary + 1);
    }
    // One event's letters fill the page: the next page starts below it (its other letters
    // stay reachable through the event's own page).
    Some(boundary)
}

/// One page of a [`Query`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// Matching events, newest first.
    pub events: Vec<EventSummary>,
    /// Where the next (older) page starts: `Some(id)` while older events may remain.
    pub next_before: Option<u64>,
}

/// One plugin's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStats {
    /// The plugin.
    pub plugin: String,
    /// Events not yet delivered (pending rows).
    pub backlog: u64,
    /// Of those, events that failed or crashed at least once.
    pub retrying: u64,
    /// Dead letters.
    pub dead: u64,
    /// Age of the oldest pending event, ms.
    pub oldest_pending_age_ms: Option<i64>,
    /// Why the plugin is paused, if it is (`b24-host plugin pause`, `pause_after_failures`):
    /// its backlog waits until it is resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paused: Option<super::Pause>,
}

/// The journal's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// One entry per plugin: the enabled ones, and any other with rows.
    pub plugins: Vec<PluginStats>,
    /// Events in the journal.
    pub events: u64,
}

/// One line of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    /// Event id.
    pub id: u64,
    /// When it was accepted, ms since the epoch.
    pub received_at_ms: i64,
    /// Event code.
    pub code: String,
    /// Portal.
    pub member_id: String,
    /// Plugins still to deliver to.
    pub pending: Vec<String>,
    /// Plugins that gave up on it.
    pub dead: Vec<String>,
}

/// One event in detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDetail {
    /// The summary.
    pub summary: EventSummary,
    /// The decoded event with every token redacted: filled where the detail is shown
    /// (`operations::show`), since the journal does not decode; `null` until then.
    #[serde(default)]
    pub decoded: serde_json::Value,
    /// Per plugin still pending: attempts and last error.
    pub pending_state: BTreeMap<String, Pending>,
    /// Per plugin dead: why.
    pub dead_state: BTreeMap<String, DeadLetter>,
    /// Per plugin, its attempts, oldest first (at most [`MAX_ATTEMPTS_KEPT`]).
    #[serde(default)]
    pub attempts: BTreeMap<String, Vec<Attempt>>,
    /// The raw body as received, every token and secret replaced by `<redacted>`.
    #[serde(default)]
    pub raw_redacted: String,
    /// The record itself, for [`EventDetail::decoded`] (never sent: the body has tokens a
    /// detail shows only redacted); `None` when it fails its checksum.
    #[serde(skip)]
    pub record: Option<EventRecord>,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadRow {
    /// The plugin.
    pub plugin: String,
    /// The event.
    pub id: u64,
    /// Its code.
    pub code: String,
    /// Its portal.
    pub member_id: String,
    /// Why it is dead.
    pub dead: DeadLetter,
}

/// What `journal skip` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    /// The plugin.
    pub plugin: String,
    /// The events moved to its dead letters.
    pub skipped: Vec<u64>,
    /// The ids asked for that had no pending row of the plugin (finished, dead, unknown).
    pub not_pending: Vec<u64>,
}

impl Skipped {
    /// The answer to skipping `ids` of `plugin` when the (plugin, id) pairs `moved` were moved.
    pub fn of(plugin: &str, ids: &[u64], moved: Vec<(String, u64)>) -> Skipped {
        let skipped: Vec<u64> = moved.into_iter().map(|(_, id)| id).collect();
        let mut not_pending: Vec<u64> =
            ids.iter().copied().filter(|id| !skipped.contains(id)).collect();
        not_pending.dedup();
        Skipped { plugin: plugin.to_owned(), skipped, not_pending }
    }
}

/// What stands in for a secret in a redacted body.
pub const REDACTED: &str = "<redacted>";

/// Whether a body's key names a token or secret: its (decoded) name contains `token`, `secret`
/// or `password`, in any case (`auth[application_token]`, `auth[access_token]`, ...).
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["token", "secret", "password"].iter().any(|word| key.contains(word))
}

/// The raw body as text with the value of every key that names a token or secret
/// ([`is_secret_key`]) replaced by [`REDACTED`]; then every other occurrence of such a value
/// anywhere in the text (as received, percent- or JSON-encoded) is replaced too, so a token
/// repeated in another key's value does not show either. A JSON body that does not parse is
/// withheld rather than shown half-checked.
pub fn redact_raw(raw: &[u8], format: Format) -> String {
    let text = String::from_utf8_lossy(raw);
    let mut secrets: Vec<String> = Vec::new();
    let out = match format {
        Format::Form => {
            let pairs: Vec<String> = text
                .split('&')
                .map(|pair| {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let name = decoded(key);
                    if is_secret_key(&name) && !value.is_empty() {
                        secrets.push(decoded(value));
                        secrets.push(value.to_owned());
                        format!("{key}={REDACTED}")
                    } else {
                        pair.to_owned()
                    }
                })
                .collect();
            pairs.join("&")
        }
        Format::Json => {
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(raw) else {
                return "<the body is not valid JSON: withheld>".to_owned();
            };
            json_secrets(&value, false, &mut secrets);
            let mut out = text.into_owned();
            for secret in &secrets {
                // The quoted string, whatever its length; longer values anywhere below.
                let quoted = serde_json::Value::String(secret.clone()).to_string();
                out = out.replace(&quoted, &format!("\"{REDACTED}\""));
            }
            out = replace_repeated(out, &secrets);
            if json_leaks(&out, &secrets) {
                // Spelled in a way the text search missed (`\/`, `\u0041`, a short number):
                // the body is written out again with those values replaced.
                let mut value = value;
                blank_secrets(&mut value, false);
                out = serde_json::to_string(&value).unwrap_or_default();
            }
            out
        }
    };
    replace_repeated(out, &secrets)
}

/// `text` with every secret of [`MIN_REPEATED`] characters or more replaced wherever it
/// occurs, as is, percent-encoded or JSON-escaped.
fn replace_repeated(mut out: String, secrets: &[String]) -> String {
    let mut spelled: Vec<String> = Vec::new();
    for secret in secrets.iter().filter(|s| s.len() >= MIN_REPEATED) {
        spelled.push(secret.clone());
        spelled.push(url::form_urlencoded::byte_serialize(secret.as_bytes()).collect());
        let json = serde_json::Value::String(secret.clone()).to_string();
        spelled.push(json[1..json.len() - 1].to_owned());
    }
    // Longest first: a value that contains another is replaced whole.
    spelled.sort_by_key(|s| std::cmp::Reverse(s.len()));
    spelled.dedup();
    for secret in spelled.iter().filter(|s| s.len() >= MIN_REPEATED) {
        out = out.replace(secret.as_str(), REDACTED);
    }
    out
}

/// Secret values shorter than this are replaced where their key stands, not searched for
/// elsewhere in the text (a 1-character "token" would blank out half the body).
const MIN_REPEATED: usize = 3;

/// A form body's key or value, percent- and plus-decoded.
fn decoded(part: &str) -> String {
    url::form_urlencoded::parse(format!("k={part}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// Whether the redacted JSON text `out` still shows a secret: a value under a secret key
/// that is not [`REDACTED`], or a long secret inside any string.
fn json_leaks(out: &str, secrets: &[String]) -> bool {
    let Ok(value) = serde_json::from_str::<serde_json::Value>(out) else { return true };
    let mut left = Vec::new();
    json_secrets(&value, false, &mut left);
    if left.iter().any(|v| v != REDACTED) {
        return true;
    }
    fn strings<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    out.push(k);
                    strings(v, out);
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| strings(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    strings(&value, &mut all);
    all.iter().any(|s| {
        secrets.iter().any(|secret| secret.len() >= MIN_REPEATED && s.contains(secret.as_str()))
    })
}

/// Replaces every scalar under a secret key of `value` by [`REDACTED`].
fn blank_secrets(value: &mut serde_json::Value, secret: bool) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let below = secret || is_secret_key(key);
                blank_secrets(v, below);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                blank_secrets(v, secret);
            }
        }
        serde_json::Value::Null => {}
        other if secret => *other = serde_json::Value::String(REDACTED.to_owned()),
        _ => {}
    }
}

/// Every scalar under a secret key of `value`, as text (strings unquoted).
fn json_secrets(value: &serde_json::Value, secret: bool, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                json_secrets(v, secret || is_secret_key(key), out);
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                json_secrets(v, secret, out);
            }
        }
        serde_json::Value::Null => {}
        serde_json::Value::String(s) if secret && !s.is_empty() => out.push(s.clone()),
        other if secret => out.push(other.to_string()),
        _ => {}
    }
}

/// Readable and damaged rows of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counted {
    /// Rows whose checksum (and content) holds.
    pub readable: u64,
    /// Rows that fail it.
    pub damaged: u64,
}

/// What `journal verify` or `journal salvage` found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepairReport {
    /// The journal read.
    pub file: String,
    /// Event records.
    pub events: Counted,
    /// Pending rows.
    pub pending: Counted,
    /// Dead letters.
    pub dead: Counted,
    /// The next event id the journal would hand out.
    pub next_id: u64,
    /// The highest event id the host noted in its mark, if it keeps one.
    pub mark_highest_id: Option<u64>,
    /// Salvage: pending rows whose event or state was unreadable, written as dead letters.
    pub pending_made_dead: u64,
    /// Salvage: the new journal.
    pub salvaged_to: Option<String>,
    /// Everything that is wrong; empty for a sound journal.
    pub problems: Vec<String>,
    /// How it was read.
    pub notes: Vec<String>,
}

impl std::fmt::Display for RepairReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "journal {}", self.file)?;
        for (what, c) in
            [("events", &self.events), ("pending", &self.pending), ("dead", &self.dead)]
        {
            writeln!(f, "  {what:<8} {} readable, {} damaged", c.readable, c.damaged)?;
        }
        writeln!(f, "  next id  {}", self.next_id)?;
        if let Some(mark) = self.mark_highest_id {
            writeln!(f, "  mark     events journaled up to id {mark}")?;
        }
        for note in &self.notes {
            writeln!(f, "  note: {note}")?;
        }
        if let Some(to) = &self.salvaged_to {
            writeln!(
                f,
                "salvaged into {to}: {} events, {} pending rows ({} of them made dead letters: \
                 their event or state was unreadable), {} dead letters",
                self.events.readable,
                self.pending.readable + self.pending.damaged - self.pending_made_dead,
                self.pending_made_dead,
                self.dead.readable + self.dead.damaged + self.pending_made_dead,
            )?;
        }
        if self.problems.is_empty() {
            writeln!(f, "no problems found")
        } else {
            writeln!(f, "{} problems:", self.problems.len())?;
            for p in &self.problems {
                writeln!(f, "  {p}")?;
            }
            Ok(())
        }
    }
}

/// What the log behind the journal is doing with appends: for `/readyz` and `/metrics`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum LogState {
    /// The embedded journal on this host's disk.
    Embedded,
    /// The shared log answers: appends are acknowledged by its quorum.
    Acknowledging,
    /// The shared log does not answer: appends go to the local spool (and are accepted),
    /// and are forwarded once it is back.
    Spooling {
        /// Why.
        reason: String,
    },
}

impl std::fmt::Display for LogState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogState::Embedded => write!(f, "embedded journal"),
            LogState::Acknowledging => write!(f, "shared log acknowledging"),
            LogState::Spooling { reason } => {
                write!(f, "spooling to the local journal ({reason}); events are still accepted")
            }
        }
    }
}

/// `b24-host check`'s view of a shared log: the stream, its replicas, the consumers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogReport {
    /// The server this command is connected to, and its version.
    pub server: String,
    /// The cluster's name, if the events stream is clustered.
    pub cluster: Option<String>,
    /// The events stream; `None` before any host created it.
    pub stream: Option<StreamReport>,
    /// The dead letters' stream: its name and messages (`None` before any host created it).
    pub dead: (String, Option<u64>),
    /// One entry per consumer on the events stream, and per enabled plugin without one.
    pub consumers: Vec<ConsumerReport>,
}

/// A stream of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReport {
    /// Its name.
    pub name: String,
    /// Messages in it.
    pub messages: u64,
    /// Bytes.
    pub bytes: u64,
    /// Replicas configured.
    pub replicas: usize,
    /// The node leading it, if any (none during an election).
    pub leader: Option<String>,
    /// The other replicas.
    pub peers: Vec<PeerReport>,
}

/// A replica of a stream.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// The node.
    pub name: String,
    /// Up to date with the leader.
    pub current: bool,
    /// Considered offline by the group.
    pub offline: bool,
    /// Operations behind the leader.
    pub lag: Option<u64>,
    /// Last seen, ms ago.
    pub active_ms: u64,
}

/// A plugin's consumer on the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerReport {
    /// The plugin.
    pub plugin: String,
    /// Whether the consumer exists (hosts create it at start).
    pub exists: bool,
    /// Not yet delivered.
    pub pending: u64,
    /// Delivered, not yet acknowledged.
    pub ack_pending: u64,
    /// Delivered more than once.
    pub redelivered: u64,
    /// The node leading it.
    pub leader: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_form_body_has_every_token_value_redacted_also_url_encoded_and_repeated() {
        let raw = b"event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=5\
            &auth%5Baccess_token%5D=acc%2Fess1&auth[refresh_token]=refr3sh\
            &auth%5Bapplication_token%5D=app+tok&auth%5Bmember_id%5D=m1\
            &data%5Bnote%5D=seen+refr3sh+and+acc%2Fess1&X_Client_Secret=s3cr3t&PassWord=pw12";
        let out = redact_raw(raw, Format::Form);
        for secret in ["acc%2Fess1", "acc/ess1", "refr3sh", "app+tok", "s3cr3t", "pw12"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("auth%5Baccess_token%5D=<redacted>"), "{out}");
        assert!(out.contains("auth[refresh_token]=<redacted>"), "{out}");
        assert!(out.contains("auth%5Bapplication_token%5D=<redacted>"), "{out}");
        assert!(out.contains("data%5Bnote%5D=seen+<redacted>+and+<redacted>"), "{out}");
        // What is no secret stays as received.
        assert!(out.starts_with("event=ONCRMDEALUPDATE&data%5BFIELDS%5D%5BID%5D=5&"), "{out}");
        assert!(out.contains("auth%5Bmember_id%5D=m1"), "{out}");
    }

    #[test]
    fn a_json_body_has_every_token_value_redacted_also_nested_and_repeated() {
        let raw = br#"{"event":"ONCRMDEALUPDATE","auth":{"access_token":"acc\/1x","refresh_token":"ref2","application_token":"app3","member_id":"m1"},"data":{"note":"copy of app3","tokens":{"a":"nested9"}},"password":12}"#;
        let out = redact_raw(raw, Format::Json);
        for secret in ["acc/1x", "acc\\/1x", "ref2", "app3", "nested9", ":12"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains(r#""member_id":"m1""#), "{out}");
        assert!(out.contains("copy of <redacted>"), "{out}");
        assert!(serde_json::from_str::<serde_json::Value>(&out).is_ok(), "{out}");
        // An escaped spelling the text search misses is still caught.
        let raw = br#"{"auth": {"access_token": "a\/bcdef"}, "note": "a\/bcdef"}"#;
        let out = redact_raw(raw, Format::Json);
        assert!(!out.contains("bcdef"), "{out}");
        // Long values keep the body as received otherwise.
        let raw = br#"{"auth": {"access_token": "abcdef"}, "x": 1}"#;
        assert_eq!(
            redact_raw(raw, Format::Json),
            r#"{"auth": {"access_token": "<redacted>"}, "x": 1}"#
        );
        assert_eq!(
            redact_raw(b"{not json", Format::Json),
            "<the body is not valid JSON: withheld>"
        );
    }

    #[test]
    fn a_short_secret_is_redacted_where_it_stands_without_blanking_the_rest() {
        let out = redact_raw(b"event=E&auth%5Baccess_token%5D=E&x=EE", Format::Form);
        assert_eq!(out, "event=E&auth%5Baccess_token%5D=<redacted>&x=EE");
    }

    #[test]
    fn a_selection_matches_by_plugin_ids_and_time() {
        let all = Selection::default();
        assert!(all.matches("a", 1, 0));
        let since = Selection { since_ms: Some(10), ..Selection::default() };
        assert!(since.matches("a", 1, 10) && !since.matches("a", 1, 9));
        let one = Selection { plugin: Some("a".into()), ids: vec![2], since_ms: None };
        assert!(one.matches("a", 2, 0) && !one.matches("b", 2, 0) && !one.matches("a", 3, 0));
    }
}
