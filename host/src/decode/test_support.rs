//! What only the tests use to look at a decoded tree: [`PhpJson`] writes a [`Map`] exactly as
//! PHP's `json_encode($array, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE)` does, so a body
//! decoded here can be compared byte for byte with the reference decoder (`b24-event --decode`).
//!
//! Compiled for this crate's unit tests and, with the `test-support` feature, for its
//! integration tests (`host/tests` turn it on through a dev-dependency on this crate).

use super::{
    php_json::{write_map, write_value},
    tree::{Map, Value},
};

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
