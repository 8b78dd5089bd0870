//! The REST client's metrics: calls by method family and outcome, and the waits Bitrix24's
//! limits cost. Labels are bounded: a method's family is its first segment (two for
//! `event.offline`) when that is one of [`FAMILIES`], else `other`; outcomes and wait reasons
//! are fixed sets. Registered in the host's registry by `metrics.rs`.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// The method families counted under their own name.
pub const FAMILIES: [&str; 28] = [
    "app",
    "batch",
    "bizproc",
    "calendar",
    "catalog",
    "crm",
    "department",
    "disk",
    "documentgenerator",
    "entity",
    "event",
    "event.offline",
    "feature",
    "im",
    "imbot",
    "imopenlines",
    "landing",
    "lists",
    "placement",
    "profile",
    "sale",
    "server",
    "task",
    "tasks",
    "telephony",
    "user",
    "userfieldconfig",
    "voximplant",
];

/// The outcomes of a call sent to a portal.
pub const OUTCOMES: [&str; 7] = [
    "ok",
    "error",
    "expired_token",
    "query_limit_exceeded",
    "operation_time_limit",
    "server_error",
    "unreachable",
];

/// Why a call waited: the host's own rate limit, the portal's `QUERY_LIMIT_EXCEEDED` (the
/// client's back-off between retries, and the event's redelivery after them), the operating
/// time nearing its limit (pacing), or a method blocked until its operating time resets.
pub const WAIT_REASONS: [&str; 4] =
    ["rate_limit", "query_limit_exceeded", "operating_pace", "operating_block"];

/// `family` and `status` of a call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Call {
    /// The method's family ([`family`]).
    pub family: String,
    /// One of [`OUTCOMES`].
    pub status: String,
}

/// The reason of a wait.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Wait {
    /// One of [`WAIT_REASONS`].
    pub reason: String,
}

/// The REST client's counters (cheap to clone: each family is shared).
#[derive(Clone, Default)]
pub struct RestMetrics {
    /// Calls sent to portals, by family and outcome.
    pub calls: Family<Call, Counter>,
    /// Waits for a limit, by reason.
    pub waits: Family<Wait, Counter>,
    /// Seconds waited for limits, by reason.
    pub wait_seconds: Family<Wait, Counter<f64, AtomicU64>>,
}

impl RestMetrics {
    /// Registers the counters as `rest_calls`, `rest_limit_waits`, `rest_limit_wait_seconds`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "rest_calls",
            "REST calls sent to portals, by method family and outcome",
            self.calls.clone(),
        );
        registry.register(
            "rest_limit_waits",
            "REST calls that waited for a Bitrix24 limit (or the host's own rate limit), by reason",
            self.waits.clone(),
        );
        registry.register(
            "rest_limit_wait_seconds",
            "Seconds REST calls waited for limits, by reason (a held call: until the limit lifts)",
            self.wait_seconds.clone(),
        );
    }

    /// Gives each wait reason its counters at 0 (the calls' family and status pairs are too
    /// many to list: a call's first sample appears with it).
    pub fn touch(&self) {
        for reason in WAIT_REASONS {
            let label = Wait { reason: reason.to_owned() };
            let _ = self.waits.get_or_create(&label);
            let _ = self.wait_seconds.get_or_create(&label);
        }
    }

    /// Counts one call of `method` that ended with `status`.
    pub fn call(&self, method: &str, status: &str) {
        self.calls
            .get_or_create(&Call { family: family(method).to_owned(), status: status.to_owned() })
            .inc();
    }

    /// Counts one wait of `seconds` for `reason`.
    pub fn wait(&self, reason: &str, seconds: f64) {
        let label = Wait { reason: reason.to_owned() };
        self.waits.get_or_create(&label).inc();
        self.wait_seconds.get_or_create(&label).inc_by(seconds.max(0.0));
    }
}

/// The family label of `method` (lower-case, as the client sends it).
pub fn family(method: &str) -> &'static str {
    let method = method.to_ascii_lowercase();
    let mut segments = method.split('.');
    let first = segments.next().unwrap_or_default();
    let two = format!("{first}.{}", segments.next().unwrap_or_default());
    FAMILIES
        .iter()
        .find(|f| **f == two)
        .or_else(|| FAMILIES.iter().find(|f| **f == first))
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_a_fixed_set() {
        assert_eq!(family("crm.deal.userfield.get"), "crm");
        assert_eq!(family("CRM.Deal.List"), "crm");
        assert_eq!(family("event.offline.get"), "event.offline");
        assert_eq!(family("event.bind"), "event");
        assert_eq!(family("userfieldconfig.get"), "userfieldconfig");
        assert_eq!(family("batch"), "batch");
        assert_eq!(family("x9f7.anything"), "other");
        assert_eq!(family(""), "other");
    }
}
