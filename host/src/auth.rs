//! Application-token verification: is this event really from a portal where our app lives?
//!
//! Bitrix24 signs nothing; an event's only proof is `auth[application_token]`, which must equal
//! the token the portal gave the app (per portal, keyed by `member_id`). Tokens come from
//! host.toml or, with `learn_tokens_on_install`, from the portal's `ONAPPINSTALL` event; learned
//! tokens are kept in the state folder. Comparison is constant-time, and no token is ever logged.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    sync::RwLock,
};

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

/// What accepting the event implies for the token store, done by [`Verifier::commit`] once the
/// event is safely queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Nothing to change.
    None,
    /// `ONAPPINSTALL` from a new portal: remember its token.
    Learn,
    /// `ONAPPUNINSTALL` verified against a learned token: forget it.
    Forget,
}

/// The token store could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the token store {}: {source}", .path.display())]
pub struct StoreError {
    path: PathBuf,
    source: std::io::Error,
}

/// Checks application tokens against host.toml and the learned-token store.
pub struct Verifier {
    configured: BTreeMap<String, Secret>,
    learn: bool,
    store_path: PathBuf,
    learned: RwLock<BTreeMap<String, Secret>>,
}

impl Verifier {
    /// A verifier for `config`, with learned tokens kept in `state_dir/tokens.json`.
    pub fn new(config: &AuthConfig, state_dir: &Path) -> Result<Verifier, StoreError> {
        let store_path = state_dir.join("tokens.json");
        let learned = load_store(&store_path)?;
        Ok(Verifier {
            configured: config.portals.clone(),
            learn: config.learn_tokens_on_install,
            store_path,
            learned: RwLock::new(learned),
        })
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

    /// Applies `effect` for `event` to the store and persists it.
    pub fn commit(&self, event: &Decoded, effect: &Effect) -> Result<(), StoreError> {
        let member = event.auth.member_id.clone();
        let mut learned = self.learned.write().unwrap_or_else(|p| p.into_inner());
        match effect {
            Effect::None => return Ok(()),
            Effect::Learn => {
                learned.insert(member, event.auth.application_token.clone());
            }
            Effect::Forget => {
                learned.remove(&member);
            }
        }
        save_store(&self.store_path, &learned)
    }

    /// The member ids with a learned token.
    pub fn learned_portals(&self) -> Vec<String> {
        self.learned.read().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }
}

fn same(known: &Secret, given: &Secret) -> bool {
    known.expose().as_bytes().ct_eq(given.expose().as_bytes()).into()
}

fn load_store(path: &Path) -> Result<BTreeMap<String, Secret>, StoreError> {
    let err = |source| StoreError { path: path.to_owned(), source };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(err(e)),
    };
    let raw: BTreeMap<String, String> = serde_json::from_str(&text)
        .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    Ok(raw.into_iter().map(|(k, v)| (k, Secret::new(v))).collect())
}

/// Writes the store atomically: a temporary file, fsync, rename, fsync of the folder.
fn save_store(path: &Path, tokens: &BTreeMap<String, Secret>) -> Result<(), StoreError> {
    let err = |source| StoreError { path: path.to_owned(), source };
    let raw: BTreeMap<&str, &str> = tokens.iter().map(|(k, v)| (k.as_str(), v.expose())).collect();
    let text = serde_json::to_vec_pretty(&raw).map_err(|e| err(std::io::Error::other(e)))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(err)?;
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(err)?;
    file.write_all(&text).and_then(|()| file.sync_all()).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(())
}
