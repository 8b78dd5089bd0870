//! The event a plugin call is handling, as the REST client needs it: which portal, which
//! endpoints, and the acting user's token. The worker sets it on the blocking thread around
//! each plugin call; `HostServices::rest`, called on that same thread, reads it.

use std::{
    cell::RefCell,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicI64, Ordering},
    },
};

use b24_plugin_api::Secret;
use bytes::Bytes;

use crate::{
    decode,
    record::{EventRecord, Format},
};

/// The portal and credentials of the event being handled.
#[derive(Debug, Clone)]
pub struct EventContext {
    /// The portal.
    pub member_id: String,
    /// Its domain at the time of the event.
    pub domain: String,
    /// REST base URL from the event (`auth[client_endpoint]`).
    pub client_endpoint: Option<String>,
    /// OAuth server from the event (`auth[server_endpoint]`).
    pub server_endpoint: Option<String>,
    /// The acting user's access token, when a user caused the event.
    pub user_token: Option<Secret>,
    /// The event's body, when the endpoints and token above are read from it only once a
    /// REST call needs them ([`EventContext::of_record`]).
    pub deferred: Deferred,
    /// Set by the REST client when a Bitrix24 limit refused one of this event's calls: the
    /// worker delivers the event again once it lifts, without using an attempt.
    pub limit: LimitNote,
}

/// Until when a Bitrix24 limit holds the calls of the event being handled (shared between the
/// REST client, which sets it, and the worker, which reads it after the plugin's call).
#[derive(Debug, Clone, Default)]
pub struct LimitNote(Arc<AtomicI64>);

impl LimitNote {
    /// A limit holds the event's calls until `until_ms` (ms since the epoch); the latest wins.
    pub fn hold_until(&self, until_ms: i64) {
        self.0.fetch_max(until_ms, Ordering::Relaxed);
    }

    /// Until when, if a limit refused any of the event's calls.
    pub fn until(&self) -> Option<i64> {
        Some(self.0.load(Ordering::Relaxed)).filter(|&ms| ms > 0)
    }
}

impl EventContext {
    /// The context of a call no event carries (the offline poller's, a binding's): the
    /// portal's stored install says where it is, with the app's tokens.
    pub fn app(member_id: &str) -> EventContext {
        EventContext {
            member_id: member_id.to_owned(),
            domain: String::new(),
            client_endpoint: None,
            server_endpoint: None,
            user_token: None,
            deferred: Deferred::default(),
            limit: LimitNote::default(),
        }
    }

    /// The context of the event journaled as `record`, without decoding its body: the
    /// endpoints and the user's token are read from it when a REST call first asks
    /// ([`EventContext::user_token`], [`EventContext::client_endpoint`]). Most events make no
    /// REST call; a plugin in a runner has its body decoded there, not here.
    pub fn of_record(record: &EventRecord) -> EventContext {
        EventContext {
            member_id: record.meta.member_id.clone(),
            domain: record.meta.domain.clone(),
            client_endpoint: None,
            server_endpoint: None,
            user_token: None,
            deferred: Deferred {
                body: Some((record.raw.clone(), record.meta.format)),
                auth: Arc::default(),
            },
            limit: LimitNote::default(),
        }
    }

    /// The acting user's access token, when a user caused the event.
    pub fn user_token(&self) -> Option<&Secret> {
        self.user_token.as_ref().or_else(|| self.deferred.auth().user_token.as_ref())
    }

    /// The REST base URL the event names (`auth[client_endpoint]`).
    pub fn client_endpoint(&self) -> Option<&String> {
        self.client_endpoint.as_ref().or_else(|| self.deferred.auth().client_endpoint.as_ref())
    }

    /// The OAuth server the event names (`auth[server_endpoint]`).
    pub fn server_endpoint(&self) -> Option<&String> {
        self.server_endpoint.as_ref().or_else(|| self.deferred.auth().server_endpoint.as_ref())
    }
}

/// What [`EventContext::of_record`] reads from the body when first asked.
#[derive(Default)]
struct DeferredAuth {
    client_endpoint: Option<String>,
    server_endpoint: Option<String>,
    user_token: Option<Secret>,
}

/// An event body to read [`DeferredAuth`] from, once.
#[derive(Clone, Default)]
pub struct Deferred {
    body: Option<(Bytes, Format)>,
    auth: Arc<OnceLock<DeferredAuth>>,
}

impl Deferred {
    fn auth(&self) -> &DeferredAuth {
        self.auth.get_or_init(|| {
            let Some((raw, format)) = &self.body else { return DeferredAuth::default() };
            match decode::decode(raw, *format) {
                Ok(event) => DeferredAuth {
                    client_endpoint: event.auth.client_endpoint,
                    server_endpoint: event.auth.server_endpoint,
                    user_token: event.auth.user.map(|u| u.access_token),
                },
                Err(_) => DeferredAuth::default(),
            }
        })
    }
}

/// The body holds tokens: it never shows.
impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.body.is_some() { "<the event's body>" } else { "-" })
    }
}

thread_local! {
    static CURRENT: RefCell<Option<Arc<EventContext>>> = const { RefCell::new(None) };
}

/// Runs `f` with `ctx` as the current event of this thread.
pub fn with<R>(ctx: Arc<EventContext>, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| c.replace(Some(ctx)));
    let result = f();
    CURRENT.with(|c| *c.borrow_mut() = previous);
    result
}

/// The event this thread is handling, if any.
pub fn current() -> Option<Arc<EventContext>> {
    CURRENT.with(|c| c.borrow().clone())
}
