//! The decoded body as a PHP-array-like tree: [`Value`] (a string or a nested [`Map`]) and
//! [`Map`], an insertion-ordered map keyed by [`Key`] (integer or string) with PHP's rules for
//! integer-looking keys and for the next free index of `k[]`.
//!
//! The tests compare trees with PHP's own through `decode::test_support` (PHP's `json_encode`).

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};

use indexmap::map::raw_entry_v1::{RawEntryApiV1, RawEntryMut};
use indexmap::{Equivalent, IndexMap};

/// A key of a [`Map`]: PHP arrays have integer and string keys, and a string that is a canonical
/// decimal integer (`"0"`, `"-5"`, `"123"`; not `"01"`, `"+1"`, `"-0"` or anything out of `i64`
/// range) is always stored as the integer.
///
/// Build keys with [`Key::from`] (`&str`/`String`/`i64`), which applies that rule; a `Key::Str`
/// holding a canonical integer is never produced by this crate and would never match a lookup.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    /// An integer key, e.g. the `0` of `LIST[0]`.
    Int(i64),
    /// Any other key.
    Str(String),
}

/// A borrowed [`Key`], used for lookups without allocating.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRef<'a> {
    /// An integer key.
    Int(i64),
    /// A string key that is not a canonical integer.
    Str(&'a str),
}

/// Parses `s` the way PHP's `ZEND_HANDLE_NUMERIC_STR` does: an optional `-`, then decimal digits
/// without a leading zero (only `"0"` itself), within `i64` range. `"-0"` is not an integer key.
pub fn php_int_key(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    match digits {
        [] => return None,
        [b'0'] if !neg => return Some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    // At most 19 digits fit an i64 magnitude; PHP rejects longer strings up front as well.
    if digits.len() > 19 {
        return None;
    }
    let mut magnitude: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        magnitude = magnitude * 10 + u64::from(b - b'0');
    }
    if neg {
        if magnitude > i64::MAX as u64 + 1 {
            return None;
        }
        Some((magnitude as i64).wrapping_neg())
    } else {
        i64::try_from(magnitude).ok()
    }
}

impl<'a> KeyRef<'a> {
    /// The key PHP would use for the string `s` (integer when `s` is a canonical integer).
    pub fn from_php(s: &'a str) -> KeyRef<'a> {
        match php_int_key(s.as_bytes()) {
            Some(i) => KeyRef::Int(i),
            None => KeyRef::Str(s),
        }
    }

    /// An owned copy.
    pub fn to_key(self) -> Key {
        match self {
            KeyRef::Int(i) => Key::Int(i),
            KeyRef::Str(s) => Key::Str(s.to_owned()),
        }
    }
}

impl Key {
    /// The borrowed form of this key.
    pub fn as_key_ref(&self) -> KeyRef<'_> {
        match self {
            Key::Int(i) => KeyRef::Int(*i),
            Key::Str(s) => KeyRef::Str(s),
        }
    }

    /// The key as text: the decimal number for integer keys.
    pub fn as_text(&self) -> Cow<'_, str> {
        match self {
            Key::Int(i) => Cow::Owned(i.to_string()),
            Key::Str(s) => Cow::Borrowed(s),
        }
    }
}

impl From<&str> for Key {
    fn from(s: &str) -> Key {
        KeyRef::from_php(s).to_key()
    }
}

impl From<String> for Key {
    fn from(s: String) -> Key {
        match php_int_key(s.as_bytes()) {
            Some(i) => Key::Int(i),
            None => Key::Str(s),
        }
    }
}

impl From<i64> for Key {
    fn from(i: i64) -> Key {
        Key::Int(i)
    }
}

// `Key` and `KeyRef` must hash identically for `Equivalent` lookups.
fn hash_int<H: Hasher>(i: i64, state: &mut H) {
    state.write_u8(0);
    i.hash(state);
}

fn hash_str<H: Hasher>(s: &str, state: &mut H) {
    state.write_u8(1);
    s.hash(state);
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            Key::Int(i) => hash_int(*i, state),
            Key::Str(s) => hash_str(s, state),
        }
    }
}

impl Hash for KeyRef<'_> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        match self {
            KeyRef::Int(i) => hash_int(*i, state),
            KeyRef::Str(s) => hash_str(s, state),
        }
    }
}

impl Equivalent<Key> for KeyRef<'_> {
    fn equivalent(&self, key: &Key) -> bool {
        match (self, key) {
            (KeyRef::Int(a), Key::Int(b)) => a == b,
            (KeyRef::Str(a), Key::Str(b)) => *a == b.as_str(),
            _ => false,
        }
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Str(s) => write!(f, "{s:?}"),
        }
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Int(i) => write!(f, "{i}"),
            Key::Str(s) => f.write_str(s),
        }
    }
}

/// A node of the tree: every leaf is a string, as on the wire.
#[derive(Clone, PartialEq, Eq)]
pub enum Value {
    /// A leaf value.
    Str(String),
    /// A nested array (`k[..]`).
    Map(Map),
}

impl Value {
    /// The string, if this is a leaf.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::Map(_) => None,
        }
    }

    /// The nested map, if this is one.
    pub fn as_map(&self) -> Option<&Map> {
        match self {
            Value::Map(m) => Some(m),
            Value::Str(_) => None,
        }
    }

    /// This value as a map, replacing a leaf by an empty map first (PHP's `$a[x] = ..` on a
    /// string `$a` in `parse_str`).
    pub(crate) fn force_map(&mut self) -> &mut Map {
        if let Value::Str(_) = self {
            *self = Value::Map(Map::new());
        }
        match self {
            Value::Map(m) => m,
            // Replaced just above.
            Value::Str(_) => unreachable!("value was just turned into a map"),
        }
    }
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => write!(f, "{s:?}"),
            Value::Map(m) => m.fmt(f),
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

impl From<Map> for Value {
    fn from(m: Map) -> Value {
        Value::Map(m)
    }
}

/// An insertion-ordered PHP array.
///
/// Behaves like PHP's `HashTable` as `parse_str` uses it: [`Map::insert`] on an existing key
/// replaces the value in place (the key keeps its position); [`Map::push`] (`k[]`) uses the next
/// free integer index, which is one more than the largest integer key ever inserted (negative keys
/// included, as in PHP 8.2), or `0` when there was none; removing keys does not lower it.
///
/// Equality compares the entries in order and ignores the next free index. `Debug` prints the
/// entries but redacts string values whose key ends in `token` (case-insensitive), so a logged
/// tree does not leak `auth[access_token]` and friends.
#[derive(Clone, Default)]
pub struct Map {
    entries: IndexMap<Key, Value>,
    /// PHP's `nNextFreeElement`; `None` until an integer key is inserted.
    next_index: Option<i64>,
}

impl PartialEq for Map {
    fn eq(&self, other: &Map) -> bool {
        self.entries.len() == other.entries.len()
            && self.entries.iter().zip(other.entries.iter()).all(|(a, b)| a == b)
    }
}

impl Eq for Map {}

impl Map {
    /// An empty map.
    pub fn new() -> Map {
        Map::default()
    }

    /// An empty map with room for `capacity` entries.
    pub fn with_capacity(capacity: usize) -> Map {
        Map { entries: IndexMap::with_capacity(capacity), next_index: None }
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&Key, &Value)> + '_ {
        self.entries.iter()
    }

    /// The value at `key`, where `key` is converted as PHP converts array keys (`"5"` finds the
    /// integer key 5).
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.get(&KeyRef::from_php(key))
    }

    /// The value at an exact key.
    pub fn get_key(&self, key: KeyRef<'_>) -> Option<&Value> {
        self.entries.get(&key)
    }

    /// The value at a path of keys, e.g. `&["auth", "member_id"]` for `auth[member_id]`.
    pub fn get_path(&self, path: &[&str]) -> Option<&Value> {
        let (last, parents) = path.split_last()?;
        let mut map = self;
        for key in parents {
            map = map.get(key)?.as_map()?;
        }
        map.get(last)
    }

    /// The string at a path, if the path exists and ends at a leaf.
    pub fn get_path_str(&self, path: &[&str]) -> Option<&str> {
        self.get_path(path)?.as_str()
    }

    /// The index `k[]` would use now.
    pub fn next_index(&self) -> i64 {
        self.next_index.unwrap_or(0)
    }

    fn note_int_key(&mut self, key: &Key) {
        let Key::Int(i) = *key else { return };
        if self.next_index.is_none_or(|next| i >= next) {
            self.next_index = Some(i.saturating_add(1));
        }
    }

    /// Sets `key` to `value` as PHP's `$map[$key] = $value` does: an existing key keeps its
    /// position. Returns the previous value.
    pub fn insert(&mut self, key: impl Into<Key>, value: impl Into<Value>) -> Option<Value> {
        let key = key.into();
        self.note_int_key(&key);
        self.entries.insert(key, value.into())
    }

    /// Like [`Map::insert`] but hashes the key once and allocates it only when it is new.
    pub(crate) fn insert_ref(&mut self, key: KeyRef<'_>, value: Value) {
        if let KeyRef::Int(i) = key {
            self.note_int_key(&Key::Int(i));
        }
        let hash = self.entries.hasher().hash_one(key);
        match self.entries.raw_entry_mut_v1().from_key_hashed_nocheck(hash, &key) {
            RawEntryMut::Occupied(slot) => *slot.into_mut() = value,
            RawEntryMut::Vacant(slot) => {
                slot.insert_hashed_nocheck(hash, key.to_key(), value);
            }
        }
    }

    /// Appends `value` at the next free integer index (PHP's `$map[] = $value`) and returns that
    /// index. Fails, handing the value back, when that index is taken, which only happens once
    /// `i64::MAX` has been used (PHP then drops the variable too).
    pub fn push(&mut self, value: impl Into<Value>) -> Result<i64, Value> {
        let value = value.into();
        let index = self.next_index();
        if self.entries.contains_key(&KeyRef::Int(index)) {
            return Err(value);
        }
        let key = Key::Int(index);
        self.note_int_key(&key);
        self.entries.insert(key, value);
        Ok(index)
    }

    /// Removes `key`, keeping the order of the others (PHP's `unset`). The next free index is
    /// unchanged, as in PHP.
    pub fn remove(&mut self, key: KeyRef<'_>) -> Option<Value> {
        self.entries.shift_remove(&key)
    }

    /// The map at `key`, created empty when absent and replacing a leaf in place when `key`
    /// holds a string (what `parse_str` does for `k[x]`).
    pub(crate) fn child_map(&mut self, key: KeyRef<'_>) -> &mut Map {
        self.child_map_full(key).1
    }

    /// [`Map::child_map`], also giving the entry's index.
    pub(crate) fn child_map_full(&mut self, key: KeyRef<'_>) -> (usize, &mut Map) {
        if let KeyRef::Int(i) = key {
            self.note_int_key(&Key::Int(i));
        }
        let hash = self.entries.hasher().hash_one(key);
        let (index, slot) = match self
            .entries
            .raw_entry_mut_v1()
            .from_key_hashed_nocheck(hash, &key)
        {
            RawEntryMut::Occupied(slot) => (slot.index(), slot.into_mut()),
            RawEntryMut::Vacant(slot) => {
                let index = slot.index();
                (index, slot.insert_hashed_nocheck(hash, key.to_key(), Value::Map(Map::new())).1)
            }
        };
        (index, slot.force_map())
    }

    /// The value at position `index` as a map, turning a leaf into one (see
    /// [`Map::child_map`]). `index` must be below [`Map::len`].
    pub(crate) fn child_map_at(&mut self, index: usize) -> &mut Map {
        self.entries[index].force_map()
    }

    /// A new empty map appended at the next free index (`k[][..]`), or `None` when the index is
    /// taken (see [`Map::push`]).
    pub(crate) fn push_child_map(&mut self) -> Option<&mut Map> {
        let index = self.push(Map::new()).ok()?;
        match self.entries.get_mut(&KeyRef::Int(index)) {
            Some(Value::Map(m)) => Some(m),
            _ => None,
        }
    }

    /// Consumes the map, yielding its entries in order.
    pub fn into_entries(self) -> impl Iterator<Item = (Key, Value)> {
        self.entries.into_iter()
    }

    /// Whether the keys are exactly `0, 1, .., n-1` in this order (PHP's `array_is_list`); an
    /// empty map is a list.
    pub fn is_list(&self) -> bool {
        self.entries
            .keys()
            .enumerate()
            .all(|(i, k)| matches!(k, Key::Int(n) if i64::try_from(i).is_ok_and(|i| i == *n)))
    }

    /// The leaves in order with their PHP key paths, moved out: `{"FIELDS": {"ID": "5"}}` gives
    /// `("FIELDS[ID]", "5")`. Lossless for trees made by `parse_str` (empty maps, which it never
    /// makes, produce nothing).
    pub fn into_flat(self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut path = String::new();
        into_flat(self, false, &mut path, &mut out);
        out
    }
}

fn push_key(path: &mut String, key: &Key, nested: bool) {
    if nested {
        path.push('[');
    }
    match key {
        Key::Int(i) => path.push_str(&i.to_string()),
        Key::Str(s) => path.push_str(s),
    }
    if nested {
        path.push(']');
    }
}

fn into_flat(map: Map, nested: bool, path: &mut String, out: &mut Vec<(String, String)>) {
    for (k, v) in map.into_entries() {
        let len = path.len();
        push_key(path, &k, nested);
        match v {
            Value::Str(s) => out.push((path.clone(), s)),
            Value::Map(m) => into_flat(m, true, path, out),
        }
        path.truncate(len);
    }
}

fn key_is_secret(key: &Key) -> bool {
    match key {
        Key::Str(s) => s.len() >= 5 && s.as_bytes()[s.len() - 5..].eq_ignore_ascii_case(b"token"),
        Key::Int(_) => false,
    }
}

impl fmt::Debug for Map {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Redacted;
        impl fmt::Debug for Redacted {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("<redacted>")
            }
        }
        let mut m = f.debug_map();
        for (k, v) in self.entries.iter() {
            if key_is_secret(k) && matches!(v, Value::Str(_)) {
                m.entry(k, &Redacted);
            } else {
                m.entry(k, v);
            }
        }
        m.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::test_support::PhpJson;

    #[test]
    fn int_keys_follow_php() {
        assert_eq!(php_int_key(b"0"), Some(0));
        assert_eq!(php_int_key(b"-5"), Some(-5));
        assert_eq!(php_int_key(b"123"), Some(123));
        assert_eq!(php_int_key(b"9223372036854775807"), Some(i64::MAX));
        assert_eq!(php_int_key(b"-9223372036854775808"), Some(i64::MIN));
        for s in [
            "",
            "-",
            "01",
            "-0",
            "+1",
            " 1",
            "1 ",
            "1a",
            "0x1",
            "9223372036854775808",
            "-9223372036854775809",
            "99999999999999999999",
            "1.0",
        ] {
            assert_eq!(php_int_key(s.as_bytes()), None, "{s:?}");
        }
    }

    #[test]
    fn next_index_rule() {
        let mut m = Map::new();
        assert_eq!(m.push("a"), Ok(0));
        m.insert("x", "b");
        m.insert("5", "c");
        assert_eq!(m.push("d"), Ok(6));
        m.insert(-10, "e");
        assert_eq!(m.push("f"), Ok(7));
        m.remove(KeyRef::Int(7));
        assert_eq!(m.push("g"), Ok(8));

        let mut neg = Map::new();
        neg.insert(-5, "a");
        assert_eq!(neg.push("b"), Ok(-4));

        let mut full = Map::new();
        full.insert(i64::MAX, "a");
        assert!(full.push("b").is_err());
    }

    #[test]
    fn insert_keeps_position() {
        let mut m = Map::new();
        m.insert("a", "1");
        m.insert("b", "2");
        m.insert("a", "3");
        assert_eq!(m.to_php_json(), r#"{"a":"3","b":"2"}"#);
    }

    #[test]
    fn paths_and_flatten() {
        let mut m = Map::new();
        let f = m.child_map(KeyRef::Str("FIELDS"));
        f.insert("ID", "554");
        f.child_map(KeyRef::Str("LIST")).child_map(KeyRef::Int(0)).insert("VALUE", "x");
        assert_eq!(m.get_path_str(&["FIELDS", "ID"]), Some("554"));
        assert_eq!(m.get_path_str(&["FIELDS", "LIST", "0", "VALUE"]), Some("x"));
        assert_eq!(m.get_path(&["FIELDS", "ID", "x"]), None);
        assert_eq!(m.get_path(&[]), None);
        let flat = vec![
            ("FIELDS[ID]".to_owned(), "554".to_owned()),
            ("FIELDS[LIST][0][VALUE]".to_owned(), "x".to_owned()),
        ];
        assert_eq!(m.into_flat(), flat);
    }

    #[test]
    fn debug_redacts_tokens() {
        let mut m = Map::new();
        m.insert("access_token", "s3cr3t");
        m.insert("Refresh_TOKEN", "s3cr3t2");
        m.insert("domain", "x.bitrix24.com");
        let dbg = format!("{m:?}");
        assert!(!dbg.contains("s3cr3t"), "{dbg}");
        assert!(dbg.contains("x.bitrix24.com"), "{dbg}");
    }
}
