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
//! | `crm.<entity>.userfield.list` `{filter?, start?}` | array of the entity's live fields, order `SORT, ID`, 50 a page (`next`, `total`); labels only as strings and only with `filter.LANG` (as Bitrix24 does); filter keys `ID, FIELD_NAME, USER_TYPE_ID, XML_ID, MULTIPLE, MANDATORY` compare exactly |
//! | `userfieldconfig.get` `{moduleId: "crm", id}` | `{"field": {..camelCase.., "enum": [..]}}`, smart-process fields only (`CRM_<n>`, `CRM_SMART_INVOICE`, `CRM_SMART_DOCUMENT`) |
//! | `userfieldconfig.list` `{moduleId: "crm", filter?: {entityId}, start?}` | `{"fields": [..]}` of live smart-process fields, without `enum` (as Bitrix24 does) |
//! | `event.bind` `{event, handler?, event_type?, auth_type?, auth_connector?, options?}` | `true`; see [Offline events](#offline-events) |
//! | `event.unbind` `{event, handler?, event_type?, auth_connector?}` | `{"count": n}` |
//! | `event.get` | `[{event, handler, auth_type, offline}]` |
//! | `event.offline.get` / `.list` / `.clear` / `.error` | see [Offline events](#offline-events) |
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
//! 6. Unknown method: 404 `ERROR_METHOD_NOT_FOUND`.
//! 7. `id` missing or not a positive integer: 400 with an EMPTY `error` and
//!    `error_description` "ID is not defined or invalid." (exactly what Bitrix24 answers).
//! 8. A field that does not exist, is deleted, or belongs to another entity than the method's
//!    (e.g. a `CRM_LEAD` field through `crm.deal.userfield.get`, or a `CRM_DEAL` field through
//!    `userfieldconfig.get`): 400 `ERROR_NOT_FOUND` "The entity with ID 'N' is not found.".
//!    (Real Bitrix24 answers a wrong-entity read with 403 and a deleted smart-process field with
//!    a permission error; the fake is stricter and uniform on purpose.)
//!
//! # Offline events
//!
//! The portal keeps Bitrix24's offline event queue. Tests fill it with
//! [`FakePortal::push_offline`] (it keeps the **latest state per change**: a push for the same
//! `EVENT_NAME` and `EVENT_DATA.FIELDS.ID` as a pending row, i.e. one neither reserved nor
//! marked erroneous, rewrites that row in place and keeps its `ID` and `MESSAGE_ID`) and read it
//! with [`FakePortal::offline_rows`], [`FakePortal::offline_cleared`] and
//! [`FakePortal::offline_errored`]. Rows, as Bitrix24 sends them: `ID` (decimal string,
//! increasing from 1), `TIMESTAMP_X` (`2026-11-24T21:22:32+00:00`), `EVENT_NAME`, `EVENT_DATA`
//! (the online event's `data`), `EVENT_ADDITIONAL` (`{"user_id": "1"}`, or `{"user_id": 0}`
//! without a user), `MESSAGE_ID` (32 lower-case hex); `event.offline.list` and
//! [`FakePortal::offline_rows`] add `PROCESS_ID` (`""` when not reserved) and `ERROR`
//! (`"0"`/`"1"`). Param names are matched case-insensitively; list params may be JSON arrays or
//! PHP form lists (`message_id[]=..`).
//!
//! - `event.offline.get` `{filter?, order?, limit?, clear?, process_id?, error?,
//!   auth_connector?}` answers `{"process_id": .., "events": [rows without PROCESS_ID/ERROR]}`,
//!   always in `ID` order (`order` is ignored). `limit` defaults to 50 and is capped at 50; below
//!   1 or not a number: 400 `ERROR_ARGUMENT` "Value must be positive integer". `error=0`
//!   (default) takes only rows with `ERROR=0`, `error=1` only erroneous ones. `filter` supports
//!   `ID`, `TIMESTAMP_X`, `EVENT_NAME`, `MESSAGE_ID` with `=`, `>`, `<`, `>=`, `<=` (none = `=`);
//!   other fields or operations: 400 `ERROR_ARGUMENT` "Filter field not allowed: F" / "Filter
//!   operation not allowed: OP". `auth_connector` is accepted and only recorded
//!   ([`FakePortal::event_calls`]): the fake has one queue, not one per connector.
//!   - `clear=1` (default) without `process_id`: up to `limit` unreserved rows, deleted at once;
//!     `process_id` is `null` (as Bitrix24 answers).
//!   - `clear=0` without `process_id`: reserves up to `limit` unreserved rows under a new 32-hex
//!     `process_id` (returned even when no row was free). Every call runs under one lock, so
//!     parallel callers get disjoint batches; reserved rows are never handed to another batch.
//!   - with `process_id`: the rows already reserved under it, topped up to `limit` with newly
//!     reserved unreserved rows; with `clear=1` the WHOLE batch is then deleted, answered or not
//!     (Bitrix24's documented behaviour).
//!   - `clear=0` while [safe mode](FakePortal::set_offline_safe_mode) is off: 403
//!     [`WRONG_LICENSE`] "This feature is not enabled for the current license: extended offline
//!     events handling" ([`OFFLINE_LICENSE_DESCRIPTION`]), checked after the params.
//! - `event.offline.list` `{filter?, start?}`: all rows (reserved and erroneous too, filter
//!   also on `PROCESS_ID`, `ERROR`), 50 a page with `next`/`total`; reserves nothing.
//! - `event.offline.clear` `{process_id, message_id? | id?}`: deletes the listed rows that are
//!   reserved under `process_id` (`message_id` wins over `id`; neither, or empty lists: the whole
//!   batch); others are left alone. Answers `true` even when nothing matched. Missing or empty
//!   `process_id`: 400 `ERROR_ARGUMENT` "Argument 'PROCESS_ID' is null or empty" (Bitrix24
//!   would take an empty string as "every unreserved row": the fake refuses it); `message_id`
//!   not a list of 32-character strings: 400 `ERROR_ARGUMENT` "Value must be array of
//!   MESSAGE_ID values"; `id` not a list of positive integers: 400 `ERROR_ARGUMENT` "Value must
//!   be array of integers". While [`FakePortal::fail_next_clears`] has calls left: 500
//!   `INTERNAL_SERVER_ERROR` "Internal server error" and nothing is deleted.
//! - `event.offline.error` `{process_id, message_id}`: the listed rows reserved under
//!   `process_id` get `ERROR=1` and lose their reservation (so only `error=1` gets them again);
//!   answers `true`. Same `process_id` errors as clear; `message_id` missing: 400
//!   `ERROR_ARGUMENT` "Value must be array of MESSAGE_ID values". (Bitrix24 also deletes rows
//!   with the same `MESSAGE_ID` outside the batch; the fake does not.)
//! - `event.bind`: records the binding ([`FakePortal::bindings`], `event.get`); `handler` is
//!   required for online bindings (400 `ERROR_ARGUMENT` "Argument 'HANDLER' is null or empty")
//!   and ignored for offline ones; no `event`: "Argument 'EVENT' is null or empty"; an
//!   `event_type` other than `online`/`offline`: "Value must be one of {online|offline}";
//!   `ONOFFLINEEVENT` offline: "Offline event cannot be registered for this event.". Binding
//!   the same (event, handler, auth_type, event_type, auth_connector) again answers, as
//!   Bitrix24 does, 400 `ERROR_CORE` "Unable to set event handler: Handler already binded".
//!   Binding does not feed the queue: tests push rows themselves.
//!
//! # OAuth
//!
//! Wrong `client_id`/`client_secret`: 401 `invalid_client`; `grant_type` other than
//! `refresh_token`: 400 `unsupported_grant_type`; unknown or already used refresh token: 400
//! `invalid_grant`. A successful refresh answers a new pair and spends the old refresh token and
//! the access token issued with it. OAuth calls are never rate-limited.
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

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, Response, StatusCode, body::Incoming, header, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};

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

/// Largest request body the fake reads; a bigger one is answered 400.
const MAX_BODY: usize = 1 << 20;
/// Page size of the `*.list` methods, as in Bitrix24.
const PAGE: usize = 50;
/// The classic CRM entities: the method's word and the `ENTITY_ID` its fields carry.
const CLASSIC: [(&str, &str); 7] = [
    ("lead", "CRM_LEAD"),
    ("deal", "CRM_DEAL"),
    ("contact", "CRM_CONTACT"),
    ("company", "CRM_COMPANY"),
    ("quote", "CRM_QUOTE"),
    ("invoice", "CRM_INVOICE"),
    ("requisite", "CRM_REQUISITE"),
];

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
        }
    }
}

/// One value of an `enumeration` field's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnumValue {
    /// Value id (`ID`); global and increasing across the portal.
    pub id: u64,
    /// The text (`VALUE`).
    pub value: String,
    /// `SORT` (10, 20, ... as set by [`FakePortal::add_field`] / [`FakePortal::set_list`]).
    pub sort: u32,
    /// `DEF`: whether it is the default value.
    pub def: bool,
    /// `XML_ID` (32 hex digits, derived from the id).
    pub xml_id: String,
}

/// A user field as the fake stores it. Change it with [`FakePortal::update_field`].
#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    /// `ID`, global and increasing; never changes.
    pub id: u64,
    /// `ENTITY_ID`, e.g. `CRM_DEAL` or `CRM_7`.
    pub entity_id: String,
    /// `FIELD_NAME`, e.g. `UF_CRM_COLOR`.
    pub field_name: String,
    /// `USER_TYPE_ID`, e.g. `string`, `enumeration`.
    pub user_type_id: String,
    /// `XML_ID` (`null` when `None`).
    pub xml_id: Option<String>,
    /// `SORT` (default 100).
    pub sort: u32,
    /// `MULTIPLE`.
    pub multiple: bool,
    /// `MANDATORY`.
    pub mandatory: bool,
    /// `SHOW_FILTER`: `N`, `I`, `E` or `S` (default `N`).
    pub show_filter: String,
    /// `SHOW_IN_LIST` (default true).
    pub show_in_list: bool,
    /// `EDIT_IN_LIST` (default true).
    pub edit_in_list: bool,
    /// `IS_SEARCHABLE`.
    pub is_searchable: bool,
    /// `SETTINGS`, as Bitrix24 shapes it for the type.
    pub settings: Value,
    /// The English label: `EDIT_FORM_LABEL`, `LIST_COLUMN_LABEL` and `LIST_FILTER_LABEL`
    /// (default: the field name).
    pub label: String,
    /// The list values (sent as `LIST`/`enum` for `enumeration` fields only).
    pub list: Vec<EnumValue>,
    /// Deleted fields are kept so ids stay unique; they answer `ERROR_NOT_FOUND`.
    pub deleted: bool,
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

struct Shared {
    state: Mutex<State>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct AccessToken {
    expires_at: Instant,
    /// Spent by a refresh of the refresh token it was issued with.
    stale: bool,
}

struct RefreshToken {
    /// The access token issued together with it.
    access: String,
    used: bool,
}

struct State {
    opts: PortalOptions,
    /// `http://127.0.0.1:PORT`
    base: String,
    domain: String,
    started: Instant,
    fields: BTreeMap<u64, Field>,
    next_field_id: u64,
    next_enum_id: u64,
    next_token: u64,
    access: HashMap<String, AccessToken>,
    refresh: HashMap<String, RefreshToken>,
    initial: (String, String),
    bucket_level: f64,
    bucket_at: Instant,
    moved: bool,
    requests: Vec<RequestRecord>,
    refreshes: Vec<(String, String)>,
    violations: usize,
    /// The offline event queue by `ID`.
    offline: BTreeMap<u64, OfflineRow>,
    next_offline_id: u64,
    /// Counter behind the 32-hex `MESSAGE_ID`s and `process_id`s.
    next_hex: u64,
    offline_cleared: Vec<String>,
    offline_errored: Vec<String>,
    /// How many of the next `event.offline.clear` calls fail.
    failing_clears: usize,
    bindings: Vec<Binding>,
    event_calls: Vec<Value>,
}

/// One row of the offline event queue.
#[derive(Debug, Clone)]
struct OfflineRow {
    id: u64,
    /// Unix seconds of the push (or of the last merged push).
    timestamp: i64,
    event_name: String,
    data: Value,
    user_id: Option<u64>,
    message_id: String,
    /// The reserving batch; `None` when not reserved.
    process_id: Option<String>,
    error: bool,
}

/// One `event.bind` subscription.
#[derive(Debug, Clone, PartialEq)]
struct Binding {
    event: String,
    handler: String,
    auth_type: String,
    offline: bool,
    auth_connector: Option<String>,
    options: Value,
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

    /// Mints a new access token valid for `access_ttl`, not tied to any refresh token: the user
    /// token an event carries in `auth[access_token]`.
    pub fn issue_access_token(&self) -> String {
        let mut state = self.shared.lock();
        state.mint_access(Instant::now())
    }

    /// The `(access_token, refresh_token)` pair an ONAPPINSTALL carries, minted at start; the
    /// same pair on every call (once refreshed, the refresh token is spent).
    pub fn initial_oauth(&self) -> (String, String) {
        self.shared.lock().initial.clone()
    }

    /// Mints a fresh `(access_token, refresh_token)` pair (e.g. for a second install).
    pub fn issue_oauth_pair(&self) -> (String, String) {
        let mut state = self.shared.lock();
        state.mint_pair(Instant::now())
    }

    /// Makes every access token issued so far expire now (they answer `expired_token`); tokens
    /// issued later are valid as usual.
    pub fn expire_access_tokens(&self) {
        let now = Instant::now();
        for token in self.shared.lock().access.values_mut() {
            token.expires_at = token.expires_at.min(now);
        }
    }

    /// The event's `auth` block for this portal as JSON: `access_token`, `expires`,
    /// `expires_in`, `scope`, `status` and `user_id` when `access` is given, `refresh_token`
    /// when `refresh` is given, and always `domain`, `client_endpoint`, `server_endpoint`,
    /// `member_id`, `application_token`.
    pub fn auth_json(
        &self,
        access: Option<&str>,
        refresh: Option<&str>,
        application_token: &str,
    ) -> Value {
        let state = self.shared.lock();
        let mut auth = Map::new();
        if let Some(access) = access {
            let ttl = state.opts.access_ttl.as_secs();
            auth.insert("access_token".into(), json!(access));
            auth.insert("expires".into(), json!((unix_now() as u64 + ttl).to_string()));
            auth.insert("expires_in".into(), json!(ttl.to_string()));
            auth.insert("scope".into(), json!("crm"));
        }
        auth.insert("domain".into(), json!(state.domain));
        auth.insert("server_endpoint".into(), json!(format!("{}/rest/", state.base)));
        if access.is_some() {
            auth.insert("status".into(), json!("L"));
        }
        auth.insert("client_endpoint".into(), json!(format!("{}/rest/", state.base)));
        auth.insert("member_id".into(), json!(state.opts.member_id));
        if access.is_some() {
            auth.insert("user_id".into(), json!("1"));
        }
        if let Some(refresh) = refresh {
            auth.insert("refresh_token".into(), json!(refresh));
        }
        auth.insert("application_token".into(), json!(application_token));
        Value::Object(auth)
    }

    /// Adds a field and returns its new id (ids are global and increasing, from 1001). `list`
    /// becomes the field's list values, in order (`SORT` 10, 20, ...); they are served only when
    /// `user_type` is `enumeration`. The label is the field name until changed.
    pub fn add_field(
        &self,
        entity_id: &str,
        field_name: &str,
        user_type: &str,
        list: Vec<&str>,
    ) -> u64 {
        let mut state = self.shared.lock();
        let id = state.next_field_id;
        state.next_field_id += 1;
        let list = state.make_list(&[], &list);
        let field = Field {
            id,
            entity_id: entity_id.to_owned(),
            field_name: field_name.to_owned(),
            user_type_id: user_type.to_owned(),
            xml_id: None,
            sort: 100,
            multiple: false,
            mandatory: false,
            show_filter: "N".to_owned(),
            show_in_list: true,
            edit_in_list: true,
            is_searchable: false,
            settings: default_settings(user_type),
            label: field_name.to_owned(),
            list,
            deleted: false,
        };
        state.fields.insert(id, field);
        id
    }

    /// A copy of a field (deleted ones too), `None` if the id was never used.
    pub fn field(&self, id: u64) -> Option<Field> {
        self.shared.lock().fields.get(&id).cloned()
    }

    /// Changes a field with `change` (run on a copy, without holding the fake's lock, so it may
    /// call the fake); the id cannot change. Returns false if the id was never used.
    pub fn update_field(&self, id: u64, change: impl FnOnce(&mut Field)) -> bool {
        let Some(mut field) = self.field(id) else { return false };
        change(&mut field);
        field.id = id;
        let mut state = self.shared.lock();
        match state.fields.get_mut(&id) {
            Some(slot) => {
                *slot = field;
                true
            }
            None => false,
        }
    }

    /// Sets the field's English label. Returns false if the id was never used.
    pub fn set_label(&self, id: u64, label: &str) -> bool {
        self.update_field(id, |f| f.label = label.to_owned())
    }

    /// Replaces the field's list values, as SETENUMVALUES does: a value already in the list
    /// keeps its id and flags, a new value gets a new id, missing ones are removed; `SORT`
    /// becomes 10, 20, ... in the given order. Returns false if the id was never used.
    pub fn set_list(&self, id: u64, values: Vec<&str>) -> bool {
        let mut state = self.shared.lock();
        let Some(old) = state.fields.get(&id).map(|f| f.list.clone()) else { return false };
        let list = state.make_list(&old, &values);
        if let Some(field) = state.fields.get_mut(&id) {
            field.list = list;
        }
        true
    }

    /// Deletes a field: from now on it answers `ERROR_NOT_FOUND` and leaves
    /// [`Self::snapshot`]. Returns false if the id is unknown or already deleted.
    pub fn delete_field(&self, id: u64) -> bool {
        match self.shared.lock().fields.get_mut(&id) {
            Some(field) if !field.deleted => {
                field.deleted = true;
                true
            }
            _ => false,
        }
    }

    /// The live (not deleted) fields in a neutral shape to compare with what a registry
    /// plugin built:
    ///
    /// ```text
    /// { "<id>": { "entity_id": "CRM_DEAL", "field_name": "UF_CRM_COLOR",
    ///             "user_type_id": "enumeration", "label": "<English label>",
    ///             "list": ["red", "green"] } }
    /// ```
    ///
    /// Keys are the decimal ids in increasing order; `list` holds the list values' texts in
    /// `SORT, ID` order for `enumeration` fields and is `[]` for every other type.
    pub fn snapshot(&self) -> Value {
        let state = self.shared.lock();
        let mut out = Map::new();
        for field in state.fields.values().filter(|f| !f.deleted) {
            let list: Vec<Value> = if field.is_enum() {
                field.sorted_list().into_iter().map(|v| json!(v.value)).collect()
            } else {
                Vec::new()
            };
            out.insert(
                field.id.to_string(),
                json!({
                    "entity_id": field.entity_id,
                    "field_name": field.field_name,
                    "user_type_id": field.user_type_id,
                    "label": field.label,
                    "list": list,
                }),
            );
        }
        Value::Object(out)
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

    /// The subscriptions made with `event.bind` (minus those removed by `event.unbind`), in
    /// order: `{"event", "handler" ("" for offline), "auth_type" ("0" unless given),
    /// "offline" (0/1), "auth_connector" (string or null), "options" (object or null)}`.
    pub fn bindings(&self) -> Vec<Value> {
        self.shared.lock().bindings.iter().map(Binding::full).collect()
    }

    /// Every call of an `event.*` method (and `feature.get`) that passed the token check, in
    /// order: `{"method": "event.offline.get", "params": {..}}` with the params as received,
    /// minus `auth` (so `auth_connector`, `limit`, `clear`, `process_id` can be asserted).
    pub fn event_calls(&self) -> Vec<Value> {
        self.shared.lock().event_calls.clone()
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

impl Field {
    fn is_enum(&self) -> bool {
        self.user_type_id == "enumeration"
    }

    fn sorted_list(&self) -> Vec<&EnumValue> {
        let mut list: Vec<&EnumValue> = self.list.iter().collect();
        list.sort_by_key(|v| (v.sort, v.id));
        list
    }

    fn is_smart(&self) -> bool {
        is_smart_entity(&self.entity_id)
    }

    /// The UPPER_CASE shape of `crm.*.userfield.get`/`.list`. `labels`: `None` for language
    /// maps (get), `Some(None)` for no labels (list without LANG), `Some(Some(lang))` for
    /// strings (list with LANG).
    fn upper(&self, labels: Option<Option<&str>>) -> Value {
        let mut m = Map::new();
        m.insert("ID".into(), json!(self.id.to_string()));
        m.insert("ENTITY_ID".into(), json!(self.entity_id));
        m.insert("FIELD_NAME".into(), json!(self.field_name));
        m.insert("USER_TYPE_ID".into(), json!(self.user_type_id));
        m.insert("XML_ID".into(), json!(self.xml_id));
        m.insert("SORT".into(), json!(self.sort.to_string()));
        m.insert("MULTIPLE".into(), yn(self.multiple));
        m.insert("MANDATORY".into(), yn(self.mandatory));
        m.insert("SHOW_FILTER".into(), json!(self.show_filter));
        m.insert("SHOW_IN_LIST".into(), yn(self.show_in_list));
        m.insert("EDIT_IN_LIST".into(), yn(self.edit_in_list));
        m.insert("IS_SEARCHABLE".into(), yn(self.is_searchable));
        m.insert("SETTINGS".into(), self.settings.clone());
        let label_keys = ["EDIT_FORM_LABEL", "LIST_COLUMN_LABEL", "LIST_FILTER_LABEL"];
        match labels {
            None => {
                for key in label_keys {
                    m.insert(key.into(), json!({ "en": self.label }));
                }
                m.insert("ERROR_MESSAGE".into(), json!({ "en": "" }));
                m.insert("HELP_MESSAGE".into(), json!({ "en": "" }));
            }
            Some(Some(lang)) => {
                let text = if lang.eq_ignore_ascii_case("en") { self.label.as_str() } else { "" };
                for key in label_keys {
                    m.insert(key.into(), json!(text));
                }
                m.insert("ERROR_MESSAGE".into(), Value::Null);
                m.insert("HELP_MESSAGE".into(), Value::Null);
            }
            Some(None) => {}
        }
        if self.is_enum() {
            let list: Vec<Value> = self
                .sorted_list()
                .into_iter()
                .map(|v| {
                    json!({
                        "ID": v.id.to_string(),
                        "SORT": v.sort.to_string(),
                        "VALUE": v.value,
                        "DEF": yn(v.def),
                        "XML_ID": v.xml_id,
                    })
                })
                .collect();
            m.insert("LIST".into(), Value::Array(list));
        }
        Value::Object(m)
    }

    /// The camelCase shape of `userfieldconfig.get` (with `enum`) and `.list` (without).
    fn camel(&self, with_enum: bool) -> Value {
        let mut m = Map::new();
        m.insert("id".into(), json!(self.id.to_string()));
        m.insert("entityId".into(), json!(self.entity_id));
        m.insert("fieldName".into(), json!(self.field_name));
        m.insert("userTypeId".into(), json!(self.user_type_id));
        m.insert("xmlId".into(), json!(self.xml_id));
        m.insert("sort".into(), json!(self.sort.to_string()));
        m.insert("multiple".into(), yn(self.multiple));
        m.insert("mandatory".into(), yn(self.mandatory));
        m.insert("showFilter".into(), json!(self.show_filter));
        m.insert("showInList".into(), yn(self.show_in_list));
        m.insert("editInList".into(), yn(self.edit_in_list));
        m.insert("isSearchable".into(), yn(self.is_searchable));
        m.insert("settings".into(), self.settings.clone());
        m.insert("languageId".into(), json!({ "en": "en" }));
        m.insert("editFormLabel".into(), json!({ "en": self.label }));
        m.insert("listColumnLabel".into(), json!({ "en": self.label }));
        m.insert("listFilterLabel".into(), json!({ "en": self.label }));
        m.insert("errorMessage".into(), json!({ "en": null }));
        m.insert("helpMessage".into(), json!({ "en": null }));
        if with_enum && self.is_enum() {
            let list: Vec<Value> = self
                .sorted_list()
                .into_iter()
                .map(|v| {
                    json!({
                        "id": v.id.to_string(),
                        "userFieldId": self.id.to_string(),
                        "value": v.value,
                        "def": yn(v.def),
                        "sort": v.sort.to_string(),
                        "xmlId": v.xml_id,
                    })
                })
                .collect();
            m.insert("enum".into(), Value::Array(list));
        }
        Value::Object(m)
    }
}

impl State {
    fn mint_access(&mut self, now: Instant) -> String {
        let port = self.base.rsplit(':').next().unwrap_or("0").to_owned();
        let token = format!("fake-at-{port}-{:06}", self.next_token);
        self.next_token += 1;
        self.access.insert(
            token.clone(),
            AccessToken { expires_at: now + self.opts.access_ttl, stale: false },
        );
        token
    }

    fn mint_pair(&mut self, now: Instant) -> (String, String) {
        let access = self.mint_access(now);
        let port = self.base.rsplit(':').next().unwrap_or("0").to_owned();
        let refresh = format!("fake-rt-{port}-{:06}", self.next_token);
        self.next_token += 1;
        self.refresh.insert(refresh.clone(), RefreshToken { access: access.clone(), used: false });
        (access, refresh)
    }

    /// A new list for `values`, keeping the ids and flags of values already in `old`.
    fn make_list(&mut self, old: &[EnumValue], values: &[&str]) -> Vec<EnumValue> {
        let mut taken = vec![false; old.len()];
        let mut list = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let sort = (i as u32 + 1) * 10;
            let reuse = old.iter().enumerate().find(|(j, v)| !taken[*j] && v.value == *value);
            let item = match reuse {
                Some((j, v)) => {
                    taken[j] = true;
                    EnumValue { sort, ..v.clone() }
                }
                None => {
                    let id = self.next_enum_id;
                    self.next_enum_id += 1;
                    EnumValue {
                        id,
                        value: (*value).to_owned(),
                        sort,
                        def: false,
                        xml_id: format!("{:032x}", 0x5eed_0000_u64 * 0x1_0000_0000 + id),
                    }
                }
            };
            list.push(item);
        }
        list
    }

    /// Takes one request from the leaky bucket; false when it would overflow.
    fn take_bucket(&mut self, now: Instant) -> bool {
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

    fn record(
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

    fn check_token(&self, token: Option<&str>, now: Instant) -> Result<(), ApiError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(ApiError::new(401, "NO_AUTH_FOUND", "Wrong authorization data"));
        };
        match self.access.get(token) {
            None => {
                Err(ApiError::new(401, "invalid_token", "The access token provided is invalid."))
            }
            Some(t) if t.stale || now >= t.expires_at => {
                Err(ApiError::new(401, "expired_token", "The access token provided has expired."))
            }
            Some(_) => Ok(()),
        }
    }

    fn live_field(&self, id: u64) -> Option<&Field> {
        self.fields.get(&id).filter(|f| !f.deleted)
    }

    /// Runs a REST method; `Ok((result, extra top-level members))`.
    fn call(&mut self, method: &str, params: &Map<String, Value>) -> CallResult {
        if let Some(rest) = method.strip_prefix("crm.") {
            let mut parts = rest.splitn(2, '.');
            let word = parts.next().unwrap_or_default();
            let action = parts.next().unwrap_or_default();
            if let Some((_, entity)) = CLASSIC.iter().find(|(w, _)| *w == word) {
                match action {
                    "userfield.get" => {
                        let id = param_id(params)?;
                        return match self.live_field(id) {
                            Some(f) if f.entity_id == *entity => Ok((f.upper(None), Vec::new())),
                            _ => Err(not_found(id)),
                        };
                    }
                    "userfield.list" => return self.classic_list(entity, params),
                    _ => {}
                }
            }
        }
        if method.starts_with("event.") || method == "feature.get" {
            return self.call_event(method, params);
        }
        match method {
            "userfieldconfig.get" => {
                check_module(params)?;
                let id = param_id(params)?;
                match self.live_field(id) {
                    Some(f) if f.is_smart() => Ok((json!({ "field": f.camel(true) }), Vec::new())),
                    _ => Err(not_found(id)),
                }
            }
            "userfieldconfig.list" => {
                check_module(params)?;
                let filter = params.get("filter").and_then(Value::as_object);
                let entity = filter.and_then(|f| f.get("entityId")).map(value_text);
                let all: Vec<&Field> = self
                    .fields
                    .values()
                    .filter(|f| !f.deleted && f.is_smart())
                    .filter(|f| entity.as_ref().is_none_or(|e| *e == f.entity_id))
                    .collect();
                let (page, extra) = paginate(&all, params);
                let fields: Vec<Value> = page.iter().map(|f| f.camel(false)).collect();
                Ok((json!({ "fields": fields }), extra))
            }
            _ => Err(ApiError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
        }
    }

    fn classic_list(&self, entity: &str, params: &Map<String, Value>) -> CallResult {
        let filter = match params.get("filter") {
            None => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(ApiError::new(400, "", "Parameter 'filter' must be array.")),
        };
        let lang = filter.get("LANG").map(value_text);
        let mut all: Vec<&Field> = self
            .fields
            .values()
            .filter(|f| !f.deleted && f.entity_id == entity)
            .filter(|f| {
                filter.iter().all(|(key, want)| {
                    let want = value_text(want);
                    match key.as_str() {
                        "ID" => f.id.to_string() == want,
                        "FIELD_NAME" => f.field_name == want,
                        "USER_TYPE_ID" => f.user_type_id == want,
                        "XML_ID" => f.xml_id.as_deref() == Some(want.as_str()),
                        "MULTIPLE" => yn_str(f.multiple) == want,
                        "MANDATORY" => yn_str(f.mandatory) == want,
                        _ => true,
                    }
                })
            })
            .collect();
        all.sort_by_key(|f| (f.sort, f.id));
        let (page, extra) = paginate(&all, params);
        let items: Vec<Value> = page.iter().map(|f| f.upper(Some(lang.as_deref()))).collect();
        Ok((Value::Array(items), extra))
    }

    fn oauth(&mut self, params: &Map<String, Value>, now: Instant) -> Reply {
        let get = |k: &str| params.get(k).map(value_text).unwrap_or_default();
        if get("client_id") != self.opts.client_id
            || get("client_secret") != self.opts.client_secret
        {
            return Reply::error(&ApiError::new(
                401,
                "invalid_client",
                "Invalid client credentials",
            ));
        }
        if get("grant_type") != "refresh_token" {
            return Reply::error(&ApiError::new(
                400,
                "unsupported_grant_type",
                "Only grant_type=refresh_token is supported",
            ));
        }
        let used = get("refresh_token");
        let old_access = match self.refresh.get_mut(&used) {
            Some(rt) if !rt.used => {
                rt.used = true;
                rt.access.clone()
            }
            _ => {
                return Reply::error(&ApiError::new(400, "invalid_grant", "Invalid refresh token"));
            }
        };
        if let Some(token) = self.access.get_mut(&old_access) {
            token.stale = true;
        }
        let (access, refresh) = self.mint_pair(now);
        self.refreshes.push((used, refresh.clone()));
        let ttl = self.opts.access_ttl.as_secs();
        let client_endpoint = if self.moved {
            format!("{}/moved/rest/", self.base)
        } else {
            format!("{}/rest/", self.base)
        };
        Reply::json(
            200,
            &json!({
                "access_token": access,
                "expires": unix_now() as u64 + ttl,
                "expires_in": ttl,
                "scope": "crm",
                "domain": self.domain,
                "server_endpoint": format!("{}/rest/", self.base),
                "status": "L",
                "client_endpoint": client_endpoint,
                "member_id": self.opts.member_id,
                "user_id": 1,
                "refresh_token": refresh,
            }),
        )
    }
}

/// Page and batch size of the offline queue methods.
const OFFLINE_LIMIT: u64 = 50;

impl State {
    /// A fresh 32-hex id (`MESSAGE_ID`, `process_id`); unique within the fake.
    fn hex32(&mut self) -> String {
        self.next_hex += 1;
        let n = self.next_hex;
        let salt = self.base.bytes().fold(0x9e37_79b9_u64, |h, b| h.rotate_left(5) ^ u64::from(b));
        format!("{:016x}{:016x}", splitmix64(n ^ salt), splitmix64(n))
    }

    fn push_offline(&mut self, event_name: &str, data: Value, user_id: Option<u64>) -> String {
        let event_name = event_name.to_ascii_uppercase();
        let now = unix_now() as i64;
        let key = change_key(&data);
        let pending = self.offline.values_mut().find(|row| {
            row.process_id.is_none()
                && !row.error
                && row.event_name == event_name
                && match &key {
                    Some(id) => change_key(&row.data).as_ref() == Some(id),
                    None => row.data == data,
                }
        });
        if let Some(row) = pending {
            row.data = data;
            row.user_id = user_id;
            row.timestamp = now;
            return row.message_id.clone();
        }
        let id = self.next_offline_id;
        self.next_offline_id += 1;
        let message_id = self.hex32();
        self.offline.insert(
            id,
            OfflineRow {
                id,
                timestamp: now,
                event_name,
                data,
                user_id,
                message_id: message_id.clone(),
                process_id: None,
                error: false,
            },
        );
        message_id
    }

    /// `event.*` methods and `feature.get`.
    fn call_event(&mut self, method: &str, params: &Map<String, Value>) -> CallResult {
        let mut logged = params.clone();
        logged.remove("auth");
        self.event_calls.push(json!({ "method": method, "params": logged }));
        match method {
            "feature.get" => {
                let code = param_ci(params, "code").map(value_text).unwrap_or_default();
                if code.is_empty() || code == "0" {
                    return Err(ApiError::new(400, "CODE_EMPTY", "CODE can't be empty"));
                }
                let on = code != "rest_offline_extended" || self.opts.offline_safe_mode;
                Ok((json!({ "value": yn_str(on) }), Vec::new()))
            }
            "event.bind" => self.event_bind(params),
            "event.unbind" => self.event_unbind(params),
            "event.get" => {
                let list: Vec<Value> = self.bindings.iter().map(Binding::short).collect();
                Ok((Value::Array(list), Vec::new()))
            }
            "event.offline.get" => self.offline_get(params),
            "event.offline.list" => self.offline_list(params),
            "event.offline.clear" => self.offline_clear(params),
            "event.offline.error" => self.offline_error(params),
            _ => Err(ApiError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!")),
        }
    }

    fn event_bind(&mut self, params: &Map<String, Value>) -> CallResult {
        let binding = parse_binding(params, true)?;
        if self.bindings.contains(&binding) {
            return Err(ApiError::new(
                400,
                "ERROR_CORE",
                "Unable to set event handler: Handler already binded",
            ));
        }
        self.bindings.push(binding);
        Ok((json!(true), Vec::new()))
    }

    fn event_unbind(&mut self, params: &Map<String, Value>) -> CallResult {
        let want = parse_binding(params, false)?;
        let handler_given = param_ci(params, "handler").is_some_and(|h| !value_text(h).is_empty());
        let before = self.bindings.len();
        self.bindings.retain(|b| {
            !(b.event == want.event
                && b.offline == want.offline
                && (!handler_given || b.handler == want.handler)
                && b.auth_connector == want.auth_connector)
        });
        Ok((json!({ "count": before - self.bindings.len() }), Vec::new()))
    }

    fn offline_get(&mut self, params: &Map<String, Value>) -> CallResult {
        let filter =
            parse_offline_filter(params, &["ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID"])?;
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
        let matches = |row: &OfflineRow| row.error == error && filter_matches(&filter, row);

        if clear && given.is_none() {
            // Take and delete at once.
            let ids: Vec<u64> = self
                .offline
                .values()
                .filter(|r| r.process_id.is_none() && matches(r))
                .take(limit)
                .map(|r| r.id)
                .collect();
            let mut events = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(row) = self.offline.remove(&id) {
                    events.push(row.short());
                    self.offline_cleared.push(row.message_id);
                }
            }
            return Ok((json!({ "process_id": null, "events": events }), Vec::new()));
        }

        // Reserve: the batch's own rows first, then unreserved ones up to the limit.
        let process_id = match given {
            Some(p) => p,
            None => self.hex32(),
        };
        let mut ids: Vec<u64> = self
            .offline
            .values()
            .filter(|r| r.process_id.as_deref() == Some(process_id.as_str()) && matches(r))
            .take(limit)
            .map(|r| r.id)
            .collect();
        let more: Vec<u64> = self
            .offline
            .values()
            .filter(|r| r.process_id.is_none() && matches(r))
            .take(limit - ids.len())
            .map(|r| r.id)
            .collect();
        for id in &more {
            if let Some(row) = self.offline.get_mut(id) {
                row.process_id = Some(process_id.clone());
            }
        }
        ids.extend(more);
        ids.sort_unstable();
        let events: Vec<Value> =
            ids.iter().filter_map(|id| self.offline.get(id)).map(OfflineRow::short).collect();
        if clear {
            // clear=1 with a process_id: the whole batch goes, answered or not.
            let batch: Vec<u64> = self
                .offline
                .values()
                .filter(|r| r.process_id.as_deref() == Some(process_id.as_str()))
                .map(|r| r.id)
                .collect();
            for id in batch {
                if let Some(row) = self.offline.remove(&id) {
                    self.offline_cleared.push(row.message_id);
                }
            }
        }
        Ok((json!({ "process_id": process_id, "events": events }), Vec::new()))
    }

    fn offline_list(&self, params: &Map<String, Value>) -> CallResult {
        let filter = parse_offline_filter(
            params,
            &["ID", "TIMESTAMP_X", "EVENT_NAME", "MESSAGE_ID", "PROCESS_ID", "ERROR"],
        )?;
        let all: Vec<&OfflineRow> =
            self.offline.values().filter(|r| filter_matches(&filter, r)).collect();
        let (page, extra) = paginate(&all, params);
        let rows: Vec<Value> = page.iter().map(|r| r.full()).collect();
        Ok((Value::Array(rows), extra))
    }

    fn offline_clear(&mut self, params: &Map<String, Value>) -> CallResult {
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
        let doomed: Vec<u64> = self
            .offline
            .values()
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

    fn offline_error(&mut self, params: &Map<String, Value>) -> CallResult {
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
        for row in self.offline.values_mut() {
            if row.process_id.as_deref() == Some(process_id.as_str())
                && !row.error
                && message_ids.contains(&row.message_id)
            {
                row.error = true;
                row.process_id = None;
                self.offline_errored.push(row.message_id.clone());
            }
        }
        Ok((json!(true), Vec::new()))
    }
}

impl OfflineRow {
    /// The shape of `event.offline.get`.
    fn short(&self) -> Value {
        let user = match self.user_id {
            Some(u) => json!(u.to_string()),
            None => json!(0),
        };
        json!({
            "ID": self.id.to_string(),
            "TIMESTAMP_X": iso_utc(self.timestamp),
            "EVENT_NAME": self.event_name,
            "EVENT_DATA": self.data,
            "EVENT_ADDITIONAL": { "user_id": user },
            "MESSAGE_ID": self.message_id,
        })
    }

    /// The shape of `event.offline.list` (adds `PROCESS_ID` and `ERROR`).
    fn full(&self) -> Value {
        let mut v = self.short();
        if let Some(m) = v.as_object_mut() {
            m.insert("PROCESS_ID".into(), json!(self.process_id.clone().unwrap_or_default()));
            m.insert("ERROR".into(), json!(if self.error { "1" } else { "0" }));
        }
        v
    }
}

impl Binding {
    /// The shape of `event.get`.
    fn short(&self) -> Value {
        json!({
            "event": self.event,
            "handler": self.handler,
            "auth_type": self.auth_type,
            "offline": i32::from(self.offline),
        })
    }

    fn full(&self) -> Value {
        let mut v = self.short();
        if let Some(m) = v.as_object_mut() {
            m.insert("auth_connector".into(), json!(self.auth_connector));
            m.insert("options".into(), self.options.clone());
        }
        v
    }
}

/// `event`, `handler`, `auth_type`, `event_type`, `auth_connector`, `options` of
/// `event.bind` (`strict`: the handler is required for online bindings) or `event.unbind`.
fn parse_binding(params: &Map<String, Value>, strict: bool) -> Result<Binding, ApiError> {
    let text = |k: &str| param_ci(params, k).map(value_text).unwrap_or_default();
    let event = text("event").trim().to_ascii_uppercase();
    if event.is_empty() {
        return Err(ApiError::new(400, "ERROR_ARGUMENT", "Argument 'EVENT' is null or empty"));
    }
    let offline = match text("event_type").trim().to_ascii_lowercase().as_str() {
        "" | "online" => false,
        "offline" => true,
        _ => {
            return Err(ApiError::new(
                400,
                "ERROR_ARGUMENT",
                "Value must be one of {online|offline}",
            ));
        }
    };
    if offline && event == "ONOFFLINEEVENT" {
        return Err(ApiError::new(
            400,
            "ERROR_ARGUMENT",
            "Offline event cannot be registered for this event.",
        ));
    }
    let handler = if offline { String::new() } else { text("handler") };
    if strict && !offline && handler.trim().is_empty() {
        return Err(ApiError::new(400, "ERROR_ARGUMENT", "Argument 'HANDLER' is null or empty"));
    }
    let auth_type = if offline { String::new() } else { text("auth_type") };
    let auth_type = if auth_type.trim().is_empty() { "0".to_owned() } else { auth_type };
    let auth_connector = Some(text("auth_connector")).filter(|c| !c.is_empty());
    let options = param_ci(params, "options").cloned().unwrap_or(Value::Null);
    Ok(Binding { event, handler, auth_type, offline, auth_connector, options })
}

/// One filter condition: operation (`=`, `>`, `<`, `>=`, `<=`), field, value.
type Condition = (&'static str, String, String);

/// The `filter` param of the offline methods; fields outside `allowed` and operations other
/// than `= > < >= <=` answer `ERROR_ARGUMENT`, as Bitrix24 does.
fn parse_offline_filter(
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

fn filter_matches(filter: &[Condition], row: &OfflineRow) -> bool {
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
fn required_process_id(params: &Map<String, Value>) -> Result<String, ApiError> {
    param_ci(params, "process_id").map(value_text).filter(|p| !p.trim().is_empty()).ok_or_else(
        || ApiError::new(400, "ERROR_ARGUMENT", "Argument 'PROCESS_ID' is null or empty"),
    )
}

/// A list param: a JSON array, or the object a PHP form makes of `k[]=..` / `k[0]=..`.
fn list_items(v: &Value) -> Option<Vec<Value>> {
    match v {
        Value::Array(a) => Some(a.clone()),
        Value::Object(m) => Some(m.values().cloned().collect()),
        _ => None,
    }
}

/// `message_id`: a list of 32-character strings.
fn message_id_list(v: &Value) -> Result<Vec<String>, ApiError> {
    list_items(v)
        .map(|items| items.iter().map(value_text).collect::<Vec<String>>())
        .filter(|ids| ids.iter().all(|id| id.chars().count() == 32))
        .ok_or_else(|| {
            ApiError::new(400, "ERROR_ARGUMENT", "Value must be array of MESSAGE_ID values")
        })
}

/// A param looked up case-insensitively (Bitrix24 upper-cases the keys of these methods).
fn param_ci<'a>(params: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    params
        .get(key)
        .or_else(|| params.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
}

/// A 0/1 flag as PHP would read it (`"0"`, `""`, `0`, `false`, `"N"` are false); `default`
/// when absent.
fn flag(v: Option<&Value>, default: bool) -> bool {
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
fn change_key(data: &Value) -> Option<String> {
    data.get("FIELDS")
        .and_then(|f| f.get("ID").or_else(|| f.get("id")))
        .filter(|v| !v.is_null())
        .map(value_text)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A method's `result` and the extra top-level members (`next`, `total`) of its answer.
type CallResult = Result<(Value, Vec<(&'static str, Value)>), ApiError>;

/// An error answer: HTTP status, `error`, `error_description`.
struct ApiError {
    status: u16,
    error: String,
    description: String,
}

impl ApiError {
    fn new(status: u16, error: &str, description: &str) -> ApiError {
        ApiError { status, error: error.to_owned(), description: description.to_owned() }
    }
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(400, "ERROR_NOT_FOUND", &format!("The entity with ID '{id}' is not found."))
}

/// An answer ready to send.
struct Reply {
    status: u16,
    body: Vec<u8>,
    location: Option<String>,
    error: Option<String>,
}

impl Reply {
    fn json(status: u16, value: &Value) -> Reply {
        Reply { status, body: value.to_string().into_bytes(), location: None, error: None }
    }

    fn error(e: &ApiError) -> Reply {
        let mut reply =
            Reply::json(e.status, &json!({ "error": e.error, "error_description": e.description }));
        reply.error = Some(e.error.clone());
        reply
    }

    fn into_response(self) -> Response<Full<Bytes>> {
        let mut builder = Response::builder()
            .status(StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        if let Some(location) = &self.location {
            builder = builder.header(header::LOCATION, location.as_str());
        }
        if !self.body.is_empty() {
            builder = builder.header(header::CONTENT_TYPE, "application/json; charset=utf-8");
        }
        builder.body(Full::new(Bytes::from(self.body))).unwrap_or_else(|_| {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let arrived = Instant::now();
    let started_unix = unix_now();
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY).collect().await.map(|b| b.to_bytes());
    let path = parts.uri.path().to_owned();
    let query = parts.uri.query().unwrap_or_default().to_owned();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let mut state = shared.lock();

    // Params: the query, then the body on top of it.
    let params = match &body {
        Ok(bytes) => parse_params(&query, &content_type, bytes),
        Err(_) => Err("request body too large or unreadable".to_owned()),
    };
    let token = match &params {
        Ok(p) => p.get("auth").map(value_text),
        Err(_) => parse_form(&query).get("auth").map(value_text),
    };

    if path == "/oauth/token/" || path == "/oauth/token" {
        let reply = match &params {
            Ok(p) => state.oauth(p, arrived),
            Err(e) => Reply::error(&ApiError::new(400, "invalid_request", e)),
        };
        let refresh = params.as_ref().ok().and_then(|p| p.get("refresh_token")).map(value_text);
        state.record(arrived, RequestKind::OAuth, &parts.method, "oauth/token", refresh, &reply);
        return Ok(reply.into_response());
    }

    let (raw_method, moved_path) = if let Some(m) = path.strip_prefix("/rest/") {
        (m, false)
    } else if let Some(m) = path.strip_prefix("/moved/rest/") {
        (m, true)
    } else {
        let reply =
            Reply::error(&ApiError::new(404, "NOT_FOUND", "No such path on the fake portal"));
        state.record(arrived, RequestKind::Other, &parts.method, &path, None, &reply);
        return Ok(reply.into_response());
    };
    let method = normalize_method(raw_method);

    if state.moved && !moved_path {
        let mut location = format!("{}/moved/rest/{raw_method}", state.base);
        if !query.is_empty() {
            location.push('?');
            location.push_str(&query);
        }
        let reply = Reply { status: 302, body: Vec::new(), location: Some(location), error: None };
        state.record(arrived, RequestKind::Redirect, &parts.method, &method, token, &reply);
        return Ok(reply.into_response());
    }

    let outcome = if !state.take_bucket(arrived) {
        state.violations += 1;
        Err(ApiError::new(503, "QUERY_LIMIT_EXCEEDED", "Too many requests"))
    } else if parts.method != Method::POST {
        Err(ApiError::new(400, "INVALID_REQUEST", "POST expected"))
    } else {
        match &params {
            Err(e) => Err(ApiError::new(400, "INVALID_REQUEST", e)),
            Ok(p) => state
                .check_token(token.as_deref(), Instant::now())
                .and_then(|()| {
                    if method.is_empty() {
                        Err(ApiError::new(404, "ERROR_METHOD_NOT_FOUND", "Method not found!"))
                    } else {
                        Ok(())
                    }
                })
                .and_then(|()| state.call(&method, p)),
        }
    };
    let reply = match outcome {
        Ok((result, extra)) => {
            let finished = unix_now();
            let mut envelope = Map::new();
            envelope.insert("result".into(), result);
            for (key, value) in extra {
                envelope.insert(key.into(), value);
            }
            envelope.insert(
                "time".into(),
                json!({
                    "start": started_unix,
                    "finish": finished,
                    "duration": finished - started_unix,
                    "processing": finished - started_unix,
                    "date_start": iso_utc(started_unix as i64),
                    "date_finish": iso_utc(finished as i64),
                    "operating_reset_at": started_unix as i64 + 600,
                    "operating": 0,
                }),
            );
            Reply::json(200, &Value::Object(envelope))
        }
        Err(e) => Reply::error(&e),
    };
    state.record(arrived, RequestKind::Rest, &parts.method, &method, token, &reply);
    Ok(reply.into_response())
}

/// `crm.deal.userfield.get.json/` -> `crm.deal.userfield.get`.
fn normalize_method(raw: &str) -> String {
    let m = raw.trim_end_matches('/').to_ascii_lowercase();
    m.strip_suffix(".json").map(str::to_owned).unwrap_or(m)
}

/// Query params, overlaid with the body's (a JSON object, or a form).
fn parse_params(
    query: &str,
    content_type: &str,
    body: &[u8],
) -> Result<Map<String, Value>, String> {
    let mut params = parse_form(query);
    let text = String::from_utf8_lossy(body);
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(params);
    }
    let looks_json =
        content_type.contains("json") || trimmed.starts_with('{') || trimmed.starts_with('[');
    if looks_json {
        match serde_json::from_str::<Value>(trimmed) {
            Ok(Value::Object(m)) => params.extend(m),
            Ok(_) => return Err("the JSON body must be an object of parameters".to_owned()),
            Err(e) => return Err(format!("the body is not valid JSON: {e}")),
        }
    } else {
        params.extend(parse_form(trimmed));
    }
    Ok(params)
}

/// A form or query string into nested objects, PHP-style (`filter[LANG]=en`, `id[]=1`).
fn parse_form(text: &str) -> Map<String, Value> {
    let mut out = Map::new();
    for pair in text.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        let value = percent_decode(value);
        let (base, segments) = split_key(&key);
        if base.is_empty() {
            continue;
        }
        if segments.is_empty() {
            out.insert(base, Value::String(value));
        } else {
            let node = out.entry(base).or_insert_with(|| Value::Object(Map::new()));
            insert_nested(node, &segments, value);
        }
    }
    out
}

fn split_key(key: &str) -> (String, Vec<String>) {
    let Some(open) = key.find('[') else { return (key.to_owned(), Vec::new()) };
    if open == 0 || !key[open..].contains(']') {
        return (key.to_owned(), Vec::new());
    }
    let mut segments = Vec::new();
    let mut rest = &key[open..];
    while let Some(inner) = rest.strip_prefix('[') {
        let Some(close) = inner.find(']') else { break };
        segments.push(inner[..close].to_owned());
        rest = &inner[close + 1..];
    }
    (key[..open].to_owned(), segments)
}

fn insert_nested(node: &mut Value, segments: &[String], value: String) {
    if !node.is_object() {
        *node = Value::Object(Map::new());
    }
    let Some(map) = node.as_object_mut() else { return };
    let Some((first, rest)) = segments.split_first() else { return };
    let key = if first.is_empty() { map.len().to_string() } else { first.clone() };
    if rest.is_empty() {
        map.insert(key, Value::String(value));
    } else {
        let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
        insert_nested(child, rest, value);
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A JSON value as the text PHP would see: strings as they are, numbers printed, else JSON.
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The `id` param as a positive integer (number or decimal string).
fn param_id(params: &Map<String, Value>) -> Result<u64, ApiError> {
    let id = match params.get("id").or_else(|| params.get("ID")) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    id.filter(|id| *id > 0).ok_or_else(|| ApiError::new(400, "", "ID is not defined or invalid."))
}

fn check_module(params: &Map<String, Value>) -> Result<(), ApiError> {
    match params.get("moduleId").map(value_text) {
        Some(m) if m == "crm" => Ok(()),
        _ => Err(ApiError::new(400, "", "No settings for UserFieldAccess")),
    }
}

/// One page of `all` from the `start` param, and the `next`/`total` members.
fn paginate<'a, T>(
    all: &'a [T],
    params: &Map<String, Value>,
) -> (&'a [T], Vec<(&'static str, Value)>) {
    let start = params
        .get("start")
        .map(value_text)
        .and_then(|s| s.trim().parse::<usize>().ok())
        .unwrap_or(0)
        .min(all.len());
    let end = (start + PAGE).min(all.len());
    let mut extra = Vec::new();
    if end < all.len() {
        extra.push(("next", json!(end)));
    }
    extra.push(("total", json!(all.len())));
    (&all[start..end], extra)
}

fn is_smart_entity(entity: &str) -> bool {
    entity == "CRM_SMART_INVOICE"
        || entity == "CRM_SMART_DOCUMENT"
        || entity
            .strip_prefix("CRM_")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn default_settings(user_type: &str) -> Value {
    match user_type {
        "string" => json!({
            "SIZE": 20, "ROWS": 1, "REGEXP": "", "MIN_LENGTH": 0, "MAX_LENGTH": 0,
            "DEFAULT_VALUE": "",
        }),
        "enumeration" => json!({
            "DISPLAY": "LIST", "LIST_HEIGHT": 1, "CAPTION_NO_VALUE": "", "SHOW_NO_VALUE": "Y",
        }),
        "integer" => json!({ "SIZE": 20, "MIN_VALUE": 0, "MAX_VALUE": 0, "DEFAULT_VALUE": null }),
        "double" => json!({
            "PRECISION": 2, "SIZE": 20, "MIN_VALUE": 0, "MAX_VALUE": 0, "DEFAULT_VALUE": null,
        }),
        "boolean" => json!({ "DEFAULT_VALUE": 0, "DISPLAY": "CHECKBOX", "LABEL": ["", ""] }),
        _ => json!({}),
    }
}

fn yn(b: bool) -> Value {
    json!(yn_str(b))
}

fn yn_str(b: bool) -> &'static str {
    if b { "Y" } else { "N" }
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SS+00:00`.
fn iso_utc(secs: i64) -> String {
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

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::TcpStream,
    };

    use super::*;

    /// A raw answer: status, headers (lower-case names), body parsed as JSON (Null if not).
    struct Raw {
        status: u16,
        headers: Vec<(String, String)>,
        json: Value,
    }

    impl Raw {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
    }

    /// One request on a fresh connection (`Connection: close`), read to the end.
    fn send(addr: SocketAddr, method: &str, target: &str, content_type: &str, body: &str) -> Raw {
        let mut stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut head = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
            body.len()
        );
        if !content_type.is_empty() {
            head.push_str(&format!("Content-Type: {content_type}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).expect("write head");
        stream.write_all(body.as_bytes()).expect("write body");
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).expect("read");
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Raw { status, headers, json: serde_json::from_str(body).unwrap_or(Value::Null) }
    }

    fn post(portal: &FakePortal, method: &str, params: Value) -> Raw {
        send(
            portal.addr(),
            "POST",
            &format!("/rest/{method}"),
            "application/json",
            &params.to_string(),
        )
    }

    fn refresh(portal: &FakePortal, secret: &str, token: &str) -> Raw {
        let o = portal.options();
        let target = format!(
            "/oauth/token/?grant_type=refresh_token&client_id={}&client_secret={secret}&refresh_token={token}",
            o.client_id
        );
        send(portal.addr(), "GET", &target, "", "")
    }

    #[test]
    fn fake_portal_userfield_get_round_trip() {
        let portal = FakePortal::start(PortalOptions::default());
        assert!(portal.client_endpoint().ends_with("/rest/"));
        assert_eq!(portal.server_endpoint(), portal.client_endpoint());
        let deal =
            portal.add_field("CRM_DEAL", "UF_CRM_COLOR", "enumeration", vec!["red", "green"]);
        let text = portal.add_field("CRM_DEAL", "UF_CRM_NOTE", "string", vec![]);
        let smart = portal.add_field("CRM_7", "UF_CRM_7_SIZE", "enumeration", vec!["S", "M"]);
        assert!(deal < text && text < smart);
        let token = portal.issue_access_token();

        let a = post(&portal, "crm.deal.userfield.get", json!({"id": deal, "auth": token}));
        assert_eq!(a.status, 200, "{}", a.json);
        let f = &a.json["result"];
        assert_eq!(f["ID"], deal.to_string());
        assert_eq!(f["ENTITY_ID"], "CRM_DEAL");
        assert_eq!(f["FIELD_NAME"], "UF_CRM_COLOR");
        assert_eq!(f["USER_TYPE_ID"], "enumeration");
        assert_eq!(f["MULTIPLE"], "N");
        assert_eq!(f["EDIT_FORM_LABEL"]["en"], "UF_CRM_COLOR");
        let values: Vec<&str> =
            f["LIST"].as_array().unwrap().iter().map(|v| v["VALUE"].as_str().unwrap()).collect();
        assert_eq!(values, ["red", "green"]);
        assert_eq!(f["LIST"][0]["DEF"], "N");
        assert!(a.json["time"]["start"].is_f64());
        assert_eq!(a.header("content-type"), Some("application/json; charset=utf-8"));

        // A string field has no LIST; `.json` suffix, token in the query, form body.
        let a = send(
            portal.addr(),
            "POST",
            &format!("/rest/crm.deal.userfield.get.json?auth={token}"),
            "application/x-www-form-urlencoded",
            &format!("id={text}"),
        );
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["result"]["USER_TYPE_ID"], "string");
        assert!(a.json["result"].get("LIST").is_none());

        // Wrong entity for the method.
        let a = post(&portal, "crm.lead.userfield.get", json!({"id": deal, "auth": token}));
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("ERROR_NOT_FOUND")));
        let a = post(
            &portal,
            "userfieldconfig.get",
            json!({"moduleId": "crm", "id": deal, "auth": token}),
        );
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("ERROR_NOT_FOUND")));

        // Smart-process field through userfieldconfig.get, after SETENUMVALUES and a new label.
        let old = portal.field(smart).unwrap().list;
        assert!(portal.set_list(smart, vec!["M", "L"]));
        assert!(portal.set_label(smart, "Size"));
        let a = post(
            &portal,
            "userfieldconfig.get",
            json!({"moduleId": "crm", "id": smart, "auth": token}),
        );
        assert_eq!(a.status, 200, "{}", a.json);
        let f = &a.json["result"]["field"];
        assert_eq!(f["entityId"], "CRM_7");
        assert_eq!(f["editFormLabel"]["en"], "Size");
        assert_eq!(f["enum"][0]["value"], "M");
        assert_eq!(f["enum"][0]["id"], old[1].id.to_string(), "kept value keeps its id");
        assert_eq!(f["enum"][1]["value"], "L");
        let a = post(&portal, "crm.deal.userfield.get", json!({"id": smart, "auth": token}));
        assert_eq!(a.json["error"], "ERROR_NOT_FOUND");

        // Lists.
        let a = post(&portal, "crm.deal.userfield.list", json!({"auth": token}));
        assert_eq!(a.json["total"], 2);
        assert!(a.json["result"][0].get("EDIT_FORM_LABEL").is_none());
        let a = post(
            &portal,
            "crm.deal.userfield.list",
            json!({"filter": {"LANG": "en"}, "auth": token}),
        );
        assert_eq!(a.json["result"][0]["EDIT_FORM_LABEL"], "UF_CRM_COLOR");
        let a = send(
            portal.addr(),
            "POST",
            "/rest/crm.deal.userfield.list",
            "application/x-www-form-urlencoded",
            &format!("auth={token}&filter%5BFIELD_NAME%5D=UF_CRM_NOTE"),
        );
        assert_eq!(a.json["total"], 1, "{}", a.json);
        let a = post(&portal, "userfieldconfig.list", json!({"moduleId": "crm", "auth": token}));
        assert_eq!(a.json["result"]["fields"][0]["fieldName"], "UF_CRM_7_SIZE");

        // Bad input and unknown methods.
        let a = send(
            portal.addr(),
            "POST",
            "/rest/crm.deal.userfield.get",
            "application/json",
            "{nope",
        );
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("INVALID_REQUEST")));
        let a = post(&portal, "crm.deal.userfield.get", json!({"auth": token}));
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("")));
        let a = post(&portal, "crm.deal.userfield.get", json!({"id": "x", "auth": token}));
        assert_eq!(a.status, 400);
        let a = post(&portal, "no.such.method", json!({"auth": token}));
        assert_eq!((a.status, a.json["error"].as_str()), (404, Some("ERROR_METHOD_NOT_FOUND")));
        let a = post(&portal, "crm.deal.userfield.get", json!({"id": deal}));
        assert_eq!((a.status, a.json["error"].as_str()), (401, Some("NO_AUTH_FOUND")));
        let a = post(&portal, "crm.deal.userfield.get", json!({"id": deal, "auth": "forged"}));
        assert_eq!((a.status, a.json["error"].as_str()), (401, Some("invalid_token")));
        let a = send(portal.addr(), "GET", "/elsewhere", "", "");
        assert_eq!(a.status, 404);

        assert_eq!(portal.calls("crm.deal.userfield.get"), 8);
        let snapshot = portal.snapshot();
        assert_eq!(
            snapshot[deal.to_string()],
            json!({"entity_id": "CRM_DEAL", "field_name": "UF_CRM_COLOR",
                   "user_type_id": "enumeration", "label": "UF_CRM_COLOR", "list": ["red", "green"]})
        );
        assert_eq!(snapshot[text.to_string()]["list"], json!([]));
        assert_eq!(snapshot[smart.to_string()]["list"], json!(["M", "L"]));
        let record = portal.requests().into_iter().next().unwrap();
        assert_eq!(record.kind, RequestKind::Rest);
        assert_eq!(record.method, "crm.deal.userfield.get");
        assert_eq!(record.token.as_deref(), Some(token.as_str()));
        assert_eq!(record.status, 200);
    }

    #[test]
    fn fake_portal_not_found_after_delete() {
        let portal = FakePortal::start(PortalOptions::default());
        let id = portal.add_field("CRM_CONTACT", "UF_CRM_GONE", "string", vec![]);
        let token = portal.issue_access_token();
        let a = post(&portal, "crm.contact.userfield.get", json!({"id": id, "auth": token}));
        assert_eq!(a.status, 200);
        assert!(portal.delete_field(id));
        assert!(!portal.delete_field(id));
        let a = post(&portal, "crm.contact.userfield.get", json!({"id": id, "auth": token}));
        assert_eq!(a.status, 400);
        assert_eq!(a.json["error"], "ERROR_NOT_FOUND");
        assert_eq!(a.json["error_description"], format!("The entity with ID '{id}' is not found."));
        assert_eq!(portal.snapshot(), json!({}));
        let next = portal.add_field("CRM_CONTACT", "UF_CRM_NEW", "string", vec![]);
        assert!(next > id, "ids are never reused");
    }

    #[test]
    fn fake_portal_expired_token_refresh_single_use() {
        let portal = FakePortal::start(PortalOptions::default());
        let id = portal.add_field("CRM_LEAD", "UF_CRM_X", "string", vec![]);
        let (access, refresh_token) = portal.initial_oauth();
        let user = portal.issue_access_token();
        assert_eq!(
            post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": access})).status,
            200
        );

        portal.expire_access_tokens();
        for token in [&access, &user] {
            let a = post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": token}));
            assert_eq!(a.status, 401);
            assert_eq!(a.json["error"], "expired_token");
            assert_eq!(a.json["error_description"], "The access token provided has expired.");
        }

        let a = refresh(&portal, "wrong", &refresh_token);
        assert_eq!((a.status, a.json["error"].as_str()), (401, Some("invalid_client")));
        let a = refresh(&portal, &portal.options().client_secret, &refresh_token);
        assert_eq!(a.status, 200, "{}", a.json);
        let new_access = a.json["access_token"].as_str().unwrap().to_owned();
        let new_refresh = a.json["refresh_token"].as_str().unwrap().to_owned();
        assert_ne!(new_access, access);
        assert_ne!(new_refresh, refresh_token);
        assert_eq!(a.json["expires_in"], 3600);
        assert_eq!(a.json["scope"], "crm");
        assert_eq!(a.json["status"], "L");
        assert_eq!(a.json["member_id"], crate::MEMBER);
        assert_eq!(a.json["client_endpoint"], portal.client_endpoint());
        assert_eq!(a.json["server_endpoint"], portal.server_endpoint());
        assert!(a.json["expires"].as_u64().unwrap() > 1_700_000_000);

        let a = post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": new_access}));
        assert_eq!(a.status, 200);
        // The old refresh token is spent; the old access token stays dead.
        let a = refresh(&portal, &portal.options().client_secret, &refresh_token);
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("invalid_grant")));
        let a = refresh(&portal, &portal.options().client_secret, "never-issued");
        assert_eq!((a.status, a.json["error"].as_str()), (400, Some("invalid_grant")));
        assert_eq!(portal.refreshes(), vec![(refresh_token.clone(), new_refresh.clone())]);

        // A refresh makes the access token of its pair stale even before it expires.
        let (a2, r2) = portal.issue_oauth_pair();
        assert_eq!(
            post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": a2})).status,
            200
        );
        assert_eq!(refresh(&portal, &portal.options().client_secret, &r2).status, 200);
        let a = post(&portal, "crm.lead.userfield.get", json!({"id": id, "auth": a2}));
        assert_eq!((a.status, a.json["error"].as_str()), (401, Some("expired_token")));

        let oauth: Vec<_> =
            portal.requests().into_iter().filter(|r| r.kind == RequestKind::OAuth).collect();
        assert_eq!(oauth.len(), 5);
        assert_eq!(portal.violations(), 0, "OAuth is not rate-limited");
    }

    #[test]
    fn fake_portal_rate_limit_after_burst() {
        let portal =
            FakePortal::start(PortalOptions { rate_per_sec: 0.1, burst: 5, ..Default::default() });
        let id = portal.add_field("CRM_COMPANY", "UF_CRM_Y", "string", vec![]);
        let token = portal.issue_access_token();
        for _ in 0..5 {
            let a = post(&portal, "crm.company.userfield.get", json!({"id": id, "auth": token}));
            assert_eq!(a.status, 200);
        }
        let a = post(&portal, "crm.company.userfield.get", json!({"id": id, "auth": token}));
        assert_eq!(a.status, 503);
        assert_eq!(a.json["error"], "QUERY_LIMIT_EXCEEDED");
        assert_eq!(a.json["error_description"], "Too many requests");
        assert_eq!(portal.violations(), 1);
        assert_eq!(portal.requests().last().unwrap().status, 503);
        // Six requests within a few seconds.
        let peak = portal.peak_rate(Duration::from_secs(60));
        assert!((peak - 6.0 / 60.0).abs() < 1e-9, "{peak}");
        assert_eq!(portal.peak_rate(Duration::ZERO), 0.0);
        // OAuth is not limited.
        let (_, r) = portal.initial_oauth();
        assert_eq!(refresh(&portal, &portal.options().client_secret, &r).status, 200);
    }

    #[test]
    fn fake_portal_moved_redirects_and_wants_post() {
        let portal = FakePortal::start(PortalOptions::default());
        let id = portal.add_field("CRM_QUOTE", "UF_CRM_Z", "string", vec![]);
        let token = portal.issue_access_token();
        portal.set_moved(true);
        let body = json!({"id": id, "auth": token}).to_string();
        let a =
            send(portal.addr(), "POST", "/rest/crm.quote.userfield.get", "application/json", &body);
        assert_eq!(a.status, 302);
        let location = a.header("location").unwrap().to_owned();
        assert_eq!(location, format!("{}crm.quote.userfield.get", portal.moved_endpoint()));
        let target = location.trim_start_matches(&portal.base_url()).to_owned();

        // A client that turns the POST into a GET loses the body.
        let a = send(portal.addr(), "GET", &target, "", "");
        assert_eq!(a.status, 400);
        assert_eq!(
            a.json,
            json!({"error": "INVALID_REQUEST", "error_description": "POST expected"})
        );
        // Re-POSTing works.
        let a = send(portal.addr(), "POST", &target, "application/json", &body);
        assert_eq!(a.status, 200, "{}", a.json);
        assert_eq!(a.json["result"]["FIELD_NAME"], "UF_CRM_Z");

        // The query survives the redirect; a refresh names the new endpoint.
        let a = send(portal.addr(), "POST", "/rest/x.y?auth=abc", "", "");
        assert!(a.header("location").unwrap().ends_with("/moved/rest/x.y?auth=abc"));
        let (_, r) = portal.initial_oauth();
        let a = refresh(&portal, &portal.options().client_secret, &r);
        assert_eq!(a.json["client_endpoint"], portal.moved_endpoint());

        let kinds: Vec<_> = portal.requests().iter().map(|r| (r.kind, r.status)).collect();
        assert_eq!(
            kinds,
            [
                (RequestKind::Redirect, 302),
                (RequestKind::Rest, 400),
                (RequestKind::Rest, 200),
                (RequestKind::Redirect, 302),
                (RequestKind::OAuth, 200),
            ]
        );
        portal.set_moved(false);
        let a =
            send(portal.addr(), "POST", "/rest/crm.quote.userfield.get", "application/json", &body);
        assert_eq!(a.status, 200);
    }

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
        assert!(rows[0]["TIMESTAMP_X"].as_str().unwrap().ends_with("+00:00"));

        let a = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "limit": 2, "auth_connector": "b24host", "auth": token}),
        );
        assert_eq!(a.status, 200, "{}", a.json);
        let pid = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        assert!(is_hex32(&pid), "{pid}");
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
                   "params": {"clear": 0, "limit": 2, "auth_connector": "b24host"}})
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
        assert!(is_hex32(a.json["result"]["process_id"].as_str().unwrap()));
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

        // A reserved row is not touched: the repeat makes a new row.
        let a = post(&portal, "event.offline.get", json!({"clear": 0, "limit": 1, "auth": token}));
        let pid = a.json["result"]["process_id"].as_str().unwrap().to_owned();
        assert_eq!(message_ids(&a), std::slice::from_ref(&first));
        let fresh = portal.push_offline("ONCRMDEALUSERFIELDUPDATE", deal_field(554), Some(1));
        assert_ne!(fresh, first);
        assert_eq!(portal.offline_rows().len(), 5);
        // ... and so is an erroneous one.
        post(
            &portal,
            "event.offline.error",
            json!({"process_id": pid, "message_id": [first], "auth": token}),
        );
        let fresh2 = portal.push_offline("ONCRMDEALUSERFIELDUPDATE", deal_field(554), Some(1));
        assert_eq!(fresh2, fresh, "merges into the pending repeat, not the erroneous row");
        assert_eq!(portal.offline_rows().len(), 5);
        let reserved = portal.offline_rows().iter().filter(|r| r["PROCESS_ID"] != "").count();
        assert_eq!(reserved, 0);
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
        // A larger limit tops the batch up with unreserved rows only.
        let more = post(
            &portal,
            "event.offline.get",
            json!({"clear": 0, "limit": 10, "process_id": pid, "auth": token}),
        );
        assert_eq!(message_ids(&more), [ids[0].clone(), ids[1].clone(), ids[4].clone()]);

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
        assert_eq!(message_ids(&again).len(), 3);
        let c = post(&portal, "event.offline.clear", json!({"process_id": pid, "auth": token}));
        assert_eq!(c.status, 200);
        assert_eq!(portal.offline_cleared(), [ids[0].clone(), ids[1].clone(), ids[4].clone()]);

        // clear=1 with a process id deletes the whole batch, even beyond the limit.
        let pb = b.json["result"]["process_id"].as_str().unwrap().to_owned();
        let d = post(
            &portal,
            "event.offline.get",
            json!({"clear": 1, "limit": 1, "process_id": pb, "auth": token}),
        );
        assert_eq!(d.json["result"]["process_id"], pb);
        assert_eq!(message_ids(&d), [ids[2].clone()]);
        assert!(portal.offline_rows().is_empty());
        assert_eq!(portal.offline_cleared().len(), 5);
    }

    #[test]
    fn fake_portal_event_bind_and_get() {
        let portal = FakePortal::start(PortalOptions::default());
        let token = portal.issue_access_token();
        let bind = |params: Value| {
            let mut p = params;
            p["auth"] = json!(token);
            post(&portal, "event.bind", p)
        };
        let a = bind(json!({"event": "ONCRMDEALUSERFIELDUPDATE", "event_type": "offline",
                            "auth_connector": "b24host"}));
        assert_eq!((a.status, &a.json["result"]), (200, &json!(true)), "{}", a.json);
        let a = bind(json!({"event": "ONOFFLINEEVENT", "handler": "http://host.example/events"}));
        assert_eq!(a.status, 200, "{}", a.json);
        let a = bind(json!({"event": "onofflineevent", "handler": "http://host.example/events"}));
        assert_eq!(
            (a.status, a.json["error"].as_str(), a.json["error_description"].as_str()),
            (400, Some("ERROR_CORE"), Some("Unable to set event handler: Handler already binded"))
        );
        let a = bind(json!({"event": "ONOFFLINEEVENT", "event_type": "offline"}));
        assert_eq!(a.json["error"], "ERROR_ARGUMENT");
        let a = bind(json!({"event": "ONCRMDEALADD"}));
        assert_eq!(a.json["error_description"], "Argument 'HANDLER' is null or empty");
        let a = bind(
            json!({"event": "ONCRMDEALADD", "handler": "http://h.example/", "event_type": "later"}),
        );
        assert_eq!(a.json["error_description"], "Value must be one of {online|offline}");

        assert_eq!(
            portal.bindings(),
            vec![
                json!({"event": "ONCRMDEALUSERFIELDUPDATE", "handler": "", "auth_type": "0",
                       "offline": 1, "auth_connector": "b24host", "options": null}),
                json!({"event": "ONOFFLINEEVENT", "handler": "http://host.example/events",
                       "auth_type": "0", "offline": 0, "auth_connector": null, "options": null}),
            ]
        );
        let a = post(&portal, "event.get", json!({"auth": token}));
        assert_eq!(
            a.json["result"][0],
            json!({"event": "ONCRMDEALUSERFIELDUPDATE",
                   "handler": "", "auth_type": "0", "offline": 1})
        );
        assert_eq!(a.json["result"].as_array().unwrap().len(), 2);
        let a = post(&portal, "event.unbind", json!({"event": "ONOFFLINEEVENT", "auth": token}));
        assert_eq!(a.json["result"], json!({"count": 1}));
        assert_eq!(portal.bindings().len(), 1);
        assert_eq!(portal.calls("event.bind"), 6);
    }

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
        assert!(TcpStream::connect(addr).is_err(), "the port is closed after drop");
    }
}
