//! The command line: clap definitions of the commands (their bodies live in `cmd/`).

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// b24-host: receives Bitrix24 events, verifies them, and hands them to plugins.
#[derive(Debug, Parser)]
#[command(name = "b24-host", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// The sub-commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the host: receive events and deliver them to the enabled plugins.
    Serve {
        /// The config file. Without it, `host.toml` in the current folder if present, else the
        /// embedded defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen on this address instead of `server.listen` (e.g. 127.0.0.1:0 for any port).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Admin listener address instead of `admin.listen`.
        #[arg(long)]
        admin_listen: Option<std::net::SocketAddr>,
        /// Log format; overrides `log.format`.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Validate the config and load every enabled plugin; print what each subscribes to.
    Check {
        /// The config file (default as for `serve`).
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Post one realistic event, encoded exactly as Bitrix24 encodes it, and print the answer.
    Send(Box<SendArgs>),
    /// Re-read host.toml and the plugins folder in the running host (through its admin
    /// listener); exits non-zero when a plugin failed to reload.
    Reload {
        /// The config file (default as for `serve`); names the admin address.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// The admin listener's URL instead, e.g. http://127.0.0.1:8025/.
        #[arg(long)]
        admin: Option<String>,
    },
    /// Bind on each portal the events the plugins receive (`bind.handler`), or with `--check`
    /// only show what is needed, bound, missing and extra and whether the app's installation
    /// is finished; exits non-zero when something is missing (needs the running host).
    Bind {
        /// The config file (default as for `serve`); names the state folder.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only this portal (its member_id); default: every portal the host knows.
        #[arg(long)]
        portal: Option<String>,
        /// Change nothing: report only.
        #[arg(long)]
        check: bool,
        /// Print the answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Offline events: bind them on a portal, see the pollers (needs the running host).
    Offline {
        /// The config file (default as for `serve`); names the state folder.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Print the answer as JSON.
        #[arg(long, global = true)]
        json: bool,
        /// What to do.
        #[command(subcommand)]
        command: OfflineCommand,
    },
    /// Plugins: start a new one; pause or resume one.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Write the manual pages (roff), rendered from these definitions, so they say what
    /// `--help` says; for packaging.
    #[command(hide = true)]
    Man {
        /// Write one page per command (`b24-host.1`, `b24-host-serve.1`, ...) into this
        /// folder; without it, print the main page.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The runner process of one plugin in process isolation; started by `serve` only.
    #[command(hide = true)]
    Runner {
        /// The plugin it runs (for `ps`; the host says it again on the socket).
        #[arg(long)]
        plugin: Option<String>,
    },
    /// The shim an exec plugin's program runs under (its process group dies with the host);
    /// started by `serve` only.
    #[command(hide = true)]
    ExecShim {
        /// The plugin's command.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<std::ffi::OsString>,
    },
    /// Inspect and repair the journal (works on a stopped or a running host).
    Journal {
        /// The config file (default as for `serve`); names the state folder.
        #[arg(long, short, global = true)]
        config: Option<PathBuf>,
        /// Print the answer as JSON.
        #[arg(long, global = true)]
        json: bool,
        /// What to do.
        #[command(subcommand)]
        command: JournalCommand,
    },
}

/// The `plugin` sub-commands.
#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Write a new plugin that builds and has a unit test, and print the host.toml lines that
    /// enable it.
    New(Box<NewPluginArgs>),
    /// Pause a plugin: it receives nothing and its events wait in the journal (pending, counted
    /// in its backlog) until `plugin resume`; the pause survives restarts and reloads. Works on
    /// a stopped or a running host; on the NATS backend every host honours it.
    Pause(Box<PauseArgs>),
    /// Resume a paused plugin (paused by an operator, or by itself after
    /// `pause_after_failures` failed calls in a row): its waiting events are delivered, in
    /// order.
    Resume(Box<PauseArgs>),
}

/// Options of `plugin pause` and `plugin resume`.
#[derive(Debug, Clone, clap::Args)]
pub struct PauseArgs {
    /// The plugin's name (as in `plugins.enabled`).
    pub name: String,
    /// The config file (default as for `serve`); names the state folder and the journal.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// Print the answer as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Options of `plugin new`.
#[derive(Debug, Clone, clap::Args)]
pub struct NewPluginArgs {
    /// The plugin's name: lower-case ASCII letters, digits, '-' and '_', starting with a letter.
    /// It names the crate, the library file and the `[plugin.NAME]` table.
    pub name: String,
    /// The language.
    #[arg(long, value_enum, default_value_t = PluginLang::Rust)]
    pub lang: PluginLang,
    /// The folder to write, created if missing (it must be empty if it exists); default ./NAME.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Rust: take b24-plugin-api from this folder (the plugin-api folder of a b24-host checkout,
    /// or the checkout). Default: the checkout this b24-host was built from, if it is still
    /// there.
    #[arg(long, value_name = "PATH", conflicts_with = "api_git")]
    pub api_path: Option<PathBuf>,
    /// Rust: take b24-plugin-api from this git repository of b24-host instead (cargo fetches it).
    #[arg(long, value_name = "URL")]
    pub api_git: Option<String>,
    /// With --api-git: at this commit.
    #[arg(long, value_name = "REV", requires = "api_git", conflicts_with_all = ["api_tag", "api_branch"])]
    pub api_rev: Option<String>,
    /// With --api-git: at this tag (the release of your host).
    #[arg(long, value_name = "TAG", requires = "api_git", conflicts_with = "api_branch")]
    pub api_tag: Option<String>,
    /// With --api-git: on this branch.
    #[arg(long, value_name = "BRANCH", requires = "api_git")]
    pub api_branch: Option<String>,
}

/// The languages `plugin new` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PluginLang {
    /// A Rust cdylib crate against b24-plugin-api, loaded by the host.
    Rust,
    /// A PHP exec plugin (not yet: the host cannot run exec plugins yet).
    Php,
    /// A Python exec plugin (not yet).
    Python,
    /// A Node.js exec plugin (not yet).
    Node,
}

impl PluginLang {
    /// The value `--lang` takes.
    pub fn name(self) -> &'static str {
        match self {
            PluginLang::Rust => "rust",
            PluginLang::Php => "php",
            PluginLang::Python => "python",
            PluginLang::Node => "node",
        }
    }

    /// The language's name in prose.
    pub fn title(self) -> &'static str {
        match self {
            PluginLang::Rust => "Rust",
            PluginLang::Php => "PHP",
            PluginLang::Python => "Python",
            PluginLang::Node => "Node.js",
        }
    }
}

/// The `offline` sub-commands.
#[derive(Debug, Subcommand)]
pub enum OfflineCommand {
    /// Subscribe the portal's offline events (`event.bind` with `event_type=offline`).
    Bind {
        /// The portal's member_id.
        #[arg(long)]
        portal: String,
        /// Event codes, e.g. ONCRMDEALUSERFIELDUPDATE.
        #[arg(long = "event", required = true)]
        events: Vec<String>,
    },
    /// Per portal: mode, last poll, rows pulled, errors.
    Status,
}

/// The `journal` sub-commands.
#[derive(Debug, Subcommand)]
pub enum JournalCommand {
    /// Per plugin: backlog, retrying, dead letters, age of the oldest pending event.
    Stats,
    /// The newest events and who still has to process them.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// One event in detail, tokens redacted.
    Show {
        /// The event id.
        id: u64,
    },
    /// Dead letters.
    Dead {
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
    },
    /// Put dead letters back into delivery.
    Replay {
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
        /// Only dead letters given up at or after this time: RFC 3339 in UTC
        /// (`2026-12-01T21:00:00Z`, `2026-12-01T21:00`) or ms since the epoch.
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        /// Only these event ids (all dead letters when none).
        ids: Vec<u64>,
    },
    /// Delete dead letters for good.
    Purge {
        /// Only this plugin's.
        #[arg(long)]
        plugin: Option<String>,
        /// Only dead letters given up at or after this time: RFC 3339 in UTC
        /// (`2026-12-01T21:00:00Z`, `2026-12-01T21:00`) or ms since the epoch.
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        /// Only these event ids (all dead letters when none).
        ids: Vec<u64>,
    },
    /// Move pending events of one plugin to its dead letters ("skipped by an operator"), e.g.
    /// a poison event; `replay` brings them back.
    Skip {
        /// The plugin.
        #[arg(long)]
        plugin: String,
        /// The event ids.
        #[arg(required = true)]
        ids: Vec<u64>,
    },
    /// Check every record of a stopped host's journal (checksums, references); exits non-zero
    /// on any problem.
    Verify,
    /// Copy every readable event, pending row and dead letter of a stopped host's journal into
    /// a new journal file, and report what could not be read.
    Salvage {
        /// The new journal file (must not exist); put it in place of journal.redb to use it.
        #[arg(long)]
        to: PathBuf,
    },
}

/// Options of `send`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendArgs {
    /// Where to post.
    #[arg(long, default_value = "http://127.0.0.1:8024/")]
    pub url: String,
    /// Event code.
    #[arg(long, default_value = "ONCRMCONTACTUSERFIELDUPDATE")]
    pub event: String,
    /// `data[FIELDS][ID]` of a user-field event.
    #[arg(long, default_value_t = 554)]
    pub field_id: u64,
    /// `data[FIELDS][FIELD_NAME]` of a user-field event.
    #[arg(long, default_value = "UF_CRM_1724771514")]
    pub field_name: String,
    /// `data[FIELDS][ENTITY_ID]`; derived from the event code when left out.
    #[arg(long)]
    pub entity_id: Option<String>,
    /// `auth[member_id]`.
    #[arg(long, default_value = "a223c6b3710f85df22e9377d6c4f7553")]
    pub member_id: String,
    /// `auth[application_token]`; may come from the environment.
    #[arg(
        long,
        env = "B24_APPLICATION_TOKEN",
        default_value = "51856fefc120afa4b628cc82d3935cce",
        hide_env_values = true
    )]
    pub token: String,
    /// `auth[domain]`.
    #[arg(long, default_value = "some-domain.bitrix24.com")]
    pub domain: String,
    /// `event_handler_id`.
    #[arg(long, default_value_t = 15)]
    pub handler_id: u64,
    /// `auth[client_endpoint]` (default `https://<domain>/rest/`).
    #[arg(long)]
    pub client_endpoint: Option<String>,
    /// `auth[server_endpoint]` (default `https://oauth.bitrix.info/rest/`).
    #[arg(long)]
    pub server_endpoint: Option<String>,
    /// `auth[access_token]` of the acting user (a made-up one by default).
    #[arg(long)]
    pub access_token: Option<String>,
    /// `auth[refresh_token]`: for ONAPPINSTALL/ONAPPUPDATE (a made-up one by default), and for
    /// any other event when given (an `ONOFFLINEEVENT` or a bot event carries its user's).
    #[arg(long)]
    pub refresh_token: Option<String>,
    /// An event no user caused: no user tokens in `auth`.
    #[arg(long)]
    pub system: bool,
    /// Post JSON instead of a form body.
    #[arg(long)]
    pub json: bool,
    /// Print the body instead of posting it.
    #[arg(long)]
    pub print: bool,
}

/// `--since`: ms since the epoch, or a UTC time `YYYY-MM-DDTHH:MM[:SS[.fff]][Z]` (the
/// console's reading of a time, `console::when::parse`, so both accept the same).
pub fn parse_since(text: &str) -> Result<i64, String> {
    let text = text.trim();
    let text = text.strip_suffix('Z').or_else(|| text.strip_suffix("+00:00")).unwrap_or(text);
    crate::console::when::parse(text)
}

#[cfg(test)]
mod since_tests {
    use super::parse_since;

    #[test]
    fn since_reads_ms_and_utc_times_and_refuses_anything_else() {
        assert_eq!(parse_since("1764622800000"), Ok(1_764_622_800_000));
        assert_eq!(parse_since("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_since("2026-12-01T21:00:00Z"), Ok(1_796_158_800_000));
        assert_eq!(parse_since("2026-12-01T21:00"), Ok(1_796_158_800_000));
        assert_eq!(parse_since("2000-02-29T12:30:15.5Z"), Ok(951_827_415_500));
        for bad in ["", "yesterday", "2026-13-01T00:00Z", "2026-12-01", "2026-12-01T25:00Z"] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
    }
}
