//! `b24-host plugin resume NAME`: resumes a paused plugin, whether an operator paused it or it
//! paused itself (`pause_after_failures`); reached as `plugin pause` reaches the journal.

use std::process::ExitCode;

use crate::{cli::PauseArgs, control::AdminRequest};

/// Runs `plugin resume`. Any name is taken (a plugin disabled while paused can be resumed);
/// one that is not paused is said so.
pub fn run(args: &PauseArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.clone())?;
    super::plugin_pause::change(
        &config,
        AdminRequest::Resume { plugin: args.name.clone() },
        args.json,
    )
}
