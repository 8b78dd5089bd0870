//! The NATS JetStream backend (`[journal] backend = "nats"`): several hosts share one
//! replicated log.
//!
//! Files, each one concern:
//! - `connect.rs`: `[journal.nats]` -> a client and a JetStream context; the names of the
//!   stream, the dead-letter stream, the buckets and the consumers derived from `stream`.
//! - `append.rs`: publishing an accepted event (`Nats-Msg-Id` = the duplicate key), waiting
//!   for the quorum's acknowledgement at most `ack_timeout_ms`; `spool.rs`: the local
//!   embedded journal that takes an event the log did not acknowledge in time, and forwards
//!   it later with the same `Nats-Msg-Id`.
//! - `deliver.rs`: a plugin's durable pull consumer, its `Consumer`, `Reporter`, `Stopper`;
//!   `admin.rs`: dead letters, replay, purge, skip, stats, list, show; `dead.rs`: storing and
//!   reading a dead letter; `report.rs`: `b24-host check`'s report and the log's state.
//! - `kv.rs`: the key/value state (learned application tokens, stored OAuth tokens, the
//!   offline pollers' values) and the leases (one OAuth refresh per portal at a time, one
//!   poller per portal).
//!
//! Invariant: no `async_nats` type leaves this folder.

mod admin;
mod append;
mod connect;
mod dead;
mod deliver;
mod hold;
mod kv;
mod lease;
mod report;
mod resequence;
mod setup;
mod spool;
mod wake;

use std::{path::Path, sync::Arc};

use b24_plugin_api::Secret;

use super::{
    Appended, StoreError, admin as data,
    dedup::DedupKey,
    record::{EventRecord, Pending},
};
use crate::config::{JournalConfig, NatsConfig};
pub use deliver::{Consumer, Reporter, Stopper};
pub use hold::Held;

/// The NATS backend of a running host (or of a `journal` command).
#[derive(Clone)]
pub struct Nats {
    inner: Arc<Inner>,
}

/// What every part shares. Each part keeps its own state in its own type.
struct Inner {
    /// The connection (`connect.rs`).
    link: connect::Link,
    /// The append path and the spool (`append.rs`, `spool.rs`).
    appender: append::Appender,
    /// The key/value state (`kv.rs`).
    kv: kv::State,
    /// The consumers' shared state (`deliver.rs`).
    deliver: deliver::Shared,
}

impl Nats {
    /// Connects for a running host in `state_dir` with the enabled `plugins`: the stream, the
    /// buckets and every plugin's consumer exist before it returns (or are created as soon as
    /// the log answers, while appends go to the spool). The thread to join at exit is the
    /// spool's writer.
    pub async fn open(
        state_dir: &Path,
        config: &JournalConfig,
        plugins: &[String],
    ) -> Result<(Nats, std::thread::JoinHandle<()>), StoreError> {
        let nats = nats_config(config)?;
        let link = connect::Link::connect(nats).await?;
        // Streams, bucket and every plugin's consumer before anything is published (the
        // events stream keeps an event only for the consumers that exist).
        let (stream, pending) = setup::run(&link, config, nats.replicas, plugins).await?;
        let kv = setup::patiently(&link, nats.replicas, || kv::State::open(&link, nats.replicas))
            .await?;
        let deliver = setup::patiently(&link, nats.replicas, || {
            deliver::Shared::open(&link, nats.replicas, stream.clone(), pending.clone())
        })
        .await?;
        // Last: the spool starts forwarding only once the consumers exist.
        let (appender, thread) = append::Appender::open(state_dir, config, &link).await?;
        let inner = Inner { link, appender, kv, deliver };
        Ok((Nats { inner: Arc::new(inner) }, thread))
    }

    /// Connects to the log `config` names and reports it (`b24-host check`), for the enabled
    /// `plugins` (report.rs).
    pub async fn report(
        config: &JournalConfig,
        plugins: &[String],
    ) -> Result<data::LogReport, StoreError> {
        report::report(nats_config(config)?, plugins).await
    }

    /// Connects for a `journal` command: no spool, no consumers of its own.
    pub async fn open_for_command(
        state_dir: &Path,
        config: &JournalConfig,
    ) -> Result<(Nats, std::thread::JoinHandle<()>), StoreError> {
        let _ = state_dir;
        let nats = nats_config(config)?;
        let link = connect::Link::connect(nats).await?;
        // A command has nothing to spool: say at once that the log cannot be reached.
        report::connected(&link, nats).await?;
        let (appender, thread) = append::Appender::for_command(&link);
        // A fresh cluster may not place a bucket at once ("no suitable peers"): as at a start.
        let kv = setup::patiently(&link, nats.replicas, || kv::State::open(&link, nats.replicas))
            .await?;
        let deliver = deliver::Shared::for_command(&link).await;
        let inner = Inner { link, appender, kv, deliver };
        Ok((Nats { inner: Arc::new(inner) }, thread))
    }
}

fn nats_config(config: &JournalConfig) -> Result<&NatsConfig, StoreError> {
    config.nats.as_ref().ok_or_else(|| {
        StoreError::Refused(
            "journal.backend is \"nats\" but there is no [journal.nats] table".into(),
        )
    })
}

// The seam's calls, grouped by the file that implements them.
impl Nats {
    /// See `Journal::last_write_error`: an event would be refused now, the log not
    /// acknowledging and the spool not writable (append.rs). Spooling alone is no error.
    pub fn last_write_error(&self) -> Option<String> {
        match self.log_state() {
            data::LogState::Spooling { reason } => self.inner.appender.refusing(&reason),
            _ => None,
        }
    }

    /// See `Journal::log_state`: spooling while the append path says why the log does not
    /// acknowledge (append.rs), else the connection's state (report.rs).
    pub fn log_state(&self) -> data::LogState {
        match self.inner.appender.last_error() {
            Some(reason) => data::LogState::Spooling { reason },
            None => report::state(&self.inner.link),
        }
    }

    /// See `Journal::damaged_records` (deliver.rs).
    pub fn damaged_records(&self) -> u64 {
        self.inner.deliver.damaged()
    }

    /// Events in this host's spool not yet forwarded (append.rs).
    pub fn spooled_events(&self) -> u64 {
        self.inner.appender.spooled_events()
    }

    /// The spool's size on this host (append.rs).
    pub fn size_bytes(&self) -> Option<u64> {
        self.inner.appender.spool_bytes()
    }

    /// See `Journal::append` (append.rs).
    pub async fn append(
        &self,
        record: Box<EventRecord>,
        key: DedupKey,
        plugins: Vec<Arc<str>>,
        change: Option<crate::journal::PortalChange>,
        permanent: bool,
    ) -> Result<Appended, StoreError> {
        if let Some(change) = change {
            if let Some(token) = change.token {
                self.inner.kv.set_token(&change.member_id, token).await?;
            }
            if let Some(oauth) = change.oauth {
                self.inner.kv.save_oauth(&change.member_id, oauth).await?;
            }
        }
        self.inner.appender.append(&self.inner.link, record, key, plugins, permanent).await
    }

    /// Learned application tokens (kv.rs).
    pub async fn learned_tokens(
        &self,
    ) -> Result<std::collections::BTreeMap<String, Secret>, StoreError> {
        self.inner.kv.learned_tokens().await
    }

    /// See `Journal::learned_token` (kv.rs).
    pub async fn learned_token(&self, member_id: &str) -> Result<Option<Secret>, StoreError> {
        self.inner.kv.learned_token(member_id).await
    }

    /// See `Journal::token_changes` (kv.rs).
    pub fn token_changes(&self) -> tokio::sync::mpsc::UnboundedReceiver<(String, Option<Secret>)> {
        self.inner.kv.token_changes()
    }

    /// See `Journal::oauth_entry` (kv.rs).
    pub async fn oauth_entry(&self, member_id: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        self.inner.kv.oauth_entry(member_id).await
    }

    /// See `Journal::replace_oauth` (kv.rs).
    pub async fn replace_oauth(
        &self,
        member_id: &str,
        tokens: Vec<u8>,
        revision: u64,
    ) -> Result<bool, StoreError> {
        self.inner.kv.replace_oauth(member_id, tokens, revision).await
    }

    /// See `Journal::lease` (kv.rs, hold.rs).
    pub async fn lease(
        &self,
        name: &str,
        patience: std::time::Duration,
    ) -> Result<Option<Held>, StoreError> {
        self.inner.kv.lease(name, patience).await
    }

    /// See `Journal::lease_holder` (kv.rs).
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.kv.lease_holder(name).await
    }

    /// This host's id on the log (lease holders name it).
    pub fn host_id(&self) -> &str {
        &self.inner.link.host_id
    }

    /// See `Journal::announce_offline_rows` (wake.rs).
    pub async fn announce_offline_rows(&self, member_id: &str) {
        wake::announce(&self.inner.link, member_id).await;
    }

    /// See `Journal::offline_wakes` (wake.rs).
    pub fn offline_wakes(&self) -> tokio::sync::mpsc::UnboundedReceiver<String> {
        wake::listen(&self.inner.link)
    }

    /// See `Journal::save_oauth` (kv.rs).
    pub async fn save_oauth(&self, member_id: &str, tokens: Vec<u8>) -> Result<(), StoreError> {
        self.inner.kv.save_oauth(member_id, tokens).await
    }

    /// See `Journal::oauth` (kv.rs).
    pub async fn oauth(&self, member_id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.kv.oauth(member_id).await
    }

    /// See `Journal::set_state` (kv.rs).
    pub async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        self.inner.kv.set_state(name, value).await
    }

    /// See `Journal::state` (kv.rs).
    pub async fn state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.kv.state(name).await
    }

    /// See `Journal::set_pause` (kv.rs): the new value's revision.
    pub async fn set_pause(&self, plugin: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        self.inner.kv.set_pause(plugin, value).await
    }

    /// See `Journal::stored_pause` (kv.rs): the value and its revision.
    pub async fn pause(&self, plugin: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        self.inner.kv.pause(plugin).await
    }

    /// The pauses' changes by any host or command (kv.rs), for `Journal::open`.
    pub fn pause_changes(&self) -> tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>, u64)> {
        self.inner.kv.pause_changes()
    }

    /// See `Journal::pending` (deliver.rs).
    pub async fn pending(&self, plugin: &str, id: u64) -> Result<Option<Pending>, StoreError> {
        self.inner.deliver.pending(&self.inner.link, plugin, id).await
    }

    /// See `Journal::flush` (append.rs: the spool; acks are sent as they come).
    pub async fn flush(&self) {
        self.inner.appender.flush().await;
    }

    /// See `Journal::finish`: outcomes sent, the spool closed, the connection flushed.
    pub async fn finish(&self) {
        self.inner.deliver.close();
        self.inner.deliver.drain(std::time::Duration::from_secs(2)).await;
        self.inner.appender.finish(&self.inner.link).await;
        self.inner.link.flush().await;
    }

    /// See `Journal::consumer` (deliver.rs).
    pub fn consumer(&self, plugin: &str) -> Consumer {
        deliver::Consumer::new(self.inner.link.clone(), &self.inner.deliver, plugin)
    }

    /// See `Journal::close` (deliver.rs).
    pub fn close(&self) {
        self.inner.deliver.close();
    }

    /// See `Journal::stats` (admin.rs).
    pub async fn stats(&self, enabled: Vec<String>) -> Result<data::Stats, StoreError> {
        admin::stats(&self.inner.link, &self.inner.appender, enabled).await
    }

    /// See `Journal::list` (admin.rs).
    pub async fn list(&self, limit: usize) -> Result<Vec<data::EventSummary>, StoreError> {
        admin::list(&self.inner.link, limit).await
    }

    /// See `Journal::query` (admin.rs).
    pub async fn query(&self, query: data::Query) -> Result<data::Page, StoreError> {
        admin::query(&self.inner.link, query).await
    }

    /// See `Journal::show` (admin.rs).
    pub async fn show(&self, id: u64) -> Result<Option<data::EventDetail>, StoreError> {
        admin::show(&self.inner.link, &self.inner.deliver, id).await
    }

    /// See `Journal::dead` (admin.rs).
    pub async fn dead(&self, plugin: Option<String>) -> Result<Vec<data::DeadRow>, StoreError> {
        admin::dead(&self.inner.link, plugin).await
    }

    /// See `Journal::replay` (admin.rs).
    pub async fn replay(&self, which: data::Selection) -> Result<Vec<(String, u64)>, StoreError> {
        admin::replay(&self.inner.link, which).await
    }

    /// See `Journal::purge` (admin.rs).
    pub async fn purge(&self, which: data::Selection) -> Result<Vec<(String, u64)>, StoreError> {
        admin::purge(&self.inner.link, which).await
    }

    /// See `Journal::skip` (admin.rs): the pairs moved to the dead letters.
    pub async fn skip(
        &self,
        plugin: String,
        ids: Vec<u64>,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        admin::skip(&self.inner.link, &self.inner.deliver, plugin, ids).await
    }
}
