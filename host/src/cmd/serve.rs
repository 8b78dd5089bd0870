//! `b24-host serve`: takes the listeners (from systemd or by binding), captures the plugins'
//! output, sets up logging and runs the host until SIGTERM or SIGINT.

use std::{io::Write, path::PathBuf, process::ExitCode};

use anyhow::Context;

use crate::{activation, cli::LogFormatArg, config::LogFormat, logging, plugin_output, server};

/// Runs the host with the config named (or found) and the command line's overrides.
pub fn run(
    config: Option<PathBuf>,
    listen: Option<std::net::SocketAddr>,
    admin_listen: Option<std::net::SocketAddr>,
    log_format: Option<LogFormatArg>,
) -> anyhow::Result<ExitCode> {
    // SAFETY: nothing has started a thread yet (the output capture, the log and the
    // runtime come below), so changing the environment races with nothing.
    let inherited = unsafe { activation::take_listeners() }?;
    let mut config = super::load_config(config)?;
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    if let Some(admin) = admin_listen {
        config.admin = Some(admin);
    }
    // `--admin-listen` is held to the rule host.toml's `admin.listen` is held to.
    if let Some(addr) = config.admin.filter(|a| !a.ip().is_loopback())
        && config.admin_token.is_none()
    {
        anyhow::bail!("--admin-listen: {}", crate::config::non_loopback_without_token(addr));
    }
    let format = match log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Pretty) => LogFormat::Pretty,
        None => config.log.format,
    };
    // Plugins print to descriptors 1 and 2: those become log lines, and the host keeps
    // the original streams for its own line on stdout and for the log.
    let output = plugin_output::capture().context("cannot capture the plugins' output")?;
    logging::init_to(&config.log.level, format, output.stderr());
    let host_stdout = output.stdout();
    let runtime = super::runtime()?;
    let served = runtime.block_on(async move {
        // Watches SIGHUP too: both before the host says it is ready.
        let prepared = server::prepare(config.clone()).await?;
        let shutdown = shutdown_signal();
        let listener = match inherited.events {
            Some(socket) => {
                let listener = tokio::net::TcpListener::from_std(socket)
                    .context("cannot use the socket passed by the service manager")?;
                tracing::info!(
                    addr = %listener.local_addr().context("cannot read the passed socket's address")?,
                    "serving on the socket passed by the service manager (server.listen is not used)"
                );
                listener
            }
            None => tokio::net::TcpListener::bind(config.server.listen)
                .await
                .with_context(|| format!("cannot listen on {}", config.server.listen))?,
        };
        let local = listener.local_addr().context("cannot read the bound address")?;
        let admin = match (config.admin, inherited.admin) {
            (Some(_), Some(socket)) => Some(
                tokio::net::TcpListener::from_std(socket)
                    .context("cannot use the admin socket passed by the service manager")?,
            ),
            (None, Some(_)) => {
                tracing::warn!("a socket named `admin` was passed, but the admin listener is off in host.toml; not serving it");
                None
            }
            (Some(addr), None) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (admin.listen)"))?,
            ),
            (None, None) => None,
        };
        if let Some(a) = &admin {
            let addr = a.local_addr().context("cannot read the admin address")?;
            if config.admin_token.is_none() && !addr.ip().is_loopback() {
                anyhow::bail!("admin.listen: {}", crate::config::non_loopback_without_token(addr));
            }
        }
        let admin_note = match &admin {
            Some(a) => format!(
                " admin http://{}/",
                a.local_addr().context("cannot read the admin address")?
            ),
            None => String::new(),
        };
        // One line on stdout that scripts and tests can wait for.
        let line =
            format!("b24-host: listening on http://{local}{}{admin_note}", config.server.path);
        writeln!(&mut &*host_stdout, "{line}").context("cannot write to stdout")?;
        activation::ready(line.trim_start_matches("b24-host: "));
        anyhow::Ok(prepared.run(listener, admin, shutdown).await)
    });
    // A plugin thread abandoned at the end of the grace period is not waited for.
    runtime.shutdown_background();
    // Restores stdout and stderr, so that an error below reaches the terminal.
    drop(output);
    let stopped = served?;
    if !stopped.abandoned.is_empty() {
        // The journal is durable; threads stuck in plugin code must not keep the
        // process alive (returning would wait for nothing else, but say it plainly).
        std::process::exit(0);
    }
    Ok(ExitCode::SUCCESS)
}

/// Watches SIGINT and SIGTERM from now on (so that a signal sent right after the `listening
/// on` line stops the host gracefully instead of killing it) and resolves on the first. Must be
/// called inside the runtime.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate()).ok();
    let int = signal(SignalKind::interrupt()).ok();
    async move {
        let wait = |s: Option<tokio::signal::unix::Signal>| async move {
            match s {
                Some(mut s) => {
                    s.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            () = wait(term) => {},
            () = wait(int) => {},
        }
    }
}
