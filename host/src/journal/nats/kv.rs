//! The key/value state in JetStream buckets, shared by every host on the log: learned
//! application tokens (`<S>_tokens`, member id -> token), stored OAuth tokens (`<S>_oauth`,
//! member id -> JSON, replaced by compare-and-set), named values (`<S>_state`: the offline
//! pollers' `process_id`s; paused plugins under `pause.<plugin>`, watched by every host), and
//! the leases (`lease.rs`, held through `hold.rs`).
//!
//! Keys are encoded with [`key`]: a key may hold only `[-/_=.a-zA-Z0-9]` and `.` separates
//! subject tokens, so a member id or name made of letters, digits, `-` and `_` is its own key,
//! anything else becomes `=` + the lowercase hex of its bytes (`=` never appears in the first
//! form, so both round-trip through [`unkey`]).
//!
//! Every read of one key asks the stream's leader (no cache, and not a direct get, which a
//! replica a little behind may answer): a value another host wrote and had acknowledged is
//! seen. Writes (and the refresh's reads) keep trying through a bucket leader's election. The
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

/// The bucket key of lease `name`: `<kind>.<rest>` (kind of letters, digits, `-`, `_`)
/// becomes `<kind>.` + [`key`]`(rest)`, so `refresh.<member>` reads as such in the bucket;
/// any other name is [`key`]`(name)`.
pub(super) fn lease_key(name: &str) -> String {
    match name.split_once('.') {
        Some((kind, rest)) if key(kind) == kind => format!("{kind}.{}", key(rest)),
        _ => key(name),
    }
}

/// Whether a CAS write (`update`) was refused because the key moved on: the client's
/// `WrongLastRevision`, or the server's code 10164 ("wrong last sequence", the form
/// nats-server 2.15 answers for a per-subject expectation), which async-nats 0.46 reports as
/// `Other`.
pub(super) fn lost_race(e: &kv::UpdateError) -> bool {
    use async_nats::jetstream::{Error as ApiError, ErrorCode};
    if e.kind() == kv::UpdateErrorKind::WrongLastRevision {
        return true;
    }
    let mut source = std::error::Error::source(e);
    while let Some(inner) = source {
        if let Some(api) = inner.downcast_ref::<ApiError>() {
            let code = api.error_code();
            return code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE
                || code == ErrorCode::STREAM_WRONG_LAST_SEQUENCE_CONSTANT;
        }
        source = inner.source();
    }
    false
}

/// The value and revision of `key` in `store` as the bucket stream's leader has it (a message
/// get: `Nats-Expected-Last-Subject-Sequence` is checked there too); `None` if absent or
/// deleted.
async fn leader_entry(store: &kv::Store, key: &str) -> Result<Option<(Bytes, u64)>, StoreError> {
    let entry = leader_entry_any(store, key).await?;
    Ok(entry.and_then(|(value, revision, live)| live.then_some((value, revision))))
}

/// The last message of `key` in `store` as the leader has it: value, revision, and whether it
/// is a value (`false`: a delete or purge marker); `None` when the key has no message.
pub(super) async fn leader_entry_any(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(Bytes, u64, bool)>, StoreError> {
    use async_nats::jetstream::stream::LastRawMessageErrorKind;
    let subject = format!("{}{key}", store.prefix);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => {
            let operation = message.headers.get("KV-Operation").map(|v| v.as_str().to_owned());
            let removed = operation.is_some_and(|op| op == "DEL" || op == "PURGE")
                || message.headers.get("Nats-Marker-Reason").is_some();
            Ok(Some((message.payload, message.sequence, !removed)))
        }
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(storage(&format!("read {key} in {}", store.name), e)),
    }
}

/// Waits (at most `LEADER_WAIT`) until `store`'s stream has a leader: a bucket just created
/// by this host or another answers writes with "no stream found" until its replicas elect one.
pub(super) async fn until_led(store: &kv::Store) {
    let started = std::time::Instant::now();
    let mut stream = store.stream.clone();
    loop {
        match stream.info().await {
            Ok(info) if info.cluster.as_ref().is_none_or(|c| c.leader.is_some()) => return,
            Ok(_) => {}
            Err(e) => tracing::debug!(bucket = %store.name, "bucket info: {e}"),
        }
        if started.elapsed() >= LEADER_WAIT {
            tracing::warn!(bucket = %store.name, "the bucket has no leader yet; its writes fail until it has one");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How long a write (or a read for a refresh or a poller) keeps trying while a bucket has no
/// leader: elections took 4.9 - 8.3 s here (design note, pitfall 13).
const RIDE_OUT: Duration = Duration::from_secs(15);

/// Runs `op` until it succeeds, fails in a way `is_final` calls final, or [`RIDE_OUT`] has
/// passed: a bucket whose leader died answers "no stream found" or times out until its
/// replicas elect another, and a refresh's new pair must not be lost to that.
async fn patiently<T, E, F, Fut>(
    what: &str,
    mut op: F,
    is_final: impl Fn(&E) -> bool,
) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(50);
    loop {
        match op().await {
            Ok(value) => return Ok(value),
            Err(e) if is_final(&e) || started.elapsed() + pause >= RIDE_OUT => return Err(e),
            Err(e) => {
                tracing::warn!("NATS key/value: {what}: {e}; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

/// How long opening waits for a bucket's leader.
const LEADER_WAIT: Duration = Duration::from_secs(10);

/// Opens bucket `<prefix>_<suffix>` or creates it with `replicas` copies, one value per key.
async fn bucket(
    link: &Link,
    suffix: &str,
    description: &str,
    replicas: usize,
) -> Result<kv::Store, StoreError> {
    let bucket = format!("{}_{suffix}", link.names.bucket_prefix);
    if let Ok(store) = link.js.get_key_value(&bucket).await {
        until_led(&store).await;
        return Ok(store);
    }
    let config = kv::Config {
        bucket: bucket.clone(),
        description: description.into(),
        history: 1,
        num_replicas: replicas,
        ..Default::default()
    };
    let store = match link.js.create_key_value(config).await {
        Ok(store) => store,
        // Another host created it meanwhile.
        Err(created) => link
            .js
            .get_key_value(&bucket)
            .await
            .map_err(|_| storage(&format!("create bucket {bucket}"), created))?,
    };
    until_led(&store).await;
    Ok(store)
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
                patiently("store a token", || self.tokens.put(&key, value.clone()), |_| false)
                    .await
                    .map_err(|e| storage("store a token", e))?;
            }
            None => {
                patiently("forget a token", || self.tokens.delete(&key), |_| false)
                    .await
                    .map_err(|e| storage("forget a token", e))?;
            }
        }
        Ok(())
    }

    /// A portal's learned token as the log holds it now (one try: ingress asks it before a
    /// 401 and must not wait out an election).
    pub async fn learned_token(&self, member: &str) -> Result<Option<Secret>, StoreError> {
        let value = leader_entry(&self.tokens, &key(member)).await?;
        Ok(value.map(|(v, _)| Secret::new(String::from_utf8_lossy(&v).as_ref())))
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
        let (key, value) = (key(member), Bytes::from(tokens));
        patiently("store OAuth tokens", || self.oauth.put(&key, value.clone()), |_| false)
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
        let key = key(member);
        let entry =
            patiently("read OAuth tokens", || leader_entry(&self.oauth, &key), |_| false).await?;
        Ok(entry.map(|(value, revision)| (value.to_vec(), revision)))
    }

    /// Replaces a portal's OAuth tokens only if they are still at `revision`; `false` (nothing
    /// written) when another host stored newer ones meanwhile.
    pub async fn replace_oauth(
        &self,
        member: &str,
        tokens: Vec<u8>,
        revision: u64,
    ) -> Result<bool, StoreError> {
        let (key, value) = (key(member), Bytes::from(tokens));
        let mut tries = 0;
        let written = patiently(
            "replace OAuth tokens",
            || {
                tries += 1;
                self.oauth.update(&key, value.clone(), revision)
            },
            lost_race,
        )
        .await;
        match written {
            Ok(_) => Ok(true),
            // A try that timed out may have landed: then the key moved on with our value.
            Err(e) if lost_race(&e) && tries > 1 => {
                let now =
                    patiently("read OAuth tokens", || leader_entry(&self.oauth, &key), |_| false)
                        .await?;
                Ok(now.is_some_and(|(stored, _)| stored == value))
            }
            Err(e) if lost_race(&e) => Ok(false),
            Err(e) => Err(storage("replace OAuth tokens", e)),
        }
    }

    /// Sets or removes a named value.
    pub async fn set_state(&self, name: &str, value: Option<Vec<u8>>) -> Result<(), StoreError> {
        let key = key(name);
        match value {
            Some(value) => {
                let value = Bytes::from(value);
                patiently("store a value", || self.state.put(&key, value.clone()), |_| false)
                    .await
                    .map_err(|e| storage("store a value", e))?;
            }
            None => patiently("remove a value", || self.state.delete(&key), |_| false)
                .await
                .map_err(|e| storage("remove a value", e))?,
        }
        Ok(())
    }

    /// A named value.
    pub async fn state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let key = key(name);
        let value =
            patiently("read a value", || leader_entry(&self.state, &key), |_| false).await?;
        Ok(value.map(|(v, _)| v.to_vec()))
    }

    /// Stores `plugin`'s pause (`journal::pause`; empty: resumed, a value rather than a delete
    /// so that it has a revision too); its revision.
    pub async fn set_pause(&self, plugin: &str, value: Vec<u8>) -> Result<u64, StoreError> {
        let (key, value) = (pause_key(plugin), Bytes::from(value));
        patiently("store a pause", || self.state.put(&key, value.clone()), |_| false)
            .await
            .map_err(|e| storage("store a pause", e))
    }

    /// `plugin`'s stored pause (empty: resumed) and its revision, as the leader has it.
    pub async fn pause(&self, plugin: &str) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let key = pause_key(plugin);
        let value =
            patiently("read a pause", || leader_entry(&self.state, &key), |_| false).await?;
        Ok(value.map(|(v, revision)| (v.to_vec(), revision)))
    }

    /// Every pause any host or command stores, from now on, starting with every one as it is:
    /// `(plugin, value, revision)`, an empty value for a resume. The watch is recreated when
    /// it ends; it stops when the receiver is dropped.
    pub fn pause_changes(&self) -> mpsc::UnboundedReceiver<(String, Vec<u8>, u64)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let store = self.state.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = watch_pauses(store, &tx) => {}
                () = tx.closed() => {}
            }
        });
        rx
    }

    /// Takes lease `name` (any string), waiting up to `patience` for its holder; while held it
    /// is renewed in the background.
    pub async fn lease(&self, name: &str, patience: Duration) -> Result<Option<Held>, StoreError> {
        let lease = if patience.is_zero() {
            self.leases.try_acquire(&lease_key(name)).await?
        } else {
            self.leases.acquire(&lease_key(name), patience).await?
        };
        Ok(lease.map(Held::start))
    }

    /// Who holds lease `name` now (a host id), if anyone.
    pub async fn lease_holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.leases.holder(&lease_key(name)).await
    }
}

/// The bucket key of `plugin`'s pause: `pause.` + [`key`]`(plugin)`, so that one watch
/// (`pause.>`) sees every plugin's.
fn pause_key(plugin: &str) -> String {
    format!("pause.{}", key(plugin))
}

/// Feeds `tx` with the pauses' changes (`pause.>` of the state bucket) until the receiver goes.
async fn watch_pauses(store: kv::Store, tx: &mpsc::UnboundedSender<(String, Vec<u8>, u64)>) {
    loop {
        match store.watch_with_history("pause.>").await {
            Ok(mut watch) => {
                while let Some(entry) = watch.next().await {
                    match entry {
                        Ok(entry) => {
                            let Some(plugin) = entry.key.strip_prefix("pause.").and_then(unkey)
                            else {
                                continue;
                            };
                            let value = match entry.operation {
                                kv::Operation::Put => entry.value.to_vec(),
                                _ => Vec::new(),
                            };
                            if tx.send((plugin, value, entry.revision)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            tracing::debug!("the pauses' watch: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
                tracing::debug!("the pauses' watch ended; watching again");
            }
            Err(e) => {
                tracing::warn!("cannot watch the plugins' pauses (retrying): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
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
        // Lease names keep their kind readable; distinct names stay distinct keys.
        assert_eq!(lease_key("refresh.a1b2"), "refresh.a1b2");
        assert_eq!(lease_key("offline.a.b"), "offline.=612e62");
        assert_eq!(lease_key("odd name.x"), key("odd name.x"));
        assert!(valid(&lease_key("refresh.")), "{}", lease_key("refresh."));
        assert_ne!(lease_key("refresh.=41"), lease_key("refresh.A"));
        // Keys no encoding makes are not read as names.
        assert_eq!(unkey("=4"), None);
        assert_eq!(unkey("=zz"), None);
        assert_eq!(unkey("a.b"), None);
    }
}
