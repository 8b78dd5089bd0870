//! Server wiring: loads the plugins, starts the workers, accepts connections, and shuts down
//! in order (stop accepting, finish requests, deliver what is queued, shut the plugins down).

use std::{future::Future, sync::Arc, time::Instant};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::net::TcpListener;

use crate::{
    auth::{StoreError, Verifier},
    config::Config,
    dispatch::{Dispatcher, Instance, Route, Worker, host_services},
    ingress::Ingress,
    loader::{self, LoadError, LoadedPlugin},
    queue::Queue,
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
    /// The learned-token store cannot be read.
    #[error(transparent)]
    TokenStore(#[from] StoreError),
    /// One or more enabled plugins failed to load or create.
    #[error("{} enabled plugin(s) failed:\n  {}", .0.len(), .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n  "))]
    Plugins(Vec<LoadError>),
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

/// Loads and creates every enabled plugin, ready to run.
fn create_workers(config: &Config) -> Result<Vec<Worker>, ServeError> {
    let started = Instant::now();
    let (loaded, mut errors) = load_plugins(config);
    let mut workers = Vec::new();
    for PluginReport { plugin, route } in loaded {
        let name = plugin.name.clone();
        let plugin_config = config.plugin_config(&name);
        let host = host_services::for_plugin(&name, &config.base_dir, &config.state_dir);
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
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(ServeError::Plugins(errors));
    }
    tracing::info!(
        plugins = workers.len(),
        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
        "plugins ready"
    );
    Ok(workers)
}

/// A host with its plugins loaded and created, its workers started, ready to accept.
pub struct Prepared {
    config: Config,
    queue: Queue,
    dispatcher: Dispatcher,
    ingress: Arc<Ingress>,
}

/// Loads everything the host needs before it may accept an event: the state folder, the
/// token store, every enabled plugin. Fails, naming every problem, when any is missing.
pub fn prepare(config: Config) -> Result<Prepared, ServeError> {
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|source| ServeError::StateDir { path: config.state_dir.clone(), source })?;
    let verifier = Arc::new(Verifier::new(&config.auth, &config.state_dir)?);
    let workers = create_workers(&config)?;
    let queue = Queue::new();
    let dispatcher = Dispatcher::start(workers, &queue);
    let ingress = Arc::new(Ingress {
        path: config.server.path.clone(),
        max_body_bytes: config.server.max_body_bytes,
        verifier,
        queue: queue.clone(),
    });
    Ok(Prepared { config, queue, dispatcher, ingress })
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
    /// new connections, open requests finish, queued events are delivered (up to the grace
    /// period), every plugin's `shutdown` runs.
    pub async fn run(self, listener: TcpListener, shutdown: impl Future<Output = ()>) {
        let Prepared { config, queue, dispatcher, ingress } = self;
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
        queue.close();
        dispatcher.finish(grace).await;
        tracing::info!("stopped");
    }
}
