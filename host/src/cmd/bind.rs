//! `b24-host bind [--portal M] [--check]`: binds on each portal what its plugins receive (or,
//! with `--check`, only says what is needed, bound, missing and extra, and whether the app's
//! installation is finished), through the running host's control socket: the binder, the
//! tokens and the REST client live there. Exits non-zero when something is missing.

use std::process::ExitCode;

use crate::{config::Config, control::AdminRequest as Request};

/// Runs `bind` against `config`'s host and prints the answer.
pub fn run(
    config: &Config,
    portal: Option<String>,
    check: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    super::journal::run(config, Request::Bind { portal, check }, json)
}
