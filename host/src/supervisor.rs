//! The plugin supervisor: loads the enabled plugins at start, runs one worker per loaded
//! plugin, knows which failed and why, and applies live reloads.
//!
//! Plugins are brought up in the background, all at once, each on a blocking thread of its
//! own: the host listens meanwhile (the routes of a plugin not yet created are its config's,
//! so its events are journaled and wait for it, as for a plugin that failed to load). One that
//! is not created within `plugins.start_timeout_ms` is reported failed (an ERROR line, state
//! `failed` with the reason in `/metrics`, `/readyz`, the console): a runner is killed at the
//! deadline and the plugin is tried again at the next reload; an in-process `create` cannot be
//! stopped, and if it returns late its instance is used after all. Reloads are brought up the
//! same way, under the same deadline.
//!
//! A reload re-reads host.toml and the plugins folder. A library whose SHA-256 changed is
//! copied to `state_dir/plugins/<sha256>.so` (the dynamic loader caches by path and abi_stable
//! never unloads, so only a new path loads new code), loaded, created, and swapped into the
//! plugin's worker; calls already running finish on the old instance, which is shut down after
//! the last of them. A plugin that fails to load or create keeps its old instance. A newly
//! enabled plugin receives the events that arrive from then on; a disabled one stops, keeping
//! its backlog. `[auth]` is applied by the token verifier (see `ops.rs`); other changes outside
//! the plugin tables are reported as needing a restart.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Instant,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::{
    auth::Verifier,
    call::host_services,
    config::{Config, Isolation, PluginConfig, PluginKind},
    dispatch::{Instance, PluginStatus, Worker, inflight},
    forward::HttpTarget,
    journal::{Log, Stopper},
    loader,
    loader::PluginMeta,
    metrics::{Metrics, PluginState},
    rest::RestClient,
    route::{Route, Router, Routes},
    runner::{ExecProgram, Program, RunnerHandle, RunnerSpec, RunnerState, lines::EventJson},
};

/// One enabled plugin as the supervisor sees it.
#[derive(Default)]
struct Entry {
    /// The running worker, when the plugin loaded at least once.
    worker: Option<Running>,
    /// Why the last load or create failed, if it did.
    failure: Option<String>,
    /// SHA-256 of the library now running.
    sha256: Option<String>,
    /// The host-side config it runs with.
    config: Option<PluginConfig>,
    /// Being loaded and created for the first time, within the start deadline.
    starting: bool,
}

struct Running {
    worker: Arc<Worker>,
    task: JoinHandle<()>,
    stopper: Stopper,
}

/// What a reload did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Plugins whose new library or settings now run.
    pub reloaded: Vec<String>,
    /// Plugins newly enabled and running.
    pub started: Vec<String>,
    /// Plugins disabled (their events stay in the journal).
    pub stopped: Vec<String>,
    /// Plugins left as they were: (plugin, why the new one failed).
    pub failed: Vec<(String, String)>,
    /// Settings that changed but only take effect after a restart.
    pub restart_needed: Vec<String>,
}

impl ReloadReport {
    /// Whether everything asked for took effect.
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    fn merge(&mut self, other: ReloadReport) {
        self.reloaded.extend(other.reloaded);
        self.started.extend(other.started);
        self.stopped.extend(other.stopped);
        self.failed.extend(other.failed);
        self.restart_needed.extend(other.restart_needed);
    }
}

/// One enabled plugin, for the console ([`Supervisor::views`]).
pub struct PluginView {
    /// Its name.
    pub name: String,
    /// The version it declares, once loaded.
    pub version: Option<String>,
    /// Its subscriptions as the route describes them, once loaded.
    pub subscriptions: Option<String>,
    /// `process` or `in-process`, once loaded (library plugins).
    pub isolation: Option<&'static str>,
    /// `library`, `exec` or `http`.
    pub kind: &'static str,
    /// What an exec plugin runs (its command, and its environment's names, never values) or
    /// where an http plugin posts (its URL without credentials or query, its format, whether
    /// it signs).
    pub target: Option<String>,
    /// SHA-256 of the library running.
    pub sha256: Option<String>,
    /// Its `[plugin.<name>.settings]` as TOML text: may hold credentials, redact before showing.
    pub settings: String,
    /// `starting`, `loaded`, `degraded`, `restarting` or `failed`.
    pub state: &'static str,
    /// Why the last load or reload failed, if it did.
    pub failure: Option<String>,
    /// Its runner (process isolation).
    pub runner: Option<RunnerState>,
}

/// The supervisor.
pub struct Supervisor {
    journal: Log,
    rest: Arc<RestClient>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    config: Mutex<Config>,
    entries: Mutex<BTreeMap<String, Entry>>,
    routes: Arc<RwLock<Arc<Routes>>>,
    reloading: tokio::sync::Mutex<()>,
    inflight: inflight::Records,
    /// Set by [`Supervisor::finish`]: a plugin created after it is shut down, not started.
    closing: AtomicBool,
    /// Events as JSON, built once per event for every exec and http plugin.
    event_json: Arc<EventJson>,
    /// The portals' application tokens (http plugins' `format = "form"` bodies).
    tokens: Arc<Verifier>,
}

/// The SHA-256 of a file, read in pieces: plugins are brought up at once, and a debug build's
/// library is tens of MiB.
fn sha256_of(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    std::io::copy(&mut std::fs::File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

impl Supervisor {
    /// Loads every enabled plugin and starts the workers of those that loaded.
    pub fn start(
        config: Config,
        journal: Log,
        rest: Arc<RestClient>,
        metrics: Arc<Metrics>,
        tokens: Arc<Verifier>,
    ) -> Arc<Supervisor> {
        let supervisor = Arc::new(Supervisor {
            journal,
            rest,
            metrics,
            runtime: tokio::runtime::Handle::current(),
            config: Mutex::new(config.clone()),
            entries: Mutex::new(BTreeMap::new()),
            routes: Arc::new(RwLock::new(Arc::new(Vec::new()))),
            reloading: tokio::sync::Mutex::new(()),
            inflight: inflight::Records::default(),
            closing: AtomicBool::new(false),
            event_json: Arc::new(EventJson::default()),
            tokens,
        });
        supervisor.mark_starting(&config);
        // Before the host listens: events for every enabled plugin are journaled from the start.
        supervisor.publish_routes(&config);
        warn_unused_plugin_tables(&config);
        let this = supervisor.clone();
        supervisor.runtime.spawn(async move {
            // A reload waits for the start to settle (or its deadline to pass).
            let _one_at_a_time = this.reloading.lock().await;
            let started = Instant::now();
            let report = this.bring_up_all(&config, false).await;
            for (name, reason) in &report.failed {
                tracing::error!(plugin = %name, "{reason}; its events are kept in the journal until it loads");
            }
            tracing::info!(
                plugins = report.started.len(),
                failed = report.failed.len(),
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "plugins ready"
            );
        });
        supervisor
    }

    /// Marks the enabled plugins that do not run yet as starting.
    fn mark_starting(&self, config: &Config) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for name in &config.plugins.enabled {
            let entry = entries.entry(name.clone()).or_default();
            if entry.worker.is_none() {
                // Tried again: what failed last time is reported again if it fails again.
                entry.starting = true;
                entry.failure = None;
            }
        }
    }

    /// Brings up every plugin `config` enables, all at once, each on a blocking thread, and
    /// waits for them up to `plugins.start_timeout_ms`; the ones still loading or creating then
    /// are reported failed (see the module docs) and left to finish in the background.
    async fn bring_up_all(
        self: &Arc<Self>,
        config: &Config,
        only_if_changed: bool,
    ) -> ReloadReport {
        self.mark_starting(config);
        let deadline = tokio::time::Instant::now() + config.plugins.start_timeout;
        let mut pending = tokio::task::JoinSet::new();
        for name in &config.plugins.enabled {
            let (this, config, name) = (self.clone(), config.clone(), name.clone());
            pending.spawn_blocking(move || {
                let mut report = ReloadReport::default();
                this.bring_up(&config, &name, only_if_changed, &mut report);
                // Its own route, at once (a late one too).
                let current = this.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
                this.publish_routes(&current);
                (name, report)
            });
        }
        let mut report = ReloadReport::default();
        let mut settled = BTreeSet::new();
        loop {
            match tokio::time::timeout_at(deadline, pending.join_next()).await {
                Ok(Some(Ok((name, one)))) => {
                    settled.insert(name);
                    report.merge(one);
                }
                Ok(Some(Err(e))) => report.failed.push(("*".into(), e.to_string())),
                Ok(None) => break,
                Err(_) => {
                    pending.detach_all();
                    let timeout_ms = config.plugins.start_timeout.as_millis();
                    for name in config.plugins.enabled.iter().filter(|n| !settled.contains(*n)) {
                        let plugin = config.plugin_config(name);
                        let reason = match (&plugin.kind, plugin.isolation) {
                            (PluginKind::Exec(_), _) => format!(
                                "plugin `{name}`: its program did not answer ready within plugins.start_timeout_ms ({timeout_ms} ms); it is killed, a reload tries again"
                            ),
                            (_, Isolation::Process) => format!(
                                "plugin `{name}`: not created within plugins.start_timeout_ms ({timeout_ms} ms); its runner is killed, a reload tries again"
                            ),
                            (_, Isolation::InProcess) => format!(
                                "plugin `{name}`: not created within plugins.start_timeout_ms ({timeout_ms} ms); its create still runs (in-process: it cannot be stopped) and its instance is used if it returns"
                            ),
                        };
                        self.fail(name, reason, &mut report);
                    }
                    break;
                }
            }
        }
        report
    }

    /// The routes of every enabled plugin (loaded or not), for ingress.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A live handle on the routes, for the offline pollers: who receives an event as of now.
    pub fn router(&self) -> Router {
        Router::new(self.routes.clone())
    }

    fn publish_routes(&self, config: &Config) {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let routes: Routes = config
            .plugins
            .enabled
            .iter()
            .map(|name| {
                let route = entries.get(name).and_then(|e| e.worker.as_ref()).map_or_else(
                    || Route::config_only(&config.plugin_config(name)),
                    |r| r.worker.route(),
                );
                (Arc::from(name.as_str()), route)
            })
            .collect();
        self.metrics.set_subscribed(routes.iter().flat_map(|(_, route)| route.literal_codes()));
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(routes);
    }

    /// Loads, creates and starts (or swaps in) plugin `name` as `config` says. With
    /// `only_if_changed`, an unchanged library with unchanged settings is left alone.
    fn bring_up(
        &self,
        config: &Config,
        name: &str,
        only_if_changed: bool,
        report: &mut ReloadReport,
    ) {
        let plugin_config = config.plugin_config(name);
        let attempt = || -> Result<Option<(PathBuf, String)>, String> {
            let (path, sha) = match &plugin_config.kind {
                PluginKind::Library => {
                    let path =
                        loader::locate(&config.plugins.dir, name).map_err(|e| e.to_string())?;
                    let sha = sha256_of(&path).map_err(|e| {
                        format!("plugin `{name}`: cannot read {}: {e}", path.display())
                    })?;
                    (path, sha)
                }
                PluginKind::Exec(exec) => {
                    (PathBuf::new(), exec_fingerprint(&config.base_dir, &exec.command))
                }
                PluginKind::Http(http) => (PathBuf::new(), sha256_hex(http.url.as_bytes())),
            };
            {
                let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                if only_if_changed
                    && let Some(entry) = entries.get(name)
                    && entry.worker.is_some()
                    && entry.sha256.as_deref() == Some(sha.as_str())
                    && entry.config.as_ref() == Some(&plugin_config)
                {
                    return Ok(None);
                }
            }
            if !matches!(plugin_config.kind, PluginKind::Library) {
                return Ok(Some((path, sha)));
            }
            // Load from a content-addressed copy: a new path is the only way to get new code
            // into a process that already loaded the old file.
            let copy = content_copy(&config.state_dir, &path, &sha)?;
            Ok(Some((copy, sha)))
        };
        let (copy, sha) = match attempt() {
            Ok(Some(found)) => found,
            Ok(None) => {
                // What runs is what was asked for: an earlier failed reload no longer applies.
                let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(entry) = entries.get_mut(name) {
                    entry.failure = None;
                }
                return;
            }
            Err(reason) => {
                self.fail(name, reason, report);
                return;
            }
        };
        let host = host_services::for_plugin(
            name,
            &config.base_dir,
            &config.state_dir,
            Some((self.rest.clone(), self.runtime.clone())),
        );
        let created = match (&plugin_config.kind, plugin_config.isolation) {
            (PluginKind::Exec(exec), _) => RunnerHandle::start(RunnerSpec {
                plugin: name.to_owned(),
                program: Program::Exec(ExecProgram {
                    command: exec.command.clone(),
                    env: exec.env.clone(),
                    window: exec.window,
                    events: plugin_config.events.clone().unwrap_or_default(),
                    json: self.event_json.clone(),
                }),
                settings: plugin_config.settings.clone(),
                config_dir: config.base_dir.clone(),
                state_dir: config.state_dir.clone(),
                memory_limit_mb: plugin_config.memory_limit_mb,
                start_timeout: config.plugins.start_timeout,
                host,
                metrics: self.metrics.clone(),
            })
            .map(Instance::in_runner),
            (PluginKind::Http(http), _) => HttpTarget::new(
                name,
                http,
                plugin_config.timeout,
                self.event_json.clone(),
                self.tokens.clone(),
                self.runtime.clone(),
            )
            .map(|target| {
                let meta = PluginMeta {
                    name: name.to_owned(),
                    path: PathBuf::from(target.shown_url()),
                    version: "http".to_owned(),
                    events: plugin_config.events.clone().unwrap_or_default(),
                    // Requests are independent: `concurrency` of them may be in flight (1 by
                    // default, which keeps the events in order).
                    concurrent: true,
                    api_version: String::new(),
                    load_time: std::time::Duration::ZERO,
                };
                Instance::http(meta, target)
            }),
            (PluginKind::Library, Isolation::InProcess) => loader::load_file(name, &copy)
                .and_then(|loaded| Instance::create(loaded, plugin_config.settings.clone(), host))
                .map_err(|e| e.to_string()),
            (PluginKind::Library, Isolation::Process) => RunnerHandle::start(RunnerSpec {
                plugin: name.to_owned(),
                program: Program::Library(copy),
                settings: plugin_config.settings.clone(),
                config_dir: config.base_dir.clone(),
                state_dir: config.state_dir.clone(),
                memory_limit_mb: plugin_config.memory_limit_mb,
                start_timeout: config.plugins.start_timeout,
                host,
                metrics: self.metrics.clone(),
            })
            .map(Instance::in_runner),
        };
        let instance = match created {
            Ok(instance) => Arc::new(instance),
            Err(e) => {
                self.fail(name, e, report);
                return;
            }
        };

        let route = Route::new(&instance.info().events, &plugin_config);
        let version = instance.info().version.clone();
        let load_us = instance.info().load_time.as_micros() as u64;
        let isolation = match plugin_config.kind {
            PluginKind::Library => plugin_config.isolation.as_str(),
            _ => plugin_config.kind.as_str(),
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if self.closing.load(Ordering::SeqCst) {
            // Created after the host began to stop (checked under the lock `finish` takes the
            // workers with): shut down again when dropped, never run.
            return;
        }
        // Every plugin brought up has its entry (`mark_starting`); none means a reload disabled
        // it while it was being created (late): it is not started.
        let Some(entry) = entries.get_mut(name) else { return };
        match &entry.worker {
            Some(running) => {
                running.worker.swap(instance, route.clone(), plugin_config.clone());
                report.reloaded.push(name.to_owned());
                tracing::info!(plugin = %name, %version, isolation, sha256 = %sha, subscriptions = %route.describe(), "plugin reloaded");
            }
            None => {
                let (record, found) = self.inflight.get(&config.state_dir, name, &plugin_config);
                let worker = Arc::new(
                    Worker::new(
                        name.to_owned(),
                        instance,
                        route.clone(),
                        plugin_config.clone(),
                        self.metrics.clone(),
                    )
                    .with_inflight(record.clone()),
                );
                let consumer = self.journal.consumer(name);
                let stopper = consumer.stopper();
                // Crashes of the host in this plugin are counted before it gets anything.
                let startup = inflight::Startup {
                    journal: self.journal.clone(),
                    reporter: consumer.reporter(),
                    plugin: name.to_owned(),
                    record,
                    found,
                    max_crashes: plugin_config.max_crashes,
                    metrics: self.metrics.clone(),
                };
                let task = self.runtime.spawn({
                    let worker = worker.clone();
                    async move {
                        startup.run().await;
                        worker.run(consumer).await
                    }
                });
                entry.worker = Some(Running { worker, task, stopper });
                report.started.push(name.to_owned());
                tracing::info!(plugin = %name, %version, load_us, isolation, subscriptions = %route.describe(), "plugin loaded");
            }
        }
        entry.failure = None;
        entry.starting = false;
        entry.sha256 = Some(sha);
        entry.config = Some(plugin_config);
    }

    fn fail(&self, name: &str, reason: String, report: &mut ReloadReport) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        // No entry: disabled by a reload while it was being created; nothing to show.
        if let Some(entry) = entries.get_mut(name) {
            entry.starting = false;
            entry.failure = Some(if entry.worker.is_some() {
                format!("the last reload failed, the previous instance still serves: {reason}")
            } else {
                format!("not loaded: {reason}")
            });
        }
        report.failed.push((name.to_owned(), reason));
    }

    /// Applies `new` (a re-read host.toml) to the running plugins.
    pub async fn reload(self: &Arc<Self>, new: Config) -> ReloadReport {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.config.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut report =
            ReloadReport { restart_needed: restart_needed(&old, &new), ..ReloadReport::default() };
        report.merge(self.bring_up_all(&new, true).await);
        let gone: Vec<String> = {
            let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries.keys().filter(|n| !new.plugins.enabled.contains(n)).cloned().collect()
        };
        for name in gone {
            let entry = self.entries.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
            if let Some(Entry { worker: Some(running), .. }) = entry {
                running.stopper.stop();
                tracing::debug!(plugin = %name, "disabling the plugin: it takes no more events; its call in flight ends first");
                let _ = running.task.await;
                running.worker.instance().shutdown();
                tracing::info!(plugin = %name, "plugin disabled; its events stay in the journal");
            }
            report.stopped.push(name);
        }
        self.publish_routes(&new);
        warn_unused_plugin_tables(&new);
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = new;
        let outcome = if report.ok() { "ok" } else { "failed" };
        self.metrics
            .reloads
            .get_or_create(&crate::metrics::Received { code: "-".into(), outcome: outcome.into() })
            .inc();
        for (name, reason) in &report.failed {
            tracing::error!(plugin = %name, "reload failed, the old instance keeps running: {reason}");
        }
        for setting in &report.restart_needed {
            tracing::warn!(%setting, "changed in host.toml; takes effect after a restart");
        }
        report
    }

    /// The enabled plugins' names.
    pub fn names(&self) -> Vec<String> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect()
    }

    /// Plugins that are enabled but not running, with the reason (`starting` for one being
    /// created within the start deadline).
    pub fn failures(&self) -> Vec<(String, String)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter_map(|(name, e)| {
                let starting = (e.starting && e.worker.is_none())
                    .then(|| "starting (being loaded and created)".to_owned());
                e.failure.clone().or(starting).map(|f| (name.clone(), f))
            })
            .collect()
    }

    /// Each process-isolated plugin's runner: its state, restarts and last exit reason.
    pub fn runners(&self) -> Vec<(String, RunnerState)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .filter_map(|(name, e)| {
                let instance = e.worker.as_ref()?.worker.instance();
                Some((name.clone(), instance.runner()?.state()))
            })
            .collect()
    }

    /// Every enabled plugin as the console's plugins page shows it (settings unredacted:
    /// the console redacts them).
    pub fn views(&self) -> Vec<PluginView> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .iter()
            .map(|(name, e)| {
                let instance = e.worker.as_ref().map(|r| r.worker.instance());
                let route = e.worker.as_ref().map(|r| r.worker.route());
                let runner = instance.as_ref().and_then(|i| i.runner().map(|r| r.state()));
                let state = match (&instance, &runner) {
                    (None, _) if e.starting => "starting",
                    (None, _) => "failed",
                    (Some(_), Some(r)) if r.state != "running" => "restarting",
                    (Some(i), _) if i.status() == PluginStatus::Degraded => "degraded",
                    (Some(_), _) => "loaded",
                };
                PluginView {
                    name: name.clone(),
                    version: instance.as_ref().map(|i| i.info().version.clone()),
                    subscriptions: route.map(|r| r.describe()),
                    isolation: e
                        .config
                        .as_ref()
                        .filter(|c| matches!(c.kind, PluginKind::Library))
                        .map(|c| c.isolation.as_str()),
                    kind: e.config.as_ref().map_or("library", |c| c.kind.as_str()),
                    target: e.config.as_ref().and_then(|c| target_of(&c.kind)),
                    sha256: e.sha256.clone(),
                    settings: e.config.as_ref().map(|c| c.settings.clone()).unwrap_or_default(),
                    state,
                    failure: e.failure.clone(),
                    runner,
                }
            })
            .collect()
    }

    /// Fills the per-plugin state gauges.
    pub fn export_states(&self) {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        for (name, entry) in entries.iter() {
            let state = match (&entry.worker, &entry.failure) {
                (Some(r), _) if r.worker.instance().runner().is_some_and(|r| !r.is_running()) => {
                    "restarting"
                }
                (Some(r), _) if r.worker.instance().status() == PluginStatus::Degraded => {
                    "degraded"
                }
                (Some(_), None) => "loaded",
                (Some(_), Some(_)) => "loaded",
                (None, _) if entry.starting => "starting",
                (None, _) => "failed",
            };
            for s in ["starting", "loaded", "degraded", "restarting", "failed"] {
                let gauge = self
                    .metrics
                    .plugin_state
                    .get_or_create(&PluginState { plugin: name.clone(), state: s.into() });
                gauge.set(i64::from(s == state));
            }
        }
    }

    /// Stops every worker after its calls in flight, then shuts its plugin down, all plugins at
    /// once and all by `deadline` (the end of the shutdown grace period). A plugin whose call
    /// is still running then is abandoned: its `shutdown` is not called (a call is still inside
    /// it), its events stay pending, and its name comes back. So is one whose `shutdown` runs
    /// past the deadline. Workers with a runner process kill it here once the deadline passes.
    pub async fn finish(&self, deadline: tokio::time::Instant) -> Vec<String> {
        self.closing.store(true, Ordering::SeqCst);
        let running: Vec<(String, Running)> = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            entries
                .iter_mut()
                .filter_map(|(n, e)| e.worker.take().map(|r| (n.clone(), r)))
                .collect()
        };
        let mut stopping = tokio::task::JoinSet::new();
        for (name, r) in running {
            r.stopper.stop();
            stopping.spawn(async move {
                let mut task = r.task;
                if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                    tracing::warn!(plugin = %name, "a call is still running at the end of the shutdown grace period; abandoned (its event stays pending for the next start)");
                    // A runner is killed: its call ends (uncounted) and its process goes.
                    r.worker.instance().stop_now();
                    task.abort();
                    return Some(name);
                }
                let instance = r.worker.instance();
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                let shutdown = tokio::task::spawn_blocking(move || instance.shutdown_within(left));
                match tokio::time::timeout_at(deadline, shutdown).await {
                    Ok(Ok(())) => tracing::info!(plugin = %name, "plugin shut down"),
                    Ok(Err(e)) => tracing::error!(plugin = %name, "plugin shutdown failed: {e}"),
                    Err(_) => {
                        tracing::warn!(plugin = %name, "the plugin's shutdown is still running at the end of the shutdown grace period; abandoned");
                        return Some(name);
                    }
                }
                None
            });
        }
        let mut abandoned = Vec::new();
        while let Some(done) = stopping.join_next().await {
            if let Ok(Some(name)) = done {
                abandoned.push(name);
            }
        }
        abandoned.sort();
        abandoned
    }
}

/// What the console shows of an exec or http plugin's kind (no secret: env names only, the
/// URL without credentials or query).
fn target_of(kind: &PluginKind) -> Option<String> {
    match kind {
        PluginKind::Library => None,
        PluginKind::Exec(exec) => {
            let mut text = exec.command.join(" ");
            if exec.window > 1 {
                text.push_str(&format!("; window {}", exec.window));
            }
            if !exec.env.is_empty() {
                let names: Vec<&str> = exec.env.iter().map(|(k, _)| k.as_str()).collect();
                text.push_str(&format!("; env {}", names.join(", ")));
            }
            Some(text)
        }
        PluginKind::Http(http) => Some(format!(
            "POST {} ({}{})",
            crate::forward::shown_url(&http.url),
            http.format.as_str(),
            if http.secret.is_some() { ", signed" } else { "" }
        )),
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// What an exec plugin runs, for a reload to see a change: its argv and the contents of every
/// argument that names a file (relative to the config's folder, as the program sees it), so
/// an edited script is started anew.
fn exec_fingerprint(base_dir: &Path, command: &[String]) -> String {
    let mut hasher = Sha256::new();
    for arg in command {
        hasher.update(arg.as_bytes());
        hasher.update([0]);
        let path = base_dir.join(arg);
        if path.is_file()
            && let Ok(mut file) = std::fs::File::open(&path)
        {
            let _ = std::io::copy(&mut file, &mut hasher);
        }
        hasher.update([0]);
    }
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Copies `library` to `state_dir/plugins/<sha256>.so` unless it is there already.
/// The copy is written to a temporary name (owner-only, 0600), synced and renamed into place,
/// so a failed copy (a full disk) leaves no partial file behind, and says why.
fn content_copy(state_dir: &Path, library: &Path, sha: &str) -> Result<PathBuf, String> {
    let dir = state_dir.join("plugins");
    crate::state_dir::private_dir(&dir)
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let target = dir.join(format!("{sha}{}", std::env::consts::DLL_SUFFIX));
    if !target.exists() {
        // Plugins are brought up at once: two libraries with the same bytes must not share a
        // temporary file.
        let from =
            library.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tmp = dir.join(format!(".{sha}.{from}.tmp"));
        let copied = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let mut from = std::fs::File::open(library)?;
            let mut to = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            std::io::copy(&mut from, &mut to)?;
            to.sync_all()
        })();
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(format!("cannot copy {} to {}: {e}", library.display(), target.display()));
        }
        std::fs::rename(&tmp, &target).map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            format!("cannot place {}: {e}", target.display())
        })?;
    }
    Ok(target)
}

/// The settings outside the plugin tables that differ (they need a restart).
fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    [
        ("server", old.server != new.server),
        ("state_dir", old.state_dir != new.state_dir),
        ("journal", old.journal != new.journal),
        ("rest", old.rest != new.rest),
        ("log", old.log != new.log),
        ("admin", old.admin != new.admin || old.admin_token != new.admin_token),
        ("plugins.dir", old.plugins.dir != new.plugins.dir),
        ("bind", old.bind != new.bind),
    ]
    .into_iter()
    .filter(|(_, changed)| *changed)
    .map(|(name, _)| name.to_owned())
    // A running plugin's lane threads are started with it: their number changes on a restart.
    .chain(
        old.plugins
            .enabled
            .iter()
            .filter(|name| new.plugins.enabled.contains(name))
            .filter(|name| {
                old.plugin_config(name).concurrency != new.plugin_config(name).concurrency
            })
            .map(|name| format!("plugin.{name}.concurrency")),
    )
    .collect()
}

/// [`crate::names::warn_unused_plugin_tables`] over the plugins folder as it is now; a folder
/// that cannot be listed counts as empty (its error is reported where the plugins are loaded).
fn warn_unused_plugin_tables(config: &Config) {
    let libraries = loader::discover(&config.plugins.dir).unwrap_or_default();
    crate::names::warn_unused_plugin_tables(config, &libraries);
}
