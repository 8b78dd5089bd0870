//! The durable journal: the seam between accepting an event and delivering it.
//!
//! Ingress [`Journal::append`]s an event; the call returns only once the raw body, its metadata
//! and one pending entry per subscribed plugin are durable. Each plugin's worker reads its own
//! pending events in id order through a [`Consumer`] and reports each outcome back through a
//! [`Reporter`]: done, failed (kept with its attempt and crash counts) or given up (a dead
//! letter). Nothing is lost on a crash or restart: every pending event is delivered again.
//! The journal also keeps the host's small durable state: learned application tokens, stored
//! OAuth tokens and named values (the offline pollers' `process_id`), and gives out leases
//! ("one host at a time": an OAuth refresh, an offline poll), which matter when several hosts
//! share one log.
//!
//! This module is the face every user sees; the backend behind it is chosen by
//! `[journal] backend` and reached by an enum match, no boxing, per call:
//!
//! - [`embedded`]: one redb file, written by a group-commit thread (the default).
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
pub mod dedup;
pub mod embedded;
mod error;
pub mod nats;
pub mod pause;
pub mod record;

use std::{path::Path, sync::Arc, time::Duration};

use b24_plugin_api::Secret;
use bytes::Bytes;

use crate::{
    config::{JournalBackend, JournalConfig},
    decode::{self, BodyFormat, Decoded},
};
pub use admin::Selection;
pub use error::StoreError;
pub use pause::Pause;
pub use record::{DeadLetter, EventMeta, EventRecord, Pending, Source};

/// An accepted event as it travels to a plugin.
#[derive(Debug)]
pub struct Envelope {
    /// The journal's id for the event: stable across retries and restarts.
    pub id: u64,
    /// When the host accepted it, in milliseconds since the Unix epoch.
    pub received_at_ms: i64,
    /// The body exactly as received (for offline rows, the JSON payload built from the row).
    pub raw: Bytes,
    /// The decoded event.
    pub event: Decoded,
    /// Where it came from.
    pub source: Source,
    /// Further delivery facts for the plugins (offline rows: `message_id`, `user_id`).
    pub extra: Vec<(String, String)>,
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

fn record(
    raw: Bytes,
    format: BodyFormat,
    event: &Decoded,
    source: Source,
    key: &dedup::DedupKey,
    extra: Vec<(String, String)>,
) -> EventRecord {
    EventRecord {
        meta: EventMeta {
            received_at_ms: now_ms(),
            format: format.into(),
            source,
            code: event.code.clone(),
            member_id: event.auth.member_id.clone(),
            domain: event.auth.domain.clone(),
            dedup_key: dedup::hex(key),
            extra,
        },
        raw,
    }
}

/// The journal of a running host (or of a `journal` command), whichever backend holds it.
#[derive(Clone)]
pub struct Journal {
    backend: Backend,
    /// Each plugin's pause as this process honours it (see [`pause`]).
    pauses: Arc<pause::Pauses>,
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
        let journal = Journal { backend, pauses: Arc::default() };
        journal.honour_pauses(plugins).await;
        Ok((journal, thread))
    }

    /// Reads the enabled `plugins`' pauses before any of them is delivered to, and on the
    /// NATS backend watches every pause any host or command makes from now on.
    async fn honour_pauses(&self, plugins: &[String]) {
        if let Backend::Nats(j) = &self.backend {
            // The watch first: a pause made while the plugins are read is not missed (a value
            // both bring is applied by revision, so the older never wins).
            let mut changes = j.pause_changes();
            let pauses = self.pauses.clone();
            tokio::spawn(async move {
                while let Some((plugin, value, revision)) = changes.recv().await {
                    pauses.apply(&plugin, Pause::decode(&value), revision);
                }
            });
        }
        for plugin in plugins {
            if let Err(e) = self.load_pause(plugin).await {
                tracing::warn!(plugin = %plugin, "cannot read whether the plugin is paused: {e}");
            }
        }
    }

    /// Reads `plugin`'s stored pause into [`pause::Pauses`].
    async fn load_pause(&self, plugin: &str) -> Result<(), StoreError> {
        let (pause, revision) = self.stored_pause_at(plugin).await?;
        self.pauses.apply(plugin, pause, revision);
        Ok(())
    }

    /// `plugin`'s pause as stored, with its revision (0 on the embedded backend: any write of
    /// this process is newer).
    async fn stored_pause_at(&self, plugin: &str) -> Result<(Option<Pause>, u64), StoreError> {
        match &self.backend {
            Backend::Embedded(j) => {
                Ok((j.state(&pause::state_name(plugin))?.as_deref().and_then(Pause::decode), 0))
            }
            Backend::Nats(j) => Ok(j
                .pause(plugin)
                .await?
                .map_or((None, 0), |(value, revision)| (Pause::decode(&value), revision))),
        }
    }

    /// `plugin`'s pause as stored now (on the NATS backend: as the log holds it, whichever
    /// host or command made it); `None` when it is not paused.
    pub async fn stored_pause(&self, plugin: &str) -> Result<Option<Pause>, StoreError> {
        Ok(self.stored_pause_at(plugin).await?.0)
    }

    /// Pauses (`Some`) or resumes (`None`) `plugin`, durably; this process honours it at once,
    /// the other hosts on a shared log as soon as their watch brings it.
    pub async fn set_pause(&self, plugin: &str, pause: Option<Pause>) -> Result<(), StoreError> {
        let revision = match &self.backend {
            Backend::Embedded(j) => {
                j.set_state(&pause::state_name(plugin), pause.as_ref().map(Pause::encode)).await?;
                self.pauses.next_revision()
            }
            Backend::Nats(j) => {
                j.set_pause(plugin, pause.as_ref().map(Pause::encode).unwrap_or_default()).await?
            }
        };
        self.pauses.apply(plugin, pause, revision);
        Ok(())
    }

    /// An operator pauses `plugin` (`via`: where they asked: `command line`, `console`,
    /// `admin API`) or resumes it (`None`). Pausing a paused plugin keeps its pause (and its
    /// reason); resuming one that is not paused changes nothing.
    pub async fn operator_pause(
        &self,
        plugin: &str,
        via: Option<&str>,
    ) -> Result<pause::Paused, StoreError> {
        let before = self.stored_pause(plugin).await?;
        match (via, before) {
            (Some(_), Some(kept)) => Ok(pause::Paused::new(plugin, Some(kept), false)),
            (Some(via), None) => {
                let pause = Pause::by_operator(via);
                self.set_pause(plugin, Some(pause.clone())).await?;
                tracing::info!(plugin, via, "paused by an operator");
                Ok(pause::Paused::new(plugin, Some(pause), true))
            }
            (None, Some(_)) => {
                self.set_pause(plugin, None).await?;
                tracing::info!(plugin, "resumed by an operator");
                Ok(pause::Paused::new(plugin, None, true))
            }
            (None, None) => Ok(pause::Paused::new(plugin, None, false)),
        }
    }

    /// `plugin`'s pause as this process honours it (a running host; a command reads
    /// [`Journal::stored_pause`]).
    pub fn paused(&self, plugin: &str) -> Option<Pause> {
        self.pauses.get(plugin)
    }

    /// Every plugin this process honours a pause of.
    pub fn pauses(&self) -> std::collections::BTreeMap<String, Pause> {
        self.pauses.all()
    }

    /// Opens the journal for a `journal` command while the host is stopped: it reads and runs
    /// the operator's changes, nothing else. [`StoreError::InUse`] while a host runs on it
    /// (ask that host through the control socket), [`StoreError::NotFound`] if there is none.
    pub async fn open_for_command(
        state_dir: &Path,
        config: &JournalConfig,
    ) -> Result<(Journal, std::thread::JoinHandle<()>), StoreError> {
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
        Ok((Journal { backend, pauses: Arc::default() }, thread))
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

    /// Learned application tokens.
    pub async fn learned_tokens(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Secret>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.learned_tokens(),
            Backend::Nats(j) => j.learned_tokens().await,
        }
    }

    /// Journals `event` (received as `raw` in `format`) for `plugins`, with an optional token
    /// change, durably. Returns once it is durable, or says it was a duplicate.
    pub async fn append(
        &self,
        raw: Bytes,
        format: BodyFormat,
        event: &Decoded,
        plugins: Vec<Arc<str>>,
        token: Option<(String, Option<Secret>)>,
    ) -> Result<Appended, StoreError> {
        let key = dedup::key(event);
        let record = Box::new(record(raw, format, event, Source::Online, &key, Vec::new()));
        match &self.backend {
            Backend::Embedded(j) => j.append(record, key, plugins, token, false).await,
            Backend::Nats(j) => j.append(record, key, plugins, token, false).await,
        }
    }

    /// Journals a row pulled from a portal's offline queue (`raw` is its JSON payload), keyed by
    /// `row_key` (the row's message id and state): the same row pulled again after a crash is
    /// a duplicate however long ago the first pull was.
    pub async fn append_offline(
        &self,
        raw: Bytes,
        event: &Decoded,
        plugins: Vec<Arc<str>>,
        row_key: &str,
        extra: Vec<(String, String)>,
    ) -> Result<Appended, StoreError> {
        let key = dedup::key_of(&[b"offline", event.auth.member_id.as_bytes(), row_key.as_bytes()]);
        let record = Box::new(record(raw, BodyFormat::Json, event, Source::Offline, &key, extra));
        match &self.backend {
            Backend::Embedded(j) => j.append(record, key, plugins, None, true).await,
            Backend::Nats(j) => j.append(record, key, plugins, None, true).await,
        }
    }

    /// Whether several hosts share this journal (the NATS backend).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Nats(_))
    }

    /// A portal's learned token as the shared log holds it now (another host may have learned
    /// it a moment ago; its change may not have reached [`Journal::token_changes`] yet).
    /// `None` on the embedded backend: there is no other host, the verifier knows them all.
    pub async fn shared_token(&self, member_id: &str) -> Result<Option<Secret>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(None),
            Backend::Nats(j) => j.learned_token(member_id).await,
        }
    }

    /// The learned tokens' changes made by any host on the shared log, starting with every
    /// token as it is: `(member_id, Some(token))` learned, `(member_id, None)` forgotten.
    /// `None` on the embedded backend (only this host learns).
    pub fn token_changes(&self) -> Option<TokenChanges> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::Nats(j) => Some(j.token_changes()),
        }
    }

    /// Tells the offline pollers of the other hosts sharing the log that `member_id`'s queue
    /// has rows (an `ONOFFLINEEVENT` or an install reached this host; the portal's poller may
    /// run on another). Nothing on the embedded backend: this host's poller is the only one.
    pub async fn announce_offline_rows(&self, member_id: &str) {
        if let Backend::Nats(j) = &self.backend {
            j.announce_offline_rows(member_id).await;
        }
    }

    /// The portals whose offline queue other hosts announced (see
    /// [`Journal::announce_offline_rows`]). `None` on the embedded backend.
    pub fn offline_wakes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::Nats(j) => Some(j.offline_wakes()),
        }
    }

    /// A portal's stored OAuth tokens (JSON) read now, with the revision to give
    /// [`Journal::replace_oauth`].
    pub async fn oauth_entry(&self, member_id: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => Ok(j.oauth(member_id)?.map(|v| (v, 0))),
            Backend::Nats(j) => j.oauth_entry(member_id).await,
        }
    }

    /// Stores a portal's OAuth tokens only if they are still at `revision` (compare-and-set);
    /// `false`, nothing written, if another host stored newer ones since. The embedded backend
    /// has one writer (the host serialises its refreshes) and always stores.
    pub async fn replace_oauth(
        &self,
        member_id: &str,
        tokens: Vec<u8>,
        revision: u64,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.save_oauth(member_id, tokens).await.map(|()| true),
            Backend::Nats(j) => j.replace_oauth(member_id, tokens, revision).await,
        }
    }

    /// Takes the lease `name` (e.g. `refresh.<member>`, `offline.<member>`): one host at a time
    /// across every host on the log. Waits up to `patience` for the holder to give it up or to
    /// die (zero: one try); `None` if another host still holds it. Renewed while held; give it
    /// up with [`Held::release`]. The embedded backend has one host: always granted.
    pub async fn lease(&self, name: &str, patience: Duration) -> Result<Option<Held>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(Some(Held(HeldBackend::Local))),
            Backend::Nats(j) => {
                Ok(j.lease(name, patience).await?.map(|h| Held(HeldBackend::Nats(h))))
            }
        }
    }

    /// Which host holds the lease `name` now, if any (`None` on the embedded backend).
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Embedded(_) => Ok(None),
            Backend::Nats(j) => j.lease_holder(name).await,
        }
    }

    /// This host's name as lease holders are shown (`None` on the embedded backend).
    pub fn host_id(&self) -> Option<String> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::Nats(j) => Some(j.host_id().to_owned()),
        }
    }

    /// Stores a portal's OAuth tokens (JSON) durably; returns once they are durable.
    pub async fn save_oauth(&self, member_id: &str, tokens: Vec<u8>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.save_oauth(member_id, tokens).await,
            Backend::Nats(j) => j.save_oauth(member_id, tokens).await,
        }
    }

    /// A portal's stored OAuth tokens (JSON), if any.
    pub async fn oauth(&self, member_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.oauth(member_id),
            Backend::Nats(j) => j.oauth(member_id).await,
        }
    }

    /// Sets (`Some`) or removes (`None`) a named state value, durably.
    pub async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.set_state(name, value).await,
            Backend::Nats(j) => j.set_state(name, value).await,
        }
    }

    /// A named state value, if set.
    pub async fn state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.state(name),
            Backend::Nats(j) => j.state(name).await,
        }
    }

    /// `plugin`'s pending state of event `id`, if the event is pending for it.
    pub async fn pending(&self, plugin: &str, id: u64) -> Result<Option<Pending>, StoreError> {
        match &self.backend {
            Backend::Embedded(j) => j.pending(plugin, id),
            Backend::Nats(j) => j.pending(plugin, id).await,
        }
    }

    /// Waits until everything reported so far is durable.
    pub async fn flush(&self) {
        match &self.backend {
            Backend::Embedded(j) => j.flush().await,
            Backend::Nats(j) => j.flush().await,
        }
    }

    /// Makes everything durable and closes the storage cleanly: the host's last step (later
    /// outcomes are lost, as after a crash: redelivered).
    pub async fn finish(&self) {
        match &self.backend {
            Backend::Embedded(j) => j.finish().await,
            Backend::Nats(j) => j.finish().await,
        }
    }

    /// The consumer of `plugin`'s pending events. One per plugin. It and its lanes honour the
    /// plugin's pause (read now if this process does not know it yet: a plugin enabled by a
    /// reload; on the NATS backend the watch has brought every stored pause already).
    pub fn consumer(&self, plugin: &str) -> Consumer {
        if let Backend::Embedded(j) = &self.backend
            && !self.pauses.is_known(plugin)
        {
            match j.state(&pause::state_name(plugin)) {
                Ok(value) => self.pauses.apply(plugin, value.as_deref().and_then(Pause::decode), 0),
                Err(e) => {
                    tracing::warn!(plugin, "cannot read whether the plugin is paused: {e}")
                }
            }
        }
        let backend = match &self.backend {
            Backend::Embedded(j) => ConsumerBackend::Embedded(j.consumer(plugin)),
            Backend::Nats(j) => ConsumerBackend::Nats(j.consumer(plugin)),
        };
        Consumer {
            backend,
            pause: PauseHandle {
                plugin: Arc::from(plugin),
                gate: self.pauses.gate(plugin),
                journal: self.clone(),
            },
        }
    }

    /// Stops handing out events: consumers return `None` from now on.
    pub fn close(&self) {
        match &self.backend {
            Backend::Embedded(j) => j.close(),
            Backend::Nats(j) => j.close(),
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
            p.paused = if self.pauses.is_known(&p.plugin) {
                self.pauses.get(&p.plugin)
            } else {
                self.stored_pause(&p.plugin).await?
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
    /// holding one drops it ([`Reporter::is_skipped`]).
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

/// The learned tokens' changes: see [`Journal::token_changes`].
pub type TokenChanges = tokio::sync::mpsc::UnboundedReceiver<(String, Option<Secret>)>;

/// A lease held by this host ([`Journal::lease`]); dropping it gives it up too, in the
/// background.
pub struct Held(HeldBackend);

enum HeldBackend {
    /// The embedded backend: one host, nothing to hold.
    Local,
    Nats(nats::Held),
}

impl Held {
    /// Whether the lease is still this host's (it is lost when it could not be renewed in
    /// time); work that must not run on two hosts checks it before each such step.
    pub fn is_held(&self) -> bool {
        match &self.0 {
            HeldBackend::Local => true,
            HeldBackend::Nats(h) => h.is_held(),
        }
    }

    /// Gives the lease up; once this returns another host may take it.
    pub async fn release(self) {
        match self.0 {
            HeldBackend::Local => {}
            HeldBackend::Nats(h) => h.release().await,
        }
    }
}

/// One event for one plugin, as the journal holds it: [`Delivery::open`] decodes it. Decoding
/// is left to the plugin's delivery thread, off the async threads that serve HTTP.
#[derive(Debug)]
pub struct Delivery {
    /// The journal's id for the event.
    pub id: u64,
    /// The plugin's pending state of the event as read: attempts already made (before a
    /// restart, too), when the next one is due, crashes counted so far.
    pub pending: Pending,
    record: EventRecord,
}

impl Delivery {
    /// The event as plugins get it, with its pending state (attempts, next attempt time,
    /// crashes), or why it cannot be delivered (its journaled body no longer decodes: a dead
    /// letter).
    pub fn open(self) -> Result<(Envelope, Pending), DeadLetter> {
        let Delivery { id, pending, record } = self;
        match decode::decode(&record.raw, record.meta.format.into()) {
            Ok(event) => Ok((
                Envelope {
                    id,
                    received_at_ms: record.meta.received_at_ms,
                    raw: record.raw,
                    event,
                    source: record.meta.source,
                    extra: record.meta.extra,
                },
                pending,
            )),
            Err(e) => Err(DeadLetter {
                reason: format!("cannot decode the journaled body: {e}"),
                attempts: pending.attempts,
                at_ms: now_ms(),
            }),
        }
    }

    /// How the journaled body is encoded (a runner decodes it again on its side).
    pub fn format(&self) -> record::Format {
        self.record.meta.format
    }
}

/// One plugin's view of the journal: its pending events in id order, then new ones as they
/// arrive, and dead letters put back by `journal replay`. While the plugin is paused it hands
/// out nothing.
pub struct Consumer {
    backend: ConsumerBackend,
    pause: PauseHandle,
}

enum ConsumerBackend {
    Embedded(embedded::Consumer),
    Nats(nats::Consumer),
}

/// What a plugin's consumer and reporter know of its pause.
#[derive(Clone)]
struct PauseHandle {
    plugin: Arc<str>,
    gate: Arc<pause::Gate>,
    /// To store a pause the plugin makes itself (`Reporter::pause`).
    journal: Journal,
}

/// How often a paused plugin's consumer looks whether it was resumed.
const PAUSE_LOOK: Duration = Duration::from_millis(50);

impl Consumer {
    /// The plugin's name.
    pub fn plugin(&self) -> &Arc<str> {
        match &self.backend {
            ConsumerBackend::Embedded(c) => c.plugin(),
            ConsumerBackend::Nats(c) => c.plugin(),
        }
    }

    /// A handle that stops this consumer.
    pub fn stopper(&self) -> Stopper {
        match &self.backend {
            ConsumerBackend::Embedded(c) => Stopper(StopperBackend::Embedded(c.stopper())),
            ConsumerBackend::Nats(c) => Stopper(StopperBackend::Nats(c.stopper())),
        }
    }

    /// The next event to deliver, once the plugin is not paused; `None` once the journal is
    /// closed or the consumer stopped.
    pub async fn next(&mut self) -> Option<Delivery> {
        if self.pause.gate.is_paused() {
            let (stopper, reporter) = (self.stopper(), self.reporter());
            while self.pause.gate.is_paused() {
                if stopper.is_stopped() || reporter.is_closed() {
                    return None;
                }
                tokio::time::sleep(PAUSE_LOOK).await;
            }
        }
        match &mut self.backend {
            ConsumerBackend::Embedded(c) => c.next().await,
            ConsumerBackend::Nats(c) => c.next().await,
        }
    }

    /// A handle to report outcomes with, usable from other tasks and threads.
    pub fn reporter(&self) -> Reporter {
        let backend = match &self.backend {
            ConsumerBackend::Embedded(c) => ReporterBackend::Embedded(c.reporter()),
            ConsumerBackend::Nats(c) => ReporterBackend::Nats(c.reporter()),
        };
        Reporter { backend, pause: self.pause.clone() }
    }
}

/// Stops one consumer (its plugin was disabled); its events stay in the journal.
#[derive(Clone)]
pub struct Stopper(StopperBackend);

#[derive(Clone)]
enum StopperBackend {
    Embedded(embedded::Stopper),
    Nats(nats::Stopper),
}

impl Stopper {
    /// The consumer returns `None` from its next `next()` on.
    pub fn stop(&self) {
        match &self.0 {
            StopperBackend::Embedded(s) => s.stop(),
            StopperBackend::Nats(s) => s.stop(),
        }
    }

    /// Whether the consumer was stopped.
    pub fn is_stopped(&self) -> bool {
        match &self.0 {
            StopperBackend::Embedded(s) => s.is_stopped(),
            StopperBackend::Nats(s) => s.is_stopped(),
        }
    }
}

/// Reports one plugin's outcomes to the journal, and tells its lanes whether it is paused.
#[derive(Clone)]
pub struct Reporter {
    backend: ReporterBackend,
    pause: PauseHandle,
}

#[derive(Clone)]
enum ReporterBackend {
    Embedded(embedded::Reporter),
    Nats(nats::Reporter),
}

impl Reporter {
    /// Whether the plugin is paused now (an operator's pause or its own): lanes start nothing
    /// new while it is.
    pub fn is_paused(&self) -> bool {
        self.pause.gate.is_paused()
    }

    /// How many times the plugin was resumed since the host started: the circuit breaker
    /// counts failures afresh after each.
    pub fn resumes(&self) -> u64 {
        self.pause.gate.resumes()
    }

    /// Pauses the plugin (its circuit breaker: `pause_after_failures`), durably; it is honoured
    /// here at once, even when storing it fails (the error says so).
    pub async fn pause(&self, pause: Pause) -> Result<(), StoreError> {
        let journal = &self.pause.journal;
        let stored = journal.set_pause(&self.pause.plugin, Some(pause.clone())).await;
        if stored.is_err() {
            let revision = journal.pauses.next_revision();
            journal.pauses.apply(&self.pause.plugin, Some(pause), revision);
        }
        stored
    }

    /// Resolves once the journal is closing (the host is shutting down).
    pub async fn closed(&self) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.closed().await,
            ReporterBackend::Nats(r) => r.closed().await,
        }
    }

    /// Whether the journal is closing.
    pub fn is_closed(&self) -> bool {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.is_closed(),
            ReporterBackend::Nats(r) => r.is_closed(),
        }
    }

    /// Whether an operator skipped event `id` (`journal skip`) since it was read: it is a dead
    /// letter now, so stop delivering it (a process-mode plugin stuck on it can be killed).
    pub fn is_skipped(&self, id: u64) -> bool {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.is_skipped(id),
            ReporterBackend::Nats(r) => r.is_skipped(id),
        }
    }

    /// [`Reporter::is_skipped`], and forgets it: for the lane that drops the event.
    pub fn take_skipped(&self, id: u64) -> bool {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.take_skipped(id),
            ReporterBackend::Nats(r) => r.take_skipped(id),
        }
    }

    /// The plugin finished event `id` (done or skipped).
    pub fn complete(&self, id: u64) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.complete(id),
            ReporterBackend::Nats(r) => r.complete(id),
        }
    }

    /// An attempt failed (or its process crashed); remember the attempt and crash counts and
    /// the next attempt's time.
    pub fn update(&self, id: u64, state: Pending) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.update(id, state),
            ReporterBackend::Nats(r) => r.update(id, state),
        }
    }

    /// One delivery attempt of event `id` ended (before its outcome is reported): kept for
    /// the console, at most [`admin::MAX_ATTEMPTS_KEPT`] per event and plugin, pruned with
    /// the event. Never blocks; a lost attempt record loses no event.
    pub fn attempt(&self, id: u64, attempt: admin::Attempt) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.attempt(id, attempt),
            ReporterBackend::Nats(r) => r.attempt(id, attempt),
        }
    }

    /// The plugin gave up on event `id`: a dead letter.
    pub fn bury(&self, id: u64, dead: DeadLetter) {
        match &self.backend {
            ReporterBackend::Embedded(r) => r.bury(id, dead),
            ReporterBackend::Nats(r) => r.bury(id, dead),
        }
    }
}
