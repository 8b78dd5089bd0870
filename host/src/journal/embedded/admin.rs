//! The embedded backend's answers to the operator's questions and its changes, on the redb
//! tables: per-plugin statistics, listings, one event, dead letters (plain data, see
//! [`crate::journal::admin`]), and replay, purge and skip as operations the writer runs in its
//! next transaction.

use std::collections::BTreeMap;

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};

use super::{
    store::{self, DEAD, EVENTS, PENDING, db},
    writer::{AdminOp, Notice},
};
use crate::{
    decode,
    journal::{
        StoreError,
        admin::{DeadRow, EventDetail, EventSummary, PluginStats, Selection, Stats, redacted},
        now_ms,
        record::{DeadLetter, EventRecord, Pending, unseal_row},
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

/// One event's rows: per plugin pending, per plugin dead.
type EventRows = (Vec<(String, Pending)>, Vec<(String, DeadLetter)>);
type Rows = BTreeMap<u64, EventRows>;

/// Every pending and dead row, by event id. A table that becomes unreadable part-way (a damaged
/// page) gives the rows before it, with an ERROR line: a listing, not a verdict (`journal
/// verify` gives that).
fn rows(database: &Database) -> Result<Rows, StoreError> {
    let txn = db(database.begin_read())?;
    let mut out: Rows = BTreeMap::new();
    let pending = store::guard("listing pending rows", || {
        for row in db(db(txn.open_table(PENDING))?.iter())? {
            let (k, v) = db(row)?;
            let (plugin, id) = k.value();
            let state = unseal_row(plugin, id, v.value()).unwrap_or_default();
            out.entry(id).or_default().0.push((plugin.to_owned(), state));
        }
        Ok(())
    });
    let dead = store::guard("listing dead letters", || {
        for row in db(db(txn.open_table(DEAD))?.iter())? {
            let (k, v) = db(row)?;
            let (plugin, id) = k.value();
            let dead: DeadLetter = unseal_row(plugin, id, v.value()).unwrap_or_else(|e| {
                DeadLetter { reason: format!("dead letter {e}"), attempts: 0, at_ms: 0 }
            });
            out.entry(id).or_default().1.push((plugin.to_owned(), dead));
        }
        Ok(())
    });
    for e in [pending, dead].into_iter().filter_map(Result::err) {
        tracing::error!(
            "the journal is unreadable past a point: {e}; run `b24-host journal verify`"
        );
    }
    Ok(out)
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

fn summary(id: u64, record: &EventRecord, rows: Option<&EventRows>) -> EventSummary {
    EventSummary {
        id,
        received_at_ms: record.meta.received_at_ms,
        code: record.meta.code.clone(),
        member_id: record.meta.member_id.clone(),
        pending: rows.map(|r| r.0.iter().map(|(p, _)| p.clone()).collect()).unwrap_or_default(),
        dead: rows.map(|r| r.1.iter().map(|(p, _)| p.clone()).collect()).unwrap_or_default(),
    }
}

/// The newest `limit` events, newest first.
pub fn list(database: &Database, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
    let rows = rows(database)?;
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(EVENTS))?;
    let mut events = Vec::new();
    for row in db(table.iter())?.rev().take(limit) {
        let (k, v) = db(row)?;
        let id = k.value();
        if let Ok(record) = EventRecord::unseal(id, v.value()) {
            events.push(summary(id, &record, rows.get(&id)));
        }
    }
    Ok(events)
}

/// Event `id` in detail, if there is one.
pub fn show(database: &Database, id: u64) -> Result<Option<EventDetail>, StoreError> {
    let Some(record) = record(database, id)? else { return Ok(None) };
    let all = rows(database)?;
    let mine = all.get(&id);
    let decoded = match decode::decode(&record.raw, record.meta.format.into()) {
        Ok(event) => redacted(&event),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    Ok(Some(EventDetail {
        summary: summary(id, &record, mine),
        decoded,
        pending_state: mine.map(|r| r.0.iter().cloned().collect()).unwrap_or_default(),
        dead_state: mine.map(|r| r.1.iter().cloned().collect()).unwrap_or_default(),
        // TODO(issue 15, journal helper): attempts table, the raw body redacted.
        attempts: Default::default(),
        raw_redacted: String::new(),
    }))
}

/// Dead letters, of `plugin` only when given.
pub fn dead(database: &Database, plugin: Option<&str>) -> Result<Vec<DeadRow>, StoreError> {
    let mut out = Vec::new();
    for (id, (_, dead)) in rows(database)? {
        for (p, letter) in dead {
            if plugin.is_some_and(|want| want != p) {
                continue;
            }
            let (code, member_id) =
                record(database, id)?.map(|r| (r.meta.code, r.meta.member_id)).unwrap_or_default();
            out.push(DeadRow { plugin: p, id, code, member_id, dead: letter });
        }
    }
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
