//! `b24-host check`: validates the config, loads and creates every enabled plugin, and prints
//! what each one receives; on the NATS backend it also connects to the shared log and reports
//! the stream (messages, bytes, replicas and how current each is, the leader), the dead
//! letters and each plugin's consumer. It says which plugins are paused (`plugin pause`, or
//! `pause_after_failures`: the operator's choice, not a problem). With a running host it also
//! asks it about each portal: whether the app's installation is finished and what is bound
//! (warnings). Reports every problem at once; exits non-zero on any.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use crate::{
    call::host_services,
    config::{Config, PluginKind},
    loader::{self, LoadError, LoadedPlugin},
    route::Route,
    runner::{ExecProgram, Program, RunnerHandle, RunnerSpec, lines::EventJson},
};

/// Runs the check and prints its report on stdout (problems on stderr).
pub fn run(config: &Config) -> ExitCode {
    match &config.source {
        Some(path) => println!("config: {} (ok)", path.display()),
        None => println!("config: embedded defaults"),
    }
    for warning in crate::auth::warnings(config) {
        eprintln!("warning: {warning}");
    }
    println!("plugins folder: {}", config.plugins.dir.display());
    let (loaded, errors) = match loader::discover(&config.plugins.dir) {
        Ok(libraries) => {
            for warning in crate::names::unused_plugin_tables(config, &libraries) {
                eprintln!("warning: {warning}");
            }
            load_plugins(config, &libraries)
        }
        // Only exec and http plugins: no library to find.
        Err(_)
            if config
                .plugins
                .enabled
                .iter()
                .all(|n| !matches!(config.plugin_config(n).kind, PluginKind::Library)) =>
        {
            (Vec::new(), Vec::new())
        }
        Err(e) => (Vec::new(), vec![e]),
    };
    let mut errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for report in &loaded {
        let plugin = &report.plugin;
        let host =
            host_services::for_plugin(&plugin.name, &config.base_dir, &config.state_dir, None);
        let settings = config.plugin_config(&plugin.name).settings;
        match create_within(plugin, settings, host, config.plugins.start_timeout) {
            Ok(()) => {
                let plugin_config = config.plugin_config(&plugin.name);
                let limits = match plugin_config.isolation {
                    crate::config::Isolation::Process => format!(
                        "; kill_after_ms {}, memory_limit_mb {}, max_crashes {}",
                        plugin_config.kill_after.as_millis(),
                        plugin_config.memory_limit_mb.map_or("none".to_owned(), |m| m.to_string()),
                        plugin_config.max_crashes
                    ),
                    crate::config::Isolation::InProcess => {
                        format!("; max_crashes {}", plugin_config.max_crashes)
                    }
                };
                println!(
                    "plugin {} {} ({}; api {}; loaded in {:.1} ms)\n  receives: {}\n  isolation: {}{limits}",
                    plugin.name,
                    plugin.version,
                    plugin.path.display(),
                    plugin.api_version,
                    plugin.load_time.as_secs_f64() * 1000.0,
                    report.route.describe(),
                    plugin_config.isolation.as_str(),
                );
            }
            Err(e) => errors.push(e),
        }
    }
    let mut others = 0;
    for name in &config.plugins.enabled {
        let plugin_config = config.plugin_config(name);
        let checked = match &plugin_config.kind {
            PluginKind::Library => continue,
            PluginKind::Exec(exec) => check_exec(config, name, &plugin_config, exec),
            PluginKind::Http(http) => check_http(name, &plugin_config, http),
        };
        match checked {
            Ok(line) => {
                let route =
                    Route::new(&plugin_config.events.clone().unwrap_or_default(), &plugin_config);
                println!("{line}\n  receives: {}", route.describe());
                others += 1;
            }
            Err(e) => errors.push(e),
        }
    }
    if let Err(e) = check_log(config) {
        errors.push(e);
    }
    check_pauses(config);
    check_portals(config);
    if errors.is_empty() {
        println!("ok: {} plugin(s) ready", loaded.len() + others);
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} problem(s) found", errors.len());
        ExitCode::FAILURE
    }
}

/// Creates `plugin` and shuts it down again, on a thread of its own, waiting for its `create`
/// no longer than `limit` (`plugins.start_timeout_ms`, as the host does): a `create` that
/// hangs is reported, and left behind (the command ends without waiting for it).
fn create_within(
    plugin: &LoadedPlugin,
    settings: String,
    host: b24_plugin_api::HostServicesArc,
    limit: std::time::Duration,
) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let plugin = plugin.clone();
    let name = plugin.name.clone();
    std::thread::Builder::new()
        .name(format!("create-{name}"))
        .spawn(move || {
            let created = plugin.create(&settings, host).map(|instance| instance.shutdown());
            let _ = tx.send(created.map_err(|e| e.to_string()));
        })
        .map_err(|e| format!("plugin `{name}`: cannot start a thread to create it: {e}"))?;
    match rx.recv_timeout(limit) {
        Ok(created) => created,
        Err(_) => Err(format!(
            "plugin `{name}`: not created within plugins.start_timeout_ms ({} ms)",
            limit.as_millis()
        )),
    }
}

/// Starts an exec plugin's program as the host would (its shim, environment, limits), waits for
/// its `ready` within `plugins.start_timeout_ms`, then tells it to shut down.
fn check_exec(
    config: &Config,
    name: &str,
    plugin: &crate::config::PluginConfig,
    exec: &crate::config::ExecConfig,
) -> Result<String, String> {
    let host = host_services::for_plugin(name, &config.base_dir, &config.state_dir, None);
    let runner = RunnerHandle::start(RunnerSpec {
        plugin: name.to_owned(),
        program: Program::Exec(ExecProgram {
            command: exec.command.clone(),
            env: exec.env.clone(),
            window: exec.window,
            events: plugin.events.clone().unwrap_or_default(),
            json: std::sync::Arc::new(EventJson::default()),
        }),
        settings: plugin.settings.clone(),
        config_dir: config.base_dir.clone(),
        state_dir: config.state_dir.clone(),
        memory_limit_mb: plugin.memory_limit_mb,
        start_timeout: config.plugins.start_timeout,
        host,
        metrics: std::sync::Arc::new(crate::metrics::Metrics::new()),
    })?;
    let meta = runner.meta().clone();
    runner.shutdown(crate::runner::SHUTDOWN_GRACE);
    Ok(format!(
        "plugin {name} {} (exec: {}; ready in {:.1} ms)\n  window {}, kill_after_ms {}, memory_limit_mb {}, max_crashes {}",
        meta.version,
        exec.command.join(" "),
        meta.load_time.as_secs_f64() * 1000.0,
        exec.window,
        plugin.kill_after.as_millis(),
        plugin.memory_limit_mb.map_or("none".to_owned(), |m| m.to_string()),
        plugin.max_crashes,
    ))
}

/// Checks that an http plugin's target accepts connections (a TCP connection to its host and
/// port within `timeout_ms`, at most 10 s; nothing is sent to it).
fn check_http(
    name: &str,
    plugin: &crate::config::PluginConfig,
    http: &crate::config::HttpConfig,
) -> Result<String, String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let shown = crate::forward::shown_url(&http.url);
    let url = url::Url::parse(&http.url).map_err(|e| format!("plugin `{name}`: url: {e}"))?;
    let host = url.host_str().unwrap_or_default().trim_matches(['[', ']']).to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    let limit = plugin.timeout.min(std::time::Duration::from_secs(10));
    let addrs: Vec<_> = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("plugin `{name}`: cannot resolve the host of {shown}: {e}"))?
        .collect();
    let mut last = None;
    for addr in &addrs {
        match TcpStream::connect_timeout(addr, limit) {
            Ok(_) => {
                return Ok(format!(
                    "plugin {name} (http: POST {shown}, format {}{}; reachable)\n  timeout_ms {}",
                    http.format.as_str(),
                    if http.secret.is_some() { ", signed" } else { "" },
                    plugin.timeout.as_millis()
                ));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(format!(
        "plugin `{name}`: its target {shown} cannot be reached: {}",
        last.map_or("no address".to_owned(), |e| e.to_string())
    ))
}

/// On the NATS backend: connects to the log and prints its state; why it cannot, if so.
fn check_log(config: &Config) -> Result<(), String> {
    if config.journal.backend == crate::config::JournalBackend::Embedded {
        println!("journal: embedded ({})", config.state_dir.display());
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let report = runtime
        .block_on(crate::journal::log_report(&config.journal, &config.plugins.enabled))
        .map_err(|e| format!("journal (nats): {e}"))?;
    let Some(report) = report else { return Ok(()) };
    print!("{}", describe(&report));
    if let Some(nats) = &config.journal.nats {
        if nats.sync == crate::config::NatsSync::Always {
            println!(
                "  sync: always (every node must run with jetstream {{ sync_interval: always }}; \
                 its /jsz shows config.sync_always)"
            );
        }
    }
    for warning in idle_consumers(&report, &config.plugins.enabled) {
        eprintln!("warning: journal (nats): {warning}");
    }
    for peer in report.stream.iter().flat_map(|s| &s.peers) {
        if peer.offline || !peer.current {
            eprintln!(
                "warning: journal (nats): replica {} of the events stream is {}",
                peer.name,
                if peer.offline { "offline" } else { "not current (catching up)" }
            );
        }
    }
    if report.stream.as_ref().is_some_and(|s| s.leader.is_none()) {
        return Err("journal (nats): the events stream has no leader (an election, or too few nodes up for its quorum)".into());
    }
    Ok(())
}

/// Prints which enabled plugins are paused, as the journal stores it (the stopped host's
/// journal, the running host's control socket, or the NATS log, as `journal stats` reads it).
/// Nothing when there is no journal yet.
fn check_pauses(config: &Config) {
    use crate::control::{AdminRequest, AdminResponse};
    if config.plugins.enabled.is_empty() {
        return;
    }
    let request = AdminRequest::Stats { enabled: config.plugins.enabled.clone() };
    let plugins = match super::journal::ask(config, request) {
        Ok(AdminResponse::Stats { plugins, .. }) => plugins,
        Ok(AdminResponse::Error { message }) => {
            eprintln!("warning: cannot read whether plugins are paused: {message}");
            return;
        }
        Ok(_) => return,
        Err(e)
            if matches!(
                e.downcast_ref::<crate::journal::StoreError>(),
                Some(crate::journal::StoreError::NotFound { .. })
            ) =>
        {
            return;
        }
        Err(e) => {
            eprintln!("warning: cannot read whether plugins are paused: {e}");
            return;
        }
    };
    for line in plugins {
        if let Some(pause) = &line.stats.paused {
            println!(
                "plugin {} state: paused ({}); {} event(s) wait for it; `b24-host plugin resume {}` resumes it",
                line.stats.plugin,
                pause.describe(),
                line.stats.backlog,
                line.stats.plugin
            );
        }
    }
}

/// How long `check` waits for the running host's look at its portals.
const PORTALS_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// Asks the running host (its control socket) to look at every portal now: whether the app's
/// installation is finished (`app.info`) and what is bound. Warnings only: a portal's state is
/// not a problem of this config. Without a running host there is nothing to ask with (the
/// tokens and the REST client are the host's).
fn check_portals(config: &Config) {
    use crate::control::{AdminRequest, AdminResponse, ask};
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        return;
    };
    let request = AdminRequest::Bind { portal: None, check: true };
    let answer = runtime.block_on(async {
        tokio::time::timeout(PORTALS_PATIENCE, ask(&config.state_dir, &request)).await
    });
    let portals = match answer {
        Ok(Ok(AdminResponse::Bindings { portals, .. })) => portals,
        Ok(Ok(AdminResponse::Error { message })) => {
            eprintln!("warning: portals: {message}");
            return;
        }
        Ok(Ok(_)) => return,
        Ok(Err(_)) => {
            println!(
                "portals: no running host to ask (start it: the installation state and the \
                 bindings of each portal are read with its tokens)"
            );
            return;
        }
        Err(_) => {
            eprintln!(
                "warning: portals: the running host did not answer within {} s",
                PORTALS_PATIENCE.as_secs()
            );
            return;
        }
    };
    if portals.is_empty() {
        println!("portals: none known yet (install the app on a portal while the host runs)");
    }
    for p in &portals {
        let domain = p.domain.as_deref().map(|d| format!(" ({d})")).unwrap_or_default();
        let bindings = match (&p.error, config.bind.handler.is_some()) {
            (Some(error), _) => format!("; {error}"),
            (None, true) => format!(
                "; bindings: {} needed, {} bound, {} missing",
                p.needed.len(),
                p.bound.len(),
                p.missing.len()
            ),
            (None, false) => String::new(),
        };
        println!("portal {}{domain}: {}{bindings}", p.member_id, p.installation());
        if p.installed == Some(false) {
            eprintln!(
                "warning: portal {}: the app's installation is not finished (installFinish was never called): the portal sends no events",
                p.member_id
            );
        }
        if !p.missing.is_empty() {
            eprintln!(
                "warning: portal {}: {} binding(s) missing (`b24-host bind --check` lists them; `b24-host bind` binds them)",
                p.member_id,
                p.missing.len()
            );
        }
    }
}

/// Consumers of plugins this host.toml does not enable. With interest retention such a
/// consumer keeps every event addressed to its plugin in the log until it is acked: fine while
/// another host runs the plugin or it is paused, but a plugin gone for good makes the stream
/// grow until its limits refuse appends (then every host spools).
fn idle_consumers(report: &crate::journal::admin::LogReport, enabled: &[String]) -> Vec<String> {
    let stream = report.stream.as_ref().map_or("<stream>", |s| s.name.as_str());
    report
        .consumers
        .iter()
        .filter(|c| c.exists && !enabled.contains(&c.plugin))
        .map(|c| {
            format!(
                "plugin {} is not enabled here, but its consumer keeps the events addressed to it \
                 in the log ({} pending); if no host runs it any more, delete the consumer \
                 (`nats consumer rm {stream} {stream}_{}`) so the log can let them go",
                c.plugin, c.pending, c.plugin
            )
        })
        .collect()
}

/// The report of a shared log, as `check` prints it.
pub fn describe(report: &crate::journal::admin::LogReport) -> String {
    let mut out = format!("journal: nats, connected to {}", report.server);
    if let Some(cluster) = &report.cluster {
        out.push_str(&format!(", cluster {cluster}"));
    }
    out.push('\n');
    match &report.stream {
        None => out.push_str(
            "  stream: not created yet (the first host to start creates it, with the consumers)\n",
        ),
        Some(s) => {
            out.push_str(&format!(
                "  stream {}: {} message(s), {} byte(s), {} replica(s), leader {}\n",
                s.name,
                s.messages,
                s.bytes,
                s.replicas,
                s.leader.as_deref().unwrap_or("none (electing)")
            ));
            for p in &s.peers {
                let state = if p.offline {
                    "offline"
                } else if p.current {
                    "current"
                } else {
                    "catching up"
                };
                out.push_str(&format!(
                    "    replica {}: {state}, lag {}, seen {} ms ago\n",
                    p.name,
                    p.lag.unwrap_or(0),
                    p.active_ms
                ));
            }
        }
    }
    match report.dead.1 {
        Some(n) => out.push_str(&format!("  dead letters {}: {n}\n", report.dead.0)),
        None => out.push_str(&format!("  dead letters {}: not created yet\n", report.dead.0)),
    }
    for c in &report.consumers {
        if c.exists {
            out.push_str(&format!(
                "  consumer {}: {} pending, {} ack pending, {} redelivered, leader {}\n",
                c.plugin,
                c.pending,
                c.ack_pending,
                c.redelivered,
                c.leader.as_deref().unwrap_or("none")
            ));
        } else {
            out.push_str(&format!(
                "  consumer {}: not created yet (a host creates it when it starts with the plugin enabled)\n",
                c.plugin
            ));
        }
    }
    out
}

/// A plugin that loaded, with the route it will receive events by.
struct PluginReport {
    /// The library.
    plugin: LoadedPlugin,
    /// Its effective subscription.
    route: Route,
}

/// Loads every enabled plugin's library among the `libraries` of the plugins folder (without
/// creating instances): the ones that loaded and every failure, so that all problems are
/// reported at once.
fn load_plugins(
    config: &Config,
    libraries: &BTreeMap<String, Vec<PathBuf>>,
) -> (Vec<PluginReport>, Vec<LoadError>) {
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for name in &config.plugins.enabled {
        if !matches!(config.plugin_config(name).kind, PluginKind::Library) {
            continue;
        }
        match loader::locate_in(&config.plugins.dir, libraries, name)
            .and_then(|path| loader::load_file(name, &path))
        {
            Ok(plugin) => {
                let route = Route::new(&plugin.events, &config.plugin_config(name));
                loaded.push(PluginReport { plugin, route });
            }
            Err(e) => errors.push(e),
        }
    }
    (loaded, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::admin::{ConsumerReport, LogReport, PeerReport, StreamReport};

    #[test]
    fn a_log_report_names_the_leader_each_replica_and_each_consumer() {
        let report = LogReport {
            server: "n1 (nats-server 2.15.1)".into(),
            cluster: Some("b24".into()),
            stream: Some(StreamReport {
                name: "B24_EVENTS".into(),
                messages: 7,
                bytes: 1234,
                replicas: 3,
                leader: Some("n2".into()),
                peers: vec![
                    PeerReport { name: "n1".into(), current: true, ..PeerReport::default() },
                    PeerReport {
                        name: "n3".into(),
                        offline: true,
                        lag: Some(5),
                        ..PeerReport::default()
                    },
                ],
            }),
            dead: ("B24_EVENTS_DEAD".into(), Some(2)),
            consumers: vec![
                ConsumerReport {
                    plugin: "probe".into(),
                    exists: true,
                    pending: 4,
                    ack_pending: 1,
                    redelivered: 1,
                    leader: Some("n1".into()),
                },
                ConsumerReport { plugin: "new".into(), ..ConsumerReport::default() },
            ],
        };
        let text = describe(&report);
        assert!(
            text.starts_with("journal: nats, connected to n1 (nats-server 2.15.1), cluster b24\n")
        );
        assert!(
            text.contains("stream B24_EVENTS: 7 message(s), 1234 byte(s), 3 replica(s), leader n2")
        );
        assert!(text.contains("replica n1: current, lag 0"), "{text}");
        assert!(text.contains("replica n3: offline, lag 5"), "{text}");
        assert!(text.contains("dead letters B24_EVENTS_DEAD: 2"), "{text}");
        assert!(
            text.contains("consumer probe: 4 pending, 1 ack pending, 1 redelivered, leader n1")
        );
        assert!(text.contains("consumer new: not created yet"), "{text}");
        let idle = idle_consumers(&report, &["new".to_owned()]);
        assert_eq!(idle.len(), 1, "{idle:?}");
        assert!(
            idle[0].starts_with("plugin probe is not enabled here")
                && idle[0].contains("(4 pending)")
                && idle[0].contains("nats consumer rm B24_EVENTS B24_EVENTS_probe"),
            "{}",
            idle[0]
        );
        assert!(idle_consumers(&report, &["probe".to_owned(), "new".to_owned()]).is_empty());
        let none = describe(&LogReport { dead: ("D".into(), None), ..LogReport::default() });
        assert!(none.contains("stream: not created yet") && none.contains("D: not created yet"));
    }
}
