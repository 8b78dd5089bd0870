//! The `b24-host` binary: parses the command line, sets up logging and reports errors with
//! their context. Everything else lives in the library.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use b24_host::{
    activation,
    cli::{Cli, Command, JournalCommand, LogFormatArg, OfflineCommand},
    config::{Config, LogFormat},
    control::AdminRequest as Request,
    journal::Selection,
    logging, plugin_output, send, server,
};
use clap::Parser;

/// mimalloc: the request path allocates many small, short-lived buffers; glibc's malloc spent
/// about 8% of the host's CPU on them under load.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// mimalloc settings that must be in place before the first allocation (see
/// `allocator::tune_allocator`); Linux runs them as an ELF constructor.
#[cfg(target_os = "linux")]
mod allocator {
    /// mimalloc's option numbers (v3 `mi_option_e`), for [`tune_allocator`].
    const MI_OPTION_ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

    /// Keeps the resident set close to what is in use: commit arena memory as it is used rather
    /// than up front, and return freed pages to the OS at once rather than after a delay. Measured
    /// under `bench/load.sh` point (4): peak RSS 67 -> 47 MiB, throughput unchanged. The options
    /// must be set before the first allocation creates an arena, so this runs as an ELF
    /// constructor ahead of the default-priority ones (mimalloc's own and Rust's start-up).
    /// Environment variables (`MIMALLOC_*`) still win for anyone tuning by hand.
    extern "C" fn tune_allocator() {
        for (option, value, env) in [
            (MI_OPTION_ARENA_EAGER_COMMIT, 0, c"MIMALLOC_ARENA_EAGER_COMMIT"),
            (MI_OPTION_PURGE_DELAY, 0, c"MIMALLOC_PURGE_DELAY"),
        ] {
            // SAFETY: `getenv` with a NUL-terminated name, and a process-wide allocator option
            // set while the process is still single-threaded (constructors run before `main`).
            unsafe {
                if libc_getenv(env.as_ptr()).is_null() {
                    libmimalloc_sys::mi_option_set(option, value);
                }
            }
        }
    }

    unsafe extern "C" {
        #[link_name = "getenv"]
        fn libc_getenv(name: *const std::ffi::c_char) -> *const std::ffi::c_char;
    }

    #[used]
    #[unsafe(link_section = ".init_array.00101")]
    static TUNE_ALLOCATOR: extern "C" fn() = tune_allocator;
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("b24-host: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The config named on the command line, else `host.toml` here if present, else the defaults.
fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(&path)?),
        None if Path::new("host.toml").exists() => Ok(Config::load(Path::new("host.toml"))?),
        None => {
            let here = std::env::current_dir().context("cannot read the current folder")?;
            Ok(Config::default_for(&here))
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, listen, admin_listen, log_format } => {
            // SAFETY: nothing has started a thread yet (the output capture, the log and the
            // runtime come below), so changing the environment races with nothing.
            let inherited = unsafe { activation::take_listeners() }?;
            let mut config = load_config(config)?;
            if let Some(listen) = listen {
                config.server.listen = listen;
            }
            if let Some(admin) = admin_listen {
                config.admin = Some(admin);
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
            let runtime = runtime()?;
            let served = runtime.block_on(async move {
                // Watches SIGHUP too: both before the host says it is ready.
                let prepared = server::prepare(config.clone())?;
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
        Command::Runner { .. } => Ok(b24_host::runner::child::main()),
        Command::Check { config } => {
            let config = load_config(config)?;
            Ok(b24_host::check::run(&config))
        }
        Command::Journal { config, json, command } => {
            let config = load_config(config)?;
            let request = match command {
                JournalCommand::Verify => {
                    let report = b24_host::journal::verify(&config.state_dir, &config.journal)?;
                    return print_repair(&report, json);
                }
                JournalCommand::Salvage { to } => {
                    let report =
                        b24_host::journal::salvage(&config.state_dir, &config.journal, &to)?;
                    return print_repair(&report, json);
                }
                JournalCommand::Stats => Request::Stats { enabled: config.plugins.enabled.clone() },
                JournalCommand::List { limit } => Request::List { limit },
                JournalCommand::Show { id } => Request::Show { id },
                JournalCommand::Dead { plugin } => Request::Dead { plugin },
                JournalCommand::Replay { plugin, ids } => {
                    Request::Replay(Selection { plugin, ids })
                }
                JournalCommand::Purge { plugin, ids } => Request::Purge(Selection { plugin, ids }),
                JournalCommand::Skip { plugin, ids } => Request::Skip { plugin, ids },
            };
            b24_host::journal_cmd::run(&config, request, json)
        }
        Command::Offline { config, json, command } => {
            let config = load_config(config)?;
            let request = match command {
                OfflineCommand::Bind { portal, events } => Request::OfflineBind { portal, events },
                OfflineCommand::Status => Request::OfflineStatus,
            };
            b24_host::journal_cmd::run(&config, request, json)
        }
        Command::Reload { config, admin } => {
            let url = match admin {
                Some(url) => url,
                None => {
                    let config = load_config(config)?;
                    let addr =
                        config.admin.context("admin.enabled is false: use SIGHUP to reload")?;
                    format!("http://{addr}/")
                }
            };
            let url = format!("{}/reload", url.trim_end_matches('/'));
            let (status, text) =
                runtime()?.block_on(send::post(&url, String::new(), "application/json"))?;
            println!("{text}");
            Ok(if status == 200 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        Command::Send(args) => {
            let (body, content_type) = send::body(&args);
            if args.print {
                println!("{body}");
                return Ok(ExitCode::SUCCESS);
            }
            let (status, text) = runtime()?.block_on(send::post(&args.url, body, content_type))?;
            println!("{status} {text}");
            Ok(if (200..300).contains(&status) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
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

/// Prints a `journal verify`/`salvage` report; fails when it found problems.
fn print_repair(
    report: &b24_host::journal::admin::RepairReport,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(if report.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
