//! Holding a lease (`lease.rs`) while work runs: a task renews it every third of
//! [`LEASE_TIME`], and gives it up when the [`Held`] is released or dropped.
//!
//! A renewal that fails (the log does not answer, or the lease expired and another host took
//! it) marks the lease lost: [`Held::is_held`] turns `false` and stays so. Work that must not
//! run on two hosts at once checks it before each such step.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::sync::oneshot;

use super::lease::{LEASE_TIME, Lease};

/// Taken off [`LEASE_TIME`] by [`Held::is_held`]: the log's expiry may run a little ahead.
const MARGIN: Duration = Duration::from_secs(1);

/// A lease this host holds, renewed in the background.
pub struct Held {
    name: String,
    /// When the lease was last taken or renewed; `None` once lost or given up.
    renewed: Arc<Mutex<Option<Instant>>>,
    release: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Held {
    /// Starts renewing `lease`.
    pub(super) fn start(mut lease: Lease) -> Held {
        let name = lease.name().to_owned();
        let renewed = Arc::new(Mutex::new(Some(Instant::now())));
        let (release, mut released) = oneshot::channel::<()>();
        let stamp = renewed.clone();
        let set = move |at: Option<Instant>| {
            *stamp.lock().unwrap_or_else(|p| p.into_inner()) = at;
        };
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    // Released, or the Held dropped: give it up now.
                    _ = &mut released => break,
                    () = tokio::time::sleep(LEASE_TIME / 3) => {}
                }
                // Counted from the request: the log's clock for the key starts at about then.
                let sent = Instant::now();
                match lease.renew().await {
                    Ok(true) => set(Some(sent)),
                    Ok(false) => {
                        set(None);
                        tracing::warn!(lease = %lease.name(), "lost a lease (not renewed in time, or another host holds it now)");
                        return;
                    }
                    // Try again at the next tick; renew() says false once it is too late.
                    Err(e) => tracing::warn!(lease = %lease.name(), "cannot renew a lease: {e}"),
                }
            }
            set(None);
            lease.release().await;
        });
        Held { name, renewed, release: Some(release), task: Some(task) }
    }

    /// Whether the lease is still ours: renewed less than [`LEASE_TIME`] ago (a renewal
    /// that hangs does not keep it).
    pub fn is_held(&self) -> bool {
        let renewed = *self.renewed.lock().unwrap_or_else(|p| p.into_inner());
        renewed.is_some_and(|at| at.elapsed() < LEASE_TIME.saturating_sub(MARGIN))
    }

    /// The lease's key.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the lease up and waits until the log has it: another host may take it at once.
    pub async fn release(mut self) {
        if let Some(release) = self.release.take() {
            let _ = release.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Dropping the sender wakes the task, which releases the lease on its own.
        self.release.take();
    }
}
