//! [`ConfigError`] and what builds one: [`Position`] (file offsets to line and column), the
//! [`Source`] being read (spans of keys), and the TOML key-path helpers. Shared by `load.rs`
//! (syntax and shape errors) and `validate.rs` (checks after deserializing), which therefore no
//! longer import each other.

use std::{
    fmt, io,
    ops::Range,
    path::{Path, PathBuf},
};

use toml::de::DeTable;

/// A place in the file, both 1-based; the column counts characters, not bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Position {
    /// The line, from 1.
    pub line: usize,
    /// The column, from 1, in characters.
    pub column: usize,
}

impl Position {
    /// The position of byte `offset` of `text` (clamped into the text).
    pub fn of_offset(text: &str, offset: usize) -> Position {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or_else(
            // A byte-order mark is not a column.
            || if before.starts_with('\u{feff}') { '\u{feff}'.len_utf8() } else { 0 },
            |i| i + 1,
        );
        Position {
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

/// Why `host.toml` could not be used. `Display` gives one line,
/// `file:line:column: key.path: what is wrong`, and never contains a token.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, a folder, not UTF-8, ...).
    #[error("{}: cannot read: {error}", file.display())]
    Read {
        /// The file as given.
        file: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The text is not valid TOML.
    #[error("{}: {message}", at(file, *position))]
    Syntax {
        /// The file as given.
        file: PathBuf,
        /// Where the parser stopped, when it knows.
        position: Option<Position>,
        /// What the parser expected.
        message: String,
    },
    /// Valid TOML, but not a valid configuration: an unknown key, a value of the wrong type, a
    /// value out of range, a missing environment variable, ...
    #[error("{}: {}{message}", at(file, *position), key_prefix(key))]
    Invalid {
        /// The file as given.
        file: PathBuf,
        /// Where the offending key or value is.
        position: Option<Position>,
        /// The full key path, such as `plugin.audit-log.retry.attempts`; empty for the root.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl ConfigError {
    /// The file the error is about, as given.
    pub fn file(&self) -> &Path {
        match self {
            ConfigError::Read { file, .. }
            | ConfigError::Syntax { file, .. }
            | ConfigError::Invalid { file, .. } => file,
        }
    }

    /// Where in the file, when known.
    pub fn position(&self) -> Option<Position> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Syntax { position, .. } | ConfigError::Invalid { position, .. } => {
                *position
            }
        }
    }

    /// The full key path of an [`Invalid`](ConfigError::Invalid) error.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// `file` or `file:line:column`.
fn at(file: &Path, position: Option<Position>) -> String {
    match position {
        Some(p) => format!("{}:{p}", file.display()),
        None => file.display().to_string(),
    }
}

/// `key: `, or nothing for the root.
fn key_prefix(key: &str) -> String {
    if key.is_empty() { String::new() } else { format!("{key}: ") }
}

/// The text being read, for turning spans into positions and building errors.
pub(crate) struct Source<'a> {
    /// The file as given, for messages.
    pub file: &'a Path,
    /// Its contents.
    pub text: &'a str,
    /// The parsed document, kept for the spans of keys (serde sees keys as plain strings, so
    /// that `serde_path_to_error` can name them).
    pub tree: &'a DeTable<'a>,
}

impl Source<'_> {
    /// The span of the key at `path` (unquoted parts, from the root), if it is in the file.
    fn key_span(&self, path: &[&str]) -> Option<Range<usize>> {
        let mut table = self.tree;
        let mut span = None;
        for (i, part) in path.iter().enumerate() {
            let (key, value) = table.iter().find(|(key, _)| key.get_ref().as_ref() == *part)?;
            span = Some(key.span());
            if i + 1 < path.len() {
                table = value.get_ref().as_table()?;
            }
        }
        span
    }

    /// Where the key at `path` is in the file, if it is there.
    pub fn key_position(&self, path: &[&str]) -> Option<Position> {
        self.position(self.key_span(path))
    }

    /// An [`ConfigError::Invalid`] at the key `path`, or at `fallback` when the key is not found.
    pub fn invalid_key(
        &self,
        path: &[&str],
        fallback: Range<usize>,
        message: impl Into<String>,
    ) -> ConfigError {
        let span = self.key_span(path).unwrap_or(fallback);
        self.invalid(span, join_keys(path.iter().copied()), message)
    }

    /// An [`ConfigError::Invalid`] at the start of `span`.
    pub fn invalid(
        &self,
        span: Range<usize>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            position: Some(Position::of_offset(self.text, span.start)),
            key: key.into(),
            message: message.into(),
        }
    }

    pub(crate) fn position(&self, span: Option<Range<usize>>) -> Option<Position> {
        span.map(|s| Position::of_offset(self.text, s.start))
    }
}

/// Whether `key` can be written bare in TOML (`A-Za-z0-9_-`).
fn is_bare_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `key` as written in a TOML key path: bare if it can be, else a quoted basic string.
pub(crate) fn toml_key(key: &str) -> String {
    if is_bare_key(key) {
        return key.to_owned();
    }
    let mut out = String::with_capacity(key.len() + 2);
    out.push('"');
    for c in key.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Joins key path parts (already unquoted) into `a.b."c d"`.
pub(crate) fn join_keys<'a>(parts: impl IntoIterator<Item = &'a str>) -> String {
    parts.into_iter().map(toml_key).collect::<Vec<_>>().join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_count_lines_and_characters() {
        let text = "a = 1\nbé = 2\n";
        assert_eq!(Position::of_offset(text, 0), Position { line: 1, column: 1 });
        assert_eq!(Position::of_offset(text, 6), Position { line: 2, column: 1 });
        // After the two-byte 'é': column 3.
        assert_eq!(Position::of_offset(text, 9), Position { line: 2, column: 3 });
        // Inside 'é' is clamped back to its start; past the end is clamped to the end.
        assert_eq!(Position::of_offset(text, 8), Position { line: 2, column: 2 });
        assert_eq!(Position::of_offset(text, 999), Position { line: 3, column: 1 });
        assert_eq!(Position::of_offset("", 5), Position { line: 1, column: 1 });
        assert_eq!(Position::of_offset("\u{feff}ab", 4), Position { line: 1, column: 2 });
    }

    #[test]
    fn keys_are_quoted_only_when_needed() {
        assert_eq!(toml_key("audit-log"), "audit-log");
        assert_eq!(toml_key("0b5e1c..."), r#""0b5e1c...""#);
        assert_eq!(toml_key(""), r#""""#);
        assert_eq!(toml_key("a\"b\\c\u{1}"), r#""a\"b\\c\u0001""#);
        assert_eq!(
            join_keys(["plugin", "my plugin", "timeout_ms"]),
            r#"plugin."my plugin".timeout_ms"#
        );
    }
}
