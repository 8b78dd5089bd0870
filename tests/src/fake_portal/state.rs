//! The fake's shared state: one lock around everything, the leaky bucket, the request log,
//! the dispatch of REST methods to their areas, and the error type they answer.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Mutex, MutexGuard},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use hyper::Method;
use serde_json::{Map, Value};

use super::{
    PortalOptions, RequestKind, RequestRecord,
    bindings::Binding,
    fields::Field,
    oauth::{AccessToken, RefreshToken},
    offline::OfflineRow,
    wire::Reply,
};

pub(super) struct Shared {
    pub(super) state: Mutex<State>,
}

impl Shared {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) struct State {
    pub(super) opts: PortalOptions,
    /// `http://127.0.0.1:PORT`
    pub(super) base: String,
    pub(super) domain: String,
    pub(super) started: Instant,
    pub(super) fields: BTreeMap<u64, Field>,
    pub(super) next_field_id: u64,
    pub(super) next_enum_id: u64,
    pub(super) next_token: u64,
    pub(super) access: HashMap<String, AccessToken>,
    pub(super) refresh: HashMap<String, RefreshToken>,
    pub(super) initial: (String, String),
    pub(super) bucket_level: f64,
    pub(super) bucket_at: Instant,
    pub(super) moved: bool,
    pub(super) requests: Vec<RequestRecord>,
    pub(super) refreshes: Vec<(String, String)>,
    pub(super) violations: usize,
    /// The offline event queue by `ID`.
    pub(super) offline: BTreeMap<u64, OfflineRow>,
    pub(super) next_offline_id: u64,
    /// Counter behind the 32-hex `MESSAGE_ID`s and `process_id`s.
    pub(super) next_hex: u64,
    pub(super) offline_cleared: Vec<String>,
    pub(super) offline_errored: Vec<String>,
    /// How many of the next `event.offline.clear` calls fail.
    pub(super) failing_clears: usize,
    pub(super) bindings: Vec<Binding>,
    pub(super) event_calls: Vec<Value>,
    /// Counter behind the order of changes in the offline queue.
    pub(super) next_seq: u64,
    /// How many of the next successful `event.offline.clear` replies are garbled (502 HTML).
    pub(super) garbled_clears: usize,
    /// Armed by [`super::FakePortal::hold_next_clear`]: the next successful clear's reply
    /// waits for this.
    pub(super) hold_clear: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// The release of a clear reply being held (the clear was applied).
    pub(super) held_clear: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Whether the user whose tokens the app holds is a portal administrator.
    pub(super) app_user_admin: bool,
    /// Whether the plan allows `auth_connector`.
    pub(super) connectors_allowed: bool,
    /// The codes of the incoming webhooks (`/rest/<user>/<code>/<method>`).
    pub(super) webhooks: Vec<String>,
    /// The codes `events` answers and `event.bind` accepts.
    pub(super) events_offered: Vec<String>,
    /// `app.info` `INSTALLED`.
    pub(super) installation_finished: bool,
    /// How many of the next successful `event.offline.get` answers are lost (502 HTML).
    pub(super) lost_gets: usize,
    /// Rows `event.offline.error` deleted.
    pub(super) offline_discarded: Vec<String>,
    /// Each method's operating time.
    pub(super) meters: HashMap<String, super::operating::Meter>,
    /// What a call of a method costs in operating time.
    pub(super) operating_costs: HashMap<String, std::time::Duration>,
    /// The deals `crm.deal.get` serves, by id.
    pub(super) deals: BTreeMap<u64, super::deals::Deal>,
    pub(super) next_deal_id: u64,
    /// How many of the next calls of a method fail with 500 (see [`super::deals`]).
    pub(super) failing_calls: HashMap<String, usize>,
}

impl State {
    /// Takes one request from the leaky bucket; false when it would overflow.
    pub(super) fn take_bucket(&mut self, now: Instant) -> bool {
        let rate = self.opts.rate_per_sec;
        if rate.is_infinite() && rate > 0.0 {
            self.bucket_level = 0.0;
        } else if rate.is_finite() && rate > 0.0 {
            let drained = now.saturating_duration_since(self.bucket_at).as_secs_f64() * rate;
            self.bucket_level = (self.bucket_level - drained).max(0.0);
        }
        self.bucket_at = now;
        if self.bucket_level + 1.0 > f64::from(self.opts.burst) + 1e-9 {
            false
        } else {
            self.bucket_level += 1.0;
            true
        }
    }

    pub(super) fn record(
        &mut self,
        at: Instant,
        kind: RequestKind,
        http: &Method,
        method: &str,
        token: Option<String>,
        reply: &Reply,
    ) {
        self.requests.push(RequestRecord {
            at: at.saturating_duration_since(self.started),
            kind,
            http_method: http.as_str().to_owned(),
            method: method.to_owned(),
            token,
            status: reply.status,
            error: reply.error.clone(),
        });
    }

    /// Runs a REST method; `Ok((result, extra top-level members))`.
    pub(super) fn call(
        &mut self,
        method: &str,
        params: &Map<String, Value>,
        webhook: bool,
    ) -> CallResult {
        if let Some(failure) = self.armed_failure(method) {
            return Err(failure);
        }
        if method == "crm.deal.get" {
            return self.call_deals(method, params);
        }
        if method.starts_with("event.") || method == "feature.get" {
            return self.call_event(method, params, webhook);
        }
        if method == "events" || method == "app.info" {
            return self.call_binding(method, params, webhook);
        }
        self.call_fields(method, params)
    }
}

/// A method's `result` and the extra top-level members (`next`, `total`) of its answer.
pub(super) type CallResult = Result<(Value, Vec<(&'static str, Value)>), ApiError>;

/// An error answer: HTTP status, `error`, `error_description`.
pub(super) struct ApiError {
    pub(super) status: u16,
    pub(super) error: String,
    pub(super) description: String,
}

impl ApiError {
    pub(super) fn new(status: u16, error: &str, description: &str) -> ApiError {
        ApiError { status, error: error.to_owned(), description: description.to_owned() }
    }
}

pub(super) fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Unix seconds as the portal's local time with its UTC offset (minutes), as Bitrix24 writes
/// `TIMESTAMP_X`: `2026-12-01T19:24:05+03:00`.
pub(super) fn iso_local(secs: i64, offset_minutes: i32) -> String {
    let local = iso_utc(secs + i64::from(offset_minutes) * 60);
    let sign = if offset_minutes < 0 { '-' } else { '+' };
    let abs = offset_minutes.unsigned_abs();
    format!("{}{sign}{:02}:{:02}", &local[..local.len() - 6], abs / 60, abs % 60)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS+00:00`.
pub(super) fn iso_utc(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}+00:00", sod / 3600, sod % 3600 / 60, sod % 60)
}
