//! Who is asking: the console's login. Without `admin.token` (a loopback listener) everyone on
//! the machine is let in. With it, a request needs `Authorization: Bearer <token>` (scripts) or
//! the session cookie `b24_console` that `POST /login` sets: a random 32-byte id mapped in
//! memory to a session with its CSRF token, valid 12 hours; the cookie is never the token.
//! Tokens are compared in constant time (`subtle`); a wrong one costs a delay, one at a time.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use b24_plugin_api::Secret;
use hyper::HeaderMap;
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "b24_console";
/// How long a session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// At most this many sessions are kept; the oldest go first.
const MAX_SESSIONS: usize = 1000;
/// What a wrong token costs (logins are taken one at a time, so guesses are slow).
const WRONG_TOKEN_DELAY: Duration = Duration::from_millis(400);

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

/// The console's login state.
pub struct Console {
    token: Option<Secret>,
    sessions: Mutex<HashMap<String, Session>>,
    /// The CSRF token of the process, used without `admin.token`.
    process_csrf: String,
    /// Logins are checked one at a time; a wrong one sleeps while holding it.
    logins: tokio::sync::Mutex<()>,
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
    /// The console of a listener with `token` (`admin.token`), if any.
    pub fn new(token: Option<Secret>) -> Console {
        Console {
            token,
            sessions: Mutex::new(HashMap::new()),
            process_csrf: random_hex(),
            logins: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a login is needed at all.
    pub fn needs_login(&self) -> bool {
        self.token.is_some()
    }

    /// Who sent `headers`.
    pub fn identify(&self, headers: &HeaderMap) -> Who {
        let Some(token) = &self.token else { return Who::Open };
        if let Some(bearer) = headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
        {
            return if same(bearer.trim(), token.expose()) { Who::Bearer } else { Who::Nobody };
        }
        let Some(id) = cookie(headers, COOKIE) else { return Who::Nobody };
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // A lookup by a 256-bit random id: nothing to learn from its timing.
        match sessions.get(id) {
            Some(s) if s.expires > Instant::now() => {
                Who::Session { id: id.to_owned(), csrf: s.csrf.clone() }
            }
            _ => Who::Nobody,
        }
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

    /// Checks `given` against the configured token (one login at a time; a wrong token waits
    /// a little); `Some(session id)` for a new session when right.
    pub async fn login(&self, given: &str) -> Option<String> {
        let _one_at_a_time = self.logins.lock().await;
        let Some(token) = &self.token else { return None };
        if !same(given, token.expose()) {
            tokio::time::sleep(WRONG_TOKEN_DELAY).await;
            return None;
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
        Some(id)
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
        let open = Console::new(None);
        assert!(open.host_allowed(&headers(&[("host", "127.0.0.1:8025")])));
        assert!(open.host_allowed(&headers(&[])), "HTTP/1.0 without Host");
        assert!(!open.host_allowed(&headers(&[("host", "rebound.example:8025")])));
        let guarded = Console::new(Some(Secret::new("t")));
        assert!(guarded.host_allowed(&headers(&[("host", "console.example.com")])));
    }

    #[tokio::test]
    async fn bearer_or_session_cookie_and_nothing_else() {
        let console = Console::new(Some(Secret::new("s3cret-admin")));
        assert!(matches!(console.identify(&headers(&[])), Who::Nobody));
        let bearer = headers(&[("authorization", "Bearer s3cret-admin")]);
        assert!(matches!(console.identify(&bearer), Who::Bearer));
        let wrong = headers(&[("authorization", "Bearer s3cret-admiN")]);
        assert!(matches!(console.identify(&wrong), Who::Nobody));
        assert_eq!(console.login("nope").await, None);
        let id = console.login("s3cret-admin").await.expect("a session");
        assert_eq!(id.len(), 64);
        let cookie = format!("other=1; {COOKIE}={id}");
        let who = console.identify(&headers(&[("cookie", &cookie)]));
        let Who::Session { csrf, .. } = &who else { panic!("not a session") };
        assert_eq!(console.csrf_for(&who), *csrf);
        assert!(matches!(
            console.identify(&headers(&[("cookie", "b24_console=s3cret-admin")])),
            Who::Nobody
        ));
        console.logout(&id);
        assert!(matches!(console.identify(&headers(&[("cookie", &cookie)])), Who::Nobody));
        let open = Console::new(None);
        assert!(matches!(open.identify(&headers(&[])), Who::Open));
        assert_eq!(open.csrf_for(&Who::Open).len(), 64);
    }
}
