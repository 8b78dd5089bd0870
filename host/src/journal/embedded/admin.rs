//! The embedded backend's answers to the operator's questions and its changes, on the redb
//! tables: per-plugin statistics, listings, one event, dead letters (plain data, see
//! [`crate::journal::admin`]), and replay, purge and skip as operations the writer runs in its
//! next transaction.

use std::collections::{BTreeMap, HashMap};

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    store::{self, DEAD, EVENTS, PENDING, db},
    writer::{AdminOp, Notice},
};
use crate::{
    decode,
    journal::{
        StoreError,
        admin::{
            DeadRow, EventDetail, EventStatus, EventSummary, Page, PluginStats, QUERY_SCAN_LIMIT,
            Query, Selection, Stats, redact_raw, redacted,
        },
        now_ms,
        record::{DeadLetter, EventMeta, EventRecord, Pending, unseal_row},
    },
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

fn record(database: &Database, id: u64) -> Result<Option<EventRecord>, StoreError> {
    Ok(store::event(database, id)?.and_then(Result::ok))
}

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
        let state: Pending = unseal_row(plugin, id, v.value()).unwrap_or_default();
        if state.attempts > 0 || state.crashes > 0 {
            stats.retrying += 1;
        }
        if stats.backlog == 1 {
            let received = db(events_table.get(id))?
                .and_then(|v| EventRecord::unseal(id, v.value()).ok())
                .map(|r| r.meta.received_at_ms);
            stats.oldest_pending_age_ms = received.map(|at| now - at);
        }
    }
    for row in db(db(txn.open_table(DEAD))?.iter())? {
        let (k, _) = db(row)?;
        entry(&mut by_plugin, k.value().0).dead += 1;
    }
    let events =
        redb::ReadableTableMetadata::len(&events_table).map_err(|e| StoreError::Db(e.into()))?;
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

/// One page of `query`: newest first from `before_id`, at most `limit` matches, reading at
/// most `scan_limit` events. Ids grow with time, so the first event older than `since_ms`
/// ends the listing. Damaged records are left out (`journal verify` reports them).
fn scan(
    database: &Database,
    query: &Query,
    limit: usize,
    scan_limit: u64,
) -> Result<Page, StoreError> {
    let txn = db(database.begin_read())?;
    let events = db(txn.open_table(EVENTS))?;
    let pending = db(txn.open_table(PENDING))?;
    let dead = db(txn.open_table(DEAD))?;
    let owners = (store::plugins_in(&pending)?, store::plugins_in(&dead)?);
    let mut out = Vec::new();
    let mut read = 0u64;
    let mut cursor = query.before_id.unwrap_or(u64::MAX);
    let older = |id: u64| -> Result<Option<u64>, StoreError> {
        Ok(db(events.range(..id))?.next_back().is_some().then_some(id))
    };
    loop {
        let mut chunk = Vec::with_capacity(CHUNK);
        for row in db(events.range(..cursor))?.rev().take(CHUNK) {
            let (k, v) = db(row)?;
            chunk.push((k.value(), EventRecord::unseal_meta(k.value(), v.value())));
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
            if read >= scan_limit {
                return Ok(Page { events: out, next_before: older(id)? });
            }
        }
    }
}

/// One page of a filtered listing (the console's events page): see [`Query`]; a `limit` of 0
/// lists 50, more than [`MAX_PAGE`] lists that many.
pub fn query(database: &Database, query: &Query) -> Result<Page, StoreError> {
    let limit = if query.limit == 0 { 50 } else { query.limit.min(MAX_PAGE) };
    scan(database, query, limit, QUERY_SCAN_LIMIT)
}

/// The newest `limit` events, newest first.
pub fn list(database: &Database, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    Ok(scan(database, &Query::default(), limit, u64::MAX)?.events)
}

/// Event `id` in detail, if there is one: its record, its own rows (one look-up per plugin
/// holding any row) and its attempts (one range): never a scan of the tables.
pub fn show(database: &Database, id: u64) -> Result<Option<EventDetail>, StoreError> {
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
    let decoded = match decode::decode(&record.raw, record.meta.format.into()) {
        Ok(event) => redacted(&event),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    let held = (pending_state.keys().cloned().collect(), dead_state.keys().cloned().collect());
    let raw_redacted = redact_raw(&record.raw, record.meta.format);
    Ok(Some(EventDetail {
        summary: summary(id, record.meta, Some(held)),
        decoded,
        pending_state,
        dead_state,
        attempts: store::attempts(database, id)?,
        raw_redacted,
    }))
}

/// Dead letters, of `plugin` only when given, by event id: the dead table (one plugin's range
/// when given) and each letter's event record, nothing else.
pub fn dead(database: &Database, plugin: Option<&str>) -> Result<Vec<DeadRow>, StoreError> {
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
                let (code, member_id) = db(events.get(id))?
                    .and_then(|v| EventRecord::unseal_meta(id, v.value()).ok())
                    .map(|m| (m.code, m.member_id))
                    .unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;

    use super::*;
    use crate::journal::record::{EventMeta, Format, Source};

    fn record(received_at_ms: i64) -> EventRecord {
        EventRecord {
            meta: EventMeta {
                received_at_ms,
                format: Format::Form,
                source: Source::Online,
                code: "ONCRMDEALUSERFIELDUPDATE".into(),
                member_id: "m".into(),
                domain: "d".into(),
                dedup_key: String::new(),
                extra: vec![],
            },
            raw: Bytes::from_static(b"event=ONCRMDEALUSERFIELDUPDATE"),
        }
    }

    /// Runs an operator's change in a transaction of its own.
    fn run(database: &Database, op: AdminOp) -> Vec<(String, u64)> {
        let txn = database.begin_write().unwrap();
        let (rows, _) = op(&txn).unwrap();
        txn.commit().unwrap();
        rows
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
}
