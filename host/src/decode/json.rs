//! JSON request bodies (a convenience for tests and proxies; Bitrix24 itself sends forms),
//! decoded into the same [`Map`] that the form body of the same payload gives.
//!
//! The result mirrors PHP's `parse_str(http_build_query(json_decode($body, true)))`: strings are
//! kept as they are, `true` is `"1"`, `false` is `"0"`, `null` and empty arrays or objects vanish,
//! array elements get integer keys, a repeated object key keeps its first position and its last
//! value, and every leaf then goes through the same name rules and [`Limits`] as a form variable
//! (so `{"a.b": "1"}` gives `a_b`, and nesting deeper than 64 levels drops the top-level key).
//!
//! One deliberate difference: a number is kept as its JSON text (`12.50` stays `"12.50"`, a
//! 30-digit integer stays exact), where PHP would have turned it into a float and printed that
//! (`12.5`, `1.0E+29`).
//!
//! The top level must be an object. The body must be valid UTF-8 and valid JSON (RFC 8259, no
//! byte-order mark, lone UTF-16 surrogates rejected as PHP rejects them), nested at most
//! [`MAX_DEPTH`] levels (PHP's `json_decode` default). Errors give the byte offset and a short
//! reason, never the content. A body whose leaves repeat long keys so often that the names to
//! decode would exceed 16 bytes per body byte (plus 64 KiB) is refused as too complex, which keeps
//! the work linear in the body size.

use std::borrow::Cow;

use indexmap::IndexMap;

use super::DecodeError;
use super::form::{Limits, Parsed, Registrar};
use super::tree::Map;

/// Deepest nesting of arrays and objects accepted (PHP's `json_decode` default depth).
pub const MAX_DEPTH: usize = 512;

/// Decodes a JSON object body with PHP's default [`Limits`].
pub fn parse(body: &[u8]) -> Result<Map, DecodeError> {
    parse_with(body, &Limits::PHP).map(|parsed| parsed.map)
}

/// Decodes a JSON object body with the given limits.
pub fn parse_with(body: &[u8], limits: &Limits) -> Result<Parsed, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| DecodeError::InvalidJson {
        offset: e.valid_up_to(),
        reason: "not valid UTF-8",
    })?;
    let mut parser = Parser { text, bytes: text.as_bytes(), pos: 0, depth: 0 };
    parser.skip_ws();
    let root = parser.value()?;
    parser.skip_ws();
    if parser.pos != parser.bytes.len() {
        return Err(parser.error("unexpected data after the JSON value"));
    }
    let Node::Object(entries) = root else {
        return Err(DecodeError::JsonNotObject(root.kind()));
    };

    let mut out = Flattener {
        out: Registrar::new(limits.max_depth),
        limits,
        count: 0,
        name: Vec::new(),
        budget: NAME_BUDGET_PER_BYTE.saturating_mul(body.len()).saturating_add(NAME_BUDGET_BASE),
    };
    for (key, node) in entries {
        out.name.clear();
        out.name.extend_from_slice(key.as_bytes());
        if !out.emit(node)? {
            break;
        }
    }
    Ok(Parsed { map: out.out.map, warnings: out.out.warnings })
}

/// Every leaf becomes a variable whose name repeats all the keys above it, so a long key over
/// many values would make the work grow with their product. The names of all variables may add
/// up to this many bytes per byte of body, plus [`NAME_BUDGET_BASE`]; real payloads stay far
/// below (Bitrix24-like bodies use about 2).
const NAME_BUDGET_PER_BYTE: usize = 16;
/// See [`NAME_BUDGET_PER_BYTE`].
const NAME_BUDGET_BASE: usize = 64 * 1024;

/// A parsed JSON value; scalars are already in their `http_build_query` text form.
enum Node<'a> {
    Null,
    Bool(bool),
    Number(&'a str),
    Str(Cow<'a, str>),
    Array(Vec<Node<'a>>),
    Object(IndexMap<Cow<'a, str>, Node<'a>>),
}

impl Node<'_> {
    fn kind(&self) -> &'static str {
        match self {
            Node::Null => "null",
            Node::Bool(_) => "a boolean",
            Node::Number(_) => "a number",
            Node::Str(_) => "a string",
            Node::Array(_) => "an array",
            Node::Object(_) => "an object",
        }
    }
}

/// Turns the parsed tree into `name=value` variables the way `http_build_query` does and
/// registers each as `parse_str` would.
struct Flattener<'l> {
    out: Registrar,
    limits: &'l Limits,
    count: usize,
    /// The current variable name, e.g. `data[FIELDS][ID]`.
    name: Vec<u8>,
    /// Name bytes that may still be registered (see [`NAME_BUDGET_PER_BYTE`]).
    budget: usize,
}

impl Flattener<'_> {
    /// Emits `node` under the current name; `Ok(false)` once the variable limit is hit.
    fn emit(&mut self, node: Node<'_>) -> Result<bool, DecodeError> {
        let value = match node {
            Node::Null => return Ok(true),
            Node::Bool(true) => "1".to_owned(),
            Node::Bool(false) => "0".to_owned(),
            Node::Number(text) => text.to_owned(),
            Node::Str(s) => s.into_owned(),
            Node::Array(items) => {
                for (i, item) in items.into_iter().enumerate() {
                    if !self.emit_child(i.to_string().as_bytes(), item)? {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
            Node::Object(entries) => {
                for (key, item) in entries {
                    if !self.emit_child(key.as_bytes(), item)? {
                        return Ok(false);
                    }
                }
                return Ok(true);
            }
        };
        self.count += 1;
        if self.count > self.limits.max_vars {
            self.out.warnings.vars_exceeded = true;
            return Ok(false);
        }
        self.budget =
            self.budget.checked_sub(self.name.len()).ok_or(DecodeError::JsonTooComplex)?;
        self.out.register(&self.name, value);
        Ok(true)
    }

    fn emit_child(&mut self, key: &[u8], node: Node<'_>) -> Result<bool, DecodeError> {
        let len = self.name.len();
        self.name.push(b'[');
        self.name.extend_from_slice(key);
        self.name.push(b']');
        let go_on = self.emit(node);
        self.name.truncate(len);
        go_on
    }
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Parser<'a> {
    fn error(&self, reason: &'static str) -> DecodeError {
        DecodeError::InvalidJson { offset: self.pos, reason }
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &'static str) -> Result<(), DecodeError> {
        if self.bytes[self.pos..].starts_with(literal.as_bytes()) {
            self.pos += literal.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn value(&mut self) -> Result<Node<'a>, DecodeError> {
        match self.peek() {
            None => Err(self.error("unexpected end of input")),
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => Ok(Node::Str(self.string()?)),
            Some(b't') => self.expect_literal("true").map(|()| Node::Bool(true)),
            Some(b'f') => self.expect_literal("false").map(|()| Node::Bool(false)),
            Some(b'n') => self.expect_literal("null").map(|()| Node::Null),
            Some(b'-' | b'0'..=b'9') => self.number().map(Node::Number),
            Some(_) => Err(self.error("expected a JSON value")),
        }
    }

    fn nested(
        &mut self,
        parse: fn(&mut Self) -> Result<Node<'a>, DecodeError>,
    ) -> Result<Node<'a>, DecodeError> {
        if self.depth >= MAX_DEPTH {
            return Err(self.error("nested too deeply"));
        }
        self.depth += 1;
        let node = parse(self);
        self.depth -= 1;
        node
    }

    fn object(&mut self) -> Result<Node<'a>, DecodeError> {
        self.pos += 1; // `{`
        let mut entries = IndexMap::new();
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Node::Object(entries));
        }
        loop {
            self.skip_ws();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key"));
            }
            let key = self.string()?;
            self.skip_ws();
            if self.peek() != Some(b':') {
                return Err(self.error("expected `:`"));
            }
            self.pos += 1;
            self.skip_ws();
            let value = self.value()?;
            // Like `json_decode`: a repeated key keeps its first position, takes the last value.
            entries.insert(key, value);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Node::Object(entries));
                }
                _ => return Err(self.error("expected `,` or `}`")),
            }
        }
    }

    fn array(&mut self) -> Result<Node<'a>, DecodeError> {
        self.pos += 1; // `[`
        let mut items = Vec::new();
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Node::Array(items));
        }
        loop {
            self.skip_ws();
            items.push(self.value()?);
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Node::Array(items));
                }
                _ => return Err(self.error("expected `,` or `]`")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.pos;
        while let Some(b'0'..=b'9') = self.peek() {
            self.pos += 1;
        }
        self.pos - start
    }

    fn number(&mut self) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => {
                self.digits();
            }
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.pos += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.pos += 1;
            }
            if self.digits() == 0 {
                return Err(self.error("invalid number"));
            }
        }
        Ok(&self.text[start..self.pos])
    }

    fn hex4(&mut self) -> Result<u32, DecodeError> {
        let digits = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let mut code = 0u32;
        for &d in digits {
            let v = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.error("invalid \\u escape")),
            };
            code = code << 4 | u32::from(v);
        }
        self.pos += 4;
        Ok(code)
    }

    fn string(&mut self) -> Result<Cow<'a, str>, DecodeError> {
        self.pos += 1; // opening quote
        let start = self.pos;
        // Fast path: no escapes, borrow.
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    let s = &self.text[start..self.pos];
                    self.pos += 1;
                    return Ok(Cow::Borrowed(s));
                }
                Some(b'\\') => break,
                Some(0..=0x1f) => return Err(self.error("control character in string")),
                Some(_) => self.pos += 1,
            }
        }
        let mut out = String::from(&self.text[start..self.pos]);
        loop {
            let run = self.pos;
            while let Some(b) = self.peek() {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            out.push_str(&self.text[run..self.pos]);
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(Cow::Owned(out));
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let Some(esc) = self.peek() else {
                        return Err(self.error("unterminated string"));
                    };
                    self.pos += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(self.error("invalid escape")),
                    }
                }
                Some(_) => return Err(self.error("control character in string")),
            }
        }
    }

    /// The character of a `\uXXXX` escape (the `\u` already read), joining surrogate pairs.
    fn unicode_escape(&mut self) -> Result<char, DecodeError> {
        let first = self.hex4()?;
        let code = match first {
            0xD800..=0xDBFF => {
                if !self.bytes[self.pos..].starts_with(b"\\u") {
                    return Err(self.error("lone UTF-16 surrogate"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.error("lone UTF-16 surrogate"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            0xDC00..=0xDFFF => return Err(self.error("lone UTF-16 surrogate")),
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.error("invalid \\u escape"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::PhpJson;

    fn php(body: &str) -> String {
        match parse(body.as_bytes()) {
            Ok(map) => map.to_php_json(),
            Err(e) => format!("error: {e}"),
        }
    }

    #[test]
    fn scalars_like_http_build_query() {
        assert_eq!(
            php(
                r#"{"s":"x y","t":true,"f":false,"n":null,"i":42,"d":12.50,"e":[],"o":{},"big":123456789012345678901234567890}"#
            ),
            r#"{"s":"x y","t":"1","f":"0","i":"42","d":"12.50","big":"123456789012345678901234567890"}"#
        );
    }

    #[test]
    fn nesting_and_lists() {
        assert_eq!(
            php(
                r#"{"data":{"FIELDS":{"ID":"5","LIST":[{"VALUE":"a"},{"VALUE":"b"}]}},"x":[null,"y"]}"#
            ),
            r#"{"data":{"FIELDS":{"ID":"5","LIST":[{"VALUE":"a"},{"VALUE":"b"}]}},"x":{"1":"y"}}"#
        );
    }

    #[test]
    fn names_follow_parse_str() {
        assert_eq!(
            php(r#"{"a.b":"1"," c":"2","":"3","5":"4","k":{"x]y":"5"}}"#),
            r#"{"a_b":"1","c":"2","5":"4","k":{"x":"5"}}"#
        );
    }

    #[test]
    fn repeated_keys_like_json_decode() {
        assert_eq!(php(r#"{"a":{"x":"1"},"b":"2","a":{"y":"3"}}"#), r#"{"a":{"y":"3"},"b":"2"}"#);
        assert_eq!(php(r#"{"a":"1","b":"2","a":[]}"#), r#"{"b":"2"}"#);
    }

    #[test]
    fn escapes() {
        assert_eq!(
            php(r#"{"k":"\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00"}"#),
            "{\"k\":\"\\\"\\\\/\\b\\f\\n\\r\\té😀\"}"
        );
    }

    #[test]
    fn errors() {
        for (body, want) in [
            ("[1]", "JSON body is not an object: it is an array"),
            ("\"x\"", "JSON body is not an object: it is a string"),
            ("null", "JSON body is not an object: it is null"),
            ("", "invalid JSON body at byte 0: unexpected end of input"),
            ("{", "invalid JSON body at byte 1: expected a string key"),
            ("{\"a\":1,}", "invalid JSON body at byte 7: expected a string key"),
            ("{\"a\":01}", "invalid JSON body at byte 6: expected `,` or `}`"),
            ("{\"a\":\"\\ud800\"}", "invalid JSON body at byte 12: lone UTF-16 surrogate"),
            ("{\"a\":\"\u{1}\"}", "invalid JSON body at byte 6: control character in string"),
            ("{} x", "invalid JSON body at byte 3: unexpected data after the JSON value"),
            ("\u{feff}{}", "invalid JSON body at byte 0: expected a JSON value"),
            ("{\"a\":tru}", "invalid JSON body at byte 5: invalid literal"),
            ("{\"a\":-}", "invalid JSON body at byte 6: invalid number"),
            ("{\"a\":1.}", "invalid JSON body at byte 7: invalid number"),
            ("{\"a\":1e}", "invalid JSON body at byte 7: invalid number"),
        ] {
            assert_eq!(php(body), format!("error: {want}"), "body {body:?}");
        }
        assert_eq!(
            parse(b"{\"a\":\"\xff\"}").err().map(|e| e.to_string()),
            Some("invalid JSON body at byte 6: not valid UTF-8".to_owned())
        );
    }

    #[test]
    fn long_keys_over_many_values_are_refused() {
        let key = "k".repeat(200_000);
        let values = vec!["1"; 999].join(",");
        let body = format!(r#"{{"a":{{"{key}":[{values}]}}}}"#);
        assert_eq!(parse(body.as_bytes()), Err(DecodeError::JsonTooComplex));
        let fine = format!(r#"{{"a":{{"{key}":[1,2,3]}}}}"#);
        assert!(parse(fine.as_bytes()).is_ok());
        let many: Vec<String> = (0..999).map(|i| format!(r#""FIELD_{i}":"v""#)).collect();
        let wide = format!(r#"{{"data":{{"FIELDS":{{{}}}}}}}"#, many.join(","));
        assert!(parse(wide.as_bytes()).is_ok_and(|m| m.len() == 1));
    }

    #[test]
    fn depth_limit_without_stack_overflow() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(matches!(
            parse(deep.as_bytes()),
            Err(DecodeError::InvalidJson { reason: "nested too deeply", .. })
        ));
        // 64 bracket levels survive parse_str, 65 drop the key.
        let ok = format!("{{\"a\":{}\"v\"{},\"b\":\"1\"}}", "[".repeat(64), "]".repeat(64));
        assert!(parse(ok.as_bytes()).is_ok_and(|m| m.len() == 2));
        let dropped = format!("{{\"a\":{}\"v\"{},\"b\":\"1\"}}", "[".repeat(65), "]".repeat(65));
        assert_eq!(
            parse(dropped.as_bytes()).map(|m| m.to_php_json()),
            Ok(r#"{"b":"1"}"#.to_owned())
        );
    }
}
