//! A small decoder of `application/x-www-form-urlencoded` bodies into PHP's ordered arrays, as
//! PHP 8's `parse_str` decodes them, for [`super::from_form`].
//!
//! Bitrix24 builds its bodies with `http_build_query`, and the host decodes them as `parse_str`
//! does; this decoder follows the same rules so that a test event is the event the host would
//! deliver. It is written for clarity, not speed (every look-up is a linear scan), and never sees
//! hostile input. The rules, checked against PHP's own decoding of the host's fixtures (made with
//! `shared/tools/b24-event`) in this module's tests:
//!
//! - The body ends at a raw NUL byte; it is split on `&`, empty pieces skipped; at most 1000
//!   variables are read. Name and value split at the first `=`; `+` is a space, `%XX` a byte, a
//!   `%` without two hex digits stays. A NUL in a decoded name ends the name.
//! - Leading spaces of a name are dropped; in the base name (before the first `[`) spaces and
//!   dots become `_`; an empty base name drops the variable.
//! - `[k]` nests, `[]` (or a bracket with one whitespace byte) appends at the next integer index;
//!   after a `]` anything not starting with `[` is ignored. A first `[` without its `]` is no
//!   bracket: it and every space, dot and `[` after it become `_`; a later one ends the name.
//! - More than 64 bracket pairs drop the variable and what its base name held.
//! - A later value replaces an earlier one in place; a nested key turns a string into an array.

/// A PHP value: a string or an ordered array. Keys are strings; an integer key is the string of
/// its canonical decimal form (`"5"`, never `"05"`), as PHP keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// A string (from the body's bytes, invalid UTF-8 replaced with U+FFFD).
    Str(String),
    /// An ordered array.
    Map(Map),
}

/// An ordered PHP array.
pub(crate) type Map = Vec<(String, Value)>;

/// PHP's `max_input_vars`.
const MAX_VARS: usize = 1000;
/// PHP's `max_input_nesting_level`.
const MAX_DEPTH: usize = 64;

/// Decodes `body` as `parse_str` does.
pub(crate) fn parse(body: &[u8]) -> Map {
    let body = body.split(|&b| b == 0).next().unwrap_or_default();
    let mut map = Map::new();
    for var in body.split(|&b| b == b'&').filter(|var| !var.is_empty()).take(MAX_VARS) {
        let (name, value) = match var.iter().position(|&b| b == b'=') {
            Some(eq) => (&var[..eq], &var[eq + 1..]),
            None => (var, &b""[..]),
        };
        let mut name = url_decode(name);
        if let Some(nul) = name.iter().position(|&b| b == 0) {
            name.truncate(nul);
        }
        let value = String::from_utf8_lossy(&url_decode(value)).into_owned();
        if let Some((base, path, depth)) = split_name(&String::from_utf8_lossy(&name)) {
            if depth > MAX_DEPTH {
                map.retain(|(key, _)| *key != base);
            } else {
                insert(&mut map, Some(base), &path, value);
            }
        }
    }
    map
}

/// PHP's `urldecode`.
fn url_decode(input: &[u8]) -> Vec<u8> {
    let hex = |b: Option<&u8>| b.and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&b) = input.get(i) {
        match (b, hex(input.get(i + 1)), hex(input.get(i + 2))) {
            (b'+', ..) => out.push(b' '),
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi << 4 | lo) as u8);
                i += 2;
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

/// C's `isspace` in the C locale.
fn is_c_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\u{b}' | '\u{c}' | '\r')
}

/// A decoded name's base, its bracket path (`None` appends) and its depth for PHP's limit (a
/// last `[` without its `]` ends the path but counts), or `None` to drop it.
fn split_name(name: &str) -> Option<(String, Vec<Option<String>>, usize)> {
    let name = name.trim_start_matches(' ');
    let underscore = |s: &str, also: &[char]| -> String {
        s.chars().map(|c| if c == ' ' || c == '.' || also.contains(&c) { '_' } else { c }).collect()
    };
    let Some(open) = name.find('[') else {
        return (!name.is_empty()).then(|| (underscore(name, &[]), Vec::new(), 0));
    };
    if name[open..].find(']').is_none() {
        // A first `[` without its `]` is part of the name.
        return (open > 0).then(|| (underscore(name, &['[']), Vec::new(), 1));
    }
    if open == 0 {
        return None;
    }
    let mut path = Vec::new();
    let mut unclosed = 0;
    let mut rest = &name[open..];
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            unclosed = 1;
            break;
        };
        let key = &inner[..close];
        let append = key.is_empty() || (key.chars().count() == 1 && key.chars().all(is_c_space));
        path.push((!append).then(|| key.to_owned()));
        rest = &inner[close + 1..];
    }
    let depth = path.len() + unclosed;
    Some((underscore(&name[..open], &[]), path, depth))
}

/// PHP's canonical integer key: no sign but `-`, no leading zero, within `i64`.
fn int_key(key: &str) -> Option<i64> {
    key.parse::<i64>().ok().filter(|n| n.to_string() == key)
}

/// Stores `value` at `key` + `path` in `map`; `None` keys append (a full array drops the value).
fn insert(map: &mut Map, key: Option<String>, path: &[Option<String>], value: String) {
    let key = match key {
        Some(key) => key,
        // PHP 8.3: one past the largest integer key, negative ones included; 0 for none.
        None => match map.iter().filter_map(|(k, _)| int_key(k)).max() {
            None => "0".to_owned(),
            Some(max) => match max.checked_add(1) {
                Some(next) => next.to_string(),
                None => return,
            },
        },
    };
    let slot = match map.iter().position(|(k, _)| *k == key) {
        Some(at) => &mut map[at].1,
        None => {
            map.push((key, Value::Str(String::new())));
            &mut map.last_mut().expect("just pushed").1
        }
    };
    match path.split_first() {
        None => *slot = Value::Str(value),
        Some((next, path)) => {
            if !matches!(slot, Value::Map(_)) {
                *slot = Value::Map(Map::new());
            }
            if let Value::Map(inner) = slot {
                insert(inner, next.clone(), path, value);
            }
        }
    }
}

/// The leaves of `map` in order with their PHP key paths (`FIELDS[ID]`), as the host flattens
/// the `data` block for plugins.
pub(crate) fn flatten(map: &Map) -> Vec<(String, String)> {
    fn walk(map: &Map, prefix: &str, out: &mut Vec<(String, String)>) {
        for (key, value) in map {
            let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}[{key}]") };
            match value {
                Value::Str(s) => out.push((path, s.clone())),
                Value::Map(inner) => walk(inner, &path, out),
            }
        }
    }
    let mut out = Vec::new();
    walk(map, "", &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixtures' folder: bodies made by Bitrix24's PHP encoder (`shared/tools/b24-event`)
    /// and hand-written edge cases, each `NAME.form` with PHP's own decoding in `NAME.json`.
    fn fixtures() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../host/tests/fixtures")
    }

    /// A tree as PHP's `json_encode` writes it: an array with keys 0..n in order is a list.
    fn to_json(map: &Map) -> serde_json::Value {
        let is_list = map.iter().enumerate().all(|(i, (k, _))| *k == i.to_string());
        let value = |v: &Value| match v {
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Map(m) => to_json(m),
        };
        if is_list && !map.is_empty() {
            serde_json::Value::Array(map.iter().map(|(_, v)| value(v)).collect())
        } else if map.is_empty() {
            serde_json::Value::Array(Vec::new())
        } else {
            serde_json::Value::Object(map.iter().map(|(k, v)| (k.clone(), value(v))).collect())
        }
    }

    #[test]
    fn every_fixture_decodes_as_php_decodes_it() {
        let mut checked = 0;
        for entry in std::fs::read_dir(fixtures()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "form") {
                continue;
            }
            let body = std::fs::read(&path).unwrap();
            let php = std::fs::read_to_string(path.with_extension("json")).unwrap();
            let php: serde_json::Value = serde_json::from_str(&php).unwrap();
            // Compared as text, so that the order of keys counts too.
            assert_eq!(to_json(&parse(&body)).to_string(), php.to_string(), "{}", path.display());
            checked += 1;
        }
        assert!(checked >= 60, "only {checked} fixtures");
    }

    #[test]
    fn the_data_block_flattens_to_php_key_paths() {
        let map =
            parse(b"data%5BFIELDS%5D%5BID%5D=5&data%5BLIST%5D%5B%5D=a&data%5BLIST%5D%5B%5D=b");
        let Some((_, Value::Map(data))) = map.first() else { panic!("{map:?}") };
        let pairs = flatten(data);
        let expected = [("FIELDS[ID]", "5"), ("LIST[0]", "a"), ("LIST[1]", "b")];
        assert_eq!(pairs, expected.map(|(k, v)| (k.to_owned(), v.to_owned())));
    }
}
