//! The request path's fast decoder for the form bodies Bitrix24 sends: one scan over the
//! `&`-separated pairs builds the same [`Decoded`] as [`form`](super::form) and
//! [`Decoded::from_tree`] would, and finds the secret values
//! [`strip::without_secrets`](super::strip::without_secrets) would blank, without building the
//! tree.
//!
//! It takes only bodies whose every name is in the plain shape PHP's `http_build_query` makes of
//! a nested array with plain keys, where `parse_str`'s rules have nothing to rewrite:
//!
//! - a base of ASCII letters, digits, `_` and `-` (no space or dot, which PHP turns into `_`),
//!   then up to [`MAX_LEVELS`]` - 1` brackets `[seg]` (raw or as `%5B`/`%5D`, either case), each
//!   segment one or more ASCII letters, digits, `_`, `-` or `.` (no `[]` append, no whitespace
//!   quirk, nothing after a `]` but another `[`);
//! - each full name once, no name the prefix of another (a string that a later name turns into an
//!   array), and the names of each array together, as `http_build_query` writes them (so the
//!   tree's order is the body's order);
//! - no raw NUL byte, at most [`Limits::PHP`](super::Limits::PHP)`.max_vars` variables, and the
//!   values the view keeps valid UTF-8 once URL-decoded (they are decoded with `form`'s own
//!   [`url_decode`]).
//!
//! On anything else [`scan`] answers `None` and the caller takes the full path, so `parse_str`'s
//! semantics stay exactly where they are. Under these rules the tree `parse_str` builds is the
//! trie of the names in body order, which is why the flattened `data` pairs come out in the
//! body's order and a user-field lookup is a match on the flattened keys.

use std::borrow::Cow;

use memchr::memchr;

use super::form::url_decode;
use super::view::{self, AuthFields, AuthKey, Code, DataLookup, Slot};
use super::{DecodeError, Decoded, Limits};

/// The most path elements (the base and its brackets) a name may have here.
pub const MAX_LEVELS: usize = 16;

/// Names of the same array held while a body is scanned (the open arrays' keys seen so far);
/// a body with more takes the full path, which keeps the check linear.
const MAX_OPEN_KEYS: usize = 128;

/// A name's element, as a range of the body.
#[derive(Clone, Copy, Default)]
struct Seg {
    start: u32,
    end: u32,
}

impl Seg {
    fn of(self, body: &[u8]) -> &[u8] {
        &body[self.start as usize..self.end as usize]
    }
}

/// Where a secret value is in the body: the pair's name ends at `name_end`, the pair at `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Blank {
    name_end: usize,
    end: usize,
}

/// The secret values to blank: at most one `auth[refresh_token]` and one
/// `auth[application_token]`, since a plain body names each once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Blanks {
    found: [Option<Blank>; 2],
}

impl Blanks {
    /// `body` with the values blanked as `strip::without_secrets` blanks them: each secret pair
    /// keeps its name and `=` and loses its value. `None` when that changes no byte.
    pub(super) fn apply(&self, body: &[u8]) -> Option<Vec<u8>> {
        // A pair `name=` with nothing after it is already blank.
        let changes = |b: &Blank| !(b.end == b.name_end + 1 && body.get(b.name_end) == Some(&b'='));
        let mut found = self.found.map(|b| b.filter(changes));
        if found.iter().all(Option::is_none) {
            return None;
        }
        found.sort_by_key(|b| b.map(|b| b.name_end));
        let mut out = Vec::with_capacity(body.len());
        let mut copied = 0;
        for blank in found.into_iter().flatten() {
            out.extend_from_slice(&body[copied..blank.name_end]);
            out.push(b'=');
            copied = blank.end;
        }
        out.extend_from_slice(&body[copied..]);
        Some(out)
    }
}

/// The fast decode of a form `body`: the view (or the error the full path gives) and the
/// secrets to blank; `None` when the body is not in the plain shape (see the module doc) and
/// must take the full path.
pub(super) fn scan(body: &[u8]) -> Option<Result<(Decoded, Blanks), DecodeError>> {
    if body.len() > u32::MAX as usize || memchr(0, body).is_some() {
        return None;
    }
    let mut shape = Shape::default();
    let mut path = [Seg::default(); MAX_LEVELS];
    let mut event = Code::Absent;
    let mut handler_id = None;
    let mut ts = None;
    let mut auth = AuthFields::default();
    let mut data: Vec<(String, String)> = Vec::new();
    let mut blanks = Blanks::default();
    let mut vars = 0usize;
    let mut start = 0usize;
    while start <= body.len() {
        let end = memchr(b'&', &body[start..]).map_or(body.len(), |n| start + n);
        let pair = &body[start..end];
        let here = start;
        start = end + 1;
        if pair.is_empty() {
            continue;
        }
        vars += 1;
        if vars > Limits::PHP.max_vars {
            return None;
        }
        let eq = memchr(b'=', pair);
        let name_end = here + eq.unwrap_or(pair.len());
        let raw_value = eq.map_or(&b""[..], |eq| &pair[eq + 1..]);
        let depth = parse_name(body, here, name_end, &mut path)?;
        let path = &path[..depth];
        if !shape.admit(body, path) {
            return None;
        }
        let base = path[0].of(body);
        match (base, depth) {
            (b"event", 1) => event = Code::Text(text(raw_value)?.into_owned()),
            (b"event", _) => event = Code::Array,
            (b"event_handler_id", 1) => handler_id = view::parse_u64(&text(raw_value)?),
            (b"ts", 1) => ts = view::parse_i64(&text(raw_value)?),
            (b"auth", 2) => {
                let name = path[1].of(body);
                // Plain segments are ASCII.
                let key = std::str::from_utf8(name).ok().and_then(AuthKey::of);
                if let Some(key) = key {
                    if matches!(key, AuthKey::RefreshToken | AuthKey::ApplicationToken) {
                        let slot = usize::from(key == AuthKey::ApplicationToken);
                        blanks.found[slot] = Some(Blank { name_end, end });
                    }
                    auth.set(key, text(raw_value)?);
                }
            }
            (b"data", 1) => data.push((String::new(), text(raw_value)?.into_owned())),
            (b"data", _) => {
                let len: u32 = path[1..].iter().map(|s| s.end - s.start + 2).sum();
                let mut key = String::with_capacity(len as usize - 2);
                push_ascii(&mut key, path[1].of(body));
                for seg in &path[2..] {
                    key.push('[');
                    push_ascii(&mut key, seg.of(body));
                    key.push(']');
                }
                data.push((key, text(raw_value)?.into_owned()));
            }
            _ => {}
        }
    }
    let built = (|| {
        let code = view::event_code(event)?;
        let kind = view::kind_of(&code, &Flat(&data))?;
        Ok(Decoded { code, handler_id, ts, auth: auth.finish(), data, kind })
    })();
    Some(built.map(|event| (event, blanks)))
}

/// A URL-decoded value as text; `None` when it is not UTF-8 (the full path then replaces the
/// invalid bytes as it always has).
fn text(raw: &[u8]) -> Option<Cow<'_, str>> {
    match url_decode(raw) {
        Cow::Borrowed(b) => std::str::from_utf8(b).ok().map(Cow::Borrowed),
        Cow::Owned(v) => String::from_utf8(v).ok().map(Cow::Owned),
    }
}

/// Appends plain (ASCII) name bytes.
fn push_ascii(out: &mut String, bytes: &[u8]) {
    out.push_str(std::str::from_utf8(bytes).unwrap_or_default());
}

/// The bytes of plain names: [`BASE`] in a base and a segment, [`SEGMENT`] in a segment only.
const BASE: u8 = 1;
const SEGMENT: u8 = 2;
const PLAIN: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' {
            table[b] = BASE | SEGMENT;
        } else if c == b'.' {
            table[b] = SEGMENT;
        }
        b += 1;
    }
    table
};

fn is_base_byte(b: u8) -> bool {
    PLAIN[usize::from(b)] & BASE != 0
}

fn is_seg_byte(b: u8) -> bool {
    PLAIN[usize::from(b)] & SEGMENT != 0
}

/// The length of a bracket at `at` (`[` or `%5B`, `]` or `%5D`, either case), or 0.
fn bracket(name: &[u8], at: usize, raw: u8, escaped: u8) -> usize {
    match name.get(at..) {
        Some([b, ..]) if *b == raw => 1,
        Some([b'%', b'5', c, ..]) if c.eq_ignore_ascii_case(&escaped) => 3,
        _ => 0,
    }
}

/// Splits the raw name `body[start..end]` into its plain elements (base, then each bracket's
/// segment) in `path`; their count, or `None` when the name is not plain.
fn parse_name(
    body: &[u8],
    start: usize,
    end: usize,
    path: &mut [Seg; MAX_LEVELS],
) -> Option<usize> {
    let name = &body[..end];
    let mut i = start;
    while i < end && is_base_byte(name[i]) {
        i += 1;
    }
    if i == start {
        return None;
    }
    path[0] = Seg { start: start as u32, end: i as u32 };
    let mut depth = 1;
    while i < end {
        let open = bracket(name, i, b'[', b'B');
        if open == 0 || depth == MAX_LEVELS {
            return None;
        }
        i += open;
        let seg_start = i;
        while i < end && is_seg_byte(name[i]) {
            i += 1;
        }
        let close = bracket(name, i, b']', b'D');
        if i == seg_start || close == 0 {
            return None;
        }
        path[depth] = Seg { start: seg_start as u32, end: i as u32 };
        depth += 1;
        i += close;
    }
    Some(depth)
}

/// The order check: each name's path is admitted only when the tree `parse_str` builds stays
/// the trie of the paths in body order (see the module doc).
struct Shape {
    /// The previous path.
    prev: [Seg; MAX_LEVELS],
    prev_len: usize,
    /// For each level of the previous path, the keys its parent has had so far, level after
    /// level: `keys[level_start[l]..level_start[l + 1]]`, the last level's up to `count`.
    keys: [Seg; MAX_OPEN_KEYS],
    count: usize,
    level_start: [usize; MAX_LEVELS],
}

impl Default for Shape {
    fn default() -> Shape {
        Shape {
            prev: [Seg::default(); MAX_LEVELS],
            prev_len: 0,
            keys: [Seg::default(); MAX_OPEN_KEYS],
            count: 0,
            level_start: [0; MAX_LEVELS],
        }
    }
}

impl Shape {
    fn admit(&mut self, body: &[u8], path: &[Seg]) -> bool {
        let same = |a: Seg, b: Seg| a.of(body) == b.of(body);
        let common =
            path.iter().zip(&self.prev[..self.prev_len]).take_while(|&(a, b)| same(*a, *b)).count();
        if self.prev_len > 0 && (common == path.len() || common == self.prev_len) {
            // The same name again, or a string turned into an array (or the other way).
            return false;
        }
        // Keys below the first differing level belong to arrays that are now closed.
        self.count =
            if common + 1 < self.prev_len { self.level_start[common + 1] } else { self.count };
        let siblings = &self.keys[self.level_start[common]..self.count];
        if siblings.iter().any(|&k| same(k, path[common])) {
            // An array reopened after another key: its order in the tree is not the body's.
            return false;
        }
        if self.count + path.len() - common > MAX_OPEN_KEYS {
            return false;
        }
        self.keys[self.count] = path[common];
        self.count += 1;
        for (level, &seg) in path.iter().enumerate().skip(common + 1) {
            self.level_start[level] = self.count;
            self.keys[self.count] = seg;
            self.count += 1;
        }
        self.prev[..path.len()].copy_from_slice(path);
        self.prev_len = path.len();
        true
    }
}

/// The flattened `data` pairs of a plain body, for the user-field lookups: their keys are the
/// paths under `data` (`FIELDS[ID]`), each once, none inside another.
struct Flat<'a>(&'a [(String, String)]);

impl DataLookup for Flat<'_> {
    fn at(&self, path: &[&str]) -> Slot<'_> {
        let under = |key: &'_ str| -> Option<bool> {
            let (first, rest) = path.split_first()?;
            let mut key = key.strip_prefix(first)?;
            for part in rest {
                key = key.strip_prefix('[')?.strip_prefix(part)?.strip_prefix(']')?;
            }
            // `true`: the key is the path itself; `false`: a key inside it.
            if key.is_empty() { Some(true) } else { key.starts_with('[').then_some(false) }
        };
        for (key, value) in self.0 {
            match under(key) {
                Some(true) => return Slot::Leaf(value),
                Some(false) => return Slot::Array,
                None => {}
            }
        }
        Slot::Absent
    }
}

#[cfg(test)]
mod tests;
