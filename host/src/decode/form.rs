//! `application/x-www-form-urlencoded` bodies decoded exactly as PHP 8's `parse_str` decodes
//! them (`php_default_treat_data` + `php_register_variable_ex`), into a [`Map`].
//!
//! The rules, all checked against PHP 8.2 (see `tests/fixtures/` and the differential test):
//!
//! - A raw NUL byte ends the body (PHP scans it as a C string). The rest is split on `&`; empty
//!   pieces are skipped and do not count as variables. At most [`Limits::max_vars`] variables are
//!   read (PHP's `max_input_vars`, 1000); later ones are dropped.
//! - Name and value split at the first `=` (none: the value is empty), then each is decoded like
//!   PHP's `urldecode`: `+` is a space, `%XX` (either case) a byte, a `%` not followed by two hex
//!   digits stays as it is. A NUL byte in the decoded name ends the name; a NUL in a value is kept.
//! - Leading spaces of the name are dropped. In the base name (before the first `[`) spaces and
//!   dots become `_`. An empty base name drops the variable (`=x`, `[]=1`).
//! - `[x]` nests, `[]` appends at the next free integer index, and so does a bracket holding one
//!   whitespace byte (`[ ]`, `[\t]`: PHP skips one before looking for `]`, a quirk of
//!   `php_register_variable_ex`); after a `]`, anything that does not
//!   start with `[` is ignored (`a[b]c` is `a[b]`). A first `[` without a closing `]` is not a
//!   bracket: it becomes `_` and spaces, dots and `[` in the rest of the name become `_` too
//!   (`a[b.c` is `a_b_c`); a later unclosed `[` ends the name (`a[b][c` is `a[b]`).
//! - More than [`Limits::max_depth`] bracket pairs (PHP's `max_input_nesting_level`, 64) drops the
//!   variable and also deletes whatever the body put under its base name before.
//! - A later `a=..` replaces an earlier value in place; a later `a[x]=..` turns an earlier string
//!   `a` into an array, also in place. Canonical integer keys become integers.
//!
//! Decoded bytes that are not UTF-8 are replaced with U+FFFD the way `String::from_utf8_lossy`
//! does (one per maximal invalid subsequence). PHP keeps the raw bytes; its `json_encode` with
//! `JSON_INVALID_UTF8_SUBSTITUTE` mostly agrees but not always (`%C3%FF` is one U+FFFD there, two
//! here), and two names that differ only in invalid bytes share one key here where PHP keeps two.
//! Bitrix24 sends UTF-8 only.
//!
//! Cost is linear in the body: names and values without `%` or `+` are not copied before they
//! are stored (decoded names go through one reused buffer), each name is scanned a fixed number
//! of times, and map operations are hashed with std's randomly keyed SipHash.

use std::borrow::Cow;

use memchr::memchr2;

use super::tree::{KeyRef, Map, Value};

/// PHP's input limits, which `parse_str` honours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Variables read before the rest of the body is ignored (`max_input_vars`).
    pub max_vars: usize,
    /// Bracket pairs allowed in one name (`max_input_nesting_level`).
    pub max_depth: usize,
}

impl Limits {
    /// PHP's defaults: 1000 variables, 64 levels.
    pub const PHP: Limits = Limits { max_vars: 1000, max_depth: 64 };
}

impl Default for Limits {
    fn default() -> Limits {
        Limits::PHP
    }
}

/// What `parse_str` would have warned about (the data is still decoded as PHP decodes it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Warnings {
    /// The body had more than [`Limits::max_vars`] variables; the rest was ignored.
    pub vars_exceeded: bool,
    /// Variables dropped for nesting deeper than [`Limits::max_depth`].
    pub too_deep: usize,
    /// The body contained a raw NUL byte; everything from it on was ignored.
    pub nul_truncated: bool,
}

impl Warnings {
    /// Whether nothing was dropped.
    pub fn is_empty(&self) -> bool {
        *self == Warnings::default()
    }
}

/// A decoded body and what was dropped from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The variables, as `parse_str` would give them.
    pub map: Map,
    /// What PHP would have warned about.
    pub warnings: Warnings,
}

/// Decodes `body` as PHP's `parse_str` does with default settings.
pub fn parse(body: &[u8]) -> Map {
    parse_with(body, &Limits::PHP).map
}

/// Decodes `body` as PHP's `parse_str` does with the given limits.
pub fn parse_with(body: &[u8], limits: &Limits) -> Parsed {
    // `contains` on bytes is a fast `memchr`; NUL bytes are the exception.
    let (body, nul_truncated) = match body.contains(&0) {
        true => (body.split(|&b| b == 0).next().unwrap_or_default(), true),
        false => (body, false),
    };
    let mut out = Registrar::new(limits.max_depth);
    let mut count = 0usize;
    // Decoded names are only looked at, never stored as they are: one buffer serves them all.
    let mut name_buf = Vec::new();
    for var in body.split(|&b| b == b'&') {
        if var.is_empty() {
            continue;
        }
        count += 1;
        if count > limits.max_vars {
            out.warnings.vars_exceeded = true;
            break;
        }
        let (raw_name, raw_value) = match var.iter().position(|&b| b == b'=') {
            Some(eq) => (&var[..eq], &var[eq + 1..]),
            None => (var, &b""[..]),
        };
        let value = into_string(url_decode(raw_value));
        let name = url_decode_with(raw_name, &mut name_buf);
        out.register(name, value);
    }
    out.warnings.nul_truncated = nul_truncated;
    Parsed { map: out.map, warnings: out.warnings }
}

/// PHP's `urldecode`: `+` is a space, `%XX` (hex digits in either case) is that byte, and a `%`
/// not followed by two hex digits stays literal. Borrows `input` when there is nothing to decode.
pub fn url_decode(input: &[u8]) -> Cow<'_, [u8]> {
    match memchr2(b'%', b'+', input) {
        None => Cow::Borrowed(input),
        Some(first) => {
            let mut out = Vec::with_capacity(input.len());
            decode_from(input, first, &mut out);
            Cow::Owned(out)
        }
    }
}

/// [`url_decode`] into a reusable buffer; returns `input` itself when there is nothing to decode.
fn url_decode_with<'a>(input: &'a [u8], buf: &'a mut Vec<u8>) -> &'a [u8] {
    match memchr2(b'%', b'+', input) {
        None => input,
        Some(first) => {
            buf.clear();
            decode_from(input, first, buf);
            buf
        }
    }
}

/// Appends the decoding of `input` to `out`, where `first` is the position of the first `%` or
/// `+`. Plain runs are copied in one go.
fn decode_from(input: &[u8], first: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&input[..first]);
    let mut i = first;
    while let Some(&b) = input.get(i) {
        if b == b'+' {
            out.push(b' ');
            i += 1;
        } else if b == b'%' {
            let hi = input.get(i + 1).and_then(|&h| hex_value(h));
            let lo = input.get(i + 2).and_then(|&l| hex_value(l));
            if let (Some(hi), Some(lo)) = (hi, lo) {
                out.push(hi << 4 | lo);
                i += 3;
            } else {
                out.push(b'%');
                i += 1;
            }
        } else {
            let run = memchr2(b'%', b'+', &input[i..]).unwrap_or(input.len() - i);
            out.extend_from_slice(&input[i..i + run]);
            i += run;
        }
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decoded bytes as a string, replacing invalid UTF-8 with U+FFFD; copies borrowed bytes once.
fn into_string(bytes: Cow<'_, [u8]>) -> String {
    match bytes {
        Cow::Borrowed(b) => text(b).into_owned(),
        Cow::Owned(v) => match String::from_utf8(v) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        },
    }
}

/// Bytes as text, replacing invalid UTF-8 with U+FFFD (checking validity first is faster than
/// `from_utf8_lossy` on the valid input that is the rule).
fn text(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(bytes),
    }
}

/// The base name with spaces and dots turned into `_`.
fn normalize_base(base: &[u8]) -> Cow<'_, str> {
    let text = text(base);
    if text.bytes().any(|b| b == b' ' || b == b'.') {
        Cow::Owned(text.replace([' ', '.'], "_"))
    } else {
        text
    }
}

/// One step of a name after its base: `[x]`, `[]`, or a `[` that is never closed.
enum Bracket<'k> {
    /// `[x]` (`Some(x)`) or `[]` (`None`).
    Index(Option<&'k [u8]>),
    /// An unclosed `[`, with the rest of the name after it.
    Unterminated(&'k [u8]),
}

/// The bracket steps of a name, as `php_register_variable_ex` walks them.
struct Brackets<'k> {
    name: &'k [u8],
    /// Position of the next `[` to read.
    open: Option<usize>,
}

impl<'k> Brackets<'k> {
    fn new(name: &'k [u8], first_open: usize) -> Self {
        Brackets { name, open: Some(first_open) }
    }
}

impl<'k> Iterator for Brackets<'k> {
    type Item = Bracket<'k>;

    fn next(&mut self) -> Option<Bracket<'k>> {
        let start = self.open.take()? + 1;
        let rest = self.name.get(start..)?;
        // PHP skips one C-locale whitespace byte before looking for `]`, so `[ ]` is `[]`
        // (but `[  ]` is the key "  ").
        let skip = usize::from(rest.first().is_some_and(|&b| is_c_space(b)));
        let (index, close) = if rest.get(skip) == Some(&b']') {
            (None, start + skip)
        } else {
            match rest.iter().position(|&b| b == b']') {
                Some(len) => (Some(&rest[..len]), start + len),
                None => return Some(Bracket::Unterminated(rest)),
            }
        };
        if self.name.get(close + 1) == Some(&b'[') {
            self.open = Some(close + 1);
        }
        Some(Bracket::Index(index))
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// Stores variables into a map as `php_register_variable_ex` does; the caller counts variables
/// against `max_vars`.
pub(crate) struct Registrar {
    /// The variables so far.
    pub(crate) map: Map,
    /// What PHP would have warned about so far.
    pub(crate) warnings: Warnings,
    max_depth: usize,
    /// The base name of the last bracketed variable and its index in `map`: bodies repeat a
    /// base (`auth[..]`, `auth[..]`, ...), and this saves hashing it again.
    last_base: String,
    last_index: Option<usize>,
}

impl Registrar {
    pub(crate) fn new(max_depth: usize) -> Registrar {
        Registrar {
            // Bitrix24 bodies have five top-level keys.
            map: Map::with_capacity(8),
            warnings: Warnings::default(),
            max_depth,
            last_base: String::new(),
            last_index: None,
        }
    }

    /// The map under the top-level `base`, created or turned into a map as needed.
    fn top_child(&mut self, base: &str) -> &mut Map {
        match self.last_index {
            Some(i) if i < self.map.len() && self.last_base == base => {
                return self.map.child_map_at(i);
            }
            _ => {}
        }
        let (i, child) = self.map.child_map_full(KeyRef::from_php(base));
        self.last_base.clear();
        self.last_base.push_str(base);
        self.last_index = Some(i);
        child
    }

    /// Stores `value` under the (already url-decoded) variable name `name`.
    pub(crate) fn register(&mut self, name: &[u8], value: String) {
        let name = match name.iter().position(|&b| b == 0) {
            Some(nul) => &name[..nul],
            None => name,
        };
        let spaces = name.iter().take_while(|&&b| b == b' ').count();
        let name = &name[spaces..];
        let base_end = name.iter().position(|&b| b == b'[').unwrap_or(name.len());
        if base_end == 0 {
            return;
        }
        let base = normalize_base(&name[..base_end]);
        if base_end == name.len() {
            self.map.insert_ref(KeyRef::from_php(&base), Value::Str(value));
            return;
        }

        // PHP checks the level before reading each bracket and, past the limit, deletes the whole
        // variable (including what earlier variables stored under the base name). Each level
        // uses up a `[`, so there is nothing to count when there are few.
        let opens = name[base_end..].iter().filter(|&&b| b == b'[').count();
        if opens > self.max_depth {
            let depth =
                Brackets::new(name, base_end).take(self.max_depth.saturating_add(1)).count();
            if depth > self.max_depth {
                self.map.remove(KeyRef::from_php(&base));
                self.last_index = None;
                self.warnings.too_deep += 1;
                return;
            }
        }

        let mut steps = Brackets::new(name, base_end);
        let (mut map, mut index): (&mut Map, Option<Cow<'_, str>>) = match steps.next() {
            // `a[b.c` is the plain name `a_b_c`.
            Some(Bracket::Unterminated(rest)) => {
                let mut plain = base.into_owned();
                plain.push('_');
                plain.push_str(&text(rest).replace([' ', '.', '['], "_"));
                self.map.insert_ref(KeyRef::from_php(&plain), Value::Str(value));
                return;
            }
            Some(Bracket::Index(next)) => (self.top_child(&base), next.map(text)),
            // A name with a `[` after its base always has a first step.
            None => return,
        };
        for step in steps {
            match step {
                // `a[b][c` stores at `a[b]`.
                Bracket::Unterminated(_) => break,
                Bracket::Index(next) => {
                    map = match &index {
                        Some(key) => map.child_map(KeyRef::from_php(key)),
                        None => match map.push_child_map() {
                            Some(child) => child,
                            None => return,
                        },
                    };
                    index = next.map(text);
                }
            }
        }
        match index {
            Some(key) => map.insert_ref(KeyRef::from_php(&key), Value::Str(value)),
            // A full map drops the variable, as in PHP.
            None => drop(map.push(value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::PhpJson;

    fn php(body: &str) -> String {
        parse(body.as_bytes()).to_php_json()
    }

    #[test]
    fn url_decode_rules() {
        assert!(matches!(url_decode(b"abc"), Cow::Borrowed(_)));
        assert_eq!(&*url_decode(b"a+b%20c%2b%2B"), b"a b c++");
        assert_eq!(&*url_decode(b"%zz%4%%41%"), b"%zz%4%A%");
        assert_eq!(&*url_decode(b"%e2%82%AC"), "€".as_bytes());
        assert_eq!(&*url_decode(b"%00"), b"\0");
    }

    // Expected values are PHP 8.2's output.
    #[test]
    fn php_edge_cases() {
        let cases = [
            ("a[b][c=1", r#"{"a":{"b":"1"}}"#),
            ("a[][c=1", r#"{"a":["1"]}"#),
            ("a[b]c=1", r#"{"a":{"b":"1"}}"#),
            ("a.b=1", r#"{"a_b":"1"}"#),
            ("a[=1", r#"{"a_":"1"}"#),
            ("[]=1", "[]"),
            ("a[]=1&a[]=2&a[5]=x&a[]=y", r#"{"a":{"0":"1","1":"2","5":"x","6":"y"}}"#),
            ("a=1&a[b]=2", r#"{"a":{"b":"2"}}"#),
            ("a[b]=2&a=1", r#"{"a":"1"}"#),
            ("a%00b=1", r#"{"a":"1"}"#),
            ("a=%00x", r#"{"a":"\u0000x"}"#),
            ("a%zz=%zz", r#"{"a%zz":"%zz"}"#),
            ("", "[]"),
            ("&&&", "[]"),
            ("a", r#"{"a":""}"#),
            ("=x", "[]"),
            ("a[-5]=1&a[]=2", r#"{"a":{"-5":"1","-4":"2"}}"#),
            (
                "a[9223372036854775807]=1&a[]=2&a[x]=3",
                r#"{"a":{"9223372036854775807":"1","x":"3"}}"#,
            ),
            (
                "a[9223372036854775808]=1&a[-9223372036854775808]=2&a[-0]=3&a[01]=4&a[%2B1]=5",
                r#"{"a":{"9223372036854775808":"1","-9223372036854775808":"2","-0":"3","01":"4","+1":"5"}}"#,
            ),
            (" a=1&+b=2&%20c=3", r#"{"a":"1","b":"2","c":"3"}"#),
            ("a b.c[d e.f]=1", r#"{"a_b_c":{"d e.f":"1"}}"#),
            ("a[b.c=1", r#"{"a_b_c":"1"}"#),
            ("a[b c[d=1", r#"{"a_b_c_d":"1"}"#),
            ("%5b%5d=1&a%5bx%5d=2", r#"{"a":{"x":"2"}}"#),
            ("x=1&a]b=2&a[b]]=3", r#"{"x":"1","a]b":"2","a":{"b":"3"}}"#),
            ("a[x[y]=1", r#"{"a":{"x[y":"1"}}"#),
            ("0=a&1=b", r#"["a","b"]"#),
            (
                "a[ ]=1&a[%09]=2&a[  ]=3&a[ x]=4&a[%0B%0B]=5&b[x][ ][ y]=6",
                r#"{"a":{"0":"1","1":"2","  ":"3"," x":"4","\u000b\u000b":"5"},"b":{"x":[{" y":"6"}]}}"#,
            ),
            ("a[%20=1&b[%09x=2", r#"{"a__":"1","b_\tx":"2"}"#),
        ];
        for (body, want) in cases {
            assert_eq!(php(body), want, "body {body:?}");
        }
    }

    fn nested(depth: usize) -> String {
        let mut k = "a".to_owned();
        for _ in 0..depth {
            k.push_str("[x]");
        }
        k
    }

    #[test]
    fn nesting_limit() {
        let ok = parse_with(format!("a[y]=1&{}=v", nested(64)).as_bytes(), &Limits::PHP);
        assert!(ok.warnings.is_empty());
        assert!(ok.map.get_path(&["a", "y"]).is_some());
        let deep = parse_with(format!("b=0&a[y]=1&{}=v&c=2", nested(65)).as_bytes(), &Limits::PHP);
        assert_eq!(deep.map.to_php_json(), r#"{"b":"0","c":"2"}"#);
        assert_eq!(deep.warnings.too_deep, 1);
        // Re-created after the deletion: goes to the end.
        assert_eq!(php(&format!("a=1&b=2&{}=v&a=3", nested(70))), r#"{"b":"2","a":"3"}"#);
        // An unclosed bracket at level 65 still counts as a level.
        assert_eq!(php(&format!("a[y]=1&{}[z=v", nested(64))), "[]");
        let custom = Limits { max_depth: 1, ..Limits::PHP };
        assert_eq!(
            parse_with(b"a[b]=1&c[d][e]=2", &custom).map.to_php_json(),
            r#"{"a":{"b":"1"}}"#
        );
        let huge = Limits { max_depth: usize::MAX, ..Limits::PHP };
        assert!(parse_with(nested(200).as_bytes(), &huge).warnings.is_empty());
    }

    #[test]
    fn var_limit_counts_nonempty_pieces() {
        let mut body = String::from("&&&&");
        for i in 0..999 {
            body.push_str(&format!("k{i}={i}&&"));
        }
        body.push_str("z=1&y=2");
        let parsed = parse_with(body.as_bytes(), &Limits::PHP);
        assert!(parsed.warnings.vars_exceeded);
        assert_eq!(parsed.map.len(), 1000);
        assert!(parsed.map.get("z").is_some());
        assert!(parsed.map.get("y").is_none());
        // Nameless variables count too.
        let nameless = "=x&".repeat(1000) + "z=1";
        assert!(parse(nameless.as_bytes()).is_empty());
    }

    #[test]
    fn raw_nul_ends_body() {
        let parsed = parse_with(b"a=1&b=x\0y&c=3", &Limits::PHP);
        assert_eq!(parsed.map.to_php_json(), r#"{"a":"1","b":"x"}"#);
        assert!(parsed.warnings.nul_truncated);
    }

    #[test]
    fn push_on_full_map_drops() {
        assert_eq!(
            php("a[9223372036854775806]=1&a[]=2&a[]=3&a[][x]=4"),
            r#"{"a":{"9223372036854775806":"1","9223372036854775807":"2"}}"#
        );
    }

    #[test]
    fn invalid_utf8_is_replaced() {
        assert_eq!(php("a=x%FFy%E2%82z"), "{\"a\":\"x\u{fffd}y\u{fffd}z\"}");
        assert_eq!(parse(b"k\xff=1").to_php_json(), "{\"k\u{fffd}\":\"1\"}");
    }

    #[test]
    fn big_bodies_stay_fast_enough_to_finish() {
        // Not a timing assertion: a quadratic decoder would take minutes here.
        let many = "k[]=v&".repeat(100_000);
        let unlimited = Limits { max_vars: usize::MAX, max_depth: 64 };
        assert_eq!(
            parse_with(many.as_bytes(), &unlimited)
                .map
                .get("k")
                .and_then(Value::as_map)
                .map(Map::len),
            Some(100_000)
        );
        let long_name = format!("a{}=1", "[".repeat(300_000));
        assert_eq!(parse(long_name.as_bytes()).len(), 1);
        let brackets = format!("a{}=1", "[]".repeat(150_000));
        assert!(parse(brackets.as_bytes()).is_empty());
        let closers = format!("a[{}=1", "]".repeat(300_000));
        assert_eq!(parse(closers.as_bytes()).len(), 1);
    }
}
