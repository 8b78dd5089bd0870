//! `b24-host plugin pause NAME`: pauses a plugin (`journal::pause`) as the `journal` commands
//! reach the journal: the stopped host's journal opened here (the pause is stored, and the
//! host honours it when it starts), the running host's through its control socket (it stops
//! taking the plugin's events at once), the NATS log always here (every host watches it).

use std::process::ExitCode;

use crate::{
    cli::PauseArgs,
    control::{AdminRequest, AdminResponse},
};

/// Runs `plugin pause`.
pub fn run(args: &PauseArgs) -> anyhow::Result<ExitCode> {
    let config = super::load_config(args.config.clone())?;
    if !config.plugins.enabled.contains(&args.name) {
        anyhow::bail!(
            "no enabled plugin {:?} in {} (plugins.enabled: {})",
            args.name,
            config
                .source
                .as_ref()
                .map_or("the embedded defaults".into(), |p| p.display().to_string()),
            config.plugins.enabled.join(", ")
        );
    }
    let request = AdminRequest::Pause { plugin: args.name.clone(), via: "command line".into() };
    change(&config, request, args.json)
}

/// Sends `request` (a pause or a resume) and prints the answer; fails on an error.
pub(super) fn change(
    config: &crate::config::Config,
    request: AdminRequest,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let response = super::journal::ask(config, request)?;
    match response {
        AdminResponse::Paused(paused) if json => {
            println!("{}", serde_json::to_string_pretty(&paused)?);
            Ok(ExitCode::SUCCESS)
        }
        AdminResponse::Paused(paused) => {
            println!("{}", paused.message);
            if let Some(pause) = paused.paused.as_ref().filter(|_| paused.changed) {
                println!(
                    "{}; `b24-host plugin resume {}` resumes it",
                    pause.describe(),
                    paused.plugin
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AdminResponse::Error { message } => anyhow::bail!("{message}"),
        other => anyhow::bail!("unexpected answer: {other:?}"),
    }
}
