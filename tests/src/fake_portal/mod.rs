//! A fake Bitrix24 portal and OAuth server for the end-to-end tests.
//!
//! [`FakePortal::start`] binds a real HTTP/1 server (hyper, on a tokio runtime the fake owns) to
//! `127.0.0.1:0`; dropping the [`FakePortal`] stops it. One fake stands for ONE portal and its
//! OAuth server, both at the same address:
//!
//! - REST: `POST http://127.0.0.1:PORT/rest/<method>` (also `<method>.json`), params as a JSON
//!   object (or a form body, PHP-style brackets allowed), the access token in the `auth` param or
//!   in `?auth=`. Success: 200 `{"result": ..., ["next"/"total",] "time": {...}}`.
//! - OAuth: `GET http://127.0.0.1:PORT/oauth/token/?grant_type=refresh_token&client_id=..`
//!   `&client_secret=..&refresh_token=..`, which is what Bitrix24's
//!   `server_endpoint` `https://oauth.bitrix.info/rest/` turns into
//!   (`https://oauth.bitrix.info/oauth/token/`). [`FakePortal::server_endpoint`] is therefore
//!   `http://127.0.0.1:PORT/rest/`, the same as [`FakePortal::client_endpoint`].
//!
//! # REST methods
//!
//! | method | answer |
//! |---|---|
//! | `crm.{lead,deal,contact,company,quote,invoice,requisite}.userfield.get` `{id}` | the field, UPPER_CASE, labels as language maps (`{"en": ..}`), `LIST` only for `enumeration` |
//! | `crm.<entity>.userfield.update` `{id, fields: {EDIT_FORM_LABEL?}}` | `true`; sets the label and queues `ONCRM<ENTITY>USERFIELDUPDATE` offline, skipping the call's `auth_connector` |
//! | `crm.<entity>.userfield.list` `{filter?, start?}` | array of the entity's live fields, order `SORT, ID`, 50 a page (`next`, `total`); labels only as strings and only with `filter.LANG` (as Bitrix24 does); filter keys `ID, FIELD_NAME, USER_TYPE_ID, XML_ID, MULTIPLE, MANDATORY` compare exactly |
//! | `userfieldconfig.get` `{moduleId: "crm", id}` | `{"field": {..camelCase.., "enum": [..]}}`, smart-process fields only (`CRM_<n>`, `CRM_SMART_INVOICE`, `CRM_SMART_DOCUMENT`) |
//! | `userfieldconfig.list` `{moduleId: "crm", filter?: {entityId}, start?}` | `{"fields": [..]}` of live smart-process fields, without `enum` (as Bitrix24 does) |
//! | `event.bind` `{event, handler?, event_type?, auth_type?, auth_connector?, options?}` | `true`; the portal's checks, see [`bindings`] |
//! | `event.unbind` `{event, handler?, event_type?, auth_type?, auth_connector?}` | `{"count": n}` |
//! | `event.get` | `[{event, handler, auth_type, offline: 0}, {event, connector_id, offline: 1}]` |
//! | `events` | the codes the portal offers the app |
//! | `app.info` | `{ID, CODE, VERSION, STATUS, INSTALLED, ...}` |
//! | `event.offline.get` / `.list` / `.clear` / `.error` | see [`offline`] |
//! | `crm.deal.get` `{id}` | the deal ([`FakePortal::add_deal`]), UPPER_CASE, every value a string; 400 with an empty `error` and "Not found" for an unknown id (see [`deals`]) |
//! | `feature.get` `{CODE}` | `{"value": "Y"}`; `N` for `rest_offline_extended` while safe mode is off |
//! | anything else | 404 `ERROR_METHOD_NOT_FOUND` |
//!
//! Values are what Bitrix24 sends: ids and sorts as strings, flags as `"Y"`/`"N"`.
//!
//! # Errors, checked in this order
//!
//! 1. `/rest/..` while [moved](FakePortal::set_moved): 302 to `/moved/rest/..` (not charged to
//!    the rate limit).
//! 2. Over the rate limit: 503 `QUERY_LIMIT_EXCEEDED` "Too many requests", counted in
//!    [`FakePortal::violations`].
//! 3. Not a `POST`: 400 `INVALID_REQUEST` "POST expected" (what a client that turned the
//!    redirected POST into a GET gets).
//! 4. A body that is not a JSON object or a form: 400 `INVALID_REQUEST`.
//! 5. No token: 401 `NO_AUTH_FOUND`; an unknown token: 401 `invalid_token`; an expired token, or
//!    one made stale by a refresh: 401 `expired_token` "The access token provided has expired.".
//! 6. Unknown method: 404 `ERROR_METHOD_NOT_FOUND`; a method over its operating time: 429
//!    `OPERATION_TIME_LIMIT` (see [`operating`]; every successful answer's `time` carries
//!    `operating` and `operating_reset_at`).
//! 7. `id` missing or not a positive integer: 400 with an EMPTY `error` and
//!    `error_description` "ID is not defined or invalid." (exactly what Bitrix24 answers).
//! 8. A field that does not exist, is deleted, or belongs to another entity than the method's
//!    (e.g. a `CRM_LEAD` field through `crm.deal.userfield.get`, or a `CRM_DEAL` field through
//!    `userfieldconfig.get`): 400 `ERROR_NOT_FOUND` "The entity with ID 'N' is not found.".
//!    (Real Bitrix24 answers a wrong-entity read with 403 and a deleted smart-process field with
//!    a permission error; the fake is stricter and uniform on purpose.)
//!
//! [`FakePortal::fail_next_calls`] makes the next calls of a method fail with 500
//! `INTERNAL_SERVER_ERROR` (after the token check), as a portal that breaks for a moment.
//!
//! The parts live in [`fields`], [`deals`], [`oauth`], [`offline`] (the offline queue), [`bindings`]
//! (`event.bind`, `event.get`, `event.unbind`, `events`, `app.info`), [`operating`] (the
//! operating-time limit), [`wire`] (HTTP) and `state` (the shared state and dispatch).
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use b24_tests::fake_portal::{FakePortal, PortalOptions, RequestKind};
//!
//! let portal = FakePortal::start(PortalOptions::default());
//! let id = portal.add_field("CRM_DEAL", "UF_CRM_COLOR", "enumeration", vec!["red", "green"]);
//! let user_token = portal.issue_access_token(); // put into auth[access_token] of the event
//! let (access, refresh) = portal.initial_oauth(); // what ONAPPINSTALL carries
//! let auth = portal.auth_json(Some(&user_token), None, "app-token"); // the event's auth block
//! // ... configure the host with portal.options().client_id/client_secret, send events ...
//! portal.set_label(id, "Colour");
//! portal.expire_access_tokens(); // the host must refresh on its next call
//! assert_eq!(portal.snapshot()[id.to_string()]["label"], "Colour");
//! assert_eq!(portal.violations(), 0);
//! assert!(portal.peak_rate(Duration::from_secs(10)) <= 2.0 + 50.0 / 10.0);
//! let rest_calls = portal.requests().iter().filter(|r| r.kind == RequestKind::Rest).count();
//! # let _ = (access, refresh, auth, rest_calls);
//! ```

pub mod bindings;
pub mod deals;
pub mod fields;
pub mod oauth;
pub mod offline;
pub mod operating;
mod state;
#[cfg(test)]
mod testkit;
pub mod wire;

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

pub use fields::{EnumValue, Field};
use state::{Shared, State};
use wire::handle;

/// The default OAuth `client_id` of the fake application (configure the host with it).
pub const CLIENT_ID: &str = "local.fake0000000000001.00000001";
/// The default OAuth `client_secret` of the fake application.
pub const CLIENT_SECRET: &str = "fakeSecret0123456789abcdefghijklmnopqrstuvwxyzABCD";

/// The `error` code (HTTP 403) Bitrix24 answers a plan without the `rest_offline_extended`
/// feature for `event.offline.get` with `clear=0` (see [`FakePortal::set_offline_safe_mode`]).
pub const WRONG_LICENSE: &str = "WRONG_LICENSE";
/// The `error_description` that goes with [`WRONG_LICENSE`] for the offline queue, verbatim
/// from the Bitrix24 REST documentation of `event.offline.get`.
pub const OFFLINE_LICENSE_DESCRIPTION: &str =
    "This feature is not enabled for the current license: extended offline events handling";
/// The `error_description` that goes with [`WRONG_LICENSE`] when a plan without connectors
/// gets an `auth_connector` (see [`FakePortal::set_connectors_allowed`]).
pub const CONNECTOR_LICENSE_DESCRIPTION: &str =
    "This feature is not enabled for the current license: auth_connector";

/// How to start a [`FakePortal`].
#[derive(Debug, Clone)]
pub struct PortalOptions {
    /// Leak rate of the per-portal leaky bucket, requests per second (default 2.0, Bitrix24's
    /// standard plan). `f64::INFINITY` turns the limit off.
    pub rate_per_sec: f64,
    /// Bucket size: how many REST requests may arrive at once (default 50).
    pub burst: u32,
    /// The application's OAuth client id (default [`CLIENT_ID`]).
    pub client_id: String,
    /// The application's OAuth client secret (default [`CLIENT_SECRET`]).
    pub client_secret: String,
    /// The portal's `member_id` (default [`crate::MEMBER`], the fixtures' portal).
    pub member_id: String,
    /// The portal's `domain`; `None` (default) means `127.0.0.1:PORT`.
    pub domain: Option<String>,
    /// Lifetime of each issued access token (default one hour, as in Bitrix24).
    pub access_ttl: Duration,
    /// Whether the plan has Bitrix24's `rest_offline_extended` feature, i.e. the "safe"
    /// reserve-then-confirm mode of the offline queue (`event.offline.get` with `clear=0`).
    /// Default true; see [`FakePortal::set_offline_safe_mode`].
    pub offline_safe_mode: bool,
    /// The portal's UTC offset in minutes: `TIMESTAMP_X` is the portal's local time with it
    /// (default 180, `+03:00`).
    pub utc_offset_minutes: i32,
    /// A method whose operating time over the window exceeds this is blocked (default 480 s,
    /// Bitrix24's documented limit); see [`operating`].
    pub operating_limit: Duration,
    /// The window the operating time is summed over, in ten buckets (default 600 s).
    pub operating_window: Duration,
}

impl Default for PortalOptions {
    fn default() -> Self {
        PortalOptions {
            rate_per_sec: 2.0,
            burst: 50,
            client_id: CLIENT_ID.to_owned(),
            client_secret: CLIENT_SECRET.to_owned(),
            member_id: crate::MEMBER.to_owned(),
            domain: None,
            access_ttl: Duration::from_secs(3600),
            offline_safe_mode: true,
            utc_offset_minutes: 180,
            operating_limit: Duration::from_secs(480),
            operating_window: Duration::from_secs(600),
        }
    }
}

/// What kind of request a [`RequestRecord`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// A REST method call under `/rest/` or `/moved/rest/` (charged to the rate limit, also
    /// when refused for it).
    Rest,
    /// A `/rest/` request answered with the 302 of a [moved](FakePortal::set_moved) portal.
    Redirect,
    /// A call of `/oauth/token/`.
    OAuth,
    /// Any other path (answered 404).
    Other,
}

/// One request the fake answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// When it arrived, from the start of the fake.
    pub at: Duration,
    /// What kind it is.
    pub kind: RequestKind,
    /// The HTTP method (`POST`, `GET`).
    pub http_method: String,
    /// The REST method, lower case without `.json` (e.g. `crm.deal.userfield.get`);
    /// `oauth/token` for OAuth; the path for [`RequestKind::Other`].
    pub method: String,
    /// The access token sent (REST, as sent, valid or not) or the refresh token (OAuth).
    pub token: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// The `error` code answered, if any.
    pub error: Option<String>,
}

/// The running fake portal; the server stops when it is dropped. `Send + Sync`: share it by
/// reference between threads.
pub struct FakePortal {
    shared: Arc<Shared>,
    addr: SocketAddr,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakePortal {
    /// Binds `127.0.0.1:0`, starts serving, and mints the [initial OAuth
    /// pair](FakePortal::initial_oauth). Panics only if the socket or runtime cannot be made.
    pub fn start(options: PortalOptions) -> FakePortal {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("fake portal: cannot bind");
        listener.set_nonblocking(true).expect("fake portal: cannot set non-blocking");
        let addr = listener.local_addr().expect("fake portal: no local address");
        let base = format!("http://{addr}");
        let now = Instant::now();
        let mut state = State {
            domain: options.domain.clone().unwrap_or_else(|| addr.to_string()),
            opts: options,
            base,
            started: now,
            fields: BTreeMap::new(),
            next_field_id: 1001,
            next_enum_id: 3001,
            next_token: 1,
            access: HashMap::new(),
            refresh: HashMap::new(),
            initial: (String::new(), String::new()),
            bucket_level: 0.0,
            bucket_at: now,
            moved: false,
            requests: Vec::new(),
            refreshes: Vec::new(),
            violations: 0,
            offline: BTreeMap::new(),
            next_offline_id: 1,
            next_hex: 0,
            offline_cleared: Vec::new(),
            offline_errored: Vec::new(),
            failing_clears: 0,
            bindings: Vec::new(),
            event_calls: Vec::new(),
            next_seq: 0,
            garbled_clears: 0,
            hold_clear: None,
            held_clear: None,
            app_user_admin: true,
            connectors_allowed: true,
            webhooks: Vec::new(),
            events_offered: bindings::default_events(),
            installation_finished: true,
            lost_gets: 0,
            offline_discarded: Vec::new(),
            meters: HashMap::new(),
            operating_costs: HashMap::new(),
            deals: BTreeMap::new(),
            next_deal_id: 501,
            failing_calls: HashMap::new(),
        };
        state.initial = state.mint_pair(now);
        let shared = Arc::new(Shared { state: Mutex::new(state) });

        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fake-portal")
            .enable_all()
            .build()
            .expect("fake portal: cannot build a tokio runtime");
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let server_shared = shared.clone();
        runtime.spawn(async move {
            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else { return };
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => {
                            let shared = server_shared.clone();
                            tokio::spawn(async move {
                                let service = service_fn(move |req| handle(shared.clone(), req));
                                let _ = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(TokioIo::new(stream), service)
                                    .await;
                            });
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    },
                }
            }
        });
        FakePortal { shared, addr, shutdown: Some(tx), runtime: Some(runtime) }
    }

    /// The server's address (`127.0.0.1:PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The REST base of the portal, `http://127.0.0.1:PORT/rest/`: the event's
    /// `auth[client_endpoint]`.
    pub fn client_endpoint(&self) -> String {
        format!("http://{}/rest/", self.addr)
    }

    /// The OAuth server as Bitrix24 names it in `auth[server_endpoint]`:
    /// `http://127.0.0.1:PORT/rest/` (the token URL is derived from it, see [`Self::oauth_url`]).
    pub fn server_endpoint(&self) -> String {
        format!("http://{}/rest/", self.addr)
    }

    /// `http://127.0.0.1:PORT/oauth/token/`.
    pub fn oauth_url(&self) -> String {
        format!("http://{}/oauth/token/", self.addr)
    }

    /// Where a [moved](Self::set_moved) portal serves REST: `http://127.0.0.1:PORT/moved/rest/`.
    pub fn moved_endpoint(&self) -> String {
        format!("http://{}/moved/rest/", self.addr)
    }

    /// The options the fake runs with (with the defaults filled in).
    pub fn options(&self) -> PortalOptions {
        self.shared.lock().opts.clone()
    }

    /// The portal's `domain` (`127.0.0.1:PORT` unless set in the options).
    pub fn domain(&self) -> String {
        self.shared.lock().domain.clone()
    }

    /// The portal's `member_id`.
    pub fn member_id(&self) -> String {
        self.shared.lock().opts.member_id.clone()
    }

    /// Makes the portal "moved" (true) or back in place (false). While moved, every request to
    /// `/rest/<method>` is answered 302 with `Location: http://127.0.0.1:PORT/moved/rest/<method>`
    /// (query kept), and a refresh answers `client_endpoint` = [`Self::moved_endpoint`].
    /// `/moved/rest/` serves the same methods at all times.
    pub fn set_moved(&self, moved: bool) {
        self.shared.lock().moved = moved;
    }

    /// Every request answered so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared.lock().requests.clone()
    }

    /// How many REST calls of `method` (lower case, without `.json`) arrived, whatever the
    /// answer.
    pub fn calls(&self, method: &str) -> usize {
        let state = self.shared.lock();
        state.requests.iter().filter(|r| r.kind == RequestKind::Rest && r.method == method).count()
    }

    /// How many REST requests were refused with 503 `QUERY_LIMIT_EXCEEDED`.
    pub fn violations(&self) -> usize {
        self.shared.lock().violations
    }

    /// The successful refreshes, in order: `(refresh token used, new refresh token)`.
    pub fn refreshes(&self) -> Vec<(String, String)> {
        self.shared.lock().refreshes.clone()
    }

    /// The highest REST request rate seen: the most [`RequestKind::Rest`] requests (refused ones
    /// included) that arrived within any `window`-long span, divided by `window` in seconds.
    /// 0 for an empty window.
    pub fn peak_rate(&self, window: Duration) -> f64 {
        if window.is_zero() {
            return 0.0;
        }
        let state = self.shared.lock();
        let times: Vec<Duration> =
            state.requests.iter().filter(|r| r.kind == RequestKind::Rest).map(|r| r.at).collect();
        let mut best = 0usize;
        let mut first = 0usize;
        for (last, t) in times.iter().enumerate() {
            while *t - times[first] >= window {
                first += 1;
            }
            best = best.max(last - first + 1);
        }
        best as f64 / window.as_secs_f64()
    }
}

impl Drop for FakePortal {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(runtime) = self.runtime.take() {
            if tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            } else {
                runtime.shutdown_timeout(Duration::from_secs(2));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake_portal::{state::iso_utc, wire::percent_decode};

    #[test]
    fn fake_portal_stops_on_drop_and_helpers() {
        let portal = FakePortal::start(PortalOptions::default());
        let auth = portal.auth_json(Some("at"), Some("rt"), "app");
        assert_eq!(auth["client_endpoint"], portal.client_endpoint());
        assert_eq!(auth["member_id"], crate::MEMBER);
        assert_eq!(auth["refresh_token"], "rt");
        let id = portal.add_field("CRM_DEAL", "UF_CRM_A", "string", vec![]);
        assert!(portal.update_field(id, |f| {
            f.multiple = true;
            f.id = 0;
        }));
        assert!(portal.field(id).unwrap().multiple);
        assert!(!portal.update_field(999_999, |_| {}));
        assert_eq!(iso_utc(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso_utc(1_753_790_529), "2025-07-29T12:02:09+00:00");
        assert_eq!(percent_decode("a%5Bb%5D+c%zz%4"), "a[b] c%zz%4");
        let addr = portal.addr();
        drop(portal);
        assert!(std::net::TcpStream::connect(addr).is_err(), "the port is closed after drop");
    }
}
