//! `b24-host offline ...`: binds offline events on a portal and shows the pollers, through the
//! running host's control socket (as the `journal` commands reach it).

use std::process::ExitCode;

use crate::{cli::OfflineCommand, config::Config, control::AdminRequest as Request};

/// Runs `command` against `config`'s host and prints the answer.
pub fn run(config: &Config, command: OfflineCommand, json: bool) -> anyhow::Result<ExitCode> {
    let request = match command {
        OfflineCommand::Bind { portal, events } => Request::OfflineBind { portal, events },
        OfflineCommand::Status => Request::OfflineStatus,
    };
    super::journal::run(config, request, json)
}
