//! The raw scan: what `journal verify` and `journal salvage` read when the storage library
//! cannot open the file at all (a damaged header or allocator state, a table tree redb's
//! repair gives up on, often after a crash). Every page of the file is parsed as a leaf of
//! redb's B-trees (`[1][_][entries u16][key ends u32..][value ends u32..][keys][values]`, the
//! ends left out for fixed-width keys or values) and each entry is kept only if it proves
//! itself: every event record, pending row, dead letter, attempt and entry of the index of
//! complete events carries a checksum over its key and bytes ([`checksum`]), which a random
//! page or a stray byte does not pass. The unsealed rows are taken by their shape: learned
//! tokens (short ASCII strings under a portal id), stored OAuth tokens (JSON with both
//! tokens), named state (keys with a `:`), offline keys (kept only when the event they name
//! is found and carries that key), and the `next_id` counter.
//!
//! The file also holds older copies of pages that later transactions replaced (redb copies
//! on write) and has not reused yet. An event record never changes, so any copy is it. Rows
//! are reconciled: a plugin's pending row or dead letter of an event found in any copy of
//! the index of complete events, or whose attempts ended `done` or `skipped` after it, is an
//! old copy and is dropped; of several copies of one row the one furthest along (most
//! attempts, latest letter) is kept. What cannot be told apart errs on the side of delivering
//! again: at least once allows a repeat, never a loss.

use crate::journal::record::Sealed as _;
use std::collections::{BTreeMap, BTreeSet};

use super::store;
use crate::journal::{
    checksum,
    record::{DeadLetter, EventRecord, Pending, Source},
};

/// redb's page size: every page starts at a multiple of it.
const PAGE: usize = 4096;
/// redb's leaf page marker.
const LEAF: u8 = 1;

/// What a raw scan found, reconciled.
#[derive(Default)]
pub struct Found {
    /// Event records.
    pub events: BTreeMap<u64, EventRecord>,
    /// Pending rows, (plugin, event id).
    pub pending: BTreeMap<(String, u64), Pending>,
    /// Dead letters, (plugin, event id).
    pub dead: BTreeMap<(String, u64), DeadLetter>,
    /// Learned application tokens by portal.
    pub tokens: BTreeMap<String, String>,
    /// Stored OAuth tokens (JSON) by portal.
    pub oauth: BTreeMap<String, Vec<u8>>,
    /// Named state values.
    pub state: BTreeMap<String, Vec<u8>>,
    /// Offline rows' keys and the events they became.
    pub offline_seen: BTreeMap<Vec<u8>, u64>,
    /// The highest `next_id` counter found, or 1.
    pub next_id: u64,
    /// The highest `wal_applied` checkpoint found (0: none).
    pub wal_applied: u64,
    /// (plugin, event) pairs of events no readable row accounts for, in a journal that kept
    /// the index of complete events: their rows were on damaged pages. Each plugin seen in the
    /// file that did not finish the event is listed (salvage makes them dead letters: "it may
    /// have been delivered already").
    pub orphans: Vec<(String, u64)>,
    /// Pages that parsed as leaves holding something kept.
    pub leaves: usize,
    /// Row copies dropped as older than what else was found.
    pub stale: usize,
}

/// Every version of every row the pages hold, before reconciling.
#[derive(Default)]
struct Seen {
    events: BTreeMap<u64, EventRecord>,
    completed: BTreeSet<u64>,
    pending: BTreeMap<(String, u64), Pending>,
    dead: BTreeMap<(String, u64), DeadLetter>,
    /// Per (event, plugin): when it last finished (`done`/`skipped`), and when any attempt
    /// last ended.
    finished: BTreeMap<(u64, String), i64>,
    attempted: BTreeMap<(u64, String), i64>,
    tokens: BTreeMap<String, String>,
    oauth: BTreeMap<String, (i64, Vec<u8>)>,
    state: BTreeMap<String, Vec<u8>>,
    offline_seen: Vec<(Vec<u8>, u64)>,
    next_id: u64,
    wal_applied: u64,
    /// Whether the file kept the index of complete events (its `meta` note was found).
    indexed: bool,
    leaves: usize,
}

/// Reads the record an `events` row that points into the event files points at (id, row).
pub type Pointed<'a> = dyn Fn(u64, &[u8]) -> Option<EventRecord> + 'a;

/// Scans `file` (the whole journal file's bytes); `pointed` reads the records of rows that
/// point into the event files.
pub fn scan(file: &[u8], pointed: &Pointed<'_>) -> Found {
    let mut seen = Seen { next_id: 1, ..Seen::default() };
    for at in (0..file.len()).step_by(PAGE) {
        let page = &file[at..];
        if page[0] != LEAF {
            continue;
        }
        let mut kept = false;
        if let Some(entries) = leaf(page, Some(8), None) {
            kept |= fixed_keys(&entries, pointed, &mut seen);
        }
        if let Some(entries) = leaf(page, None, None) {
            kept |= variable_keys(&entries, &mut seen);
        }
        if let Some(entries) = leaf(page, None, Some(8)) {
            kept |= counters(&entries, &mut seen);
        }
        seen.leaves += usize::from(kept);
    }
    reconcile(seen)
}

/// The entries of a leaf page starting at `page`'s first byte, if it is laid out as one with
/// these key and value widths: every end within the page and in order.
fn leaf(
    page: &[u8],
    key_width: Option<usize>,
    value_width: Option<usize>,
) -> Option<Vec<(&[u8], &[u8])>> {
    let n = usize::from(u16::from_le_bytes(page.get(2..4)?.try_into().ok()?));
    if n == 0 {
        return None;
    }
    let mut offset = 4;
    let mut ends = |width: Option<usize>| -> Option<Option<Vec<usize>>> {
        if width.is_some() {
            return Some(None);
        }
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let at = offset + 4 * i;
            out.push(u32::from_le_bytes(page.get(at..at + 4)?.try_into().ok()?) as usize);
        }
        offset += 4 * n;
        Some(Some(out))
    };
    let key_ends = ends(key_width)?;
    let value_ends = ends(value_width)?;
    let keys_start = offset;
    let key_end = |i: usize| match (&key_ends, key_width) {
        (Some(ends), _) => ends[i],
        (None, Some(w)) => keys_start + w * (i + 1),
        (None, None) => unreachable!("one of the two is set"),
    };
    let values_start = key_end(n - 1);
    let value_end = |i: usize| match (&value_ends, value_width) {
        (Some(ends), _) => ends[i],
        (None, Some(w)) => values_start + w * (i + 1),
        (None, None) => unreachable!("one of the two is set"),
    };
    let mut out = Vec::with_capacity(n);
    let (mut key_at, mut value_at) = (keys_start, values_start);
    for i in 0..n {
        let (k, v) = (key_end(i), value_end(i));
        if k < key_at || v < value_at {
            return None;
        }
        out.push((page.get(key_at..k)?, page.get(value_at..v)?));
        (key_at, value_at) = (k, v);
    }
    Some(out)
}

/// Entries under u64 keys: event records and the index of complete events.
fn fixed_keys(entries: &[(&[u8], &[u8])], pointed: &Pointed<'_>, seen: &mut Seen) -> bool {
    let mut kept = false;
    for (key, value) in entries {
        // Only sealed values prove themselves (an unsealed one would be read unchecked).
        let Ok(key) = <[u8; 8]>::try_from(*key) else { return kept };
        if !value.starts_with(&checksum::MAGIC) {
            continue;
        }
        let key = u64::from_le_bytes(key);
        let id =
            checksum::matching_id(value, key, |id| checksum::event_key(id).to_vec()).unwrap_or(key);
        if let Ok(record) = EventRecord::unseal(id, value) {
            seen.events.entry(id).or_insert(record);
            kept = true;
        } else if let Ok(super::store::Row::At(_)) = super::store::opened(id, value) {
            // A row pointing into the event files: sound, whether or not the record it points
            // at can be read there.
            if let Some(record) = pointed(id, value) {
                seen.events.entry(id).or_insert(record);
            }
            kept = true;
        } else if checksum::unseal(&checksum::completed_key(key), value).is_ok() {
            seen.completed.insert(key);
            kept = true;
        }
    }
    kept
}

/// Reads `[varint length]` of a redb tuple key: (length, bytes used).
fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    match *bytes.first()? {
        n @ 0..=253 => Some((usize::from(n), 1)),
        254 => Some((usize::from(u16::from_le_bytes(bytes.get(1..3)?.try_into().ok()?)), 3)),
        255 => Some((u32::from_le_bytes(bytes.get(1..5)?.try_into().ok()?) as usize, 5)),
    }
}

/// A `(plugin, event id)` key.
fn row_key(key: &[u8]) -> Option<(&str, u64)> {
    let (len, used) = varint(key)?;
    let plugin = std::str::from_utf8(key.get(used..used + len)?).ok()?;
    let id = u64::from_le_bytes(key.get(used + len..)?.try_into().ok()?);
    Some((plugin, id))
}

/// An `(event id, plugin, n)` key.
fn attempt_key(key: &[u8]) -> Option<(u64, &str, u32)> {
    let (len, used) = varint(key)?;
    let id = u64::from_le_bytes(key.get(used..used + 8)?.try_into().ok()?);
    let plugin = std::str::from_utf8(key.get(used + 8..used + 8 + len)?).ok()?;
    let n = u32::from_le_bytes(key.get(used + 8 + len..)?.try_into().ok()?);
    Some((id, plugin, n))
}

/// Whether `text` could be a portal id or a token: short, ASCII, no spaces or punctuation
/// beyond `-_.`.
fn plain(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Entries under variable keys: pending rows, dead letters, attempts (sealed), and tokens,
/// OAuth tokens and named state (by their shape).
fn variable_keys(entries: &[(&[u8], &[u8])], seen: &mut Seen) -> bool {
    let mut kept = false;
    for (key, value) in entries {
        if let Some((plugin, key_id)) = row_key(key) {
            let id = checksum::matching_id(value, key_id, |id| checksum::row_key(plugin, id))
                .unwrap_or(key_id);
            if value.starts_with(&checksum::MAGIC)
                && let Ok(body) = checksum::unseal(&checksum::row_key(plugin, id), value)
            {
                if let Ok(state) = serde_json::from_slice::<Pending>(body) {
                    let slot = seen.pending.entry((plugin.to_owned(), id)).or_default();
                    if (state.attempts, state.crashes) >= (slot.attempts, slot.crashes) {
                        *slot = state;
                    }
                    kept = true;
                    continue;
                }
                if let Ok(letter) = serde_json::from_slice::<DeadLetter>(body) {
                    let slot = seen.dead.entry((plugin.to_owned(), id)).or_insert(letter.clone());
                    if letter.at_ms > slot.at_ms {
                        *slot = letter;
                    }
                    kept = true;
                    continue;
                }
            }
        }
        if let Some((id, plugin, n)) = attempt_key(key)
            && value.starts_with(&checksum::MAGIC)
            && let Ok(attempt) = store::unseal_attempt(id, plugin, n, value)
        {
            let at = attempt.at_ms;
            let last = seen.attempted.entry((id, plugin.to_owned())).or_insert(at);
            *last = (*last).max(at);
            if matches!(attempt.outcome.as_str(), "done" | "skipped") {
                let done = seen.finished.entry((id, plugin.to_owned())).or_insert(at);
                *done = (*done).max(at);
            }
            kept = true;
            continue;
        }
        let (Ok(name), false) = (std::str::from_utf8(key), value.starts_with(&checksum::MAGIC))
        else {
            continue;
        };
        if name.contains(':') && plain(&name.replace(':', "")) {
            seen.state.insert(name.to_owned(), value.to_vec());
            kept = true;
        } else if value.starts_with(b"{") {
            let Ok(json) = serde_json::from_slice::<serde_json::Value>(value) else { continue };
            if plain(name) && json["access_token"].is_string() && json["refresh_token"].is_string()
            {
                let expires = json["expires"].as_i64().unwrap_or(0);
                let slot = seen.oauth.entry(name.to_owned()).or_insert((expires, value.to_vec()));
                if expires > slot.0 {
                    *slot = (expires, value.to_vec());
                }
                kept = true;
            }
        } else if let Ok(token) = std::str::from_utf8(value)
            && plain(name)
            && plain(token)
            && token.len() >= 8
        {
            seen.tokens.insert(name.to_owned(), token.to_owned());
            kept = true;
        }
    }
    kept
}

/// Entries with u64 values: the `next_id` counter and offline keys.
fn counters(entries: &[(&[u8], &[u8])], seen: &mut Seen) -> bool {
    let mut kept = false;
    for (key, value) in entries {
        let Ok(value) = <[u8; 8]>::try_from(*value) else { return kept };
        let value = u64::from_le_bytes(value);
        if *key == b"next_id" {
            seen.next_id = seen.next_id.max(value);
            kept = true;
        } else if *key == store::WAL_APPLIED.as_bytes() {
            seen.wal_applied = seen.wal_applied.max(value);
            kept = true;
        } else if *key == store::COMPLETED_INDEX.as_bytes() {
            seen.indexed = true;
            kept = true;
        } else if key.len() == 16 {
            // Checked against the event it names once every page is read.
            seen.offline_seen.push((key.to_vec(), value));
        }
    }
    kept
}

/// Drops the copies that later ones replaced (see the module docs).
fn reconcile(seen: Seen) -> Found {
    let Seen { events, completed, pending, dead, finished, attempted, .. } = &seen;
    let mut found = Found {
        next_id: seen.next_id.max(events.keys().next_back().map_or(1, |id| id + 1)),
        wal_applied: seen.wal_applied,
        leaves: seen.leaves,
        tokens: seen.tokens.clone(),
        oauth: seen.oauth.iter().map(|(k, (_, v))| (k.clone(), v.clone())).collect(),
        state: seen.state.clone(),
        ..Found::default()
    };
    let finished_after = |id: u64, plugin: &str, at: i64| {
        finished.get(&(id, plugin.to_owned())).is_some_and(|t| *t >= at)
    };
    for ((plugin, id), letter) in dead {
        // A letter replayed and then finished, or purged (the event became complete).
        if completed.contains(id) || finished_after(*id, plugin, letter.at_ms) {
            found.stale += 1;
        } else {
            found.dead.insert((plugin.clone(), *id), letter.clone());
        }
    }
    for ((plugin, id), state) in pending {
        let replayed_since = |letter: &DeadLetter| {
            attempted.get(&(*id, plugin.clone())).is_some_and(|t| *t > letter.at_ms)
        };
        let buried = found.dead.get(&(plugin.clone(), *id));
        if completed.contains(id) || finished_after(*id, plugin, i64::MIN) {
            found.stale += 1;
        } else if let Some(letter) = buried {
            if replayed_since(letter) {
                found.dead.remove(&(plugin.clone(), *id));
                found.pending.insert((plugin.clone(), *id), state.clone());
            }
            found.stale += 1;
        } else {
            found.pending.insert((plugin.clone(), *id), state.clone());
        }
    }
    // An event no row accounts for: complete (its index entry found), or its rows were lost.
    if seen.indexed {
        let mut plugins: BTreeSet<&str> = BTreeSet::new();
        plugins.extend(pending.keys().chain(dead.keys()).map(|(p, _)| p.as_str()));
        plugins.extend(attempted.keys().map(|(_, p)| p.as_str()));
        let held: BTreeSet<u64> =
            found.pending.keys().chain(found.dead.keys()).map(|(_, id)| *id).collect();
        for id in events.keys().filter(|id| !completed.contains(id) && !held.contains(id)) {
            for plugin in &plugins {
                if !finished_after(*id, plugin, i64::MIN) {
                    found.orphans.push(((*plugin).to_owned(), *id));
                }
            }
        }
    }
    for (key, id) in &seen.offline_seen {
        let matches = events.get(id).is_some_and(|r| {
            r.meta.source == Source::Offline
                && crate::journal::dedup::from_hex(&r.meta.dedup_key).as_ref().map(|k| &k[..])
                    == Some(key.as_slice())
        });
        if matches {
            found.offline_seen.insert(key.clone(), *id);
        }
    }
    found.events = seen.events;
    found
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use redb::ReadableDatabase;

    use super::*;
    use crate::journal::admin::Attempt;

    fn record(id: u64) -> EventRecord {
        crate::record::fixture(
            1_000 + id as i64,
            String::new(),
            Bytes::from(format!("event=ONCRMDEALUSERFIELDUPDATE&data[FIELDS][ID]={id}")),
        )
    }

    fn done(n: u32, at_ms: i64) -> Attempt {
        Attempt { n, at_ms, duration_us: 1, outcome: "done".into(), error: String::new() }
    }

    /// A journal whose header is gone (redb refuses it): the pages still give every event, the
    /// rows as they last were (not their older copies), and the tokens.
    #[test]
    fn a_scan_of_the_pages_finds_the_latest_rows_of_a_file_redb_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        {
            let database = store::open(&path).unwrap();
            // Events 1..=600 for a and b, in batches as the writer writes them; a finishes
            // 1..=400 (with its attempt, as the worker records it), b gives up on 50..=60 and
            // finishes 1..=30 (complete: 1..=30 leave the rows of both).
            for batch in 0..20u64 {
                let txn = database.begin_write().unwrap();
                {
                    let mut tables = store::Tables::open(&txn).unwrap();
                    for id in batch * 30 + 1..=batch * 30 + 30 {
                        tables.insert_event(id, &record(id), &[a.clone(), b.clone()]).unwrap();
                    }
                    tables.set_next_id(batch * 30 + 31).unwrap();
                }
                txn.commit().unwrap();
            }
            for id in 1..=400u64 {
                let txn = database.begin_write().unwrap();
                {
                    let mut tables = store::Tables::open(&txn).unwrap();
                    tables.add_attempt("a", id, &done(1, 5_000 + id as i64)).unwrap();
                    tables.complete("a", id).unwrap();
                    if id <= 30 {
                        tables.add_attempt("b", id, &done(1, 5_000 + id as i64)).unwrap();
                        tables.complete("b", id).unwrap();
                    }
                    if (50..=60).contains(&id) {
                        let letter = DeadLetter { reason: "r".into(), attempts: 3, at_ms: 9_000 };
                        tables.bury("b", id, &letter).unwrap();
                    }
                    if id == 7 {
                        let token = b24_plugin_api::Secret::new("51856fefc120afa4b628cc82d3935cce");
                        tables.set_token("a223c6b3710f85df22e9377d6c4f7553", Some(&token)).unwrap();
                        let oauth = br#"{"access_token":"x","refresh_token":"y","expires":5}"#;
                        tables.set_oauth("a223c6b3710f85df22e9377d6c4f7553", oauth).unwrap();
                        tables.set_state("offline_process:a223c6b3", Some(b"p-1")).unwrap();
                    }
                }
                txn.commit().unwrap();
            }
        }
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..PAGE].fill(0);
        std::fs::write(&path, &bytes).unwrap();
        let refused = redb::Builder::new().open(&path).map(|d| d.begin_read().is_ok());
        assert!(refused.is_err(), "redb must refuse the file for this test to mean anything");

        let found = scan(&bytes, &|_, _| None);
        assert_eq!(found.events.len(), 600);
        assert_eq!(found.events[&123], record(123));
        let pending = |plugin: &str| -> Vec<u64> {
            found.pending.keys().filter(|(p, _)| p == plugin).map(|(_, id)| *id).collect()
        };
        assert_eq!(pending("a"), (401..=600).collect::<Vec<_>>());
        let mut b_pending: Vec<u64> = (31..=600).collect();
        b_pending.retain(|id| !(50..=60).contains(id));
        assert_eq!(pending("b"), b_pending);
        let dead: Vec<(String, u64)> = found.dead.keys().cloned().collect();
        assert_eq!(dead, (50..=60).map(|id| ("b".to_owned(), id)).collect::<Vec<_>>());
        assert_eq!(found.next_id, 601);
        // The file held older copies of rows (pages freed and not yet reused), which the checks
        // above prove were left out.
        assert!(found.stale > 0, "no older copies: the reconciling was not tried");
        assert_eq!(
            found.tokens["a223c6b3710f85df22e9377d6c4f7553"],
            "51856fefc120afa4b628cc82d3935cce"
        );
        assert!(found.oauth.contains_key("a223c6b3710f85df22e9377d6c4f7553"));
        assert_eq!(found.state["offline_process:a223c6b3"], b"p-1");
    }
}
