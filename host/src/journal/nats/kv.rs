//! The key/value state in JetStream buckets, shared by every host on the log: learned
//! application tokens (`<S>_tokens`, member id -> token), stored OAuth tokens (`<S>_oauth`,
//! member id -> JSON, replaced by compare-and-set), named values (`<S>_state`: the offline
//! pollers' `process_id`s), and the leases (`lease.rs`, held through `hold.rs`).
//!
//! Keys are encoded with [`key`]: a key may hold only `[-/_=.a-zA-Z0-9]` and `.` separates
//! subject tokens, so a member id or name made of letters, digits, `-` and `_` is its own key,
//! anything else becomes `=` + the lowercase hex of its bytes (`=` never appears in the first
//! form, so both round-trip through [`unkey`]).
//!
//! Every read asks the log (no cache): a value another host wrote a moment ago is seen. The
//! learned tokens are also pushed to the verifier through [`State::token_changes`] (a watch),
//! since a round trip per request would be too slow for the token check.

use std::{collections::BTreeMap, time::Duration};

use async_nats::jetstream::kv;
use b24_plugin_api::Secret;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{connect::Link, hold::Held, lease::Leases};
use crate::journal::StoreError;

/// The buckets.
pub(super) struct State {
    tokens: kv::Store,
    oauth: kv::Store,
    state: kv::Store,
    leases: Leases,
}

fn storage(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("NATS key/value: cannot {what}: {e}"))
}

/// The bucket key of `name` (a member id, a state name): itself when it holds only ASCII
/// letters, digits, `-` and `_`, else `=` + the hex of its bytes.
pub(super) fn key(name: &str) -> String {
    let plain = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if plain {
        return name.to_owned();
    }
    let mut out = String::with_capacity(1 + 2 * name.len());
    out.push('=');
    for b in name.bytes() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The name a bucket key stands for; `None` for a key [`key`] cannot have made.
pub(super) fn unkey(key: &str) -> Option<String> {
    let Some(hex) = key.strip_prefix('=') else {
        let plain = !key.is_empty()
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        return plain.then(|| key.to_owned());
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| hex.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Opens bucket `<prefix>_<suffix>` or creates it with `replicas` copies, one value per key.
async fn bucket(
    link: &Link,
    suffix: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    let bucket = format!("{}_{suffix}", link.names.bucket_prefix);
    if let Ok(store) = link.js.get_key_value(&bucket).await {
        return Ok(store);
    }
    let config = kv::Config {
        bucket: bucket.clone(),
        description: description.into(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    };
    match link.js.create_key_value(config).await {
        Ok(store) => Ok(store),
        // Another host created it meanwhile.
        Err(created) => link
            .js
            .get_key_value(&bucket)
            .await
            .map_err(|_| storage(&format!("create bucket {bucket}"), created)),
    }
}

impl State {
    /// Opens (or creates) the buckets, `replicas` copies each.
    pub async fn open(link: &Link, replicas: usize) -> Result<State, StoreError> {
        Ok(State {
            tokens: bucket(link, "tokens", "b24-host learned application tokens", replicas).await?,
            oauth: bucket(link, "oauth", "b24-host stored OAuth tokens", replicas).await?,
            state: bucket(link, "state", "b24-host named values", replicas).await?,
            leases: Leases::open(link, replicas).await?,
        })
    }

    /// Remembers (`Some`) or forgets (`None`) a portal's learned application token.
    pub async fn set_token(&self, member: &str, token: Option<Secret>) -> Result<(), StoreError> {
        let key = key(member);
        match token {
            Some(token) => {
                let value = Bytes::from(token.expose().to_owned());
                self.tokens.put(&key, value).await.map_err(|e| storage("store a token", e))?;
            }
            None => {
                self.tokens.delete(&key).await.map_err(|e| storage("forget a token", e))?;
            }
        }
        Ok(())
    }

    /// A portal's learned token as the log holds it now.
    pub async fn learned_token(&self, member: &str) -> Result<Option<Secret>, StoreError> {
        let value = self.tokens.get(key(member)).await.map_err(|e| storage("read a token", e))?;
        Ok(value.map(|v| Secret::new(String::from_utf8_lossy(&v).as_ref())))
    }

    /// Every learned token.
    pub async fn learned_tokens(&self) -> Result<BTreeMap<String, Secret>, StoreError> {
        let mut keys = match self.tokens.keys().await {
            Ok(keys) => keys.boxed(),
            Err(e) => return Err(storage("list the tokens", e)),
        };
        let mut out = BTreeMap::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(|e| storage("list the tokens", e))?;
            let Some(member) = unkey(&k) else { continue };
            if let Some(value) =
                self.tokens.get(&k).await.map_err(|e| storage("read a token", e))?
            {
                out.insert(member, Secret::new(String::from_utf8_lossy(&value).as_ref()));
            }
        }
        Ok(out)
    }

    /// The learned tokens' changes made by any host (this one too), from now on, starting with
    /// every token as it is: `(member, Some(token))` learned, `(member, None)` forgotten. The
    /// watch is recreated when it ends; it stops when the receiver is dropped.
    pub fn token_changes(&self) -> mpsc::UnboundedReceiver<(String, Option<Secret>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = self.tokens.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watch_tokens(store, &tx) => {}
                () = tx.closed() => {}
            }
        });
        rx
    }

    /// Stores a portal's OAuth tokens whatever is there.
    pub async fn save_oauth(&self, member: &str, tokens: Vec<u8>) -> Result<(), StoreError> {
        self.oauth
            .put(key(member), Bytes::from(tokens))
            .await
            .map_err(|e| storage("store OAuth tokens", e))?;
        Ok(())
    }

    /// A portal's stored OAuth tokens.
    pub async fn oauth(&self, member: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.oauth_entry(member).await?.map(|(value, _)| value))
    }

    /// A portal's stored OAuth tokens with their revision (for [`State::replace_oauth`]).
    pub async fn oauth_entry(&self, member: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let entry =
            self.oauth.entry(key(member)).await.map_err(|e| storage("read OAuth tokens", e))?;
        Ok(entry
            .filter(|e| e.operation == kv::Operation::Put)
            .map(|e| (e.value.to_vec(), e.revision)))
    }

    /// Replaces a portal's OAuth tokens only if they are still at `revision`; `false` (nothing
    /// written) when another host stored newer ones meanwhile.
    pub async fn replace_oauth(
        &self,
        member: &str,
        tokens: Vec<u8>,
        revision: u64,
    ) -> Result<bool, StoreError> {
        match self.oauth.update(key(member), Bytes::from(tokens), revision).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(storage("replace OAuth tokens", e)),
        }
    }

    /// Sets or removes a named value.
    pub async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let key = key(name);
        match value {
            Some(value) => {
                self.state
                    .put(&key, Bytes::from(value))
                    .await
                    .map_err(|e| storage("store a value", e))?;
            }
            None => self.state.delete(&key).await.map_err(|e| storage("remove a value", e))?,
        }
        Ok(())
    }

    /// A named value.
    pub async fn state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let value = self.state.get(key(name)).await.map_err(|e| storage("read a value", e))?;
        Ok(value.map(|v| v.to_vec()))
    }

    /// Takes lease `name` (any string), waiting up to `patience` for its holder; while held it
    /// is renewed in the background.
    pub async fn lease(&self, name: &str, patience: Duration) -> Result<Option<Held>, StoreError> {
        let lease = if patience.is_zero() {
            self.leases.try_acquire(&key(name)).await?
        } else {
            self.leases.acquire(&key(name), patience).await?
        };
        Ok(lease.map(Held::start))
    }

    /// Who holds lease `name` now (a host id), if anyone.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.leases.holder(&key(name)).await
    }
}

/// Feeds `tx` with the tokens bucket's changes until the receiver goes.
async fn watch_tokens(store: kv::Store, tx: &mpsc::UnboundedSender<(String, Option<Secret>)>) {
    loop {
        match store.watch_with_history(">").await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry) => {
                            let Some(member) = unkey(&entry.key) else { continue };
                            let token = (entry.operation == kv::Operation::Put).then(|| {
                                Secret::new(String::from_utf8_lossy(&entry.value).as_ref())
                            });
                            if tx.send((member, token)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            // The ordered consumer recreates itself (leader change, gap).
                            tracing::debug!("the learned tokens' watch: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                tracing::debug!("the learned tokens' watch ended; watching again");
            }
            Err(e) => {
                tracing::warn!("cannot watch the learned tokens (retrying): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_name_round_trips_through_a_valid_key() {
        let names = [
            "a1b2c3d4e5f60718293a4b5c6d7e8f90",
            "member-1_x",
            "offline_process:abc",
            "",
            ".",
            "a.b",
            "*",
            ">",
            "=41",
            "with space",
            "юникод",
            "x/y=z",
        ];
        let valid = |k: &str| {
            !k.is_empty()
                && !k.starts_with('.')
                && !k.ends_with('.')
                && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-/_=.".contains(&b))
        };
        for name in names {
            let k = key(name);
            assert!(valid(&k), "{name:?} -> {k:?}");
            assert_eq!(unkey(&k).as_deref(), Some(name), "{name:?} -> {k:?}");
        }
        // Plain member ids stay readable in the bucket.
        assert_eq!(key("a1b2c3"), "a1b2c3");
        assert_eq!(key("a.b"), "=612e62");
        // Keys no encoding makes are not read as names.
        assert_eq!(unkey("=4"), None);
        assert_eq!(unkey("=zz"), None);
        assert_eq!(unkey("a.b"), None);
    }
}
