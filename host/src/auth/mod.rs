//! Application-token verification: is this event really from a portal where our app lives?
//!
//! Bitrix24 signs nothing; an event's only proof is `auth[application_token]`, which must equal
//! the token the portal gave the app (per portal, keyed by `member_id`). Tokens come from
//! host.toml or, with `learn_tokens_on_install`, from the portal's `ONAPPINSTALL` event; learned
//! tokens are kept in the journal, written in the same transaction as the event that taught or
//! revoked them. Comparison is constant-time, and no token is ever logged.

use std::{collections::BTreeMap, sync::RwLock};

use b24_plugin_api::Secret;
use subtle::ConstantTimeEq;

use crate::{config::AuthConfig, decode::Decoded};

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
    /// `ONAPPINSTALL` from a new portal: remember its token.
    Learn,
    /// `ONAPPUNINSTALL` verified against a learned token: forget it.
    Forget,
}

/// Checks application tokens against host.toml and the learned-token store.
pub struct Verifier {
    configured: BTreeMap<String, Secret>,
    learn: bool,
    learned: RwLock<BTreeMap<String, Secret>>,
}

impl Verifier {
    /// A verifier for `config` with the tokens learned so far.
    pub fn new(config: &AuthConfig, learned: BTreeMap<String, Secret>) -> Verifier {
        Verifier {
            configured: config.portals.clone(),
            learn: config.learn_tokens_on_install,
            learned: RwLock::new(learned),
        }
    }

    /// Verifies `event`; on success says what to change in the store once it is accepted.
    pub fn verify(&self, event: &Decoded) -> Result<Effect, AuthError> {
        let member = event.auth.member_id.as_str();
        let token = &event.auth.application_token;
        if member.is_empty() || token.is_empty() {
            return Err(AuthError::Missing);
        }
        if let Some(known) = self.configured.get(member) {
            return same(known, token).then_some(Effect::None).ok_or(AuthError::Mismatch);
        }
        let learned = self.learned.read().unwrap_or_else(|p| p.into_inner());
        match learned.get(member) {
            Some(known) if same(known, token) => {
                Ok(if event.code == "ONAPPUNINSTALL" { Effect::Forget } else { Effect::None })
            }
            Some(_) => Err(AuthError::Mismatch),
            None if self.learn && event.code == "ONAPPINSTALL" => Ok(Effect::Learn),
            None => Err(AuthError::UnknownPortal),
        }
    }

    /// The token write to journal with the event: `(member_id, Some(token))` to remember,
    /// `(member_id, None)` to forget.
    pub fn token_change(event: &Decoded, effect: &Effect) -> Option<(String, Option<Secret>)> {
        let member = event.auth.member_id.clone();
        match effect {
            Effect::None => None,
            Effect::Learn => Some((member, Some(event.auth.application_token.clone()))),
            Effect::Forget => Some((member, None)),
        }
    }

    /// Applies `effect` once the event that carries it is journaled.
    pub fn apply(&self, event: &Decoded, effect: &Effect) {
        let mut learned = self.learned.write().unwrap_or_else(|p| p.into_inner());
        match effect {
            Effect::None => {}
            Effect::Learn => {
                learned.insert(event.auth.member_id.clone(), event.auth.application_token.clone());
            }
            Effect::Forget => {
                learned.remove(&event.auth.member_id);
            }
        }
    }

    /// The member ids with a learned token.
    pub fn learned_portals(&self) -> Vec<String> {
        self.learned.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

fn same(known: &Secret, given: &Secret) -> bool {
    known.expose().as_bytes().ct_eq(given.expose().as_bytes()).into()
}
