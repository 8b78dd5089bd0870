//! Server wiring: opens the journal, loads the plugins, starts the workers and the control
//! socket, accepts connections, and shuts down in order (stop accepting, finish requests,
//! finish the calls in flight, make the journal durable, shut the plugins down).

use std::{future::Future, sync::Arc, time::Instant};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::net::TcpListener;

use crate::{
    auth::Verifier,
    config::Config,
    control,
    dispatch::{Dispatcher, Instance, Worker, host_services},
    ingress::Ingress,
    journal::{self, Journal, StoreError},
    loader::{self, LoadError, LoadedPlugin},
    offline::Pollers,
    rest::RestClient,
    route::Route,
};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The state folder cannot be created.
    #[error("cannot create the state folder {}: {source}", .path.display())]
    StateDir {
        /// The folder.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The journal cannot be opened.
    #[error("{0}")]
    Journal(#[from] StoreError),
    /// The REST client cannot be set up (TLS).
    #[error("cannot set up the REST client: {0}")]
    Rest(String),
    /// The control socket cannot be bound.
    #[error("cannot create the control socket {}: {source}", .path.display())]
    Control {
        /// The socket path.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// A plugin that loaded, with the route it will receive events by.
pub struct PluginReport {
    /// The library.
    pub plugin: LoadedPlugin,
    /// Its effective subscription.
    pub route: Route,
}

/// Loads every enabled plugin's library (without creating instances): the ones that loaded
/// and every failure, so that all problems are reported at once.
pub fn load_plugins(config: &Config) -> (Vec<PluginReport>, Vec<LoadError>) {
    let dir = &config.plugins.dir;
    let discovered = match loader::discover(dir) {
        Ok(found) => found,
        Err(e) => return (Vec::new(), vec![e]),
    };
    let mut loaded = Vec::new();
    let mut errors = Vec::new();
    for name in &config.plugins.enabled {
        match loader::load(dir, &discovered, name) {
            Ok(plugin) => {
                let route = Route::new(&plugin.events, &config.plugin_config(name));
                loaded.push(PluginReport { plugin, route });
            }
            Err(e) => errors.push(e),
        }
    }
    (loaded, errors)
}

/// Loads and creates every enabled plugin. A plugin that fails is reported and left out: its
/// events wait in the journal until it loads.
fn create_workers(config: &Config, rest: &Arc<RestClient>) -> Vec<Worker> {
    let started = Instant::now();
    let (loaded, errors) = load_plugins(config);
    for e in &errors {
        tracing::error!("{e}; its events are kept in the journal until it loads");
    }
    let mut workers = Vec::new();
    for PluginReport { plugin, route } in loaded {
        let name = plugin.name.clone();
        let plugin_config = config.plugin_config(&name);
        let runtime = tokio::runtime::Handle::current();
        let host = host_services::for_plugin(
            &name,
            &config.base_dir,
            &config.state_dir,
            Some((rest.clone(), runtime)),
        );
        let load_time = plugin.load_time;
        let version = plugin.version.clone();
        match Instance::create(plugin, plugin_config.settings.clone(), host) {
            Ok(instance) => {
                tracing::info!(
                    plugin = %name,
                    %version,
                    load_us = load_time.as_micros() as u64,
                    subscriptions = %route.describe(),
                    "plugin loaded"
                );
                workers.push(Worker {
                    name,
                    instance: Arc::new(instance),
                    route,
                    config: plugin_config,
                });
            }
            Err(e) => tracing::error!("{e}; its events are kept in the journal until it loads"),
        }
    }
    tracing::info!(
        plugins = workers.len(),
        failed = config.plugins.enabled.len() - workers.len(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "plugins ready"
    );
    workers
}

/// A host with its journal open, its plugins loaded and its workers started, ready to accept.
pub struct Prepared {
    config: Config,
    journal: Journal,
    writer: std::thread::JoinHandle<()>,
    dispatcher: Dispatcher,
    ingress: Arc<Ingress>,
    control: tokio::net::UnixListener,
    pollers: Arc<Pollers>,
    rest: Arc<RestClient>,
}

/// Everything the host needs before it may accept an event: the state folder, the journal,
/// the control socket, the plugins. Must run inside the tokio runtime.
pub fn prepare(config: Config) -> Result<Prepared, ServeError> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|source| ServeError::StateDir { path: config.state_dir.clone(), source })?;
    let (journal, writer) = Journal::open(
        &config.state_dir.join(journal::FILE_NAME),
        &config.journal,
        &config.plugins.enabled,
    )?;
    let verifier = Arc::new(Verifier::new(&config.auth, journal.learned_tokens()?));
    let control = control::bind(&config.state_dir).map_err(|source| ServeError::Control {
        path: control::socket_path(&config.state_dir),
        source,
    })?;
    let rest = Arc::new(
        RestClient::new(config.rest.clone(), journal.clone())
            .map_err(|e| ServeError::Rest(e.to_string()))?,
    );
    let workers = create_workers(&config, &rest);
    let routes: Vec<(Arc<str>, Route)> = config
        .plugins
        .enabled
        .iter()
        .map(|name| {
            let route = workers
                .iter()
                .find(|w| &w.name == name || loader::normalize(&w.name) == loader::normalize(name))
                .map_or_else(
                    || Route::config_only(&config.plugin_config(name)),
                    |w| w.route.clone(),
                );
            (Arc::from(name.as_str()), route)
        })
        .collect();
    let dispatcher = Dispatcher::start(workers, &journal);
    let pollers = Arc::new(Pollers::start(&config, rest.clone(), journal.clone(), routes.clone()));
    let ingress = Arc::new(Ingress {
        path: config.server.path.clone(),
        max_body_bytes: config.server.max_body_bytes,
        verifier,
        journal: journal.clone(),
        routes,
        pollers: pollers.clone(),
    });
    Ok(Prepared { config, journal, writer, dispatcher, ingress, control, pollers, rest })
}

/// Runs the host on `listener` until `shutdown` completes, then shuts down gracefully.
///
/// The listener comes from outside so that callers (and tests) choose the address, port 0
/// included.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    prepare(config)?.run(listener, shutdown).await;
    Ok(())
}

impl Prepared {
    /// Accepts connections on `listener` until `shutdown` completes, then stops in order: no
    /// new connections, open requests finish, calls in flight finish (up to the grace period),
    /// the journal is made durable, every plugin's `shutdown` runs. Undelivered events stay in
    /// the journal for the next start.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let Prepared { config, journal, writer, dispatcher, ingress, control, pollers, rest } =
            self;
        let reach = control::Reach { journal: journal.clone(), pollers: pollers.clone(), rest };
        let control = tokio::spawn(control::serve(control, reach));
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(config.server.header_read_timeout);
        let graceful = GracefulShutdown::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _peer)) => stream,
                        Err(e) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!("accept failed: {e}");
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let ingress = ingress.clone();
                    let service = service_fn(move |request| ingress.clone().handle(request));
                    let connection =
                        graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!("connection closed with an error: {e}");
                        }
                    });
                }
                () = &mut shutdown => break,
            }
        }

        tracing::info!("shutting down: no new connections");
        drop(listener);
        let grace = config.server.shutdown_grace;
        if tokio::time::timeout(grace, graceful.shutdown()).await.is_err() {
            tracing::warn!("requests still open at the end of the grace period; closing them");
        }
        drop(ingress);
        pollers.stop().await;
        journal.close();
        dispatcher.finish(grace).await;
        control.abort();
        let _ = control.await;
        journal.flush().await;
        drop(journal);
        // The writer ends once the last handle is gone, after a final durable commit.
        let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        let _ = std::fs::remove_file(control::socket_path(&config.state_dir));
        tracing::info!("stopped");
    }
}
