//! The per-portal metrics: bindings (the binder) and the offline pollers. Their `portal` label
//! is a `member_id` the host knows (in host.toml, or learned from a verified install, so at
//! most `auth.max_learned_portals` more), never one an unauthenticated request brings.
//! Registered with the rest in [`crate::metrics::Metrics`].

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// A portal.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortalLabel {
    /// Its member_id.
    pub portal: String,
}

/// A portal and what became of offline rows.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RowOutcome {
    /// Its member_id.
    pub portal: String,
    /// `pulled` (journaled), `duplicate` (journaled before), `cleared` (removed from the
    /// portal's queue), `error` (sent back with `event.offline.error`).
    pub outcome: String,
}

/// The per-portal metrics.
#[derive(Default)]
pub struct PortalMetrics {
    /// Bindings the plugins need that the portal does not have, as of the last pass.
    pub bindings_missing: Family<PortalLabel, Gauge>,
    /// 1 when `app.info` says the app's installation is finished, 0 when it is not.
    pub installation_finished: Family<PortalLabel, Gauge>,
    /// Offline rows by outcome.
    pub offline_rows: Family<RowOutcome, Counter>,
    /// Age of the oldest reservation on the portal's offline queue the poller knows of
    /// (its own batch, or a lost one), seconds; 0 when none.
    pub offline_oldest_reservation_seconds: Family<PortalLabel, Gauge<f64, AtomicU64>>,
    /// Polls that failed.
    pub offline_poll_errors: Family<PortalLabel, Counter>,
    /// Rows parked on the portal with `event.offline.error`, as of the last look.
    pub offline_parked_rows: Family<PortalLabel, Gauge>,
    /// Batches whose reply was lost, found reserved and taken over.
    pub offline_lost_batches_resumed: Family<PortalLabel, Counter>,
}

impl PortalMetrics {
    /// Registers every family in `registry` (under its `b24_` prefix).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "bindings_missing",
            "Event bindings the plugins need that the portal does not have",
            self.bindings_missing.clone(),
        );
        registry.register(
            "app_installation_finished",
            "1 when app.info says the app's installation on the portal is finished",
            self.installation_finished.clone(),
        );
        registry.register(
            "offline_rows",
            "Offline-queue rows by outcome: pulled, duplicate, cleared, error",
            self.offline_rows.clone(),
        );
        registry.register(
            "offline_oldest_reservation_seconds",
            "Age of the oldest reserved batch on the portal's offline queue",
            self.offline_oldest_reservation_seconds.clone(),
        );
        registry.register(
            "offline_poll_errors",
            "Offline polls that failed",
            self.offline_poll_errors.clone(),
        );
        registry.register(
            "offline_parked_rows",
            "Rows parked on the portal's offline queue with event.offline.error",
            self.offline_parked_rows.clone(),
        );
        registry.register(
            "offline_lost_batches_resumed",
            "Reserved batches whose reply was lost, taken over by the poller",
            self.offline_lost_batches_resumed.clone(),
        );
    }

    /// Gives a portal's offline poller its series at 0 (prometheus-client lists a family only
    /// once it has a series, and `increase()` needs the 0 before the first count).
    pub fn poller_started(&self, portal: &str) {
        for outcome in ["pulled", "duplicate", "cleared", "error"] {
            let label = RowOutcome { portal: portal.to_owned(), outcome: outcome.to_owned() };
            let _ = self.offline_rows.get_or_create(&label);
        }
        let label = PortalLabel { portal: portal.to_owned() };
        let _ = self.offline_oldest_reservation_seconds.get_or_create(&label);
        let _ = self.offline_poll_errors.get_or_create(&label);
        let _ = self.offline_parked_rows.get_or_create(&label);
        let _ = self.offline_lost_batches_resumed.get_or_create(&label);
    }

    /// Counts `n` offline rows of `portal` with `outcome`.
    pub fn rows(&self, portal: &str, outcome: &str, n: u64) {
        if n > 0 {
            let label = RowOutcome { portal: portal.to_owned(), outcome: outcome.to_owned() };
            self.offline_rows.get_or_create(&label).inc_by(n);
        }
    }

    /// Forgets every series of `portal` (uninstalled).
    pub fn forget(&self, portal: &str) {
        let label = PortalLabel { portal: portal.to_owned() };
        self.bindings_missing.remove(&label);
        self.installation_finished.remove(&label);
    }
}
