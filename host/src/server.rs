//! Server wiring: opens the journal, loads the plugins, starts the workers and the control
//! socket, accepts connections, and shuts down in order (stop accepting, finish requests,
//! finish the calls in flight, make the journal durable, shut the plugins down), all within
//! `server.shutdown_grace_ms` of the signal: what a plugin still runs then is abandoned.

use std::{future::Future, sync::Arc, time::Duration};

use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::{
    activation,
    auth::Verifier,
    bind::Binder,
    config::Config,
    conn::{self, DeadlineIo, Limiter},
    control,
    drain::{Drain, Started},
    ingress::Ingress,
    journal::{Journal, StoreError},
    metrics::Metrics,
    offline::Pollers,
    operations::Ops,
    rest::RestClient,
    supervisor::Supervisor,
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
    #[error(transparent)]
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

/// A host with its journal open, its plugins loaded and its workers started, ready to accept.
pub struct Prepared {
    config: Config,
    /// The connection caps fitted under the open-file limit.
    budget: conn::Budget,
    journal: Journal,
    writer: std::thread::JoinHandle<()>,
    supervisor: Arc<Supervisor>,
    ingress: Arc<Ingress>,
    control: tokio::net::UnixListener,
    pollers: Arc<Pollers>,
    binder: Arc<Binder>,
    rest: Arc<RestClient>,
    metrics: Arc<Metrics>,
    /// SIGHUP is watched from here on, before the host says it is ready: a reload sent right
    /// after `listening on` (or systemd's `READY=1`) must not find the default action (exit).
    hangups: Option<tokio::signal::unix::Signal>,
}

/// How a stop ended.
#[derive(Debug, Default)]
#[must_use]
pub struct Stopped {
    /// What was still running at the end of the grace period and was left behind (a plugin's
    /// call or its `shutdown`): the process must exit rather than wait for those threads.
    pub abandoned: Vec<String>,
}

/// Everything the host needs before it may accept an event: the state folder, the journal,
/// the control socket, the plugins. Must run inside the tokio runtime.
pub async fn prepare(config: Config) -> Result<Prepared, ServeError> {
    crate::state_dir::private_dir(&config.state_dir)
        .map_err(|source| ServeError::StateDir { path: config.state_dir.clone(), source })?;
    let budget = fd_budget(&config);
    let (journal, writer) =
        Journal::open(&config.state_dir, &config.journal, &config.plugins.enabled).await?;
    let verifier = Arc::new(
        Verifier::new(&config.auth, &config.rest, journal.state().learned_tokens().await?)
            .map_err(|e| ServeError::Rest(e.to_string()))?,
    );
    for warning in verifier.warnings() {
        tracing::warn!("{warning}");
    }
    if let Some(mut changes) = journal.state().token_changes() {
        // Tokens learned or forgotten through the other hosts on the shared log.
        let verifier = verifier.clone();
        tokio::spawn(async move {
            while let Some((member_id, token)) = changes.recv().await {
                verifier.set_learned(&member_id, token);
            }
        });
    }
    let control = control::bind(&config.state_dir).map_err(|source| ServeError::Control {
        path: control::socket_path(&config.state_dir),
        source,
    })?;
    let metrics = Arc::new(Metrics::new());
    let rest = Arc::new(
        RestClient::new(config.rest.clone(), journal.state())
            .map_err(|e| ServeError::Rest(e.to_string()))?
            .with_metrics(metrics.rest.clone()),
    );
    crate::plugin_output::configure(config.log.plugin, metrics.plugin_log_dropped.clone());
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| tracing::warn!("cannot watch SIGHUP (reloads by signal are off): {e}"))
        .ok();
    let supervisor = Supervisor::start(
        config.clone(),
        journal.log(),
        rest.clone(),
        metrics.clone(),
        verifier.clone(),
    );
    let pollers = Arc::new(Pollers::start(
        &config,
        rest.clone(),
        journal.log(),
        journal.state(),
        supervisor.router(),
        metrics.clone(),
    ));
    let binder = Binder::start(
        &config,
        rest.clone(),
        supervisor.router(),
        metrics.clone(),
        verifier.learned_portals(),
    );
    let ingress = Arc::new(Ingress {
        path: config.server.path.clone(),
        max_body_bytes: config.server.max_body_bytes,
        verifier,
        log: journal.log(),
        state: journal.state(),
        router: supervisor.router(),
        pollers: pollers.clone(),
        binder: binder.clone(),
        rest: rest.clone(),
        metrics: metrics.clone(),
        fresh_reads: Default::default(),
    });
    Ok(Prepared {
        config,
        budget,
        journal,
        writer,
        supervisor,
        ingress,
        control,
        pollers,
        binder,
        rest,
        metrics,
        hangups,
    })
}

/// Raises the open-file limit and fits the connection caps under it, with a log line saying
/// how it is shared (a WARN when `server.max_connections` does not fit).
fn fd_budget(config: &Config) -> conn::Budget {
    match conn::raise_fd_limit() {
        Ok((before, after)) if after > before => {
            tracing::info!(before, after, "raised the open-file limit to its hard limit");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("cannot raise the open-file limit: {e}"),
    }
    let limit = conn::fd_limit().unwrap_or(1024);
    let admin = config.admin.map(|_| config.admin_max_connections);
    let budget = conn::Budget::new(limit, config.server.max_connections, admin);
    tracing::info!(
        limit,
        event_connections = budget.event,
        admin_connections = budget.admin,
        kept_for_the_rest = budget.kept,
        "open-file limit shared: event connections, admin connections, the journal, plugins and the rest"
    );
    if budget.event < config.server.max_connections {
        tracing::warn!(
            "server.max_connections = {} does not fit the open-file limit {limit}: taking at most              {} event connections at once (raise the hard limit, LimitNOFILE= in the systemd unit)",
            config.server.max_connections,
            budget.event
        );
    }
    budget
}

impl Prepared {
    /// Accepts connections on `listener` until `shutdown` completes, then stops in order: no
    /// new connections, open requests finish, calls in flight finish, every plugin's `shutdown`
    /// runs, the journal is made durable. All of it within `server.shutdown_grace_ms`: a call
    /// or a `shutdown` still running then is abandoned (its event stays pending, nothing is
    /// marked done), and the returned [`Stopped`] names it so the caller exits the process.
    /// Undelivered events stay in the journal for the next start.
    pub async fn run(
        self,
        listener: TcpListener,
        admin: Option<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> Stopped {
        let Prepared {
            config,
            budget,
            journal,
            writer,
            supervisor,
            ingress,
            control,
            pollers,
            binder,
            rest,
            metrics,
            mut hangups,
        } = self;
        let reach = control::Reach {
            journal: journal.operator(),
            pollers: pollers.clone(),
            binder: binder.clone(),
            rest,
            supervisor: supervisor.clone(),
        };
        let control = tokio::spawn(control::serve(control, reach));
        let console = crate::console::Console::new(
            config.admin_token.clone(),
            metrics.admin_auth_failures.clone(),
        );
        let ops = Ops {
            verifier: ingress.verifier.clone(),
            supervisor: supervisor.clone(),
            journal: journal.operator(),
            metrics,
            config_path: config.source.clone(),
            pollers: pollers.clone(),
            binder: binder.clone(),
        };
        let admin = admin.map(|listener| {
            let limits = crate::ops::Limits {
                connections: Limiter::new(budget.admin, budget.admin_refusals),
                header_read_timeout: config.server.header_read_timeout,
                request_read_timeout: config.server.request_read_timeout,
            };
            tokio::spawn(crate::ops::serve(ops.clone(), console, listener, limits))
        });
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(config.server.header_read_timeout);
        let drain = Drain::new();
        let limiter = Limiter::new(budget.event, budget.event_refusals);
        let per_address = config.server.max_connections_per_address.map(conn::PerAddress::new);
        let read_limit = config.server.request_read_timeout;
        let mut listener = conn::Acceptor::new(listener, "event");
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                (stream, peer) = listener.accept() => {
                    // Per address first: a client past its own cap takes no slot of the others.
                    let from_address = match &per_address {
                        Some(cap) => match cap.try_acquire(peer.ip()) {
                            Some(slot) => Some(slot),
                            None => {
                                tracing::debug!(%peer, "server.max_connections_per_address reached: 503");
                                limiter.reject(stream, conn::BUSY_ADDRESS);
                                continue;
                            }
                        },
                        None => None,
                    };
                    let Some(slot) = limiter.try_acquire() else {
                        tracing::debug!("server.max_connections reached: 503");
                        limiter.reject(stream, conn::BUSY);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let ingress = ingress.clone();
                    let started = Arc::new(Started::default());
                    let begun = started.clone();
                    let service = service_fn(move |request| {
                        begun.begin();
                        ingress.clone().handle(request)
                    });
                    let io = TokioIo::new(DeadlineIo::new(stream, read_limit));
                    let connection = drain.watch(http.serve_connection(io, service), started);
                    tokio::spawn(async move {
                        if let Err(e) = connection.await {
                            tracing::debug!("connection closed with an error: {e}");
                        }
                        drop((slot, from_address));
                    });
                }
                () = &mut shutdown => break,
                () = hangup(&mut hangups) => {
                    tracing::info!("SIGHUP: reloading host.toml and the plugins");
                    // Apart from this loop: connections are accepted during a reload, and a
                    // plugin whose creation hangs does not keep SIGTERM from stopping the host.
                    let ops = ops.clone();
                    tokio::spawn(async move {
                        let (status, _) = ops.reload().await;
                        tracing::info!(status = status.as_u16(), "reload finished");
                    });
                }
            }
        }

        activation::stopping();
        tracing::info!("shutting down: no new connections");
        drop(listener);
        // One deadline for every step: the service manager (TimeoutStopSec) and the operator
        // can count on it whatever a plugin does.
        let deadline = tokio::time::Instant::now() + config.server.shutdown_grace;
        if tokio::time::timeout_at(deadline, drain.stop()).await.is_err() {
            tracing::warn!("requests still open at the end of the grace period; closing them");
        }
        drop(ingress);
        if let Some(admin) = admin {
            admin.abort();
        }
        binder.stop().await;
        pollers.stop().await;
        journal.log().close();
        let mut abandoned = supervisor.finish(deadline).await;
        drop(ops);
        drop(supervisor);
        control.abort();
        let _ = control.await;
        // Durable before anything else may go wrong: every outcome reported so far.
        journal.log().flush().await;
        journal.log().finish().await;
        drop(journal);
        // The writer ends once the last handle is gone, after a final durable commit. An
        // abandoned plugin thread may hold a handle for ever: then the flush above is the end.
        let join = tokio::task::spawn_blocking(move || writer.join());
        let leftover = if abandoned.is_empty() { Duration::from_secs(1) } else { Duration::ZERO };
        if tokio::time::timeout_at(deadline.max(tokio::time::Instant::now() + leftover), join)
            .await
            .is_err()
        {
            abandoned.push("the journal writer (held by an abandoned plugin)".into());
        }
        let _ = std::fs::remove_file(control::socket_path(&config.state_dir));
        if abandoned.is_empty() {
            tracing::info!("stopped");
        } else {
            tracing::warn!(abandoned = ?abandoned, "stopped; the journal is durable, leaving the rest behind");
        }
        Stopped { abandoned }
    }
}

/// Resolves on the next SIGHUP (never, if the signal cannot be watched).
async fn hangup(signals: &mut Option<tokio::signal::unix::Signal>) {
    match signals {
        Some(s) => {
            s.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
