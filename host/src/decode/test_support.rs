//! What only the tests use to look at a decoded tree: [`PhpJson`] writes a [`Map`] exactly as
//! PHP's `json_encode($array, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE)` does, so a body
//! decoded here can be compared byte for byte with the reference decoder (`b24-event --decode`).
//!
//! Compiled for this crate's unit tests and, with the `test-support` feature, for its
//! integration tests (`host/tests` turn it on through a dev-dependency on this crate).

use super::tree::{Key, Map, Value};

/// PHP's JSON views of a tree.
pub trait PhpJson {
    /// Exactly PHP's `json_encode($value, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE)`, the
    /// output of `b24-event --decode` without its trailing newline.
    fn to_php_json(&self) -> String;

    /// The same shape as a `serde_json::Value`: a list ([`Map::is_list`]) becomes an array,
    /// anything else an object with the keys as strings. (`serde_json::Map` keeps keys sorted
    /// unless its `preserve_order` feature is on: compare key order with
    /// [`PhpJson::to_php_json`].)
    fn to_json(&self) -> serde_json::Value;
}

impl PhpJson for Map {
    fn to_php_json(&self) -> String {
        let mut out = String::new();
        write_map(self, &mut out);
        out
    }

    fn to_json(&self) -> serde_json::Value {
        if self.is_list() {
            serde_json::Value::Array(self.iter().map(|(_, v)| v.to_json()).collect())
        } else {
            serde_json::Value::Object(
                self.iter().map(|(k, v)| (k.to_string(), v.to_json())).collect(),
            )
        }
    }
}

impl PhpJson for Value {
    fn to_php_json(&self) -> String {
        let mut out = String::new();
        write_value(self, &mut out);
        out
    }

    fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Str(s) => serde_json::Value::String(s.clone()),
            Value::Map(m) => m.to_json(),
        }
    }
}

fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Str(s) => write_json_str(s, out),
        Value::Map(m) => write_map(m, out),
    }
}

fn write_map(map: &Map, out: &mut String) {
    if map.is_list() {
        out.push('[');
        for (i, (_, v)) in map.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_value(v, out);
        }
        out.push(']');
    } else {
        out.push('{');
        for (i, (k, v)) in map.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            match k {
                Key::Int(n) => {
                    out.push('"');
                    out.push_str(&n.to_string());
                    out.push('"');
                }
                Key::Str(s) => write_json_str(s, out),
            }
            out.push(':');
            write_value(v, out);
        }
        out.push('}');
    }
}

/// Writes `s` as a JSON string the way PHP's encoder does with `JSON_UNESCAPED_SLASHES |
/// JSON_UNESCAPED_UNICODE`: `\b \f \n \r \t \" \\`, other control characters as lower-case
/// `\u00xx`, U+2028/U+2029 escaped, everything else raw.
fn write_json_str(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(s.len() + 2);
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let esc: Option<&str> = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\u{8}' => Some("\\b"),
            '\u{c}' => Some("\\f"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            '\u{2028}' => Some("\\u2028"),
            '\u{2029}' => Some("\\u2029"),
            c if (c as u32) < 0x20 => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match esc {
            Some(e) => out.push_str(e),
            None => {
                let b = c as u32 as usize;
                out.push_str("\\u00");
                out.push(char::from(HEX[b >> 4]));
                out.push(char::from(HEX[b & 0xf]));
            }
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shapes() {
        let mut m = Map::new();
        assert_eq!(m.to_php_json(), "[]");
        m.push("x").ok();
        m.push("y").ok();
        assert_eq!(m.to_php_json(), r#"["x","y"]"#);
        assert_eq!(m.to_json(), serde_json::json!(["x", "y"]));
        let mut o = Map::new();
        o.insert(1, "x");
        o.insert(0, "y");
        assert_eq!(o.to_php_json(), r#"{"1":"x","0":"y"}"#);
        let mut s = Map::new();
        s.insert("k", "\u{1}\"\\/\n\u{2028}é😀\u{7f}");
        assert_eq!(s.to_php_json(), "{\"k\":\"\\u0001\\\"\\\\/\\n\\u2028é😀\u{7f}\"}");
    }
}
