//! `b24-host check`: validates the config, loads and creates every enabled plugin, and prints
//! what each one receives. Reports every problem at once; exits non-zero on any.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode};

use crate::{
    config::Config,
    dispatch::host_services,
    loader::{self, LoadError, LoadedPlugin},
    route::Route,
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
        Err(e) => (Vec::new(), vec![e]),
    };
    let mut errors: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for report in &loaded {
        let plugin = &report.plugin;
        let host =
            host_services::for_plugin(&plugin.name, &config.base_dir, &config.state_dir, None);
        let settings = config.plugin_config(&plugin.name).settings;
        match plugin.create(&settings, host) {
            Ok(instance) => {
                instance.shutdown();
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
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        println!("ok: {} plugin(s) ready", loaded.len());
        ExitCode::SUCCESS
    } else {
        for e in &errors {
            eprintln!("error: {e}");
        }
        eprintln!("{} problem(s) found", errors.len());
        ExitCode::FAILURE
    }
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
