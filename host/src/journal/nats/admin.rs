//! The operator's view of the log: stats, listings, dead letters, replay, purge, skip, as the
//! plain data of `journal::admin`. Every host shares the log, so these work the same from any
//! host and from a `journal` command with no host running.
//!
//! Where the numbers come from:
//! - backlog, retrying: each plugin's durable consumer (`<S>_<plugin>`): `num_pending` (not yet
//!   delivered) + `num_ack_pending` (in flight), and `num_redelivered`. The consumer counts
//!   every event on its subjects, also those not addressed to its plugin (a host acks those at
//!   once): with no host running, the backlog is an upper bound.
//! - dead letters: the subjects of `<S>_DEAD`, counted by the server per subject.
//! - listings: the messages still in the events stream (its retention is interest: an event
//!   every plugin finished is gone, while its dead letters keep a copy); an event is pending
//!   for a plugin it is addressed to (`B24-Plugins`) while its sequence is above the plugin
//!   consumer's ack floor.
//!
//! Replay, purge and skip follow the contract: a replay is published to
//! `b24.<S>.replay.<plugin>.<member>.<code>` (only that plugin's consumer reads it) with the
//! original event id kept in `B24-Event-Id` and a new `Nats-Msg-Id` (`replay:<plugin>:<dead
//! seq>`, so it is not taken for a duplicate of the original), and then the dead letter is
//! deleted; a skip stores the dead letter, marks `skip.<plugin>.<id>` in `<S>_pending` and
//! tells the delivering host on `b24.<S>.skip.<plugin>`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use async_nats::{
    HeaderMap,
    jetstream::{
        self, ErrorCode, consumer,
        context::{ConsumerInfoErrorKind, GetStreamErrorKind},
        message::StreamMessage,
        stream::{LastRawMessageErrorKind, Stream},
    },
};
use bytes::Bytes;
use futures_util::TryStreamExt;

use super::{
    append::Appender,
    connect::{Link, subject_token},
    dead::{self, EVENT_ID, PLUGINS, Stored},
    deliver::Shared,
};
use crate::journal::{
    StoreError,
    admin::{
        Attempt, DeadRow, EventDetail, EventStatus, EventSummary, Page, PluginStats,
        QUERY_SCAN_LIMIT, Query, SKIPPED, Selection, Stats, redact_raw,
    },
    now_ms,
    record::{DeadLetter, EventRecord},
};

/// The most events one page of a query lists.
const MAX_PAGE: usize = 500;

/// How long a query's walk of the events stream may take (one request per sequence) before
/// it answers with what it found and where to go on.
const QUERY_TIME_BUDGET: std::time::Duration = std::time::Duration::from_millis(50);

/// Up to this many messages in the events stream, a listing walks them all from the oldest
/// (cheap: one request per message); above it, it walks back from the newest sequence.
const FORWARD_WALK: u64 = 4096;
/// How many sequences a backward walk looks at before it gives up (a sparse stream).
const BACKWARD_PROBES: u64 = 100_000;

pub(super) fn storage(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("NATS: cannot {what}: {e}"))
}

/// A stream by name; `None` when the log has none of that name (no host has set it up yet).
pub(super) async fn stream(link: &Link, name: &str) -> Result<Option<Stream>, StoreError> {
    match link.js.get_stream(name).await {
        Ok(stream) => Ok(Some(stream)),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                Ok(None)
            }
            _ => Err(storage(&format!("look up stream {name}"), e)),
        },
    }
}

/// `plugin`'s consumer info; `None` when it has no consumer yet.
pub(super) async fn consumer_info(
    link: &Link,
    stream: &Stream,
    plugin: &str,
) -> Result<Option<consumer::Info>, StoreError> {
    // A request that timed out (a busy server or machine) is asked again, twice.
    let mut tries = 0;
    loop {
        tries += 1;
        match stream.consumer_info(super::setup::consumer_name(link, plugin)).await {
            Ok(info) => return Ok(Some(info)),
            Err(e) if e.kind() == ConsumerInfoErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == ConsumerInfoErrorKind::TimedOut && tries < 3 => {
                tracing::debug!(plugin, "reading the consumer timed out; asking again");
            }
            Err(e) => return Err(storage(&format!("read the consumer of {plugin}"), e)),
        }
    }
}

/// The plugins that have a consumer on the events stream.
pub(super) async fn plugins_with_consumers(
    link: &Link,
    stream: &Stream,
) -> Result<Vec<String>, StoreError> {
    let prefix = format!("{}_", link.names.stream);
    let names: Vec<String> = stream
        .consumer_names()
        .try_collect()
        .await
        .map_err(|e| storage("list the consumers", e))?;
    Ok(names.into_iter().filter_map(|n| n.strip_prefix(&prefix).map(str::to_owned)).collect())
}

/// The first message at or after `seq` on `filter`; `None` when there is none.
async fn first_from(
    stream: &Stream,
    filter: &str,
    seq: u64,
) -> Result<Option<StreamMessage>, StoreError> {
    match stream.get_first_raw_message_by_subject(filter, seq).await {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(storage(&format!("read the log ({filter} from {seq})"), e)),
    }
}

/// Message `seq`; `None` when it is gone (acknowledged by every plugin, or deleted).
async fn message(stream: &Stream, seq: u64) -> Result<Option<StreamMessage>, StoreError> {
    match stream.get_raw_message(seq).await {
        Ok(message) => Ok(Some(message)),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(storage(&format!("read message {seq}"), e)),
    }
}

/// Every dead letter, `plugin`'s only when given, in the order they were stored.
pub(super) async fn walk_dead(
    link: &Link,
    plugin: Option<&str>,
) -> Result<Vec<Stored>, StoreError> {
    let Some(stream) = stream(link, &link.names.dead).await? else { return Ok(Vec::new()) };
    let filter = dead::filter(link, plugin);
    let mut out = Vec::new();
    let mut seq = 1;
    while let Some(m) = first_from(&stream, &filter, seq).await? {
        seq = m.sequence + 1;
        match dead::read(m.sequence, &m.subject, &m.headers, m.payload) {
            Some(stored) if plugin.is_none_or(|p| p == stored.plugin) => out.push(stored),
            Some(_) => {}
            None => tracing::warn!(
                seq = m.sequence,
                subject = %m.subject,
                "a message in the dead letters' stream is not a dead letter (no event id)"
            ),
        }
    }
    Ok(out)
}

/// The event id of a message of the events stream: its sequence, or for a replay the
/// original id it carries.
fn event_id(m: &StreamMessage) -> u64 {
    dead::header(&m.headers, EVENT_ID).and_then(|v| v.parse().ok()).unwrap_or(m.sequence)
}

/// Whether a message of the events stream with `headers` is addressed to `plugin`
/// (`B24-Plugins`; a message without the header goes to every plugin).
fn addressed_to(headers: &HeaderMap, plugin: &str) -> bool {
    dead::header(headers, PLUGINS).is_none_or(|list| list.split(',').any(|p| p.trim() == plugin))
}

/// The plugins whose consumers have not acknowledged past each sequence: plugin -> ack floor.
async fn ack_floors(link: &Link, stream: &Stream) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut out = BTreeMap::new();
    for plugin in plugins_with_consumers(link, stream).await? {
        if let Some(info) = consumer_info(link, stream, &plugin).await? {
            out.insert(plugin, info.ack_floor.stream_sequence);
        }
    }
    Ok(out)
}

/// The plugins message `seq` on `subject` with `headers` is still pending for, given each
/// plugin's ack floor.
fn pending_for(
    seq: u64,
    subject: &str,
    headers: &HeaderMap,
    floors: &BTreeMap<String, u64>,
) -> Vec<String> {
    let replay_of = replay_plugin(subject);
    floors
        .iter()
        .filter(|(plugin, floor)| {
            seq > **floor
                && replay_of.as_deref().is_none_or(|p| p == plugin.as_str())
                && addressed_to(headers, plugin)
        })
        .map(|(plugin, _)| plugin.clone())
        .collect()
}

/// For a replay (`b24.<S>.replay.<plugin>...`), its plugin.
fn replay_plugin(subject: &str) -> Option<String> {
    let mut tokens = subject.split('.');
    (tokens.nth(2) == Some("replay")).then(|| tokens.next().unwrap_or_default().to_owned())
}

fn summary(
    m: &StreamMessage,
    record: Option<&EventRecord>,
    floors: &BTreeMap<String, u64>,
    dead: &BTreeMap<u64, Vec<String>>,
) -> EventSummary {
    let id = event_id(m);
    let tokens: Vec<&str> = m.subject.split('.').collect();
    let from_subject =
        |i: usize| tokens.get(tokens.len().saturating_sub(i)).copied().unwrap_or_default();
    EventSummary {
        id,
        received_at_ms: record
            .map_or((m.time.unix_timestamp_nanos() / 1_000_000) as i64, |r| r.meta.received_at_ms),
        code: record.map_or_else(|| from_subject(1).to_owned(), |r| r.meta.code.clone()),
        member_id: record.map_or_else(|| from_subject(2).to_owned(), |r| r.meta.member_id.clone()),
        pending: pending_for(m.sequence, &m.subject, &m.headers, floors),
        dead: dead.get(&id).cloned().unwrap_or_default(),
    }
}

/// Event id -> the plugins with a dead letter of it.
fn dead_by_id(rows: &[Stored]) -> BTreeMap<u64, Vec<String>> {
    let mut out: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    for row in rows {
        out.entry(row.id).or_default().push(row.plugin.clone());
    }
    out
}

/// The age of the oldest event `plugin` has not acknowledged: the first message above its
/// ack floor on its subjects.
async fn oldest_pending_age(
    link: &Link,
    stream: &Stream,
    plugin: &str,
    floor: u64,
) -> Result<Option<i64>, StoreError> {
    let s = &link.names.stream;
    let events = first_from(stream, &format!("b24.{s}.events.>"), floor + 1).await?;
    let replays =
        first_from(stream, &format!("b24.{s}.replay.{}.>", subject_token(plugin)), floor + 1)
            .await?;
    let first = [events, replays].into_iter().flatten().min_by_key(|m| m.sequence);
    Ok(first.map(|m| {
        let at = dead::open_payload(&m.payload)
            .map_or((m.time.unix_timestamp_nanos() / 1_000_000) as i64, |r| r.meta.received_at_ms);
        (now_ms() - at).max(0)
    }))
}

/// Per-plugin numbers; every plugin of `enabled` is listed, and any other with a consumer or
/// dead letters.
pub(super) async fn stats(
    link: &Link,
    appender: &Appender,
    enabled: Vec<String>,
) -> Result<Stats, StoreError> {
    let _ = appender;
    let mut by_plugin: BTreeMap<String, PluginStats> = enabled
        .iter()
        .map(|p| (p.clone(), PluginStats { plugin: p.clone(), ..PluginStats::default() }))
        .collect();
    fn entry<'a>(map: &'a mut BTreeMap<String, PluginStats>, plugin: &str) -> &'a mut PluginStats {
        map.entry(plugin.to_owned())
            .or_insert_with(|| PluginStats { plugin: plugin.to_owned(), ..PluginStats::default() })
    }
    let mut events = 0;
    let retrying = retry_states(link).await?;
    if let Some(mut stream) = stream(link, &link.names.stream).await? {
        events =
            stream.info().await.map_err(|e| storage("read the stream's info", e))?.state.messages;
        let mut plugins = plugins_with_consumers(link, &stream).await?;
        plugins.extend(enabled.iter().cloned());
        plugins.sort();
        plugins.dedup();
        for plugin in plugins {
            let Some(info) = consumer_info(link, &stream, &plugin).await? else { continue };
            let stats = entry(&mut by_plugin, &plugin);
            stats.backlog = info.num_pending + info.num_ack_pending as u64;
            // A retrying event stays held by its host (redelivered only if the host dies):
            // the retry states in `<S>_pending` count, not the consumer's redeliveries.
            let states = retrying.get(subject_token(&plugin).as_str()).copied().unwrap_or(0);
            stats.retrying = states.max(info.num_redelivered as u64).min(stats.backlog);
            if stats.backlog > 0 {
                stats.oldest_pending_age_ms =
                    oldest_pending_age(link, &stream, &plugin, info.ack_floor.stream_sequence)
                        .await?;
            }
        }
    }
    if let Some(dead_stream) = stream(link, &link.names.dead).await? {
        let mut subjects = dead_stream
            .info_with_subjects(dead::filter(link, None))
            .await
            .map_err(|e| storage("count the dead letters", e))?;
        while let Some((subject, count)) =
            subjects.try_next().await.map_err(|e| storage("count the dead letters", e))?
        {
            if let Some(plugin) = subject.split('.').nth(3) {
                entry(&mut by_plugin, plugin).dead += count as u64;
            }
        }
    }
    Ok(Stats { plugins: by_plugin.into_values().collect(), events })
}

/// The newest `limit` events still in the log, newest first.
pub(super) async fn list(link: &Link, limit: usize) -> Result<Vec<EventSummary>, StoreError> {
    let Some(mut stream) = stream(link, &link.names.stream).await? else { return Ok(Vec::new()) };
    if limit == 0 {
        return Ok(Vec::new());
    }
    let state =
        stream.info().await.map_err(|e| storage("read the stream's info", e))?.state.clone();
    let mut newest: VecDeque<StreamMessage> = VecDeque::with_capacity(limit);
    if state.messages <= FORWARD_WALK {
        let filter = format!("b24.{}.>", link.names.stream);
        let mut seq = state.first_sequence.max(1);
        while let Some(m) = first_from(&stream, &filter, seq).await? {
            seq = m.sequence + 1;
            if newest.len() == limit {
                newest.pop_back();
            }
            newest.push_front(m);
        }
    } else {
        let mut seq = state.last_sequence;
        let floor = state.first_sequence.max(1);
        let mut probes = 0;
        while seq >= floor && newest.len() < limit && probes < BACKWARD_PROBES {
            if let Some(m) = message(&stream, seq).await? {
                newest.push_back(m);
            }
            seq -= 1;
            probes += 1;
        }
    }
    let floors = ack_floors(link, &stream).await?;
    let dead = dead_by_id(&walk_dead(link, None).await?);
    Ok(newest
        .iter()
        .map(|m| summary(m, dead::open_payload(&m.payload).as_ref(), &floors, &dead))
        .collect())
}

/// Event `id` in detail: from the events stream while it is there, else from a dead letter of
/// it (the events stream lets go of an event every plugin finished or gave up on).
pub(super) async fn show(
    link: &Link,
    shared: &Shared,
    id: u64,
) -> Result<Option<EventDetail>, StoreError> {
    let dead_rows: Vec<Stored> =
        walk_dead(link, None).await?.into_iter().filter(|r| r.id == id).collect();
    let dead = dead_by_id(&dead_rows);
    let events = stream(link, &link.names.stream).await?;
    let (summary, record) = match &events {
        Some(stream) => match message(stream, id).await? {
            Some(m) if event_id(&m) == id => {
                let floors = ack_floors(link, stream).await?;
                let record = dead::open_payload(&m.payload);
                (summary(&m, record.as_ref(), &floors, &dead), record)
            }
            _ => match dead_rows.first() {
                Some(row) => (dead_summary(row, &dead), row.record.clone()),
                None => return Ok(None),
            },
        },
        None => match dead_rows.first() {
            Some(row) => (dead_summary(row, &dead), row.record.clone()),
            None => return Ok(None),
        },
    };
    let mut pending_state = BTreeMap::new();
    for plugin in &summary.pending {
        let state = shared.pending(link, plugin, id).await?.unwrap_or_default();
        pending_state.insert(plugin.clone(), state);
    }
    let dead_state = dead_rows.into_iter().map(|r| (r.plugin, r.dead)).collect();
    Ok(Some(EventDetail {
        summary,
        decoded: serde_json::Value::Null,
        pending_state,
        dead_state,
        attempts: attempts(link, id).await?,
        raw_redacted: record.as_ref().map_or_else(
            || "<the record on the log fails its checksum: withheld>".to_owned(),
            |r| redact_raw(&r.raw, r.meta.format),
        ),
        record,
    }))
}

/// Event `id`'s attempts per plugin, oldest first: the messages of `<S>_ATTEMPTS` on
/// `b24.<S>.attempts.*.<id>`, one direct get per attempt (the server finds the next message of
/// a subject filter without a scan of the stream). The plugin is named by its subject token.
pub(super) async fn attempts(
    link: &Link,
    id: u64,
) -> Result<BTreeMap<String, Vec<Attempt>>, StoreError> {
    let mut out: BTreeMap<String, Vec<Attempt>> = BTreeMap::new();
    let Some(stream) = stream(link, &link.names.attempts).await? else { return Ok(out) };
    let filter = format!("b24.{}.attempts.*.{id}", link.names.stream);
    let mut seq = 1;
    while let Some(m) = first_from(&stream, &filter, seq).await? {
        seq = m.sequence + 1;
        let plugin = m.subject.split('.').nth(3).unwrap_or_default().to_owned();
        match serde_json::from_slice::<Attempt>(&m.payload) {
            Ok(attempt) => out.entry(plugin).or_default().push(attempt),
            Err(e) => tracing::warn!(subject = %m.subject, "an attempt record does not read: {e}"),
        }
    }
    for list in out.values_mut() {
        list.sort_by_key(|a| (a.at_ms, a.n));
    }
    Ok(out)
}

/// Deletes `plugin`'s attempts on event `id` (its dead letter was purged).
async fn purge_attempts(link: &Link, plugin: &str, id: u64) {
    let Ok(Some(stream)) = stream(link, &link.names.attempts).await else { return };
    let subject = super::deliver::attempts_subject(link, plugin, id);
    if let Err(e) = stream.purge().filter(subject).await {
        tracing::warn!(
            plugin,
            event_id = id,
            "cannot delete the attempts of a purged dead letter: {e}"
        );
    }
}

/// One page of `query` over what the log still holds: the events stream's messages (pending
/// events: a finished event is gone from it) and the dead letters; "done" lists the events
/// the stream still holds that no plugin has pending (an event every plugin acknowledged is
/// gone at once), so it is mostly empty. Newest first from `before_id`; the walk of the
/// events stream stops after [`QUERY_SCAN_LIMIT`] sequences or [`QUERY_TIME_BUDGET`], and
/// `next_before` then says where to go on.
pub(super) async fn query(link: &Link, query: Query) -> Result<Page, StoreError> {
    let limit = if query.limit == 0 { 50 } else { query.limit.min(MAX_PAGE) };
    let deadline = std::time::Instant::now() + QUERY_TIME_BUDGET;
    let dead_rows = walk_dead(link, None).await?;
    let dead = dead_by_id(&dead_rows);
    let before = query.before_id.unwrap_or(u64::MAX);
    let mut found: BTreeMap<u64, EventSummary> = BTreeMap::new();
    for row in dead_rows.iter().filter(|r| r.id < before) {
        found.entry(row.id).or_insert_with(|| dead_summary(row, &dead));
    }
    // Where the walk of the events stream stopped short (older sequences not read), if it did.
    let mut stopped_at: Option<u64> = None;
    if let Some(mut stream) = stream(link, &link.names.stream).await? {
        let state =
            stream.info().await.map_err(|e| storage("read the stream's info", e))?.state.clone();
        let floors = ack_floors(link, &stream).await?;
        let floor = state.first_sequence.max(1);
        let mut seq = state.last_sequence.min(before.saturating_sub(1));
        let mut read = 0u64;
        let mut matched = 0usize;
        while seq >= floor && seq > 0 {
            if read >= QUERY_SCAN_LIMIT || matched >= limit || std::time::Instant::now() >= deadline
            {
                stopped_at = Some(seq + 1);
                break;
            }
            if let Some(m) = message(&stream, seq).await? {
                let id = event_id(&m);
                if id < before {
                    let s = summary(&m, dead::open_payload(&m.payload).as_ref(), &floors, &dead);
                    let entry = found.entry(id).or_insert_with(|| s.clone());
                    // A replay and the original: pending for the plugins of either.
                    for p in s.pending {
                        if !entry.pending.contains(&p) {
                            entry.pending.push(p);
                        }
                    }
                    if matches(&query, entry) {
                        matched += 1;
                    }
                }
            }
            seq -= 1;
            read += 1;
        }
    }
    // Below where the walk stopped, dead letters wait for the next page (their events' order).
    let mut events: Vec<EventSummary> = found
        .into_values()
        .rev()
        .filter(|e| stopped_at.is_none_or(|at| e.id >= at))
        .filter(|e| matches(&query, e))
        .collect();
    let more = events.len() > limit;
    events.truncate(limit);
    let next_before = if more || stopped_at.is_some() {
        events.last().map(|e| e.id).or(stopped_at)
    } else {
        None
    };
    Ok(Page { events, next_before })
}

/// Whether `event` passes `query`'s filters (not `before_id`).
fn matches(query: &Query, event: &EventSummary) -> bool {
    let at = event.received_at_ms;
    query.member_id.as_deref().is_none_or(|m| m == event.member_id)
        && query.code.as_deref().is_none_or(|c| c.eq_ignore_ascii_case(&event.code))
        && query.since_ms.is_none_or(|since| at >= since)
        && query.until_ms.is_none_or(|until| at < until)
        && query.status.is_none_or(|status| match status {
            EventStatus::Pending => !event.pending.is_empty(),
            EventStatus::Dead => !event.dead.is_empty(),
            EventStatus::Done => event.pending.is_empty() && event.dead.is_empty(),
        })
}

fn dead_summary(row: &Stored, dead: &BTreeMap<u64, Vec<String>>) -> EventSummary {
    EventSummary {
        id: row.id,
        received_at_ms: row.record.as_ref().map_or(row.dead.at_ms, |r| r.meta.received_at_ms),
        code: row.code.clone(),
        member_id: row.member_id.clone(),
        pending: Vec::new(),
        dead: dead.get(&row.id).cloned().unwrap_or_default(),
    }
}

fn dead_row(stored: Stored) -> DeadRow {
    DeadRow {
        plugin: stored.plugin,
        id: stored.id,
        code: stored.code,
        member_id: stored.member_id,
        dead: stored.dead,
    }
}

/// Dead letters, `plugin`'s only when given.
pub(super) async fn dead(link: &Link, plugin: Option<String>) -> Result<Vec<DeadRow>, StoreError> {
    let mut rows: Vec<DeadRow> =
        walk_dead(link, plugin.as_deref()).await?.into_iter().map(dead_row).collect();
    // By plugin, then event id, as the embedded journal lists them: the stream holds them in
    // the order they were buried, and two lanes' (or one lane's batch's) burials race.
    rows.sort_by(|a, b| (&a.plugin, a.id).cmp(&(&b.plugin, b.id)));
    Ok(rows)
}

/// The selected dead letters.
async fn selected(link: &Link, which: &Selection) -> Result<Vec<Stored>, StoreError> {
    Ok(walk_dead(link, which.plugin.as_deref())
        .await?
        .into_iter()
        .filter(|row| which.matches(&row.plugin, row.id, row.dead.at_ms))
        .collect())
}

/// The bucket of retry states and skips (`<S>_pending`), if there is one.
async fn pending_bucket(link: &Link) -> Result<Option<jetstream::kv::Store>, StoreError> {
    let bucket = format!("{}_pending", link.names.bucket_prefix);
    if stream(link, &format!("KV_{bucket}")).await?.is_none() {
        return Ok(None);
    }
    link.js
        .get_key_value(&bucket)
        .await
        .map(Some)
        .map_err(|e| storage(&format!("open bucket {bucket}"), e))
}

/// Retry states in `<S>_pending` per plugin token: the keys `<plugin>.<id>` that the
/// delivering hosts write on a failed attempt and delete when the event is finished.
async fn retry_states(link: &Link) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut out = BTreeMap::new();
    let Some(bucket) = pending_bucket(link).await? else { return Ok(out) };
    let mut keys = bucket.keys().await.map_err(|e| storage("list the retry states", e))?;
    while let Some(key) = keys.try_next().await.map_err(|e| storage("list the retry states", e))? {
        if let Some(plugin) = state_key_plugin(&key) {
            *out.entry(plugin.to_owned()).or_insert(0) += 1;
        }
    }
    Ok(out)
}

/// The plugin token of a retry state's key `<plugin>.<id>` (not a skip mark
/// `skip.<plugin>.<id>`).
fn state_key_plugin(key: &str) -> Option<&str> {
    let (plugin, id) = key.split_once('.')?;
    id.parse::<u64>().ok().map(|_| plugin)
}

/// The key marking `plugin`'s event `id` as skipped.
fn skip_key(plugin: &str, id: u64) -> String {
    format!("skip.{}.{id}", subject_token(plugin))
}

/// Deletes dead letter `seq`.
async fn delete_dead(link: &Link, dead_stream: &Stream, seq: u64) -> Result<(), StoreError> {
    dead_stream
        .delete_message(seq)
        .await
        .map(|_| ())
        .map_err(|e| storage(&format!("delete dead letter {seq} of {}", link.names.dead), e))
}

/// Puts the selected dead letters back into delivery, each to its plugin only.
pub(super) async fn replay(
    link: &Link,
    which: Selection,
) -> Result<Vec<(String, u64)>, StoreError> {
    let rows = selected(link, &which).await?;
    let Some(dead_stream) = stream(link, &link.names.dead).await? else { return Ok(Vec::new()) };
    let bucket = pending_bucket(link).await?;
    let mut done = Vec::new();
    for row in rows {
        // A skipped event's mark would make the delivering host drop the replay too.
        if let Some(bucket) = &bucket {
            let key = skip_key(&row.plugin, row.id);
            if let Ok(Some(_)) = bucket.get(&key).await {
                bucket.purge(&key).await.map_err(|e| storage(&format!("clear {key}"), e))?;
            }
        }
        let subject = format!(
            "b24.{}.replay.{}.{}.{}",
            link.names.stream,
            subject_token(&row.plugin),
            subject_token(&row.member_id),
            subject_token(&row.code)
        );
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", format!("replay:{}:{}", row.plugin, row.seq).as_str());
        headers.insert(EVENT_ID, row.id.to_string().as_str());
        headers.insert(PLUGINS, row.plugin.as_str());
        dead::publish(link, subject, headers, row.payload.clone())
            .await
            .map_err(|e| storage(&format!("replay {}'s event {}", row.plugin, row.id), e))?;
        delete_dead(link, &dead_stream, row.seq).await?;
        done.push((row.plugin, row.id));
    }
    Ok(done)
}

/// Deletes the selected dead letters for good.
pub(super) async fn purge(link: &Link, which: Selection) -> Result<Vec<(String, u64)>, StoreError> {
    let rows = selected(link, &which).await?;
    let Some(dead_stream) = stream(link, &link.names.dead).await? else { return Ok(Vec::new()) };
    let mut done = Vec::new();
    for row in rows {
        delete_dead(link, &dead_stream, row.seq).await?;
        purge_attempts(link, &row.plugin, row.id).await;
        done.push((row.plugin, row.id));
    }
    Ok(done)
}

/// The message holding `plugin`'s pending event `id` above its ack floor: the event itself, or
/// a replay of it.
async fn pending_message(
    link: &Link,
    stream: &Stream,
    plugin: &str,
    id: u64,
    floor: u64,
) -> Result<Option<StreamMessage>, StoreError> {
    if id > floor {
        if let Some(m) = message(stream, id).await? {
            if event_id(&m) == id
                && replay_plugin(&m.subject).is_none()
                && addressed_to(&m.headers, plugin)
            {
                return Ok(Some(m));
            }
        }
    }
    let filter = format!("b24.{}.replay.{}.>", link.names.stream, subject_token(plugin));
    let mut seq = floor + 1;
    while let Some(m) = first_from(stream, &filter, seq).await? {
        seq = m.sequence + 1;
        if event_id(&m) == id {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Moves `plugin`'s pending events `ids` to its dead letters (reason [`SKIPPED`]): the dead
/// letter, the mark `skip.<plugin>.<id>` (a host that reads the event later drops it) and a
/// word on `b24.<S>.skip.<plugin>` (a host delivering it now drops it). Returns the pairs
/// moved; an id not pending for the plugin (finished, dead, skipped, unknown) is left out.
pub(super) async fn skip(
    link: &Link,
    shared: &Shared,
    plugin: String,
    ids: Vec<u64>,
) -> Result<Vec<(String, u64)>, StoreError> {
    let Some(stream) = stream(link, &link.names.stream).await? else { return Ok(Vec::new()) };
    let Some(info) = consumer_info(link, &stream, &plugin).await? else { return Ok(Vec::new()) };
    let floor = info.ack_floor.stream_sequence;
    let Some(bucket) = pending_bucket(link).await? else {
        return Err(StoreError::Refused(format!(
            "the log has no bucket {}_pending (hosts create it when they start): start a host on this log first",
            link.names.bucket_prefix
        )));
    };
    let already_dead: BTreeSet<u64> =
        walk_dead(link, Some(&plugin)).await?.into_iter().map(|r| r.id).collect();
    let mut moved = Vec::new();
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(id) || already_dead.contains(&id) {
            continue;
        }
        let key = skip_key(&plugin, id);
        if bucket.get(&key).await.map_err(|e| storage(&format!("read {key}"), e))?.is_some() {
            continue;
        }
        let Some(m) = pending_message(link, &stream, &plugin, id, floor).await? else { continue };
        let attempts = shared.pending(link, &plugin, id).await?.map_or(0, |p| p.attempts);
        let record = dead::open_payload(&m.payload);
        let tokens: Vec<&str> = m.subject.split('.').collect();
        let last =
            |i: usize| tokens.get(tokens.len().saturating_sub(i)).copied().unwrap_or_default();
        let (member, code) = match &record {
            Some(r) => (r.meta.member_id.clone(), r.meta.code.clone()),
            None => (last(2).to_owned(), last(1).to_owned()),
        };
        let letter = DeadLetter { reason: SKIPPED.into(), attempts, at_ms: now_ms() };
        dead::bury(link, &plugin, id, m.payload.clone(), &member, &code, &letter).await?;
        bucket
            .put(&key, Bytes::from(letter.at_ms.to_string()))
            .await
            .map_err(|e| storage(&format!("mark {key}"), e))?;
        link.client
            .publish(
                format!("b24.{}.skip.{}", link.names.stream, subject_token(&plugin)),
                Bytes::from(id.to_string()),
            )
            .await
            .map_err(|e| storage("tell the hosts about a skip", e))?;
        moved.push((plugin.clone(), id));
    }
    link.flush().await;
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(plugins: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(p) = plugins {
            h.insert(PLUGINS, p);
        }
        h
    }

    #[test]
    fn an_event_is_pending_for_the_plugins_it_is_addressed_to_above_their_ack_floors() {
        let floors: BTreeMap<String, u64> =
            [("a".to_owned(), 10), ("b".to_owned(), 3), ("c".to_owned(), 0)].into();
        let event = "b24.S.events.m.ONX";
        assert_eq!(pending_for(5, event, &headers(Some("a,b,c")), &floors), vec!["b", "c"]);
        assert_eq!(pending_for(5, event, &headers(Some("a, c")), &floors), vec!["c"]);
        assert_eq!(pending_for(11, event, &headers(None), &floors), vec!["a", "b", "c"]);
        // A replay is for its own plugin only, whatever else it says.
        let replay = "b24.S.replay.b.m.ONX";
        assert_eq!(replay_plugin(replay).as_deref(), Some("b"));
        assert_eq!(replay_plugin(event), None);
        assert_eq!(pending_for(12, replay, &headers(Some("b")), &floors), vec!["b"]);
        assert_eq!(pending_for(12, replay, &headers(None), &floors), vec!["b"]);
    }

    #[test]
    fn skip_marks_are_keyed_by_plugin_and_id_apart_from_retry_states() {
        assert_eq!(skip_key("probe", 42), "skip.probe.42");
        assert_eq!(skip_key("a.b", 1), "skip.a_b.1");
        assert_eq!(state_key_plugin("probe.42"), Some("probe"));
        assert_eq!(state_key_plugin("skip.42"), Some("skip"), "a plugin named skip");
        assert_eq!(state_key_plugin("skip.probe.42"), None);
        assert_eq!(state_key_plugin("probe"), None);
    }
}
