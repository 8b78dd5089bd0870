//! The operator's face of the journal: what the `journal` and `plugin pause|resume`
//! commands, the control socket, the admin listener and the console read and change
//! (statistics, listings, an event in detail, dead letters, replay, purge, skip, pauses, the
//! storage's health), and the commands' own entry points on a stopped host (`verify`,
//! `salvage`, the shared log's report). Its answers are plain data ([`admin`]).

use std::path::Path;

use super::{Backend, Pause, Selection, State, StoreError, admin, embedded, nats, pause};
use crate::config::{JournalBackend, JournalConfig};

/// The operator's view of the journal, whichever backend holds it.
#[derive(Clone)]
pub struct Operator {
    pub(super) backend: Backend,
    pub(super) state: State,
}

impl Operator {
    /// Opens the journal for a `journal` command while the host is stopped: it reads and runs
    /// the operator's changes, nothing else. [`StoreError::InUse`] while a host runs on it
    /// (ask that host through the control socket), [`StoreError::NotFound`] if there is none.
    pub async fn open(
        state_dir: &Path,
        config: &JournalConfig,
    ) -> Result<(Operator, std::thread::JoinHandle<()>), StoreError> {
        let (backend, thread) = match config.backend {
            JournalBackend::Embedded => {
                let (journal, thread) = embedded::Embedded::open_for_command(state_dir, config)?;
                (Backend::Embedded(journal), thread)
            }
            JournalBackend::Nats => {
                let (journal, thread) = nats::Nats::open_for_command(state_dir, config).await?;
                (Backend::Nats(journal), thread)
            }
        };
        let state = State { backend: backend.clone(), pauses: Default::default() };
        Ok((Operator { backend, state }, thread))
    }

    /// An operator pauses `plugin` (`via`: where they asked: `command line`, `console`,
    /// `admin API`) or resumes it (`None`). Pausing a paused plugin keeps its pause (and its
    /// reason); resuming one that is not paused changes nothing.
    pub async fn operator_pause(
        &self,
        plugin: &str,
        via: Option<&str>,
    ) -> Result<pause::Paused, StoreError> {
        let before = self.state.stored_pause(plugin).await?;
        match (via, before) {
            (Some(_), Some(kept)) => Ok(pause::Paused::new(plugin, Some(kept), false)),
            (Some(via), None) => {
                let pause = Pause::by_operator(via);
                self.state.set_pause(plugin, Some(pause.clone())).await?;
                tracing::info!(plugin, via, "paused by an operator");
                Ok(pause::Paused::new(plugin, Some(pause), true))
            }
            (None, Some(_)) => {
                self.state.set_pause(plugin, None).await?;
                tracing::info!(plugin, "resumed by an operator");
                Ok(pause::Paused::new(plugin, None, true))
            }
            (None, None) => Ok(pause::Paused::new(plugin, None, false)),
        }
    }

    /// `plugin`'s pause as this process honours it (a running host; a command reads
    /// [`Operator::stored_pause`]).
    pub fn paused(&self, plugin: &str) -> Option<Pause> {
        self.state.paused(plugin)
    }

    /// Every plugin this process honours a pause of.
    pub fn pauses(&self) -> std::collections::BTreeMap<String, Pause> {
        self.state.pauses()
    }

    /// `plugin`'s pause as stored now (see [`State::stored_pause`]).
    pub async fn stored_pause(&self, plugin: &str) -> Result<Option<Pause>, StoreError> {
        self.state.stored_pause(plugin).await
    }

    /// Whether several hosts share this journal (the NATS backend).
    pub fn is_shared(&self) -> bool {
        self.state.is_shared()
    }

    /// Why the last journal write failed, if it did (cleared by the next good one).
    pub fn last_write_error(&self) -> Option<String> {
        match &self.backend {
            Backend::Embedded(j) => j.last_write_error(),
            Backend::Nats(j) => j.last_write_error(),
        }
    }

    /// Damage found on the running host that dead letters alone do not account for (the
    /// embedded journal's rows of a plugin unreadable or out of order), one line each, for
    /// `/readyz`: empty while there is none.
    pub fn damage(&self) -> Vec<String> {
        match &self.backend {
            Backend::Embedded(j) => j.damage(),
            Backend::Nats(_) => Vec::new(),
        }
    }

    /// What the log does with appends now: the embedded journal, or the shared log
    /// acknowledging them, or the local spool taking them (`/readyz`, `/metrics`).
    pub fn log_state(&self) -> admin::LogState {
        match &self.backend {
            Backend::Embedded(_) => admin::LogState::Embedded,
            Backend::Nats(j) => j.log_state(),
        }
    }

    /// Records found damaged (checksum mismatch, unreadable) or missing on a read since the
    /// host started; each became a dead letter.
    pub fn damaged_records(&self) -> u64 {
        match &self.backend {
            Backend::Embedded(j) => j.damaged_records(),
            Backend::Nats(j) => j.damaged_records(),
        }
    }

    /// Events this host keeps in its local spool for the shared log, not yet forwarded
    /// (always 0 on the embedded backend, which has no spool).
    pub fn spooled_events(&self) -> u64 {
        match &self.backend {
            Backend::Embedded(_) => 0,
            Backend::Nats(j) => j.spooled_events(),
        }
    }

    /// The storage the journal takes on this host, bytes, if it keeps any.
    pub fn size_bytes(&self) -> Option<u64> {
        match &self.backend {
            Backend::Embedded(j) => j.size_bytes(),
            Backend::Nats(j) => j.size_bytes(),
        }
    }

    /// Per-plugin backlog, retrying, dead letters and oldest pending age; every plugin of
    /// `enabled` is listed, also with nothing pending.
    pub async fn stats(&self, enabled: Vec<String>) -> Result<admin::Stats, StoreError> {
        let mut stats = match &self.backend {
            Backend::Embedded(j) => j.stats(enabled).await?,
            Backend::Nats(j) => j.stats(enabled).await?,
        };
        // A running host says what it honours; a command reads what is stored.
        for p in &mut stats.plugins {
            p.paused = if self.state.pauses.is_known(&p.plugin) {
                self.state.pauses.get(&p.plugin)
            } else {
                self.state.stored_pause(&p.plugin).await?
            };
        }
        Ok(stats)
    }

    /// The newest `limit` events, newest first.
    pub async fn list(&self, limit: usize) -> Result<Vec<admin::EventSummary>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.list(limit).await,
            Backend::Nats(j) => j.list(limit).await,
        }
    }

    /// One page of events matching `query`, newest first (the console's events page).
    pub async fn query(&self, query: admin::Query) -> Result<admin::Page, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.query(query).await,
            Backend::Nats(j) => j.query(query).await,
        }
    }

    /// Event `id` in detail (tokens redacted), if there is one.
    pub async fn show(&self, id: u64) -> Result<Option<admin::EventDetail>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.show(id).await,
            Backend::Nats(j) => j.show(id).await,
        }
    }

    /// Dead letters, only `plugin`'s when given.
    pub async fn dead(&self, plugin: Option<String>) -> Result<Vec<admin::DeadRow>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.dead(plugin).await,
            Backend::Nats(j) => j.dead(plugin).await,
        }
    }

    /// One page of dead letters, newest event first, with the count of all that match.
    pub async fn dead_page(&self, query: admin::DeadQuery) -> Result<admin::DeadPage, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.dead_page(query).await,
            Backend::Nats(j) => {
                let all = j.dead(query.plugin.clone()).await?;
                Ok(admin::DeadPage::of(all, &query))
            }
        }
    }

    /// Puts the selected dead letters back into delivery (attempts and crashes start again);
    /// returns the (plugin, event id) pairs replayed.
    pub async fn replay(&self, which: Selection) -> Result<Vec<(String, u64)>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.replay(which).await,
            Backend::Nats(j) => j.replay(which).await,
        }
    }

    /// Deletes the selected dead letters for good; returns the pairs deleted.
    pub async fn purge(&self, which: Selection) -> Result<Vec<(String, u64)>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.purge(which).await,
            Backend::Nats(j) => j.purge(which).await,
        }
    }

    /// Moves `plugin`'s pending events `ids` to its dead letters ([`admin::SKIPPED`]); a lane
    /// holding one drops it ([`Reporter::is_skipped`](super::Reporter::is_skipped)).
    pub async fn skip(&self, plugin: String, ids: Vec<u64>) -> Result<admin::Skipped, StoreError> {
        let moved = match &self.backend {
            Backend::Embedded(j) => j.skip(plugin.clone(), ids.clone()).await?,
            Backend::Nats(j) => j.skip(plugin.clone(), ids.clone()).await?,
        };
        Ok(admin::Skipped::of(&plugin, &ids, moved))
    }
}

/// `b24-host check`: connects to the shared log and reports it, for the enabled `plugins`;
/// `None` for the embedded journal (nothing to connect to).
pub async fn log_report(
    config: &JournalConfig,
    plugins: &[String],
) -> Result<Option<admin::LogReport>, StoreError> {
    match config.backend {
        JournalBackend::Embedded => Ok(None),
        JournalBackend::Nats => nats::Nats::report(config, plugins).await.map(Some),
    }
}

/// `journal verify`: checks every record of the stopped host's journal (checksums, the rows'
/// references, the mark) without changing it.
pub fn verify(state_dir: &Path, config: &JournalConfig) -> Result<admin::RepairReport, StoreError> {
    match config.backend {
        JournalBackend::Embedded => embedded::repair::verify(state_dir),
        JournalBackend::Nats => Err(StoreError::Refused(
            "journal verify checks the embedded journal; the NATS log is checked by its servers (b24-host check reports it)".into(),
        )),
    }
}

/// `journal salvage --to NEW`: copies every readable event, pending row and dead letter of the
/// stopped host's journal into a new journal at `to`, and reports what it could not read.
pub fn salvage(
    state_dir: &Path,
    config: &JournalConfig,
    to: &Path,
) -> Result<admin::RepairReport, StoreError> {
    match config.backend {
        JournalBackend::Embedded => embedded::repair::salvage(state_dir, to),
        JournalBackend::Nats => {
            let _ = to;
            Err(StoreError::Refused(
                "journal salvage copies the embedded journal; the NATS log keeps its own replicas"
                    .into(),
            ))
        }
    }
}
