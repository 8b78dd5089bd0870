//! What the `journal` commands show and change: per-plugin statistics, event listings, one
//! event in detail (tokens redacted), dead letters, replay and purge, and skip (pending events
//! of one plugin moved to its dead letters by an operator).
//!
//! The same [`Request`]/[`Response`] pair serves a stopped host (the command opens the file
//! itself) and a running one (the command asks the host over its control socket, and the
//! host's writer thread applies changes).

use std::collections::BTreeMap;

use redb::{Database, ReadableDatabase, ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

use super::{
    now_ms,
    record::{DeadLetter, EventRecord, Pending, from_json},
    store::{self, DEAD, EVENTS, PENDING, Selection, StoreError, db},
    writer::{AdminOp, Notice},
};
use crate::decode;

/// A question or change for the journal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "request")]
pub enum Request {
    /// Per-plugin backlog, retrying, dead letters, oldest pending age.
    Stats {
        /// The enabled plugins (listed even with nothing pending).
        enabled: Vec<String>,
    },
    /// The newest events.
    List {
        /// How many.
        limit: usize,
    },
    /// One event in detail.
    Show {
        /// Its id.
        id: u64,
    },
    /// Dead letters.
    Dead {
        /// Only this plugin's.
        plugin: Option<String>,
    },
    /// Put dead letters back into delivery.
    Replay(Selection),
    /// Delete dead letters.
    Purge(Selection),
    /// Move pending events of one plugin to its dead letters ("skipped by an operator").
    Skip {
        /// The plugin.
        plugin: String,
        /// The event ids.
        ids: Vec<u64>,
    },
    /// Offline pollers' status (running host only).
    OfflineStatus,
    /// Subscribe a portal's offline events with `event.bind` (running host only: it has the
    /// portal's tokens and REST client).
    OfflineBind {
        /// The portal's member_id.
        portal: String,
        /// Event codes.
        events: Vec<String>,
    },
}

/// One plugin's numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginStats {
    /// The plugin.
    pub plugin: String,
    /// Events not yet delivered (pending rows).
    pub backlog: u64,
    /// Of those, events that failed or crashed at least once.
    pub retrying: u64,
    /// Dead letters.
    pub dead: u64,
    /// Age of the oldest pending event, ms.
    pub oldest_pending_age_ms: Option<i64>,
    /// The plugin's runner process (process isolation, running host only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner: Option<crate::runner::RunnerState>,
}

/// One line of a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSummary {
    /// Event id.
    pub id: u64,
    /// When it was accepted, ms since the epoch.
    pub received_at_ms: i64,
    /// Event code.
    pub code: String,
    /// Portal.
    pub member_id: String,
    /// Plugins still to deliver to.
    pub pending: Vec<String>,
    /// Plugins that gave up on it.
    pub dead: Vec<String>,
}

/// One event in detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventDetail {
    /// The summary.
    pub summary: EventSummary,
    /// The decoded event with every token redacted.
    pub decoded: serde_json::Value,
    /// Per plugin still pending: attempts and last error.
    pub pending_state: BTreeMap<String, Pending>,
    /// Per plugin dead: why.
    pub dead_state: BTreeMap<String, DeadLetter>,
}

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadRow {
    /// The plugin.
    pub plugin: String,
    /// The event.
    pub id: u64,
    /// Its code.
    pub code: String,
    /// Its portal.
    pub member_id: String,
    /// Why it is dead.
    pub dead: DeadLetter,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "response")]
pub enum Response {
    /// For `Stats`.
    Stats {
        /// One entry per plugin.
        plugins: Vec<PluginStats>,
        /// Events in the journal.
        events: u64,
    },
    /// For `List`.
    List {
        /// Newest first.
        events: Vec<EventSummary>,
    },
    /// For `Show`.
    Show {
        /// `None` when there is no such event.
        event: Option<Box<EventDetail>>,
    },
    /// For `Dead`.
    Dead {
        /// The dead letters.
        rows: Vec<DeadRow>,
    },
    /// For `Replay` and `Purge`: the (plugin, event id) pairs changed.
    Changed {
        /// The pairs.
        rows: Vec<(String, u64)>,
    },
    /// For `Skip`.
    Skipped {
        /// The plugin.
        plugin: String,
        /// The events moved to its dead letters.
        skipped: Vec<u64>,
        /// The ids asked for that had no pending row of the plugin (finished, dead, unknown).
        not_pending: Vec<u64>,
    },
    /// For `OfflineStatus`.
    Offline {
        /// One entry per polled portal.
        portals: Vec<crate::offline::PortalStatus>,
    },
    /// For `OfflineBind`: the codes bound.
    Bound {
        /// The codes.
        events: Vec<String>,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
}

/// Answers a read-only request from the database; `None` for a change.
pub fn read(database: &Database, request: &Request) -> Option<Result<Response, StoreError>> {
    Some(match request {
        Request::Stats { enabled } => stats(database, enabled),
        Request::List { limit } => list(database, *limit),
        Request::Show { id } => show(database, *id),
        Request::Dead { plugin } => dead(database, plugin.as_deref()),
        Request::Replay(_) | Request::Purge(_) | Request::Skip { .. } => return None,
        Request::OfflineStatus | Request::OfflineBind { .. } => Ok(Response::Error {
            message: "the host is not running: offline status and bind need the running host (its pollers, tokens and REST client)".into(),
        }),
    })
}

/// The change a request makes, to run in a write transaction; `None` for a read.
pub fn change(request: &Request) -> Option<AdminOp> {
    match request.clone() {
        Request::Replay(which) => Some(Box::new(move |txn: &WriteTransaction| {
            Ok((store::replay(txn, &which)?, Notice::Replayed))
        })),
        Request::Purge(which) => Some(Box::new(move |txn: &WriteTransaction| {
            Ok((store::purge_dead(txn, &which)?, Notice::Nothing))
        })),
        Request::Skip { plugin, ids } => Some(Box::new(move |txn: &WriteTransaction| {
            Ok((store::skip(txn, &plugin, &ids, now_ms())?, Notice::Skipped))
        })),
        _ => None,
    }
}

/// Runs `request` on a database this process opened itself (the host is not running).
pub fn execute_offline(database: &Database, request: &Request) -> Result<Response, StoreError> {
    if let Some(answer) = read(database, request) {
        return answer;
    }
    let Some(op) = change(request) else {
        return Ok(Response::Error { message: "unknown request".into() });
    };
    let txn = db(database.begin_write())?;
    let (rows, _) = op(&txn)?;
    db(txn.commit())?;
    Ok(changed(request, rows))
}

/// The answer to a change `request` that touched `rows`.
pub fn changed(request: &Request, rows: Vec<(String, u64)>) -> Response {
    match request {
        Request::Skip { plugin, ids } => {
            let skipped: Vec<u64> = rows.into_iter().map(|(_, id)| id).collect();
            let mut not_pending: Vec<u64> =
                ids.iter().copied().filter(|id| !skipped.contains(id)).collect();
            not_pending.dedup();
            Response::Skipped { plugin: plugin.clone(), skipped, not_pending }
        }
        _ => Response::Changed { rows },
    }
}

/// One event's rows: per plugin pending, per plugin dead.
type EventRows = (Vec<(String, Pending)>, Vec<(String, DeadLetter)>);
type Rows = BTreeMap<u64, EventRows>;

/// Every pending and dead row, by event id.
fn rows(database: &Database) -> Result<Rows, StoreError> {
    let txn = db(database.begin_read())?;
    let mut out: Rows = BTreeMap::new();
    for row in db(db(txn.open_table(PENDING))?.iter())? {
        let (k, v) = db(row)?;
        let (plugin, id) = k.value();
        out.entry(id).or_default().0.push((plugin.to_owned(), from_json(v.value())));
    }
    for row in db(db(txn.open_table(DEAD))?.iter())? {
        let (k, v) = db(row)?;
        let (plugin, id) = k.value();
        let dead: DeadLetter = serde_json::from_slice(v.value()).unwrap_or(DeadLetter {
            reason: "unreadable dead letter".into(),
            attempts: 0,
            at_ms: 0,
        });
        out.entry(id).or_default().1.push((plugin.to_owned(), dead));
    }
    Ok(out)
}

fn record(database: &Database, id: u64) -> Result<Option<EventRecord>, StoreError> {
    store::event(database, id)
}

/// Counts per plugin in one pass over the pending and dead keys. Pending rows are ordered by
/// (plugin, id) and ids grow with time, so a plugin's first row is its oldest: only that one
/// event's record is read, however long the backlog.
fn stats(database: &Database, enabled: &[String]) -> Result<Response, StoreError> {
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
        let state = from_json::<Pending>(v.value());
        if state.attempts > 0 || state.crashes > 0 {
            stats.retrying += 1;
        }
        if stats.backlog == 1 {
            let received = db(events_table.get(id))?
                .and_then(|v| EventRecord::decode(v.value()))
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
    Ok(Response::Stats { plugins: by_plugin.into_values().collect(), events })
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

fn list(database: &Database, limit: usize) -> Result<Response, StoreError> {
    let rows = rows(database)?;
    let txn = db(database.begin_read())?;
    let table = db(txn.open_table(EVENTS))?;
    let mut events = Vec::new();
    for row in db(table.iter())?.rev().take(limit) {
        let (k, v) = db(row)?;
        let id = k.value();
        if let Some(record) = EventRecord::decode(v.value()) {
            events.push(summary(id, &record, rows.get(&id)));
        }
    }
    Ok(Response::List { events })
}

fn show(database: &Database, id: u64) -> Result<Response, StoreError> {
    let Some(record) = record(database, id)? else { return Ok(Response::Show { event: None }) };
    let all = rows(database)?;
    let mine = all.get(&id);
    let decoded = match decode::decode(&record.raw, record.meta.format.into()) {
        Ok(event) => redacted(&event),
        Err(e) => serde_json::json!({ "error": e.to_string() }),
    };
    Ok(Response::Show {
        event: Some(Box::new(EventDetail {
            summary: summary(id, &record, mine),
            decoded,
            pending_state: mine.map(|r| r.0.iter().cloned().collect()).unwrap_or_default(),
            dead_state: mine.map(|r| r.1.iter().cloned().collect()).unwrap_or_default(),
        })),
    })
}

/// The decoded event as JSON, tokens replaced by `<redacted>`.
pub fn redacted(event: &decode::Decoded) -> serde_json::Value {
    let auth = &event.auth;
    let hidden = |present: bool| {
        if present { serde_json::json!("<redacted>") } else { serde_json::Value::Null }
    };
    serde_json::json!({
        "event": event.code,
        "event_handler_id": event.handler_id,
        "ts": event.ts,
        "data": event.data.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
        "auth": {
            "member_id": auth.member_id,
            "domain": auth.domain,
            "client_endpoint": auth.client_endpoint,
            "server_endpoint": auth.server_endpoint,
            "status": auth.status,
            "application_token": hidden(!auth.application_token.is_empty()),
            "user_id": auth.user.as_ref().map(|u| u.user_id.map_or(serde_json::json!("unknown"), |id| serde_json::json!(id))),
            "scope": auth.user.as_ref().map(|u| u.scope.clone()),
            "access_token": hidden(auth.user.is_some()),
            "refresh_token": hidden(auth.refresh_token.is_some()),
        },
    })
}

fn dead(database: &Database, plugin: Option<&str>) -> Result<Response, StoreError> {
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
    Ok(Response::Dead { rows: out })
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
        let Some(Ok(Response::Stats { plugins, events })) =
            read(&database, &Request::Stats { enabled })
        else {
            panic!("no stats");
        };
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
        let skip = Request::Skip { plugin: "a".into(), ids: vec![1, 7] };
        let answer = execute_offline(&database, &skip).unwrap();
        assert_eq!(
            answer,
            Response::Skipped { plugin: "a".into(), skipped: vec![1], not_pending: vec![7] }
        );
        let Response::Dead { rows } = dead(&database, None).unwrap() else { panic!() };
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].plugin.as_str(), rows[0].id), ("a", 1));
        assert_eq!((rows[0].dead.reason.as_str(), rows[0].dead.attempts), (store::SKIPPED, 1));
        // The other plugin still has it, and `a` still has event 2.
        let Some(Ok(Response::Stats { plugins, .. })) =
            read(&database, &Request::Stats { enabled: vec![] })
        else {
            panic!()
        };
        let backlog: Vec<(String, u64, u64)> =
            plugins.iter().map(|p| (p.plugin.clone(), p.backlog, p.dead)).collect();
        assert_eq!(backlog, vec![("a".into(), 1, 1), ("b".into(), 2, 0)]);
        // Replay brings it back as a fresh pending row (crashes forgiven too).
        let replay = Request::Replay(Selection { plugin: Some("a".into()), ids: vec![1] });
        execute_offline(&database, &replay).unwrap();
        let Some(Ok(Response::Show { event: Some(detail) })) =
            read(&database, &Request::Show { id: 1 })
        else {
            panic!()
        };
        assert_eq!(detail.pending_state.get("a"), Some(&Pending::default()));
    }
}
