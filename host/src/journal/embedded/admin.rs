//! The embedded backend's answers to the operator's questions and its changes, on the redb
//! tables: per-plugin statistics, listings, one event, dead letters (plain data, see
//! [`crate::journal::admin`]), and replay, purge and skip as operations the writer runs in its
//! next transaction.

use std::{
    collections::{BTreeMap, HashMap},
    time::{Duration, Instant},
};

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    store::{self, DEAD, EVENTS, PENDING, db},
    writer::{AdminOp, Notice},
};
use crate::journal::{
    StoreError,
    admin::{
        DeadPage, DeadQuery, DeadRow, EventDetail, EventStatus, EventSummary, Page, PluginStats,
        QUERY_SCAN_LIMIT, Query, Selection, Stats, cut_page, redact_raw,
    },
    now_ms,
    record::{DeadLetter, EventMeta, EventRecord, Pending, unseal_row},
};

/// Replay: the selected dead letters go back into delivery.
pub fn replay(which: Selection) -> AdminOp {
    Box::new(move |txn: &WriteTransaction| Ok((store::replay(txn, &which)?, Notice::Replayed)))
}

/// Purge: the selected dead letters are deleted.
pub fn purge(which: Selection) -> AdminOp {
    Box::new(move |txn: &WriteTransaction| Ok((store::purge_dead(txn, &which)?, Notice::Nothing)))
}

/// Skip: `plugin`'s pending rows of `ids` become its dead letters.
pub fn skip(plugin: String, ids: Vec<u64>) -> AdminOp {
    Box::new(move |txn: &WriteTransaction| {
        Ok((store::skip(txn, &plugin, &ids, now_ms())?, Notice::Skipped))
    })
}

fn record(database: &store::Store, id: u64) -> Result<Option<EventRecord>, StoreError> {
    Ok(store::event(database, id)?.and_then(Result::ok))
}

/// The body of a pending row never tried: `Pending::default()` as stored.
const FRESH_ROW: &[u8] = br#"{"attempts":0,"next_at_ms":0}"#;

/// Counts per plugin in one pass over the pending and dead keys. Pending rows are ordered by
/// (plugin, id) and ids grow with time, so a plugin's first row is its oldest: only that one
/// event's record is read, however long the backlog.
pub fn stats(database: &Database, enabled: &[String]) -> Result<Stats, StoreError> {
    let mut by_plugin: BTreeMap<String, PluginStats> = enabled
        .iter()
        .map(|p| (p.clone(), PluginStats { plugin: p.clone(), ..PluginStats::default() }))
        .collect();
    fn entry<'a>(map: &'a mut BTreeMap<String, PluginStats>, plugin: &str) -> &'a mut PluginStats {
        if !map.contains_key(plugin) {
            let stats = PluginStats { plugin: plugin.to_owned(), ..PluginStats::default() };
            map.insert(plugin.to_owned(), stats);
        }
        map.get_mut(plugin).expect("inserted above")
    }
    let now = now_ms();
    let txn = db(database.begin_read())?;
    let events_table = db(txn.open_table(EVENTS))?;
    for row in db(db(txn.open_table(PENDING))?.iter())? {
        let (k, v) = db(row)?;
        let (plugin, id) = k.value();
        let stats = entry(&mut by_plugin, plugin);
        stats.backlog += 1;
        // Most of a backlog was never tried: its rows hold the fresh state's bytes, which need
        // no parsing to tell.
        let fresh = v.value().get(8..).is_some_and(|body| body == FRESH_ROW);
        if !fresh {
            let state: Pending = unseal_row(plugin, id, v.value()).unwrap_or_default();
            if state.attempts > 0 || state.crashes > 0 {
                stats.retrying += 1;
            }
        }
        if stats.backlog == 1 {
            let received = db(events_table.get(id))?
                .and_then(|v| store::received_and_key(id, v.value()).ok())
                .map(|(at, _)| at);
            stats.oldest_pending_age_ms = received.map(|at| now - at);
        }
    }
    for row in db(db(txn.open_table(DEAD))?.iter())? {
        let (k, _) = db(row)?;
        entry(&mut by_plugin, k.value().0).dead += 1;
    }
    let events = redb::ReadableTableMetadata::len(&events_table).map_err(store::db_error)?;
    Ok(Stats { plugins: by_plugin.into_values().collect(), events })
}

/// The most events one page of a query lists.
pub const MAX_PAGE: usize = 500;

/// Events read per round of a scan: their pending and dead rows are then read as one key range
/// per plugin, rather than one look-up per event and plugin.
const CHUNK: usize = 256;

/// The plugins holding event ids in a range: pending, dead.
type Holders = HashMap<u64, (Vec<String>, Vec<String>)>;

/// Which plugins hold each event of `lo..=hi` pending and dead: keys only, one range per plugin.
fn holders<T: ReadableTable<(&'static str, u64), &'static [u8]>>(
    pending: &T,
    dead: &T,
    owners: &(Vec<String>, Vec<String>),
    lo: u64,
    hi: u64,
) -> Result<Holders, StoreError> {
    let mut out: Holders = HashMap::new();
    for (table, plugins, dead_side) in [(pending, &owners.0, false), (dead, &owners.1, true)] {
        for plugin in plugins {
            for row in db(table.range((plugin.as_str(), lo)..=(plugin.as_str(), hi)))? {
                let id = db(row)?.0.value().1;
                let entry = out.entry(id).or_default();
                if dead_side { &mut entry.1 } else { &mut entry.0 }.push(plugin.clone());
            }
        }
    }
    Ok(out)
}

fn summary(id: u64, meta: EventMeta, held: Option<(Vec<String>, Vec<String>)>) -> EventSummary {
    let (pending, dead) = held.unwrap_or_default();
    EventSummary {
        id,
        received_at_ms: meta.received_at_ms,
        code: meta.code,
        member_id: meta.member_id,
        pending,
        dead,
    }
}

/// Whether an event held as `pending`/`dead` by plugins passes the query's other filters.
fn selected(query: &Query, meta: &EventMeta, pending: bool, dead: bool) -> bool {
    query.member_id.as_deref().is_none_or(|m| m == meta.member_id)
        && query.code.as_deref().is_none_or(|c| c.eq_ignore_ascii_case(&meta.code))
        && query.until_ms.is_none_or(|until| meta.received_at_ms < until)
        && query.status.is_none_or(|status| match status {
            EventStatus::Pending => pending,
            EventStatus::Dead => dead,
            EventStatus::Done => !pending && !dead,
        })
}

/// The first event received at or after `ms`, found by bisecting the ids (they grow with
/// time): a few dozen look-ups however long the journal. A damaged record counts as recent.
fn first_received_at<T: ReadableTable<u64, &'static [u8]>>(
    events: &T,
    ms: i64,
) -> Result<Option<u64>, StoreError> {
    let (Some(first), Some(last)) = (db(events.first())?, db(events.last())?) else {
        return Ok(None);
    };
    let (mut lo, mut hi) = (first.0.value(), last.0.value().saturating_add(1));
    drop((first, last));
    let mut best = None;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let found = match db(events.range(mid..hi))?.next() {
            Some(row) => {
                let (k, v) = db(row)?;
                let at =
                    store::received_and_key(k.value(), v.value()).map_or(i64::MAX, |(at, _)| at);
                Some((k.value(), at))
            }
            None => None,
        };
        match found {
            None => hi = mid,
            Some((id, at)) if at >= ms => {
                best = Some(id);
                hi = mid;
            }
            Some((id, _)) => lo = id + 1,
        }
    }
    Ok(best)
}

/// One page of `query`: newest first from `before_id`, at most `limit` matches, reading at
/// most `scan_limit` events. Ids grow with time, so the first event older than `since_ms`
/// ends the listing. Damaged records are left out (`journal verify` reports them).
fn scan(
    database: &store::Store,
    query: &Query,
    limit: usize,
    scan_limit: u64,
    deadline: Option<Instant>,
) -> Result<Page, StoreError> {
    let txn = db(database.begin_read())?;
    let events = db(txn.open_table(EVENTS))?;
    let pending = db(txn.open_table(PENDING))?;
    let dead = db(txn.open_table(DEAD))?;
    let owners = (store::plugins_in(&pending)?, store::plugins_in(&dead)?);
    let mut out = Vec::new();
    let mut read = 0u64;
    let mut cursor = query.before_id.unwrap_or(u64::MAX);
    // Everything from the first event received at `until` on is left out: start below it.
    if let Some(until) = query.until_ms
        && let Some(first) = first_received_at(&events, until)?
    {
        cursor = cursor.min(first);
    }
    let older = |id: u64| -> Result<Option<u64>, StoreError> {
        Ok(db(events.range(..id))?.next_back().is_some().then_some(id))
    };
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        for row in db(events.range(..cursor))?.rev().take(CHUNK) {
            let (k, v) = db(row)?;
            chunk.push((k.value(), database.meta(k.value(), v.value())));
        }
        let (Some(&(hi, _)), Some(&(lo, _))) = (chunk.first(), chunk.last()) else {
            return Ok(Page { events: out, next_before: None });
        };
        let mut held = holders(&pending, &dead, &owners, lo, hi)?;
        for (id, meta) in chunk {
            read += 1;
            cursor = id;
            if let Ok(meta) = meta {
                if query.since_ms.is_some_and(|since| meta.received_at_ms < since) {
                    return Ok(Page { events: out, next_before: None });
                }
                let rows = held.remove(&id);
                let (p, d) =
                    rows.as_ref().map_or((false, false), |(p, d)| (!p.is_empty(), !d.is_empty()));
                if selected(query, &meta, p, d) {
                    out.push(summary(id, meta, rows));
                    if out.len() >= limit {
                        return Ok(Page { events: out, next_before: older(id)? });
                    }
                }
            }
            if read >= scan_limit
                || (read % 64 == 0 && deadline.is_some_and(|d| Instant::now() >= d))
            {
                return Ok(Page { events: out, next_before: older(id)? });
            }
        }
    }
}

/// How long one page's scan may read before it answers with what it found and where to go on
/// (besides [`QUERY_SCAN_LIMIT`]): a console page answers in time on a slow disk or a busy
/// machine too.
pub const QUERY_TIME_BUDGET: Duration = Duration::from_millis(50);

/// One page of a filtered listing (the console's events page): see [`Query`]; a `limit` of 0
/// lists 50, more than [`MAX_PAGE`] lists that many. The scan also stops after
/// [`QUERY_TIME_BUDGET`].
pub fn query(database: &store::Store, query: &Query) -> Result<Page, StoreError> {
    let limit = if query.limit == 0 { 50 } else { query.limit.min(MAX_PAGE) };
    scan(database, query, limit, QUERY_SCAN_LIMIT, Some(Instant::now() + QUERY_TIME_BUDGET))
}

/// The newest `limit` events, newest first.
pub fn list(database: &store::Store, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    Ok(scan(database, &Query::default(), limit, u64::MAX, None)?.events)
}

/// Event `id` in detail, if there is one: its record, its own rows (one look-up per plugin
/// holding any row) and its attempts (one range): never a scan of the tables.
pub fn show(database: &store::Store, id: u64) -> Result<Option<EventDetail>, StoreError> {
    let Some(record) = record(database, id)? else { return Ok(None) };
    let txn = db(database.begin_read())?;
    let pending = db(txn.open_table(PENDING))?;
    let dead = db(txn.open_table(DEAD))?;
    let mut pending_state = BTreeMap::new();
    for plugin in store::plugins_in(&pending)? {
        if let Some(v) = db(pending.get((plugin.as_str(), id)))? {
            pending_state
                .insert(plugin.clone(), unseal_row(&plugin, id, v.value()).unwrap_or_default());
        }
    }
    let mut dead_state = BTreeMap::new();
    for plugin in store::plugins_in(&dead)? {
        if let Some(v) = db(dead.get((plugin.as_str(), id)))? {
            let letter: DeadLetter = unseal_row(&plugin, id, v.value()).unwrap_or_else(|e| {
                DeadLetter { reason: format!("dead letter {e}"), attempts: 0, at_ms: 0 }
            });
            dead_state.insert(plugin.clone(), letter);
        }
    }
    let held = (pending_state.keys().cloned().collect(), dead_state.keys().cloned().collect());
    let raw_redacted = redact_raw(&record.raw, record.meta.format);
    Ok(Some(EventDetail {
        summary: summary(id, record.meta.clone(), Some(held)),
        decoded: serde_json::Value::Null,
        pending_state,
        dead_state,
        attempts: store::attempts(database, id)?,
        raw_redacted,
        record: Some(record),
    }))
}

/// A dead letter's event code and portal from its event's record; empty when the record is
/// missing or damaged. Read apart from the listing: a record damaged so that the storage
/// library fails on it (often the very reason its event is a dead letter) ended the listing
/// there, and the letters after it were not shown.
fn code_and_member(
    database: &store::Store,
    events: &redb::ReadOnlyTable<u64, &'static [u8]>,
    id: u64,
) -> (String, String) {
    store::guard("reading a dead letter's event record", || {
        Ok(db(events.get(id))?.and_then(|v| database.meta(id, v.value()).ok()))
    })
    .ok()
    .flatten()
    .map(|m| (m.code, m.member_id))
    .unwrap_or_default()
}

/// Dead letters, of `plugin` only when given, by event id: the dead table (one plugin's range
/// when given) and each letter's event record, nothing else.
pub fn dead(database: &store::Store, plugin: Option<&str>) -> Result<Vec<DeadRow>, StoreError> {
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(DEAD))?;
    let events = db(txn.open_table(EVENTS))?;
    let rows = match plugin {
        Some(p) => db(table.range((p, 0)..=(p, u64::MAX)))?,
        None => db(table.iter())?,
    };
    let mut out = Vec::new();
    let listed =
        store::guard("listing dead letters", || {
            for row in rows {
                let (k, v) = db(row)?;
                let (p, id) = k.value();
                let letter: DeadLetter = unseal_row(p, id, v.value()).unwrap_or_else(|e| {
                    DeadLetter { reason: format!("dead letter {e}"), attempts: 0, at_ms: 0 }
                });
                let (code, member_id) = code_and_member(database, &events, id);
                out.push(DeadRow { plugin: p.to_owned(), id, code, member_id, dead: letter });
            }
            Ok(())
        });
    if let Err(e) = listed {
        tracing::error!(
            "the journal is unreadable past a point: {e}; run `b24-host journal verify`"
        );
    }
    out.sort_by(|a, b| (a.id, &a.plugin).cmp(&(b.id, &b.plugin)));
    Ok(out)
}

/// One page of dead letters, newest event first: per plugin a backward range read of its keys
/// below `before_id`, merged; the count reads keys and values (no event) of every letter of
/// the plugin(s), which is what lets the console show it before an action runs.
pub fn dead_page(database: &store::Store, query: &DeadQuery) -> Result<DeadPage, StoreError> {
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(DEAD))?;
    let events = db(txn.open_table(EVENTS))?;
    let limit = query.limit.min(500);
    let before = query.before_id.unwrap_or(u64::MAX);
    // (id, plugin, letter) of every matching letter below `before`, newest first, bounded.
    let mut candidates: Vec<(u64, String, DeadLetter)> = Vec::new();
    let mut total = 0u64;
    let counted = store::guard("listing dead letters", || {
        let plugins: Vec<String> = match &query.plugin {
            Some(p) => vec![p.clone()],
            None => store::plugins_in(&table)?,
        };
        for plugin in &plugins {
            let p = plugin.as_str();
            let mut kept = 0usize;
            for row in db(table.range((p, 0)..=(p, u64::MAX)))?.rev() {
                let (k, v) = db(row)?;
                let id = k.value().1;
                let letter: DeadLetter = unseal_row(p, id, v.value()).unwrap_or_else(|e| {
                    DeadLetter { reason: format!("dead letter {e}"), attempts: 0, at_ms: 0 }
                });
                if query.since_ms.is_some_and(|s| letter.at_ms < s) {
                    continue;
                }
                total += 1;
                if id < before && kept <= limit {
                    kept += 1;
                    candidates.push((id, plugin.clone(), letter));
                }
            }
        }
        Ok(())
    });
    if let Err(e) = counted {
        tracing::error!(
            "the journal is unreadable past a point: {e}; run `b24-host journal verify`"
        );
    }
    candidates.sort_by(|a, b| (b.0, &a.1).cmp(&(a.0, &b.1)));
    let next_before = cut_page(&mut candidates, limit, |c| c.0);
    let mut rows = Vec::with_capacity(candidates.len());
    for (id, plugin, dead) in candidates {
        let (code, member_id) = code_and_member(database, &events, id);
        rows.push(DeadRow { plugin, id, code, member_id, dead });
    }
    Ok(DeadPage { rows, next_before, total })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;

    fn record(received_at_ms: i64) -> EventRecord {
        crate::record::fixture(
            received_at_ms,
            String::new(),
            Bytes::from_static(b"event=ONCRMDEALUSERFIELDUPDATE"),
        )
    }

    /// Runs an operator's change in a transaction of its own.
    fn run(database: &Database, op: AdminOp) -> Vec<(String, u64)> {
        let txn = database.begin_write().unwrap();
        let (rows, _) = op(&txn).unwrap();
        txn.commit().unwrap();
        rows
    }

    #[test]
    fn dead_pages_go_newest_event_first_count_every_match_and_never_split_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let database = store::open(&dir.path().join("journal.redb")).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let txn = database.begin_write().unwrap();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            // Events 1..=10 dead for `a` (given up at 1000 * id), 4..=6 also for `b`.
            for id in 1..=10u64 {
                tables.insert_event(id, &record(0), &[a.clone(), b.clone()]).unwrap();
                let dead = DeadLetter { reason: "r".into(), attempts: 1, at_ms: id as i64 * 1000 };
                tables.bury("a", id, &dead).unwrap();
                if (4..=6).contains(&id) {
                    tables.bury("b", id, &dead).unwrap();
                }
            }
        }
        txn.commit().unwrap();
        let page = |plugin: Option<&str>, since_ms, before_id, limit| {
            let query = DeadQuery { plugin: plugin.map(str::to_owned), since_ms, before_id, limit };
            let found = dead_page(&database, &query).unwrap();
            let rows: Vec<(u64, String)> =
                found.rows.iter().map(|r| (r.id, r.plugin.clone())).collect();
            (rows, found.next_before, found.total)
        };
        let ids = |rows: &[(u64, String)]| rows.iter().map(|r| r.0).collect::<Vec<_>>();
        // Every plugin: 13 letters; a page of 6 would end between a's and b's letters of
        // event 5, so it ends after event 6 and the next starts at 5.
        let (rows, next, total) = page(None, None, None, 6);
        assert_eq!((ids(&rows), next, total), (vec![10, 9, 8, 7, 6, 6], Some(6), 13));
        let (rows, next, total) = page(None, None, next, 6);
        assert_eq!((ids(&rows), next, total), (vec![5, 5, 4, 4, 3, 2], Some(2), 13));
        let (rows, next, _) = page(None, None, next, 6);
        assert_eq!((ids(&rows), next), (vec![1], None));
        // One plugin, given up since 5 s: b has 5 and 6, a has 5..=10.
        let (rows, next, total) = page(Some("b"), Some(5_000), None, 50);
        assert_eq!((rows, next, total), (vec![(6, "b".into()), (5, "b".into())], None, 2));
        let (rows, _, total) = page(Some("a"), Some(5_000), None, 0);
        assert_eq!((rows.len(), total), (0, 6), "a count only");
    }

    /// A dead letter whose event record is damaged so that the storage library fails on it
    /// (often why its event is a dead letter) ended `journal dead` there: the letters after it
    /// were not listed, and their events looked lost (damage seed 22: events 574 and 575).
    #[test]
    fn dead_letters_after_one_whose_record_the_library_fails_on_are_still_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let marked = |id: u64| {
            let raw = format!("event=ONCRMDEALUSERFIELDUPDATE&data[FIELDS][ID]=F{id:05}");
            crate::record::fixture(1_000, String::new(), Bytes::from(raw))
        };
        {
            let database = store::open(&path).unwrap();
            let txn = database.begin_write().unwrap();
            {
                let mut tables = store::Tables::open(&txn).unwrap();
                let letter = DeadLetter { reason: "r".into(), attempts: 1, at_ms: 5 };
                for id in 1..=40 {
                    tables.insert_event(id, &marked(id), &[Arc::from("p")]).unwrap();
                    tables.bury("p", id, &letter).unwrap();
                }
            }
            txn.commit().unwrap();
        }
        super::super::damage::first_value_end_in_leaf_of(&path, 10, "F00010");
        let database = store::open(&path).unwrap();
        let listed: Vec<u64> = dead(&database, None).unwrap().iter().map(|r| r.id).collect();
        assert_eq!(listed, (1..=40).collect::<Vec<_>>());
        let query = DeadQuery { limit: 100, ..DeadQuery::default() };
        let page = dead_page(&database, &query).unwrap();
        assert_eq!(page.rows.len(), 40);
    }

    #[test]
    fn a_fresh_pending_row_is_stored_as_stats_expects() {
        let row = crate::journal::record::seal_row("a", 1, &Pending::default());
        assert_eq!(&row[8..], FRESH_ROW);
    }

    #[test]
    fn stats_count_rows_and_age_each_backlog_by_its_oldest_event() {
        let dir = tempfile::tempdir().unwrap();
        let database = store::open(&dir.path().join("journal.redb")).unwrap();
        let now = now_ms();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let txn = database.begin_write().unwrap();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            // Event 1 is 60 s old, 2 is 30 s, 3 is new; `a` gets all three, `b` only 2 and 3.
            tables.insert_event(1, &record(now - 60_000), std::slice::from_ref(&a)).unwrap();
            tables.insert_event(2, &record(now - 30_000), &[a.clone(), b.clone()]).unwrap();
            tables.insert_event(3, &record(now), &[a, b]).unwrap();
            let failed = Pending { attempts: 2, last_error: "x".into(), ..Pending::default() };
            tables.set_pending("a", 3, &failed).unwrap();
            tables
                .bury("b", 3, &DeadLetter { reason: "r".into(), attempts: 1, at_ms: now })
                .unwrap();
        }
        txn.commit().unwrap();
        let enabled = vec!["a".to_owned(), "b".to_owned(), "idle".to_owned()];
        let Stats { plugins, events } = stats(&database, &enabled).unwrap();
        assert_eq!(events, 3);
        let by_name: BTreeMap<&str, &PluginStats> =
            plugins.iter().map(|p| (p.plugin.as_str(), p)).collect();
        let (sa, sb, idle) = (by_name["a"], by_name["b"], by_name["idle"]);
        assert_eq!((sa.backlog, sa.retrying, sa.dead), (3, 1, 0));
        assert_eq!((sb.backlog, sb.retrying, sb.dead), (1, 0, 1));
        assert_eq!((idle.backlog, idle.dead, idle.oldest_pending_age_ms), (0, 0, None));
        let age = |s: &PluginStats| s.oldest_pending_age_ms.unwrap();
        assert!((60_000..65_000).contains(&age(sa)), "{sa:?}");
        assert!((30_000..35_000).contains(&age(sb)), "{sb:?}");
    }

    #[test]
    fn skip_moves_pending_rows_of_one_plugin_to_its_dead_letters_and_replay_brings_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let database = store::open(&dir.path().join("journal.redb")).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let txn = database.begin_write().unwrap();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            tables.insert_event(1, &record(now_ms()), &[a.clone(), b.clone()]).unwrap();
            tables.insert_event(2, &record(now_ms()), &[a, b]).unwrap();
            let crashed = Pending { attempts: 1, crashes: 2, ..Pending::default() };
            tables.set_pending("a", 1, &crashed).unwrap();
        }
        txn.commit().unwrap();
        let moved = run(&database, skip("a".into(), vec![1, 7]));
        assert_eq!(
            crate::journal::admin::Skipped::of("a", &[1, 7], moved),
            crate::journal::admin::Skipped {
                plugin: "a".into(),
                skipped: vec![1],
                not_pending: vec![7]
            }
        );
        let rows = dead(&database, None).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].plugin.as_str(), rows[0].id), ("a", 1));
        assert_eq!(
            (rows[0].dead.reason.as_str(), rows[0].dead.attempts),
            (crate::journal::admin::SKIPPED, 1)
        );
        // The other plugin still has it, and `a` still has event 2.
        let Stats { plugins, .. } = stats(&database, &[]).unwrap();
        let backlog: Vec<(String, u64, u64)> =
            plugins.iter().map(|p| (p.plugin.clone(), p.backlog, p.dead)).collect();
        assert_eq!(backlog, vec![("a".into(), 1, 1), ("b".into(), 2, 0)]);
        // Replay brings it back as a fresh pending row (crashes forgiven too).
        run(
            &database,
            replay(Selection { plugin: Some("a".into()), ids: vec![1], since_ms: None }),
        );
        let detail = show(&database, 1).unwrap().unwrap();
        assert_eq!(detail.pending_state.get("a"), Some(&Pending::default()));
    }

    fn attempt(n: u32, outcome: &str) -> crate::journal::admin::Attempt {
        crate::journal::admin::Attempt {
            n,
            at_ms: 1_000 + i64::from(n),
            duration_us: 10,
            outcome: outcome.into(),
            error: if outcome == "retry" { "busy".into() } else { String::new() },
        }
    }

    /// A record of portal `member`, code `code`, received at `at`.
    fn event_of(member: &str, code: &str, at: i64) -> EventRecord {
        let mut r = record(at);
        r.meta.member_id = member.into();
        r.meta.code = code.into();
        r
    }

    #[test]
    fn attempts_are_kept_per_plugin_bounded_to_the_first_and_latest_and_go_with_the_event() {
        let dir = tempfile::tempdir().unwrap();
        let database = store::open(&dir.path().join("journal.redb")).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let txn = database.begin_write().unwrap();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            tables.insert_event(1, &record(now_ms()), &[a.clone(), b.clone()]).unwrap();
            tables.insert_event(2, &record(now_ms()), std::slice::from_ref(&a)).unwrap();
            for n in 1..=30 {
                tables.add_attempt("a", 1, &attempt(n, "retry")).unwrap();
            }
            tables.add_attempt("b", 1, &attempt(1, "done")).unwrap();
            tables.add_attempt("a", 2, &attempt(1, "done")).unwrap();
            // An attempt of an event that is gone leaves nothing behind.
            tables.add_attempt("a", 99, &attempt(1, "done")).unwrap();
        }
        txn.commit().unwrap();
        let detail = show(&database, 1).unwrap().unwrap();
        let kept: Vec<u32> = detail.attempts["a"].iter().map(|a| a.n).collect();
        let mut expected = vec![1];
        expected.extend(12..=30);
        assert_eq!(kept, expected);
        assert_eq!(kept.len(), crate::journal::admin::MAX_ATTEMPTS_KEPT);
        assert_eq!(detail.attempts["a"][1].error, "busy");
        assert_eq!(detail.attempts["b"], vec![attempt(1, "done")]);
        assert!(store::attempts(&database, 99).unwrap().is_empty());
        // A replayed dead letter's attempts start again from 1 in the worker: numbered on.
        let txn = database.begin_write().unwrap();
        store::Tables::open(&txn).unwrap().add_attempt("b", 1, &attempt(1, "retry")).unwrap();
        txn.commit().unwrap();
        let b_kept: Vec<u32> =
            store::attempts(&database, 1).unwrap()["b"].iter().map(|a| a.n).collect();
        assert_eq!(b_kept, vec![1, 2]);
        // Event 1 finishes for both plugins, event 2 stays pending: pruning everything
        // complete takes event 1's attempts and leaves event 2's.
        let txn = database.begin_write().unwrap();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            tables.complete("a", 1).unwrap();
            tables.complete("b", 1).unwrap();
        }
        txn.commit().unwrap();
        let txn = database.begin_write().unwrap();
        assert_eq!(store::prune(&txn, now_ms() + 10_000, 0, 0, 100).unwrap().deleted, 1);
        txn.commit().unwrap();
        assert!(store::attempts(&database, 1).unwrap().is_empty());
        assert_eq!(store::attempts(&database, 2).unwrap()["a"].len(), 1);
    }

    #[test]
    fn purge_takes_the_dead_letters_attempts_and_since_selects_by_the_letters_time() {
        let dir = tempfile::tempdir().unwrap();
        let database = store::open(&dir.path().join("journal.redb")).unwrap();
        let a: Arc<str> = Arc::from("a");
        let txn = database.begin_write().unwrap();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            for id in 1..=3 {
                tables.insert_event(id, &record(now_ms()), std::slice::from_ref(&a)).unwrap();
                tables.add_attempt("a", id, &attempt(1, "rejected")).unwrap();
                let at_ms = id as i64 * 1_000;
                let letter = DeadLetter { reason: "r".into(), attempts: 1, at_ms };
                tables.bury("a", id, &letter).unwrap();
            }
        }
        txn.commit().unwrap();
        let since = |ms| Selection { plugin: Some("a".into()), ids: vec![], since_ms: Some(ms) };
        // Letters given up at 2 s and 3 s are "since 2 s"; replay puts them back.
        assert_eq!(run(&database, replay(since(2_000))), vec![("a".into(), 2), ("a".into(), 3)]);
        assert_eq!(dead(&database, Some("a")).unwrap().len(), 1);
        // Purge by time leaves a later letter alone; purging it takes its attempts.
        assert!(run(&database, purge(since(5_000))).is_empty());
        assert_eq!(run(&database, purge(since(0))), vec![("a".into(), 1)]);
        assert!(store::attempts(&database, 1).unwrap().is_empty());
        assert_eq!(store::attempts(&database, 2).unwrap()["a"].len(), 1);
    }

    #[test]
    fn show_reads_the_events_own_rows_and_redacts_its_raw_body() {
        let dir = tempfile::tempdir().unwrap();
        let database = store::open(&dir.path().join("journal.redb")).unwrap();
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut r = record(now_ms());
        r.raw = Bytes::from_static(
            b"event=ONCRMDEALUSERFIELDUPDATE&auth%5Bapplication_token%5D=apptok123&data%5Bnote%5D=apptok123",
        );
        let txn = database.begin_write().unwrap();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            tables.insert_event(1, &r, &[a.clone(), b.clone()]).unwrap();
            tables.insert_event(2, &record(now_ms()), &[a, b]).unwrap();
            tables.bury("b", 1, &DeadLetter { reason: "r".into(), attempts: 1, at_ms: 5 }).unwrap();
            tables.add_attempt("b", 1, &attempt(1, "rejected")).unwrap();
        }
        txn.commit().unwrap();
        let detail = show(&database, 1).unwrap().unwrap();
        assert_eq!(detail.summary.pending, vec!["a".to_owned()]);
        assert_eq!(detail.summary.dead, vec!["b".to_owned()]);
        assert_eq!(detail.dead_state["b"].reason, "r");
        assert_eq!(detail.attempts.keys().collect::<Vec<_>>(), vec!["b"]);
        assert!(!detail.raw_redacted.contains("apptok123"), "{}", detail.raw_redacted);
        assert!(detail.raw_redacted.starts_with("event=ONCRMDEALUSERFIELDUPDATE&"));
        assert!(show(&database, 3).unwrap().is_none());
    }

    /// Ids 1..=n: portal `p{id % 2}`, code `A` for ids divisible by 3, else `B`; received at
    /// `id` s; pending for `a` when divisible by 5, dead for `a` when divisible by 7.
    fn fill(database: &Database, n: u64) {
        let a: Arc<str> = Arc::from("a");
        let txn = database.begin_write().unwrap();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            for id in 1..=n {
                let code = if id % 3 == 0 { "A" } else { "B" };
                let r = event_of(&format!("p{}", id % 2), code, id as i64 * 1_000);
                let plugins = if id % 5 == 0 || id % 7 == 0 { vec![a.clone()] } else { vec![] };
                tables.insert_event(id, &r, &plugins).unwrap();
                if id % 7 == 0 && id % 5 != 0 {
                    let letter = DeadLetter { reason: "r".into(), attempts: 1, at_ms: 0 };
                    tables.bury("a", id, &letter).unwrap();
                }
            }
        }
        txn.commit().unwrap();
    }

    fn ids(page: &Page) -> Vec<u64> {
        page.events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn query_filters_pages_newest_first_and_stops_at_the_scan_limit() {
        let dir = tempfile::tempdir().unwrap();
        let database = store::open(&dir.path().join("journal.redb")).unwrap();
        fill(&database, 1_000);
        let q = |f: &dyn Fn(&mut Query)| {
            let mut q = Query { limit: 3, ..Query::default() };
            f(&mut q);
            query(&database, &q).unwrap()
        };
        let page = q(&|_| {});
        assert_eq!((ids(&page), page.next_before), (vec![1_000, 999, 998], Some(998)));
        let page = q(&|q| q.before_id = Some(998));
        assert_eq!(ids(&page), vec![997, 996, 995]);
        let page = q(&|q| q.code = Some("a".into()));
        assert_eq!(ids(&page), vec![999, 996, 993]);
        let page = q(&|q| q.member_id = Some("p1".into()));
        assert_eq!(ids(&page), vec![999, 997, 995]);
        let page = q(&|q| q.status = Some(EventStatus::Pending));
        assert_eq!(ids(&page), vec![1_000, 995, 990]);
        assert_eq!(page.events[0].pending, vec!["a".to_owned()]);
        let page = q(&|q| q.status = Some(EventStatus::Dead));
        assert_eq!(ids(&page), vec![994, 987, 973]);
        assert_eq!(page.events[0].dead, vec!["a".to_owned()]);
        let page = q(&|q| q.status = Some(EventStatus::Done));
        assert_eq!(ids(&page), vec![999, 998, 997]);
        let page = q(&|q| q.until_ms = Some(500_000));
        assert_eq!(ids(&page), vec![499, 498, 497]);
        // Found by bisection, not by reading the newer events: a small scan limit reaches it.
        let until = Query { until_ms: Some(200_500), ..Query::default() };
        assert_eq!(ids(&scan(&database, &until, 2, 5, None).unwrap()), vec![200, 199]);
        let events = {
            let txn = database.begin_read().unwrap();
            let table = txn.open_table(EVENTS).unwrap();
            [0, 1_000, 1_001, 999_999, 1_000_000, 1_000_001]
                .map(|ms| first_received_at(&table, ms).unwrap())
        };
        assert_eq!(events, [Some(1), Some(1), Some(2), Some(1_000), Some(1_000), None]);
        // Since: the first older event ends the listing, with nothing older to page to.
        let page = q(&|q| {
            q.since_ms = Some(998_000);
            q.limit = 10;
        });
        assert_eq!((ids(&page), page.next_before), (vec![1_000, 999, 998], None));
        // The last page: no older events, no next page.
        let page = q(&|q| q.before_id = Some(3));
        assert_eq!((ids(&page), page.next_before), (vec![2, 1], None));
        // A filter that matches nothing reads at most the scan limit, then says where to go on.
        let none = Query { code: Some("none".into()), ..Query::default() };
        let page = scan(&database, &none, 3, 100, None).unwrap();
        assert_eq!((ids(&page), page.next_before), (vec![], Some(901)));
        // Following `next_before` (pages may also end at the time budget) reaches the oldest.
        let mut before = None;
        let mut reached = false;
        for _ in 0..1_000 {
            let page = q(&|q| {
                q.code = Some("none".into());
                q.before_id = before;
            });
            assert!(page.events.is_empty());
            match page.next_before {
                Some(next) => before = Some(next),
                None => {
                    reached = true;
                    break;
                }
            }
        }
        assert!(reached, "stuck at {before:?}");
        // `list` is the unfiltered listing.
        assert_eq!(
            list(&database, 2).unwrap().iter().map(|e| e.id).collect::<Vec<_>>(),
            vec![1_000, 999]
        );
    }

    /// Not a timed assertion: prints what the console's reads cost on 100,000 events (run with
    /// `--nocapture` to see it; a debug build is several times slower than a release one).
    #[test]
    fn console_reads_on_100000_events_touch_only_what_they_show() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal.redb");
        let database = store::open(&path).unwrap();
        fill(&database, 100_000);
        let txn = database.begin_write().unwrap();
        let started = std::time::Instant::now();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            for id in 90_001..=100_000 {
                for n in 1..=3 {
                    tables.add_attempt("probe", id, &attempt(n, "retry")).unwrap();
                }
            }
        }
        println!("add_attempt: {:?} per row (30,000 rows)", started.elapsed() / 30_000);
        txn.commit().unwrap();
        // For comparison, the outcome row a failed attempt writes anyway (a pending state).
        let txn = database.begin_write().unwrap();
        let started = std::time::Instant::now();
        {
            let mut tables = store::Tables::open(&txn).unwrap();
            let failed = Pending { attempts: 1, last_error: "busy".into(), ..Pending::default() };
            for id in (90_005..=100_000).step_by(5) {
                tables.set_pending("a", id, &failed).unwrap();
            }
        }
        println!("set_pending: {:?} per row (2,000 rows)", started.elapsed() / 2_000);
        txn.commit().unwrap();
        let time = |what: &str, f: &dyn Fn()| {
            let started = std::time::Instant::now();
            f();
            println!("{what}: {:?}", started.elapsed());
        };
        time("query, first page of 50", &|| {
            assert_eq!(
                query(&database, &Query { limit: 50, ..Query::default() }).unwrap().events.len(),
                50
            )
        });
        time("query, status dead, 50", &|| {
            let q = Query { limit: 50, status: Some(EventStatus::Dead), ..Query::default() };
            assert_eq!(query(&database, &q).unwrap().events.len(), 50)
        });
        time("query matching nothing (scan limit)", &|| {
            let q = Query { limit: 50, code: Some("none".into()), ..Query::default() };
            let page = query(&database, &q).unwrap();
            println!("  (read down to id {:?})", page.next_before);
            assert!(page.next_before.is_some_and(|id| id >= 80_001))
        });
        time("query until the 10,000th event's time, 50", &|| {
            let q = Query { limit: 50, until_ms: Some(10_000_000), ..Query::default() };
            assert_eq!(query(&database, &q).unwrap().events[0].id, 9_999)
        });
        time("show", &|| {
            assert_eq!(show(&database, 99_999).unwrap().unwrap().attempts["probe"].len(), 3)
        });
        time("dead of a", &|| assert!(!dead(&database, Some("a")).unwrap().is_empty()));
        time("stats", &|| assert_eq!(stats(&database, &[]).unwrap().events, 100_000));
        let txn = database.begin_read().unwrap();
        let table = txn.open_table(store::ATTEMPTS).unwrap();
        let stats = redb::ReadableTableMetadata::stats(&table).unwrap();
        let bytes = stats.stored_bytes() + stats.metadata_bytes() + stats.fragmented_bytes();
        println!(
            "attempt rows: 30,000 rows take {bytes} bytes (~{} each; stored {}, metadata {}, fragmented {})",
            bytes / 30_000,
            stats.stored_bytes(),
            stats.metadata_bytes(),
            stats.fragmented_bytes()
        );
    }
}
