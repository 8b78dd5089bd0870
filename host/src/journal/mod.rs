//! The durable journal: the seam between accepting an event and delivering it.
//!
//! Ingress [`Log::append`]s an event; the call returns only once the raw body, its metadata
//! and one pending entry per subscribed plugin are durable. Each plugin's worker reads its own
//! pending events in id order through a [`Consumer`] and reports each outcome back through a
//! [`Reporter`]: done, failed (kept with its attempt and crash counts) or given up (a dead
//! letter). Nothing is lost on a crash or restart: every pending event is delivered again.
//! The journal also keeps the host's small durable state: learned application tokens, stored
//! OAuth tokens and named values (the offline pollers' `process_id`), and gives out leases
//! ("one host at a time": an OAuth refresh, an offline poll), which matter when several hosts
//! share one log.
//!
//! Users see it through one of three faces ([`Journal::open`] gives all three): [`Log`] (append,
//! consume, report outcomes: `log.rs`, `consume.rs`), [`State`] (tokens, OAuth pairs, values,
//! leases, pauses: `state.rs`) and [`Operator`] (what an operator reads and changes: `operator.rs`;
//! the only face the console, the control socket and the commands use). The backend behind
//! them is chosen by `[journal] backend` and reached by an enum match, no boxing, per call:
//!
//! - [`embedded`]: one redb file, written by a group-commit thread (the default).
//! - [`nats`]: a JetStream log shared by several hosts.
//!
//! Backend-neutral pieces, shared by every backend:
//! - [`record`]: the event record (metadata + raw body), a plugin's pending state, a dead
//!   letter: what a delivery carries and what the admin data shows.
//! - [`checksum`]: the checksum sealing every stored record, checked on every read.
//! - [`dedup`]: the duplicate key (the same event twice has the same key, whichever host
//!   accepted it); keeping the window is each backend's (`embedded::window`).
//! - [`admin`]: what the `journal` commands show, as plain data.
//! - [`pause`]: paused plugins (stored in the named state, honoured by the plugin's consumer
//!   and lanes through its gate).

pub mod admin;
pub mod checksum;
mod consume;
pub mod dedup;
pub mod embedded;
mod error;
mod log;
pub mod nats;
mod operator;
pub mod pause;
pub mod record;
mod state;

use std::{path::Path, sync::Arc};

use crate::config::{JournalBackend, JournalConfig};
pub use admin::Selection;
pub use consume::{Consumer, Delivery, Reporter, Stopper};
pub use error::StoreError;
pub use log::Log;
pub use operator::{Operator, log_report, salvage, verify};
pub use pause::Pause;
pub use record::{DeadLetter, EventMeta, EventRecord, Pending, Source};
pub use state::{Held, State, TokenChanges};

/// What an accepted event changes of its portal's stored state, written with the event: in
/// the same transaction on the embedded backend (so a 200 never leaves an install's pair
/// unstored, nor a stored pair without its event); on NATS each entry is stored before the
/// event is published.
#[derive(Clone, Default)]
pub struct PortalChange {
    /// The portal.
    pub member_id: String,
    /// An application token to remember (`Some(Some)`) or forget (`Some(None)`).
    pub token: Option<Option<b24_plugin_api::Secret>>,
    /// The portal's stored install to write (`rest`'s bytes: an install's or update's OAuth
    /// pair, or an uninstall's mark).
    pub oauth: Option<Vec<u8>>,
}

impl PortalChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.token.is_none() && self.oauth.is_none()
    }
}

/// The tokens never show.
impl std::fmt::Debug for PortalChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PortalChange")
            .field("member_id", &self.member_id)
            .field(
                "token",
                &self.token.as_ref().map(|t| if t.is_some() { "learn" } else { "forget" }),
            )
            .field("oauth", &self.oauth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How an append ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Journaled under this id.
    New(u64),
    /// The same event was journaled within the duplicate window, under this id.
    Duplicate(u64),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
/// The journal as opened: its three faces, each a clone of one backend handle. Each user
/// takes the face it needs: [`Log`] (ingress, the pollers' appends, the workers), [`State`]
/// (tokens, OAuth pairs, values, leases, pauses) and [`Operator`] (the commands, the control
/// socket, the admin listener and the console).
#[derive(Clone)]
pub struct Journal {
    log: Log,
    state: State,
    operator: Operator,
}

/// The backends. A match per call is all the seam costs.
#[derive(Clone)]
enum Backend {
    Embedded(embedded::Embedded),
    Nats(nats::Nats),
}

impl Journal {
    /// Opens the journal of the host whose state folder is `state_dir`, for the enabled
    /// `plugins`; the thread to join at exit (the embedded backend's writer) comes with it.
    pub async fn open(
        state_dir: &Path,
        config: &JournalConfig,
        plugins: &[String],
    ) -> Result<(Journal, std::thread::JoinHandle<()>), StoreError> {
        let (backend, thread) = match config.backend {
            JournalBackend::Embedded => {
                let (journal, thread) = embedded::Embedded::open(state_dir, config, plugins, true)?;
                (Backend::Embedded(journal), thread)
            }
            JournalBackend::Nats => {
                let (journal, thread) = nats::Nats::open(state_dir, config, plugins).await?;
                (Backend::Nats(journal), thread)
            }
        };
        let journal = Journal::of(backend);
        journal.state.honour_pauses(plugins).await;
        Ok((journal, thread))
    }

    fn of(backend: Backend) -> Journal {
        let state = State { backend: backend.clone(), pauses: Arc::default() };
        Journal {
            log: Log { backend: backend.clone(), state: state.clone() },
            operator: Operator { backend, state: state.clone() },
            state,
        }
    }

    /// The event log: appends, consumers, the last steps.
    pub fn log(&self) -> Log {
        self.log.clone()
    }

    /// The durable state: tokens, OAuth pairs, values, leases, pauses.
    pub fn state(&self) -> State {
        self.state.clone()
    }

    /// The operator's view: statistics, listings, dead letters and the changes to them.
    pub fn operator(&self) -> Operator {
        self.operator.clone()
    }
}
