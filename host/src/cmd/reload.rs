//! `b24-host reload`: asks the running host to re-read host.toml and the plugins folder through
//! its admin listener, prints the report and fails when a plugin failed to reload.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

/// Posts to the admin listener's `/reload`: `admin` if given, else the one `config` names.
pub fn run(config: Option<PathBuf>, admin: Option<String>) -> anyhow::Result<ExitCode> {
    let url = match admin {
        Some(url) => url,
        None => {
            let config = super::load_config(config)?;
            let addr = config.admin.context("admin.enabled is false: use SIGHUP to reload")?;
            format!("http://{addr}/")
        }
    };
    let url = format!("{}/reload", url.trim_end_matches('/'));
    let (status, text) =
        super::runtime()?.block_on(super::send::post(&url, String::new(), "application/json"))?;
    println!("{text}");
    Ok(if status == 200 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
