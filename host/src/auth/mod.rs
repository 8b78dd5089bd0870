//! Application-token verification: is this event really from a portal where our app lives?
//!
//! Bitrix24 signs nothing; an event's only proof is `auth[application_token]`, which must equal
//! the token the portal gave the app (per portal, keyed by `member_id`). Tokens come from
//! host.toml (re-read on reload) or, with `learn_tokens_on_install`, from the portal's
//! `ONAPPINSTALL` event once [`install`] has verified it at the OAuth server; learned tokens are
//! kept in the journal, written in the same transaction as the event that taught or revoked
//! them. With several hosts on one shared log, a token learned (or forgotten) through another
//! host reaches this one by [`Verifier::set_learned`] (server.rs feeds it the journal's
//! `token_changes`; ingress reads the log once more before answering 401). Comparison is
//! constant-time, and no token is ever logged.
//!
//! - [`install`]: verifying an install (refresh-token exchange, rate limit, cap).
//! - [`refused`]: the installs refused lately, for the console.

pub mod install;
pub mod refused;

use std::{collections::BTreeMap, sync::RwLock};

use b24_plugin_api::Secret;
use subtle::ConstantTimeEq;

use crate::{
    config::{AuthConfig, RestConfig},
    decode::Decoded,
};
pub use install::{InstallError, Verified};

/// Why an event was refused (HTTP 401). The reason is safe to show and to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `auth[member_id]` or no `auth[application_token]`.
    #[error("missing auth[member_id] or auth[application_token]")]
    Missing,
    /// The portal has no known token.
    #[error("unknown portal")]
    UnknownPortal,
    /// The token differs from the portal's.
    #[error("wrong application token")]
    Mismatch,
}

/// What accepting the event implies for the learned tokens: journaled with the event, then
/// applied with [`Verifier::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to change.
    None,
    /// `ONAPPINSTALL` that must be verified ([`Verifier::verify_install`]) before it is
    /// accepted: from an unknown portal, or a learned one with another token (a re-install
    /// whose uninstall never arrived).
    Verify,
    /// A verified `ONAPPINSTALL`: remember its token.
    Learn,
    /// `ONAPPUNINSTALL` verified against a learned token: forget it.
    Forget,
}

/// Checks application tokens against host.toml and the learned-token store.
pub struct Verifier {
    settings: RwLock<AuthConfig>,
    learned: RwLock<BTreeMap<String, Secret>>,
    installs: install::Installs,
    /// Installs refused lately (the console's overview).
    pub refused: refused::RefusedInstalls,
}

impl Verifier {
    /// A verifier for `config` with the tokens learned so far; installs are verified with the
    /// OAuth settings of `rest`.
    pub fn new(
        config: &AuthConfig,
        rest: &RestConfig,
        learned: BTreeMap<String, Secret>,
    ) -> Result<Verifier, reqwest::Error> {
        Ok(Verifier {
            settings: RwLock::new(config.clone()),
            learned: RwLock::new(learned),
            installs: install::Installs::new(rest)?,
            refused: refused::RefusedInstalls::default(),
        })
    }

    /// Takes a re-read `[auth]` (live reload): portals added or removed, learning switched,
    /// limits changed. Learned tokens stay.
    pub fn reconfigure(&self, config: &AuthConfig) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = config.clone();
        for warning in self.warnings() {
            tracing::warn!("{warning}");
        }
    }

    /// What is wrong with the auth settings as the host runs them (see [`warnings`]).
    pub fn warnings(&self) -> Vec<String> {
        let settings = self.settings.read().unwrap_or_else(|p| p.into_inner());
        install::warnings(&settings, self.installs.has_credentials())
    }

    /// Verifies `event`; on success says what to change in the store once it is accepted.
    pub fn verify(&self, event: &Decoded) -> Result<Effect, AuthError> {
        let member = event.auth.member_id.as_str();
        let token = &event.auth.application_token;
        if member.is_empty() || token.is_empty() {
            return Err(AuthError::Missing);
        }
        let settings = self.settings.read().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = settings.portals.get(member) {
            return same(known, token).then_some(Effect::None).ok_or(AuthError::Mismatch);
        }
        let install = settings.learn_tokens_on_install && event.code == "ONAPPINSTALL";
        let learned = self.learned.read().unwrap_or_else(|p| p.into_inner());
        match learned.get(member) {
            Some(known) if same(known, token) => {
                Ok(if event.code == "ONAPPUNINSTALL" { Effect::Forget } else { Effect::None })
            }
            Some(_) if install => Ok(Effect::Verify),
            Some(_) => Err(AuthError::Mismatch),
            None if install => Ok(Effect::Verify),
            None => Err(AuthError::UnknownPortal),
        }
    }

    /// Verifies an install that [`Verifier::verify`] answered [`Effect::Verify`] for: within
    /// the rate limit and the cap, its `auth[refresh_token]` is exchanged at the configured
    /// OAuth server its `auth[server_endpoint]` names, and the answer must name the event's
    /// `member_id`. One install at a time: keep the
    /// returned [`Verified`] until the event is journaled and applied.
    pub async fn verify_install(&self, event: &Decoded) -> Result<Verified<'_>, InstallError> {
        let per_minute = self.settings().unknown_installs_per_minute;
        self.installs.admit(per_minute)?;
        let guard = self.installs.one_at_a_time().await;
        // Another request may have learned the portal while this one waited.
        let effect = self.verify(event).map_err(InstallError::Auth)?;
        if effect != Effect::Verify {
            return Ok(Verified { effect, tokens: None, _guard: guard });
        }
        let settings = self.settings();
        if !settings.learn_tokens_on_install {
            return Err(InstallError::Auth(AuthError::UnknownPortal));
        }
        let member = event.auth.member_id.as_str();
        {
            let learned = self.learned.read().unwrap_or_else(|p| p.into_inner());
            if !learned.contains_key(member) && learned.len() >= settings.max_learned_portals {
                return Err(InstallError::TooManyPortals(settings.max_learned_portals));
            }
        }
        let tokens = self.installs.exchange(event).await?;
        Ok(Verified { effect: Effect::Learn, tokens: Some(tokens), _guard: guard })
    }

    fn settings(&self) -> AuthConfig {
        self.settings.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The token write to journal with the event: `(member_id, Some(token))` to remember,
    /// `(member_id, None)` to forget.
    pub fn token_change(event: &Decoded, effect: &Effect) -> Option<(String, Option<Secret>)> {
        let member = event.auth.member_id.clone();
        match effect {
            Effect::None | Effect::Verify => None,
            Effect::Learn => Some((member, Some(event.auth.application_token.clone()))),
            Effect::Forget => Some((member, None)),
        }
    }

    /// Applies `effect` once the event that carries it is journaled.
    pub fn apply(&self, event: &Decoded, effect: &Effect) {
        let mut learned = self.learned.write().unwrap_or_else(|p| p.into_inner());
        match effect {
            Effect::None | Effect::Verify => {}
            Effect::Learn => {
                learned.insert(event.auth.member_id.clone(), event.auth.application_token.clone());
            }
            Effect::Forget => {
                learned.remove(&event.auth.member_id);
            }
        }
    }

    /// Takes a learned token change made through another host (the shared log's watch, or a
    /// fresh read after a miss): `Some` learned, `None` forgotten (uninstalled).
    pub fn set_learned(&self, member_id: &str, token: Option<Secret>) {
        let mut learned = self.learned.write().unwrap_or_else(|p| p.into_inner());
        match token {
            Some(token) => {
                learned.insert(member_id.to_owned(), token);
            }
            None => {
                learned.remove(member_id);
            }
        }
    }

    /// The application token the host knows for `member_id` (host.toml's, else the learned
    /// one): what an http plugin's `format = "form"` request carries in
    /// `auth[application_token]`, as Bitrix24 sent it.
    pub fn application_token(&self, member_id: &str) -> Option<Secret> {
        let settings = self.settings.read().unwrap_or_else(|p| p.into_inner());
        if let Some(token) = settings.portals.get(member_id) {
            return Some(token.clone());
        }
        drop(settings);
        self.learned.read().unwrap_or_else(|p| p.into_inner()).get(member_id).cloned()
    }

    /// The member ids with a learned token.
    pub fn learned_portals(&self) -> Vec<String> {
        self.learned.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

/// What `check` and `serve` warn about in `config`'s auth settings.
pub fn warnings(config: &crate::config::Config) -> Vec<String> {
    let credentials = config.rest.client_id.is_some() && config.rest.client_secret.is_some();
    install::warnings(&config.auth, credentials)
}

fn same(known: &Secret, given: &Secret) -> bool {
    known.expose().as_bytes().ct_eq(given.expose().as_bytes()).into()
}
