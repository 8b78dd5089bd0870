//! `b24-host reload`: asks the running host to re-read host.toml and the plugins folder through
//! its admin listener, prints the report and fails when a plugin failed to reload.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;

/// Posts to the admin listener's `/reload`: `admin` if given, else the one `config` names.
/// The bearer token is `admin.token` of the config, or `$B24_ADMIN_TOKEN` with `--admin`.
pub fn run(config: Option<PathBuf>, admin: Option<String>) -> anyhow::Result<ExitCode> {
    let (url, token) = match admin {
        Some(url) => (url, std::env::var("B24_ADMIN_TOKEN").ok().filter(|t| !t.is_empty())),
        None => {
            let config = super::load_config(config)?;
            let addr = config.admin.context("admin.enabled is false: use SIGHUP to reload")?;
            (format!("http://{addr}/"), config.admin_token.map(|t| t.expose().to_owned()))
        }
    };
    let url = format!("{}/reload", url.trim_end_matches('/'));
    let (status, text) = super::runtime()?.block_on(super::send::post_with(
        &url,
        String::new(),
        "application/json",
        token.as_deref(),
    ))?;
    println!("{text}");
    Ok(if status == 200 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
