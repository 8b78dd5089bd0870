//! The commands of the `b24-host` binary, one module each (as mini-redis keeps one file per
//! command): `main.rs` parses the command line and calls [`run`], which dispatches here. The
//! hidden `runner` command's body is the runner process itself, [`crate::runner::child::main`];
//! the hidden `man` command writes the manual pages for the Debian package.

pub mod bind;
pub mod check;
pub mod journal;
pub mod man;
pub mod offline;
pub mod plugin_new;
pub mod plugin_pause;
pub mod plugin_resume;
pub mod reload;
pub mod send;
pub mod serve;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;

use crate::{
    cli::{Cli, Command, PluginCommand},
    config::Config,
};

/// The multi-threaded runtime a command's async part runs on.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// The config named on the command line, else `host.toml` here if present, else the defaults.
pub fn load_config(path: Option<PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(&path)?),
        None if Path::new("host.toml").exists() => Ok(Config::load(Path::new("host.toml"))?),
        None => {
            let here = std::env::current_dir().context("cannot read the current folder")?;
            Ok(Config::default_for(&here))
        }
    }
}

/// Runs the command `cli` names.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { config, listen, admin_listen, log_format } => {
            serve::run(config, listen, admin_listen, log_format)
        }
        Command::Runner { .. } => Ok(crate::runner::child::main()),
        Command::ExecShim { command } => Ok(crate::runner::shim::main(command)),
        Command::Check { config } => Ok(check::run(&load_config(config)?)),
        Command::Journal { config, json, command } => {
            journal::command(&load_config(config)?, command, json)
        }
        Command::Offline { config, json, command } => {
            offline::run(&load_config(config)?, command, json)
        }
        Command::Bind { config, portal, check, json } => {
            bind::run(&load_config(config)?, portal, check, json)
        }
        Command::Reload { config, admin } => reload::run(config, admin),
        Command::Send(args) => send::run(&args),
        Command::Plugin { command: PluginCommand::New(args) } => plugin_new::run(&args),
        Command::Plugin { command: PluginCommand::Pause(args) } => plugin_pause::run(&args),
        Command::Plugin { command: PluginCommand::Resume(args) } => plugin_resume::run(&args),
        Command::Man { dir } => man::run(dir.as_deref()),
    }
}
