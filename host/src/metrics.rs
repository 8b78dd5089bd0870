//! Prometheus metrics, through the `prometheus-client` crate: counters and histograms updated
//! where things happen (ingress, workers), gauges filled in at scrape time from the journal and
//! the plugin table. Served as OpenMetrics to clients that ask for it (`Accept`), else in the
//! Prometheus text format 0.0.4. The `code` label takes known codes only (the user-field
//! codes, common app and CRM events, and the codes plugins subscribe to by name); the rest
//! count as `other`, so a portal sending random codes cannot grow the series.
//!
//! Beside the registry, [`IntakeRing`] keeps the last ten minutes of requests per second and
//! per status class, for the console's chart (Prometheus keeps history; the console has none).

use std::{
    collections::HashSet,
    sync::{Mutex, RwLock, atomic::AtomicU64},
};

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

/// Why something was refused or waited: a label from a small fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Reason {
    /// The reason.
    pub reason: String,
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
    /// Wrong admin tokens (bearer or the console's login form).
    pub admin_auth_failures: Counter,
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
    /// 1 while a plugin is paused (an operator's pause or its own), else 0 (scrape time).
    pub plugin_paused: Family<PluginLabel, Gauge>,
    /// Times a plugin paused itself after `pause_after_failures` failed calls in a row.
    pub auto_pauses: Family<PluginLabel, Counter>,
    /// The journal file's size, bytes (scrape time).
    pub journal_bytes: Gauge,
    /// Events in the journal (scrape time).
    pub journal_events: Gauge,
    /// 1 while appends are acknowledged by the journal (embedded, or the shared log), 0 while
    /// they go to the local spool (scrape time).
    pub log_acknowledging: Gauge,
    /// Journal records found damaged or missing on a read (each a dead letter; scrape time).
    pub journal_damaged: Counter,
    /// 1 while the journal takes writes, 0 while it cannot (503 to events, the host reopening
    /// it); spooling on the NATS backend still takes writes (scrape time).
    pub journal_writable: Gauge,
    /// Events in the local spool not yet forwarded to the NATS log; 0 on the embedded backend
    /// (scrape time).
    pub journal_spooled: Gauge,
    /// 1 while `/readyz` would answer 200, else 0 (scrape time, from the same check).
    pub ready: Gauge,
    /// Successful live reloads.
    pub reloads: Family<Received, Counter>,
    /// Runner processes started again after one died (process isolation).
    pub runner_restarts: Family<PluginLabel, Counter>,
    /// Installs refused, by reason (`auth::InstallError::reason`).
    pub installs_refused: Family<Reason, Counter>,
    /// REST calls and the waits for limits (the REST client counts them).
    pub rest: crate::rest::metrics::RestMetrics,
    /// A plugin's log lines dropped past `log.plugin_lines_per_second` (its output and
    /// `Host::log`; see `plugin_output`).
    pub plugin_log_dropped: Family<PluginLabel, Counter>,
    /// Event codes that plugins subscribe to by name (no wildcard), as of the last reload.
    subscribed: RwLock<HashSet<String>>,
    /// Requests per second and status class, the last [`INTAKE_SECONDS`].
    pub intake: IntakeRing,
    /// Per portal: bindings and the offline pollers.
    pub portals: crate::portal_metrics::PortalMetrics,
}

/// How many seconds of intake the console's chart shows.
pub const INTAKE_SECONDS: usize = 600;

/// The status classes of the intake ring, in chart order: accepted (200), duplicate (200, a
/// repeat), refused (4xx: malformed, unauthorized, too large, ...), unavailable (5xx).
pub const INTAKE_CLASSES: [&str; 4] = ["accepted", "duplicate", "refused", "unavailable"];

/// The class index of a request `outcome` (see [`Received::outcome`]).
fn intake_class(outcome: &str) -> usize {
    match outcome {
        "accepted" => 0,
        "duplicate" => 1,
        "unavailable" => 3,
        _ => 2,
    }
}

/// One second of the ring.
#[derive(Clone, Copy, Default)]
struct Second {
    /// Seconds since the epoch this slot counts (an older value: the slot is stale).
    at: i64,
    counts: [u32; INTAKE_CLASSES.len()],
}

/// Per-second request counts by status class over the last [`INTAKE_SECONDS`]: one slot per
/// second, reused as the clock goes round (a stale slot reads as zero). One short lock per
/// request.
pub struct IntakeRing {
    slots: Mutex<Vec<Second>>,
}

impl Default for IntakeRing {
    fn default() -> Self {
        IntakeRing { slots: Mutex::new(vec![Second::default(); INTAKE_SECONDS]) }
    }
}

impl IntakeRing {
    /// Counts one request of `outcome` at second `now` (since the epoch).
    pub fn record_at(&self, now: i64, outcome: &str) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[now.rem_euclid(INTAKE_SECONDS as i64) as usize];
        if slot.at != now {
            *slot = Second { at: now, counts: [0; INTAKE_CLASSES.len()] };
        }
        let class = &mut slot.counts[intake_class(outcome)];
        *class = class.saturating_add(1);
    }

    /// The counts of the [`INTAKE_SECONDS`] seconds ending with `now`, oldest first, each
    /// `[accepted, duplicate, refused, unavailable]`.
    pub fn window(&self, now: i64) -> Vec<[u32; INTAKE_CLASSES.len()]> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        (now - INTAKE_SECONDS as i64 + 1..=now)
            .map(|second| {
                let slot = slots[second.rem_euclid(INTAKE_SECONDS as i64) as usize];
                if slot.at == second { slot.counts } else { [0; INTAKE_CLASSES.len()] }
            })
            .collect()
    }
}

/// Seconds since the Unix epoch.
pub fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
            admin_auth_failures: Counter::default(),
            deliveries: Family::default(),
            retries: Family::default(),
            dead_letters: Family::default(),
            call_seconds: Family::new_with_constructor(latency),
            backlog: Family::default(),
            oldest_pending_seconds: Family::default(),
            plugin_state: Family::default(),
            plugin_paused: Family::default(),
            auto_pauses: Family::default(),
            journal_bytes: Gauge::default(),
            journal_events: Gauge::default(),
            log_acknowledging: Gauge::default(),
            journal_damaged: Counter::default(),
            journal_writable: Gauge::default(),
            journal_spooled: Gauge::default(),
            ready: Gauge::default(),
            reloads: Family::default(),
            runner_restarts: Family::default(),
            installs_refused: Family::default(),
            rest: Default::default(),
            plugin_log_dropped: Family::default(),
            subscribed: RwLock::default(),
            intake: IntakeRing::default(),
            portals: Default::default(),
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
        registry.register(
            "admin_auth_failures",
            "Wrong admin tokens, as a bearer token or in the console's login form",
            m.admin_auth_failures.clone(),
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
            "plugin_paused",
            "1 while a plugin is paused (by an operator, or by itself after pause_after_failures failed calls in a row): it receives nothing, its events wait",
            m.plugin_paused.clone(),
        );
        registry.register(
            "plugin_auto_pauses",
            "Times a plugin paused itself after pause_after_failures failed calls in a row",
            m.auto_pauses.clone(),
        );
        registry.register(
            "journal_size_bytes",
            "Size of the journal file",
            m.journal_bytes.clone(),
        );
        registry.register("journal_events", "Events in the journal", m.journal_events.clone());
        registry.register(
            "journal_log_acknowledging",
            "1 while appends are acknowledged by the journal or the shared log, 0 while they go to the local spool",
            m.log_acknowledging.clone(),
        );
        registry.register(
            "journal_damaged_records",
            "Journal records found damaged or missing on a read, each made a dead letter",
            m.journal_damaged.clone(),
        );
        registry.register(
            "journal_writable",
            "1 while the journal takes writes, 0 while it cannot (events get 503)",
            m.journal_writable.clone(),
        );
        registry.register(
            "journal_spooled_events",
            "Events in the local spool not yet forwarded to the NATS log",
            m.journal_spooled.clone(),
        );
        registry.register("ready", "1 while /readyz answers 200, else 0", m.ready.clone());
        registry.register("reloads", "Live reloads by outcome", m.reloads.clone());
        registry.register(
            "plugin_runner_restarts",
            "Runner processes started again after one died",
            m.runner_restarts.clone(),
        );
        // Counters exist from the start at 0, not from their first increment: Prometheus'
        // increase() sees the first reload or dead letter only when a 0 came before it (and
        // prometheus-client lists a family only once it has a series).
        for outcome in ["ok", "failed"] {
            let _ =
                m.reloads.get_or_create(&Received { code: "-".into(), outcome: outcome.into() });
        }
        // So are the counters whose label is one of a small fixed set.
        for reason in crate::auth::InstallError::REASONS {
            let _ = m.installs_refused.get_or_create(&Reason { reason: reason.into() });
        }
        m.rest.touch();
        m.portals.register(&mut registry);
        registry.register(
            "installs_refused",
            "Installs refused, by reason (Bitrix24 does not send them again)",
            m.installs_refused.clone(),
        );
        m.rest.register(&mut registry);
        registry.register(
            "plugin_log_dropped_lines",
            "Plugin log lines dropped past log.plugin_lines_per_second",
            m.plugin_log_dropped.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Gives `plugin` its counters at 0 (see [`Metrics::new`]); called at scrape time for every
    /// enabled plugin, so a plugin's first dead letter, retry or runner restart is an increase.
    pub fn touch_plugin(&self, plugin: &str) {
        let label = PluginLabel { plugin: plugin.to_owned() };
        let _ = self.dead_letters.get_or_create(&label);
        let _ = self.retries.get_or_create(&label);
        let _ = self.runner_restarts.get_or_create(&label);
        let _ = self.auto_pauses.get_or_create(&label);
    }

    /// Counts a request.
    pub fn request(&self, code: &str, outcome: &str, seconds: f64) {
        let code = self.code_label(code);
        self.received.get_or_create(&Received { code, outcome: outcome.to_owned() }).inc();
        self.request_seconds.observe(seconds);
        self.intake.record_at(now_seconds(), outcome);
    }

    /// The `code` label of an event code: itself when known or subscribed by name, else
    /// `other` (`-` stays `-`: not authenticated).
    pub fn code_label(&self, code: &str) -> String {
        let upper = code.to_ascii_uppercase();
        if code == "-"
            || crate::codes::is_known(&upper)
            || self.subscribed.read().unwrap_or_else(|p| p.into_inner()).contains(&upper)
        {
            upper
        } else {
            "other".to_owned()
        }
    }

    /// Sets the codes plugins subscribe to by name (called when the routes change).
    pub fn set_subscribed(&self, codes: impl IntoIterator<Item = String>) {
        let codes = codes.into_iter().map(|c| c.to_ascii_uppercase()).collect();
        *self.subscribed.write().unwrap_or_else(|p| p.into_inner()) = codes;
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

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// The exposition a client asks for with `accept`: `(body, content type)`.
    pub fn render_for(&self, accept: Option<&str>) -> (String, &'static str) {
        let text = self.render();
        if wants_openmetrics(accept) {
            (text, OPENMETRICS)
        } else {
            (prometheus_text(&text), PROMETHEUS_TEXT)
        }
    }
}

/// The OpenMetrics content type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Prometheus text format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether an `Accept` header prefers OpenMetrics to plain text (by its `q` values; an equal
/// preference goes to OpenMetrics, as a Prometheus server listing both means it).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    let (mut openmetrics, mut text) = (0.0f32, 0.0f32);
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or_default().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    openmetrics > 0.0 && openmetrics >= text
}

/// Rewrites prometheus-client's OpenMetrics text as Prometheus text 0.0.4: no `# EOF` or
/// `# UNIT`, counters described under their `_total` sample name, `unknown` as `untyped`,
/// `info` as a gauge named `_info`.
pub fn prometheus_text(openmetrics: &str) -> String {
    let mut out = String::with_capacity(openmetrics.len());
    let mut help: Option<(&str, &str)> = None;
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            help = Some(rest.split_once(' ').unwrap_or((rest, "")));
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, "untyped"));
            let (name, kind) = match kind {
                "counter" => (format!("{name}_total"), "counter"),
                "gauge" | "histogram" | "summary" => (name.to_owned(), kind),
                "info" => (format!("{name}_info"), "gauge"),
                _ => (name.to_owned(), "untyped"),
            };
            if let Some((_, text)) = help.take() {
                out.push_str(&format!("# HELP {name} {text}\n"));
            }
            out.push_str(&format!("# TYPE {name} {kind}\n"));
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        // Exemplars (` # {...}`) are OpenMetrics only.
        let sample = line.split_once(" # ").map_or(line, |(sample, _)| sample);
        out.push_str(sample);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_asks_for_openmetrics_and_curl_gets_text() {
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
            application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some("application/openmetrics-text;q=0, */*")));
        assert!(!wants_openmetrics(Some("text/plain, application/openmetrics-text;q=0.5")));
    }

    #[test]
    fn the_text_format_names_counters_by_their_samples_and_has_no_eof() {
        let metrics = Metrics::new();
        metrics.request("ONAPPINSTALL", "accepted", 0.001);
        let (text, content_type) = metrics.render_for(Some("*/*"));
        assert_eq!(content_type, PROMETHEUS_TEXT);
        assert!(text.contains("# TYPE b24_events_received_total counter\n"), "{text}");
        assert!(text.contains("# HELP b24_events_received_total Event requests"), "{text}");
        assert!(
            text.contains(
                "b24_events_received_total{code=\"ONAPPINSTALL\",outcome=\"accepted\"} 1\n"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE b24_request_duration_seconds histogram\n"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
        let (open, content_type) = metrics.render_for(Some("application/openmetrics-text"));
        assert_eq!(content_type, OPENMETRICS);
        assert!(open.ends_with("# EOF\n") && open.contains("# TYPE b24_events_received counter"));
    }

    #[test]
    fn the_intake_ring_counts_per_second_and_class_and_forgets_after_ten_minutes() {
        let ring = IntakeRing::default();
        ring.record_at(1000, "accepted");
        ring.record_at(1000, "accepted");
        ring.record_at(1000, "duplicate");
        ring.record_at(1001, "unauthorized");
        ring.record_at(1002, "unavailable");
        let window = ring.window(1002);
        assert_eq!(window.len(), INTAKE_SECONDS);
        assert_eq!(window[INTAKE_SECONDS - 3], [2, 1, 0, 0]);
        assert_eq!(window[INTAKE_SECONDS - 2], [0, 0, 1, 0]);
        assert_eq!(window[INTAKE_SECONDS - 1], [0, 0, 0, 1]);
        // Ten minutes on, the same slots read as zero, and a new count starts from zero.
        let later = 1000 + INTAKE_SECONDS as i64;
        assert!(ring.window(later + 2).iter().all(|c| *c == [0; 4]));
        ring.record_at(later, "accepted");
        assert_eq!(ring.window(later)[INTAKE_SECONDS - 1], [1, 0, 0, 0]);
    }

    #[test]
    fn unknown_codes_share_one_label() {
        let metrics = Metrics::new();
        for i in 0..1000 {
            metrics.request(&format!("ONRANDOM{i}"), "accepted", 0.0);
        }
        metrics.request("ONCRMDEALUSERFIELDSETENUMVALUES", "accepted", 0.0);
        metrics.request("ONCRMDEALUPDATE", "accepted", 0.0);
        metrics.request("ONMYEVENT", "accepted", 0.0);
        metrics.set_subscribed(["onMyEvent".to_owned()]);
        metrics.request("ONMYEVENT", "accepted", 0.0);
        metrics.request("-", "unauthorized", 0.0);
        let text = metrics.render();
        let series = text.lines().filter(|l| l.starts_with("b24_events_received_total")).count();
        assert_eq!(series, 5, "{text}");
        assert!(text.contains("code=\"other\",outcome=\"accepted\"} 1001"), "{text}");
        assert!(text.contains("code=\"ONMYEVENT\",outcome=\"accepted\"} 1"), "{text}");
        assert!(text.contains("code=\"ONCRMDEALUSERFIELDSETENUMVALUES\""), "{text}");
        assert!(text.contains("code=\"ONCRMDEALUPDATE\""), "{text}");
        assert!(text.contains("code=\"-\",outcome=\"unauthorized\"} 1"), "{text}");
    }
}
