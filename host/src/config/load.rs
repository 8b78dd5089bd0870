//! Reading `host.toml`: file → text → TOML → [`RawConfig`] → [`Config`]; syntax and shape errors
//! become [`ConfigError`]s (`error.rs`) naming the file, the line and column, and the key path.
//!
//! Syntax errors and type/unknown-key errors come from `toml` (with its byte span) through
//! `serde_path_to_error` (for the key path); the checks after deserializing (`validate.rs`) use
//! the spans kept by [`toml::Spanned`]. Messages never contain a token.

use std::{
    env::VarError,
    fs,
    path::{Path, PathBuf},
};

use serde_path_to_error::Segment;
use toml::de::{DeTable, DeValue};

use super::{
    Config,
    error::{ConfigError, Position, Source, toml_key},
    raw::RawConfig,
    validate,
};

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
