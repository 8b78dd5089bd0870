//! Paused plugins: a plugin an operator paused (`b24-host plugin pause`, the console's button,
//! `POST /plugins/NAME/pause`), or one that paused itself after `pause_after_failures`
//! consecutive failed calls, receives nothing until it is resumed; its events wait in the
//! journal, pending and counted in its backlog. Every other plugin carries on.
//!
//! A pause is part of the journal's small durable state, so it survives a restart and a
//! reload: the embedded backend keeps it in the `state` table under `pause.<plugin>`, the NATS
//! backend in the `<S>_state` bucket under `pause.<plugin>` (the name as a bucket key), where
//! every host watches it: the host delivering the plugin stops within moments of any host or
//! command pausing it.
//!
//! This module is backend-neutral: what a pause is ([`Pause`], stored as JSON), and what this
//! process knows of each plugin's pause ([`Pauses`]): one [`Gate`] per plugin, which the
//! plugin's consumer and lanes look at before they take an event.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use serde::{Deserialize, Serialize};

/// The longest last error a pause keeps (a plugin's error text can be long).
const MAX_ERROR_CHARS: usize = 500;

/// Why and since when a plugin is paused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// When it was paused, ms since the epoch.
    pub at_ms: i64,
    /// Who paused it.
    #[serde(flatten)]
    pub cause: Cause,
}

/// Who paused a plugin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by")]
pub enum Cause {
    /// An operator, through `via` (`command line`, `console`, `admin API`).
    Operator {
        /// Where the pause came from.
        via: String,
    },
    /// The plugin's own circuit breaker: `failures` consecutive failed calls
    /// (`pause_after_failures`), the last one with `last_error`.
    Failures {
        /// The failures in a row that paused it.
        failures: u32,
        /// The last call's error.
        last_error: String,
    },
}

impl Pause {
    /// A pause an operator asked for through `via`, now.
    pub fn by_operator(via: &str) -> Pause {
        Pause { at_ms: super::now_ms(), cause: Cause::Operator { via: via.to_owned() } }
    }

    /// A pause after `failures` consecutive failed calls, the last with `last_error`, now.
    pub fn after_failures(failures: u32, last_error: &str) -> Pause {
        let mut short: String = last_error.chars().take(MAX_ERROR_CHARS).collect();
        if last_error.chars().count() > MAX_ERROR_CHARS {
            short.push('…');
        }
        Pause { at_ms: super::now_ms(), cause: Cause::Failures { failures, last_error: short } }
    }

    /// What the console, `/readyz`, `journal stats` and `check` say of it:
    /// `paused by an operator (console)`, `paused after 5 consecutive failures: <error>`.
    pub fn describe(&self) -> String {
        match &self.cause {
            Cause::Operator { via } => format!("paused by an operator ({via})"),
            Cause::Failures { failures, last_error } => {
                format!("paused after {failures} consecutive failures: {last_error}")
            }
        }
    }

    /// Whether the plugin paused itself (`pause_after_failures`).
    pub fn is_automatic(&self) -> bool {
        matches!(self.cause, Cause::Failures { .. })
    }

    /// The stored form.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A stored value read back: `None` for none (or an empty value: resumed); a value that
    /// does not read as a pause still counts as one (only a pause is ever stored here), with
    /// what to do about it.
    pub fn decode(value: &[u8]) -> Option<Pause> {
        if value.is_empty() {
            return None;
        }
        Some(serde_json::from_slice(value).unwrap_or_else(|_| Pause {
            at_ms: 0,
            cause: Cause::Operator { via: "an unreadable pause record: resume to clear it".into() },
        }))
    }
}

/// What an operator's pause or resume did (`Journal::operator_pause`): the answer of the
/// admin listener's `POST /plugins/NAME/pause`, the control socket and `b24-host plugin`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// The plugin.
    pub plugin: String,
    /// Its pause now; `None`: it is not paused.
    pub paused: Option<Pause>,
    /// Whether this request changed it (pausing a paused plugin keeps its pause and reason;
    /// resuming one that is not paused does nothing).
    pub changed: bool,
    /// What happened, in a sentence.
    pub message: String,
}

impl Paused {
    /// The outcome for `plugin`, now `paused`, `changed` by the request or not.
    pub fn new(plugin: &str, paused: Option<Pause>, changed: bool) -> Paused {
        let message = match (&paused, changed) {
            (Some(_), true) => format!(
                "{plugin} paused: it receives nothing, its events wait in the journal until it is resumed"
            ),
            (Some(p), false) => format!("{plugin} was paused already: {}", p.describe()),
            (None, true) => format!("{plugin} resumed: its waiting events are delivered, in order"),
            (None, false) => format!("{plugin} was not paused"),
        };
        Paused { plugin: plugin.to_owned(), paused, changed, message }
    }
}

/// The name of `plugin`'s pause in the journal's named state.
pub fn state_name(plugin: &str) -> String {
    format!("pause.{plugin}")
}

/// One plugin's pause as this process honours it: what its consumer and lanes look at.
#[derive(Debug, Default)]
pub struct Gate {
    paused: AtomicBool,
    /// How often it was resumed (the circuit breaker counts afresh after each).
    resumes: AtomicU64,
}

impl Gate {
    /// Whether the plugin is paused now.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// How many times it was resumed since the process started.
    pub fn resumes(&self) -> u64 {
        self.resumes.load(Ordering::SeqCst)
    }
}

/// What this process knows of one plugin's pause.
#[derive(Default)]
struct Entry {
    gate: Arc<Gate>,
    pause: Option<Pause>,
    /// The stored value's revision (the NATS bucket's; a local count on the embedded backend):
    /// an older value arriving late (a watch behind a write) does not undo a newer one.
    revision: u64,
    /// Whether the stored value was read (or written) at all.
    known: bool,
}

/// Every plugin's pause as this process knows it.
#[derive(Default)]
pub struct Pauses {
    entries: Mutex<HashMap<String, Entry>>,
    local: AtomicU64,
}

impl Pauses {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `plugin`'s gate (open until a pause is known).
    pub fn gate(&self, plugin: &str) -> Arc<Gate> {
        self.lock().entry(plugin.to_owned()).or_default().gate.clone()
    }

    /// Whether `plugin`'s stored pause was read or written.
    pub fn is_known(&self, plugin: &str) -> bool {
        self.lock().get(plugin).is_some_and(|e| e.known)
    }

    /// The revision of a write made by this process on a backend without revisions (the
    /// embedded one): newer than any before it.
    pub fn next_revision(&self) -> u64 {
        self.local.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Takes `pause` as `plugin`'s stored value at `revision`, unless a newer one is known;
    /// logs a change.
    pub fn apply(&self, plugin: &str, pause: Option<Pause>, revision: u64) {
        let mut entries = self.lock();
        let entry = entries.entry(plugin.to_owned()).or_default();
        if entry.known && revision < entry.revision {
            return;
        }
        let was = entry.gate.paused.swap(pause.is_some(), Ordering::SeqCst);
        match (&pause, was) {
            (Some(p), false) => tracing::info!(
                plugin,
                "plugin paused ({}): it receives nothing, its events wait in the journal until it is resumed",
                p.describe()
            ),
            (None, true) => {
                entry.gate.resumes.fetch_add(1, Ordering::SeqCst);
                tracing::info!(plugin, "plugin resumed: its waiting events are delivered");
            }
            _ => {}
        }
        entry.pause = pause;
        entry.revision = revision;
        entry.known = true;
    }

    /// `plugin`'s pause as this process honours it.
    pub fn get(&self, plugin: &str) -> Option<Pause> {
        self.lock().get(plugin).and_then(|e| e.pause.clone())
    }

    /// Every paused plugin this process knows of.
    pub fn all(&self) -> BTreeMap<String, Pause> {
        self.lock()
            .iter()
            .filter_map(|(name, e)| e.pause.clone().map(|p| (name.clone(), p)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_older_value_does_not_undo_a_newer_one() {
        let pauses = Pauses::default();
        let gate = pauses.gate("p");
        assert!(!gate.is_paused() && !pauses.is_known("p"));
        pauses.apply("p", Some(Pause::by_operator("console")), 5);
        assert!(gate.is_paused());
        // The watch delivers the value before it (revision 4) late: ignored.
        pauses.apply("p", None, 4);
        assert!(gate.is_paused());
        assert_eq!(gate.resumes(), 0);
        pauses.apply("p", None, 6);
        assert!(!gate.is_paused());
        assert_eq!(gate.resumes(), 1);
        assert_eq!(pauses.all().len(), 0);
    }

    #[test]
    fn pauses_round_trip_and_describe_themselves() {
        let operator = Pause::by_operator("command line");
        assert_eq!(Pause::decode(&operator.encode()), Some(operator.clone()));
        assert_eq!(operator.describe(), "paused by an operator (command line)");
        let auto = Pause::after_failures(5, "downstream refused: 503");
        assert_eq!(Pause::decode(&auto.encode()), Some(auto.clone()));
        assert_eq!(auto.describe(), "paused after 5 consecutive failures: downstream refused: 503");
        assert!(auto.is_automatic() && !operator.is_automatic());
        assert_eq!(Pause::decode(b""), None);
        assert!(Pause::decode(b"{not json").is_some(), "a stored value is a pause");
        let long = Pause::after_failures(1, &"x".repeat(2000));
        let Cause::Failures { last_error, .. } = long.cause else { panic!("failures") };
        assert!(last_error.chars().count() <= MAX_ERROR_CHARS + 1, "{}", last_error.len());
    }
}
