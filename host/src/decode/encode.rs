//! The inverse of decoding: PHP's `http_build_query` over a [`Map`], as Bitrix24's
//! PHP sender encodes events, plus helpers to build that map from key paths or JSON. The host's
//! `send` command uses it to post realistic events.
//!
//! ```
//! use b24_host::decode::encode::{http_build_query, map_from_pairs};
//!
//! let map = map_from_pairs(&[("event", "ONCRMDEALUSERFIELDADD"), ("data[FIELDS][ID]", "554")]);
//! assert_eq!(http_build_query(&map), "event=ONCRMDEALUSERFIELDADD&data%5BFIELDS%5D%5BID%5D=554");
//! ```

use crate::decode::form::{Limits, Registrar};
use crate::decode::tree::{Key, Map, Value};
use crate::decode::{DecodeError, json};

/// PHP's `http_build_query($map)` with default arguments: `key=value` pairs joined by `&`, nested
/// keys as `outer[inner]` with the brackets percent-encoded, keys and values encoded by
/// [`urlencode`]. Empty maps produce nothing, as empty PHP arrays do.
pub fn http_build_query(map: &Map) -> String {
    let mut out = String::new();
    let mut prefix = String::new();
    build(map, false, &mut prefix, &mut out);
    out
}

fn build(map: &Map, nested: bool, prefix: &mut String, out: &mut String) {
    for (key, value) in map.iter() {
        let len = prefix.len();
        if nested {
            prefix.push_str("%5B");
        }
        match key {
            Key::Int(i) => prefix.push_str(&i.to_string()),
            Key::Str(s) => urlencode_into(s, prefix),
        }
        if nested {
            prefix.push_str("%5D");
        }
        match value {
            Value::Str(s) => {
                if !out.is_empty() {
                    out.push('&');
                }
                out.push_str(prefix);
                out.push('=');
                urlencode_into(s, out);
            }
            Value::Map(child) => build(child, true, prefix, out),
        }
        prefix.truncate(len);
    }
}

/// PHP's `urlencode`: ASCII letters, digits and `-_.` are kept, a space becomes `+`, every other
/// byte `%XX` with upper-case hex digits (so `~` is `%7E`).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    urlencode_into(s, &mut out);
    out
}

/// [`urlencode`], appending to `out`.
pub fn urlencode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => out.push(char::from(b)),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
}

/// A map from `(name, value)` pairs whose names are PHP key paths (`data[FIELDS][ID]`,
/// `LIST[]`), stored as `parse_str` would store the same names and values (no percent-decoding
/// here: give the text as it should end up), without the `max_input_vars` limit.
pub fn map_from_pairs(pairs: &[(&str, &str)]) -> Map {
    let mut out = Registrar::new(Limits::PHP.max_depth);
    for &(name, value) in pairs {
        out.register(name.as_bytes(), value.to_owned());
    }
    out.map
}

/// A map from a JSON object, exactly as [`crate::decode::json`] decodes a JSON body (`true` is
/// `"1"`, `null` vanishes, ...). `serde_json` orders object keys alphabetically unless its
/// `preserve_order` feature is on; to keep the order of a JSON document, decode its bytes with
/// [`crate::decode::json::parse`] instead.
pub fn map_from_json(value: &serde_json::Value) -> Result<Map, DecodeError> {
    json::parse(value.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::PhpJson;

    #[test]
    fn urlencode_like_php() {
        assert_eq!(
            urlencode("aZ09-_.~ +%&=/é😀\0"),
            "aZ09-_.%7E+%2B%25%26%3D%2F%C3%A9%F0%9F%98%80%00"
        );
    }

    // Expected output from PHP 8.2's http_build_query.
    #[test]
    fn build_query_like_php() {
        let body =
            r#"{"a b": {"x y": "1~2 +%&=", "3": {"q": true, "n": null, "e": [], "f": false}}}"#;
        let map = json::parse(body.as_bytes()).expect("object");
        assert_eq!(
            http_build_query(&map),
            "a_b%5Bx+y%5D=1%7E2+%2B%25%26%3D&a_b%5B3%5D%5Bq%5D=1&a_b%5B3%5D%5Bf%5D=0"
        );
        let value = serde_json::json!({"k": {"v": [1, "x"]}});
        let from_value = map_from_json(&value).expect("object");
        assert_eq!(http_build_query(&from_value), "k%5Bv%5D%5B0%5D=1&k%5Bv%5D%5B1%5D=x");
        assert!(map_from_json(&serde_json::json!([1])).is_err());
        let mut m = Map::new();
        m.insert(5, "five");
        m.insert("ü", "€");
        m.insert("empty", Map::new());
        assert_eq!(http_build_query(&m), "5=five&%C3%BC=%E2%82%AC");
        assert_eq!(http_build_query(&Map::new()), "");
        // Under an empty top-level name the brackets are still written.
        let mut under_empty = Map::new();
        under_empty.insert("", map_from_pairs(&[("a[b]", "c")]));
        under_empty.insert("x", "y");
        assert_eq!(http_build_query(&under_empty), "%5Ba%5D%5Bb%5D=c&x=y");
    }

    #[test]
    fn pairs_follow_parse_str() {
        let map =
            map_from_pairs(&[("LIST[]", "a"), ("LIST[]", "b"), ("x.y", "1"), ("LIST[5]", "c")]);
        assert_eq!(map.to_php_json(), r#"{"LIST":{"0":"a","1":"b","5":"c"},"x_y":"1"}"#);
        assert_eq!(http_build_query(&map), "LIST%5B0%5D=a&LIST%5B1%5D=b&LIST%5B5%5D=c&x_y=1");
    }
}
