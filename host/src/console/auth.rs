//! Who is asking: the console's login. Without `admin.token` (a loopback listener) everyone on
//! the machine is let in. With it, a request needs `Authorization: Bearer <token>` (scripts) or
//! the session cookie `b24_console` that `POST /login` sets: a random 32-byte id mapped in
//! memory to a session with its CSRF token, valid 12 hours; the cookie is never the token.
//! Tokens are compared in constant time (`subtle`), first: the right token is answered at
//! once, whatever else is going on. A wrong one, as a bearer token or in the login form, is
//! counted (`b24_admin_auth_failures_total`), logged (WARN with the client's address, at most
//! every 10 s with the count held back) and answered only after its turn: wrong tokens are
//! answered one at a time, [`WRONG_TOKEN_DELAY`] each, so guesses go at 2.5 a second however
//! many clients send them; past [`MAX_WAITING_FAILURES`] waiting, a wrong token gets 429 at once.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use b24_plugin_api::Secret;
use hyper::HeaderMap;
use prometheus_client::metrics::counter::Counter;
use subtle::ConstantTimeEq;

use crate::throttle::Throttled;

/// The cookie's name.
pub const COOKIE: &str = "b24_console";
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions are kept; the oldest go first.
const MAX_SESSIONS: usize = 1000;
/// What a wrong token costs (wrong tokens are answered one at a time, so guesses are slow).
pub const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(400);
/// Wrong tokens waiting for their answer at most; past it one is answered 429 at once.
pub const MAX_WAITING_FAILURES: usize = 16;
/// How often the WARN line about wrong tokens may repeat.
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// A logged-in browser.
struct Session {
    csrf: String,
    expires: Instant,
}

/// Who a request comes from.
#[derive(Clone)]
pub enum Who {
    /// No `admin.token`: open to whoever reaches the listener (loopback).
    Open,
    /// The bearer token: a script (no CSRF check).
    Bearer,
    /// A browser with a session.
    Session {
        /// The session id (the cookie's value).
        id: String,
        /// Its CSRF token.
        csrf: String,
    },
    /// Nobody known: the login page.
    Nobody,
}

/// Too many wrong tokens are waiting for their answer: this one gets 429 at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyFailures;

/// The console's login state.
pub struct Console {
    token: Option<Secret>,
    sessions: Mutex<HashMap<String, Session>>,
    /// The CSRF token of the process, used without `admin.token`.
    process_csrf: String,
    /// Wrong tokens are answered one at a time; each sleeps while holding it.
    failures: tokio::sync::Mutex<()>,
    /// Wrong tokens waiting for their answer (holding `failures` or queued for it).
    waiting: AtomicUsize,
    /// `b24_admin_auth_failures_total`.
    failed: Counter,
    /// The WARN line about wrong tokens.
    failure_log: Throttled,
}

/// One wrong token waiting for its answer; dropping it (answered, or the client gone) frees
/// its place.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// 32 random bytes, hex.
pub fn random_hex() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a `Host` header value is `localhost` or an IP address literal, with or without a port.
pub fn local_host_name(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
            _ => host,
        }
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

/// Whether `a` equals `b`, in time independent of where they differ.
pub fn same(a: &str, b: &str) -> bool {
    bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

impl Console {
    /// The console of a listener with `token` (`admin.token`), if any; wrong tokens are
    /// counted in `failed`.
    pub fn new(token: Option<Secret>, failed: Counter) -> Console {
        Console {
            token,
            sessions: Mutex::new(HashMap::new()),
            process_csrf: random_hex(),
            failures: tokio::sync::Mutex::new(()),
            waiting: AtomicUsize::new(0),
            failed,
            failure_log: Throttled::new(FAILURE_LOG_EVERY),
        }
    }

    /// Whether a login is needed at all.
    pub fn needs_login(&self) -> bool {
        self.token.is_some()
    }

    /// Who sent `headers` (from `peer`). A wrong bearer token is answered `Nobody` only after
    /// its turn (see the module docs), or [`TooManyFailures`] at once.
    pub async fn identify(
        &self,
        headers: &HeaderMap,
        peer: IpAddr,
    ) -> Result<Who, TooManyFailures> {
        let Some(token) = &self.token else { return Ok(Who::Open) };
        if let Some(bearer) = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            if same(bearer.trim(), token.expose()) {
                return Ok(Who::Bearer);
            }
            self.failure("a bearer token", peer).await?;
            return Ok(Who::Nobody);
        }
        let Some(id) = cookie(headers, COOKIE) else { return Ok(Who::Nobody) };
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // A lookup by a 256-bit random id: nothing to learn from its timing, nothing to guess.
        Ok(match sessions.get(id) {
            Some(s) if s.expires > Instant::now() => {
                Who::Session { id: id.to_owned(), csrf: s.csrf.clone() }
            }
            _ => Who::Nobody,
        })
    }

    /// A wrong token from `peer`: counted, logged, and answered after its turn.
    async fn failure(&self, how: &str, peer: IpAddr) -> Result<(), TooManyFailures> {
        self.failed.inc();
        if let Some(held_back) = self.failure_log.allow() {
            tracing::warn!(
                %peer,
                held_back,
                "wrong admin token ({how}); wrong tokens are answered one at a time"
            );
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING_FAILURES {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(TooManyFailures);
        }
        let _waiting = Waiting(&self.waiting);
        let _turn = self.failures.lock().await;
        tokio::time::sleep(WRONG_TOKEN_DELAY).await;
        Ok(())
    }

    /// Whether a request to an open console (no `admin.token`) may be answered: its `Host` must
    /// name this machine (`localhost`, or an IP address, with any port), or be absent. A web
    /// page whose domain an attacker re-points at 127.0.0.1 (DNS rebinding) would otherwise
    /// read the console and its CSRF token as "same origin" from the victim's browser. With a
    /// token, the session cookie belongs to the name it was set for, so any Host is fine.
    pub fn host_allowed(&self, headers: &HeaderMap) -> bool {
        if self.token.is_some() {
            return true;
        }
        let Some(host) = headers.get(hyper::header::HOST) else { return true };
        let Ok(host) = host.to_str() else { return false };
        local_host_name(host)
    }

    /// The CSRF token forms of `who` carry (empty for a bearer: scripts need none).
    pub fn csrf_for(&self, who: &Who) -> String {
        match who {
            Who::Open => self.process_csrf.clone(),
            Who::Session { csrf, .. } => csrf.clone(),
            Who::Bearer | Who::Nobody => String::new(),
        }
    }

    /// Checks `given` (sent from `peer`) against the configured token; `Some(session id)` for
    /// a new session when right, at once. A wrong token is answered `None` after its turn, or
    /// [`TooManyFailures`] at once.
    pub async fn login(
        &self,
        given: &str,
        peer: IpAddr,
    ) -> Result<Option<String>, TooManyFailures> {
        let Some(token) = &self.token else { return Ok(None) };
        if !same(given, token.expose()) {
            self.failure("the login form", peer).await?;
            return Ok(None);
        }
        let id = random_hex();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        sessions.retain(|_, s| s.expires > now);
        while sessions.len() >= MAX_SESSIONS {
            let Some(oldest) =
                sessions.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone())
            else {
                break;
            };
            sessions.remove(&oldest);
        }
        sessions
            .insert(id.clone(), Session { csrf: random_hex(), expires: now + SESSION_LIFETIME });
        Ok(Some(id))
    }

    /// Ends the session `id`.
    pub fn logout(&self, id: &str) {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(hyper::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim())
}

/// The `Set-Cookie` value of a new session.
pub fn session_cookie(id: &str) -> String {
    format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}",
        SESSION_LIFETIME.as_secs()
    )
}

/// The `Set-Cookie` value that drops the session cookie.
pub const CLEARED_COOKIE: &str = "b24_console=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0";

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, v.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn an_open_console_answers_only_to_local_host_names_against_dns_rebinding() {
        for ok in ["127.0.0.1:8025", "localhost", "LOCALHOST:80", "[::1]:8025", "[::1]", "10.0.0.5"]
        {
            assert!(local_host_name(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8025", "127.0.0.1.nip.io:8025", "[::1]x", ""] {
            assert!(!local_host_name(bad), "{bad}");
        }
        let open = console(None);
        assert!(open.host_allowed(&headers(&[("host", "127.0.0.1:8025")])));
        assert!(open.host_allowed(&headers(&[])), "HTTP/1.0 without Host");
        assert!(!open.host_allowed(&headers(&[("host", "rebound.example:8025")])));
        let guarded = console(Some("t"));
        assert!(guarded.host_allowed(&headers(&[("host", "console.example.com")])));
    }

    const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn console(token: Option<&str>) -> Console {
        Console::new(token.map(Secret::new), Counter::default())
    }

    #[tokio::test]
    async fn bearer_or_session_cookie_and_nothing_else() {
        let console = console(Some("s3cret-admin"));
        let who = |h: HeaderMap| {
            let console = &console;
            async move { console.identify(&h, PEER).await.expect("not refused") }
        };
        assert!(matches!(who(headers(&[])).await, Who::Nobody));
        assert!(matches!(
            who(headers(&[("authorization", "Bearer s3cret-admin")])).await,
            Who::Bearer
        ));
        assert!(matches!(
            who(headers(&[("authorization", "Bearer s3cret-admiN")])).await,
            Who::Nobody
        ));
        assert_eq!(console.login("nope", PEER).await, Ok(None));
        let id = console.login("s3cret-admin", PEER).await.unwrap().expect("a session");
        assert_eq!(id.len(), 64);
        let cookie = format!("other=1; {COOKIE}={id}");
        let session = who(headers(&[("cookie", &cookie)])).await;
        let Who::Session { csrf, .. } = &session else { panic!("not a session") };
        assert_eq!(console.csrf_for(&session), *csrf);
        assert!(matches!(
            who(headers(&[("cookie", "b24_console=s3cret-admin")])).await,
            Who::Nobody
        ));
        console.logout(&id);
        assert!(matches!(who(headers(&[("cookie", &cookie)])).await, Who::Nobody));
        assert_eq!(console.failed.get(), 2, "the wrong bearer and the wrong login");
        let open = self::console(None);
        assert!(matches!(open.identify(&headers(&[]), PEER).await, Ok(Who::Open)));
        assert_eq!(open.csrf_for(&Who::Open).len(), 64);
    }

    #[tokio::test]
    async fn the_right_token_never_waits_behind_wrong_ones_and_the_queue_is_bounded() {
        let console = std::sync::Arc::new(console(Some("right")));
        let extra = 4;
        let wrong: Vec<_> = (0..MAX_WAITING_FAILURES + extra)
            .map(|_| {
                let console = console.clone();
                tokio::spawn(async move {
                    let h = headers(&[("authorization", "Bearer wrong")]);
                    console.identify(&h, PEER).await.map(|_| ())
                })
            })
            .collect();
        // Every wrong token has been counted: the queue is full.
        while console.failed.get() < wrong.len() as u64 {
            tokio::task::yield_now().await;
        }
        let started = Instant::now();
        let right = headers(&[("authorization", "Bearer right")]);
        assert!(matches!(console.identify(&right, PEER).await, Ok(Who::Bearer)));
        assert_eq!(console.login("right", PEER).await.map(|id| id.is_some()), Ok(true));
        // Far less than one wrong token's delay, let alone the queue's 6.4 s.
        assert!(started.elapsed() < WRONG_TOKEN_DELAY, "{:?}", started.elapsed());
        assert_eq!(console.login("wrong", PEER).await, Err(TooManyFailures));
        let mut refused = 0;
        for task in wrong {
            if task.is_finished() {
                refused += usize::from(task.await.unwrap() == Err(TooManyFailures));
            } else {
                task.abort();
            }
        }
        assert_eq!(refused, extra);
    }
}
