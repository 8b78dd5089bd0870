//! The journal's face for the host's small durable state: learned application tokens, each
//! portal's stored OAuth pair, named values (the offline pollers' `process_id`), leases ("one
//! host at a time" on a shared log) and paused plugins. Users: ingress (tokens), the REST
//! client (OAuth pairs, the refresh lease), the offline pollers (values, leases, wakes), the
//! server's wiring (the learned tokens and their changes).

use std::{sync::Arc, time::Duration};

use b24_plugin_api::Secret;

use super::{Backend, Pause, StoreError, nats, pause};

/// The host's durable state, whichever backend holds it.
#[derive(Clone)]
pub struct State {
    pub(super) backend: Backend,
    /// Each plugin's pause as this process honours it (see [`pause`]).
    pub(super) pauses: Arc<pause::Pauses>,
}

impl State {
    /// Reads the enabled `plugins`' pauses before any of them is delivered to, and on the
    /// NATS backend watches every pause any host or command makes from now on.
    pub(super) async fn honour_pauses(&self, plugins: &[String]) {
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

    /// `plugin`'s pause as this process honours it (a running host; a command reads
    /// [`State::stored_pause`]).
    pub fn paused(&self, plugin: &str) -> Option<Pause> {
        self.pauses.get(plugin)
    }

    /// Every plugin this process honours a pause of.
    pub fn pauses(&self) -> std::collections::BTreeMap<String, Pause> {
        self.pauses.all()
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

    /// Whether several hosts share this journal (the NATS backend).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Nats(_))
    }

    /// A portal's learned token as the shared log holds it now (another host may have learned
    /// it a moment ago; its change may not have reached [`State::token_changes`] yet).
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
    /// [`State::announce_offline_rows`]). `None` on the embedded backend.
    pub fn offline_wakes(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<String>> {
        match &self.backend {
            Backend::Embedded(_) => None,
            Backend::Nats(j) => Some(j.offline_wakes()),
        }
    }

    /// A portal's stored OAuth tokens (JSON) read now, with the revision to give
    /// [`State::replace_oauth`].
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

    /// `plugin`'s gate, its pause read first if this process does not know it yet (a plugin
    /// enabled by a reload; on the NATS backend the watch has brought every stored pause).
    pub(super) fn gate(&self, plugin: &str) -> Arc<pause::Gate> {
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
        self.pauses.gate(plugin)
    }

    /// Honours `pause` here at once, whether or not it could be stored.
    pub(super) fn honour(&self, plugin: &str, pause: Pause) {
        let revision = self.pauses.next_revision();
        self.pauses.apply(plugin, Some(pause), revision);
    }
}

/// The learned tokens' changes: see [`State::token_changes`].
pub type TokenChanges = tokio::sync::mpsc::UnboundedReceiver<(String, Option<Secret>)>;

/// A lease held by this host ([`State::lease`]); dropping it gives it up too, in the
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
