//! The event a plugin call is handling, as the REST client needs it: which portal, which
//! endpoints, and the acting user's token. The worker sets it on the blocking thread around
//! each plugin call; `HostServices::rest`, called on that same thread, reads it.

use std::{
    cell::RefCell,
    sync::{
        Arc,
        atomic::{AtomicI64, Ordering},
    },
};

use b24_plugin_api::Secret;

use crate::decode::Decoded;

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
            limit: LimitNote::default(),
        }
    }

    /// The context of `event`.
    pub fn of(event: &Decoded) -> EventContext {
        EventContext {
            member_id: event.auth.member_id.clone(),
            domain: event.auth.domain.clone(),
            client_endpoint: event.auth.client_endpoint.clone(),
            server_endpoint: event.auth.server_endpoint.clone(),
            user_token: event.auth.user.as_ref().map(|u| u.access_token.clone()),
            limit: LimitNote::default(),
        }
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
