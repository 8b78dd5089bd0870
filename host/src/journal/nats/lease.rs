//! Leases: "only one host at a time does X" (delivers a plugin, refreshes a portal's OAuth
//! tokens, polls a portal's offline queue), across every host on the log.
//!
//! A lease is a key in the bucket `<stream>_leases`, whose messages expire after the lease
//! time (`max_age`): taking it is a create-if-absent, keeping it is a compare-and-set update
//! (a new message, so its age starts again), giving it up is a delete with the revision held.
//! A holder that dies stops renewing and the key ages out; no host's clock is compared with
//! another's. A holder that cannot renew in time must assume it lost the lease.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;

use super::connect::Link;
use crate::journal::StoreError;

/// How long a lease lasts without renewal.
pub(super) const LEASE_TIME: Duration = Duration::from_secs(10);

/// The leases bucket.
#[derive(Clone)]
pub(super) struct Leases {
    store: kv::Store,
    holder: String,
}

/// A lease held by this host.
pub(super) struct Lease {
    store: kv::Store,
    name: String,
    holder: String,
    revision: u64,
    renewed: Instant,
}

fn storage(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("NATS leases: cannot {what}: {e}"))
}

impl Leases {
    /// Opens (or creates) the bucket, `replicas` copies.
    pub async fn open(link: &Link, replicas: usize) -> Result<Leases, StoreError> {
        let bucket = format!("{}_leases", link.names.bucket_prefix);
        let config = kv::Config {
            bucket: bucket.clone(),
            description: "b24-host leases: one holder at a time".into(),
            history: 1,
            max_age: LEASE_TIME,
            num_replicas: replicas,
            ..Default::default()
        };
        let store = match link.js.get_key_value(&bucket).await {
            Ok(store) => store,
            Err(_) => link
                .js
                .create_key_value(config)
                .await
                .map_err(|e| storage(&format!("create bucket {bucket}"), e))?,
        };
        Ok(Leases { store, holder: link.host_id.clone() })
    }

    /// Takes lease `name` if nobody holds it; `None` when another host does.
    pub async fn try_acquire(&self, name: &str) -> Result<Option<Lease>, StoreError> {
        match self.store.create(name, Bytes::from(self.holder.clone())).await {
            Ok(revision) => Ok(Some(Lease {
                store: self.store.clone(),
                name: name.to_owned(),
                holder: self.holder.clone(),
                revision,
                renewed: Instant::now(),
            })),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(storage(&format!("take lease {name}"), e)),
        }
    }

    /// Takes lease `name`, waiting up to `patience` for its holder to give it up or to die
    /// (then the key ages out within [`LEASE_TIME`]); `None` if it is still held then.
    pub async fn acquire(
        &self,
        name: &str,
        patience: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(lease) = self.try_acquire(name).await? {
                return Ok(Some(lease));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(None);
            }
            // Woken by the holder's delete; an expiry sends nothing, so look again at least
            // every half second.
            let mut watch =
                self.store.watch(name).await.map_err(|e| storage("watch a lease", e))?;
            let wait = left.min(Duration::from_millis(500));
            let _ = tokio::time::timeout(wait, async {
                while let Some(Ok(entry)) = watch.next().await {
                    if entry.operation != kv::Operation::Put {
                        return;
                    }
                }
            })
            .await;
        }
    }

    /// Who holds lease `name` now, if anyone.
    pub async fn holder(&self, name: &str) -> Result<Option<String>, StoreError> {
        let value = self.store.get(name).await.map_err(|e| storage("read a lease", e))?;
        Ok(value.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }
}

impl Lease {
    /// Renews the lease; `false` when it was lost (it expired and another host took it, or
    /// the log did not answer before it would have expired).
    pub async fn renew(&mut self) -> Result<bool, StoreError> {
        if self.renewed.elapsed() >= LEASE_TIME {
            return Ok(false);
        }
        match self.store.update(&self.name, Bytes::from(self.holder.clone()), self.revision).await {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = Instant::now();
                Ok(true)
            }
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(false),
            Err(e) => Err(storage(&format!("renew lease {}", self.name), e)),
        }
    }

    /// Whether the lease may still be held: renewed less than [`LEASE_TIME`] ago. Work under
    /// a lease checks this before each step that must not run twice.
    pub fn is_fresh(&self) -> bool {
        self.renewed.elapsed() < LEASE_TIME
    }

    /// The lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the lease up (only if still ours): the next host need not wait for the expiry.
    pub async fn release(self) {
        if let Err(e) = self.store.delete_expect_revision(&self.name, Some(self.revision)).await {
            tracing::debug!(lease = %self.name, "lease not released (it expires by itself): {e}");
        }
    }
}
