//! Log set-up: tracing to stderr, pretty or JSON, level from `RUST_LOG` or the config.
//!
//! Request fields reach log lines before anyone is authenticated (a `member_id`, a domain), so
//! no field or message is written raw: control characters (newline, ESC, ...) are escaped in
//! the pretty format by [`escaping_fields`], and JSON escapes them by itself. One request
//! cannot forge a log line or send terminal escapes.

use std::{fmt::Write as _, io::IsTerminal};

use tracing::field::{Field, Visit};
use tracing_subscriber::{
    EnvFilter,
    field::{MakeExt, MakeVisitor, VisitFmt, VisitOutput},
    fmt::{self, format::Writer},
};

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
    let builder = fmt::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    let result = match format {
        LogFormat::Pretty => builder.fmt_fields(escaping_fields()).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).try_init(),
    };
    // A subscriber already set (tests calling in twice) is fine.
    let _ = result;
}

/// The pretty format's field formatter: `message name=value ...`, every value with its
/// control characters escaped.
pub fn escaping_fields() -> impl for<'w> tracing_subscriber::fmt::FormatFields<'w> + Send + Sync {
    EscapingFields.delimited(" ")
}

/// Makes an [`EscapingVisitor`] per line.
#[derive(Clone, Copy, Default)]
pub struct EscapingFields;

impl<'w> MakeVisitor<Writer<'w>> for EscapingFields {
    type Visitor = EscapingVisitor<'w>;

    fn make_visitor(&self, target: Writer<'w>) -> Self::Visitor {
        EscapingVisitor { writer: target, result: Ok(()) }
    }
}

/// Writes each field as `name=value` (the message bare), escaped.
pub struct EscapingVisitor<'w> {
    writer: Writer<'w>,
    result: std::fmt::Result,
}

impl EscapingVisitor<'_> {
    fn write(&mut self, field: &Field, text: &str) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return; // the `log` crate's metadata, shown elsewhere
        }
        let mut line = String::with_capacity(text.len() + name.len() + 1);
        if name != "message" {
            line.push_str(name.strip_prefix("r#").unwrap_or(name));
            line.push('=');
        }
        escape_into(&mut line, text);
        self.result = self.writer.write_str(&line);
    }
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        // Strings as the default formatter shows them: quoted (Debug), then escaped.
        self.write(field, &format!("{value:?}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.write(field, &format!("{value:?}"));
    }
}

impl VisitOutput<std::fmt::Result> for EscapingVisitor<'_> {
    fn finish(self) -> std::fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapingVisitor<'_> {
    fn writer(&mut self) -> &mut dyn std::fmt::Write {
        &mut self.writer
    }
}

/// Appends `text` to `out` with every control character escaped (`\n`, `\r`, `\t`, `\x1b`,
/// `\u{85}`, ...), so the text stays on one line and carries no terminal escapes.
pub fn escape_into(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || matches!(c, '\u{2028}' | '\u{2029}') => {
                if (c as u32) < 0x100 {
                    let _ = write!(out, "\\x{:02x}", c as u32);
                } else {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
            }
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn control_characters_never_reach_the_pretty_log_raw() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .fmt_fields(escaping_fields())
            .finish();
        let forged = "evil\n2026-01-01T00:00:00Z  INFO b24_host: event accepted\x1b[2J";
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(member_id = %forged, domain = forged, "refused {forged}");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains(r"member_id=evil\n2026-01-01T00:00:00Z  INFO"), "{text}");
        assert!(text.contains(r#"domain="evil\n2026"#), "{text}");
        assert!(text.contains(r"refused evil\n2026") && text.contains(r"\x1b[2J"), "{text}");
    }

    #[test]
    fn the_json_format_escapes_them_too() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(member_id = %"a\nb\x1b[2J", "refused {}", "c\nd");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(!text.contains('\x1b'), "{text}");
        assert!(text.contains(r#""member_id":"a\nb\u001b[2J""#), "{text}");
    }

    #[test]
    fn escaping_keeps_printable_text() {
        let mut out = String::new();
        escape_into(&mut out, "Сделка 1\t\r\u{85}\u{2028}ok");
        assert_eq!(out, r"Сделка 1\t\r\x85\u{2028}ok");
    }
}
