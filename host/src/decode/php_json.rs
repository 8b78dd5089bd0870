//! A decoded tree as JSON, exactly as PHP's `json_encode($array, JSON_UNESCAPED_SLASHES |
//! JSON_UNESCAPED_UNICODE)` writes it: a list (keys 0, 1, 2, ... in order) is an array,
//! anything else an object with its keys as strings, an empty map `[]`. What an exec plugin
//! receives as `data` (`runner::lines`), and what the tests compare with PHP's own decoding
//! (`test_support`).

use super::tree::{Key, Map, Value};

/// Appends `value` as JSON.
pub fn write_value(value: &Value, out: &mut String) {
    match value {
        Value::Str(s) => write_json_str(s, out),
        Value::Map(m) => write_map(m, out),
    }
}

/// Appends `map` as JSON.
pub fn write_map(map: &Map, out: &mut String) {
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
pub fn write_json_str(s: &str, out: &mut String) {
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
