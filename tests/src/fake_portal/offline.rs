//! Offline events (bindings are in [`super::bindings`]).
//!
//! The portal keeps Bitrix24's offline event queue. Tests fill it with
//! [`FakePortal::push_offline`] and read it with [`FakePortal::offline_rows`],
//! [`FakePortal::offline_cleared`], [`FakePortal::offline_errored`] and
//! [`FakePortal::offline_discarded`]. **One change, one `MESSAGE_ID`**: Bitrix24 keys a row by
//! `MESSAGE_ID` (a hash of the event name and data), queue and `PROCESS_ID`, and merges a change
//! made again into the row of that key; the fake takes `EVENT_NAME` with
//! `EVENT_DATA.FIELDS.ID` (or the whole `EVENT_DATA` without it) as the change. A push merges
//! into the change's unreserved row (pending, or parked with `ERROR=1`, which stays parked),
//! rewriting it in place with its `ID` and `MESSAGE_ID`; while the change's row is reserved by
//! a batch, the push makes a new row with the same `MESSAGE_ID`. Rows, as Bitrix24 sends them: `ID` (decimal string,
//! increasing from 1), `TIMESTAMP_X` (the portal's local time with its UTC offset,
//! [`PortalOptions::utc_offset_minutes`](super::PortalOptions), e.g.
//! `2026-12-01T19:24:05+03:00`; a merged push renews it), `EVENT_NAME`, `EVENT_DATA`
//! (the online event's `data`), `EVENT_ADDITIONAL` (`{"user_id": "1"}`, or `{"user_id": 0}`
//! without a user), `MESSAGE_ID` (32 lower-case hex); `event.offline.list` and
//! [`FakePortal::offline_rows`] add `PROCESS_ID` (`""` when not reserved) and `ERROR`
//! (`"0"`/`"1"`). Param names are matched case-insensitively; list params may be JSON arrays or
//! PHP form lists (`message_id[]=..`).
//!
//! **One queue per connector**, as in Bitrix24: every `event.offline.*` call works on the rows
//! whose connector is its `auth_connector` (`""` without one). A change (a push, or a REST
//! write such as `crm.<entity>.userfield.update`) is queued once for every connector that has
//! an offline binding of the event (in the default queue `""` when the event has no offline
//! binding, so tests need not bind), except the connector of the REST call that made it ("skip
//! your own changes"). While [connectors are not allowed](FakePortal::set_connectors_allowed),
//! an `event.*` call with an `auth_connector` answers 403 [`WRONG_LICENSE`]
//! ([`CONNECTOR_LICENSE_DESCRIPTION`]).
//!
//! **Who may call**: `event.offline.*` through an [incoming webhook](FakePortal::add_webhook)
//! answers 403 `WRONG_AUTH_TYPE`; with the tokens of a user who is no administrator
//! ([`FakePortal::issue_user_oauth_pair`]), or while the [app's user is no
//! admin](FakePortal::set_app_user_admin), 403 `ACCESS_DENIED`.
//!
//! - `event.offline.get` `{filter?, order?, limit?, clear?, process_id?, error?,
//!   auth_connector?}` answers `{"process_id": .., "events": [rows without PROCESS_ID/ERROR]}`,
//!   in `order` (`{FIELD: ASC|DESC}` over `ID`, `TIMESTAMP_X`, `EVENT_NAME`, `MESSAGE_ID`;
//!   default `TIMESTAMP_X` ascending, ties in order of change). `limit` defaults to 50 and is capped at 50; below
//!   1 or not a number: 400 `ERROR_ARGUMENT` "Value must be positive integer". `error=0`
//!   (default) takes only rows with `ERROR=0`, `error=1` only erroneous ones. `filter` supports
//!   `ID`, `TIMESTAMP_X`, `EVENT_NAME`, `MESSAGE_ID` with `=`, `>`, `<`, `>=`, `<=` (none = `=`);
//!   other fields or operations: 400 `ERROR_ARGUMENT` "Filter field not allowed: F" / "Filter
//!   operation not allowed: OP".
//!   - `clear=1` (default) without `process_id`: up to `limit` unreserved rows, deleted at once;
//!     `process_id` is `null` (as Bitrix24 answers).
//!   - `clear=0` without `process_id`: reserves up to `limit` unreserved rows under a new
//!     `process_id` of 32 letters and digits (returned even when no row was free). Every call runs under one lock, so
//!     parallel callers get disjoint batches; reserved rows are never handed to another batch.
//!   - with `process_id`: only the rows still reserved under it (up to `limit`); NOTHING new is
//!     reserved, so once the batch was cleared the answer is empty (what Bitrix24's code does);
//!     with `clear=1` the returned rows are deleted.
//!   - `clear=0` while [safe mode](FakePortal::set_offline_safe_mode) is off: 403
//!     [`WRONG_LICENSE`] "This feature is not enabled for the current license: extended offline
//!     events handling" ([`OFFLINE_LICENSE_DESCRIPTION`]), checked after the params.
//! - `event.offline.list` `{filter?, order?, start?}`: all rows (reserved and erroneous too,
//!   filter and order also on `PROCESS_ID`, `ERROR`; default order `ID` ascending), 50 a page
//!   with `next`/`total`; reserves nothing. `{">PROCESS_ID": ""}` finds the reserved rows.
//! - `event.offline.clear` `{process_id, message_id? | id?}`: deletes the listed rows that are
//!   reserved under `process_id` (`message_id` wins over `id`; neither, or empty lists: the whole
//!   batch); others are left alone. Answers `true` even when nothing matched. Missing or empty
//!   `process_id`: 400 `ERROR_ARGUMENT` "Argument 'PROCESS_ID' is null or empty" (Bitrix24
//!   would take an empty string as "every unreserved row": the fake refuses it); `message_id`
//!   not a list of 32-character strings: 400 `ERROR_ARGUMENT` "Value must be array of
//!   MESSAGE_ID values"; `id` not a list of positive integers: 400 `ERROR_ARGUMENT` "Value must
//!   be array of integers". While [`FakePortal::fail_next_clears`] has calls left: 500
//!   `INTERNAL_SERVER_ERROR` "Internal server error" and nothing is deleted. A lost reply:
//!   [`FakePortal::garble_next_clear_replies`] (deleted, then answered 502 HTML) and
//!   [`FakePortal::hold_next_clear`] (deleted, then the reply waits to be released).
//! - `event.offline.error` `{process_id, message_id}`, as `EventOfflineTable::markError`: for
//!   each listed `MESSAGE_ID` of the call's queue, every row that is neither parked nor held
//!   under `process_id` is deleted (the change's pending repeat, another batch's copy; see
//!   [`FakePortal::offline_discarded`]), and the rows held under `process_id` get `ERROR=1`
//!   and lose their reservation (only `error=1` gets them again; a change parked before gives
//!   way to them). Answers `true`. Same `process_id` errors as clear; `message_id` missing:
//!   400 `ERROR_ARGUMENT` "Value must be array of MESSAGE_ID values".
//! - A lost answer to `get`: [`FakePortal::lose_next_get_replies`] (the rows are reserved, then
//!   the answer is 502 HTML; only answers that hand out rows count): no later `get` without
//!   that `process_id` returns them.

use serde_json::{Map, Value, json};

use super::{
    CONNECTOR_LICENSE_DESCRIPTION, FakePortal, OFFLINE_LICENSE_DESCRIPTION, WRONG_LICENSE,
    fields::{paginate, yn_str},
    state::{ApiError, CallResult, State, iso_local, unix_now},
    wire::value_text,
};

/// One row of the offline event queue.
#[derive(Debug, Clone)]
pub(super) struct OfflineRow {
    pub(super) id: u64,
    /// Unix seconds of the push (or of the last merged push).
    pub(super) timestamp: i64,
    pub(super) event_name: String,
    pub(super) data: Value,
    pub(super) user_id: Option<u64>,
    pub(super) message_id: String,
    /// The connector's queue the row is in (`CONNECTOR_ID`; `""` without a connector).
    pub(super) connector: String,
    /// The portal's UTC offset in minutes, for `TIMESTAMP_X`.
    pub(super) utc_offset: i32,
    /// Change counter: orders rows with the same `TIMESTAMP_X` (one-second resolution).
    pub(super) seq: u64,
    /// The reserving batch; `None` when not reserved.
    pub(super) process_id: Option<String>,
    pub(super) error: bool,
}

impl FakePortal {
    /// Puts an event into the offline queue, as Bitrix24 does for an `event_type=offline`
    /// binding, and returns the row's `MESSAGE_ID` (32 lower-case hex digits). `data` is the
    /// `data` object an online event carries (e.g. `{"FIELDS": {"ID": "554", ...}}`);
    /// `user_id` becomes `EVENT_ADDITIONAL.user_id` (`"1"`; `None` gives the number `0`, an
    /// action without a user). The event name is upper-cased. The queue does not have to be
    /// bound (see [`Self::bindings`]).
    ///
    /// **Latest state per change**: if a row with the same `EVENT_NAME` and the same
    /// `EVENT_DATA.FIELDS.ID` (or, when `data` has no `FIELDS.ID`, the same whole `EVENT_DATA`)
    /// is queued, not reserved and not marked erroneous, this push replaces that row's
    /// `EVENT_DATA`, `EVENT_ADDITIONAL` and `TIMESTAMP_X` in place and returns its existing
    /// `MESSAGE_ID` and keeps its `ID`; otherwise (no such row, or it is reserved by a batch or
    /// parked with `ERROR=1`) a new row is added, as Bitrix24 does.
    pub fn push_offline(&self, event_name: &str, data: Value, user_id: Option<u64>) -> String {
        self.shared.lock().push_offline(event_name, data, user_id)
    }

    /// Every row still in the offline queue, in `ID` order, in the shape `event.offline.list`
    /// answers: `ID` (decimal string), `TIMESTAMP_X`, `EVENT_NAME`, `EVENT_DATA`,
    /// `EVENT_ADDITIONAL`, `MESSAGE_ID`, `PROCESS_ID` (`""` when not reserved) and `ERROR`
    /// (`"0"`/`"1"`).
    pub fn offline_rows(&self) -> Vec<Value> {
        self.shared.lock().offline.values().map(OfflineRow::full).collect()
    }

    /// The `MESSAGE_ID`s deleted from the queue so far, in deletion order (within one call in
    /// `ID` order): by `event.offline.clear`, and by `event.offline.get` with `clear=1`.
    pub fn offline_cleared(&self) -> Vec<String> {
        self.shared.lock().offline_cleared.clone()
    }

    /// The `MESSAGE_ID`s marked erroneous by `event.offline.error`, in order.
    pub fn offline_errored(&self) -> Vec<String> {
        self.shared.lock().offline_errored.clone()
    }

    /// Turns Bitrix24's `rest_offline_extended` feature on (default) or off. While off,
    /// `event.offline.get` with `clear=0` answers 403 [`WRONG_LICENSE`] with
    /// [`OFFLINE_LICENSE_DESCRIPTION`] (a plan without the feature) and `feature.get` answers
    /// `N`; `clear=1` keeps working.
    pub fn set_offline_safe_mode(&self, on: bool) {
        self.shared.lock().opts.offline_safe_mode = on;
    }

    /// Makes the next `n` calls of `event.offline.clear` fail (after the token check, before
    /// anything is deleted) with 500 `INTERNAL_SERVER_ERROR` "Internal server error": the rows
    /// stay reserved, for crash-window tests. Replaces any count left from an earlier call.
    pub fn fail_next_clears(&self, n: usize) {
        self.shared.lock().failing_clears = n;
    }

    /// Makes the replies of the next `n` successful `event.offline.clear` calls 502 with an
    /// HTML body (a proxy that lost the portal's answer): the rows ARE deleted, the caller
    /// cannot tell.
    pub fn garble_next_clear_replies(&self, n: usize) {
        self.shared.lock().garbled_clears = n;
    }

    /// Makes the answers of the next `n` successful `event.offline.get` calls that hand out rows
    /// 502 with an HTML body (a proxy or a timeout that lost the portal's answer): the rows ARE
    /// reserved, under a `process_id` the caller never learns.
    pub fn lose_next_get_replies(&self, n: usize) {
        self.shared.lock().lost_gets = n;
    }

    /// The `MESSAGE_ID`s of the rows `event.offline.error` deleted (a parked change's pending
    /// repeat, another batch's copy, an older parked row of the change), in order.
    pub fn offline_discarded(&self) -> Vec<String> {
        self.shared.lock().offline_discarded.clone()
    }

    /// Arms a hold on the next successful `event.offline.clear`: the rows are deleted, then
    /// the reply waits until [`Self::release_held_clear`] (or 60 s). [`Self::clear_is_held`]
    /// tells when that moment has come, e.g. to kill the caller while it waits.
    pub fn hold_next_clear(&self) {
        self.shared.lock().hold_clear = Some(std::sync::Arc::new(tokio::sync::Notify::new()));
    }

    /// Whether a clear was applied and its reply is being held.
    pub fn clear_is_held(&self) -> bool {
        self.shared.lock().held_clear.is_some()
    }

    /// Lets a held clear reply go (and disarms a hold not yet used).
    pub fn release_held_clear(&self) {
        let mut state = self.shared.lock();
        state.hold_clear = None;
        if let Some(held) = state.held_clear.take() {
            held.notify_one();
        }
    }

    /// Whether the user whose tokens the app holds is a portal administrator (default true).
    /// While not, every `event.offline.*` call answers 403 `ACCESS_DENIED`.
    pub fn set_app_user_admin(&self, admin: bool) {
        self.shared.lock().app_user_admin = admin;
    }

    /// Whether the plan supports `auth_connector` (default true). While not, an `event.*` call
    /// with a non-empty `auth_connector` answers 403 [`WRONG_LICENSE`] with
    /// [`CONNECTOR_LICENSE_DESCRIPTION`].
    pub fn set_connectors_allowed(&self, allowed: bool) {
        self.shared.lock().connectors_allowed = allowed;
    }

    /// Every call of an `event.*` method (and `feature.get`) that passed the token check, in
    /// order: `{"method": "event.offline.get", "params": {..}, "webhook": false}` with the
    /// params as received, minus `auth` (so `auth_connector`, `limit`, `clear`, `process_id`
    /// can be asserted); `webhook` is true for a call through an incoming webhook.
    pub fn event_calls(&self) -> Vec<Value> {
        self.shared.lock().event_calls.clone()
    }
}

/// Page and batch size of the offline queue methods.
pub(super) const OFFLINE_LIMIT: u64 = 50;

impl State {
    /// A fresh 32-hex id (`MESSAGE_ID`, `process_id`); unique within the fake.
    pub(super) fn hex32(&mut self) -> String {
        self.next_hex += 1;
        let n = self.next_hex;
        let salt = self.base.bytes().fold(0x9e37_79b9_u64, |h, b| h.rotate_left(5) ^ u64::from(b));
        format!("{:016x}{:016x}", splitmix64(n ^ salt), splitmix64(n))
    }

    /// A fresh 32-character alphanumeric `process_id` (mixed case, as Bitrix24's
    /// `Random::getString(32)`); unique within the fake.
    pub(super) fn process_id(&mut self) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        self.next_hex += 1;
        let mut x = splitmix64(self.next_hex ^ 0x5eed);
        (0..32)
            .map(|i| {
                if i % 10 == 0 {
                    x = splitmix64(x);
                }
                let c = ALPHABET[(x % 62) as usize] as char;
                x /= 62;
                c
            })
            .collect()
    }

    pub(super) fn push_offline(
        &mut self,
        event_name: &str,
        data: Value,
        user_id: Option<u64>,
    ) -> String {
        self.queue_change(event_name, data, user_id, None)
    }

    /// Queues a change for every connector with an offline binding of the event (the default
    /// queue `""` when the event has none), except `skip`: the connector of the REST call that
    /// made the change ("skip your own changes"). Returns the `MESSAGE_ID` (`""` when no queue
    /// took it).
    pub(super) fn queue_change(
        &mut self,
        event_name: &str,
        data: Value,
        user_id: Option<u64>,
        skip: Option<&str>,
    ) -> String {
        let event_name = event_name.to_ascii_uppercase();
        let mut connectors: Vec<String> = self
            .bindings
            .iter()
            .filter(|b| b.offline && b.event == event_name)
            .map(|b| b.auth_connector.clone().unwrap_or_default())
            .collect();
        connectors.sort();
        connectors.dedup();
        if connectors.is_empty() {
            connectors.push(String::new());
        }
        connectors.retain(|c| Some(c.as_str()) != skip.filter(|s| !s.is_empty()));
        let now = unix_now() as i64;
        let key = change_key(&data);
        let mut message_id = String::new();
        for connector in connectors {
            self.next_seq += 1;
            let seq = self.next_seq;
            let same = |row: &OfflineRow| {
                row.connector == connector
                    && row.event_name == event_name
                    && match &key {
                        Some(id) => change_key(&row.data).as_ref() == Some(id),
                        None => row.data == data,
                    }
            };
            // A change's unreserved row (pending, or parked: it stays parked) takes the push.
            if message_id.is_empty()
                && let Some(row) = self.offline.values().find(|row| same(row))
            {
                message_id = row.message_id.clone();
            }
            let pending =
                self.offline.values_mut().find(|row| row.process_id.is_none() && same(row));
            if let Some(row) = pending {
                row.data = data.clone();
                row.user_id = user_id;
                row.timestamp = now;
                row.seq = seq;
                if message_id.is_empty() {
                    message_id = row.message_id.clone();
                }
                continue;
            }
            if message_id.is_empty() {
                message_id = self.hex32();
            }
            let id = self.next_offline_id;
            self.next_offline_id += 1;
            self.offline.insert(
                id,
                OfflineRow {
                    id,
                    timestamp: now,
                    event_name: event_name.clone(),
                    data: data.clone(),
                    user_id,
                    message_id: message_id.clone(),
                    connector,
                    utc_offset: self.opts.utc_offset_minutes,
                    seq,
                    process_id: None,
                    error: false,
                },
            );
        }
        message_id
    }

    /// `event.*` methods and `feature.get`.
    pub(super) fn call_event(
        &mut self,
        method: &str,
        params: &Map<String, Value>,
        webhook: bool,
    ) -> CallResult {
        let mut logged = params.clone();
        logged.remove("auth");
        self.event_calls.push(json!({ "method": method, "params": logged, "webhook": webhook }));
        if method.starts_with("event.offline.") {
            if webhook {
                return Err(ApiError::new(
                    403,
                    "WRONG_AUTH_TYPE",
                    "Current authorization type is denied for this method",
                ));
            }
            // Bitrix24 checks that the token's user administers the portal.
            if !self.app_user_admin || !self.caller_is_admin(params) {
                return Err(ApiError::new(403, "ACCESS_DENIED", "Access denied!"));
            }
        }
        if method.starts_with("event.")
            && !self.connectors_allowed
            && param_ci(params, "auth_connector").is_some_and(|c| !value_text(c).is_empty())
        {
            return Err(ApiError::new(403, WRONG_LICENSE, CONNECTOR_LICENSE_DESCRIPTION));
        }
        match method {
            "feature.get" => {
                let code = param_ci(params, "code").map(value_text).unwrap_or_default();
                if code.is_empty() || code == "0" {
                    return Err(ApiError::new(400, "CODE_EMPTY", "CODE can't be empty"));
                }
                let on = code != "rest_offline_extended" || self.opts.offline_safe_mode;
                Ok((json!({ "value": yn_str(on) }), Vec::new()))
            }
            "event.bind" | "event.unbind" | "event.get" => {
                self.call_binding(method, params, webhook)
            }
            "event.offline.get" => self.offline_get(params),
            "event.offline.list" => self.offline_list(params),
            "event.offline.clear" => self.offline_clear(params),
            "event.offline.error" => self.offline_error(params),
            _ => Err(ApiError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
        }
    }

    pub(super) fn offline_get(&mut self, params: &Map<String, Value>) -> CallResult {
        let filter =
            parse_offline_filter(params, &["ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID"])?;
        let order = parse_order(params, GET_FIELDS, "TIMESTAMP_X")?;
        let limit = match param_ci(params, "limit") {
            None | Some(Value::Null) => OFFLINE_LIMIT,
            Some(v) => match value_text(v).trim().parse::<u64>() {
                Ok(n) if n > 0 => n.min(OFFLINE_LIMIT),
                _ => {
                    return Err(ApiError::new(
                        400,
                        "ERROR_ARGUMENT",
                        "Value must be positive integer",
                    ));
                }
            },
        } as usize;
        let clear = flag(param_ci(params, "clear"), true);
        let error = flag(param_ci(params, "error"), false);
        let given = param_ci(params, "process_id").map(value_text).filter(|p| !p.is_empty());
        if !clear && !self.opts.offline_safe_mode {
            return Err(ApiError::new(403, WRONG_LICENSE, OFFLINE_LICENSE_DESCRIPTION));
        }
        let connector = connector_of(params);
        let matches = |row: &OfflineRow| {
            row.connector == connector && row.error == error && filter_matches(&filter, row)
        };
        let mut ordered: Vec<&OfflineRow> = self.offline.values().collect();
        sort_rows(&mut ordered, &order);

        if given.is_none() {
            let taken: Vec<u64> = ordered
                .iter()
                .filter(|r| r.process_id.is_none() && matches(r))
                .take(limit)
                .map(|r| r.id)
                .collect();
            if clear {
                // Take and delete at once.
                let mut events = Vec::with_capacity(taken.len());
                for id in taken {
                    if let Some(row) = self.offline.remove(&id) {
                        events.push(row.short());
                        self.offline_cleared.push(row.message_id);
                    }
                }
                return Ok((json!({ "process_id": null, "events": events }), Vec::new()));
            }
            // Reserve a new batch.
            let process_id = self.process_id();
            let mut events = Vec::with_capacity(taken.len());
            for id in taken {
                if let Some(row) = self.offline.get_mut(&id) {
                    row.process_id = Some(process_id.clone());
                    events.push(row.short());
                }
            }
            return Ok((json!({ "process_id": process_id, "events": events }), Vec::new()));
        }

        // With a process_id: only the rows still held under it; nothing new is reserved.
        let process_id = given.unwrap_or_default();
        let held: Vec<u64> = ordered
            .iter()
            .filter(|r| r.process_id.as_deref() == Some(process_id.as_str()) && matches(r))
            .take(limit)
            .map(|r| r.id)
            .collect();
        let events: Vec<Value> =
            held.iter().filter_map(|id| self.offline.get(id)).map(OfflineRow::short).collect();
        if clear {
            for id in held {
                if let Some(row) = self.offline.remove(&id) {
                    self.offline_cleared.push(row.message_id);
                }
            }
        }
        Ok((json!({ "process_id": process_id, "events": events }), Vec::new()))
    }

    pub(super) fn offline_list(&self, params: &Map<String, Value>) -> CallResult {
        let filter = parse_offline_filter(
            params,
            &["ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID", "PROCESS_ID", "ERROR"],
        )?;
        let order = parse_order(params, LIST_FIELDS, "ID")?;
        let connector = connector_of(params);
        let mut all: Vec<&OfflineRow> = self
            .offline
            .values()
            .filter(|r| r.connector == connector && filter_matches(&filter, r))
            .collect();
        sort_rows(&mut all, &order);
        let (page, extra) = paginate(&all, params);
        let rows: Vec<Value> = page.iter().map(|r| r.full()).collect();
        Ok((Value::Array(rows), extra))
    }

    pub(super) fn offline_clear(&mut self, params: &Map<String, Value>) -> CallResult {
        if self.failing_clears > 0 {
            self.failing_clears -= 1;
            return Err(ApiError::new(500, "INTERNAL_SERVER_ERROR", "Internal server error"));
        }
        let process_id = required_process_id(params)?;
        let message_ids = match param_ci(params, "message_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => message_id_list(v)?,
        };
        let ids: Vec<u64> = match param_ci(params, "id") {
            None | Some(Value::Null) => Vec::new(),
            Some(v) => list_items(v)
                .and_then(|items| {
                    items
                        .iter()
                        .map(|i| value_text(i).trim().parse::<u64>().ok().filter(|n| *n > 0))
                        .collect::<Option<Vec<u64>>>()
                })
                .ok_or_else(|| {
                    ApiError::new(400, "ERROR_ARGUMENT", "Value must be array of integers")
                })?,
        };
        let connector = connector_of(params);
        let doomed: Vec<u64> = self
            .offline
            .values()
            .filter(|r| r.connector == connector)
            .filter(|r| r.process_id.as_deref() == Some(process_id.as_str()))
            .filter(|r| {
                if !message_ids.is_empty() {
                    message_ids.contains(&r.message_id)
                } else if !ids.is_empty() {
                    ids.contains(&r.id)
                } else {
                    true
                }
            })
            .map(|r| r.id)
            .collect();
        for id in doomed {
            if let Some(row) = self.offline.remove(&id) {
                self.offline_cleared.push(row.message_id);
            }
        }
        Ok((json!(true), Vec::new()))
    }

    pub(super) fn offline_error(&mut self, params: &Map<String, Value>) -> CallResult {
        let process_id = required_process_id(params)?;
        let message_ids = match param_ci(params, "message_id") {
            None | Some(Value::Null) => {
                return Err(ApiError::new(
                    400,
                    "ERROR_ARGUMENT",
                    "Value must be array of MESSAGE_ID values",
                ));
            }
            Some(v) => message_id_list(v)?,
        };
        let connector = connector_of(params);
        let held = |row: &OfflineRow| row.process_id.as_deref() == Some(process_id.as_str());
        // As the portal's SQL does: the change's other live rows go (its pending repeat,
        // another batch's copy), then the batch's rows are parked.
        let doomed: Vec<u64> = self
            .offline
            .values()
            .filter(|r| r.connector == connector && message_ids.contains(&r.message_id))
            .filter(|r| !r.error && !held(r))
            .map(|r| r.id)
            .collect();
        for id in doomed {
            if let Some(row) = self.offline.remove(&id) {
                self.offline_discarded.push(row.message_id);
            }
        }
        let parking: Vec<u64> = self
            .offline
            .values()
            .filter(|r| r.connector == connector && message_ids.contains(&r.message_id))
            .filter(|r| !r.error && held(r))
            .map(|r| r.id)
            .collect();
        for id in parking {
            let Some(message_id) = self.offline.get(&id).map(|r| r.message_id.clone()) else {
                continue;
            };
            // One parked row per change and queue (the portal's unique key): the older goes.
            let older: Vec<u64> = self
                .offline
                .values()
                .filter(|r| r.error && r.connector == connector && r.message_id == message_id)
                .map(|r| r.id)
                .collect();
            for old in older {
                self.offline.remove(&old);
                self.offline_discarded.push(message_id.clone());
            }
            if let Some(row) = self.offline.get_mut(&id) {
                row.error = true;
                row.process_id = None;
                self.offline_errored.push(message_id);
            }
        }
        Ok((json!(true), Vec::new()))
    }
}

impl OfflineRow {
    /// The shape of `event.offline.get`.
    pub(super) fn short(&self) -> Value {
        let user = match self.user_id {
            Some(u) => json!(u.to_string()),
            None => json!(0),
        };
        json!({
            "ID": self.id.to_string(),
            "TIMESTAMP_X": iso_local(self.timestamp, self.utc_offset),
            "EVENT_NAME": self.event_name,
            "EVENT_DATA": self.data,
            "EVENT_ADDITIONAL": { "user_id": user },
            "MESSAGE_ID": self.message_id,
        })
    }

    /// The shape of `event.offline.list` (adds `PROCESS_ID` and `ERROR`).
    pub(super) fn full(&self) -> Value {
        let mut v = self.short();
        if let Some(m) = v.as_object_mut() {
            m.insert("PROCESS_ID".into(), json!(self.process_id.clone().unwrap_or_default()));
            m.insert("ERROR".into(), json!(if self.error { "1" } else { "0" }));
        }
        v
    }
}

/// One filter condition: operation (`=`, `>`, `<`, `>=`, `<=`), field, value.
pub(super) type Condition = (&'static str, String, String);

/// The `filter` param of the offline methods; fields outside `allowed` and operations other
/// than `= > < >= <=` answer `ERROR_ARGUMENT`, as Bitrix24 does.
pub(super) fn parse_offline_filter(
    params: &Map<String, Value>,
    allowed: &[&str],
) -> Result<Vec<Condition>, ApiError> {
    let filter = match param_ci(params, "filter") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Object(m)) => m,
        Some(Value::Array(a)) if a.is_empty() => return Ok(Vec::new()),
        Some(_) => return Err(ApiError::new(400, "ERROR_ARGUMENT", "The filter is not an array.")),
    };
    let mut out = Vec::new();
    for (key, value) in filter {
        let (op, field) = [">=", "<=", "=", ">", "<"]
            .iter()
            .find_map(|op| key.strip_prefix(op).map(|f| (*op, f)))
            .unwrap_or(("=", key.as_str()));
        if field.starts_with(|c: char| !c.is_ascii_alphabetic()) {
            let bad: String = field.chars().take_while(|c| !c.is_ascii_alphabetic()).collect();
            return Err(ApiError::new(
                400,
                "ERROR_ARGUMENT",
                &format!("Filter operation not allowed: {bad}"),
            ));
        }
        let field = field.to_ascii_uppercase();
        if !allowed.contains(&field.as_str()) {
            return Err(ApiError::new(
                400,
                "ERROR_ARGUMENT",
                &format!("Filter field not allowed: {field}"),
            ));
        }
        if value.is_array() || value.is_object() {
            return Err(ApiError::new(
                400,
                "ERROR_ARGUMENT",
                &format!("The value of an argument '{field}' has an invalid type"),
            ));
        }
        out.push((op, field, value_text(value)));
    }
    Ok(out)
}

pub(super) fn filter_matches(filter: &[Condition], row: &OfflineRow) -> bool {
    if filter.is_empty() {
        return true;
    }
    let full = row.full();
    filter.iter().all(|(op, field, want)| {
        let have = value_text(&full[field.as_str()]);
        let ord = match (have.parse::<u64>(), want.trim().parse::<u64>()) {
            (Ok(a), Ok(b)) if field == "ID" => a.cmp(&b),
            _ => have.as_str().cmp(want.as_str()),
        };
        match *op {
            ">=" => ord.is_ge(),
            "<=" => ord.is_le(),
            ">" => ord.is_gt(),
            "<" => ord.is_lt(),
            _ => ord.is_eq(),
        }
    })
}

/// `process_id` of `event.offline.clear`/`.error`: required and non-empty.
pub(super) fn required_process_id(params: &Map<String, Value>) -> Result<String, ApiError> {
    param_ci(params, "process_id").map(value_text).filter(|p| !p.trim().is_empty()).ok_or_else(
        || ApiError::new(400, "ERROR_ARGUMENT", "Argument 'PROCESS_ID' is null or empty"),
    )
}

/// A list param: a JSON array, or the object a PHP form makes of `k[]=..` / `k[0]=..`.
pub(super) fn list_items(v: &Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a.clone()),
        Value::Object(m) => Some(m.values().cloned().collect()),
        _ => None,
    }
}

/// `message_id`: a list of 32-character strings.
pub(super) fn message_id_list(v: &Value) -> Result<Vec<String>, ApiError> {
    list_items(v)
        .map(|items| items.iter().map(value_text).collect::<Vec<String>>())
        .filter(|ids| ids.iter().all(|id| id.chars().count() == 32))
        .ok_or_else(|| {
            ApiError::new(400, "ERROR_ARGUMENT", "Value must be array of MESSAGE_ID values")
        })
}

/// A param looked up case-insensitively (Bitrix24 upper-cases the keys of these methods).
pub(super) fn param_ci<'a>(params: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    params
        .get(key)
        .or_else(|| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// A 0/1 flag as PHP would read it (`"0"`, `""`, `0`, `false`, `"N"` are false); `default`
/// when absent.
pub(super) fn flag(v: Option<&Value>, default: bool) -> bool {
    match v {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(Value::Number(n)) => n.as_f64().is_some_and(|f| f != 0.0),
        Some(Value::String(s)) => {
            let s = s.trim();
            !(s.is_empty()
                || s == "0"
                || s.eq_ignore_ascii_case("n")
                || s.eq_ignore_ascii_case("false"))
        }
        Some(_) => true,
    }
}

/// The "same change" key of an offline row: `EVENT_DATA.FIELDS.ID` as text, if any.
pub(super) fn change_key(data: &Value) -> Option<String> {
    data.get("FIELDS")
        .and_then(|f| f.get("ID").or_else(|| f.get("id")))
        .filter(|v| !v.is_null())
        .map(value_text)
}

/// The connector queue a call works on: its `auth_connector` (`""` without one).
pub(super) fn connector_of(params: &Map<String, Value>) -> String {
    param_ci(params, "auth_connector").map(value_text).unwrap_or_default()
}

/// The fields `event.offline.get` orders by.
const GET_FIELDS: &[&str] = &["ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID"];
/// The fields `event.offline.list` orders by.
const LIST_FIELDS: &[&str] =
    &["ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID", "PROCESS_ID", "ERROR"];

/// The `order` param: `{FIELD: "ASC"|"DESC", ..}` over `allowed`; `default` ascending without.
pub(super) fn parse_order(
    params: &Map<String, Value>,
    allowed: &[&str],
    default: &str,
) -> Result<Vec<(String, bool)>, ApiError> {
    let order = match param_ci(params, "order") {
        None | Some(Value::Null) => return Ok(vec![(default.to_owned(), true)]),
        Some(Value::Array(a)) if a.is_empty() => return Ok(vec![(default.to_owned(), true)]),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(ApiError::new(400, "ERROR_ARGUMENT", "The order is not an array.")),
    };
    let mut out = Vec::new();
    for (field, direction) in order {
        let field = field.to_ascii_uppercase();
        if !allowed.contains(&field.as_str()) {
            return Err(ApiError::new(
                400,
                "ERROR_ARGUMENT",
                &format!("Order field not allowed: {field}"),
            ));
        }
        let ascending = match value_text(direction).trim().to_ascii_uppercase().as_str() {
            "" | "ASC" => true,
            "DESC" => false,
            _ => {
                return Err(ApiError::new(
                    400,
                    "ERROR_ARGUMENT",
                    "Order direction must be ASC or DESC",
                ));
            }
        };
        out.push((field, ascending));
    }
    Ok(out)
}

/// Sorts rows by `order`; ties by change, then by `ID`.
pub(super) fn sort_rows(rows: &mut [&OfflineRow], order: &[(String, bool)]) {
    rows.sort_by(|a, b| {
        let mut ord = std::cmp::Ordering::Equal;
        for (field, ascending) in order {
            let o = match field.as_str() {
                "ID" => a.id.cmp(&b.id),
                "TIMESTAMP_X" => a.timestamp.cmp(&b.timestamp).then(a.seq.cmp(&b.seq)),
                "EVENT_NAME" => a.event_name.cmp(&b.event_name),
                "PROCESS_ID" => a.process_id.cmp(&b.process_id),
                "ERROR" => a.error.cmp(&b.error),
                _ => a.message_id.cmp(&b.message_id),
            };
            let o = if *ascending { o } else { o.reverse() };
            ord = ord.then(o);
        }
        ord.then(a.seq.cmp(&b.seq)).then(a.id.cmp(&b.id))
    });
}

pub(super) fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_portal::testkit::*;

    fn deal_field(id: u64) -> Value {
        json!({"FIELDS": {"ID": id.to_string(), "ENTITY_ID": "CRM_DEAL", "FIELD_NAME": format!("UF_CRM_{id}")}})
    }

    /// Pushes `n` UPDATE events for fields 1..=n; returns their MESSAGE_IDs.
    fn fill(portal: &FakePortal, n: u64) -> Vec<String> {
        (1..=n)
            .map(|i| portal.push_offline("ONCRMDEALUSERFIELDUPDATE", deal_field(i), Some(1)))
            .collect()
    }

    fn message_ids(answer: &Raw) -> Vec<String> {
        answer.json["result"]["events"]
            .as_array()
            .unwrap_or_else(|| panic!("no events in {}", answer.json))
            .iter()
            .map(|e| e["MESSAGE_ID"].as_str().unwrap().to_owned())
            .collect()
    }

    /// 32 ASCII letters and digits, as Bitrix24's `Random::getString(32)`.
    fn is_process_id(s: &str) -> bool {
        s.len() == 32 && s.bytes().all(|b| b.is_ascii_alphanumeric())
    }

    fn is_hex32(s: &str) -> bool {
        s.len() == 32 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    }

    #[test]
    fn fake_portal_offline_reserve_and_clear_by_message_id() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        let ids = fill(&portal, 3);
        assert!(ids.iter().all(|m| is_hex32(m)), "{ids:?}");
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), 3);
        let rows = portal.offline_rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["ID"], "1");
        assert_eq!(rows[2]["ID"], "3");
        assert_eq!(rows[0]["PROCESS_ID"], "");
        assert_eq!(rows[0]["ERROR"], "0");
        assert_eq!(rows[0]["EVENT_ADDITIONAL"], json!({"user_id": "1"}));
        assert_eq!(rows[0]["EVENT_DATA"], deal_field(1));
        // The portal's local time with its UTC offset (default +03:00).
        assert!(rows[0]["TIMESTAMP_X"].as_str().unwrap().ends_with("+03:00"), "{}", rows[0]);

        let a = post(&portal, "event.offline.get", json!({"clear": 0, "limit": 2, "auth": token}));
        assert_eq!(a.status, 200, "{}", a.json);
        let pid = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        assert!(is_process_id(&pid), "{pid}");
        assert_eq!(message_ids(&a), ids[..2]);
        let event = &a.json["result"]["events"][0];
        assert_eq!(event["ID"], "1");
        assert_eq!(event["EVENT_NAME"], "ONCRMDEALUSERFIELDUPDATE");
        assert_eq!(event["EVENT_DATA"]["FIELDS"]["FIELD_NAME"], "UF_CRM_1");
        assert!(event.get("PROCESS_ID").is_none(), "get rows carry no PROCESS_ID");
        let rows = portal.offline_rows();
        assert_eq!(rows[0]["PROCESS_ID"], pid);
        assert_eq!(rows[2]["PROCESS_ID"], "");
        assert_eq!(
            portal.event_calls()[0],
            json!({"method": "event.offline.get",
                   "params": {"clear": 0, "limit": 2}, "webhook": false})
        );

        // Clear one of the two by MESSAGE_ID; a stranger's process id clears nothing.
        let a = post(
            &portal,
            "event.offline.clear",
            json!({"process_id": "0".repeat(32), "message_id": [ids[0]], "auth": token}),
        );
        assert_eq!((a.status, &a.json["result"]), (200, &json!(true)));
        assert_eq!(portal.offline_rows().len(), 3);
        let a = post(
            &portal,
            "event.offline.clear",
            json!({"process_id": pid, "message_id": [ids[0]], "auth": token}),
        );
        assert_eq!((a.status, &a.json["result"]), (200, &json!(true)));
        assert_eq!(portal.offline_cleared(), vec![ids[0].clone()]);
        let left: Vec<Value> = portal.offline_rows().iter().map(|r| r["ID"].clone()).collect();
        assert_eq!(left, [json!("2"), json!("3")]);

        // A form body with PHP list syntax clears the rest of the batch.
        let a = send(
            portal.addr(),
            "POST",
            "/rest/event.offline.clear.json",
            "application/x-www-form-urlencoded",
            &format!("auth={token}&process_id={pid}&message_id%5B%5D={}", ids[1]),
        );
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(portal.offline_cleared(), ids[..2]);
        assert_eq!(portal.offline_rows().len(), 1);

        // Bad params.
        let a = post(&portal, "event.offline.clear", json!({"auth": token}));
        assert_eq!(
            a.json,
            json!({"error": "ERROR_ARGUMENT",
                   "error_description": "Argument 'PROCESS_ID' is null or empty"})
        );
        let a = post(
            &portal,
            "event.offline.clear",
            json!({"process_id": pid, "message_id": ["short"], "auth": token}),
        );
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("ERROR_ARGUMENT")));
        let a = post(&portal, "event.offline.get", json!({"limit": 0, "auth": token}));
        assert_eq!(a.json["error_description"].as_str(), Some("Value must be positive integer"));
        let a = post(&portal, "event.offline.get", json!({"filter": {"!ID": 1}, "auth": token}));
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("ERROR_ARGUMENT")));
        let a = post(&portal, "event.offline.get", json!({"clear": 0}));
        assert_eq!(a.status, 401, "auth is checked as for every method");
    }

    #[test]
    fn fake_portal_offline_parallel_batches_are_disjoint() {
        let portal =
            FakePortal::start(PortalOptions { rate_per_sec: f64::INFINITY, ..Default::default() });
        let token = portal.issue_access_token();
        let ids = fill(&portal, 5);

        // Two process ids, one after the other.
        let a =
            post(&portal, "event.offline.get", json!({"clear": "0", "limit": 2, "auth": token}));
        let b =
            post(&portal, "event.offline.get", json!({"clear": "0", "limit": 2, "auth": token}));
        let (pa, pb) = (&a.json["result"]["process_id"], &b.json["result"]["process_id"]);
        assert_ne!(pa, pb);
        assert_eq!(message_ids(&a), ids[0..2]);
        assert_eq!(message_ids(&b), ids[2..4]);
        // Clearing A's rows under B's process id does nothing.
        post(
            &portal,
            "event.offline.clear",
            json!({"process_id": pb, "message_id": message_ids(&a), "auth": token}),
        );
        assert!(portal.offline_cleared().is_empty());
        // Clear by ID, then all of B's batch.
        post(
            &portal,
            "event.offline.clear",
            json!({"process_id": pa, "id": [1, "2"], "auth": token}),
        );
        post(&portal, "event.offline.clear", json!({"process_id": pb, "auth": token}));
        assert_eq!(portal.offline_cleared(), ids[0..4]);

        // Many callers at once: every row goes to exactly one batch.
        for i in 6..=40 {
            portal.push_offline("ONCRMDEALUSERFIELDADD", deal_field(i), None);
        }
        let all: Vec<String> = portal
            .offline_rows()
            .iter()
            .map(|r| r["MESSAGE_ID"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(all.len(), 36);
        let batches: Vec<(String, Vec<String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let a = post(
                            &portal,
                            "event.offline.get",
                            json!({"clear": 0, "limit": 5, "auth": token}),
                        );
                        assert_eq!(a.status, 200, "{}", a.json);
                        (
                            a.json["result"]["process_id"].as_str().unwrap().to_owned(),
                            message_ids(&a),
                        )
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut seen: Vec<String> = batches.iter().flat_map(|(_, m)| m.clone()).collect();
        assert_eq!(seen.len(), 36, "8 x 5 asked, 36 available");
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 36, "no row in two batches");
        let pids: std::collections::HashSet<_> = batches.iter().map(|(p, _)| p.clone()).collect();
        assert_eq!(pids.len(), 8);
        for (pid, mids) in &batches {
            for row in portal.offline_rows() {
                let mine = mids.iter().any(|m| row["MESSAGE_ID"] == **m);
                assert_eq!(row["PROCESS_ID"] == **pid, mine);
            }
        }
        // Nothing is left for a new batch or for clear=1.
        let a = post(&portal, "event.offline.get", json!({"auth": token}));
        assert_eq!(a.json["result"], json!({"process_id": null, "events": []}));
        let list = post(&portal, "event.offline.list", json!({"auth": token}));
        assert_eq!(list.json["total"], 36);
        assert_eq!(list.json["result"].as_array().unwrap().len(), 36);
        assert!(list.json.get("next").is_none());
    }

    #[test]
    fn fake_portal_offline_error_marking() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        let ids = fill(&portal, 3);
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "auth": token}));
        let pid = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        assert_eq!(message_ids(&a), ids);

        let a = post(
            &portal,
            "event.offline.error",
            json!({"process_id": pid, "message_id": [ids[1]], "auth": token}),
        );
        assert_eq!((a.status, &a.json["result"]), (200, &json!(true)));
        assert_eq!(portal.offline_errored(), vec![ids[1].clone()]);
        let row = portal.offline_rows()[1].clone();
        assert_eq!((row["ERROR"].as_str(), row["PROCESS_ID"].as_str()), (Some("1"), Some("")));

        // The batch no longer holds it, a new batch does not take it, error=1 does.
        let a = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "process_id": pid, "auth": token}),
        );
        assert_eq!(message_ids(&a), [ids[0].clone(), ids[2].clone()]);
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "auth": token}));
        assert!(message_ids(&a).is_empty());
        let list =
            post(&portal, "event.offline.list", json!({"filter": {"ERROR": 1}, "auth": token}));
        assert_eq!(list.json["total"], 1);
        let a = post(&portal, "event.offline.get", json!({"error": 1, "auth": token}));
        assert_eq!(message_ids(&a), [ids[1].clone()]);
        assert_eq!(portal.offline_cleared(), [ids[1].clone()], "error=1 with clear=1 deletes it");

        // Errors: no message_id; already-cleared ids are ignored.
        let a = post(&portal, "event.offline.error", json!({"process_id": pid, "auth": token}));
        assert_eq!(
            a.json["error_description"].as_str(),
            Some("Value must be array of MESSAGE_ID values")
        );
        let a = post(
            &portal,
            "event.offline.error",
            json!({"process_id": pid, "message_id": [], "auth": token}),
        );
        assert_eq!(a.json["result"], json!(true));
        assert_eq!(portal.offline_errored().len(), 1);
    }

    #[test]
    fn fake_portal_offline_licence_refusal_without_safe_mode() {
        let portal =
            FakePortal::start(PortalOptions { offline_safe_mode: false, ..Default::default() });
        let token = portal.issue_access_token();
        let ids = fill(&portal, 2);
        let a =
            post(&portal, "feature.get", json!({"CODE": "rest_offline_extended", "auth": token}));
        assert_eq!(a.json["result"], json!({"value": "N"}));
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "auth": token}));
        assert_eq!(a.status, 403);
        assert_eq!(
            a.json,
            json!({"error": WRONG_LICENSE, "error_description": OFFLINE_LICENSE_DESCRIPTION})
        );
        assert_eq!(a.json["error"], "WRONG_LICENSE");
        assert_eq!(
            a.json["error_description"],
            "This feature is not enabled for the current license: extended offline events handling"
        );
        assert_eq!(portal.offline_rows().len(), 2, "nothing reserved");
        assert!(portal.offline_rows().iter().all(|r| r["PROCESS_ID"] == ""));

        // clear=1 (explicit, and by default) still works.
        let a = post(&portal, "event.offline.get", json!({"clear": 1, "limit": 1, "auth": token}));
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["result"]["process_id"], Value::Null);
        assert_eq!(message_ids(&a), [ids[0].clone()]);
        let a = post(&portal, "event.offline.get", json!({"auth": token}));
        assert_eq!(message_ids(&a), [ids[1].clone()]);
        assert_eq!(portal.offline_cleared(), ids);
        assert!(portal.offline_rows().is_empty());

        portal.set_offline_safe_mode(true);
        let a =
            post(&portal, "feature.get", json!({"CODE": "rest_offline_extended", "auth": token}));
        assert_eq!(a.json["result"]["value"], "Y");
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "auth": token}));
        assert_eq!(a.status, 200);
        assert!(is_process_id(a.json["result"]["process_id"].as_str().unwrap()));
    }

    #[test]
    fn fake_portal_offline_latest_state_merging() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        let first = portal.push_offline("ONCRMDEALUSERFIELDUPDATE", deal_field(554), Some(1));
        let other =
            portal.push_offline("ONCRMDEALUSERFIELDSETENUMVALUES", deal_field(554), Some(1));
        assert_ne!(first, other, "another event name is another change");
        let mut renamed = deal_field(554);
        renamed["FIELDS"]["FIELD_NAME"] = json!("UF_CRM_RENAMED");
        let again = portal.push_offline("oncrmdealuserfieldupdate", renamed.clone(), None);
        assert_eq!(again, first, "same event and FIELDS.ID: merged");
        let rows = portal.offline_rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0]["ID"], "1");
        assert_eq!(rows[0]["EVENT_DATA"], renamed);
        assert_eq!(rows[0]["EVENT_ADDITIONAL"], json!({"user_id": 0}));

        // Data without FIELDS.ID merges only when identical.
        let plain = portal.push_offline("ONAPPTEST", json!({"X": 1}), None);
        assert_eq!(portal.push_offline("ONAPPTEST", json!({"X": 1}), None), plain);
        assert_ne!(portal.push_offline("ONAPPTEST", json!({"X": 2}), None), plain);

        // A reserved row is not touched: the repeat makes a new row of the same change, with
        // the same MESSAGE_ID (Bitrix24 keys rows by message, queue and process id).
        let a = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "limit": 1, "order": {"ID": "ASC"}, "auth": token}),
        );
        let pid = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        assert_eq!(message_ids(&a), std::slice::from_ref(&first));
        let fresh = portal.push_offline("ONCRMDEALUSERFIELDUPDATE", deal_field(554), Some(1));
        assert_eq!(fresh, first);
        assert_eq!(portal.offline_rows().len(), 5);
        // Parking the reserved row deletes its pending repeat (event.offline.error's SQL) ...
        post(
            &portal,
            "event.offline.error",
            json!({"process_id": pid, "message_id": [first], "auth": token}),
        );
        assert_eq!(portal.offline_discarded(), std::slice::from_ref(&first));
        assert_eq!(portal.offline_rows().len(), 4);
        // ... and a change made again merges into the parked row, which stays parked.
        let again = portal.push_offline("ONCRMDEALUSERFIELDUPDATE", renamed.clone(), Some(7));
        assert_eq!(again, first);
        let rows = portal.offline_rows();
        assert_eq!(rows.len(), 4);
        let parked = rows.iter().find(|r| r["MESSAGE_ID"] == first.as_str()).unwrap();
        assert_eq!(parked["ERROR"], "1");
        assert_eq!(parked["EVENT_ADDITIONAL"], json!({"user_id": "7"}));
        let reserved = rows.iter().filter(|r| r["PROCESS_ID"] != "").count();
        assert_eq!(reserved, 0);
    }

    #[test]
    fn fake_portal_offline_error_deletes_every_other_row_of_the_message() {
        let portal =
            FakePortal::start(PortalOptions { rate_per_sec: f64::INFINITY, ..Default::default() });
        let token = portal.issue_access_token();
        let ids = fill(&portal, 2);
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "limit": 1, "auth": token}));
        let first = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        // Field 1 changes again (a pending repeat), and again after another batch took the
        // repeat: three rows of one message, in three states.
        portal.push_offline("ONCRMDEALUSERFIELDUPDATE", deal_field(1), Some(1));
        let b = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "filter": {"MESSAGE_ID": ids[0]}, "auth": token}),
        );
        let second = b.json["result"]["process_id"].as_str().unwrap().to_owned();
        assert_eq!(message_ids(&b), std::slice::from_ref(&ids[0]));
        portal.push_offline("ONCRMDEALUSERFIELDUPDATE", deal_field(1), Some(1));
        let of_message =
            |rows: &[Value]| rows.iter().filter(|r| r["MESSAGE_ID"] == ids[0].as_str()).count();
        assert_eq!(of_message(&portal.offline_rows()), 3);
        let a = post(
            &portal,
            "event.offline.error",
            json!({"process_id": first, "message_id": [ids[0]], "auth": token}),
        );
        assert_eq!(a.json["result"], json!(true));
        let rows = portal.offline_rows();
        assert_eq!(of_message(&rows), 1, "{rows:?}");
        let kept = rows.iter().find(|r| r["MESSAGE_ID"] == ids[0].as_str()).unwrap();
        assert_eq!((kept["ERROR"].as_str(), kept["PROCESS_ID"].as_str()), (Some("1"), Some("")));
        assert_eq!(portal.offline_discarded().len(), 2, "the repeat and the other batch's copy");
        // The other batch holds nothing any more; field 2 is untouched.
        let again = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "process_id": second, "auth": token}),
        );
        assert!(message_ids(&again).is_empty());
        assert!(rows.iter().any(|r| r["MESSAGE_ID"] == ids[1].as_str() && r["ERROR"] == "0"));
        // The reserved rows are found by listing with `>PROCESS_ID`, newest first on request.
        let list = post(
            &portal,
            "event.offline.list",
            json!({"filter": {">PROCESS_ID": ""}, "order": {"ID": "DESC"}, "auth": token}),
        );
        assert_eq!(list.json["total"], 0, "{}", list.json);
        let list =
            post(&portal, "event.offline.list", json!({"order": {"ID": "DESC"}, "auth": token}));
        let ids_desc: Vec<&str> = list.json["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["ID"].as_str().unwrap())
            .collect();
        let mut sorted = ids_desc.clone();
        sorted.sort_by_key(|id| std::cmp::Reverse(id.parse::<u64>().unwrap()));
        assert_eq!(ids_desc, sorted);
    }

    #[test]
    fn fake_portal_a_lost_get_answer_leaves_its_rows_reserved() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        portal.lose_next_get_replies(1);
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "auth": token}));
        assert_eq!(a.status, 200, "an empty answer is not the one lost");
        let ids = fill(&portal, 2);
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "auth": token}));
        assert_eq!(a.status, 502);
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "auth": token}));
        assert!(message_ids(&a).is_empty(), "reserved by the lost batch");
        let list = post(
            &portal,
            "event.offline.list",
            json!({"filter": {">PROCESS_ID": ""}, "auth": token}),
        );
        let held: Vec<&str> = list.json["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["MESSAGE_ID"].as_str().unwrap())
            .collect();
        assert_eq!(held, ids);
    }

    #[test]
    fn fake_portal_offline_same_process_id_gets_same_rows() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        let ids = fill(&portal, 5);
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "limit": 2, "auth": token}));
        let pid = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        assert_eq!(message_ids(&a), ids[0..2]);
        let b = post(&portal, "event.offline.get", json!({"clear": 0, "limit": 2, "auth": token}));
        assert_eq!(message_ids(&b), ids[2..4]);

        // A crashed worker asks again with its process id: the same rows, nothing new.
        let again = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "limit": 2, "process_id": pid, "auth": token}),
        );
        assert_eq!(again.json["result"]["process_id"], pid);
        assert_eq!(message_ids(&again), ids[0..2]);
        assert_eq!(again.json["result"]["events"], a.json["result"]["events"]);
        // A larger limit reserves nothing new: only the rows still held under the id.
        let more = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "limit": 10, "process_id": pid, "auth": token}),
        );
        assert_eq!(message_ids(&more), ids[0..2]);

        // The clear fails twice, then works; the rows stay reserved meanwhile.
        portal.fail_next_clears(2);
        for _ in 0..2 {
            let c = post(&portal, "event.offline.clear", json!({"process_id": pid, "auth": token}));
            assert_eq!(c.status, 500);
            assert_eq!(c.json["error"], "INTERNAL_SERVER_ERROR");
        }
        assert!(portal.offline_cleared().is_empty());
        let again = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "process_id": pid, "auth": token}),
        );
        assert_eq!(message_ids(&again).len(), 2);
        let c = post(&portal, "event.offline.clear", json!({"process_id": pid, "auth": token}));
        assert_eq!(c.status, 200);
        assert_eq!(portal.offline_cleared(), ids[0..2]);
        // Once cleared, the id holds nothing: an empty answer, and no row is reserved by it.
        let empty = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "limit": 10, "process_id": pid, "auth": token}),
        );
        assert_eq!(empty.status, 200);
        assert!(message_ids(&empty).is_empty(), "{}", empty.json);
        let reserved = portal.offline_rows().iter().filter(|r| r["PROCESS_ID"] == pid).count();
        assert_eq!(reserved, 0);

        // clear=1 with a process id deletes what it returned, up to the limit.
        let pb = b.json["result"]["process_id"].as_str().unwrap().to_owned();
        let d = post(
            &portal,
            "event.offline.get",
            json!({"clear": 1, "limit": 1, "process_id": pb, "auth": token}),
        );
        assert_eq!(d.json["result"]["process_id"], pb);
        assert_eq!(message_ids(&d), [ids[2].clone()]);
        assert_eq!(portal.offline_rows().len(), 2, "row 4 is still held, row 5 was never reserved");
        assert_eq!(portal.offline_cleared().len(), 3);
    }

    #[test]
    fn fake_portal_offline_rows_come_in_timestamp_order_and_a_changed_row_moves_last() {
        let portal =
            FakePortal::start(PortalOptions { utc_offset_minutes: -150, ..Default::default() });
        let token = portal.issue_access_token();
        let ids = fill(&portal, 3);
        // Field 1 changes again: same row, newer timestamp, so it comes last.
        assert_eq!(portal.push_offline("ONCRMDEALUSERFIELDUPDATE", deal_field(1), Some(1)), ids[0]);
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "auth": token}));
        assert_eq!(message_ids(&a), [ids[1].clone(), ids[2].clone(), ids[0].clone()]);
        let stamp = a.json["result"]["events"][0]["TIMESTAMP_X"].as_str().unwrap().to_owned();
        assert!(stamp.ends_with("-02:30"), "{stamp}");
        let pid = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        let desc = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "process_id": pid, "order": {"TIMESTAMP_X": "DESC"}, "auth": token}),
        );
        assert_eq!(message_ids(&desc), [ids[0].clone(), ids[2].clone(), ids[1].clone()]);
        let bad =
            post(&portal, "event.offline.get", json!({"order": {"DATA": "ASC"}, "auth": token}));
        assert_eq!(bad.status, 400);
    }

    #[test]
    fn fake_portal_offline_queues_are_per_connector_and_skip_own_changes() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        for connector in ["a", "b"] {
            let bound = post(
                &portal,
                "event.bind",
                json!({"event": "ONCRMDEALUSERFIELDUPDATE",
                "event_type": "offline", "auth_connector": connector, "auth": token}),
            );
            assert_eq!(bound.status, 200, "{}", bound.json);
        }
        portal.push_offline("ONCRMDEALUSERFIELDUPDATE", deal_field(7), Some(1));
        let field = portal.add_field("CRM_DEAL", "UF_CRM_X", "string", vec![]);
        // A write through REST with connector a: queued for b only.
        let w = post(
            &portal,
            "crm.deal.userfield.update",
            json!({"id": field,
            "fields": {"EDIT_FORM_LABEL": "New"}, "auth_connector": "a", "auth": token}),
        );
        assert_eq!(w.status, 200, "{}", w.json);
        assert_eq!(portal.field(field).unwrap().label, "New");
        let get = |connector: Option<&str>| {
            let mut p = json!({"clear": 0, "auth": token});
            if let Some(c) = connector {
                p["auth_connector"] = json!(c);
            }
            let a = post(&portal, "event.offline.get", p);
            assert_eq!(a.status, 200, "{}", a.json);
            a.json["result"]["events"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["EVENT_DATA"]["FIELDS"]["ID"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(get(Some("a")), ["7"]);
        assert_eq!(get(Some("b")), ["7".to_owned(), field.to_string()]);
        assert!(get(None).is_empty(), "no queue without a connector when every binding has one");

        portal.set_connectors_allowed(false);
        let refused =
            post(&portal, "event.offline.get", json!({"auth_connector": "a", "auth": token}));
        assert_eq!(refused.status, 403);
        assert_eq!(refused.json["error"], "WRONG_LICENSE");
        assert!(refused.json["error_description"].as_str().unwrap().contains("auth_connector"));
    }

    #[test]
    fn fake_portal_offline_refuses_webhooks_and_non_admins() {
        let portal = FakePortal::start(PortalOptions::default());
        let hook = portal.add_webhook(1);
        let path = hook.trim_start_matches(&portal.base_url()).to_owned();
        let call = |method: &str| {
            send(portal.addr(), "POST", &format!("{path}{method}"), "application/json", "{}")
        };
        let a = call("event.offline.get");
        assert_eq!((a.status, a.json["error"].as_str()), (403, Some("WRONG_AUTH_TYPE")));
        assert_eq!(call("crm.deal.userfield.list").status, 200, "other methods take webhooks");
        let wrong = send(portal.addr(), "POST", "/rest/1/nope/event.get", "application/json", "{}");
        assert_eq!(wrong.status, 401);

        // A user who is not an administrator, even with a valid token, and the same user's
        // pair after a refresh.
        let (user, user_refresh) = portal.issue_user_oauth_pair(42, false);
        let a = post(&portal, "event.offline.get", json!({"auth": user}));
        assert_eq!((a.status, a.json["error"].as_str()), (403, Some("ACCESS_DENIED")));
        let refreshed = refresh(&portal, &portal.options().client_secret, &user_refresh);
        assert_eq!(refreshed.json["user_id"], 42);
        let again = refreshed.json["access_token"].as_str().unwrap().to_owned();
        let a = post(&portal, "event.offline.get", json!({"auth": again}));
        assert_eq!((a.status, a.json["error"].as_str()), (403, Some("ACCESS_DENIED")));
        let (admin, _) = portal.issue_user_oauth_pair(7, true);
        assert_eq!(post(&portal, "event.offline.get", json!({"auth": admin})).status, 200);

        let token = portal.issue_access_token();
        portal.set_app_user_admin(false);
        let a = post(&portal, "event.offline.get", json!({"auth": token}));
        assert_eq!((a.status, a.json["error"].as_str()), (403, Some("ACCESS_DENIED")));
    }

    #[test]
    fn fake_portal_offline_clear_reply_can_be_garbled_or_held_after_it_applied() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        let ids = fill(&portal, 2);
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "limit": 1, "auth": token}));
        let pid = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        portal.garble_next_clear_replies(1);
        let c = post(&portal, "event.offline.clear", json!({"process_id": pid, "auth": token}));
        assert_eq!(c.status, 502);
        assert_eq!(portal.offline_cleared(), ids[..1], "applied although the reply was lost");

        let a = post(&portal, "event.offline.get", json!({"clear": 0, "limit": 1, "auth": token}));
        let pid = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        portal.hold_next_clear();
        std::thread::scope(|s| {
            let waiter = s.spawn(|| {
                post(&portal, "event.offline.clear", json!({"process_id": pid, "auth": token}))
            });
            let started = std::time::Instant::now();
            while !portal.clear_is_held() {
                assert!(started.elapsed() < Duration::from_secs(10));
                std::thread::sleep(Duration::from_millis(5));
            }
            assert_eq!(portal.offline_cleared(), ids, "applied while the reply is held");
            portal.release_held_clear();
            assert_eq!(waiter.join().unwrap().status, 200);
        });
    }
}
