//! Log set-up: tracing to stderr, pretty or JSON, level from `RUST_LOG` or the config.

use std::io::IsTerminal;

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Installs the global subscriber, writing to stderr. `RUST_LOG`, when set, wins over `level`.
pub fn init(level: &str, format: LogFormat) {
    init_with(level, format, std::io::stderr, std::io::stderr().is_terminal());
}

/// Like [`init`], but writes to `output` (for `serve`: the original stderr kept by
/// [`crate::plugin_output::capture`], since descriptor 2 then carries the plugins' output).
pub fn init_to(level: &str, format: LogFormat, output: &'static std::fs::File) {
    init_with(level, format, move || output, output.is_terminal());
}

fn init_with<W>(level: &str, format: LogFormat, writer: W, ansi: bool)
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let result = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    // A subscriber already set (tests calling in twice) is fine.
    let _ = result;
}
