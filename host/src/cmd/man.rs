//! `b24-host man` (hidden): the manual pages, rendered by `clap_mangen` from the command line's
//! own definitions (`cli.rs`), so a page says what `--help` says. `scripts/package` writes them
//! into the Debian package; the main page adds where the packaged files live.

use std::{io::Write, path::Path, process::ExitCode};

use anyhow::Context;
use clap::CommandFactory;
use clap_mangen::Man;

use crate::cli::Cli;

/// The main page's sections beyond `--help`: the packaged files and where the rest is told.
const FILES: &str = r#".SH FILES
.TP
\fI/etc/b24\-host/host.toml\fR
The configuration of the packaged service (a conffile); every key is documented in it.
.TP
\fI/var/lib/b24\-host\fR
The state folder (\fBstate_dir\fR): the journal, the plugins' copies, the control socket.
Owned by the system user \fBb24\-host\fR; removed only when the package is purged.
.TP
\fI/usr/lib/b24\-host/plugins\fR
The shipped plugins, \fBaudit\-log\fR and \fBfield\-registry\fR (\fBplugins.dir\fR).
.TP
\fIb24\-host.service\fR, \fIb24\-host.socket\fR
The systemd units: the socket holds the event listener open across restarts;
\fBsystemctl reload b24\-host\fR re\-reads the configuration and the plugins.
.SH SEE ALSO
\fI/usr/share/doc/b24\-host/README.md\fR: what the host answers, configuration, operation,
offline events, writing a plugin.
"#;

/// Writes every page into `dir`, or the main page to stdout.
pub fn run(dir: Option<&Path>) -> anyhow::Result<ExitCode> {
    let mut command = Cli::command().disable_help_subcommand(true);
    command.build();
    match dir {
        None => {
            let mut out = std::io::stdout().lock();
            main_page(&command, &mut out).context("cannot write the manual page")?;
        }
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let path = dir.join("b24-host.1");
            let mut file = std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            main_page(&command, &mut file)
                .with_context(|| format!("cannot write {}", path.display()))?;
            for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
                sub_pages(sub, dir)?;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The page of `b24-host` itself: clap's sections, then [`FILES`], then the version.
fn main_page(command: &clap::Command, out: &mut dyn Write) -> std::io::Result<()> {
    let man = Man::new(command.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_options_section(out)?;
    man.render_subcommands_section(out)?;
    out.write_all(FILES.as_bytes())?;
    man.render_version_section(out)
}

/// One page for `command` (`b24-host-journal-replay.1`) and each of its visible subcommands.
fn sub_pages(command: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub, dir)?;
    }
    Man::new(command.clone())
        .generate_to(dir)
        .with_context(|| format!("cannot write the page of {} into {}", command, dir.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every visible command and every long option, as `--help` lists them.
    fn commands_and_flags(command: &clap::Command, path: &str, out: &mut Vec<(String, String)>) {
        for arg in command.get_arguments().filter(|a| !a.is_hide_set()) {
            if let Some(long) = arg.get_long().filter(|l| !matches!(*l, "help" | "version")) {
                out.push((path.to_owned(), format!("--{long}")));
            }
        }
        for sub in command.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{path} {}", sub.get_name());
            out.push((name.clone(), String::new()));
            commands_and_flags(sub, &name, out);
        }
    }

    /// The README's "Commands" section, where every command is described.
    fn readme_commands() -> String {
        let readme = include_str!("../../../README.md");
        let start = readme.find("\n## Commands\n").expect("README has a Commands section");
        let rest = &readme[start + 1..];
        let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
        rest[..end].to_owned()
    }

    #[test]
    fn the_pages_and_the_readme_name_every_command_and_option_of_help() {
        let dir = tempfile::tempdir().unwrap();
        run(Some(dir.path())).unwrap();
        let mut command = Cli::command().disable_help_subcommand(true);
        command.build();
        let mut wanted = Vec::new();
        commands_and_flags(&command, "b24-host", &mut wanted);
        let readme = readme_commands();
        let mut missing = Vec::new();
        for (path, flag) in &wanted {
            let page = dir.path().join(format!("{}.1", path.replace(' ', "-")));
            let Ok(text) = std::fs::read_to_string(&page) else {
                missing.push(format!("no page {}", page.display()));
                continue;
            };
            // roff writes `-` as `\-`.
            let text = text.replace("\\-", "-");
            if !flag.is_empty() && !text.contains(flag.as_str()) {
                missing.push(format!("{path} {flag}: not on its page"));
            }
            let last = path.rsplit(' ').next().unwrap_or_default();
            let named = if flag.is_empty() { last } else { flag.as_str() };
            if path != "b24-host" && !readme.contains(named) {
                missing.push(format!("{path} {flag}: not in README's Commands section"));
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
        let main = std::fs::read_to_string(dir.path().join("b24-host.1")).unwrap();
        assert!(main.contains(".SH FILES") && main.contains("/etc/b24\\-host/host.toml"), "{main}");
        assert!(!std::fs::exists(dir.path().join("b24-host-runner.1")).unwrap());
        assert!(!std::fs::exists(dir.path().join("b24-host-man.1")).unwrap());
    }
}
