//! Prometheus metrics, through the `prometheus-client` crate: counters and histograms updated
//! where things happen (ingress, workers), gauges filled in at scrape time from the journal and
//! the plugin table.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// `outcome` of a request, and the event `code` when it was authenticated (`-` otherwise, so
/// that strangers cannot grow the label set).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Received {
    /// The event code, or `-`.
    pub code: String,
    /// accepted, duplicate, malformed, unauthorized, too_large, unsupported_type, wrong_method,
    /// not_found, unavailable.
    pub outcome: String,
}

/// A plugin.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabel {
    /// The plugin's name.
    pub plugin: String,
}

/// A plugin and the outcome of one call.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginOutcome {
    /// The plugin's name.
    pub plugin: String,
    /// done, skipped, retry, reject, panicked.
    pub outcome: String,
}

/// A plugin and one of its states.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginState {
    /// The plugin's name.
    pub plugin: String,
    /// loaded, degraded, failed.
    pub state: String,
}

fn latency() -> Histogram {
    // 50 µs .. ~13 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 18))
}

/// Every metric the host exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by event code and outcome.
    pub received: Family<Received, Counter>,
    /// Time from request to answer, seconds.
    pub request_seconds: Histogram,
    /// Plugin calls by outcome.
    pub deliveries: Family<PluginOutcome, Counter>,
    /// Failed attempts that will be tried again.
    pub retries: Family<PluginLabel, Counter>,
    /// Events moved to a plugin's dead letters.
    pub dead_letters: Family<PluginLabel, Counter>,
    /// Plugin call duration, seconds.
    pub call_seconds: Family<PluginLabel, Histogram, fn() -> Histogram>,
    /// Events waiting for a plugin (scrape time).
    pub backlog: Family<PluginLabel, Gauge>,
    /// Age of a plugin's oldest waiting event, seconds (scrape time).
    pub oldest_pending_seconds: Family<PluginLabel, Gauge<f64, AtomicU64>>,
    /// 1 for the state a plugin is in (scrape time).
    pub plugin_state: Family<PluginState, Gauge>,
    /// The journal file's size, bytes (scrape time).
    pub journal_bytes: Gauge,
    /// Events in the journal (scrape time).
    pub journal_events: Gauge,
    /// Successful live reloads.
    pub reloads: Family<Received, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric under the `b24_` prefix.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("b24");
        let m = Metrics {
            received: Family::default(),
            request_seconds: latency(),
            deliveries: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            call_seconds: Family::new_with_constructor(latency),
            backlog: Family::default(),
            oldest_pending_seconds: Family::default(),
            plugin_state: Family::default(),
            journal_bytes: Gauge::default(),
            journal_events: Gauge::default(),
            reloads: Family::default(),
            registry: Registry::default(),
        };
        registry.register(
            "events_received",
            "Event requests by code and outcome",
            m.received.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request to answer",
            m.request_seconds.clone(),
        );
        registry.register("plugin_deliveries", "Plugin calls by outcome", m.deliveries.clone());
        registry.register(
            "plugin_retries",
            "Failed plugin calls that will be tried again",
            m.retries.clone(),
        );
        registry.register(
            "plugin_dead_letters",
            "Events moved to a plugin's dead letters",
            m.dead_letters.clone(),
        );
        registry.register(
            "plugin_call_duration_seconds",
            "Plugin call duration",
            m.call_seconds.clone(),
        );
        registry.register("plugin_backlog", "Events waiting for a plugin", m.backlog.clone());
        registry.register(
            "plugin_oldest_pending_seconds",
            "Age of the oldest event waiting for a plugin",
            m.oldest_pending_seconds.clone(),
        );
        registry.register(
            "plugin_state",
            "1 for the state each plugin is in",
            m.plugin_state.clone(),
        );
        registry.register(
            "journal_size_bytes",
            "Size of the journal file",
            m.journal_bytes.clone(),
        );
        registry.register("journal_events", "Events in the journal", m.journal_events.clone());
        registry.register("reloads", "Live reloads by outcome", m.reloads.clone());
        Metrics { registry, ..m }
    }

    /// Counts a request.
    pub fn request(&self, code: &str, outcome: &str, seconds: f64) {
        self.received
            .get_or_create(&Received { code: code.to_owned(), outcome: outcome.to_owned() })
            .inc();
        self.request_seconds.observe(seconds);
    }

    /// Counts one plugin call.
    pub fn call(&self, plugin: &str, outcome: &str, seconds: f64) {
        let label = PluginLabel { plugin: plugin.to_owned() };
        self.deliveries
            .get_or_create(&PluginOutcome {
                plugin: plugin.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
        self.call_seconds.get_or_create(&label).observe(seconds);
    }

    /// The text exposition (Prometheus / OpenMetrics text format).
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
