//! Reading `host.toml`: file → text → TOML → [`RawConfig`] → [`Config`], and [`ConfigError`],
//! whose every message names the file, the line and column, and the full key path.
//!
//! Syntax errors and type/unknown-key errors come from `toml` (with its byte span) through
//! `serde_path_to_error` (for the key path); the checks after deserializing (`validate.rs`) use
//! the spans kept by [`toml::Spanned`]. Messages never contain a token.

use std::{
    env::VarError,
    fmt, fs, io,
    ops::Range,
    path::{Path, PathBuf},
};

use serde_path_to_error::Segment;
use toml::de::{DeTable, DeValue};

use super::{Config, raw::RawConfig, validate};

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

    fn position(&self, span: Option<Range<usize>>) -> Option<Position> {
        span.map(|s| Position::of_offset(self.text, s.start))
    }
}

/// Reads and checks the file at `path`.
pub(crate) fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = fs::read_to_string(path)
        .map_err(|error| ConfigError::Read { file: path.to_path_buf(), error })?;
    parse(&text, path, &|name| std::env::var(name))
}

/// Parses and checks `text` as the contents of `path`, reading environment variables through
/// `env`.
pub(crate) fn parse(
    text: &str,
    path: &Path,
    env: &dyn Fn(&str) -> Result<String, VarError>,
) -> Result<Config, ConfigError> {
    let syntax = |e: toml::de::Error| ConfigError::Syntax {
        file: path.to_path_buf(),
        position: e.span().map(|s| Position::of_offset(text, s.start)),
        message: e.message().trim_end().to_owned(),
    };
    let document = DeTable::parse(text).map_err(syntax)?;
    let tree = document.get_ref().clone();
    let source = Source { file: path, text, tree: &tree };
    let raw: RawConfig = serde_path_to_error::deserialize(toml::de::Deserializer::from(document))
        .map_err(|e| shape_error(&e, &source))?;
    validate::build(raw, &source, &base_dir_of(path), env)
}

/// An [`ConfigError::Invalid`] from serde: an unknown key, a wrong type, a missing key.
fn shape_error(
    e: &serde_path_to_error::Error<toml::de::Error>,
    source: &Source<'_>,
) -> ConfigError {
    let parts = path_parts(e.path());
    let last_key = match parts.last() {
        Some(Part::Key(key)) => Some(key.as_str()),
        _ => None,
    };
    let datetime = value_at(source.tree, &parts).is_some_and(DeValue::is_datetime);
    ConfigError::Invalid {
        file: source.file.to_path_buf(),
        position: source.position(e.inner().span()),
        key: format_parts(&parts),
        message: rewrite_message(e.inner().message().trim_end(), last_key, datetime),
    }
}

/// The folder of `path`, made absolute without touching the file system (`.` for a bare file
/// name). Stays relative only if the current directory is unknown.
pub(crate) fn base_dir_of(path: &Path) -> PathBuf {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::path::absolute(parent).unwrap_or_else(|_| parent.to_path_buf())
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

/// Prefixes of the private map keys `toml` uses to carry spans and date-times through serde.
const PRIVATE_KEY_PREFIXES: &[&str] = &["$__serde_spanned_private", "$__toml_private"];

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// A table key, unquoted.
    Key(String),
    /// An array index.
    Index(usize),
    /// A step serde could not name.
    Unknown,
}

/// The steps of a serde error's path, without the private keys of `toml::Spanned`.
fn path_parts(path: &serde_path_to_error::Path) -> Vec<Part> {
    path.iter()
        .filter_map(|segment| match segment {
            Segment::Seq { index } => Some(Part::Index(*index)),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if PRIVATE_KEY_PREFIXES.iter().any(|p| key.starts_with(p)) {
                    None
                } else {
                    Some(Part::Key(key.clone()))
                }
            }
            Segment::Unknown => Some(Part::Unknown),
        })
        .collect()
}

/// A key path in TOML notation: `plugin.audit-log.retry.attempts`, `plugins.enabled[1]`.
fn format_parts(parts: &[Part]) -> String {
    let mut out = String::new();
    for part in parts {
        match part {
            Part::Index(index) => out.push_str(&format!("[{index}]")),
            Part::Key(key) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&toml_key(key));
            }
            Part::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// The value at `parts` in the parsed document.
fn value_at<'t>(tree: &'t DeTable<'t>, parts: &[Part]) -> Option<&'t DeValue<'t>> {
    let (first, rest) = parts.split_first()?;
    let Part::Key(first) = first else { return None };
    let mut value = tree.iter().find(|(k, _)| k.get_ref().as_ref() == first.as_str())?.1.get_ref();
    for part in rest {
        value = match (part, value) {
            (Part::Key(key), DeValue::Table(table)) => {
                table.iter().find(|(k, _)| k.get_ref().as_ref() == key.as_str())?.1.get_ref()
            }
            (Part::Index(index), DeValue::Array(array)) => array.get(*index)?.get_ref(),
            _ => return None,
        };
    }
    Some(value)
}

/// Turns serde's wording into the config's: `unknown field `x`, expected one of `a`, `b``
/// becomes `unknown key; expected one of a, b`, `missing field `env`` becomes
/// `missing key env`, maps and sequences become tables and arrays. `key` is the last key of the
/// path; `datetime` says whether the offending value is a date-time (which serde sees as a map).
fn rewrite_message(message: &str, key: Option<&str>, datetime: bool) -> String {
    const DATETIME: &str = "unknown field `$__toml_private_datetime`";
    if message.starts_with(DATETIME) {
        return "invalid type: date-time, expected a table".to_owned();
    }
    if let Some(rest) = message.strip_prefix("unknown field `") {
        // The field name is the last key of the path; skip past it.
        let rest = key
            .and_then(|k| rest.strip_prefix(k))
            .and_then(|r| r.strip_prefix('`'))
            .unwrap_or(rest);
        let names: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
        return match names.as_slice() {
            [] => "unknown key; this table takes no keys".to_owned(),
            [one] => format!("unknown key; expected {one}"),
            many => format!("unknown key; expected one of {}", many.join(", ")),
        };
    }
    if let Some(name) = message.strip_prefix("missing field `").and_then(|r| r.strip_suffix('`')) {
        return format!("missing key {name}");
    }
    let Some(rest) = message.strip_prefix("invalid type: ") else {
        return message.to_owned();
    };
    let (found, expected) = rest.split_once(", expected ").unwrap_or((rest, ""));
    let found = match found {
        "map" if datetime => "date-time",
        "map" => "table",
        "sequence" => "array",
        other => other,
    };
    let expected = match expected {
        "a map" => "a table",
        "a sequence" => "an array",
        e if e.starts_with("struct ") => "a table",
        e => e,
    };
    if expected.is_empty() {
        format!("invalid type: {found}")
    } else {
        format!("invalid type: {found}, expected {expected}")
    }
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

    #[test]
    fn serde_wording_is_rewritten() {
        let rewrite = |m: &str, k: &str| rewrite_message(m, Some(k), false);
        assert_eq!(
            rewrite("unknown field `lisen`, expected one of `listen`, `path`", "lisen"),
            "unknown key; expected one of listen, path"
        );
        assert_eq!(rewrite("unknown field `x`, expected `env`", "x"), "unknown key; expected env");
        assert_eq!(
            rewrite("unknown field `x`, there are no fields", "x"),
            "unknown key; this table takes no keys"
        );
        // A key containing a backtick does not confuse the list of expected names.
        assert_eq!(
            rewrite("unknown field `a`b`, expected `env`", "a`b"),
            "unknown key; expected env"
        );
        assert_eq!(rewrite("missing field `env`", ""), "missing key env");
        assert_eq!(rewrite("something else", "k"), "something else");
        assert_eq!(
            rewrite("invalid type: integer `5`, expected struct RawPlugin", "p"),
            "invalid type: integer `5`, expected a table"
        );
        assert_eq!(
            rewrite("invalid type: sequence, expected a map", "p"),
            "invalid type: array, expected a table"
        );
        assert_eq!(
            rewrite("invalid type: map, expected a sequence", "p"),
            "invalid type: table, expected an array"
        );
        assert_eq!(
            rewrite_message("invalid type: map, expected a string", Some("listen"), true),
            "invalid type: date-time, expected a string"
        );
    }

    #[test]
    fn key_paths_are_written_as_toml() {
        let parts =
            [Part::Key("plugins".into()), Part::Key("a b".into()), Part::Index(2), Part::Unknown];
        assert_eq!(format_parts(&parts), "plugins.\"a b\"[2].?");
        assert_eq!(format_parts(&[]), "");
    }
}
